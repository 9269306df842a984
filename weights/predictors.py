"""Uniform pre-process -> forward -> post-process wrappers around loaded models.

Every predictor exposes ``prepare(image)`` (numpy RGB uint8 (H, W, 3) -> model inputs), ``forward(inputs)``
(the timed, FLOP-counted part) and a task-specific post-process that returns results in the input image's
pixels. Teacher and student of a pair go through the same class.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from analysis.profiling import count_gflops, count_parameters
from analysis.readback import read_back
from weights.loaders import load_model
from weights.registry import ModelSource, Pair, Student
from weights.shapes.nets import decode_detections, detection_candidates, normalise

_GFLOPS_MEMO: OrderedDict[tuple, float] = OrderedDict()


@dataclass(frozen=True)
class Geometry:
    """How an input image was resized for the network: original (h, w) and the resized (h, w) inside padding."""

    height: int
    width: int
    resized_height: int
    resized_width: int


@dataclass
class Detection:
    label: str
    score: float
    box: list[float]  # [x0, y0, x1, y1] in input-image pixels

    def to_dict(self) -> dict:
        return {"label": self.label, "score": round(self.score, 4), "box": [round(v, 2) for v in self.box]}


class Predictor:
    """Base: a model, its processor (Hub) or resize policy (builtin), its label names and device."""

    def __init__(self, pair: Pair, source: ModelSource, device: torch.device | None = None):
        self.pair, self.source = pair, source
        self.model, self.processor = load_model(source, device)
        self.device = next(self.model.parameters()).device
        self.dtype = next(self.model.parameters()).dtype
        self.labels = list(pair.labels) if pair.labels else self._config_labels()

    def _config_labels(self) -> list[str]:
        id2label = self.model.config.id2label
        return [id2label[i] for i in range(len(id2label))]

    def prepare(self, image: np.ndarray) -> tuple[dict[str, torch.Tensor], Geometry]:
        height, width = image.shape[:2]
        if self.processor is not None:
            pixels = self.processor(images=image, return_tensors="pt")["pixel_values"]
            geometry = Geometry(height, width, *pixels.shape[-2:])
        else:
            pixels, geometry = _builtin_pixels(image, self.pair.preprocessing)
        return {"pixel_values": pixels.to(self.device, self.dtype)}, geometry

    @torch.inference_mode()
    def forward(self, inputs: dict[str, torch.Tensor]) -> Any:
        if self.processor is not None:
            return self.model(**inputs)
        return self.model(inputs["pixel_values"])

    def gflops(self, inputs: dict[str, torch.Tensor]) -> float:
        """GFLOPs of :meth:`forward` on inputs of this shape (counted once per model and shape)."""
        key = (self.source, str(self.device), tuple(inputs["pixel_values"].shape))
        if key not in _GFLOPS_MEMO:
            _GFLOPS_MEMO[key] = round(count_gflops(lambda: self.forward(inputs)), 3)
            while len(_GFLOPS_MEMO) > 256:
                _GFLOPS_MEMO.popitem(last=False)
        return _GFLOPS_MEMO[key]

    @property
    def params(self) -> int:
        return count_parameters(self.model)


def _builtin_pixels(image: np.ndarray, policy: dict) -> tuple[torch.Tensor, Geometry]:
    """Resize so the short side is ``short_side`` (long side capped at ``max_side``), pad to ``multiple``."""
    height, width = image.shape[:2]
    scale = min(policy["short_side"] / min(height, width), policy["max_side"] / max(height, width))
    rh, rw = max(1, round(height * scale)), max(1, round(width * scale))
    tensor = torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0)
    pixels = normalise(tensor)
    pixels = F.interpolate(pixels, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
    m = policy["multiple"]
    ph, pw = max(-(-rh // m) * m, 2 * m), max(-(-rw // m) * m, 2 * m)
    pixels = F.pad(pixels, (0, pw - rw, 0, ph - rh))
    return pixels, Geometry(height, width, rh, rw)


class DetectionPredictor(Predictor):
    def detect(self, outputs: Any, geometry: Geometry, threshold: float) -> list[Detection]:
        """Boxes above ``threshold`` in input-image pixels, highest score first."""
        if self.processor is not None:
            result = self.processor.post_process_object_detection(
                outputs, threshold=threshold, target_sizes=[(geometry.height, geometry.width)])[0]
            boxes, scores, labels = result["boxes"], result["scores"], result["labels"]
        else:
            result = decode_detections(outputs, threshold)[0]
            sx, sy = geometry.width / geometry.resized_width, geometry.height / geometry.resized_height
            b = result["boxes"]
            boxes = torch.stack([(b[:, 0] * sx).clamp(0, geometry.width), (b[:, 1] * sy).clamp(0, geometry.height),
                                 (b[:, 2] * sx).clamp(0, geometry.width), (b[:, 3] * sy).clamp(0, geometry.height)],
                                -1)
            scores, labels = result["scores"], result["labels"]
        order = scores.argsort(descending=True)
        host = read_back({"boxes": boxes[order].float(), "scores": scores[order].float(), "labels": labels[order]})
        return [Detection(self.labels[int(label)], float(score), box.tolist())
                for box, score, label in zip(host["boxes"], host["scores"], host["labels"], strict=True)]

    def foreground(self, outputs: Any, geometry: Geometry, threshold: float, max_side: int = 256) -> torch.Tensor:
        """(h, w) bool mask of the image (long side at most ``max_side``) inside the boxes scoring ``threshold`` or
        more, made on the model's device without a host sync (no thresholded list is built)."""
        scale = min(1.0, max_side / max(geometry.height, geometry.width))
        h, w = max(1, round(geometry.height * scale)), max(1, round(geometry.width * scale))
        if self.processor is not None:
            boxes, scores = detr_candidates(outputs, h, w)
        else:
            boxes, scores, _ = detection_candidates(outputs)
            boxes, scores = boxes[0], scores[0]
            sx, sy = w / geometry.resized_width, h / geometry.resized_height
            boxes = torch.stack([boxes[:, 0] * sx, boxes[:, 1] * sy, boxes[:, 2] * sx, boxes[:, 3] * sy], -1)
        return box_foreground(boxes, scores, threshold, h, w)


def detr_candidates(outputs: Any, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A DETR-style model's boxes for the first image, (Q, 4) xyxy scaled to ``height`` x ``width``, and each
    query's best sigmoid class score (Q,)."""
    from torchvision.ops import box_convert

    boxes = box_convert(outputs.pred_boxes[0].float(), "cxcywh", "xyxy")
    boxes = torch.stack([boxes[:, 0] * width, boxes[:, 1] * height, boxes[:, 2] * width, boxes[:, 3] * height], -1)
    return boxes, outputs.logits[0].float().sigmoid().amax(-1)


def box_foreground(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, height: int, width: int,
                   ) -> torch.Tensor:
    """(height, width) bool: pixels whose centre lies inside any (N, 4) xyxy box scoring ``threshold`` or more.

    The score threshold is a mask, not a filter (nothing is read back to choose the boxes), and the union of boxes
    is one matrix product of each box's row and column indicators, (H, N) @ (N, W), rather than N full masks.
    """
    ys = torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5
    boxes = boxes.float()
    keep = (scores >= threshold)[:, None]
    rows = ((ys >= boxes[:, 1:2]) & (ys < boxes[:, 3:4]) & keep).float()  # (N, H)
    cols = ((xs >= boxes[:, 0:1]) & (xs < boxes[:, 2:3])).float()  # (N, W)
    return (rows.T @ cols) > 0


def class_foreground(class_map: torch.Tensor, has_background: bool) -> torch.Tensor:
    """(H, W) bool: pixels not of class 0 (the background), or, without a background class, not of the image's
    dominant class; no host sync."""
    if has_background:
        return class_map != 0
    return class_map != class_map.flatten().mode().values


class SegmentationPredictor(Predictor):
    def class_map(self, outputs: Any, geometry: Geometry) -> torch.Tensor:
        """(H, W) int64 class indices at the input image's size, on the model's device."""
        size = (geometry.height, geometry.width)
        if self.processor is not None:
            return self.processor.post_process_semantic_segmentation(outputs, target_sizes=[size])[0].long()
        logits = outputs["logits"][:, :, : geometry.resized_height, : geometry.resized_width].float()
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[0].argmax(0)

    def foreground(self, outputs: Any, geometry: Geometry, threshold: float = 0.0) -> torch.Tensor:
        """(h, w) bool at the logits' own resolution (the analysis pools it to its grids anyway): cells not of the
        background class (not of the image's dominant class when the label set has no background), on the model's
        device without a host sync."""
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if self.processor is None:  # builtin logits are at the padded input's size: keep the image part
            logits = logits[:, :, : geometry.resized_height, : geometry.resized_width]
        return class_foreground(logits[0].argmax(0), self.labels[0] == "background")


PREDICTORS = {"detection": DetectionPredictor, "segmentation": SegmentationPredictor}


def predictors_for(pair: Pair, device: torch.device | None = None, students: list[Student] | None = None,
                   ) -> dict[str, Predictor]:
    """``{"teacher": ..., <student name>: ..., ...}`` for a pair and the chosen students (default: its first), in
    that order, loading lazily through the cache."""
    cls = PREDICTORS[pair.task]
    chosen = students if students else pair.students[:1]
    return {"teacher": cls(pair, pair.teacher, device)} | {s.name: cls(pair, s.source, device) for s in chosen}


class ClassificationPredictor(Predictor):
    """An open_clip model: image and text features, class logits, and patch-to-text similarity maps."""

    def _config_labels(self) -> list[str]:
        return []  # classes come from the user

    def prepare(self, image: np.ndarray) -> tuple[dict[str, torch.Tensor], Geometry]:
        from PIL import Image

        transform, _ = self.processor
        if self.source.kind == "builtin":
            pixels = transform(image[None])
        else:
            pixels = transform(Image.fromarray(image)).unsqueeze(0)
        height, width = image.shape[:2]
        return {"pixel_values": pixels.to(self.device, self.dtype)}, Geometry(height, width, *pixels.shape[-2:])

    @torch.inference_mode()
    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D) normalised image features."""
        return self.model.encode_image(inputs["pixel_values"], normalize=True).float()

    @property
    def tokenizer(self):
        return self.processor[1]

    @torch.inference_mode()
    def text_features(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """(K, D) normalised features of ``texts`` (encoded in batches)."""
        chunks = [self.model.encode_text(self.tokenizer(texts[i:i + batch_size]).to(self.device), normalize=True)
                  for i in range(0, len(texts), batch_size)]
        return torch.cat(chunks).float()

    @torch.inference_mode()
    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return self.model.logit_scale.exp().float() * image_features @ text_features.t()

    @torch.inference_mode()
    def patch_similarity(self, inputs: dict[str, torch.Tensor], text_feature: torch.Tensor) -> torch.Tensor | None:
        """(h, w) cosine similarity of every patch token (through the final norm and projection) to one text
        feature, or None for towers without patch tokens (e.g. convolutional ones)."""
        visual = self.model.visual
        if not all(hasattr(visual, name) for name in ("ln_post", "proj", "forward_intermediates")):
            return None
        out = visual.forward_intermediates(inputs["pixel_values"], indices=1, intermediates_only=True,
                                           output_fmt="NCHW")
        maps = out["image_intermediates"][-1] if isinstance(out, dict) else out[-1]  # (1, width, h, w)
        tokens = visual.ln_post(maps.flatten(2).transpose(1, 2))
        patches = torch.nn.functional.normalize((tokens @ visual.proj).float(), dim=-1)
        return (patches[0] @ text_feature.float()).reshape(maps.shape[-2:])


PREDICTORS["classification"] = ClassificationPredictor
