"""Typed results of the engine. Each has ``to_json()``: the report the app's endpoints return, unchanged.

Reports name the teacher ``teacher`` and each chosen student by its name; agreement figures take the teacher as
the reference. ``students``' first entry is also given as ``student`` and ``agreement`` (single-student fields,
kept for one release).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from weights.predictors import BoxArrays, Detection
from weights.registry import Student


@dataclass
class Profile:
    """One model's cost in a request.

    ``latency_ms`` (median) and ``latency_iqr_ms`` of ``runs`` warm forwards of one image at this input shape, from
    the latency cache when ``latency_cached``; ``latency_alone``: timed while no other call ran in the process (else
    while others shared the machine, and timed again by the first call to find the process idle); ``this_run_ms`` is
    this request's own forward, per image (ms); ``gflops`` of one forward; ``params`` the model's parameter count.
    Figures not measured are None.
    """

    params: int
    gflops: float | None = None
    latency_ms: float | None = None
    latency_iqr_ms: float | None = None
    runs: int | None = None
    latency_cached: bool | None = None
    this_run_ms: float | None = None
    latency_alone: bool | None = None

    def to_json(self) -> dict:
        return {"latency_ms": self.latency_ms, "latency_iqr_ms": self.latency_iqr_ms, "runs": self.runs,
                "latency_cached": self.latency_cached, "latency_alone": self.latency_alone,
                "this_run_ms": self.this_run_ms, "params": self.params, "gflops": self.gflops}


def students_report(chosen: list[Student], per_student: dict[str, dict], key: str, higher_is_better: bool = True,
                    ) -> dict:
    """The several-students part of a report.

    Args:
        chosen: the chosen ``Student`` objects, in order.
        per_student: ``{name: {..., "agreement": {...}}}``.
        key: the agreement figure the ranking sorts by (e.g. ``"miou"``).
        higher_is_better: the figure's direction.

    Returns:
        ``{"students": {name: {method, source, ...per_student[name]}}, "ranking": [{rank, name, <key>,
        latency_ms, params, gflops}], "ranked_by", "student": <the first student's block>, "agreement": <its
        agreement>}``.
    """
    students = {s.name: {"method": s.method, "source": s.source.display_name if s.source else "module",
                         **per_student[s.name]} for s in chosen}

    def score(name: str) -> float:
        value = students[name]["agreement"].get(key)
        return float("-inf") if value is None else (value if higher_is_better else -value)

    ranked = sorted(students, key=score, reverse=True)
    ranking = [{"rank": i + 1, "name": n, key: students[n]["agreement"].get(key),
                **{k: students[n].get(k) for k in ("latency_ms", "params", "gflops")}} for i, n in enumerate(ranked)]
    first = students[chosen[0].name]
    return {"students": students, "ranking": ranking, "ranked_by": key,
            "student": {k: v for k, v in first.items() if k != "agreement"}, "agreement": first["agreement"]}


@dataclass
class Comparison:
    """What every per-image comparison holds: the pair, the chosen students in order, each model's cost, notes
    on the input (downscaled, converted) and, when asked for, the consensus analysis from the same forwards."""

    pair: str
    students: list[Student]
    profiles: dict[str, Profile]
    notes: list[str] = field(default_factory=list)
    analysis: Any = None  # compare.analysis.ConsensusResult when the request asked for it

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.students]


@dataclass
class DetectionComparison(Comparison):
    """Boxes of the teacher and each student on one image (``detections["teacher"]``, ``detections[name]``), in
    input-image pixels, highest score first; ``labels`` is the union of the models' label names; ``agreement``
    per student as :func:`analysis.agreement.detection_agreement` gives it, plus ``f1``."""

    labels: list[str] = field(default_factory=list)
    detections: dict[str, list[Detection]] = field(default_factory=dict)
    agreement: dict[str, dict] = field(default_factory=dict)
    # when the request asked for them (``accuracy_threshold``): every model's boxes down to that lower score, from
    # the same forward, for accuracy against labels (the dataset report's mAP)
    all_detections: dict[str, BoxArrays] | None = None

    def to_json(self) -> dict:
        per_student = {n: {"detections": [d.to_dict() for d in self.detections[n]], **self.profiles[n].to_json(),
                           "agreement": self.agreement[n]} for n in self.names}
        return {"pair": self.pair, "labels": self.labels,
                "teacher": {"detections": [d.to_dict() for d in self.detections["teacher"]],
                            **self.profiles["teacher"].to_json()},
                **students_report(self.students, per_student, "f1"), "notes": list(self.notes)}


@dataclass
class SegmentationComparison(Comparison):
    """Class maps of the teacher and each student on one image: (H, W) int64 tensors at the image's size
    (``class_maps["teacher"]``, ``class_maps[name]``); ``agreement`` per student: mIoU, pixel agreement and
    per-class IoU with the teacher's map."""

    classes: list[str] = field(default_factory=list)
    class_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    agreement: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict:
        per_student = {n: {**self.profiles[n].to_json(), "agreement": self.agreement[n]} for n in self.names}
        return {"pair": self.pair, "classes": self.classes, "teacher": self.profiles["teacher"].to_json(),
                **students_report(self.students, per_student, "miou"), "notes": list(self.notes)}

    def arrays(self) -> dict[str, np.ndarray]:
        """The class maps as int32 numpy arrays, by model name."""
        return {name: m.cpu().numpy().astype(np.int32) for name, m in self.class_maps.items()}


@dataclass
class ClassificationComparison(Comparison):
    """Probabilities of the teacher and each student over ``classes`` on one image (``probs[name]``: (K,) float32
    on the CPU), the text each side was prompted with, and the agreement with the teacher (top-1 match, KL(teacher ‖
    student), Jensen-Shannon divergence, Spearman rank correlation). ``patches[name]``: (h, w, D) normalised patch
    tokens of the image tower when it has them (for similarity maps), else None. ``image_features[name]``: (D,) the
    image tower's embedding of the image, as the tower gives it (the dataset report's embedding view and CKA)."""

    classes: list[str] = field(default_factory=list)
    probs: dict[str, torch.Tensor] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)
    agreement: dict[str, dict] = field(default_factory=dict)
    patches: dict[str, torch.Tensor | None] = field(default_factory=dict)
    image_features: dict[str, torch.Tensor] = field(default_factory=dict)

    def side(self, name: str) -> dict:
        return {"probs": {c: round(float(v), 5) for c, v in zip(self.classes, self.probs[name].tolist(),
                                                                  strict=True)},
                **self.profiles[name].to_json(), **({"prompt": self.prompts[name]} if name in self.prompts else {})}

    def to_json(self) -> dict:
        per_student = {n: self.side(n) | {"agreement": self.agreement[n]} for n in self.names}
        return {"pair": self.pair, "classes": self.classes, "teacher": self.side("teacher"),
                **students_report(self.students, per_student, "kl", higher_is_better=False),
                "notes": list(self.notes)}


@dataclass
class ImageClassificationComparison(ClassificationComparison):
    """A classifier pair on one image, over the teacher's own label set (e.g. ImageNet's 1,000 classes): ``probs``
    as for CLIP; the report lists each model's top five instead of every class, and the agreement adds the overlap of
    the two top fives."""

    def side(self, name: str) -> dict:
        probs = self.probs[name]
        values, indices = probs.topk(min(5, probs.numel()))
        # a student with other class names has exactly 0 on the teacher's classes it lacks: not its predictions
        return {"top5": [{"label": self.classes[i], "prob": round(float(v), 5)}
                         for v, i in zip(values.tolist(), indices.tolist(), strict=True)
                         if name == "teacher" or v > 0],
                **self.profiles[name].to_json()}

    def to_json(self) -> dict:
        report = super().to_json()
        del report["classes"]  # the label set can have thousands of names: the count, and each model's top five
        return {"pair": report.pop("pair"), "num_classes": len(self.classes), **report}
