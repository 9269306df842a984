"""Classification tab: an image classifier and its students on one image (ImageNet by default, with real weights),
their top classes side by side, their agreement, and Grad-CAM of the teacher's top class on both."""

from __future__ import annotations

import html

import compare
from demos.jobs import on_gpu
from demos.widgets import clear_on_start, examples, notes_markdown, ranking_markdown, report_panel

DEFAULT_PAIR = "efficientnet-lite2-to-lite0"
TOP_K = 5


@on_gpu
def classify_image(image, pair: str = DEFAULT_PAIR, students: str | list[str] | None = None) -> tuple:
    """An image classifier and one or two of its students on one image (``/classify_image``); each model runs once,
    and the same forwards give Grad-CAM of the teacher's top class on the teacher and the first student.

    Args:
        image: a file path, numpy RGB array or PIL image.
        pair: an image-classification pair (``/pairs``: task ``image-classification``).
        students: one or two student names (a list or a comma-separated string); default the pair's first.

    Returns:
        ``(figure, report, teacher_cam, student_cam, difference)``: a plotly chart of every model's top five;
        ``report = {pair, num_classes, teacher: {top5: [{label, prob}], latency_ms, ..., params, gflops}, students:
        {name: {method, source, top5, ..., agreement: {top1_match, top5_overlap, kl, js, spearman}}}, ranking,
        notes, attention: {student, target, method, mean_abs_difference}}``; and the Grad-CAM overlays of the teacher,
        the first student and their absolute difference.
    """
    result, attention = compare.classify_image(image, pair, students)
    array, _ = compare.read_image(image)
    report = result.to_json()
    report["attention"] = {k: v for k, v in attention.to_json().items() if k != "pair"}
    return (top_k_figure(report), report, *attention.images(array))


def top_k_figure(report: dict | None):
    """Grouped bars: every model's probability on the union of their top-5 classes."""
    import plotly.graph_objects as go

    if not report:
        return None
    models = {"teacher": report["teacher"]} | report["students"]
    top = list(dict.fromkeys(entry["label"] for block in models.values() for entry in block["top5"]))
    fig = go.Figure([go.Bar(name=name, x=top, y=[next((e["prob"] for e in block["top5"] if e["label"] == label), None)
                                                 for label in top]) for name, block in models.items()])
    fig.update_layout(barmode="group", title="Top five classes of each model (a gap: not in its top five)",
                      yaxis={"range": [0, 1]}, height=360, margin={"l": 40, "r": 10, "t": 40, "b": 80})
    return fig


def summary_markdown(report: dict | None) -> str:
    """Each model's top class, each student's agreement with the teacher in words, then the ranking table."""
    if not report:
        return ""
    teacher = report["teacher"]["top5"][0]
    lines = [f"**Teacher:** {html.escape(teacher['label'])} ({teacher['prob']:.0%})."]
    for name, block in report["students"].items():
        a, top = block["agreement"], (block["top5"] or [{"label": "–", "prob": 0.0}])[0]
        if a.get("top1_match") is None:  # too few shared class names to compare (the notes say why)
            lines.append(f"**{html.escape(name)}:** {html.escape(top['label'])}; agreement undefined.")
            continue
        lines.append(f"**{html.escape(name)}:** {html.escape(top['label'])} ({top['prob']:.0%}); top-1 "
                     f"{'matches' if a['top1_match'] else 'differs'}, {a['top5_overlap']:.0%} of the top five shared, "
                     f"KL {a['kl']:.3f}, JS {a['js']:.3f}, Spearman {a['spearman']:.2f}.")
    attention = report.get("attention")
    if attention:
        lines.append(f"Grad-CAM of the teacher's top class ({html.escape(attention['target']['label'])}) on the "
                     f"teacher and {html.escape(attention['student'])}: mean |difference| "
                     f"{attention['mean_abs_difference']:.3f} (0: the same regions, 1: disjoint).")
    notes = report.get("notes", []) + (attention or {}).get("notes", [])
    return notes_markdown(notes) + "\n\n".join(lines) + "\n\n" + ranking_markdown(report)


def build_image_classification_tab() -> None:
    import gradio as gr

    from demos.components import user_image
    from demos.first_sight import first_sight
    from demos.jobs import GPU_QUEUE, user_errors
    from demos.widgets import (
        cleared_values,
        examples_for,
        pair_dropdown,
        student_label,
        student_picker,
        wire_student_picker,
    )

    with gr.Tab("Classification", id="image-classification"):
        gr.Markdown("An image classifier and its students on your image: their top classes, how far they agree, and "
                    "where each looks for the teacher's top class (Grad-CAM). The default pair runs real ImageNet "
                    "weights offline: EfficientNet-Lite at three sizes (one family, not distilled students).\n\n"
                    "**How to read this:** the page opens on an example, computed; KL 0 and JS 0 mean the student's "
                    "probabilities are the teacher's. Pick another photo or pair, then **Classify**.")
        with gr.Row():
            with gr.Column(scale=1):
                image = user_image(label="Image", elem_id="image-classification-image")
                run = gr.Button("Classify", variant="primary", elem_id="image-classification-run")
                examples("image-classification", image)
                pair = pair_dropdown(("image-classification",), DEFAULT_PAIR, "image-classification")
                students = student_picker("image-classification", DEFAULT_PAIR)
            with gr.Column(scale=2, elem_id="image-classification-results"):
                summary = gr.Markdown(elem_id="image-classification-summary")
                plot = gr.Plot(label="Top classes")
                with gr.Row():
                    cams = [gr.Image(label=label, interactive=False, format="png",
                                     elem_id=f"image-classification-{key}")
                            for key, label in (("teacher", "Teacher: Grad-CAM of its top class"),
                                               ("student", "First student: Grad-CAM of the teacher's class"),
                                               ("difference", "|difference|"))]
                report = report_panel("Report")
        shown_outputs = [plot, report, *cams, summary]

        def wire(trigger, fn, api: dict):
            started = clear_on_start(trigger, shown_outputs)
            event = started.then(user_errors(fn), [image, pair, students], [plot, report, *cams], **api, **GPU_QUEUE)
            event.then(summary_markdown, report, summary, api_visibility="private")
            event.then(student_label("{student}: Grad-CAM of the teacher's class"), report, cams[1],
                       api_visibility="private")
            event.failure(lambda: cleared_values(shown_outputs), None, shown_outputs, api_visibility="private")
            return event

        wire(run, classify_image, {"api_name": "classify_image"})
        first_sight(wire, classify_image, [image, pair, students], {image: examples_for("image-classification")[0]})
        wire_student_picker(pair, students)
