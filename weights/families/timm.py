"""timm image classifiers, from a Hub repo (``hf-hub:org/name`` or ``org/name``) or a local folder written by
``timm.models.save_for_hf(..., safe_serialization=True)``: ``config.json`` names the architecture, the
weights are read from ``model.safetensors`` only (timm's own loader would fall back to pickled files)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from analysis.features import timm_stages
from weights.families import Family, Geometry, ModelUnavailableError, register_family
from weights.hub import hub_error_message, local_or_cached

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
        return Path(hf_hub_download(_repo(source), name, revision=source.revision))
    except Exception as error:  # offline, not cached, or no such file (e.g. only pickled weights)
        raise ModelUnavailableError(hub_error_message(source, error)) from error


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
        if not labels and num_classes == 1000:
            from timm.data import ImageNetInfo

            labels = [ImageNetInfo().index_to_description(i) for i in range(1000)]
        model.distill_lens_labels = list(labels or [f"class {i}" for i in range(num_classes)])
        data = timm.data.resolve_data_config(pretrained_cfg=model.pretrained_cfg)
        return model.to(device=device, dtype=dtype).eval(), timm.data.create_transform(**data)

    def weights_file(self, source):
        found = local_or_cached(dataclasses.replace(source, location=_repo(source)), [WEIGHTS])
        return None if found is None else Path(found)

    def labels(self, predictor):
        return list(predictor.model.distill_lens_labels)

    def prepare(self, predictor, image: np.ndarray):
        from PIL import Image

        pixels = predictor.processor(Image.fromarray(image)).unsqueeze(0)
        height, width = image.shape[:2]
        return ({"pixel_values": pixels.to(predictor.device, predictor.dtype)},
                Geometry(height, width, *pixels.shape[-2:]))

    def logits(self, predictor, outputs):
        return outputs

    def stages(self, model, pixels):
        return timm_stages(model, pixels)
