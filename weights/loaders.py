"""Lazy, cached, device-aware model loading for builtin checkpoints and Hub repos.

Models load on first use into a cache bounded in bytes; the least recently used model goes first.
CUDA when present (fp16 for Hub models, whose weights ship for it), CPU fp32 otherwise.
Safetensors only, and never ``trust_remote_code``: Hub classes come from a fixed allow-list.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from weights.registry import ModelSource
from weights.shapes.checkpoints import BUILTIN_DIR, load_named_checkpoint

# Hub model and processor classes we load, by name. Anything else is refused (no remote code).
HUB_MODEL_CLASSES = ("RTDetrForObjectDetection", "SegformerForSemanticSegmentation")
HUB_PROCESSOR_CLASSES = ("RTDetrImageProcessor", "SegformerImageProcessor")
DEFAULT_CACHE_MB = int(os.environ.get("DISTILL_LENS_CACHE_MB", "6000"))


class ModelUnavailableError(RuntimeError):
    """A model that cannot be loaded here; the message says why and what to do."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device, source: ModelSource) -> torch.dtype:
    """fp16 for Hub models on CUDA, fp32 otherwise (builtin models are tiny; fp32 keeps CPU and GPU alike)."""
    return torch.float16 if device.type == "cuda" and source.kind == "hub" else torch.float32


def module_bytes(obj: Any) -> int:
    """Bytes of parameters and buffers of a module, a (module, processor) pair or a diffusers pipeline."""
    item = obj[0] if isinstance(obj, tuple) else obj
    modules = [m for m in getattr(item, "components", {}).values() if isinstance(m, torch.nn.Module)] or [item]
    return sum(t.numel() * t.element_size() for m in modules if isinstance(m, torch.nn.Module)
               for t in list(m.parameters()) + list(m.buffers()))


class ModelCache:
    """A thread-safe least-recently-used cache bounded by the bytes of the modules it holds."""

    def __init__(self, max_bytes: int, sizeof: Callable[[Any], int] = module_bytes):
        self.max_bytes = max_bytes
        self._sizeof = sizeof
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._lock = threading.RLock()  # guards the dict only, never held while a model loads
        self._loading: dict[Any, threading.Lock] = {}

    def get_or_load(self, key: Any, load: Callable[[], Any]) -> Any:
        """The cached value of ``key``, loading it first if needed. A load blocks only the calls that need the same
        key (a first SD 1.5 download does not stall a Shapes detection); a failed load is retried by the next call.
        """
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:  # another call loaded it while this one waited
                    self._items.move_to_end(key)
                    return self._items[key][0]
            try:
                value = load()
                size = self._sizeof(value)
                with self._lock:
                    self._items[key] = (value, size)
                    while self.total_bytes > self.max_bytes and len(self._items) > 1:
                        self._items.popitem(last=False)
                return value
            finally:
                with self._lock:
                    self._loading.pop(key, None)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self._items.values())

    def keys(self) -> list:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


MODEL_CACHE = ModelCache(DEFAULT_CACHE_MB * 2**20)


def _causes(error: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


NETWORK_WORDS = ("offline", "connect", "local_files_only", "local cache", "timed out", "name resolution")


def _hub_error_message(source: ModelSource, error: Exception) -> str:
    """What went wrong loading a Hub model, and what to do: "offline" only when the cause is the network or an
    empty cache; a repo or file that does not exist, and anything else, say so instead."""
    from huggingface_hub import constants
    from huggingface_hub import errors as hub_errors

    chain = _causes(error)
    where = f"{source.location} (revision {source.revision or 'main'})"
    network_types = (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled, ConnectionError,
                     TimeoutError)
    offline_mode = bool(constants.HF_HUB_OFFLINE) and any(isinstance(e, OSError) for e in chain)
    if offline_mode or any(isinstance(e, network_types) for e in chain) or any(
            word in str(e).lower() for e in chain for word in NETWORK_WORDS):
        return (f"Could not load {where} from the Hugging Face Hub: {type(error).__name__}. This machine seems to "
                f"be offline or the files are not cached. Download the model once while online (it is then kept in "
                f"{constants.HF_HUB_CACHE}), or set HF_HUB_OFFLINE=1 to use only that cache, or pick a builtin pair.")
    missing = (hub_errors.RepositoryNotFoundError, hub_errors.RevisionNotFoundError, hub_errors.EntryNotFoundError)
    if any(isinstance(e, missing) for e in chain):
        return (f"{where} or one of its files does not exist on the Hugging Face Hub ({type(error).__name__}); "
                f"check the repo id and revision in weights/registry.py.")
    detail = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
    return f"Could not load {where}: {type(error).__name__}: {detail}"


def _load_hub(source: ModelSource, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    import transformers
    from huggingface_hub import constants

    if source.model_class not in HUB_MODEL_CLASSES or source.processor_class not in HUB_PROCESSOR_CLASSES:
        raise ModelUnavailableError(f"{source.model_class}/{source.processor_class} is not an allowed Hub class")
    model_cls = getattr(transformers, source.model_class)
    processor_cls = getattr(transformers, source.processor_class)
    kwargs = {"revision": source.revision, "local_files_only": bool(constants.HF_HUB_OFFLINE)}
    try:
        processor = processor_cls.from_pretrained(source.location, **kwargs)
        model = model_cls.from_pretrained(source.location, use_safetensors=True, trust_remote_code=False,
                                          dtype=dtype, **kwargs)
    except (OSError, ValueError) as error:  # offline, missing files, or no safetensors weights
        raise ModelUnavailableError(_hub_error_message(source, error)) from error
    return model.to(device).eval(), processor


OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"


def _load_open_clip(source: ModelSource, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    """An open_clip model from safetensors only: the builtin file, a local folder, or the Hub repo's
    ``open_clip_model.safetensors`` (open_clip's own download would fall back to pickled weights)."""
    import open_clip

    from weights.shapes.clip import clip_image_batch, register_clip_configs

    register_clip_configs()
    if source.kind == "builtin":
        weights = BUILTIN_DIR / f"{source.location}.safetensors"
        if not weights.exists():
            raise ModelUnavailableError(f"builtin checkpoint {weights.name} is missing; train it with "
                                        "`python -m weights.shapes.train_clip`")
        model = open_clip.create_model(source.architecture, pretrained=str(weights))
        transform = clip_image_batch
    else:
        from pathlib import Path

        from huggingface_hub import hf_hub_download

        folder = Path(source.location)
        try:
            weights = folder / OPEN_CLIP_WEIGHTS if folder.is_dir() else Path(
                hf_hub_download(source.location, OPEN_CLIP_WEIGHTS, revision=source.revision))
        except Exception as error:  # offline, not cached, or no safetensors in the repo
            raise ModelUnavailableError(_hub_error_message(source, error)) from error
        cfg = open_clip.get_pretrained_cfg(source.architecture.replace("-quickgelu", ""), source.pretrained_tag or "")
        model, _, transform = open_clip.create_model_and_transforms(
            source.architecture, pretrained=str(weights), image_mean=cfg.get("mean"), image_std=cfg.get("std"))
    tokenizer = open_clip.get_tokenizer(source.architecture)
    return model.to(device=device, dtype=dtype).eval(), (transform, tokenizer)


def _hub_kwargs(source: ModelSource, dtype: torch.dtype) -> dict:
    from huggingface_hub import constants

    kwargs = {"use_safetensors": True, "dtype": dtype, "local_files_only": bool(constants.HF_HUB_OFFLINE)}
    if source.kind == "hub":
        kwargs["revision"] = source.revision
        if dtype == torch.float16:
            kwargs["variant"] = "fp16"
    return kwargs


def _load_diffusers(source: ModelSource, device: torch.device, dtype: torch.dtype) -> tuple[Any, None]:
    """A ``StableDiffusionPipeline`` (teacher) or a student ``UNet2DConditionModel``, safetensors only."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from weights.shapes.diffusion import DIFFUSION_DIR

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
        return UNet2DConditionModel.from_pretrained(location, subfolder=source.subfolder or "unet", **kwargs).eval()

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
        raise ModelUnavailableError(_hub_error_message(source, error)) from error
    return model.to(device), None


def assemble_pipeline(base, **replace):
    """A ``StableDiffusionPipeline`` made of ``base``'s modules, some replaced (e.g. ``unet=``, ``scheduler=``): the
    modules themselves are shared, never copied; the progress bar is off."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**{**base.components, **replace}, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_generation_pair(pair, device: torch.device | None = None, cache: ModelCache = MODEL_CACHE) -> dict:
    """``{"teacher": pipeline, "student": pipeline}``: the student shares the teacher's VAE, text encoder and
    tokenizer and brings its own UNet (a block-removed UNet, or the teacher's UNet with LCM-LoRA fused in)."""
    import copy

    import diffusers

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
                pipe.load_lora_weights(source.location, weight_name=source.lora, revision=source.revision)
            except (OSError, ValueError) as error:
                raise ModelUnavailableError(_hub_error_message(source, error)) from error
            pipe.fuse_lora()
            return pipe
        student = cache.get_or_load((source, str(device)), build_lora_student)
    else:
        unet, _ = load_model(source, device, cache)
        student = assemble_pipeline(teacher, unet=unet)
    return {"teacher": teacher, "student": student}


def load_model(source: ModelSource, device: torch.device | None = None, cache: ModelCache = MODEL_CACHE,
               ) -> tuple[torch.nn.Module, Any]:
    """Load (or fetch from the cache) one model and its processor.

    Args:
        source: where the model comes from.
        device: where it runs; :func:`default_device` when None.
        cache: the LRU cache to use.

    Returns:
        ``(model, processor)``: the module in eval mode on ``device``; ``processor`` is the Hub image processor
        or None for builtin models.
    """
    device = device or default_device()
    dtype = default_dtype(device, source)

    @torch.inference_mode(False)  # a model loaded by a caller in inference mode would have inference-tensor
    def load() -> tuple[torch.nn.Module, Any]:  # weights, and every later prompt tuning on the cached model fails
        if source.model_class == "open_clip":
            return _load_open_clip(source, device, dtype)
        if source.model_class in ("StableDiffusionPipeline", "UNet2DConditionModel"):
            return _load_diffusers(source, device, dtype)
        if source.kind == "builtin":
            try:
                model = load_named_checkpoint(source.location)
            except FileNotFoundError as error:
                raise ModelUnavailableError(str(error)) from error
            return model.to(device=device, dtype=dtype).eval(), None
        return _load_hub(source, device, dtype)

    return cache.get_or_load((source, str(device), dtype), load)


def _weights_file(source: ModelSource) -> Path | None:
    """The local safetensors file holding a model's weights, without downloading: the builtin checkpoint, or the
    Hub file when it is already in the local cache (or ``location`` is a folder); None when not at hand."""
    if source.kind == "builtin":
        if source.model_class == "ShapesNet" or source.model_class == "open_clip":
            return BUILTIN_DIR / f"{source.location}.safetensors"
        folder = BUILTIN_DIR / source.location / (source.subfolder or "unet")
        return next(iter(sorted(folder.glob("*.safetensors"))), None)
    names = [OPEN_CLIP_WEIGHTS] if source.model_class == "open_clip" else (
        [source.lora] if source.lora else ["model.safetensors", "diffusion_pytorch_model.safetensors"])
    prefix = f"{source.subfolder}/" if source.subfolder else ("unet/" if source.model_class.endswith("Pipeline")
                                                              else "")
    for name in names:
        local = Path(source.location) / f"{prefix}{name}"
        if local.is_file():
            return local
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source.location, f"{prefix}{name}", revision=source.revision)
        except Exception:  # not a valid repo id, no cache
            cached = None
        if isinstance(cached, str):
            return Path(cached)
    return None


def weights_at_hand(source: ModelSource) -> bool:
    """Whether a model's weights are on this machine (builtin, a local folder, or already in the Hub cache)."""
    path = _weights_file(source)
    return path is not None and path.is_file()


def stored_bytes(source: ModelSource) -> int | None:
    """Bytes of a model's weights file when it is on this machine, else None."""
    path = _weights_file(source)
    return path.stat().st_size if path is not None and path.is_file() else None


BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # batch-norm state, not parameters


def stored_parameters(source: ModelSource) -> int | None:
    """Parameter count from a safetensors header (shapes only; nothing is loaded or downloaded), or None when the
    weights are not on this machine. For a pipeline, its UNet; for a LoRA, the adapter's own parameters."""
    from safetensors import safe_open

    path = _weights_file(source)
    if path is None or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if not k.endswith(BUFFERS))
    except Exception:  # an unreadable file is reported by the loader when the model is used
        return None
