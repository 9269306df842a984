"""CLIP tab: teacher vs student zero-shot classification on the user's classes, and prompts tuned live for the
student from the teacher (CoOp, CasPL)."""

from __future__ import annotations

import torch

import compare
from analysis.attention import normalise_map
from compare.drawing import heat_overlay
from compare.generation import ROLES
from compare.zero_shot import (  # noqa: F401 (the CLIP tab's constants and checks, importable from here)
    DEFAULT_PAIR,
    DEFAULT_TEMPLATE,
    MAX_CLASSES,
    MAX_TUNE_STEPS,
    PRESETS,
    TOP_K,
    check_template,
    parse_classes,
    similarity_map,
    split_held_out,
    unique_prompt_name,
    zero_shot,
)
from compare.zero_shot import tune_prompts as tune_for_student
from demos.jobs import on_gpu
from demos.widgets import clear_on_start, notes_markdown, ranking_markdown, report_panel
from methods.prompts import METHODS
from weights.prompt_store import list_prompts, user_folder
from weights.registry import get_pair


def user_of(key: str | None, request=None) -> str | None:
    """Whose prompts a call sees and saves: the page's key kept in the browser (one per browser, across reloads),
    else the caller's session (a ``gradio_client`` client); None for scripts (this machine's own folder)."""
    return key or getattr(request, "session_hash", None)


def run_classification(image, pair: str = DEFAULT_PAIR, class_names: str = PRESETS["Shapes: 5 shapes"],
                       prompt: str = "", template: str = "", students: str | list[str] | None = None,
                       user: str | None = None, request=None) -> tuple:
    """The Classify button: :func:`classify`'s outputs and the patch-to-top-class similarity maps ((h, w) in
    [0, 1], or None) of the teacher and the first chosen student, all from one forward of each image tower; the
    page draws the maps afterwards (:func:`similarity_overlays`), outside the GPU queue. ``prompt`` is looked up among
    the shipped prompts and the user's own (:func:`user_of`)."""
    spec, chosen, predictors = compare.load(pair, students, "classification")
    names, notes = parse_classes(class_names)
    template = check_template(template)
    array, image_notes = compare.read_image(image)
    [result] = zero_shot(spec, chosen, predictors, [array], names, template, prompt, [notes + image_notes],
                         prompts=user_folder(user_of(user, request)))
    report = result.to_json()
    top = max(report["teacher"]["probs"], key=report["teacher"]["probs"].get)
    maps = []
    for name in ("teacher", result.names[0]):
        heat = similarity_map(predictors[name], result.patches[name], template.format(top))
        maps.append(None if heat is None else normalise_map(heat[None])[0].cpu().numpy())
    return top_k_figure(report), report, tuple(maps)


def similarity_overlays(image, maps: tuple | None) -> tuple:
    """The similarity maps of a run drawn over its image, with their colour bars (two Nones when there are none)."""
    if not maps or image is None:
        return None, None
    try:
        array, _ = compare.read_image(image)
    except compare.InputError:  # the image was cleared or replaced after the run
        return None, None
    return tuple(None if m is None else heat_overlay(array, torch.from_numpy(m)) for m in maps)


@on_gpu
def classify(image, pair: str = DEFAULT_PAIR, class_names: str = PRESETS["Shapes: 5 shapes"], prompt: str = "",
             template: str = "", students: str | list[str] | None = None) -> tuple[object, dict]:
    """Zero-shot (or learned-prompt) classification by the teacher and one or two students (``/classify``); each
    image tower runs once.

    Args:
        image: a file path, numpy RGB array or PIL image.
        pair: a classification pair.
        class_names: comma-separated class names (2 to 1000).
        prompt: the name of a learned prompt, or empty for zero-shot; it applies to the student it was learned for
            (the others run zero-shot, and their ``prompt`` field says so).
        template: the zero-shot template with one ``{}``; empty means ``a {}``.
        students: one or two student names (a list or a comma-separated string); default the pair's first.

    Returns:
        ``(figure, report)``: a plotly chart of every model's top-5 and ``{pair, classes, teacher: {probs,
        latency_ms, ..., prompt}, students: {name: {method, source, probs, latency_ms, prompt, agreement:
        {top1_match, kl, js, spearman}}}, ranking, notes}``, with the first student also as ``student`` and
        ``agreement`` (single-student fields, kept for one release).
    """
    return run_classification(image, pair, class_names, prompt, template, students)[:2]


@on_gpu
def tune_prompts(*args, **kwargs) -> tuple[str, dict]:
    """Learn a prompt for one student of a CLIP pair and save it (``/tune_prompts``); see
    :func:`compare.zero_shot.tune_prompts`."""
    return tune_for_student(*args, **kwargs)


def top_k_figure(report: dict | None):
    """Grouped bars: the teacher's and each student's probabilities on the union of their top-5 classes."""
    import plotly.graph_objects as go

    if not report:
        return None
    models = {"teacher": report["teacher"]} | report.get("students", {"student": report.get("student")})
    top = []
    for block in models.values():
        ranked = sorted(block["probs"].items(), key=lambda kv: -kv[1])[:TOP_K]
        top += [name for name, _ in ranked if name not in top]
    fig = go.Figure([go.Bar(name=name, x=top, y=[block["probs"][n] for n in top]) for name, block in models.items()])
    title = "Top classes, teacher vs student" + ("s" if len(models) > 2 else "")
    fig.update_layout(barmode="group", title=title, yaxis={"range": [0, 1]},
                      height=340, margin={"l": 40, "r": 10, "t": 40, "b": 40})
    return fig


def summary_markdown(report: dict | None) -> str:
    """Each student's agreement with the teacher in words, then the ranking table."""
    if not report:
        return ""
    lines = [f"**{name}** vs teacher: top-1 {'matches' if a['top1_match'] else 'differs'}; KL {a['kl']:.3f}, "
             f"JS {a['js']:.3f}, Spearman {a['spearman']:.2f} ({b['prompt']})."
             for name, b in report["students"].items() for a in [b["agreement"]]]
    return notes_markdown(report.get("notes", [])) + "\n\n".join(lines) + "\n\n" + ranking_markdown(report)


def shipped_prompt_markdown(pair: str, students) -> str:
    """What the shipped prompt of the first chosen student does, as measured by ``benchmarks.builtin_clip``: its
    zero-shot and prompted accuracy beside the linear-probe ceiling of its image features (no text-side prompt can
    go much past that ceiling, so it tells a gap a prompt can close from one it cannot)."""
    try:
        spec = get_pair(pair, "classification")
        student = spec.choose_students(students or None)[0].name
    except (KeyError, ValueError):
        return ""
    shipped = [p for p in list_prompts() if p.get("builtin") and p.get("pair") == spec.name
               and p.get("student") == student]
    if not shipped:
        return f"No prompt ships for student `{student}`; tune one below."
    lines = []
    for p in shipped:
        f = p.get("figures") or {}
        lines.append(f"Shipped prompt `{p['name']}` ({p.get('method')}) for `{student}`, on "
                     f"{f.get('measured_on', '?')}: "
                     f"zero-shot {f.get('zero_shot', float('nan')):.3f} → with the prompt "
                     f"{f.get('with_prompt', float('nan')):.3f}; teacher {f.get('teacher', float('nan')):.3f}; "
                     f"linear-probe ceiling of the student's image features {f.get('probe_ceiling', float('nan')):.3f}"
                     f" ({f.get('verdict', '')}).")
    return "\n\n".join(lines)


def prompt_choices(user: str | None = None, request=None):
    """The saved-prompt menu's current entries, the shipped prompts and this user's (read when the tab is opened and
    after each tuning)."""
    import gradio as gr

    return gr.update(choices=["", *[p["name"] for p in list_prompts(user_folder(user_of(user, request)))]])


def prompts(request=None, user: str | None = None) -> list[dict]:
    """Saved prompts, the shipped ones first, then the caller's own (another user's are never listed): ``[{name,
    pair, student, method, builtin, n_classes, n_context, figures, created}]`` (``method``: ``coop``, ``caspl`` for
    CasPL's boosting prompt, ``cascade``)."""
    keys = ("name", "pair", "student", "method", "builtin", "n_classes", "n_context", "figures", "created")
    return [{k: p.get(k) for k in keys} for p in list_prompts(user_folder(user_of(user, request)))]


TUNING_ROWS = (("accuracy", "student accuracy"), ("top1_match_with_teacher", "student's top-1 matches the teacher's"),
               ("teacher_accuracy", "teacher accuracy (for reference)"))


def tuning_markdown(figures: dict | None) -> str:
    """A tuning's before/after as a table, with a verdict: whether the tuned prompt helped the student on the held-out
    scenes (a prompt that made it worse is said to, though it is saved)."""
    if not figures:
        return ""
    before, after = figures["before"], figures["after"]

    def share(value) -> str:
        return "–" if value is None else f"{value:.0%}"

    rows = ["| on held-out scenes | zero-shot (before) | tuned prompt (after) | change |", "|---|---|---|---|"]
    for key, words in TUNING_ROWS:
        b, a = before.get(key), after.get(key)
        change = "–" if a is None or b is None or key == "teacher_accuracy" else f"{(a - b) * 100:+.0f} points"
        rows.append(f"| {words} | {share(b)} | {share(a)} | {change} |")
    b, a = before.get("accuracy"), after.get("accuracy")
    if a is None or b is None:
        verdict = "No accuracy to compare: the verdict is undefined."
    elif a > b:
        verdict = f"**The tuned prompt helped** {figures['student']}: accuracy {share(b)} → {share(a)}."
    elif a < b:
        verdict = (f"**The tuned prompt made {figures['student']} worse**: accuracy {share(b)} → {share(a)}. It is "
                   "saved, but zero-shot is better on these scenes: try more steps, more scenes per class, or "
                   "another method.")
    else:
        verdict = f"**No change** in {figures['student']}'s accuracy ({share(a)})."
    measured = f"Measured on {figures['measured_on']}; tuned on {figures['tuned_on']} ({figures['method']})."
    return "\n\n".join([verdict, "\n".join(rows), measured, notes_markdown(figures.get("notes", []))]).strip()


def saved_prompts_markdown(listed: list[dict] | None) -> str:
    """The saved prompts as a table: name, pair, student, method, and the student's held-out accuracy before and
    after tuning."""
    if not listed:
        return "No saved prompts yet."
    rows = ["| name | pair | student | method | accuracy before → after | saved |", "|---|---|---|---|---|---|"]
    for p in listed:
        figures = p.get("figures") or {}
        before, after = (figures.get(k, {}).get("accuracy") for k in ("before", "after"))
        accuracy = "–" if before is None or after is None else f"{before:.0%} → {after:.0%}"
        origin = "shipped" if p.get("builtin") else (p.get("created") or "")
        rows.append(f"| `{p['name']}` | {p.get('pair')} | {p.get('student')} | {p.get('method')} | {accuracy} | "
                    f"{origin} |")
    return "\n".join(rows)


def new_user(key: str | None) -> tuple[str, str]:
    """This browser's prompt key: the one it keeps, or a fresh random one (stored in the browser from then on)."""
    import uuid

    key = key or uuid.uuid4().hex
    return key, key


def saved_prompts(request) -> list[dict]:
    """``/prompts``: the shipped prompts and the caller's own (:func:`prompts`)."""
    return prompts(request)


def build_classification_tab() -> None:
    import gradio as gr

    from demos.components import CheckedSlider, user_image
    from demos.first_sight import first_sight
    from demos.jobs import (
        GPU_QUEUE,
        session_of,
        stop_button,
        stop_flag,
        stopped_as_outcome,
        takes_request,
        user_errors,
    )
    from demos.widgets import (
        cleared_values,
        examples,
        examples_for,
        pair_dropdown,
        student_label,
        student_picker,
        wire_student_picker,
    )

    with gr.Tab("CLIP", id="classification") as tab:
        gr.Markdown("Zero-shot classification by a large CLIP and a small one on your image and classes; then close "
                    "part of the gap by learning a prompt for the student from the teacher (CoOp, CasPL).\n\n"
                    "**How to read this:** the page opens on an example, computed; KL 0 means the student's "
                    "probabilities are the teacher's. Pick another image or classes, then **Classify**.")
        with gr.Row():
            with gr.Column(scale=1):
                image = user_image(label="Image", elem_id="classification-image")
                run = gr.Button("Classify", variant="primary", elem_id="classification-run")
                examples("classification", image)
                pair = pair_dropdown(("classification",), DEFAULT_PAIR, "classification")
                students = student_picker("classification", DEFAULT_PAIR)
                preset = gr.Dropdown(list(PRESETS), value="Shapes: 5 shapes", label="Class preset")
                classes = gr.Textbox(value=PRESETS["Shapes: 5 shapes"], label="Class names (comma-separated)",
                                     lines=2, max_length=200_000)
                prompt = gr.Dropdown(["", *[p["name"] for p in list_prompts() if p["builtin"]]], value="",
                                     allow_custom_value=True, label="Student prompt (empty: zero-shot)")
                kept = gr.BrowserState(None, storage_key="distill-lens-user")  # this browser's prompt key, kept
                user = gr.State(None)  # the key, for this page's events (a state: no input of the API)
                template = gr.Textbox(value=DEFAULT_TEMPLATE, label="Zero-shot template")
            with gr.Column(scale=2, elem_id="classification-results"):
                summary = gr.Markdown(elem_id="classification-summary")
                plot = gr.Plot(label="Top classes")
                with gr.Row():
                    maps = [gr.Image(label=f"{role.capitalize()}: patches vs top class", interactive=False)
                            for role in ROLES]
                report = report_panel("Report")
                similarity = gr.State(None)
        with gr.Accordion("Tune a prompt for one student (choose one above; empty: the first)", open=False):
            shipped = gr.Markdown(shipped_prompt_markdown(DEFAULT_PAIR, None), elem_id="classification-shipped")
            with gr.Row():
                method = gr.Radio(list(METHODS), value="cascade", label="Method",
                                  info="coop: labels · caspl: CasPL's boosting prompt from the teacher's logits, no "
                                       "labels · cascade: boosting, then adapting on labels")
                name = gr.Textbox(value="", label="Prompt name", placeholder="empty: a fresh unique name")
                steps = CheckedSlider(1, MAX_TUNE_STEPS, value=100, step=1, label="Steps per phase",
                                      elem_id="classification-tune-steps")
                per_class = CheckedSlider(1, 16, value=4, step=1, label="Shapes scenes per class (no uploads)")
            files = gr.File(file_count="multiple", file_types=["image"], label="Labelled images '<class>_<n>.png' "
                            "(optional; Shapes scenes are used otherwise)")
            with gr.Row():
                tune_button = gr.Button("Tune", variant="primary", elem_id="classification-tune")
                stop = gr.Button("Stop", elem_id="classification-tune-stop")
            saved = gr.Textbox(label="Saved prompt", interactive=False, elem_id="classification-saved")
            verdict = gr.Markdown(elem_id="classification-tuning")
            with gr.Accordion("Saved prompts", open=False):
                saved_table = gr.Markdown()
            figures = report_panel("Before / after")
            saved_list = report_panel("Saved prompts")
        preset.change(lambda p: PRESETS[p], preset, classes, api_visibility="private")
        inputs = [image, pair, classes, prompt, template, students, user]
        shown_outputs = [plot, report, summary, *maps]

        def wire(trigger, fn, api: dict):
            started = clear_on_start(trigger, shown_outputs)
            event = started.then(user_errors(fn), inputs, [plot, report, similarity], **api, **GPU_QUEUE)
            event.then(summary_markdown, report, summary, api_visibility="private")
            event.then(similarity_overlays, [image, similarity], maps, api_visibility="private")
            event.then(student_label("{student}: patches vs top class"), report, maps[1], api_visibility="private")
            event.failure(lambda: cleared_values(shown_outputs), None, shown_outputs, api_visibility="private")
            return event

        wire(run, takes_request(run_classification), {"api_name": "classify"})
        first_sight(wire, takes_request(run_classification), inputs, {image: examples_for("classification")[0]})
        wire_student_picker(pair, students)

        @takes_request
        def run_tuning(pair, classes, method, name, files, per_class, steps, template, student, user, request,
                       progress=gr.Progress()):  # noqa: B008 (Gradio injects progress through this default)
            return tune_prompts(pair, classes, method, name, files, per_class, steps, progress, template,
                                cancel=stop_flag(session_of(request), "prompts"), student=student,
                                prompts=user_folder(user_of(user, request)))

        started = clear_on_start(tune_button, [saved, figures, verdict])
        tuning = started.then(user_errors(stopped_as_outcome(run_tuning, 2, message_at=0, markdown=False)),
                              [pair, classes, method, name, files, per_class, steps, template, students, user],
                              [saved, figures], api_name="tune_prompts", **GPU_QUEUE)
        tuning.then(tuning_markdown, figures, verdict, api_visibility="private")
        for trigger in (pair.change, students.change):
            trigger(shipped_prompt_markdown, [pair, students], shipped, api_visibility="private", queue=False)
        stop.click(stop_button("prompts"), None, None, api_visibility="private")
        tab.select(new_user, kept, [kept, user], api_visibility="private", queue=False).then(
            takes_request(prompt_choices), user, prompt, api_visibility="private", queue=False)
        tuning.then(takes_request(prompt_choices), user, prompt, api_visibility="private")
        tuning.then(takes_request(lambda user, request: prompts(request, user)), user, saved_list,
                    api_visibility="private").then(saved_prompts_markdown, saved_list, saved_table,
                                                   api_visibility="private")
        gr.api(takes_request(saved_prompts), api_name="prompts")
