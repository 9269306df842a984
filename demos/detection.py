"""Detection tab: teacher and student boxes side by side, and where the student agrees with its teacher."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.utils import draw_bounding_boxes

from analysis.agreement import detection_agreement
from demos.analysis_tab import consensus_overlay_image, consensus_toggle, wire_consensus_toggle
from demos.common import (
    GPU_QUEUE,
    InputError,
    annotated_views,
    annotated_views_update,
    api_result_images,
    display_scale,
    enlarge,
    examples,
    font_path,
    notes_markdown,
    on_gpu,
    pair_dropdown,
    palette,
    ranking_markdown,
    read_image,
    run_sides,
    student_picker,
    students_report,
    user_errors,
    wire_student_picker,
)
from demos.components import user_image
from weights.predictors import Detection, predictors_for
from weights.registry import get_pair

DEFAULT_PAIR = "shapes-detection"
DEFAULT_THRESHOLD = 0.3


def _as_tensors(detections: list[Detection], label_index: dict[str, int]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor([d.box for d in detections], dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor([d.score for d in detections], dtype=torch.float32),
        "labels": torch.tensor([label_index[d.label] for d in detections], dtype=torch.long),
    }


def draw_detections(image: np.ndarray, detections: list[Detection], labels: list[str]) -> np.ndarray:
    """Boxes with ``label score`` captions over the image (enlarged when small); colours follow the label."""
    scale = display_scale(*image.shape[:2])
    canvas = enlarge(image, scale)
    if not detections:
        return canvas.permute(1, 2, 0).numpy()
    colours = palette(len(labels) + 1)
    boxes = torch.tensor([d.box for d in detections]) * scale
    font = font_path()
    drawn = draw_bounding_boxes(
        canvas, boxes, labels=[f"{d.label} {d.score:.2f}" for d in detections],
        colors=[colours[labels.index(d.label) % len(colours)] for d in detections],
        width=max(2, round(min(canvas.shape[1:]) / 200)), font=font,
        font_size=max(12, round(min(canvas.shape[1:]) / 30)) if font else None)
    return drawn.permute(1, 2, 0).numpy()


@on_gpu
def detect(image, pair: str = DEFAULT_PAIR, score_threshold: float = DEFAULT_THRESHOLD,
           students: str | list[str] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Run a detection pair's teacher and one or two of its students on one image.

    Args:
        image: a file path, numpy RGB array or PIL image.
        pair: a detection pair name from the registry.
        score_threshold: boxes below this score are dropped, in [0, 1].
        students: one or two student names (a list or a comma-separated string); default the pair's first.

    Returns:
        ``(teacher_image, student_image, report)``: the teacher's and the first student's drawn images and
        ``{pair, labels, teacher: {detections, latency_ms, params, gflops}, students: {name: {method, source,
        detections, latency_ms, params, gflops, agreement}}, ranking, notes}``, with the first student also as
        ``student`` and ``agreement`` (single-student fields, kept for one release); boxes are
        ``[x0, y0, x1, y1]`` in the input image's pixels.
    """
    try:
        threshold = float(score_threshold)
    except (TypeError, ValueError) as error:
        raise InputError(f"score_threshold must be a number in [0, 1], got {score_threshold!r}.") from error
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"score_threshold must lie in [0, 1], got {threshold}.")
    spec = get_pair(pair, "detection")
    chosen = spec.choose_students(students)
    array, notes = read_image(image)
    predictors = predictors_for(spec, students=chosen)
    sides = run_sides(predictors, array, lambda p, out, geo: p.detect(out, geo, threshold))
    index = {name: i for i, name in enumerate(dict.fromkeys(label for p in predictors.values() for label in p.labels))}
    teacher_detections = _as_tensors(sides["teacher"][0], index)
    per_student = {
        s.name: {"detections": [d.to_dict() for d in sides[s.name][0]], **sides[s.name][1],
                 "agreement": with_f1(detection_agreement(teacher_detections, _as_tensors(sides[s.name][0], index)))}
        for s in chosen}
    report = {"pair": spec.name, "labels": list(index),
              "teacher": {"detections": [d.to_dict() for d in sides["teacher"][0]], **sides["teacher"][1]},
              **students_report(chosen, per_student, "f1"), "notes": notes}
    images = [draw_detections(array, sides[name][0], list(index)) for name in ("teacher", chosen[0].name)]
    return images[0], images[1], report


def with_f1(agreement: dict) -> dict:
    """Add ``f1``: 2·matched / (2·matched + missed + extra), one number for how well the boxes agree (1 when both
    found nothing)."""
    m, total = agreement["matched"], 2 * agreement["matched"] + agreement["missed"] + agreement["extra"]
    return agreement | {"f1": round(2 * m / total, 4) if total else 1.0}


def student_detections_image(image, report: dict | None, position: int = 1) -> np.ndarray | None:
    """The ``position``-th chosen student's boxes, drawn from the report (no second forward), or None."""
    if not report or len(report.get("students", {})) <= position:
        return None
    array, _ = read_image(image)
    name = list(report["students"])[position]
    detections = [Detection(d["label"], d["score"], d["box"]) for d in report["students"][name]["detections"]]
    return draw_detections(array, detections, report["labels"])


def detection_annotations(image, report: dict | None, position: int | None) -> tuple | None:
    """The teacher's boxes (``position`` None) or the ``position``-th chosen student's, from the report (no second
    forward), as an annotated-image value: ``(image enlarged like the drawn panels, [(box, "label score", colour)])``;
    None when there is no such student. Colours are the drawn panels' (one per label)."""
    if not report:
        return None
    names = list(report.get("students", {}))
    if position is not None and len(names) <= position:
        return None
    side = report["teacher"] if position is None else report["students"][names[position]]
    array, _ = read_image(image)
    scale = display_scale(*array.shape[:2])
    colours = palette(len(report["labels"]) + 1)
    return enlarge(array, scale).permute(1, 2, 0).numpy(), [
        (tuple(v * scale for v in d["box"]), f"{d['label']} {d['score']:.2f}",
         colours[report["labels"].index(d["label"]) % len(colours)]) for d in side["detections"]]


MATCHED, MISSED, EXTRA = (60, 200, 90), (235, 50, 50), (250, 190, 30)


def disagreement_image(image, report: dict | None) -> np.ndarray | None:
    """Where the first student disagrees with the teacher, from the report alone: the teacher's objects it misses
    (red, teacher's label), boxes it adds (amber, its label), and matched objects (thin green)."""
    from analysis.agreement import match_detections

    if not report or not report.get("students"):
        return None
    array, _ = read_image(image)
    teacher = report["teacher"]["detections"]
    student = next(iter(report["students"].values()))["detections"]
    t_boxes = torch.tensor([d["box"] for d in teacher], dtype=torch.float32).reshape(-1, 4)
    s_boxes = torch.tensor([d["box"] for d in student], dtype=torch.float32).reshape(-1, 4)
    match, _ = match_detections(t_boxes, s_boxes, torch.tensor([d["score"] for d in student]),
                                report["students"][next(iter(report["students"]))]["agreement"]["iou_threshold"])
    found = set(match[match >= 0].tolist())
    scale = display_scale(*array.shape[:2])
    canvas = enlarge(array, scale)
    boxes, captions, colours, widths = [], [], [], []
    for i, d in enumerate(teacher):
        boxes.append(d["box"])
        captions.append("" if i in found else f"missed {d['label']}")
        colours.append(MATCHED if i in found else MISSED)
    for j, d in enumerate(student):
        if match[j] < 0:
            boxes.append(d["box"])
            captions.append(f"extra {d['label']}")
            colours.append(EXTRA)
    if not boxes:
        return canvas.permute(1, 2, 0).numpy()
    width = max(2, round(min(canvas.shape[1:]) / 200))
    widths = [1 if c == MATCHED else width for c in colours]
    font = font_path()
    for box, caption, colour, w in zip(boxes, captions, colours, widths, strict=True):  # one width per box
        canvas = draw_bounding_boxes(canvas, torch.tensor([box]) * scale, labels=[caption], colors=[colour], width=w,
                                     font=font, font_size=max(12, round(min(canvas.shape[1:]) / 30)) if font
                                     else None)
    return canvas.permute(1, 2, 0).numpy()


def summary_markdown(report: dict | None) -> str:
    """A short human summary of a ``detect`` report for the UI: each student's agreement, and the ranking."""
    if not report:
        return ""
    lines = []
    for name, block in report["students"].items():
        a = block["agreement"]
        mean_iou = "–" if a["mean_iou"] is None else f"{a['mean_iou']:.3f}"
        label_agreement = "–" if a["label_agreement"] is None else f"{a['label_agreement']:.0%}"
        lines.append(f"**{name}** vs teacher (IoU ≥ {a['iou_threshold']}): {a['matched']} matched, "
                     f"{a['missed']} missed, {a['extra']} extra (F1 {a['f1']:.2f}); mean IoU of matches "
                     f"{mean_iou}; same label {label_agreement}.")
    return notes_markdown(report.get("notes", [])) + "\n\n".join(lines) + "\n\n" + ranking_markdown(report)


def build_detection_tab() -> None:
    import gradio as gr

    with gr.Tab("Detection", id="detection"):
        gr.Markdown("Boxes from the teacher and its distilled student on the same image. "
                    "The agreement panel takes the teacher as the reference.")
        with gr.Row():
            with gr.Column(scale=1):
                image = user_image(label="Image", elem_id="detection-image")
                examples("detection", image)
                pair = pair_dropdown(("detection",), DEFAULT_PAIR)
                students = student_picker("detection", DEFAULT_PAIR)
                threshold = gr.Slider(0.0, 1.0, value=DEFAULT_THRESHOLD, step=0.05, label="Score threshold")
                toggle = consensus_toggle()
                run = gr.Button("Detect", variant="primary", elem_id="detection-run")
            with gr.Column(scale=2):
                summary = gr.Markdown(elem_id="detection-summary")
                with gr.Row():
                    views = annotated_views("detection")
                outputs = api_result_images("detection")
                disagreement = gr.Image(label="Where the first student disagrees: missed (red), extra (amber), "
                                        "matched (green)", interactive=False, format="png",
                                        elem_id="detection-disagreement", height=300)
                overlay = consensus_overlay_image("detection")
                report = gr.JSON(label="Report", open=False)
        event = run.click(user_errors(detect), [image, pair, threshold, students], [*outputs, report],
                          api_name="detect", **GPU_QUEUE)
        event.then(summary_markdown, report, summary, api_visibility="private")
        event.then(lambda image, report: annotated_views_update(
            image, report, lambda array, position: detection_annotations(array, report, position)), [image, report],
            views, api_visibility="private")
        event.then(user_errors(disagreement_image), [image, report], disagreement, api_visibility="private")
        event.failure(lambda: (None,) * 7 + ("",), None, [*outputs, *views, disagreement, report, summary],
                      api_visibility="private")
        wire_student_picker(pair, students)
        wire_consensus_toggle(event, image, pair, toggle, overlay, students)
