"""A loaded model bound to its family: prepare -> forward -> typed outputs, the same for teacher and students.

Every predictor exposes ``prepare(image)`` (numpy RGB uint8 (H, W, 3) -> model inputs), ``forward(inputs)``
(batched), ``forward_with_stages(inputs)`` (the same forward, with the feature maps the analysis compares) and the
task's post-processing in the input images' pixels. Nothing here knows a model class: the family
(``weights/families``) does.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from analysis.features import Stage, forward_with_stages
from analysis.profiling import count_parameters
from analysis.readback import read_back
from weights.families import Family, Geometry, family_of, shared_lock
from weights.loaders import load_model
from weights.registry import ModelSource, Pair, Student

__all__ = ["BoxArrays", "Detection", "Geometry", "LockedTokenizer", "Predictor", "box_foreground", "class_foreground",
           "predictors_for", "valid_region"]


@dataclass
class Detection:
    label: str
    score: float
    box: list[float]  # [x0, y0, x1, y1] in input-image pixels

    def to_dict(self) -> dict:
        return {"label": self.label, "score": round(self.score, 4), "box": [round(v, 2) for v in self.box]}


@dataclass
class BoxArrays:
    """One image's boxes as arrays rather than one object per box (the dataset report keeps ~100 per model and
    image for its mAP): ``boxes`` (N, 4) float32 xyxy in input-image pixels, ``scores`` (N,) float32 in [0, 1],
    ``labels`` (N,) int64 indices into ``names``; highest score first."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.scores)

    def above(self, threshold: float) -> list[Detection]:
        """The boxes scoring ``threshold`` or more, as :class:`Detection` objects."""
        n = int(np.searchsorted(-self.scores, -threshold, side="right"))  # scores are sorted, highest first
        return [Detection(self.names[label], score, box) for box, score, label in
                zip(self.boxes[:n].tolist(), self.scores[:n].tolist(), self.labels[:n].tolist(), strict=True)]

    def to_dict(self) -> dict:
        """``{"boxes": base64, "scores": base64, "labels": [...]}``: the columns as little-endian float32 bytes in
        base64 ((N, 4) xyxy row by row, and (N,)), read back by :meth:`from_dict`. A fraction of the size and time of
        numbers written out (the dataset report keeps ~100 boxes per model and image)."""
        return {"boxes": _base64(self.boxes), "scores": _base64(self.scores),
                "labels": [self.names[i] for i in self.labels.tolist()]}

    @staticmethod
    def from_dict(columns: dict) -> list[dict]:
        """:meth:`to_dict`'s columns as ``{"label", "score", "box"}`` dicts (float32 values, not rounded)."""
        boxes = np.frombuffer(base64.b64decode(columns["boxes"]), "<f4").reshape(-1, 4).tolist()
        scores = np.frombuffer(base64.b64decode(columns["scores"]), "<f4").tolist()
        return [{"label": label, "score": score, "box": box}
                for box, score, label in zip(boxes, scores, columns["labels"], strict=True)]


def _base64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, "<f4").tobytes()).decode("ascii")


def valid_region(stage: Stage, geometry: Geometry, padded: tuple[int, int]) -> Stage:
    """Crop a stage to the part of the grid that covers the image (builtin inputs are padded to a multiple of 16)."""
    h, w = stage.features.shape[-2:]
    rows = max(1, round(h * geometry.resized_height / padded[0]))
    cols = max(1, round(w * geometry.resized_width / padded[1]))
    if (rows, cols) == (h, w):  # no padding to drop
        return stage
    return Stage(stage.name, stage.stride, stage.features[..., :rows, :cols])


def box_foreground(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, height: int, width: int,
                   ) -> torch.Tensor:
    """(height, width) bool: pixels whose centre lies inside any (N, 4) xyxy box scoring ``threshold`` or more; for
    (B, N, 4) boxes and (B, N) scores, (B, height, width).

    The score threshold is a mask, not a filter (nothing is read back to choose the boxes), and the union is painted
    with a difference array: each box adds +1 and -1 at its four corners, two cumulative sums give every pixel the
    number of boxes covering it, so the cost is one pass over the image whatever the number of boxes. A pixel row
    ``y`` lies inside ``[y0, y1)`` by its centre when ``ceil(y0 - 0.5) <= y < ceil(y1 - 0.5)`` (exact in float32).
    """
    single = boxes.dim() == 2
    boxes, scores = (boxes[None], scores[None]) if single else (boxes, scores)
    b = scores.shape[0]
    edges = (boxes.float() - 0.5).ceil()  # (B, N, 4): first pixel inside, first pixel past, per axis
    usable = (scores >= threshold) & ~edges.isnan().any(-1)
    limits = torch.tensor([width, height, width, height], dtype=edges.dtype, device=edges.device)
    x0, y0, x1, y1 = torch.minimum(edges.nan_to_num(0.0).clamp_min(0), limits).long().unbind(-1)
    usable &= (x1 > x0) & (y1 > y0)
    step = width + 1
    corners = torch.cat([y0 * step + x0, y0 * step + x1, y1 * step + x0, y1 * step + x1], 1)  # (B, 4N)
    one = usable.int()
    signs = torch.cat([one, -one, -one, one], 1)
    grid = torch.zeros(b, (height + 1) * step, dtype=torch.int32, device=boxes.device).scatter_add_(1, corners, signs)
    covered = grid.view(b, height + 1, step).cumsum(1, dtype=torch.int32).cumsum(2, dtype=torch.int32)
    mask = covered[:, :height, :width] > 0
    return mask[0] if single else mask


def class_foreground(class_map: torch.Tensor, has_background: bool) -> torch.Tensor:
    """(H, W) bool: pixels not of class 0 (the background), or, without a background class, not of the image's
    dominant class; no host sync."""
    if has_background:
        return class_map != 0
    return class_map != class_map.flatten().mode().values


class LockedTokenizer:
    """A tokenizer shared by concurrent calls, each call under its :func:`weights.families.shared_lock` (a Hugging
    Face tokenizer sets its truncation and padding on the shared Rust object at every call); its other attributes
    as the tokenizer's."""

    def __init__(self, tokenizer: Any):
        self.wrapped = tokenizer

    def __call__(self, *args, **kwargs):
        with shared_lock(self.wrapped):
            return self.wrapped(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "wrapped":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.wrapped, name)


class Predictor:
    """One model of a pair (or of a user's own comparison): the module, what prepares its inputs, its label names
    and device, and its family, which reads its outputs."""

    def __init__(self, pair: Pair | None, source: ModelSource | None, device: torch.device | None = None,
                 family: Family | None = None, loaded: tuple[Any, Any] | None = None):
        self.pair, self.source = pair, source
        self.family = family or family_of(source)
        self.model, self.processor = loaded if loaded is not None else load_model(source, device)
        first = next(self.model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.task = pair.task if pair is not None else None
        self.labels = self.family.labels(self)

    @property
    def key(self) -> tuple:
        """What identifies this model for the caches of timings and FLOPs."""
        return (self.source, id(self.model)) if self.source is None else (self.source,)

    def prepare(self, image: np.ndarray) -> tuple[dict[str, torch.Tensor], Geometry]:
        """(H, W, 3) uint8 RGB -> ``({"pixel_values": (1, 3, h, w)}, geometry)`` on the model's device."""
        return self.family.prepare(self, image)

    def prepare_many(self, images: list[np.ndarray]) -> list[tuple[dict[str, torch.Tensor], Geometry]]:
        """:meth:`prepare` of each image, images of one size at once where the family can."""
        return self.family.prepare_many(self, images)

    @torch.inference_mode()
    def forward(self, inputs: dict[str, torch.Tensor]) -> Any:
        """The model's outputs for a batch of prepared inputs."""
        return self.family.forward(self, inputs)

    def forward_with_stages(self, inputs: dict[str, torch.Tensor]) -> tuple[Any, list[Stage]]:
        """One gradient-free forward that gives the outputs and the feature stages (NCHW, finest first), through
        the family's own feature method, else forward hooks on the model's blocks."""
        explicit = self.family.stages if self.family.explicit_stages else None
        with torch.no_grad():
            return forward_with_stages(self.model, inputs["pixel_values"], explicit=explicit)

    @functools.cached_property
    def params(self) -> int:
        """The model's parameter count (counted once: every request reports it)."""
        return count_parameters(self.model)

    # Detection ----------------------------------------------------------------------------------------------
    def detections(self, outputs: Any, geometries: list[Geometry], threshold: float) -> list[list[Detection]]:
        """Per image, the boxes scoring ``threshold`` or more in input-image pixels, highest score first; one
        read-back for the whole batch."""
        return [found.above(threshold) for found in self.detection_arrays(outputs, geometries, threshold)]

    def detection_arrays(self, outputs: Any, geometries: list[Geometry], threshold: float) -> list[BoxArrays]:
        """:meth:`detections` as one :class:`BoxArrays` per image (no object per box); one read-back."""
        found = self.family.detections(self, outputs, geometries, threshold)
        columns = (("boxes", torch.float32), ("scores", torch.float32), ("labels", torch.int64))
        if isinstance(found, dict):  # the batch's rows at once, as many per image: sorted and cut as one matrix
            host = read_back({key: found[key].to(dtype) for key, dtype in columns})
            order = np.argsort(-host["scores"], axis=1, kind="stable")
            host = {key: np.take_along_axis(host[key], order[..., None] if key == "boxes" else order, 1)
                    for key in host}
            kept = (host["scores"] >= threshold).sum(1).tolist()
            return [BoxArrays(host["boxes"][i, :n], host["scores"][i, :n], host["labels"][i, :n], self.labels)
                    for i, n in enumerate(kept)]
        if not found:
            return []
        host = read_back({key: torch.cat([r[key].to(dtype) for r in found]) for key, dtype in columns})
        bounds = np.cumsum([0, *(len(r["scores"]) for r in found)])
        out = []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):  # sorted and filtered on the host: a few µs each
            order = np.argsort(-host["scores"][a:b], kind="stable")
            order = order[host["scores"][a:b][order] >= threshold]
            out.append(BoxArrays(*(host[key][a:b][order] for key in ("boxes", "scores", "labels")), self.labels))
        return out

    def foregrounds(self, outputs: Any, geometries: list[Geometry], threshold: float, max_side: int = 256,
                    indices: list[int] | None = None) -> list[torch.Tensor]:
        """Each image's foreground (``indices`` into the batch's outputs, default all) on the model's device without
        a host sync: for a detector, the (h, w) bool mask (long side at most ``max_side``) inside its boxes scoring
        ``threshold`` or more, images of one size at once; for a segmenter, the cells of its logits not of the
        background class (not of the dominant class when the label set has none)."""
        indices = list(range(len(geometries))) if indices is None else indices
        if self.task == "segmentation":
            background = bool(self.labels) and self.labels[0] == "background"
            return [class_foreground(self.family.segmentation_logits(self, outputs, g, i)[0].argmax(0), background)
                    for g, i in zip(geometries, indices, strict=True)]
        sizes: dict[tuple, list[int]] = {}
        for k, g in enumerate(geometries):
            sizes.setdefault((g.height, g.width, g.resized_height, g.resized_width), []).append(k)
        out: list[torch.Tensor | None] = [None] * len(geometries)
        for members in sizes.values():
            geometry = geometries[members[0]]
            scale = min(1.0, max_side / max(geometry.height, geometry.width))
            h, w = max(1, round(geometry.height * scale)), max(1, round(geometry.width * scale))
            boxes, scores = self.family.detection_candidates(self, outputs, geometry, h, w,
                                                             [indices[k] for k in members])
            for k, mask in zip(members, box_foreground(boxes, scores, threshold, h, w), strict=True):
                out[k] = mask
        return out

    # Segmentation -------------------------------------------------------------------------------------------
    def class_maps(self, outputs: Any, geometries: list[Geometry]) -> list[torch.Tensor]:
        """Per image, (H, W) int64 class indices at the input image's size, on the model's device."""
        return self.family.class_maps(self, outputs, geometries)

    # CLIP ---------------------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> LockedTokenizer:
        """The text tokenizer (CLIP families), every call under its shared lock."""
        return LockedTokenizer(self.processor[1])

    @torch.inference_mode()
    def text_features(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """(K, D) normalised text features (CLIP families)."""
        return self.family.text_features(self, texts, batch_size)

    @torch.inference_mode()
    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """(B, K) CLIP logits of image features against text features."""
        return self.family.scores(self, image_features, text_features)

    @torch.inference_mode()
    def encode(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One image-tower pass: (B, D) features and (B, h, w, D) patch tokens, or None (CLIP families)."""
        return self.family.encode(self, inputs)


def predictors_for(pair: Pair, device: torch.device | None = None, students: list[Student] | None = None,
                   ) -> dict[str, Predictor]:
    """``{"teacher": ..., <student name>: ..., ...}`` for a pair and the chosen students (default: its first), in
    that order, loading lazily through the cache."""
    chosen = students if students else pair.students[:1]
    return {"teacher": Predictor(pair, pair.teacher, device)} | {s.name: Predictor(pair, s.source, device)
                                                                 for s in chosen}
