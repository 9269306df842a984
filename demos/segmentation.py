"""Segmentation tab: teacher and student masks side by side, and where the student agrees with its teacher."""

from __future__ import annotations

import html

import numpy as np
import torch

import compare
from compare.drawing import as_picture, display_canvas, draw_mask, palette, resize_class_map
from demos.analysis_tab import consensus_overlay_image, consensus_toggle, wire_consensus_toggle
from demos.components import user_image
from demos.first_sight import first_sight
from demos.jobs import GPU_QUEUE, on_gpu, user_errors
from demos.served import output_path
from demos.widgets import (
    annotated_views,
    annotated_views_update,
    api_result_images,
    clear_on_start,
    cleared_values,
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

DEFAULT_PAIR = "shapes-segmentation"
DISAGREEMENT_LABEL = "Where {student} disagrees (pixels in the teacher's class colour)"


def save_class_maps(maps: dict[str, np.ndarray]) -> str:
    """Write the class-index maps to a fresh ``.npz`` with a generated (never user-given) name."""
    path = output_path("segmentation", ".npz")
    np.savez_compressed(path, **maps)
    return str(path)


def run_segmentation(image, pair: str = DEFAULT_PAIR, students: str | list[str] | None = None,
                     overlay: bool = False) -> tuple:
    """The Segment button: :func:`segment`'s outputs and, when ``overlay``, the first student's consensus overlay
    at the deepest shared stride (else None), all from one forward of each model."""
    result = compare.segment(image, pair, students, consensus=bool(overlay))
    array, _ = compare.read_image(image)
    classes = result.classes
    images = [draw_mask(array, result.class_maps[name], len(classes)) for name in ("teacher", result.names[0])]
    arrays = result.arrays()
    npz = save_class_maps(arrays | {"student": arrays[result.names[0]]})
    overlay = result.analysis.deepest_consensus() if result.analysis else None
    return images[0], images[1], result.to_json(), npz, overlay


@on_gpu
def segment(image, pair: str = DEFAULT_PAIR, students: str | list[str] | None = None,
            ) -> tuple[np.ndarray, np.ndarray, dict, str]:
    """Run a segmentation pair's teacher and one or two of its students on one image (``/segment``), each model
    once.

    Args:
        image: a file path, numpy RGB array or PIL image.
        pair: a segmentation pair name from the registry.
        students: one or two student names (a list or a comma-separated string); default the pair's first.

    Returns:
        ``(teacher_image, student_image, report, npz_path)``: the teacher's and the first student's masks;
        ``report`` is ``{pair, classes, teacher: {latency_ms, latency_iqr_ms, runs, latency_cached, this_run_ms,
        params, gflops}, students: {name: {method, source, ..., agreement: {miou, pixel_agreement, per_class}}},
        ranking, notes}`` with the first student also as ``student`` and ``agreement`` (single-student fields, kept
        for one release); the ``.npz`` holds the (H, W) class maps of ``teacher``, each chosen student by name, and
        ``student`` (the first).
    """
    return run_segmentation(image, pair, students)[:4]


def student_mask_image(image, report: dict | None, npz: str | None, position: int = 1) -> np.ndarray | None:
    """The ``position``-th chosen student's mask, drawn from the class maps the call saved (no second forward)."""
    if not report or not npz or len(report.get("students", {})) <= position:
        return None
    array, _ = compare.read_image(image)
    name = list(report["students"])[position]
    with np.load(npz, allow_pickle=False) as maps:
        class_map = torch.from_numpy(maps[name])
    return draw_mask(array, class_map, len(report["classes"]))


def segmentation_annotations(image, report: dict | None, npz: str | None, position: int | None) -> tuple | None:
    """The teacher's mask (``position`` None) or the ``position``-th chosen student's, from the class maps the call
    saved (no second forward), as an annotated-image value: ``(image enlarged like the drawn panels, [(class mask,
    class name, colour)])`` for every non-background class present; None when there is no such student."""
    if not report or not npz:
        return None
    names = list(report.get("students", {}))
    if position is not None and len(names) <= position:
        return None
    array, _ = compare.read_image(image)
    with np.load(npz, allow_pickle=False) as maps:
        class_map = torch.from_numpy(maps["teacher" if position is None else names[position]])
    canvas, _ = display_canvas(array)
    big = resize_class_map(class_map, tuple(canvas.shape[1:])).numpy()
    colours, classes = palette(len(report["classes"])), report["classes"]
    return as_picture(canvas), [(big == c, classes[c], colours[c]) for c in np.unique(big) if c != 0]


def disagreement_image(image, report: dict | None, npz: str | None) -> np.ndarray | None:
    """Pixels where the first student's label differs from the teacher's, in the teacher's class colour over a
    dimmed image; agreeing pixels stay dim."""
    if not report or not npz or not report.get("students"):
        return None
    array, _ = compare.read_image(image)
    with np.load(npz, allow_pickle=False) as maps:
        teacher = torch.from_numpy(maps["teacher"])
        student = torch.from_numpy(maps[next(iter(report["students"]))])
    differs = teacher != student
    dim = (array.astype(np.float32) * 0.35).astype(np.uint8)
    colours = torch.tensor(palette(len(report["classes"])), dtype=torch.uint8)
    painted = np.where(differs.numpy()[..., None], colours[teacher.long()].numpy(), dim)
    return as_picture(display_canvas(painted.astype(np.uint8))[0])


def per_class_figure(report: dict | None):
    """Plotly bar chart of each chosen student's IoU with the teacher, for every class present in either mask."""
    import plotly.graph_objects as go

    if not report:
        return None
    students = report["students"]
    names = list(dict.fromkeys(c for block in students.values() for c in block["agreement"]["per_class"]))
    colours = palette(len(report["classes"]))
    single = len(students) == 1
    fig = go.Figure([go.Bar(name=student, x=names, y=[block["agreement"]["per_class"].get(n) for n in names],
                            marker_color=[f"rgb{colours[report['classes'].index(n)]}" for n in names] if single
                            else None)
                     for student, block in students.items()])
    fig.update_layout(title="Per-class agreement (IoU of student vs teacher)", yaxis={"range": [0, 1]},
                      height=320, margin={"l": 40, "r": 10, "t": 40, "b": 40}, barmode="group",
                      showlegend=not single)
    return fig


def summary_markdown(report: dict | None) -> str:
    if not report:
        return ""
    colours = palette(len(report["classes"]))
    present = dict.fromkeys(c for block in report["students"].values() for c in block["agreement"]["per_class"])
    swatch = '<span style="display:inline-block;width:12px;height:12px;background:rgb{};margin:0 4px 0 10px"></span>'
    legend = " ".join(swatch.format(colours[report["classes"].index(n)]) + html.escape(n) for n in present)
    lines = [f"**{name}** vs teacher: mIoU {b['agreement']['miou']:.3f}, pixel agreement "
             f"{b['agreement']['pixel_agreement']:.1%}." for name, b in report["students"].items()]
    return (notes_markdown(report.get("notes", [])) + f"**Legend:** {legend}\n\n" + "\n\n".join(lines)
            + "\n\n" + ranking_markdown(report))


def build_segmentation_tab() -> None:
    import gradio as gr

    with gr.Tab("Segmentation", id="segmentation"):
        gr.Markdown("Masks from the teacher and its distilled student on the same image, and how far they agree.\n\n"
                    "**How to read this:** the page opens on an example, computed; mIoU 1.000 means the student's "
                    "mask is the teacher's. Pick another image or pair, then **Segment**.")
        with gr.Row():
            with gr.Column(scale=1):
                image = user_image(label="Image", elem_id="segmentation-image")
                run = gr.Button("Segment", variant="primary", elem_id="segmentation-run")
                examples("segmentation", image)
                pair = pair_dropdown(("segmentation",), DEFAULT_PAIR, "segmentation")
                students = student_picker("segmentation", DEFAULT_PAIR)
                toggle = consensus_toggle()
            with gr.Column(scale=2, elem_id="segmentation-results"):
                summary = gr.Markdown(elem_id="segmentation-summary")
                with gr.Row():
                    views = annotated_views("segmentation")
                outputs = api_result_images("segmentation")
                disagreement = gr.Image(label=DISAGREEMENT_LABEL.format(student="the first student"),
                                        interactive=False, format="png", height=300,
                                        elem_id="segmentation-disagreement")
                overlay = consensus_overlay_image("segmentation")
                plot = gr.Plot(label="Per-class agreement")
                with gr.Row():
                    report = report_panel("Report")
                    npz = gr.File(label="Class maps (.npz)", interactive=False)
        inputs = [image, pair, students, toggle[1]]
        shown_outputs = [*outputs, *views, disagreement, overlay[0], report, npz, plot, summary]

        def wire(trigger, fn, api: dict):
            started = clear_on_start(trigger, shown_outputs)
            event = started.then(user_errors(fn), inputs, [*outputs, report, npz, overlay[1]], **api, **GPU_QUEUE)
            event.then(lambda image, report, npz: annotated_views_update(
                image, report, lambda array, position: segmentation_annotations(array, report, npz, position)),
                [image, report, npz], views, api_visibility="private")
            event.then(user_errors(disagreement_image), [image, report, npz], disagreement, api_visibility="private")
            event.then(student_label(DISAGREEMENT_LABEL), report, disagreement, api_visibility="private")
            event.then(lambda r: (summary_markdown(r), per_class_figure(r)), report, [summary, plot],
                       api_visibility="private")
            event.failure(lambda: cleared_values(shown_outputs), None, shown_outputs, api_visibility="private")
            return event

        event = wire(run, run_segmentation, {"api_name": "segment"})
        shown = first_sight(wire, run_segmentation, inputs, {image: examples_for("segmentation")[0]})
        wire_student_picker(pair, students)
        wire_consensus_toggle([event, shown], image, pair, toggle, overlay, students)
