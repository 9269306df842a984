"""CLIP tab: teacher vs student zero-shot classification on the user's classes, and prompts tuned live for the
student from the teacher (CoOp, CasPL)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional import kl_divergence, spearman_corrcoef

from analysis.attention import normalise_map
from analysis.profiling import Stopwatch
from demos.common import (
    ROLES,
    Cancelled,
    InputError,
    heat_overlay,
    notes_markdown,
    on_gpu,
    ranking_markdown,
    read_image,
    students_report,
)
from methods.prompts import METHODS, method_name, prompted_text_features, tune
from weights.predictors import predictors_for
from weights.prompt_store import PromptError, list_prompts, load_prompt, sanitise_name, save_prompt
from weights.registry import get_pair
from weights.shapes.world import COLOUR_SHAPE_NAMES, SHAPE_NAMES, TUNING_SEED_START, render_scene

DEFAULT_PAIR = "shapes-clip"
PRESETS = {
    "Shapes: 5 shapes": ", ".join(SHAPE_NAMES),
    "Shapes: 30 colour-shapes": ", ".join(COLOUR_SHAPE_NAMES),
    "Everyday objects": "cat, dog, car, bicycle, cup, chair, person, bird, tree, house",
}
DEFAULT_TEMPLATE = "a {}"
MAX_CLASSES = 1000
MAX_NAME_CHARS = 100
TOP_K = 5
MAX_TUNE_IMAGES = 64
MAX_TUNE_STEPS = 500
TUNE_SEED_START = TUNING_SEED_START + 50_000  # Shapes tuning scenes, never the evaluation seeds
HELD_OUT_SEED_START = TUNING_SEED_START + 75_000  # Shapes scenes that judge a freshly tuned prompt (never tuned on)
HELD_OUT_PER_CLASS = 4


def parse_classes(text: str) -> tuple[list[str], list[str]]:
    """Comma- or newline-separated class names -> (unique names in order, notes).

    Raises:
        InputError: fewer than two names, more than ``MAX_CLASSES``, or a name over ``MAX_NAME_CHARS``.
    """
    if not isinstance(text, str):
        raise InputError("Class names must be text: a comma-separated list.")
    names = [re.sub(r"\s+", " ", n).strip() for n in re.split(r"[,\n]", text)]
    names = [n for n in names if n]
    notes = []
    long = [n for n in names if len(n) > MAX_NAME_CHARS]
    if long:
        raise InputError(f"Class names are limited to {MAX_NAME_CHARS} characters; one has {len(long[0]):,}.")
    unique = list(dict.fromkeys(names))
    if len(unique) < len(names):
        notes.append(f"Removed {len(names) - len(unique)} duplicate class name(s).")
    if len(unique) < 2:
        raise InputError("Give at least two different class names, separated by commas.")
    if len(unique) > MAX_CLASSES:
        raise InputError(f"At most {MAX_CLASSES} classes, got {len(unique):,}.")
    return unique, notes


def check_template(template: str) -> str:
    """The template with exactly one ``{}`` for the class name; any other brace is refused with a message saying
    which (``str.format`` would otherwise fail with a bare KeyError or ValueError)."""
    template = (template or "").strip() or DEFAULT_TEMPLATE
    example = "e.g. 'a photo of a {}.'"
    if len(template) > 200:
        raise InputError(f"The prompt template is {len(template)} characters; keep it under 200, {example}")
    if template.count("{}") != 1:
        raise InputError(f"The prompt template needs exactly one {{}} where the class name goes, {example}")
    rest = template.replace("{}", "", 1)
    if "{" in rest or "}" in rest:
        raise InputError(f"The prompt template may hold no braces besides its one {{}} (found "
                         f"{''.join(c for c in rest if c in '{}')!r}); {example}")
    return template


def agreement(teacher_probs: torch.Tensor, student_probs: torch.Tensor) -> dict:
    """Top-1 match, KL(teacher || student), Jensen-Shannon divergence and Spearman rank correlation."""
    t, s = teacher_probs[None].double(), student_probs[None].double()
    mixture = (t + s) / 2
    js = (kl_divergence(t, mixture) + kl_divergence(s, mixture)) / 2
    return {"top1_match": bool(t.argmax() == s.argmax()), "kl": round(float(kl_divergence(t, s)), 5),
            "js": round(float(js), 5), "spearman": round(float(spearman_corrcoef(t[0], s[0])), 4)}


def _student_text(student, student_name: str, names: list[str], template: str, prompt: str, spec,
                  ) -> tuple[torch.Tensor, str]:
    zero_shot = f"zero-shot '{template}'"
    if not prompt:
        return student.text_features([template.format(n) for n in names]), zero_shot
    tensors, meta = load_prompt(prompt)
    if meta.get("pair") != spec.name:
        raise PromptError(f"Prompt {prompt!r} was learned for pair {meta.get('pair')!r}, not {spec.name!r}.")
    if meta.get("student", spec.students[0].name) != student_name:  # learned for another student of the pair
        return student.text_features([template.format(n) for n in names]), zero_shot
    return prompted_text_features(student, names, tensors), f"learned prompt '{prompt}' ({meta.get('method')})"


@on_gpu
def classify(image, pair: str = DEFAULT_PAIR, class_names: str = PRESETS["Shapes: 5 shapes"], prompt: str = "",
             template: str = "", students: str | list[str] | None = None) -> tuple[object, dict]:
    """Zero-shot (or learned-prompt) classification by the teacher and one or two students.

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
        latency_ms, prompt}, students: {name: {method, source, probs, latency_ms, prompt, agreement: {top1_match,
        kl, js, spearman}}}, ranking, notes}``, with the first student also as ``student`` and ``agreement``
        (single-student fields, kept for one release).
    """
    spec = get_pair(pair, "classification")
    chosen = spec.choose_students(students)
    names, notes = parse_classes(class_names)
    template = check_template(template)
    array, image_notes = read_image(image)
    predictors = predictors_for(spec, students=chosen)
    sides, probs = {}, {}
    for name, p in predictors.items():
        with Stopwatch(p.device) as watch:
            inputs, _ = p.prepare(array)
            if name == "teacher":
                text, used = p.text_features([template.format(n) for n in names]), f"zero-shot '{template}'"
            else:
                text, used = _student_text(p, name, names, template, (prompt or "").strip(), spec)
            probs[name] = p.logits(p.forward(inputs), text)[0].softmax(-1).cpu()
        sides[name] = {"probs": {n: round(float(v), 5) for n, v in zip(names, probs[name], strict=True)},
                       "latency_ms": round(watch.seconds * 1000, 2), "prompt": used, "params": p.params}
    per_student = {s.name: sides[s.name] | {"agreement": agreement(probs["teacher"], probs[s.name])}
                   for s in chosen}
    report = {"pair": spec.name, "classes": names, "teacher": sides["teacher"],
              **students_report(chosen, per_student, "kl", higher_is_better=False),
              "notes": notes + image_notes}
    return top_k_figure(report), report


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


@on_gpu
def similarity_maps(image, pair: str, class_names: str, template: str, report: dict | None) -> tuple:
    """Patch-level similarity to the teacher's top class text, teacher beside student."""
    if not report or image is None:
        return None, None
    spec = get_pair(pair, "classification")
    names, _ = parse_classes(class_names)
    top = max(report["teacher"]["probs"], key=report["teacher"]["probs"].get)
    array, _ = read_image(image)
    maps = []
    for p in predictors_for(spec).values():
        inputs, _ = p.prepare(array)
        heat = p.patch_similarity(inputs, p.text_features([check_template(template).format(top)])[0])
        maps.append(None if heat is None else heat_overlay(array, normalise_map(heat[None])[0]))
    return tuple(maps)


# Prompt tuning ------------------------------------------------------------------------------------------------

def _label_of(path: str, names: list[str]) -> int:
    """The class of an uploaded tuning image, from its file name: ``red circle_3.png`` -> ``red circle``."""
    stem = Path(path).name.rsplit(".", 1)[0]
    label = stem.split("_")[0].replace("-", " ").strip().lower()
    lowered = [n.lower() for n in names]
    if label not in lowered:
        raise InputError(f"Cannot tell the class of {Path(path).name[:60]!r}: name files '<class>_<n>.png' with a "
                         f"class from the list (e.g. '{names[0]}_1.png').")
    return lowered.index(label)


def _shapes_examples(names: list[str], per_class: int, start: int = TUNE_SEED_START,
                     ) -> tuple[list[np.ndarray], list[int]]:
    """Labelled Shapes scenes for classes that are shapes or colour-shapes, drawn from seeds ``start`` on."""
    images, labels, wanted = [], [], {n.lower(): i for i, n in enumerate(names)}
    if not set(wanted) <= set(SHAPE_NAMES) | set(COLOUR_SHAPE_NAMES):
        raise InputError("Shapes examples only exist for Shapes classes (shapes or colour-shapes); upload "
                         "labelled images for other classes.")
    counts = dict.fromkeys(wanted.values(), 0)
    seed = start
    while min(counts.values()) < per_class and seed < start + 200 * per_class * len(names):
        scene = render_scene(seed, single_object=True)
        seed += 1
        obj = scene.objects[0]
        for key in (obj.name, f"{obj.colour} {obj.name}"):
            if key in wanted and counts[wanted[key]] < per_class:
                images.append(scene.image)
                labels.append(wanted[key])
                counts[wanted[key]] += 1
    return images, labels


def _pixels(predictor, images: list[np.ndarray]) -> torch.Tensor:
    return torch.cat([predictor.prepare(im)[0]["pixel_values"] for im in images])


def split_held_out(labels: list[int], every: int = 4) -> tuple[list[int], list[int]]:
    """Indices of uploaded images to tune on and to judge on: every ``every``-th image of each class is held out
    (its last one when it has fewer than ``every``); a class with a single image is only tuned on."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    held = {i for members in by_class.values() if len(members) >= 2
            for i in (members[every - 1::every] or members[-1:])}
    return [i for i in range(len(labels)) if i not in held], sorted(held)


@on_gpu
def tune_prompts(pair: str = DEFAULT_PAIR, class_names: str = PRESETS["Shapes: 30 colour-shapes"],
                 method: str = "cascade", name: str = "my-prompt", files: list | None = None, per_class: int = 4,
                 steps: int = 100, progress=None, template: str = "", cancel: threading.Event | None = None,
                 student: str = "") -> tuple[str, dict]:
    """Learn a prompt for one student of a CLIP pair and save it in the user's prompt folder.

    Args:
        pair: a classification pair.
        class_names: the classes (2 to 1000).
        method: ``coop`` (labels), ``caspl`` (CasPL's boosting prompt, from the teacher's logits) or ``cascade``
            (the boosting prompt, then an adapting prompt on labels); ``caspl-boost`` is the old name of ``caspl``.
        name: the prompt's name (sanitised; letters, digits, '-' and '_').
        files: labelled images named ``<class>_<n>.<ext>``; when empty, Shapes scenes of the classes are used.
        per_class: Shapes scenes per class when ``files`` is empty.
        steps: optimisation steps per phase (1 to 500).
        progress: a ``gr.Progress`` (or None).
        cancel: checked every step; once set, training stops, nothing is saved and :class:`Cancelled` is raised.
        template: the zero-shot template the context starts from (empty: ``a {}``).
        student: the student the prompt is for (empty: the pair's first); it applies to that student only.

    Returns:
        ``(name, figures)``: the saved name and ``{method, student, before, after, measured_on, ...}``: the
        student's accuracy and agreement with the teacher before and after, on images not used for tuning (every
        fourth uploaded image of each class, or Shapes scenes drawn for it); ``measured_on`` says which.
    """
    spec = get_pair(pair, "classification")
    names, notes = parse_classes(class_names)
    try:
        method = method_name(method)
    except ValueError as error:
        raise InputError(f"{error}.") from None
    chosen = spec.choose_students(student or None)
    if len(chosen) != 1:
        raise InputError("A prompt is learned for one student at a time; name one.")
    student_name = chosen[0].name
    stem = sanitise_name(name) if (name or "").strip() else unique_prompt_name(spec.name, method)
    template = check_template(template)
    steps, per_class = int(steps), int(per_class)
    if not 1 <= steps <= MAX_TUNE_STEPS:
        raise InputError(f"steps must lie in [1, {MAX_TUNE_STEPS}].")
    if files and len(files) > MAX_TUNE_IMAGES:
        raise InputError(f"{len(files)} images were uploaded; prompt tuning takes at most {MAX_TUNE_IMAGES}.")
    if files:
        paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in files]
        all_labels = [_label_of(p, names) for p in paths]
        all_images = [read_image(p)[0] for p in paths]
        tune_on, held_out = split_held_out(all_labels)
        images, labels = [all_images[i] for i in tune_on], [all_labels[i] for i in tune_on]
        if held_out:
            eval_images, eval_labels = [all_images[i] for i in held_out], [all_labels[i] for i in held_out]
            measured_on = (f"{len(held_out)} of the {len(paths)} uploaded images, held out from tuning "
                           f"(every fourth of each class)")
        else:
            eval_images, eval_labels = images, labels
            measured_on = (f"the {len(paths)} tuning images themselves (no class had two images to hold one out):"
                           " read as a fit, not as held-out accuracy")
        source = f"{len(images)} uploaded images"
    else:
        images, labels = _shapes_examples(names, max(1, min(per_class, 16)))
        eval_images, eval_labels = _shapes_examples(names, HELD_OUT_PER_CLASS, HELD_OUT_SEED_START)
        source = f"{len(images)} Shapes scenes (tuning seeds)"
        measured_on = f"{len(eval_images)} Shapes scenes drawn for it (seeds never used for tuning)"
    predictors = predictors_for(spec, students=chosen)
    student, teacher = predictors[student_name], predictors["teacher"]
    s_pixels, t_pixels = _pixels(student, images), _pixels(teacher, images)
    targets = torch.tensor(labels)

    def on_step(phase: str, step: int, loss: float) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"Prompt tuning stopped at step {step}/{steps} of the {phase} prompt; nothing was saved.")
        if progress is not None:
            progress(step / steps, desc=f"{phase} prompt · step {step}/{steps} · loss {loss:.4f}")

    with torch.enable_grad():
        tensors = tune(student, teacher, names, method, (s_pixels, targets), (s_pixels, t_pixels), steps=steps,
                       template=template, on_step=on_step)

    e_student, e_teacher = _pixels(student, eval_images), _pixels(teacher, eval_images)
    e_targets = torch.tensor(eval_labels)
    with torch.no_grad():
        t_text = teacher.text_features([template.format(n) for n in names])
        t_probs = teacher.logits(teacher.forward({"pixel_values": e_teacher}), t_text).softmax(-1)
        s_features = student.forward({"pixel_values": e_student})

    def scores(text: torch.Tensor) -> dict:
        s_probs = student.logits(s_features, text).softmax(-1)
        return {"accuracy": round(float((s_probs.argmax(1).cpu() == e_targets).float().mean()), 4),
                "top1_match_with_teacher": round(float((s_probs.argmax(1) == t_probs.argmax(1)).float().mean()), 4),
                "teacher_accuracy": round(float((t_probs.argmax(1).cpu() == e_targets).float().mean()), 4)}

    before = scores(student.text_features([template.format(n) for n in names]))
    after = scores(prompted_text_features(student, names, tensors))
    figures = {"method": method, "student": student_name, "before": before, "after": after,
               "measured_on": measured_on, "tuned_on": source, "notes": notes}
    metadata = {"pair": spec.name, "student": student_name, "method": method, "template": template,
                "classes": names[:50], "n_classes": len(names),
                "n_context": sum(t.shape[0] for t in tensors.values()), "steps": steps, "figures": figures,
                "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    saved = save_prompt(stem, tensors, metadata)
    return saved, figures


def unique_prompt_name(pair: str, method: str) -> str:
    """A fresh name for a prompt saved without one: never two users' prompts under one name."""
    import uuid

    return f"{pair}-{method}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


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


def prompt_choices():
    """The saved-prompt menu's current entries (read when the tab is opened and after each tuning)."""
    import gradio as gr

    return gr.update(choices=["", *[p["name"] for p in list_prompts()]])


def prompts() -> list[dict]:
    """Saved prompts, the shipped ones first: ``[{name, pair, student, method, builtin, n_classes, n_context,
    figures, created}]`` (``method``: ``coop``, ``caspl`` for CasPL's boosting prompt, ``cascade``)."""
    keys = ("name", "pair", "student", "method", "builtin", "n_classes", "n_context", "figures", "created")
    return [{k: p.get(k) for k in keys} for p in list_prompts()]


def build_classification_tab() -> None:
    import gradio as gr

    from demos.common import (
        GPU_QUEUE,
        examples,
        pair_dropdown,
        session_of,
        stop_flag,
        stop_session,
        student_picker,
        takes_request,
        user_errors,
        wire_student_picker,
    )
    from demos.components import user_image

    with gr.Tab("CLIP", id="classification") as tab:
        gr.Markdown("Zero-shot classification by a large CLIP and a small one on your image and classes; then close "
                    "part of the gap by learning a prompt for the student from the teacher (CoOp, CasPL).")
        with gr.Row():
            with gr.Column(scale=1):
                image = user_image(label="Image", elem_id="classification-image")
                examples("classification", image)
                pair = pair_dropdown(("classification",), DEFAULT_PAIR)
                students = student_picker("classification", DEFAULT_PAIR)
                preset = gr.Dropdown(list(PRESETS), value="Shapes: 5 shapes", label="Class preset")
                classes = gr.Textbox(value=PRESETS["Shapes: 5 shapes"], label="Class names (comma-separated)",
                                     lines=2, max_length=200_000)
                prompt = gr.Dropdown(["", *[p["name"] for p in list_prompts()]], value="", allow_custom_value=True,
                                     label="Student prompt (empty: zero-shot)")
                template = gr.Textbox(value=DEFAULT_TEMPLATE, label="Zero-shot template")
                run = gr.Button("Classify", variant="primary", elem_id="classification-run")
            with gr.Column(scale=2):
                summary = gr.Markdown(elem_id="classification-summary")
                plot = gr.Plot(label="Top classes")
                with gr.Row():
                    maps = [gr.Image(label=f"{role.capitalize()}: patches vs top class", interactive=False)
                            for role in ROLES]
                report = gr.JSON(label="Report", open=False)
        with gr.Accordion("Tune a prompt for a student (the first one chosen above)", open=False):
            shipped = gr.Markdown(shipped_prompt_markdown(DEFAULT_PAIR, None), elem_id="classification-shipped")
            with gr.Row():
                method = gr.Radio(list(METHODS), value="cascade", label="Method",
                                  info="coop: labels · caspl: CasPL's boosting prompt from the teacher's logits, no "
                                       "labels · cascade: boosting, then adapting on labels")
                name = gr.Textbox(value="", label="Prompt name", placeholder="empty: a fresh unique name")
                steps = gr.Slider(1, MAX_TUNE_STEPS, value=100, step=1, label="Steps per phase")
                per_class = gr.Slider(1, 16, value=4, step=1, label="Shapes scenes per class (no uploads)")
            files = gr.File(file_count="multiple", file_types=["image"], label="Labelled images '<class>_<n>.png' "
                            "(optional; Shapes scenes are used otherwise)")
            with gr.Row():
                tune_button = gr.Button("Tune", variant="primary")
                stop = gr.Button("Stop")
            saved = gr.Textbox(label="Saved prompt", interactive=False)
            figures = gr.JSON(label="Before / after")
            saved_list = gr.JSON(label="Saved prompts", open=False)
        preset.change(lambda p: PRESETS[p], preset, classes, api_visibility="private")
        event = run.click(user_errors(classify), [image, pair, classes, prompt, template, students],
                          [plot, report], api_name="classify", **GPU_QUEUE)
        event.then(summary_markdown, report, summary, api_visibility="private")
        event.failure(lambda: (None, None, "", None, None), None, [plot, report, summary, *maps],
                      api_visibility="private")
        wire_student_picker(pair, students)
        event.then(user_errors(similarity_maps), [image, pair, classes, template, report], maps,
                   api_visibility="private")

        @takes_request
        def run_tuning(pair, classes, method, name, files, per_class, steps, template, student, request,
                       progress=gr.Progress()):  # noqa: B008 (Gradio injects progress through this default)
            first = get_pair(pair, "classification").choose_students(student)[0].name  # the prompt is for it
            return tune_prompts(pair, classes, method, name, files, per_class, steps, progress, template,
                                cancel=stop_flag(session_of(request)), student=first)

        tuning = tune_button.click(user_errors(run_tuning),
                                   [pair, classes, method, name, files, per_class, steps, template, students],
                                   [saved, figures], api_name="tune_prompts", **GPU_QUEUE)
        for trigger in (pair.change, students.change):
            trigger(shipped_prompt_markdown, [pair, students], shipped, api_visibility="private", queue=False)
        stop.click(takes_request(stop_session), None, None, api_visibility="private")
        tuning.then(prompt_choices, None, prompt, api_visibility="private")
        tab.select(prompt_choices, None, prompt, api_visibility="private", queue=False)
        refreshed = tuning.then(prompts, None, saved_list, api_name="refresh_prompt_list", api_visibility="private")
        refreshed.then(lambda: gr.Dropdown(choices=["", *[p["name"] for p in list_prompts()]]), None, prompt,
                       api_visibility="private")
        gr.api(prompts, api_name="prompts")
