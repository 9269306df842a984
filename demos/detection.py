"""Detection tab: teacher and student boxes side by side, and where the student agrees with its teacher."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.utils import draw_bounding_boxes

from analysis.agreement import detection_agreement
from demos.analysis_tab import consensus_overlay_image, consensus_toggle, wire_consensus_toggle
from demos.common import (
    GPU_QUEUE,
    ROLES,
    InputError,
    display_scale,
    enlarge,
    examples_for,
    font_path,
    notes_markdown,
    on_gpu,
    pair_dropdown,
    palette,
    read_image,
    run_sides,
    side_by_side_images,
    user_errors,
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
           ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Run a detection pair on one image.

    Args:
        image: a file path, numpy RGB array or PIL image.
        pair: a detection pair name from the registry.
        score_threshold: boxes below this score are dropped, in [0, 1].

    Returns:
        ``(teacher_image, student_image, report)``: the two drawn images and
        ``{pair, teacher: {detections, latency_ms, params, gflops}, student: {...}, agreement, notes}``;
        boxes are ``[x0, y0, x1, y1]`` in the input image's pixels.
    """
    try:
        threshold = float(score_threshold)
    except (TypeError, ValueError) as error:
        raise InputError(f"score_threshold must be a number in [0, 1], got {score_threshold!r}.") from error
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"score_threshold must lie in [0, 1], got {threshold}.")
    spec = get_pair(pair, "detection")
    array, notes = read_image(image)
    predictors = predictors_for(spec)
    sides = run_sides(predictors, array, lambda p, out, geo: p.detect(out, geo, threshold))
    labels = predictors["teacher"].labels
    index = {name: i for i, name in enumerate(dict.fromkeys(labels + predictors["student"].labels))}
    report = {"pair": spec.name}
    for role in ROLES:
        detections, profile = sides[role]
        report[role] = {"detections": [d.to_dict() for d in detections], **profile}
    report["agreement"] = detection_agreement(*(_as_tensors(sides[r][0], index) for r in ROLES))
    report["notes"] = notes
    images = [draw_detections(array, sides[role][0], list(index)) for role in ROLES]
    return images[0], images[1], report


def summary_markdown(report: dict | None) -> str:
    """A short human summary of a ``detect`` report for the UI."""
    if not report:
        return ""
    a = report["agreement"]
    rows = "\n".join(
        f"| {role} | {len(report[role]['detections'])} | {report[role]['latency_ms']:.1f} | "
        f"{report[role]['params'] / 1e6:.2f} M | {report[role]['gflops']:.2f} |" for role in ROLES)
    mean_iou = "–" if a["mean_iou"] is None else f"{a['mean_iou']:.3f}"
    label_agreement = "–" if a["label_agreement"] is None else f"{a['label_agreement']:.0%}"
    return (notes_markdown(report.get("notes", []))
            + f"**Agreement with the teacher** (IoU ≥ {a['iou_threshold']}): {a['matched']} matched, "
            f"{a['missed']} missed, {a['extra']} extra; mean IoU of matches {mean_iou}; "
            f"same label {label_agreement}.\n\n"
            "| model | boxes | latency (ms) | params | GFLOPs |\n|---|---|---|---|---|\n" + rows)


def build_detection_tab() -> None:
    import gradio as gr

    with gr.Tab("Detection", id="detection"):
        gr.Markdown("Boxes from the teacher and its distilled student on the same image. "
                    "The agreement panel takes the teacher as the reference.")
        with gr.Row():
            with gr.Column(scale=1):
                image = user_image(label="Image", elem_id="detection-image")
                pair = pair_dropdown(("detection",), DEFAULT_PAIR)
                threshold = gr.Slider(0.0, 1.0, value=DEFAULT_THRESHOLD, step=0.05, label="Score threshold")
                toggle = consensus_toggle()
                run = gr.Button("Detect", variant="primary", elem_id="detection-run")
            with gr.Column(scale=2):
                with gr.Row():
                    outputs = side_by_side_images("detection")
                overlay = consensus_overlay_image("detection")
                summary = gr.Markdown()
                report = gr.JSON(label="Report", open=False)
        gr.Examples(examples_for("detection"), inputs=[image], label="Examples",
                    elem_id="detection-examples")
        event = run.click(user_errors(detect), [image, pair, threshold], [*outputs, report], api_name="detect",
                          **GPU_QUEUE)
        event.then(summary_markdown, report, summary, api_visibility="private")
        wire_consensus_toggle(event, image, pair, toggle, overlay)
