"""open_clip models: the builtin Shapes CLIPs (configs in ``weights/clip_configs``) and Hub CLIPs read from their
repos' ``open_clip_model.safetensors`` (open_clip's own download would fall back to pickled weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from analysis.features import open_clip_stages
from weights.families import Family, Geometry, ModelUnavailableError, register_family, shared_lock
from weights.hub import hub_error_message, local_only, local_or_cached
from weights.shapes.checkpoints import BUILTIN_DIR

OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"


CONFIG = "open_clip_config.json"


def repo_config(source) -> tuple[str, dict]:
    """An open_clip repo's or folder's ``open_clip_config.json``: its ``model_cfg`` registered with open_clip under a
    name made from its content (``own-<12 hex>``), and its ``preprocess_cfg`` (mean, std)."""
    import hashlib
    import json
    import tempfile

    import open_clip
    from huggingface_hub import hf_hub_download

    folder = Path(source.location)
    if folder.is_dir():
        path = folder / CONFIG
    else:
        try:
            path = Path(hf_hub_download(source.location, CONFIG, revision=source.revision,
                                        local_files_only=local_only(source)))
        except Exception as error:  # offline, not cached, no such repo or file
            raise ModelUnavailableError(hub_error_message(source, error)) from error
    try:
        config = json.loads(path.read_text())
        model_cfg = config["model_cfg"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelUnavailableError(f"{source.location} has no readable {CONFIG} with a model_cfg.") from error
    text = json.dumps(model_cfg, sort_keys=True)
    name = f"own-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if name not in open_clip.list_models():
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / f"{name}.json").write_text(text)
            open_clip.add_model_config(Path(tmp) / f"{name}.json")
    return name, config.get("preprocess_cfg", {})


@register_family
class OpenClipFamily(Family):
    """Image and text towers: ``forward`` gives (B, D) normalised image features, :meth:`text_features` (K, D)
    normalised text features, :meth:`encode` both the features and the last block's patch tokens in one pass."""

    name = "open_clip"
    classes = ("open_clip",)
    explicit_stages = True
    zero_shot = True

    def load(self, source, device, dtype):
        import open_clip

        from weights.shapes.clip import clip_image_batch, register_clip_configs

        self.check(source)
        register_clip_configs()
        if source.kind == "builtin":
            weights = BUILTIN_DIR / f"{source.location}.safetensors"
            if not weights.exists():
                raise ModelUnavailableError(f"builtin checkpoint {weights.name} is missing; train it with "
                                            "`python -m weights.shapes.train_clip`")
            model = open_clip.create_model(source.architecture, pretrained=str(weights))
            transform = clip_image_batch
        else:
            from huggingface_hub import hf_hub_download

            folder = Path(source.location)
            try:
                weights = folder / OPEN_CLIP_WEIGHTS if folder.is_dir() else Path(
                    hf_hub_download(source.location, OPEN_CLIP_WEIGHTS, revision=source.revision,
                                    local_files_only=local_only(source)))
            except Exception as error:  # offline, not cached, or no safetensors in the repo
                raise ModelUnavailableError(hub_error_message(source, error)) from error
            architecture = source.architecture
            if architecture is None:  # an own repo: its open_clip_config.json names the architecture
                architecture, cfg = repo_config(source)
            else:
                cfg = open_clip.get_pretrained_cfg(architecture.replace("-quickgelu", ""), source.pretrained_tag or "")
            model, _, transform = open_clip.create_model_and_transforms(
                architecture, pretrained=str(weights), image_mean=cfg.get("mean"), image_std=cfg.get("std"))
        tokenizer = open_clip.get_tokenizer(architecture if source.kind != "builtin" else source.architecture)
        return model.to(device=device, dtype=dtype).eval(), (transform, tokenizer)

    def weights_file(self, source):
        if source.kind == "builtin":
            return BUILTIN_DIR / f"{source.location}.safetensors"
        found = local_or_cached(source, [OPEN_CLIP_WEIGHTS])
        return None if found is None else Path(found)

    def labels(self, predictor):
        return []  # classes come from the user

    def prepare(self, predictor, image: np.ndarray):
        from PIL import Image

        transform, _ = predictor.processor
        if predictor.source.kind == "builtin":
            pixels = transform(image[None])
        else:
            pixels = transform(Image.fromarray(image)).unsqueeze(0)
        height, width = image.shape[:2]
        return ({"pixel_values": pixels.to(predictor.device, predictor.dtype)},
                Geometry(height, width, *pixels.shape[-2:]))

    def forward(self, predictor, inputs):
        return predictor.model.encode_image(inputs["pixel_values"], normalize=True).float()

    def encode(self, predictor, inputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One pass of the image tower: (B, D) normalised image features and the (B, h, w, D) patch tokens of the
        last block through the final norm and projection, normalised (None for towers without patch tokens, e.g.
        convolutional ones)."""
        model, pixels = predictor.model, inputs["pixel_values"]
        visual = model.visual
        if not all(hasattr(visual, name) for name in ("ln_post", "proj", "forward_intermediates")):
            return self.forward(predictor, inputs), None
        out = model.forward_intermediates(image=pixels, image_indices=1, normalize=True)
        maps = out["image_intermediates"][-1]  # (B, width, h, w)
        tokens = visual.ln_post(maps.flatten(2).transpose(1, 2))
        patches = torch.nn.functional.normalize((tokens @ visual.proj).float(), dim=-1)
        return out["image_features"].float(), patches.reshape(maps.shape[0], *maps.shape[-2:], -1)

    def text_features(self, predictor, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """(K, D) normalised features of ``texts`` (encoded in batches)."""
        _, tokenizer = predictor.processor
        with shared_lock(tokenizer):  # a Hugging Face tokenizer's settings are shared state (see shared_lock)
            tokens = [tokenizer(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
        return torch.cat([predictor.model.encode_text(t.to(predictor.device), normalize=True) for t in tokens]).float()

    def token_counts(self, predictor, texts: list[str]) -> tuple[list[int] | None, int]:
        """How many tokens each text is for this model's tokenizer (start and end tokens included, after its own
        normalisation), and its text tower's context length; counts are None for a tokenizer we cannot count with."""
        _, tokenizer = predictor.processor
        context = int(getattr(tokenizer, "context_length", 0) or predictor.model.context_length)
        with shared_lock(tokenizer):  # counted without truncation: other settings than text_features' own
            if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):  # open_clip's SimpleTokenizer
                return [len(tokenizer.encode(t)) + 2 for t in texts], context
            inner = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer
            if inner is not None:
                return [len(inner(t)["input_ids"]) for t in texts], context
        return None, context

    def scores(self, predictor, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """(B, K) CLIP logits: the learned temperature times cosine similarity."""
        return predictor.model.logit_scale.exp().float() * image_features @ text_features.t()

    def stages(self, model, pixels):
        return open_clip_stages(model, pixels)
