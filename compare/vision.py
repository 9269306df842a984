"""Detection and segmentation comparisons: a teacher and its students on a list of images, each model run once.

Images whose prepared inputs have the same shape run as one batch. When the request asks for the consensus
analysis, the same forwards also yield the feature stages (the model's own feature method, else hooks), so the
boxes or masks and the analysis come from one forward per model per image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from analysis.agreement import detection_agreement, segmentation_agreement
from analysis.features import Stage, stack_images
from analysis.profiling import Stopwatch
from compare.analysis import FOREGROUND_SCORE, ConsensusResult, consensus_figures, consensus_of
from compare.inputs import InputError
from compare.labels import map_on_teacher, match_labels, probabilities_on_teacher, shared_agreement_inputs
from compare.latency import profile_of
from compare.logits import logits_agreement
from compare.results import DetectionComparison, ImageClassificationComparison, Profile, SegmentationComparison
from weights.predictors import Detection, Geometry, Predictor, valid_region
from weights.registry import Pair, Student


@dataclass
class Forwarded:
    """One model's forward over the images at ``indices`` (prepared to one shape): its outputs, the images'
    geometries, their stages when asked for (each (1, C, h, w), cropped to its image), and the seconds it took."""

    outputs: Any
    geometries: list[Geometry]
    indices: list[int]
    stages: list[list[Stage]] | None
    seconds: float


def batches(prepared: list[tuple[dict, Geometry]]) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
    """Prepared images grouped into one batch per input shape: ``[(image indices, {"pixel_values": (b, ...)})]``."""
    groups: dict[tuple, list[int]] = {}
    for i, (inputs, _) in enumerate(prepared):
        groups.setdefault(tuple(inputs["pixel_values"].shape[1:]), []).append(i)
    return [(indices, {"pixel_values": stack_images([prepared[i][0]["pixel_values"] for i in indices])})
            for indices in groups.values()]


def forward_batched(predictor: Predictor, prepared: list[tuple[dict, Geometry]], with_stages: bool,
                    ) -> list[Forwarded]:
    """Run ``predictor`` once over every prepared image, one batch per input shape."""
    done = []
    for indices, batch in batches(prepared):
        geometries = [prepared[i][1] for i in indices]
        with Stopwatch(predictor.device) as watch:
            if with_stages:
                outputs, stages = predictor.forward_with_stages(batch)
            else:
                outputs, stages = predictor.forward(batch), None
        per_image = None
        if stages is not None:
            padded = tuple(batch["pixel_values"].shape[-2:])
            rows = [s.features.split(1) for s in stages]  # (1, C, h, w) views, one per image
            per_image = [[valid_region(Stage(s.name, s.stride, r[k]), g, padded)
                          for s, r in zip(stages, rows, strict=True)] for k, g in enumerate(geometries)]
        done.append(Forwarded(outputs, geometries, indices, per_image, watch.seconds))
    return done


def profile(predictor: Predictor, prepared: list[tuple[dict, Geometry]], forwarded: list[Forwarded],
            latency: bool) -> Profile:
    """The model's cost in this request (:func:`compare.latency.profile_of`), at the first image's input shape."""
    this_run = sum(f.seconds for f in forwarded) / max(1, len(prepared)) * 1000
    return profile_of(predictor, prepared[0][0] if prepared else None, this_run, latency)


def with_f1(agreement: dict) -> dict:
    """Add ``f1``: 2·matched / (2·matched + missed + extra), one number for how well the boxes agree (1 when both
    found nothing)."""
    m, total = agreement["matched"], 2 * agreement["matched"] + agreement["missed"] + agreement["extra"]
    return agreement | {"f1": round(2 * m / total, 4) if total else 1.0}


def _as_arrays(detections: list[Detection], label_index: dict[str, int]) -> dict[str, np.ndarray]:
    """Boxes already on the host as the agreement's numpy inputs: ``boxes`` (N, 4) float32, ``scores`` (N,) float32,
    ``labels`` (N,) int64."""
    return {
        "boxes": np.array([d.box for d in detections], dtype=np.float32).reshape(-1, 4),
        "scores": np.array([d.score for d in detections], dtype=np.float32),
        "labels": np.array([label_index[d.label] for d in detections], dtype=np.int64),
    }


@dataclass
class VisionRequest:
    """What to compare: a pair (registered, or made from modules), the chosen students, the images (RGB uint8
    (H, W, 3) each) with notes on each, and the options: the detection score ``threshold`` in [0, 1], whether to
    report warm ``latency`` (measured once per model and input shape, then cached), and whether to run the
    ``consensus`` analysis (τ ``tau``, similarity ``method``) from the same forwards."""

    pair: Pair
    students: list[Student]
    images: list[np.ndarray]
    notes: list[list[str]] | None = None
    threshold: float = 0.3
    latency: bool = True
    consensus: bool = False
    tau: float = 0.1
    method: str = "affinity"
    foregrounds: list[torch.Tensor] | None = None  # (H, W) bool per image: ground truth instead of the teacher's
    overlays: bool = True  # False: the consensus figures only, images batched (no pictures, no per-image CKA)
    accuracy_threshold: float | None = None  # detection: also keep every box down to this score (all_detections)


# Shapes scenes are drawn at 128 px (weights/shapes/world.py): an image whose short side is twice that is most likely
# no Shapes scene (the examples' photos are 300 px and more), and the builtin nets' result on it says little
LARGER_THAN_SHAPES = 256
BUILTIN_ON_OTHER_IMAGES = ("The builtin pairs know only the Shapes world (five shapes on a noisy background, drawn at "
                           "128 px); on other images, photos included, their boxes, masks and agreement mean little. "
                           "For photos, choose a Hub pair or your own models.")


def run_vision(request: VisionRequest, predictors: dict[str, Predictor], stages_out: dict | None = None,
               ) -> list[DetectionComparison | SegmentationComparison]:
    """Every model of ``predictors`` (``{"teacher": ..., <student name>: ...}``) once over the request's images.

    ``stages_out``, when given (with ``consensus``), receives ``{name: [per image: [Stage (1, C, h, w)]]}``: the
    stages the analysis used, for callers that measure more from the same forwards (the training monitor's dataset
    CKA).

    Returns:
        One comparison per image, in order: detections (boxes above the threshold, agreement with the teacher's)
        or class maps (mIoU, pixel and per-class agreement), each model's :class:`Profile`, and the
        :class:`compare.analysis.ConsensusResult` when the request asked for it.
    """
    pair, chosen, images = request.pair, request.students, request.images
    notes = [list(n) for n in request.notes] if request.notes else [[] for _ in images]
    if all(getattr(s, "kind", None) == "builtin" for s in (pair.teacher, *(s.source for s in chosen))):
        for image_notes, image in zip(notes, images, strict=True):
            if min(image.shape[:2]) >= LARGER_THAN_SHAPES and BUILTIN_ON_OTHER_IMAGES not in image_notes:
                image_notes.append(BUILTIN_ON_OTHER_IMAGES)
    outputs: dict[str, list] = {}
    everything: dict[str, list] = {}
    stages: dict[str, list] = {}
    foregrounds: list[torch.Tensor | None] = [None] * len(images)
    profiles: dict[str, Profile] = {}
    preparations: dict = {}  # models whose family prepares alike share each image's preparation
    for name, predictor in predictors.items():
        key = predictor.family.prepare_key(predictor)
        prepared = preparations.get(key) if key is not None else None
        if prepared is None:
            prepared = predictor.prepare_many(images)
            if key is not None:
                preparations[key] = prepared
        forwarded = forward_batched(predictor, prepared, request.consensus)
        outputs[name], stages[name] = [None] * len(images), [None] * len(images)
        low = request.threshold if request.accuracy_threshold is None or pair.task != "detection" \
            else min(request.threshold, request.accuracy_threshold)
        for group in forwarded:
            if low != request.threshold:  # the boxes down to the lower score as arrays, then the request's own
                read = predictor.detection_arrays(group.outputs, group.geometries, low)
                for k, i in enumerate(group.indices):
                    everything.setdefault(name, [None] * len(images))[i] = read[k]
                read = [found.above(request.threshold) for found in read]
            else:
                read = READERS[pair.task](predictor, group, low)
            # the teacher's foreground for the analysis (a classifier has none; labels may give it instead)
            found = predictor.foregrounds(group.outputs, group.geometries, FOREGROUND_SCORE) \
                if group.stages is not None and name == "teacher" and pair.task != "image-classification" \
                and request.foregrounds is None else None
            for k, i in enumerate(group.indices):
                outputs[name][i] = read[k]
                if group.stages is not None:
                    stages[name][i] = group.stages[k]
                if found is not None:
                    foregrounds[i] = found[k]
        profiles[name] = profile(predictor, prepared, forwarded, request.latency)
    if request.foregrounds is not None:
        foregrounds = [f.to(predictors["teacher"].device) for f in request.foregrounds]
    if stages_out is not None:
        stages_out.update(stages)
    build: Callable = BUILDERS[pair.task]
    figures = consensus_figures(pair, chosen, stages, foregrounds, request.tau, request.method) \
        if request.consensus and not request.overlays else None
    results = []
    for i, image in enumerate(images):
        analysis: ConsensusResult | None = None
        if figures is not None:
            analysis = figures[i]
        elif request.consensus:
            analysis = consensus_of(pair, chosen, {n: stages[n][i] for n in predictors}, foregrounds[i], image,
                                    request.tau, request.method, notes[i])
        results.append(build(pair, chosen, predictors, {n: outputs[n][i] for n in predictors}, profiles,
                             list(notes[i]), analysis))
        if everything:
            results[-1].all_detections = {n: everything[n][i] for n in predictors}
    return results


def detection_labels(predictors: dict) -> list[str]:
    """The union of the models' label names, the teacher's first, in first-seen order: the label index of a
    detection comparison (and of the dataset report's drawings)."""
    return list(dict.fromkeys(label for p in predictors.values() for label in p.labels))


def _detection_result(pair, chosen, predictors, detections, profiles, notes, analysis) -> DetectionComparison:
    detections = dict(detections)
    teacher_labels = predictors["teacher"].labels
    for s in chosen:  # a student's class names matched to the teacher's by name: its boxes carry the teacher's
        match = match_labels(teacher_labels, predictors[s.name].labels)
        if not match.same:
            spelled = {name: teacher_labels[i] for name, i in zip(predictors[s.name].labels, match.index.tolist(),
                                                                   strict=True) if i >= 0}
            detections[s.name] = [Detection(spelled.get(d.label, d.label), d.score, d.box)
                                  for d in detections[s.name]]
            _note(notes, match.note(s.name))
    index = {name: i for i, name in enumerate(dict.fromkeys(
        [*teacher_labels, *(d.label for name in detections for d in detections[name])]))}
    teacher = _as_arrays(detections["teacher"], index)
    agreement = {s.name: with_f1(detection_agreement(teacher, _as_arrays(detections[s.name], index)))
                 for s in chosen}
    return DetectionComparison(pair.name, chosen, profiles, notes, analysis, list(index), detections, agreement)


def _segmentation_result(pair, chosen, predictors, maps, profiles, notes, analysis) -> SegmentationComparison:
    classes = predictors["teacher"].labels
    agreement = {}
    for s in chosen:
        match = match_labels(classes, predictors[s.name].labels)
        student = map_on_teacher(maps[s.name].to(maps["teacher"].device), match, len(classes))
        block = segmentation_agreement(maps["teacher"], student, len(classes) + (not match.same))
        names = [*classes, "(student-only classes)"]
        block["per_class"] = {names[i]: v for i, v in block["per_class"].items()}
        agreement[s.name] = block
        _note(notes, match.note(s.name))
    return SegmentationComparison(pair.name, chosen, profiles, notes, analysis, classes, maps, agreement)


def _note(notes: list[str], note: str | None) -> None:
    if note and note not in notes:
        notes.append(note)


def _classification_result(pair, chosen, predictors, probs, profiles, notes, analysis,
                           ) -> ImageClassificationComparison:
    classes = predictors["teacher"].labels
    probs, agreement = dict(probs), {}
    for s in chosen:  # a student with other class names: its probabilities over the teacher's names
        match = match_labels(classes, predictors[s.name].labels)
        probs[s.name] = probabilities_on_teacher(probs[s.name], match, len(classes))
        if match.shared < MIN_SHARED_CLASSES:  # one shared class: every figure would read "identical"
            agreement[s.name] = dict.fromkeys(logits_agreement(probs["teacher"], probs["teacher"]), None)
            _note(notes, f"{s.name} shares {match.shared} class name{'s' if match.shared != 1 else ''} with the "
                         f"teacher: too few to compare their predictions, so its agreement is undefined (–).")
        else:
            agreement[s.name] = logits_agreement(*shared_agreement_inputs(probs["teacher"], probs[s.name], match))
        _note(notes, match.note(s.name))
    return ImageClassificationComparison(pair.name, chosen, profiles, notes, analysis, predictors["teacher"].labels,
                                         probs, {}, agreement, {})


def _probabilities(predictor: Predictor, group: Forwarded, _threshold: float) -> list[torch.Tensor]:
    logits = predictor.family.logits(predictor, group.outputs).float()
    if logits.shape[-1] != len(predictor.labels):
        raise InputError(f"{predictor.source.display_name if predictor.source else 'a model'} gives "
                         f"{logits.shape[-1]} logits for {len(predictor.labels)} class names.")
    return list(logits.softmax(-1).cpu())


MIN_SHARED_CLASSES = 2  # a classifier student compared on fewer shared classes has no agreement to speak of


READERS: dict[str, Callable] = {
    "detection": lambda p, group, threshold: p.detections(group.outputs, group.geometries, threshold),
    "segmentation": lambda p, group, _threshold: p.class_maps(group.outputs, group.geometries),
    "image-classification": _probabilities,
}
BUILDERS: dict[str, Callable] = {"detection": _detection_result, "segmentation": _segmentation_result,
                                 "image-classification": _classification_result}
