"""Detection tab: teacher and student boxes side by side, and where the student agrees with its teacher."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.utils import draw_bounding_boxes

import compare
from compare.drawing import as_picture, display_canvas, draw_detections, font_path, palette
from demos.analysis_tab import consensus_overlay_image, consensus_toggle, wire_consensus_toggle
from demos.components import CheckedSlider, user_image
from demos.first_sight import first_sight
from demos.jobs import GPU_QUEUE, on_gpu, user_errors
from demos.widgets import (
    annotated_views,
    annotated_views_update,
    api_result_images,
    clear_on_start,
    examples,
    examples_for,
    notes_markdown,
    pair_dropdown,
    ranking_markdown,
    report_panel,
    student_label,
    student_picker,
    wire_student_picker,
)
from weights.predictors import Detection

DEFAULT_PAIR = "shapes-detection"
DEFAULT_THRESHOLD = 0.3
DISAGREEMENT_LABEL = "Where {student} disagrees: missed (red), extra (amber), matched (green)"


def run_detection(image, pair: str = DEFAULT_PAIR, score_threshold: float = DEFAULT_THRESHOLD,
                  students: str | list[str] | None = None, overlay: bool = False) -> tuple:
    """The Detect button: :func:`detect`'s outputs and, when ``overlay``, the first student's consensus overlay at
    the deepest shared stride (else None), all from one forward of each model."""
    result = compare.detect(image, pair, score_threshold, students, consensus=bool(overlay))
    array, _ = compare.read_image(image)
    images = [draw_detections(array, result.detections[name], result.labels) for name in ("teacher", result.names[0])]
    overlay = result.analysis.deepest_consensus() if result.analysis else None
    return images[0], images[1], result.to_json(), overlay


@on_gpu
def detect(image, pair: str = DEFAULT_PAIR, score_threshold: float = DEFAULT_THRESHOLD,
           students: str | list[str] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Run a detection pair's teacher and one or two of its students on one image (``/detect``), each model once.

    Args:
        image: a file path, numpy RGB array or PIL image.
        pair: a detection pair name from the registry.
        score_threshold: boxes below this score are dropped, in [0, 1].
        students: one or two student names (a list or a comma-separated string); default the pair's first.

    Returns:
        ``(teacher_image, student_image, report)``: the teacher's and the first student's drawn images and
        ``{pair, labels, teacher: {detections, latency_ms, latency_iqr_ms, runs, latency_cached, this_run_ms,
        params, gflops}, students: {name: {method, source, detections, ..., agreement}}, ranking, notes}``, with the
        first student also as ``student`` and ``agreement`` (single-student fields, kept for one release); boxes are
        ``[x0, y0, x1, y1]`` in the input image's pixels. Latency is the median of warm forwards measured once per
        model and input shape (``runs`` of them; ``latency_cached`` says whether this request reused them).
    """
    return run_detection(image, pair, score_threshold, students)[:3]


def student_detections_image(image, report: dict | None, position: int = 1) -> np.ndarray | None:
    """The ``position``-th chosen student's boxes, drawn from the report (no second forward), or None."""
    if not report or len(report.get("students", {})) <= position:
        return None
    array, _ = compare.read_image(image)
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
    array, _ = compare.read_image(image)
    canvas, scale = display_canvas(array)
    colours = palette(len(report["labels"]) + 1)
    return as_picture(canvas), [
        (tuple(v * scale for v in d["box"]), f"{d['label']} {d['score']:.2f}",
         colours[report["labels"].index(d["label"]) % len(colours)]) for d in side["detections"]]


MATCHED, MISSED, EXTRA = (60, 200, 90), (235, 50, 50), (250, 190, 30)


def disagreement_image(image, report: dict | None) -> np.ndarray | None:
    """Where the first student disagrees with the teacher, from the report alone: the teacher's objects it misses
    (red, teacher's label), boxes it adds (amber, its label), and matched objects (thin green)."""
    from analysis.agreement import match_detections

    if not report or not report.get("students"):
        return None
    array, _ = compare.read_image(image)
    teacher = report["teacher"]["detections"]
    student = next(iter(report["students"].values()))["detections"]
    t_boxes = torch.tensor([d["box"] for d in teacher], dtype=torch.float32).reshape(-1, 4)
    s_boxes = torch.tensor([d["box"] for d in student], dtype=torch.float32).reshape(-1, 4)
    match, _ = match_detections(t_boxes, s_boxes, torch.tensor([d["score"] for d in student]),
                                report["students"][next(iter(report["students"]))]["agreement"]["iou_threshold"])
    found = set(match[match >= 0].tolist())
    canvas, scale = display_canvas(array)
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
        return as_picture(canvas)
    width = max(2, round(min(canvas.shape[1:]) / 200))
    widths = [1 if c == MATCHED else width for c in colours]
    font = font_path()
    for box, caption, colour, w in zip(boxes, captions, colours, widths, strict=True):  # one width per box
        canvas = draw_bounding_boxes(canvas, torch.tensor([box]) * scale, labels=[caption], colors=[colour], width=w,
                                     font=font, font_size=max(12, round(min(canvas.shape[1:]) / 30)) if font
                                     else None)
    return as_picture(canvas)


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
                    "The agreement panel takes the teacher as the reference.\n\n"
                    "**How to read this:** the page opens on an example, computed; F1 1.00 means the student found "
                    "exactly the teacher's boxes. Pick another image or pair, then **Detect**.")
        with gr.Row():
            with gr.Column(scale=1):
                image = user_image(label="Image", elem_id="detection-image")
                run = gr.Button("Detect", variant="primary", elem_id="detection-run")
                examples("detection", image)
                pair = pair_dropdown(("detection",), DEFAULT_PAIR, "detection")
                students = student_picker("detection", DEFAULT_PAIR)
                threshold = CheckedSlider(0.0, 1.0, value=DEFAULT_THRESHOLD, step=0.05, label="Score threshold")
                toggle = consensus_toggle()
            with gr.Column(scale=2, elem_id="detection-results"):
                summary = gr.Markdown(elem_id="detection-summary")
                with gr.Row():
                    views = annotated_views("detection")
                outputs = api_result_images("detection")
                disagreement = gr.Image(label=DISAGREEMENT_LABEL.format(student="the first student"),
                                        interactive=False, format="png", elem_id="detection-disagreement", height=300)
                overlay = consensus_overlay_image("detection")
                report = report_panel("Report")
        inputs = [image, pair, threshold, students, toggle[1]]

        def wire(trigger, fn, api: dict):
            started = clear_on_start(trigger, [*outputs, *views, disagreement, overlay[0], report, summary])
            event = started.then(user_errors(fn), inputs, [*outputs, report, overlay[1]], **api, **GPU_QUEUE)
            event.then(summary_markdown, report, summary, api_visibility="private")
            event.then(lambda image, report: annotated_views_update(
                image, report, lambda array, position: detection_annotations(array, report, position)),
                [image, report], views, api_visibility="private")
            event.then(user_errors(disagreement_image), [image, report], disagreement, api_visibility="private")
            event.then(student_label(DISAGREEMENT_LABEL), report, disagreement, api_visibility="private")
            event.failure(lambda: (None,) * 8 + ("",), None,
                          [*outputs, *views, disagreement, overlay[0], report, summary], api_visibility="private")
            return event

        event = wire(run, run_detection, {"api_name": "detect"})
        shown = first_sight(wire, run_detection, inputs, {image: examples_for("detection")[0]})
        wire_student_picker(pair, students)
        wire_consensus_toggle([event, shown], image, pair, toggle, overlay, students)
