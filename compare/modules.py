"""Your own ``torch.nn.Module``s as a pair: a teacher and students of any architecture, with a task adapter that
says how an image becomes the model's input and how its outputs read.

    from compare import ModulePair, TaskAdapter, compare
    pair = ModulePair(teacher, {"small": student}, TaskAdapter("classification", labels=["cat", "dog"]))
    results = compare(pair, ["cat.png", "dog.png"])  # agreement, probabilities, cost of each model
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from weights.families import Family, Geometry
from weights.predictors import Predictor
from weights.registry import Pair, Student

TASKS = ("detection", "segmentation", "image-classification")


def default_preprocess(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> (1, 3, H, W) float32 in [0, 1], at the image's own size."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0


@dataclass
class TaskAdapter:
    """How the engine reads one task's model.

    Args:
        task: ``"image-classification"`` (outputs: (B, K) logits; ``"classification"`` is taken for it too),
            ``"segmentation"`` (outputs: (B, K, h, w) class logits
            at any resolution; resized to the image), or ``"detection"`` (outputs: a list of B dicts with ``boxes``
            (N, 4) xyxy in the model input's pixels, ``scores`` (N,), ``labels`` (N,) int64 indices into
            ``labels``).
        labels: the class names, in output order (teacher and students share them).
        preprocess: RGB uint8 (H, W, 3) numpy -> (1, 3, h, w) float input; default :func:`default_preprocess`.
            Detection boxes are scaled from the input's size back to the image's.
        outputs: the model's raw outputs -> the form above (e.g. ``lambda out: out.logits``); default: as is.
        stages: ``stages(model, pixels) -> (outputs, [(name, (B, C, h, w) features), ...])`` for the consensus
            analysis; default: the convention the model's attributes show (timm, open_clip, transformers), else
            forward hooks on modules named like ``layer1``/``stages.2``/``blocks.3``.
    """

    task: str
    labels: list[str]
    preprocess: Callable[[np.ndarray], torch.Tensor] = default_preprocess
    outputs: Callable[[Any], Any] = field(default=lambda out: out)
    stages: Callable | None = None

    def __post_init__(self):
        if self.task == "classification":
            self.task = "image-classification"
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not self.labels or not all(isinstance(n, str) for n in self.labels):
            raise ValueError("labels must be a non-empty list of class names")


class ModuleFamily(Family):
    """A family made from a :class:`TaskAdapter`, for plain modules (one per pair, never registered)."""

    name = "module"

    def __init__(self, adapter: TaskAdapter):
        self.adapter = adapter
        self.explicit_stages = adapter.stages is not None

    def labels(self, predictor):
        return list(self.adapter.labels)

    def prepare(self, predictor, image):
        pixels = self.adapter.preprocess(image)
        if pixels.dim() != 4 or pixels.shape[0] != 1:
            raise ValueError(f"preprocess must return a (1, C, h, w) tensor, got {tuple(pixels.shape)}")
        height, width = image.shape[:2]
        return ({"pixel_values": pixels.to(predictor.device, predictor.dtype)},
                Geometry(height, width, *pixels.shape[-2:]))

    def forward(self, predictor, inputs):
        return self.adapter.outputs(predictor.model(inputs["pixel_values"]))

    def stages(self, model, pixels):
        outputs, named = self.adapter.stages(model, pixels)
        return self.adapter.outputs(outputs), named

    def logits(self, predictor, outputs):
        return outputs

    def detections(self, predictor, outputs, geometries, threshold):
        results = []
        for found, g in zip(outputs, geometries, strict=True):
            keep = found["scores"] >= threshold
            scale = torch.tensor([g.width / g.resized_width, g.height / g.resized_height] * 2,
                                 device=found["boxes"].device)
            results.append({"boxes": found["boxes"][keep].float() * scale, "scores": found["scores"][keep],
                            "labels": found["labels"][keep]})
        return results

    def detection_candidates(self, predictor, outputs, geometry, height, width, index=0):
        found = outputs[index]
        scale = torch.tensor([width / geometry.resized_width, height / geometry.resized_height] * 2,
                             device=found["boxes"].device)
        return found["boxes"].float() * scale, found["scores"]

    def class_maps(self, predictor, outputs, geometries):
        maps = []
        for i, g in enumerate(geometries):
            logits = outputs[i:i + 1].float()
            maps.append(torch.nn.functional.interpolate(logits, size=(g.height, g.width), mode="bilinear",
                                                        align_corners=False)[0].argmax(0))
        return maps


@dataclass
class ModulePair:
    """A teacher and one or more students given as modules, with one :class:`TaskAdapter` for all of them.

    Args:
        teacher: the reference model (any ``torch.nn.Module``; its mode and weights are left as they are).
        students: ``{name: module}`` (one to three; the first is the default), or one module (named ``student``).
        adapter: how the models read images and write outputs.
        name: shown in reports.
    """

    teacher: torch.nn.Module
    students: dict[str, torch.nn.Module] | torch.nn.Module
    adapter: TaskAdapter
    name: str = "my-models"

    def __post_init__(self):
        if isinstance(self.students, torch.nn.Module):
            self.students = {"student": self.students}
        if not 1 <= len(self.students) <= 3:
            raise ValueError(f"give one to three students, got {len(self.students)}")

    def as_pair(self) -> Pair:
        """The registry's view: a :class:`weights.registry.Pair` whose models have no source."""
        return Pair(self.name, self.adapter.task, None, tuple(Student(n, None, "your model")
                                                            for n in self.students), "yours",
                    labels=tuple(self.adapter.labels))

    def predictors(self, pair: Pair, chosen: list[Student]) -> dict[str, Predictor]:
        family = ModuleFamily(self.adapter)
        modules = {"teacher": self.teacher} | {s.name: self.students[s.name] for s in chosen}
        return {name: Predictor(pair, None, family=family, loaded=(module, None)) for name, module in modules.items()}
