"""Hugging Face transformers detectors and segmenters (RT-DETR, SegFormer): ``from_pretrained`` of a Hub repo or a
folder saved with ``save_pretrained``, safetensors only, never remote code; their image processors prepare the
inputs and post-process the outputs."""

from __future__ import annotations

from typing import Any

import torch

from analysis.features import transformers_stages
from weights.families import Family, ModelUnavailableError, register_family
from weights.hub import hub_error_message, local_or_cached

# The model and processor classes we load, by name; anything else is refused (no remote code).
MODEL_CLASSES = ("RTDetrForObjectDetection", "SegformerForSemanticSegmentation")
PROCESSOR_CLASSES = ("RTDetrImageProcessor", "SegformerImageProcessor")


def detr_candidates(outputs: Any, height: int, width: int, index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A DETR-style model's boxes for image ``index``, (Q, 4) xyxy scaled to ``height`` x ``width``, and each
    query's best sigmoid class score (Q,)."""
    from torchvision.ops import box_convert

    boxes = box_convert(outputs.pred_boxes[index].float(), "cxcywh", "xyxy")
    boxes = torch.stack([boxes[:, 0] * width, boxes[:, 1] * height, boxes[:, 2] * width, boxes[:, 3] * height], -1)
    return boxes, outputs.logits[index].float().sigmoid().amax(-1)


@register_family
class TransformersFamily(Family):
    name = "transformers"
    classes = MODEL_CLASSES
    explicit_stages = True

    def check(self, source):
        super().check(source)
        if source.processor_class not in PROCESSOR_CLASSES:
            raise ModelUnavailableError(f"{source.processor_class!r} is not an allowed image processor; allowed: "
                                        f"{', '.join(PROCESSOR_CLASSES)}.")

    def load(self, source, device, dtype):
        import transformers
        from huggingface_hub import constants

        self.check(source)
        model_cls = getattr(transformers, source.model_class)
        processor_cls = getattr(transformers, source.processor_class)
        kwargs = {"revision": source.revision, "local_files_only": bool(constants.HF_HUB_OFFLINE)}
        try:
            processor = processor_cls.from_pretrained(source.location, **kwargs)
            model = model_cls.from_pretrained(source.location, use_safetensors=True, trust_remote_code=False,
                                              dtype=dtype, **kwargs)
        except (OSError, ValueError) as error:  # offline, missing files, or no safetensors weights
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

    def attention_kind(self, predictor):
        return "deformable" if getattr(predictor.model.config, "model_type", "") == "rt_detr" else "grad-cam"
