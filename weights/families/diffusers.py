"""diffusers text-to-image models: a teacher ``StableDiffusionPipeline`` and student ``UNet2DConditionModel``s (or a
LoRA fused into the teacher's UNet) that share its VAE, text encoder and tokenizer; safetensors only."""

from __future__ import annotations

from pathlib import Path

import torch

from weights.families import Family, ModelUnavailableError, register_family
from weights.hub import hub_error_message, local_only, local_or_cached
from weights.shapes.checkpoints import BUILTIN_DIR

WEIGHT_NAMES = ["model.safetensors", "diffusion_pytorch_model.safetensors"]


def _hub_kwargs(source, dtype: torch.dtype) -> dict:
    kwargs = {"use_safetensors": True, "dtype": dtype, "local_files_only": local_only(source)}
    if source.kind == "hub":
        kwargs["revision"] = source.revision
        if dtype == torch.float16:
            kwargs["variant"] = "fp16"
    return kwargs


@register_family
class DiffusersFamily(Family):
    name = "diffusers"
    classes = ("StableDiffusionPipeline", "UNet2DConditionModel")

    def load(self, source, device, dtype):
        from diffusers import StableDiffusionPipeline, UNet2DConditionModel

        from weights.shapes.diffusion import DIFFUSION_DIR

        self.check(source)
        location = str(DIFFUSION_DIR) if source.kind == "builtin" else source.location
        if source.kind == "builtin" and not DIFFUSION_DIR.exists():
            raise ModelUnavailableError("the builtin diffusion pair is missing; train it with "
                                        "`python -m weights.shapes.train_diffusion`")

        def read(kwargs: dict):
            if source.model_class == "StableDiffusionPipeline":
                pipe = StableDiffusionPipeline.from_pretrained(
                    location, safety_checker=None, feature_extractor=None, requires_safety_checker=False, **kwargs)
                pipe.set_progress_bar_config(disable=True)
                return pipe
            subfolder = "unet" if source.subfolder is None else (source.subfolder or None)  # "": the folder itself
            return UNet2DConditionModel.from_pretrained(location, subfolder=subfolder, **kwargs).eval()

        kwargs = _hub_kwargs(source, dtype)
        try:
            try:
                model = read(kwargs)
            except (OSError, ValueError):
                if "variant" not in kwargs:
                    raise
                # no fp16 files in this repo or folder: the full-precision ones, cast on load
                model = read({k: v for k, v in kwargs.items() if k != "variant"})
        except (OSError, ValueError) as error:
            if source.kind == "builtin":
                raise ModelUnavailableError(f"the builtin diffusion pair could not be read: {error}") from error
            raise ModelUnavailableError(hub_error_message(source, error)) from error
        return model.to(device), None

    def weights_file(self, source):
        if source.kind == "builtin":
            folder = BUILTIN_DIR / source.location / (source.subfolder or "unet")
            return next(iter(sorted(folder.glob("*.safetensors"))), None)
        names = [source.lora] if source.lora else WEIGHT_NAMES
        prefix = f"{source.subfolder}/" if source.subfolder else (
            "unet/" if source.model_class == "StableDiffusionPipeline" else "")
        found = local_or_cached(source, names, prefix)
        return None if found is None else Path(found)


def assemble_pipeline(base, **replace):
    """A ``StableDiffusionPipeline`` made of ``base``'s modules, some replaced (e.g. ``unet=``, ``scheduler=``): the
    modules themselves are shared, never copied; the progress bar is off."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**{**base.components, **replace}, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_generation_pair(pair, device: torch.device | None = None, cache=None) -> dict:
    """``{"teacher": pipeline, "student": pipeline}``: the student shares the teacher's VAE, text encoder and
    tokenizer and brings its own UNet (a block-removed UNet, or the teacher's UNet with LCM-LoRA fused in)."""
    import copy

    import diffusers

    from weights.loaders import MODEL_CACHE, load_model

    cache = cache or MODEL_CACHE
    teacher, _ = load_model(pair.teacher, device, cache)
    source = pair.student
    if source.lora:
        def build_lora_student():
            unet = copy.deepcopy(teacher.unet)
            scheduler = teacher.scheduler
            if source.scheduler:
                scheduler = getattr(diffusers, source.scheduler).from_config(teacher.scheduler.config)
            pipe = assemble_pipeline(teacher, unet=unet, scheduler=scheduler)
            try:
                pipe.load_lora_weights(source.location, weight_name=source.lora, revision=source.revision,
                                       local_files_only=local_only(source))
            except (OSError, ValueError) as error:
                raise ModelUnavailableError(hub_error_message(source, error)) from error
            pipe.fuse_lora()
            return pipe
        student = cache.get_or_load((source, str(device)), build_lora_student)
    else:
        unet, _ = load_model(source, device, cache)
        student = assemble_pipeline(teacher, unet=unet)
    return {"teacher": teacher, "student": student}
