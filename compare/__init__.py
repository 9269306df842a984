"""The Distill Lens engine: a teacher and its students on your images, each model run once, typed results.

No Gradio here. The app's tabs, its API, the dataset report, the benchmarks and a notebook all call these:

    import compare
    [result] = compare.compare("shapes-detection", ["scene.png"], students="feature-kd,adm-consensus")
    result.agreement["feature-kd"]["f1"], result.profiles["teacher"].latency_ms
    result.to_json()                                   # the /detect report

    pair = compare.ModulePair(teacher, {"small": student}, compare.TaskAdapter("classification", labels))
    results = compare.compare(pair, images)            # any modules, a list of images or a (B, 3, H, W) batch

Each call runs every model once per image (images of one prepared shape as one batch); latency comes from a cache
of warm timings measured once per model and input shape (:mod:`compare.latency`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from compare.analysis import (
    DEFAULT_TAU,
    AttentionResult,
    ConsensusResult,
    check_analysis_options,
    check_analysis_pair,
    explain,
)
from compare.checks import number
from compare.inputs import InputError, read_image
from compare.modules import ModulePair, TaskAdapter
from compare.results import (
    ClassificationComparison,
    Comparison,
    DetectionComparison,
    ImageClassificationComparison,
    Profile,
    SegmentationComparison,
)
from compare.vision import VisionRequest, run_vision
from weights.predictors import Predictor, predictors_for
from weights.registry import Pair, Student, get_pair

__all__ = ["AttentionResult", "ClassificationComparison", "Comparison", "ConsensusResult", "DetectionComparison",
           "ImageClassificationComparison", "InputError", "ModulePair", "Profile", "SegmentationComparison",
           "TaskAdapter", "attention", "classify_image", "compare", "consensus", "detect", "load", "read_images",
           "segment"]


def read_images(images: Any) -> tuple[list[np.ndarray], list[list[str]]]:
    """Images in any form the engine takes -> RGB uint8 (H, W, 3) arrays and notes on each.

    Args:
        images: one image or a list of them (file paths, numpy (H, W, 3) uint8 arrays, PIL images), or a
            (B, 3, H, W) tensor (uint8, or float in [0, 1]).

    Raises:
        InputError: an unreadable image, one too small or too large (the message names it), or no image.
    """
    if torch.is_tensor(images):
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"A tensor batch must be (B, 3, H, W), got {tuple(images.shape)}.")
        batch = images.detach().cpu()
        if batch.dtype != torch.uint8:
            batch = (batch.float().clamp(0, 1) * 255).round().to(torch.uint8)
        images = list(batch.permute(0, 2, 3, 1).numpy())
    elif not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise InputError("No images given.")
    read = [read_image(image) for image in images]
    return [array for array, _ in read], [notes for _, notes in read]


def resolve(pair: str | Pair | ModulePair, task: str | None = None) -> Pair:
    """The pair's spec, loading no model (``task`` narrows the registry's suggestions for an unknown name)."""
    if isinstance(pair, ModulePair):
        return pair.as_pair()
    return pair if isinstance(pair, Pair) else get_pair(pair, task)


def load(pair: str | Pair | ModulePair, students: str | Sequence[str] | None = None, task: str | None = None,
         ) -> tuple[Pair, list[Student], dict[str, Predictor]]:
    """The pair, its chosen students and their loaded models (``{"teacher": ..., <name>: ...}``).

    Args:
        pair: a registered pair's name, a :class:`weights.registry.Pair`, or a :class:`ModulePair`.
        students: names (a list, or one comma-separated string); default the first (a ModulePair: all of them).
        task: when given, the pair must be of this task.

    Raises:
        UnknownPairError, UnknownStudentError, ModelUnavailableError: with messages naming what to change.
    """
    spec = resolve(pair, task)
    if isinstance(pair, ModulePair):
        chosen = list(spec.students) if students is None else spec.choose_students(students)
        return spec, chosen, pair.predictors(spec, chosen)
    if task is not None and spec.task != task:
        raise InputError(f"{spec.name} is a {spec.task} pair, not {task}.")
    if spec.task == "generation":  # pipelines, not predictors
        raise InputError(f"{spec.name} is a generation pair: run it with compare.generation.generate (its pipelines "
                         "load there).")
    chosen = spec.choose_students(students)
    return spec, chosen, predictors_for(spec, students=chosen)


def compare(pair: str | Pair | ModulePair, images: Any, students: str | Sequence[str] | None = None,
            threshold: float = 0.3, latency: bool = True, consensus: bool = False, tau: float = DEFAULT_TAU,
            method: str = "affinity", classes: Sequence[str] | None = None, template: str = "a {}",
            prompt: str = "") -> list[Comparison]:
    """Run a teacher and its students on images and compare them; one forward per model per image.

    Args:
        pair: a registered pair's name, a ``Pair``, or a :class:`ModulePair` of your own modules.
        images: see :func:`read_images`.
        students: which students (default: the pair's first; a ModulePair's all).
        threshold: detection score threshold in [0, 1].
        latency: report warm latency and FLOPs (measured once per model and input shape, then cached; the first
            call for a shape runs a few extra timed forwards).
        consensus: also the consensus analysis (per stage, CKA) from the same forwards (detection, segmentation and
            image classification; a classifier has no foreground, so ADM's foreground figures are None).
        tau, method: the analysis' softmax temperature and similarity (``"affinity"`` or ``"projection"``).
        classes: CLIP (``classification``) pairs: the class names; ``template`` with one ``{}``; ``prompt`` a learned
            prompt's name. Image classifiers (``image-classification``) use their own labels.

    Returns:
        One result per image: :class:`DetectionComparison`, :class:`SegmentationComparison` or
        :class:`ClassificationComparison` (``to_json()`` gives the app's report).

    Raises:
        InputError: a bad argument or image, with a message naming it.
    """
    spec, chosen, predictors = load(pair, students)
    arrays, notes = read_images(images)
    if spec.task in ("detection", "segmentation", "image-classification"):
        threshold = number(threshold, "threshold", 0.0, 1.0)
        if consensus:
            tau = check_analysis_options(tau, method)
        return run_vision(VisionRequest(spec, chosen, arrays, notes, threshold, latency, consensus, tau, method),
                          predictors)
    if spec.task == "classification":
        from compare.zero_shot import check_template, parse_classes, zero_shot

        names, class_notes = parse_classes(", ".join(classes or []))
        return zero_shot(spec, chosen, predictors, arrays, names, check_template(template), prompt,
                         [class_notes + n for n in notes], latency)
    raise InputError(f"{spec.name} is a {spec.task} pair; compare() takes detection, segmentation, classification "
                     "and image-classification pairs (generation: compare.generation.generate).")


def consensus(pair: str | Pair | ModulePair, image: Any, students: str | Sequence[str] | None = None,
              tau: float = DEFAULT_TAU, method: str = "affinity") -> ConsensusResult:
    """The consensus analysis of one image (the Analysis tab's request): one forward of each model."""
    tau = check_analysis_options(tau, method)
    check_analysis_pair(resolve(pair))
    spec, chosen, predictors = load(pair, students)
    arrays, notes = read_images(image)
    [result] = run_vision(VisionRequest(spec, chosen, arrays[:1], notes[:1], latency=False, consensus=True, tau=tau,
                                        method=method), predictors)
    return result.analysis


def attention(pair: str | Pair | ModulePair, image: Any, target: str = "",
              students: str | Sequence[str] | None = None) -> AttentionResult:
    """Teacher and student attention (Grad-CAM, or a DETR query's sampling points) for the same target; one
    forward of each model. ``target``: detection, a rank of the teacher's boxes or a label; segmentation, a class
    name (empty: the teacher's best box, or its largest non-background class). Of several students, the first."""
    check_analysis_pair(resolve(pair), "Attention maps")
    spec, chosen, predictors = load(pair, students)
    student = chosen[0]
    arrays, notes = read_images(image)
    return explain(spec, student, {"teacher": predictors["teacher"], "student": predictors[student.name]},
                   arrays[0], target, notes[0])


def _one(task: str, image: Any, pair: str | Pair | ModulePair, students, **options) -> Comparison:
    """One image of one task through :func:`compare`, checked in the order the app's endpoints check."""
    spec, chosen, predictors = load(pair, students, task)
    arrays, notes = read_images(image)
    return run_vision(VisionRequest(spec, chosen, arrays[:1], notes[:1], **options), predictors)[0]


def detect(image: Any, pair: str | Pair | ModulePair = "shapes-detection", threshold: float = 0.3,
           students: str | Sequence[str] | None = None, consensus: bool = False, latency: bool = True,
           ) -> DetectionComparison:
    """A detection pair's teacher and one or two students on one image (the ``/detect`` request).

    Args:
        image: a file path, numpy RGB array or PIL image.
        pair: a detection pair.
        threshold: boxes below this score are dropped, in [0, 1].
        students: one or two student names (a list or a comma-separated string); default the pair's first.
        consensus: also the consensus analysis at the default τ, from the same forwards.
        latency: report warm latency (cached after the first request at this input shape).

    Raises:
        InputError: a threshold outside [0, 1] or not a number, an unreadable image; UnknownPairError and
            UnknownStudentError for names the registry does not hold.
    """
    value = number(threshold, "score_threshold", 0.0, 1.0)
    return _one("detection", image, pair, students, threshold=value, consensus=consensus, latency=latency)


def segment(image: Any, pair: str | Pair | ModulePair = "shapes-segmentation",
            students: str | Sequence[str] | None = None, consensus: bool = False, latency: bool = True,
            ) -> SegmentationComparison:
    """A segmentation pair's teacher and one or two students on one image (the ``/segment`` request); arguments
    as :func:`detect`."""
    return _one("segmentation", image, pair, students, consensus=consensus, latency=latency)


def classify_image(image: Any, pair: str | Pair | ModulePair = "efficientnet-lite2-to-lite0",
                   students: str | Sequence[str] | None = None, explain_top: bool = True, latency: bool = True,
                   ) -> tuple[ImageClassificationComparison, AttentionResult | None]:
    """An image-classification pair's teacher and one or two students on one image, and (``explain_top``) Grad-CAM
    of the teacher's top class on the teacher and the first student, from the same forwards: each model runs once.

    Returns:
        ``(comparison, attention)``: probabilities over the teacher's labels, agreement (top-1 match, top-5 overlap,
        KL, JS, Spearman), each model's cost; and the attention maps (None without ``explain_top``).
    """
    from types import SimpleNamespace

    from analysis.profiling import Stopwatch
    from compare.latency import profile_of
    from compare.vision import _classification_result

    spec, chosen, predictors = load(pair, students, "image-classification")
    arrays, notes = read_images(image)
    if not explain_top:
        return run_vision(VisionRequest(spec, chosen, arrays[:1], notes[:1], latency=latency), predictors)[0], None
    first = chosen[0]
    attention = explain(spec, first, {"teacher": predictors["teacher"], "student": predictors[first.name]},
                        arrays[0], "", notes[0])
    runs = {"teacher": attention.explained["teacher"], first.name: attention.explained["student"]}
    for student in chosen[1:]:  # a second student is not explained: one plain forward
        p = predictors[student.name]
        inputs, _ = p.prepare(arrays[0])
        with Stopwatch(p.device) as watch:
            outputs = p.forward(inputs)
        runs[student.name] = SimpleNamespace(outputs=outputs, inputs=inputs, seconds=watch.seconds)
    probs, profiles = {}, {}
    for name, run in runs.items():
        p = predictors[name]
        probs[name] = p.family.logits(p, run.outputs).float().softmax(-1)[0].cpu()
        profiles[name] = profile_of(p, run.inputs, run.seconds * 1000, latency)
    return _classification_result(spec, chosen, predictors, probs, profiles, list(notes[0]), None), attention
