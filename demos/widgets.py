"""Widgets the tabs share: pair and student menus, examples, result panels, notes and the ranking table."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from compare.inputs import InputError, read_image

log = logging.getLogger("distill_lens")

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

ROLES = ("teacher", "student")  # the two sides of a generation pair

def ranking_markdown(report: dict) -> str:
    """The tabs' compact table: teacher first, then the chosen students best first."""
    key = report.get("ranked_by", "")

    def number(value, spec: str, scale: float = 1.0, unit: str = "") -> str:
        return "–" if value is None else f"{value / scale:{spec}}{unit}"

    def latency(block: dict) -> str:
        median, spread, runs = block.get("latency_ms"), block.get("latency_iqr_ms"), block.get("runs")
        text = number(median, ".1f")
        if spread is not None and runs:
            text += f" ± {spread / 2:.1f} ({runs} {'run' if runs == 1 else 'runs'})"
            if median is not None and spread / 2 > median:
                text += " ⚠ spread wider than the median: unreliable"
        if median is not None and block.get("latency_alone") is False:
            text += " ⚠ timed while other requests ran (timed again when the app is idle)"
        return text

    def row(label: str, figure: str, block: dict) -> str:
        return (f"| {label} | {figure} | {latency(block)} | "
                f"{number(block.get('params'), '.2f', 1e6, ' M')} | {number(block.get('gflops'), '.2f')} |")

    rows = [row("teacher", "–", report["teacher"])]
    rows += [row(f"{r['rank']}. {r['name']}", number(r[key], ".3f"), report["students"][r["name"]])
             for r in report.get("ranking", [])]
    return (f"| model | {FIGURE_NAMES.get(key, key.replace('_', ' '))} | latency, ms (median ± half the spread) "
            "| parameters | GFLOPs |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows))


# The ranking figure of each tab, in words (and its direction)
FIGURE_NAMES = {"f1": "box agreement with the teacher, F1 (higher: closer)",
                "miou": "mask agreement with the teacher, mIoU (higher: closer)",
                "kl": "KL divergence from the teacher (lower: closer)",
                "consensus_mean": "mean consensus with the teacher (higher: closer)"}

def student_picker(task: str, pair: str):
    """The "Students" menu: up to two students of the pair, empty meaning its first (an own pair's: up to three, empty
    meaning all); refreshed when the pair changes (:func:`wire_student_picker`). Its default stays empty so that API
    callers who leave ``students`` out get the first student of whichever pair they name. Other names reach our own
    clear error."""
    import gradio as gr

    from weights.registry import MAX_STUDENTS_AT_ONCE, get_pair

    students = get_pair(pair, task).students
    return gr.Dropdown([s.name for s in students], value=[], multiselect=True, max_choices=MAX_STUDENTS_AT_ONCE,
                       allow_custom_value=True, label="Students (one or two; empty: the first)",
                       info=_methods_line(students))

def _methods_line(students) -> str:
    return " · ".join(f"{s.name}: {s.method}" for s in students)

def wire_student_picker(pair, picker) -> None:
    """Refresh the students menu when the pair changes, and wire the pair menu's own-models panel."""
    import gradio as gr

    from demos.own_models import OWN, wire_own_models
    from weights.custom import OwnModelError
    from weights.registry import UnknownPairError, get_pair

    def refresh(name: str):
        if name == OWN:
            return gr.update(choices=[], value=[])
        try:
            spec = get_pair(name)
        except (UnknownPairError, OwnModelError):
            return gr.update()
        label = "Students (up to three; empty: all of them)" if spec.own else "Students (one or two; empty: the first)"
        return gr.update(choices=[s.name for s in spec.students], value=[], max_choices=spec.max_students,
                         info=_methods_line(spec.students), label=label)

    pair.change(refresh, pair, picker, api_visibility="private", queue=False)
    wire_own_models(pair, getattr(pair, "own_panel", None), picker)

EXAMPLES_LABEL = ("Examples: Shapes scenes first (the builtin pairs know only the Shapes world: five shapes on "
                  "a noisy background); the photos are for Hub pairs")

PHOTOS_LABEL = ("Examples: photos that scikit-image and scikit-learn ship (public domain, CC0, CC BY 2.0: "
                "demos/examples/LICENCES.md)")


def examples_for(task: str) -> list[str]:
    """Example image paths for a tab: Shapes scenes (single objects for CLIP), then real photos; photos only for
    image classifiers (ImageNet's)."""
    patterns = {"classification": ("single_*.png", "photo_*.jpg"), "image-classification": ("photo_*.jpg",)}.get(
        task, ("shapes_*.png", "photo_*.jpg"))
    return [str(p) for glob in patterns for p in sorted(EXAMPLES_DIR.glob(glob))]

def examples(task: str, image) -> None:
    """The tab's examples, placed right under its image input (above the fold), with an honest label."""
    import gradio as gr

    label = PHOTOS_LABEL if task == "image-classification" else EXAMPLES_LABEL
    gr.Examples(examples_for(task), inputs=[image], label=label, elem_id=f"{task}-examples",
                examples_per_page=8)

def pair_choice(pair) -> tuple[str, str]:
    """A pair menu entry: ``(label, name)``, the label saying builtin, or Hub and whether it is already cached."""
    from weights.loaders import weights_at_hand

    if pair.source == "builtin":
        where = "builtin"
    elif pair.source == "package":
        where = "real weights, installed"
    else:
        sources = [pair.teacher, *(s.source for s in pair.students)]
        from huggingface_hub import constants

        where = "Hub, cached" if all(weights_at_hand(s) for s in sources) else (
            "Hub, not cached (offline)" if constants.HF_HUB_OFFLINE else "Hub, downloads on first use")
    return f"{pair.name} · {where}", pair.name


def pair_dropdown(tasks: tuple[str, ...], value: str, key: str):
    """The "Pair" menu of a tab (``#<key>-pair``): every registered pair of these tasks, marked builtin or Hub (cached
    or not), and "Your own models…" with its panel beneath (``dropdown.own_panel``, None when the operator turned
    own models off); other names reach our own clear error."""
    import gradio as gr

    from demos.own_models import OWN, OWN_LABEL, own_panel
    from weights.custom import Settings
    from weights.registry import list_pairs

    choices = [pair_choice(p) for p in list_pairs() if p.task in tasks]
    own = Settings.from_environment().allow_custom
    dropdown = gr.Dropdown(choices + ([(OWN_LABEL, OWN)] if own else []), value=value, label="Pair",
                           allow_custom_value=True, elem_id=f"{key}-pair",
                           info="or your own models: the last entry" if own else None)
    dropdown.own_panel = own_panel(tasks, key)  # hidden until "Your own models…" is chosen
    return dropdown

def api_result_images(task: str) -> list:
    """The teacher's and the first student's drawn results, hidden: the tab shows :func:`annotated_views`, and these
    stay its API's image outputs (what ``/detect`` and ``/segment`` return to scripts)."""
    import gradio as gr

    return [gr.Image(label=role.capitalize(), interactive=False, format="png", elem_id=f"{task}-{role}",
                     visible=False) for role in ROLES]

def annotated_views(task: str) -> list:
    """The teacher's, the first student's and (hidden until chosen) the second student's boxes or masks, each with
    a legend whose entries highlight their regions."""
    from demos.components import annotated_result

    return [annotated_result("Teacher", f"{task}-teacher-view"), annotated_result("Student", f"{task}-student-view"),
            annotated_result("Second student", f"{task}-second-student-view", visible=False)]

def annotated_views_update(image, report: dict | None, value_of: Callable[[np.ndarray, int | None], tuple | None],
                           ) -> tuple:
    """Updates of :func:`annotated_views` after a run: ``value_of(array, None)`` for the teacher, ``value_of(array,
    i)`` for the i-th chosen student, ``array`` the run's image read once for all panels; each panel is named after
    its student. A panel that cannot be drawn is left empty (the run's result is on screen already)."""
    from demos.components import annotated_update

    names = list((report or {}).get("students", {}))
    try:
        array = read_image(image)[0] if report else None
    except InputError:  # the image was cleared or replaced by an unreadable one after the run
        array = None

    def value(position):
        if array is None:
            return None
        try:
            return value_of(array, position)
        except Exception:
            log.exception("drawing an annotated view failed")
            return None

    return (annotated_update(value(None)),
            annotated_update(value(0), label=f"Student: {names[0]}" if names else None),
            annotated_update(value(1), label=f"Student: {names[1]}" if len(names) > 1 else None,
                             visible=len(names) > 1))

def notes_markdown(notes: list[str]) -> str:
    return "".join(f"> **Note:** {note}\n\n" for note in notes)


def report_panel(label: str = "Report"):
    """The tab's JSON report (what its API endpoint returns), in a closed accordion under the figures: there for
    whoever wants every number, out of the way of the summary and pictures."""
    import gradio as gr

    with gr.Accordion(f"{label} (JSON, as the API returns it)", open=False):
        return gr.JSON(label=label, open=True)


def clear_on_start(trigger, outputs: list):
    """Empty a tab's results the moment its run button is pressed (``trigger``: the button, or an event listener
    such as :func:`demos.first_sight.on_load`'s), so a new run never sits under the last one's pictures and
    figures, and a failed run leaves no stale result behind. Returns the event: chain the run with ``.then(...)``
    so that it always comes after the clearing."""
    import gradio as gr

    def cleared():
        return cleared_values(outputs)

    listener = trigger.click if isinstance(trigger, gr.Button) else trigger
    return listener(cleared, None, outputs, queue=False, api_visibility="private")


def cleared_values(outputs: list) -> tuple:
    """Empty values for ``outputs``: "" for text, None for the rest (a hidden gallery stays hidden)."""
    import gradio as gr

    values = tuple("" if isinstance(c, gr.Markdown) else None for c in outputs)
    return values if len(values) != 1 else values[0]


def student_label(template: str) -> Callable:
    """A handler that names the first student in a panel's label after a run: ``template`` with ``{student}``
    (e.g. ``"Where {student} disagrees"``), from the run's report (its ``students``, or its one ``student``); before
    any run, "the first student"."""
    import gradio as gr

    def relabel(report: dict | None):
        report = report or {}
        students = list(report.get("students") or ([report["student"]] if report.get("student") else []))
        return gr.update(label=template.format(student=students[0] if students else "the first student"))

    return relabel
