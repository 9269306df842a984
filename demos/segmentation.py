"""Segmentation tab: teacher and student masks side by side, and where the student agrees with its teacher."""

from __future__ import annotations

import html

import numpy as np
import torch
from torchvision.utils import draw_segmentation_masks

from analysis.agreement import segmentation_agreement
from demos.analysis_tab import consensus_overlay_image, consensus_toggle, wire_consensus_toggle
from demos.common import (
    GPU_QUEUE,
    ROLES,
    display_scale,
    enlarge,
    examples_for,
    notes_markdown,
    on_gpu,
    output_path,
    pair_dropdown,
    palette,
    read_image,
    run_sides,
    side_by_side_images,
    user_errors,
)
from demos.components import user_image
from weights.predictors import predictors_for
from weights.registry import get_pair

DEFAULT_PAIR = "shapes-segmentation"


def draw_mask(image: np.ndarray, class_map: torch.Tensor, num_classes: int, alpha: float = 0.55) -> np.ndarray:
    """Colour every non-background class of ``class_map`` (H, W) over the image (enlarged when small)."""
    scale = display_scale(*image.shape[:2])
    canvas = enlarge(image, scale)
    big = torch.nn.functional.interpolate(class_map[None, None].float().cpu(), size=canvas.shape[1:],
                                          mode="nearest")[0, 0].long()
    present = [c for c in big.unique().tolist() if c != 0]
    if not present:
        return canvas.permute(1, 2, 0).numpy()
    colours = palette(num_classes)
    masks = torch.stack([big == c for c in present])
    drawn = draw_segmentation_masks(canvas, masks, alpha=alpha, colors=[colours[c] for c in present])
    return drawn.permute(1, 2, 0).numpy()


def save_class_maps(maps: dict[str, np.ndarray]) -> str:
    """Write the class-index maps to a fresh ``.npz`` with a generated (never user-given) name."""
    path = output_path("segmentation", ".npz")
    np.savez_compressed(path, **maps)
    return str(path)


@on_gpu
def segment(image, pair: str = DEFAULT_PAIR) -> tuple[np.ndarray, np.ndarray, dict, str]:
    """Run a segmentation pair on one image.

    Args:
        image: a file path, numpy RGB array or PIL image.
        pair: a segmentation pair name from the registry.

    Returns:
        ``(teacher_image, student_image, report, npz_path)``. ``report`` is
        ``{pair, classes, teacher: {latency_ms, params, gflops}, student: {...}, agreement: {miou,
        pixel_agreement, per_class}, notes}``; the ``.npz`` holds ``teacher`` and ``student`` (H, W) class maps.
    """
    spec = get_pair(pair, "segmentation")
    array, notes = read_image(image)
    predictors = predictors_for(spec)
    sides = run_sides(predictors, array, lambda p, out, geo: p.class_map(out, geo))
    classes = predictors["teacher"].labels
    maps = {role: sides[role][0] for role in ROLES}
    agreement = segmentation_agreement(maps["teacher"], maps["student"].to(maps["teacher"].device), len(classes))
    agreement["per_class"] = {classes[i]: v for i, v in agreement["per_class"].items()}
    report = {"pair": spec.name, "classes": classes, **{role: sides[role][1] for role in ROLES},
              "agreement": agreement, "notes": notes}
    images = [draw_mask(array, maps[role], len(classes)) for role in ROLES]
    npz = save_class_maps({role: maps[role].cpu().numpy().astype(np.int32) for role in ROLES})
    return images[0], images[1], report, npz


def per_class_figure(report: dict | None):
    """Plotly bar chart of the teacher-vs-student IoU of every class present in either mask."""
    import plotly.graph_objects as go

    if not report:
        return None
    per_class = report["agreement"]["per_class"]
    colours = palette(len(report["classes"]))
    names = list(per_class)
    fig = go.Figure(go.Bar(
        x=names, y=[per_class[n] for n in names],
        marker_color=[f"rgb{colours[report['classes'].index(n)]}" for n in names]))
    fig.update_layout(title="Per-class agreement (IoU of student vs teacher)", yaxis={"range": [0, 1]},
                      height=320, margin={"l": 40, "r": 10, "t": 40, "b": 40})
    return fig


def summary_markdown(report: dict | None) -> str:
    if not report:
        return ""
    a = report["agreement"]
    colours = palette(len(report["classes"]))
    swatch = '<span style="display:inline-block;width:12px;height:12px;background:rgb{};margin:0 4px 0 10px"></span>'
    legend = " ".join(swatch.format(colours[report["classes"].index(n)]) + html.escape(n) for n in a["per_class"])
    rows = "\n".join(f"| {role} | {report[role]['latency_ms']:.1f} | {report[role]['params'] / 1e6:.2f} M | "
                     f"{report[role]['gflops']:.2f} |" for role in ROLES)
    return (notes_markdown(report.get("notes", [])) + f"**Legend:** {legend}\n\n"
            f"**Agreement with the teacher:** mIoU {a['miou']:.3f}, pixel agreement {a['pixel_agreement']:.1%}.\n\n"
            f"| model | latency (ms) | params | GFLOPs |\n|---|---|---|---|\n{rows}")


def build_segmentation_tab() -> None:
    import gradio as gr

    with gr.Tab("Segmentation", id="segmentation"):
        gr.Markdown("Masks from the teacher and its distilled student on the same image, and how far they agree.")
        with gr.Row():
            with gr.Column(scale=1):
                image = user_image(label="Image", elem_id="segmentation-image")
                pair = pair_dropdown(("segmentation",), DEFAULT_PAIR)
                toggle = consensus_toggle()
                run = gr.Button("Segment", variant="primary", elem_id="segmentation-run")
            with gr.Column(scale=2):
                with gr.Row():
                    outputs = side_by_side_images("segmentation")
                overlay = consensus_overlay_image("segmentation")
                summary = gr.Markdown()
                plot = gr.Plot(label="Per-class agreement")
                with gr.Row():
                    report = gr.JSON(label="Report", open=False)
                    npz = gr.File(label="Class maps (.npz)")
        gr.Examples(examples_for("segmentation"), inputs=[image], label="Examples",
                    elem_id="segmentation-examples")
        event = run.click(user_errors(segment), [image, pair], [*outputs, report, npz], api_name="segment",
                          **GPU_QUEUE)
        event.then(lambda r: (summary_markdown(r), per_class_figure(r)), report, [summary, plot],
                   api_visibility="private")
        wire_consensus_toggle(event, image, pair, toggle, overlay)
