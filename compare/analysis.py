"""Where teacher and student features agree and disagree (consensus and divergence after ADM), their layer
similarity (CKA), and their attention for the same target (Grad-CAM, deformable sampling points).

The consensus of one image is computed from the stages of forwards the caller already ran (the vision engine runs
each model once and hands its stages here); :func:`consensus` is the Analysis tab's request. Everything stays on
the models' device until a single read-back.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from analysis.attention import capture_deformable_sampling, grad_cam, sampling_point_map
from analysis.consensus import FIGURES, READABLE_LOCATIONS, SIMILARITY, analyse_stages, projection_is_determined
from analysis.features import Stage, match_stages, stack_images
from analysis.graphs import GraphCache
from analysis.readback import Layout, pack, unpack
from compare.checks import number
from compare.drawing import heat_overlay, heat_overlays, upload_image, with_colour_bar
from compare.inputs import InputError
from compare.jobs import exclusive
from compare.results import students_report
from weights.predictors import Detection, Geometry, Predictor, valid_region
from weights.registry import Pair, Student

DEFAULT_TAU = 0.1
METHODS = SIMILARITY
FOREGROUND_SCORE = 0.3
USE_CUDA_GRAPHS = os.environ.get("DISTILL_LENS_CUDA_GRAPHS", "1") != "0"  # replay repeated analyses as one graph
ANALYSIS_GRAPHS = GraphCache()


def check_analysis_options(tau, method: str) -> float:
    """``tau`` as a float in [0.001, 100] and ``method`` one of :data:`METHODS`, else :class:`InputError`."""
    tau = number(tau, "tau", 1e-3, 100.0)
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {str(method)[:40]!r}.")
    return tau


def overlay_size(height: int, width: int, max_side: int = 512) -> tuple[int, int]:
    """Overlays are drawn at the image's own size, shrunk to at most ``max_side`` on the long side."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _number(value: float) -> float | None:
    return None if value != value else round(float(value), 4)  # NaN (no foreground) -> None


def analyse_pair(t_all: list[Stage], s_all: list[Stage], foreground: torch.Tensor, image: np.ndarray,
                 tau: float = DEFAULT_TAU, method: str = "affinity") -> tuple[list[tuple[np.ndarray, str]], dict]:
    """Consensus and divergence overlays, ADM's figures per matched stage and the CKA matrix of one image.

    Args:
        t_all, s_all: every stage of the teacher and of the student on this image, (1, C, h, w) each, cropped to
            the image (see :func:`weights.predictors.valid_region`).
        foreground: (H, W) bool, the teacher's foreground (its boxes or its mask), on the teacher's device.
        image: the RGB uint8 (H, W, 3) image the overlays are drawn on.
        tau: softmax temperature, > 0.
        method: a key of :data:`METHODS`.

    Returns:
        ``(overlays, report)``: (image, caption) pairs, consensus then divergence per matched stage, and
        ``{method, tau, stages: [...], cka: {teacher_layers, student_layers, matrix}, notes}``.

    Raises:
        InputError: the two models share no feature stride.
    """
    device = t_all[0].features.device
    pairs = match_stages(t_all, s_all)
    if not pairs:
        raise InputError("Teacher and student share no feature stride to compare.")
    notes, methods = [], []
    for t, s in pairs:
        determined = method != "projection" or projection_is_determined(t.features, s.features)
        methods.append(method if determined else "affinity")
        if not determined:  # least squares would fit anything with this few locations
            notes.append(f"Stride {t.stride}: too few locations for a least-squares map of "
                         f"{s.features.shape[1]} student channels; the affinity method is used there.")
    size = overlay_size(*image.shape[:2])
    canvas = upload_image(image, device)
    index = [(next(i for i, x in enumerate(t_all) if x is t), next(j for j, x in enumerate(s_all) if x is s))
             for t, s in pairs]
    n_t, n_s = len(t_all), len(s_all)

    def compute(*tensors: torch.Tensor) -> tuple[torch.Tensor, Layout]:
        t_maps, s_maps, fg, canvas = tensors[:n_t], tensors[n_t:n_t + n_s], tensors[-2], tensors[-1]
        if tuple(canvas.shape[:2]) != size:
            canvas = torch.nn.functional.interpolate(canvas.permute(2, 0, 1)[None].float(), size=size,
                                                     mode="area")[0].permute(1, 2, 0).round().to(torch.uint8)
        result = analyse_stages([(t_maps[i], s_maps[j]) for i, j in index], methods, fg, tau, size,
                                list(t_maps), list(s_maps))
        overlays = heat_overlays(canvas, result.weights.flatten(0, 2))  # (P * 2, H, W, 3): consensus, divergence
        return pack({"overlays": overlays, "figures": result.figures[:, 0], "cka": result.cka,
                     "chance": result.consensus_chance[:, 0], "cka_chance": result.cka_chance,
                     "chance_regions": result.consensus_chance_regions[:, 0]})

    inputs = ([t.features for t in t_all] + [s.features.to(device) for s in s_all]
              + [foreground.to(device)[None], canvas])

    def finish(packed: tuple[torch.Tensor, Layout]) -> dict[str, np.ndarray]:
        return unpack(packed[0].cpu().numpy(), packed[1])

    if device.type == "cuda" and USE_CUDA_GRAPHS:
        key = (tuple((tuple(x.shape), x.dtype) for x in inputs), tuple(index), tuple(methods), tau, size)
        host = ANALYSIS_GRAPHS.run(key, compute, inputs, finish)
    else:
        host = finish(compute(*inputs))
    captions = [f"{kind} · stride {t.stride} · {t.name} ↔ {s.name}" for t, s in pairs
                for kind in ("consensus", "divergence")]
    stages = [{"teacher_layer": t.name, "student_layer": s.name, "stride": t.stride, "method": m,
               **{k: _number(v) for k, v in zip(FIGURES, row, strict=True)}, "consensus_chance": _number(chance),
               "consensus_chance_foreground": _number(regions[0]), "consensus_chance_background": _number(regions[1]),
               "locations": int(t.features.shape[-2] * t.features.shape[-1])}
              for (t, s), m, row, chance, regions in zip(pairs, methods, host["figures"], host["chance"],
                                                          host["chance_regions"], strict=True)]
    matrix = [[_number(v) for v in row] for row in host["cka"].astype(np.float64)]
    chance_matrix = [[_number(v) for v in row] for row in host["cka_chance"].astype(np.float64)]
    few = [f"/{s['stride']} ({s['locations']})" for s in stages if s["locations"] < READABLE_LOCATIONS]
    if few:
        notes.append(f"Few locations at {', '.join(few)}: on one image, CKA and consensus there can read high by "
                     "chance (a student's features of another image can score high on so few locations); read each "
                     "against the chance level beside it (the student's locations shuffled), and over a whole dataset "
                     "(the Dataset tab's CKA).")
    undefined = [f"/{t.stride} {t.name} ↔ {s.name}" for (t, s), row in zip(pairs, stages, strict=True)
                 if row["consensus_mean"] is None]
    if undefined:
        notes.append(f"Consensus is undefined at {', '.join(undefined)}: the features are constant over the image "
                     "there (or the grid has one location), so no location is more alike than another; shown as –.")
    if any(v is None for row in matrix for v in row):
        notes.append("CKA is undefined (–) for stages whose features are constant over the image, and for grids of "
                     "fewer than 4 locations.")
    report = {"method": method, "tau": tau, "stages": stages,
              "cka": {"teacher_layers": [f"{s.name} (/{s.stride})" for s in t_all],
                      "student_layers": [f"{s.name} (/{s.stride})" for s in s_all],
                      "matrix": matrix, "chance": chance_matrix,
                      "estimator": "linear CKA over the image's locations, unbiased HSIC (Song et al. 2012)"},
              "notes": notes}
    bars = [with_colour_bar(o, *(("least agreement", "most agreement") if i % 2 == 0
                                 else ("least disagreement", "most disagreement")))
            for i, o in enumerate(host["overlays"])]
    return list(zip(bars, captions, strict=True)), report


@dataclass
class Side:
    """One model as a benchmark sees it: the module, its prepared input, how the input was resized, and its
    feature method (None: the convention its attributes show)."""

    model: torch.nn.Module
    pixels: torch.Tensor
    geometry: Geometry
    explicit: Callable | None = None


def forward_stages(side: Side) -> tuple[object, list[Stage]]:
    """One gradient-free forward of the side's model that also yields its feature maps, cropped to the image."""
    from analysis.features import forward_with_stages

    with torch.no_grad():
        outputs, stages = forward_with_stages(side.model, side.pixels, explicit=side.explicit)
    padded = tuple(side.pixels.shape[-2:])
    return outputs, [valid_region(s, side.geometry, padded) for s in stages]


def analyse_sides(teacher: Side, student: Side, foreground_of: Callable[[object], torch.Tensor], image: np.ndarray,
                  tau: float = DEFAULT_TAU, method: str = "affinity") -> tuple[list[tuple[np.ndarray, str]], dict]:
    """Both forwards and :func:`analyse_pair`, as one request runs them (what ``benchmarks.analysis_overhead``
    times); ``foreground_of`` maps the teacher's outputs to its (H, W) bool foreground."""
    t_out, t_all = forward_stages(teacher)
    _, s_all = forward_stages(student)
    return analyse_pair(t_all, s_all, foreground_of(t_out), image, tau, method)


def adm_training(student: Student, tau: float, method: str) -> dict | None:
    """For a student trained with ADM's weighted loss: at which strides and τ the consensus maps are the weights
    that loss gave each location (affinity similarity, as in training), and whether these settings reproduce them."""
    if not student.adm:
        return None
    strides, trained_tau = list(student.adm["strides"]), student.adm["tau"]
    equal = method == "affinity" and abs(tau - trained_tau) < 1e-9
    where = ", ".join(f"/{s}" for s in strides)
    note = (f"{student.name} was trained with ADM's consensus-weighted feature loss at strides {where}: "
            + (f"its consensus maps there are the weights that loss gives each location of this image "
               f"(affinity similarity, τ = {trained_tau})." if equal else
               f"choose the affinity similarity and τ = {trained_tau} to see the weights that loss gives each "
               "location of this image."))
    return {"strides": strides, "tau": trained_tau, "equal": equal, "note": note}


@dataclass
class ConsensusResult:
    """The consensus analysis of one image for the teacher and each chosen student: overlays (image, caption),
    consensus then divergence per matched stage, the first student's then the second's; per-student stage figures,
    CKA matrices and ADM training notes. ``to_json()`` is the ``/consensus`` report."""

    pair: str
    method: str
    tau: float
    students: list[Student]
    overlays: list[tuple[np.ndarray, str]]
    per_student: dict[str, dict]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        block = students_report(self.students, self.per_student, "consensus_mean")
        first = block["students"][self.students[0].name]
        return {"pair": self.pair, "method": self.method, "tau": self.tau, "stages": first["stages"],
                "cka": first["cka"], "students": block["students"], "ranking": block["ranking"],
                "ranked_by": block["ranked_by"], "notes": list(self.notes)}

    def deepest_consensus(self) -> np.ndarray:
        """The first student's consensus overlay (H, W, 3) uint8 at the deepest stride it shares with the teacher:
        the one the detection and segmentation tabs show beside their boxes and masks."""
        per_student = len(self.overlays) // len(self.students)
        return self.overlays[per_student - 2][0]

    def summary(self) -> dict[str, dict]:
        """Per student: mean consensus over the stages, on the teacher's foreground and on the background."""
        out = {}
        for name, block in self.per_student.items():
            def mean(key: str, stages=block["stages"]) -> float | None:
                values = [s[key] for s in stages if s[key] is not None]
                return round(sum(values) / len(values), 4) if values else None

            out[name] = {"mean": mean("consensus_mean"), "foreground": mean("consensus_foreground"),
                         "background": mean("consensus_background")}
        return out


def consensus_of(pair: Pair, chosen: list[Student], stages: dict[str, list[Stage]], foreground: torch.Tensor | None,
                 image: np.ndarray, tau: float = DEFAULT_TAU, method: str = "affinity",
                 notes: list[str] | None = None) -> ConsensusResult:
    """The consensus result of one image from stages the caller's forwards gave.

    Args:
        pair, chosen: the pair and its chosen students.
        stages: ``{"teacher": [...], <student name>: [...]}``, each stage (1, C, h, w) cropped to the image.
        foreground: (H, W) bool, the teacher's foreground on its device; None for a classifier (the foreground
            figures are then None, with a note).
        image: RGB uint8 (H, W, 3).
        tau, method: as :func:`analyse_pair`.
        notes: notes on the input to start from.
    """
    overlays, per_student, notes = [], {}, list(notes or [])
    undefined = foreground is None  # a classifier: no foreground, so ADM's foreground figures are undefined
    if undefined:
        foreground = torch.zeros((1, 1), dtype=torch.bool, device=stages["teacher"][0].features.device)
        notes.append("An image classifier has no foreground (no boxes or mask): consensus and CKA are shown; ADM's "
                     "foreground and background figures are not defined.")
    for student in chosen:
        try:
            drawn, result = analyse_pair(stages["teacher"], stages[student.name], foreground, image, tau, method)
        except InputError as error:
            raise InputError(f"{pair.name}: {error}") from error
        adm = adm_training(student, tau, method)
        if adm is not None:
            drawn = [(picture, caption + (" · ADM training weights" if adm["equal"] and kind == 0
                                          and any(f"stride {s} " in caption for s in adm["strides"]) else ""))
                     for kind, (picture, caption) in zip(itertools.cycle((0, 1)), drawn)]
            notes.append(adm["note"])
        prefix = f"{student.name} · " if len(chosen) > 1 else ""
        overlays += [(picture, prefix + caption) for picture, caption in drawn]
        notes += [f"{student.name}: {n}" if len(chosen) > 1 else n for n in result.pop("notes")]
        if undefined:
            for stage in result["stages"]:
                stage.update(dict.fromkeys(FIGURES[1:], None))
        means = [s["consensus_mean"] for s in result["stages"] if s["consensus_mean"] is not None]
        per_student[student.name] = {**result, "adm_training": adm,
                                     "agreement": {"consensus_mean": round(sum(means) / len(means), 4)
                                                   if means else None}}
    return ConsensusResult(pair.name, method, tau, chosen, overlays, per_student, notes)


def consensus_figures(pair: Pair, chosen: list[Student], stages: dict[str, list[list[Stage]]],
                      foregrounds: list[torch.Tensor | None], tau: float = DEFAULT_TAU, method: str = "affinity",
                      ) -> list[ConsensusResult]:
    """ADM's figures per matched stage for many images at once, without overlays or per-image CKA (the dataset
    report's path): images whose stages and foregrounds have one shape run as one batch, every student at once,
    through :func:`analysis.consensus.analyse_stages`, with one read-back per batch. The figures are the
    Analysis tab's (:func:`consensus_of`) for each image.

    Args:
        stages: ``{name: [per image: [Stage (1, C, h, w)]]}`` as the forwards gave them (cropped to each image).
        foregrounds: per image, the (H, W) bool foreground; None for a classifier (foreground figures undefined).
    """
    count = len(foregrounds)
    per_image: list[dict[str, dict]] = [{} for _ in range(count)]
    notes: list[list[str]] = [[] for _ in range(count)]
    groups: dict[tuple, list[int]] = {}
    for i in range(count):
        shapes = tuple(tuple(s.features.shape) for name in ["teacher", *(c.name for c in chosen)]
                       for s in stages[name][i])
        fg = None if foregrounds[i] is None else tuple(foregrounds[i].shape)
        groups.setdefault((shapes, fg), []).append(i)
    adm = {student.name: adm_training(student, tau, method) for student in chosen}

    def stacked(name: str, members: list[int]) -> list[Stage]:
        return [Stage(s.name, s.stride, stack_images([stages[name][i][k].features for i in members]))
                for k, s in enumerate(stages[name][members[0]])]

    for (_, fg_shape), members in groups.items():
        # every student's pairs in one call: the teacher's stages (one object each) have their own sums computed once
        t_all = stacked("teacher", members)
        device = t_all[0].features.device
        pairs, methods, owner = [], [], []
        for student in chosen:
            matched = match_stages(t_all, stacked(student.name, members))
            if not matched:
                raise InputError(f"{pair.name}: Teacher and student share no feature stride to compare.")
            pairs += matched
            owner += [student.name] * len(matched)
            methods += [method if method != "projection" or projection_is_determined(t.features, s.features)
                        else "affinity" for t, s in matched]
        foreground = (torch.stack([foregrounds[i].to(device) for i in members]) if fg_shape is not None
                      else torch.zeros((len(members), 1, 1), dtype=torch.bool, device=device))
        result = analyse_stages([(t.features, s.features.to(device)) for t, s in pairs], methods, foreground, tau,
                                None, [], [], with_cka=False)
        host = result.figures.float().cpu().numpy()  # (P, B, 6): the one read-back of this batch
        for b, i in enumerate(members):
            for student in chosen:
                rows = [{"teacher_layer": t.name, "student_layer": s.name, "stride": t.stride, "method": m,
                         **{k: (None if fg_shape is None and k != "consensus_mean" else _number(v))
                            for k, v in zip(FIGURES, host[p, b], strict=True)}}
                        for p, ((t, s), m, name) in enumerate(zip(pairs, methods, owner, strict=True))
                        if name == student.name]
                means = [r["consensus_mean"] for r in rows if r["consensus_mean"] is not None]
                per_image[i][student.name] = {"stages": rows, "cka": None, "adm_training": adm[student.name],
                                              "agreement": {"consensus_mean": round(sum(means) / len(means), 4)
                                                            if means else None}}
            if fg_shape is None and not notes[i]:
                notes[i].append("An image classifier has no foreground (no boxes or mask): ADM's foreground and "
                                "background figures are not defined.")
    return [ConsensusResult(pair.name, method, tau, chosen, [], per_image[i], notes[i]) for i in range(count)]


ANALYSED_TASKS = ("detection", "segmentation", "image-classification")


def check_analysis_pair(pair: Pair, what: str = "The Analysis tab") -> None:
    if pair.task not in ANALYSED_TASKS:
        raise InputError(f"{what} takes detection, segmentation or image-classification pairs; {pair.name} is "
                         f"{pair.task}.")


# Attention for one target --------------------------------------------------------------------------------------

def detection_target(detections: list[Detection], target: str) -> int:
    """Index of the teacher detection named by ``target``: '' or a rank ('0', '1', ...) or a label."""
    if not detections:
        raise InputError("The teacher found no object to explain at this image; try another image.")
    target = (target or "").strip()
    if target == "" or re.fullmatch(r"[0-9]{1,9}", target):  # ASCII digits only: "²" is no rank
        rank = int(target or 0)
        if rank >= len(detections):
            raise InputError(f"target rank {rank} is out of range: the teacher found {len(detections)} "
                             f"objects (ranks 0 to {len(detections) - 1}).")
        return rank
    for i, d in enumerate(detections):
        if d.label == target:
            return i
    raise InputError(f"The teacher found no {target[:40]!r}; it found: "
                     f"{', '.join(sorted({d.label for d in detections}))}.")


def _query_for_box(outputs, box_xyxy: torch.Tensor) -> int:
    """The DETR query whose predicted box overlaps the target box most (boxes in [0, 1] cxcywh)."""
    from torchvision.ops import box_convert, box_iou

    boxes = box_convert(outputs.pred_boxes[0].float(), "cxcywh", "xyxy")
    return int(box_iou(boxes, box_xyxy[None].to(boxes.device)).squeeze(1).argmax())


def _detached(outputs: Any) -> Any:
    """The same outputs with every tensor detached (to read detections or class maps off a Grad-CAM forward)."""
    if torch.is_tensor(outputs):
        return outputs.detach()
    if isinstance(outputs, dict):
        return type(outputs)(**{k: _detached(v) for k, v in outputs.items()}) if type(outputs) is not dict else {
            k: _detached(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_detached(v) for v in outputs)
    return outputs


@dataclass
class Target:
    """What both models explain: the teacher's chosen box (detection) or class region (segmentation)."""

    label: int | None = None
    box: list[float] | None = None
    region: torch.Tensor | None = None  # (H, W) bool at the image's size, on the CPU
    info: dict = field(default_factory=dict)


def choose_target(teacher: Predictor, outputs: Any, geometry: Geometry, target: str) -> Target:
    """The teacher's target from its own outputs: a detection by rank or label, a class by name (segmentation:
    default the largest non-background class of its mask; image classification: default its top-1 class)."""
    if teacher.task == "image-classification":
        probs = teacher.family.logits(teacher, outputs)[0].float().softmax(-1)
        if (target or "").strip():
            if target.strip() not in teacher.labels:
                raise InputError(f"Unknown class {target.strip()[:40]!r}: name one of the teacher's "
                                 f"{len(teacher.labels)} classes, e.g. {teacher.labels[int(probs.argmax())]!r}.")
            label = teacher.labels.index(target.strip())
        else:
            label = int(probs.argmax())
        return Target(label, None, None, {"kind": "class", "label": teacher.labels[label],
                                          "teacher_prob": round(float(probs[label]), 4)})
    if teacher.task == "detection":
        detections = teacher.detections(outputs, [geometry], 0.0)[0]  # ranked; rank 0 is the teacher's best
        chosen = detections[detection_target(detections, str(target))]
        return Target(teacher.labels.index(chosen.label), chosen.box, None,
                      {"kind": "box", "label": chosen.label, "box": [round(v, 2) for v in chosen.box],
                       "score": round(chosen.score, 4)})
    class_map = teacher.class_maps(outputs, [geometry])[0].cpu()
    counts = torch.bincount(class_map.flatten(), minlength=len(teacher.labels))
    if (target or "").strip():
        if target.strip() not in teacher.labels:
            raise InputError(f"Unknown class {target.strip()[:40]!r}; classes: {', '.join(teacher.labels[:20])}"
                             + (" …" if len(teacher.labels) > 20 else "") + ".")
        label = teacher.labels.index(target.strip())
    else:
        ranked = counts.argsort(descending=True).tolist()
        label = next((c for c in ranked if teacher.labels[c] != "background"), ranked[0])
    region = class_map == label
    if not region.any():
        raise InputError(f"The teacher predicts no {teacher.labels[label]!r} pixels in this image.")
    return Target(label, None, region, {"kind": "segment", "label": teacher.labels[label],
                                        "pixels": int(region.sum())})


SHOWN_SCORE = 0.3  # the detection score from which the app shows a box (the Detection tab's default threshold)


@dataclass
class Explained:
    """One model's explanation: its (h, w) map in [0, 1] on its own grid, the method's name, the target, and the
    outputs and inputs of the forward that made it (so a caller needs no second forward for the predictions)."""

    map: torch.Tensor
    method: str
    target: Target
    outputs: Any
    inputs: dict[str, torch.Tensor]
    seconds: float = 0.0


def attention_map(predictor: Predictor, array: np.ndarray, target: Target | None, target_text: str = "",
                  ) -> Explained:
    """One model's map for the target, from one forward of it.

    With ``target`` None (the teacher), the target is chosen from this same forward's outputs
    (:func:`choose_target` with ``target_text``); a student explains the teacher's target.
    """
    from analysis.profiling import Stopwatch

    with Stopwatch(predictor.device) as watch:
        explained = _attention_map(predictor, array, target, target_text)
    explained.seconds = watch.seconds
    return explained


def _attention_map(predictor: Predictor, array: np.ndarray, target: Target | None, target_text: str) -> Explained:
    inputs, geometry = predictor.prepare(array)
    pixels = inputs["pixel_values"]
    padded = tuple(pixels.shape[-2:])
    chosen = [target]
    if predictor.family.attention_kind(predictor) == "deformable":
        with capture_deformable_sampling(predictor.model) as captured, torch.no_grad():
            outputs = predictor.model(pixel_values=pixels)
        if chosen[0] is None:
            chosen[0] = choose_target(predictor, outputs, geometry, target_text)
        locations, weights = captured[sorted(captured)[-1]]  # the last decoder layer
        w, h = geometry.width, geometry.height
        query = _query_for_box(outputs, torch.tensor(chosen[0].box) / torch.tensor([w, h, w, h]))
        return Explained(sampling_point_map(locations[0, query], weights[0, query], (h, w)),
                         "deformable sampling points", chosen[0], outputs, inputs)

    def score(out):
        if chosen[0] is None:
            chosen[0] = choose_target(predictor, _detached(out), geometry, target_text)
        t = chosen[0]
        if predictor.task == "detection":
            return predictor.family.detection_score(predictor, out, t.box, t.label, geometry, padded)
        logits = predictor.family.logits(predictor, out)
        if predictor.task == "image-classification":
            return logits[:, t.label].float()
        mask = torch.nn.functional.interpolate(t.region[None, None].float(), size=padded, mode="nearest")
        mask = torch.nn.functional.interpolate(mask, size=logits.shape[-2:], mode="area").to(logits.device)
        return (logits[:, t.label].float() * mask[:, 0]).sum((1, 2)) / mask.sum().clamp_min(1)

    explicit = predictor.family.stages if predictor.family.explicit_stages else None
    cam, outputs = grad_cam(predictor.model, pixels, score, explicit=explicit,
                            tokens=predictor.family.token_blocks(predictor))
    cam = valid_region(Stage("cam", 1, cam[:, None]), geometry, padded).features[0, 0]
    return Explained(cam, "Grad-CAM (last stage)", chosen[0], _detached(outputs), inputs)


@dataclass
class AttentionResult:
    """Teacher and student attention maps for the same target (image size, [0, 1], CPU) and their absolute
    difference; ``to_json()`` is the ``/attention`` report."""

    pair: str
    student: str
    target: dict
    methods: dict[str, str]
    maps: dict[str, torch.Tensor]
    notes: list[str]
    explained: dict[str, Explained] = field(default_factory=dict)  # per side: the forward behind each map

    @property
    def difference(self) -> torch.Tensor:
        return (self.maps["teacher"] - self.maps["student"]).abs()

    def images(self, image: np.ndarray) -> list[np.ndarray]:
        """Teacher, student and |difference| as heat overlays with their colour bars."""
        return [heat_overlay(image, self.maps[r]) for r in ("teacher", "student")] + [
            heat_overlay(image, self.difference)]

    def to_json(self) -> dict:
        return {"pair": self.pair, "student": self.student, "target": self.target, "method": self.methods,
                "mean_abs_difference": round(float(self.difference.mean()), 4), "notes": list(self.notes)}


def explain(pair: Pair, student: Student, predictors: dict[str, Predictor], array: np.ndarray, target: str = "",
            notes: list[str] | None = None) -> AttentionResult:
    """Teacher and student attention for the same target, one forward of each model.

    Args:
        pair: a detection or segmentation pair; ``student`` one of its students.
        predictors: ``{"teacher": ..., "student": ...}``.
        array: RGB uint8 (H, W, 3).
        target: detection: a rank of the teacher's detections ('' or '0' = its best) or a label;
            segmentation: a class name ('' = the largest non-background class in the teacher's mask).
    """
    notes = list(notes or [])
    explained, chosen = {}, None
    for role in ("teacher", "student"):
        with exclusive(predictors[role].model):  # hooks on the shared model, for this call only
            explained[role] = attention_map(predictors[role], array, chosen, target)
            chosen = explained[role].target
    methods = {r: e.method for r, e in explained.items()}
    size = array.shape[:2]
    full = {r: torch.nn.functional.interpolate(e.map[None, None].float().cpu(), size=size, mode="bilinear",
                                               align_corners=False)[0, 0] for r, e in explained.items()}
    for role in ("teacher", "student"):
        if not float(full[role].max()) > 0:
            notes.append(f"The {role}'s map is empty: its {methods[role]} gives no positive evidence for this target "
                         "(e.g. the gradient vanished); the difference then shows the other map alone.")
    score = chosen.info.get("score")
    if score is not None and score < SHOWN_SCORE:
        notes.append(f"The target is a candidate the teacher scores only {score:.3f} (the Detection tab shows boxes "
                     f"from {SHOWN_SCORE}): these maps explain a box it barely proposes. Give a rank among its shown "
                     "boxes ('' or 0: its best) or one of their labels.")
    return AttentionResult(pair.name, student.name, chosen.info, methods, full, notes, explained)
