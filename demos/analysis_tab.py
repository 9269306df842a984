"""Analysis tab: where teacher and student features agree and disagree (consensus and divergence maps after ADM),
their layer similarity (CKA), and their attention for the same target. The computation is the engine's
(:mod:`compare.analysis`); this module lays it out."""

from __future__ import annotations

import numpy as np

import compare
from compare.analysis import DEFAULT_TAU, METHODS
from demos.jobs import on_gpu
from demos.widgets import clear_on_start, examples, notes_markdown, report_panel

DEFAULT_PAIR = "shapes-segmentation"


@on_gpu
def consensus(image, pair: str = DEFAULT_PAIR, tau: float = DEFAULT_TAU, method: str = "affinity",
              students: str | list[str] | None = None) -> tuple[list[tuple[np.ndarray, str]], dict]:
    """Consensus and divergence maps at every stage stride that the teacher and each chosen student share, and
    their CKA (``/consensus``); one forward of each model.

    Args:
        image: a file path, numpy RGB array or PIL image.
        pair: a detection or segmentation pair.
        tau: softmax temperature of the consensus and divergence weights, > 0.
        method: ``"affinity"`` (dimension-free) or ``"projection"`` (least squares).
        students: one or two student names (a list or a comma-separated string); default the pair's first.

    Returns:
        ``(overlays, report)``: (image, caption) overlays, consensus then divergence for each matched stage, the
        first student's then the second's; ``report`` is ``{pair, method, tau, students: {name: {method, source,
        stages: [{teacher_layer, student_layer, stride, consensus_mean, consensus_foreground, consensus_background,
        energy_foreground_teacher, energy_foreground_student, foreground_area}], cka: {teacher_layers,
        student_layers, matrix}, agreement: {consensus_mean}, adm_training}}, ranking, notes}``, with the first
        student's ``stages`` and ``cka`` also at the top level (single-student fields, kept for one release).
        ``adm_training`` (students trained with ADM's loss, else None) names the strides and τ at which the
        consensus maps are the weights that loss gives each location.
    """
    result = compare.consensus(pair, image, students, tau, method)
    return result.overlays, result.to_json()


@on_gpu
def attention(image, pair: str = DEFAULT_PAIR, target: str = "", students: str | list[str] | None = None,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Teacher and student attention for the same target, and their absolute difference (``/attention``); one
    forward of each model.

    Args:
        image: a file path, numpy RGB array or PIL image.
        pair: a detection or segmentation pair.
        target: detection: a rank of the teacher's detections ('' or '0' = its best) or a label;
            segmentation: a class name ('' = the largest non-background class in the teacher's mask).
        students: the student to explain (a name; of several, the first is used); default the pair's first.

    Returns:
        ``(teacher_image, student_image, difference_image, report)`` with
        ``report = {pair, student, target, method: {teacher, student}, mean_abs_difference, notes}``.
    """
    result = compare.attention(pair, image, target, students)
    array, _ = compare.read_image(image)
    return (*result.images(array), result.to_json())


def cka_figure(report: dict | None):
    """Plotly heat map of the teacher-by-student linear CKA matrix (unbiased estimator), each cell with its chance
    level (the student's locations shuffled)."""
    import plotly.graph_objects as go

    if not report:
        return None
    cka = report["cka"]
    chance = cka.get("chance") or [[None] * len(row) for row in cka["matrix"]]
    text = [["–" if v is None else f"{v:.2f}" + ("" if c is None else f"<br>(chance {c:+.2f})")
             for v, c in zip(row, chance_row, strict=True)] for row, chance_row in zip(cka["matrix"], chance,
                                                                                      strict=True)]
    fig = go.Figure(go.Heatmap(z=cka["matrix"], x=cka["student_layers"], y=cka["teacher_layers"], zmin=0, zmax=1,
                               colorscale="Viridis", text=text, texttemplate="%{text}",
                               colorbar={"title": {"text": "CKA"}, "tickvals": [0, 0.5, 1],
                                         "ticktext": ["0 unrelated", "0.5", "1 same up to rotation"]}))
    fig.update_layout(title="Linear CKA over this image's locations (unbiased), teacher × student stages",
                      xaxis_title="student", yaxis_title="teacher", height=380,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def figures_markdown(report: dict | None) -> str:
    if not report:
        return ""

    def fmt(v):
        return "–" if v is None else f"{v:.3f}"

    tables = []
    for name, block in report.get("students", {"student": report}).items():
        rows = "\n".join(
            f"| /{s['stride']} {s['teacher_layer']} ↔ {s['student_layer']} ({s.get('locations', '–')} locations) | "
            f"{fmt(s['consensus_mean'])} (chance {fmt(s.get('consensus_chance'))}) | "
            f"{fmt(s['consensus_foreground'])} (chance {fmt(s.get('consensus_chance_foreground'))}) | "
            f"{fmt(s['consensus_background'])} (chance {fmt(s.get('consensus_chance_background'))}) | "
            f"{fmt(s['energy_foreground_teacher'])} | {fmt(s['energy_foreground_student'])} | "
            f"{fmt(s['foreground_area'])} |" for s in block["stages"])
        tables.append(f"**{name}**\n\n| stage | consensus | on foreground | on background | teacher energy on fg "
                      f"| student energy on fg | fg area |\n|---|---|---|---|---|---|---|\n{rows}\n\n"
                      + verdict(block["stages"]))
    return (notes_markdown(report.get("notes", []))
            + "ADM's findings on this image (foreground = the teacher's own boxes or mask): consensus should be "
            "higher on the foreground, and the teacher should put more of its feature energy there.\n\n"
            + "\n\n".join(tables))


def verdict(stages: list[dict]) -> str:
    """One line: at how many stages this image shows ADM's two findings."""
    def count(a: str, b: str) -> tuple[int, int]:
        pairs = [(s[a], s[b]) for s in stages if s[a] is not None and s[b] is not None]
        return sum(x > y for x, y in pairs), len(pairs)

    (c, n), (e, m) = count("consensus_foreground", "consensus_background"), \
        count("energy_foreground_teacher", "energy_foreground_student")
    if not n:
        return "*Verdict:* no foreground on this image, so neither finding can be checked."
    first = "holds" if c == n else ("fails" if c == 0 else "holds in part")
    second = "holds" if e == m else ("fails" if e == 0 else "holds in part")
    return (f"*Verdict on this image:* consensus higher on the foreground than on the background: {first} ({c} of "
            f"{n} stages); the teacher's share of energy on the foreground above the student's: {second} ({e} of {m} "
            "stages).")


def stage_pair(overlays: list | None, stage: int) -> tuple:
    """The consensus and divergence overlays of one stage from the gallery list."""
    if not overlays:
        return None, None
    index = max(0, min(int(stage), len(overlays) // 2 - 1))
    return overlays[2 * index][0], overlays[2 * index + 1][0]


@on_gpu
def consensus_overlay(image, pair: str, enabled: bool, students: str | list[str] | None = None):
    """For the detection and segmentation tabs' toggle, switched on after a run: the consensus overlay at the
    deepest shared stride, for the first chosen student (a request of its own: one forward of each model)."""
    if not enabled or image is None:
        return None
    first = compare.load(pair, students)[1][0].name
    return compare.consensus(pair, image, [first]).deepest_consensus()


def consensus_toggle():
    """The checkbox of the detection and segmentation tabs' consensus overlay (place it in the inputs column), and
    the state that tells their run to compute the overlay from the same forwards."""
    import gradio as gr

    return gr.Checkbox(label="Consensus overlay (deepest shared stride, τ = 0.1)", value=False), gr.State(False)


def consensus_overlay_image(task: str):
    """The image the consensus toggle fills (place it in the results column), and the state a run leaves the
    overlay in (a state is no output of the API: ``/detect`` and ``/segment`` keep their outputs)."""
    import gradio as gr

    return (gr.Image(label="Consensus (teacher ↔ student)", interactive=False, height=300,
                     elem_id=f"{task}-consensus"), gr.State(None))


def wire_consensus_toggle(events: list, image, pair, toggle, overlay, students) -> None:
    """Show the overlay a run (any of ``events``) computed; recompute it when the checkbox is switched on after a
    run."""
    from demos.jobs import GPU_QUEUE, user_errors

    (checkbox, wanted), (picture, computed) = toggle, overlay
    checkbox.change(lambda on: bool(on), checkbox, wanted, api_visibility="private", queue=False)
    for event in events:
        event.then(lambda shown: shown, computed, picture, api_visibility="private")
    checkbox.change(user_errors(consensus_overlay), [image, pair, checkbox, students], picture,
                    api_visibility="private", **GPU_QUEUE)


def build_analysis_tab() -> None:
    import gradio as gr

    from demos.components import CheckedSlider, user_image
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

    with gr.Tab("Analysis", id="analysis"):
        gr.Markdown("Where do teacher and student features agree (**consensus**) and disagree (**divergence**)? "
                    "Similarity per location at every stride both models share; weights are a spatial softmax "
                    "of similarity / τ (consensus) or (1 − similarity) / τ (divergence).\n\n"
                    "**How to read this:** the page opens on an example, computed; a consensus or CKA figure means "
                    "something only well above its chance level, shown beside it. Pick another image, then "
                    "**Analyse**.")
        with gr.Row():
            with gr.Column(scale=1):
                image = user_image(label="Image", elem_id="analysis-image")
                run = gr.Button("Analyse", variant="primary", elem_id="analysis-run")
                examples("analysis", image)
                pair = pair_dropdown(("detection", "segmentation", "image-classification"), DEFAULT_PAIR,
                                     "analysis")
                students = student_picker("segmentation", DEFAULT_PAIR)
                tau = CheckedSlider(0.01, 2.0, value=DEFAULT_TAU, step=0.01, label="τ (softmax temperature)")
                method = gr.Radio(list(METHODS), value="affinity", label="Similarity",
                                  info="affinity: dimension-free; projection: least-squares channel map")
                stage = CheckedSlider(0, 4, value=0, step=1, label="Stage (0 = finest shared stride)")
                target = gr.Textbox(value="", label="Attention target", placeholder="detection: rank or label; "
                                    "segmentation or classification: class name (empty = the main object or the "
                                    "teacher's top class)")
                explain = gr.Button("Attention maps", elem_id="analysis-attention")
            with gr.Column(scale=2, elem_id="analysis-results"):
                with gr.Row():
                    chosen = [gr.Image(label=f"{k.capitalize()} (chosen stage)", interactive=False)
                              for k in ("consensus", "divergence")]
                gallery = gr.Gallery(label="All stages", columns=4, height=380, interactive=False,
                                     elem_classes=["responsive-gallery"])
                figures = gr.Markdown(elem_id="analysis-summary")
                cka = gr.Plot(label="CKA")
                report = report_panel("Report")
                with gr.Row():
                    attention_images = [gr.Image(label=label, interactive=False)
                                        for label in ("Teacher attention", "Student attention", "|difference|")]
                attention_notes = gr.Markdown(elem_id="analysis-attention-notes")
                attention_report = report_panel("Attention report")
        inputs = [image, pair, tau, method, students]
        shown_outputs = [gallery, report, figures, cka, *chosen]

        def wire(trigger, fn, api: dict):
            started = clear_on_start(trigger, shown_outputs)
            event = started.then(user_errors(fn), inputs, [gallery, report], **api, **GPU_QUEUE)
            event.then(lambda r, g, s: (figures_markdown(r), cka_figure(r), *stage_pair(g, s)),
                       [report, gallery, stage], [figures, cka, *chosen], api_visibility="private")
            event.failure(lambda: cleared_values(shown_outputs), None, shown_outputs, api_visibility="private")
            return event

        wire(run, consensus, {"api_name": "consensus"})
        first_sight(wire, consensus, inputs, {image: examples_for("analysis")[0]})
        wire_student_picker(pair, students)
        stage.change(stage_pair, [gallery, stage], chosen, api_visibility="private")
        attention_outputs = [*attention_images, attention_report, attention_notes]
        explaining = clear_on_start(explain, attention_outputs).then(
            user_errors(attention), [image, pair, target, students], [*attention_images, attention_report],
            api_name="attention", **GPU_QUEUE)
        explaining.then(student_label("{student} attention"), attention_report, attention_images[1],
                        api_visibility="private")
        explaining.then(lambda r: notes_markdown(r.get("notes", [])) if r else "", attention_report, attention_notes,
                        api_visibility="private")  # why a map is empty, or a target weak: on the page, not in the JSON
        explaining.failure(lambda: cleared_values(attention_outputs), None, attention_outputs,
                           api_visibility="private")
