"""Hugging Face transformers detectors, segmenters and image classifiers (RT-DETR, SegFormer, ViT, ...):
``from_pretrained`` of a Hub repo or a folder saved with ``save_pretrained``, safetensors only, never remote code;
their image processors prepare the inputs and post-process the outputs.

The allow-list is transformers' own: the classes of its ``AutoModelForObjectDetection``,
``AutoModelForSemanticSegmentation`` and ``AutoModelForImageClassification`` mappings, and the image processors of
``AutoImageProcessor`` (classes the library ships; a config asking for remote code is refused before this)."""

from __future__ import annotations

import functools
import re
from typing import Any

import torch

from analysis.features import transformers_stages
from weights.families import Family, ModelUnavailableError, register_family
from weights.hub import hub_error_message, local_only, local_or_cached

TASK_MAPPINGS = {"detection": "MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES",
                 "segmentation": "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES",
                 "image-classification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"}
AUTO_CLASSES = {"detection": "AutoModelForObjectDetection", "segmentation": "AutoModelForSemanticSegmentation",
                "image-classification": "AutoModelForImageClassification"}


def _names(values) -> tuple[str, ...]:
    out = []
    for value in values:
        items = value.values() if isinstance(value, dict) else (value if isinstance(value, (tuple, list)) else [value])
        out += [v for v in items if isinstance(v, str)]
    return tuple(dict.fromkeys(out))


@functools.cache
def model_classes(task: str | None = None) -> tuple[str, ...]:
    """The model classes allowed for a task (all three tasks when None), from transformers' Auto mappings."""
    from transformers.models.auto import modeling_auto

    tasks = [task] if task else list(TASK_MAPPINGS)
    return _names(v for t in tasks for v in getattr(modeling_auto, TASK_MAPPINGS[t]).values())


@functools.cache
def processor_classes() -> tuple[str, ...]:
    """The image processor classes allowed: those ``AutoImageProcessor`` maps to."""
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    return _names(IMAGE_PROCESSOR_MAPPING_NAMES.values())


def detr_candidates(outputs: Any, height: int, width: int, index: int | list[int] = 0,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """A DETR-style model's boxes for image ``index``, (Q, 4) xyxy scaled to ``height`` x ``width``, and each
    query's best sigmoid class score (Q,); for a list of B images, (B, Q, 4) and (B, Q)."""
    from torchvision.ops import box_convert

    boxes = box_convert(outputs.pred_boxes[index].float(), "cxcywh", "xyxy")
    boxes = boxes * torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    return boxes, outputs.logits[index].float().sigmoid().amax(-1)


@register_family
class TransformersFamily(Family):
    name = "transformers"
    explicit_stages = True

    def check(self, source):
        if source.model_class not in model_classes():
            allowed = ", ".join(AUTO_CLASSES.values())
            raise ModelUnavailableError(f"{source.model_class!r} is not a transformers {allowed} class, so it is not "
                                        "loaded.")
        if source.processor_class not in processor_classes():
            raise ModelUnavailableError(f"{source.processor_class!r} is not an image processor that transformers "
                                        "ships, so it is not loaded.")

    def load(self, source, device, dtype):
        import transformers

        self.check(source)
        model_cls = getattr(transformers, source.model_class)
        processor_cls = getattr(transformers, source.processor_class)
        kwargs = {"revision": source.revision, "local_files_only": local_only(source)}
        try:
            processor = processor_cls.from_pretrained(source.location, **kwargs)
            model = model_cls.from_pretrained(source.location, use_safetensors=True, trust_remote_code=False,
                                              dtype=dtype, **kwargs)
        except (OSError, ValueError) as error:  # offline, missing files, or no safetensors weights (any other error
            # of the libraries' own, e.g. a corrupt file, becomes the same in weights.loaders.load_model)
            raise ModelUnavailableError(hub_error_message(source, error)) from error
        return model.to(device).eval(), processor

    def weights_file(self, source):
        from pathlib import Path

        found = local_or_cached(source, ["model.safetensors"])
        return None if found is None else Path(found)

    def prepare(self, predictor, image):
        height, width = image.shape[:2]
        pixels = predictor.processor(images=image, return_tensors="pt")["pixel_values"]
        from weights.families import Geometry

        return ({"pixel_values": pixels.to(predictor.device, predictor.dtype)},
                Geometry(height, width, *pixels.shape[-2:]))

    def prepare_key(self, predictor):
        return ("transformers", predictor.processor.to_json_string(), predictor.device, predictor.dtype)

    def forward(self, predictor, inputs):
        return predictor.model(**inputs)

    def stages(self, model, pixels):
        return transformers_stages(model, pixels)

    def detections(self, predictor, outputs, geometries, threshold):
        return predictor.processor.post_process_object_detection(
            outputs, threshold=threshold, target_sizes=[(g.height, g.width) for g in geometries])

    def detection_candidates(self, predictor, outputs, geometry, height, width, index=0):
        return detr_candidates(outputs, height, width, index)

    def class_maps(self, predictor, outputs, geometries):
        maps = predictor.processor.post_process_semantic_segmentation(
            outputs, target_sizes=[(g.height, g.width) for g in geometries])
        return [m.long() for m in maps]

    def token_blocks(self, predictor):
        """A ViT-style model (one ``patch_size``, token hidden states): its encoder layers, whose (B, N, C) outputs
        Grad-CAM takes its gradient on; None for models of feature maps (SegFormer, ResNet, RT-DETR)."""
        config = predictor.model.config
        is_vit = isinstance(getattr(config, "patch_size", None), int) and not hasattr(config, "hidden_sizes")
        pattern = r"(.*\.)?(encoder\.layer|encoder\.layers|layers)\.\d+"  # the name differs across versions
        found = is_vit and any(re.fullmatch(pattern, n) for n, _ in predictor.model.named_modules())
        return pattern if found else None

    def attention_kind(self, predictor):
        return "deformable" if getattr(predictor.model.config, "model_type", "") == "rt_detr" else "grad-cam"
