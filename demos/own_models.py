""""Your own models…": the entry of every tab's pair menu that takes a teacher and one to three students from the Hub
(or a local folder, where the operator allows it), checks them before anything downloads, and runs them as a pair.

The checked pair reaches the run as its spec string (``"detection: org/teacher -> org/student"``), the same string
an API caller passes as ``pair``; nothing is registered, so two users' own pairs never see each other. Serves
``/inspect_model``.
"""

from __future__ import annotations

from types import SimpleNamespace

from weights.custom import MAX_OWN_STUDENTS, SPEC_EXAMPLE, OwnModelError, Settings, inspect_model, inspect_pair

OWN = "own"
OWN_LABEL = "Your own models…"
TASK_NAMES = {"detection": "detection", "segmentation": "segmentation", "image-classification": "image classification",
              "classification": "CLIP zero-shot", "generation": "text-to-image"}
PLACEHOLDERS = {"detection": ("PekingU/rtdetr_r50vd_coco_o365", "PekingU/rtdetr_r18vd_coco_o365"),
                "segmentation": ("nvidia/segformer-b2-finetuned-ade-512-512",
                                 "nvidia/segformer-b0-finetuned-ade-512-512"),
                "image-classification": ("timm/resnet50.a1_in1k", "timm/resnet18.a1_in1k"),
                "classification": ("timm/vit_base_patch16_clip_224.openai", "timm/vit_base_patch32_clip_224.openai"),
                "generation": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "nota-ai/bk-sdm-small")}


def inspect_model_api(model: str, task: str) -> dict:
    """What Distill Lens finds about one model before it downloads anything (``/inspect_model``); runs nothing.

    Args:
        model: a Hub repo id (``org/name``, optionally ``@revision``) or, where the server allows it, a local folder.
        task: ``detection``, ``segmentation``, ``image-classification``, ``classification`` (CLIP) or ``generation``.

    Returns:
        ``{location, revision, where ("Hub" | "local folder"), task, family, class, size_mb, parameters, licence,
        labels (count or None), label_names (first 20), notes}``.

    Raises:
        OwnModelError: as :func:`weights.custom.inspect_model` (the message says what to change).
    """
    from weights.custom import looks_like_spec

    if looks_like_spec(model) and "->" in str(model):
        raise OwnModelError("Give one model here (a Hub repo id or a folder), not a pair spec; inspect the teacher "
                            "and each student in turn.")
    return inspect_model(model, task).to_json()


def spec_of(task: str, teacher: str, students: str) -> str:
    """The pair spec of the panel's fields: students one per line or separated by commas."""
    names = [s.strip() for line in (students or "").splitlines() for s in line.split(",") if s.strip()]
    return f"{task}: {(teacher or '').strip()} -> {', '.join(names)}"


def findings_markdown(reports: dict) -> str:
    """What the check found, one line per model (narrow enough for the input column); nothing has run."""
    lines = []
    for role, found in reports.items():
        params = "parameters unknown" if found.parameters is None else f"{found.parameters / 1e6:.2f} M parameters"
        labels = "classes from your class names" if found.labels is None else f"{found.labels} classes"
        short = "/".join(found.location.rstrip("/").split("/")[-2:])
        lines.append(f"- **{role}**: `{short}` ({found.where}), {found.model_class}, {params}, "
                     f"{found.size_mb:,.1f} MB, {labels}, licence: {found.licence or 'not stated'}")
    return "\n".join(lines) + "\n\nChecked; nothing has run yet. Press the tab's run button."


def check_own_models(task: str, teacher: str, students: str, choices: list | None = None):
    """The "Use these models" button: check every model, then make the spec the tab's pair for this page only
    (``choices``: the menu's other entries, kept).

    Returns:
        ``(findings, pair menu update, students menu update)``.
    """
    import gradio as gr

    pair, reports = inspect_pair(spec_of(task, teacher, students))
    label = f"your models: {pair.teacher.location.rsplit('/', 1)[-1]} → " + ", ".join(s.name for s in pair.students)
    kept = [c for c in choices or [] if c[1] != OWN]
    return (findings_markdown(reports), gr.update(value=pair.name, choices=[*kept, (label, pair.name),
                                                                             (OWN_LABEL, OWN)]),
            gr.update(choices=[s.name for s in pair.students], value=[], max_choices=MAX_OWN_STUDENTS,
                      info="Your students; empty: all of them."))


def own_panel(tasks: tuple[str, ...], key: str) -> SimpleNamespace | None:
    """The hidden panel under the pair menu (elements ``#<key>-own-…``); None when the operator turned own models
    off."""
    import gradio as gr

    settings = Settings.from_environment()
    if not settings.allow_custom:
        return None
    first = tasks[0]
    with gr.Group(visible=False) as group:
        task = gr.Radio([(TASK_NAMES[t], t) for t in tasks], value=first, label="Task", visible=len(tasks) > 1)
        local = " or a local folder" if settings.local_roots else ""
        teacher = gr.Textbox(label=f"Teacher: a Hub repo id (org/name, optionally @revision){local}",
                             placeholder=PLACEHOLDERS[first][0], max_lines=1, elem_id=f"{key}-own-teacher")
        students = gr.Textbox(label=f"Students: 1 to {MAX_OWN_STUDENTS}, one per line (name=model to name one)",
                              placeholder=PLACEHOLDERS[first][1], lines=2, max_lines=MAX_OWN_STUDENTS,
                              elem_id=f"{key}-own-students")
        check = gr.Button("Use these models", size="sm", elem_id=f"{key}-own-check")
        found = gr.Markdown(f"Checked before anything downloads: the class, safetensors weights, their size (at most "
                            f"{settings.max_model_mb:,.0f} MB each). From a script, pass the same as one string: "
                            f"`{SPEC_EXAMPLE}`.", elem_id=f"{key}-own-found")
    return SimpleNamespace(group=group, task=task, teacher=teacher, students=students, check=check, found=found)


def wire_own_models(pair, panel: SimpleNamespace | None, picker=None) -> None:
    """Show the panel while the menu says "Your own models…" (or holds an own pair), and wire its button."""
    import gradio as gr

    from demos.jobs import user_errors

    if panel is None:
        return
    pair.change(lambda name: gr.update(visible=name == OWN or "->" in str(name)), pair, panel.group,
                api_visibility="private", queue=False)
    panel.task.change(lambda t: (gr.update(placeholder=PLACEHOLDERS[t][0]), gr.update(placeholder=PLACEHOLDERS[t][1])),
                      panel.task, [panel.teacher, panel.students], api_visibility="private", queue=False)
    outputs = [panel.found, pair] + ([picker] if picker is not None else [])

    def check(task, teacher, students):
        values = check_own_models(task, teacher, students, [c for c in pair.choices if "->" not in str(c[1])])
        return values if picker is not None else values[:2]

    panel.check.click(user_errors(check), [panel.task, panel.teacher, panel.students], outputs,
                      api_visibility="private", concurrency_limit=4)


__all__ = ["OWN", "OWN_LABEL", "OwnModelError", "check_own_models", "inspect_model_api", "own_panel", "spec_of",
           "wire_own_models"]
