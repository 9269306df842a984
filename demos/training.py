"""Training tab: how students came to agree with their teacher over training, from the training monitor's logs
(:mod:`compare.monitor`): the shipped runs of the builtin recipe's four distillation methods, or a run of yours."""

from __future__ import annotations

import json
from pathlib import Path

from compare.inputs import InputError
from compare.monitor import read_log
from compare.training_logs import LOGS, shipped_logs

MAX_LOG_BYTES = 20_000_000
TASKS = ("detection", "segmentation")
DEFAULT_FIGURES = {"detection": "agreement: f1", "segmentation": "agreement: miou"}
FIGURE_WORDS = {"agreement: f1": "box agreement with the teacher, F1", "agreement: miou": "mIoU with the teacher",
                "agreement: pixel_agreement": "pixel agreement with the teacher",
                "agreement: mean_iou": "mean IoU of matched boxes", "agreement: label_agreement": "same label",
                "agreement: top1_match": "top-1 match", "agreement: kl": "KL divergence from the teacher",
                "agreement: js": "JS divergence from the teacher"}


def shipped_runs(task: str) -> dict[str, Path]:
    """``{method: log}`` of the shipped runs of a task, in the recipe's method order."""
    return shipped_logs(task, LOGS)


def load_runs(task: str, names: list[str] | None, upload=None) -> dict[str, list[dict]]:
    """The chosen shipped runs of ``task`` and an uploaded ``monitor.jsonl`` (named after its ``run`` field).

    Raises:
        InputError: a task the tab has no runs of, a missing or unreadable log, a log of another task, no run.
    """
    if task not in TASKS:
        raise InputError(f"The Training tab shows {' and '.join(TASKS)} runs; {str(task)[:40]!r} is not one.")
    runs = {name: read_log(path) for name, path in shipped_runs(task).items() if names is None or name in names}
    if upload is not None:
        path = Path(upload if isinstance(upload, (str, Path)) else getattr(upload, "name", str(upload)))
        if not path.is_file():
            raise InputError(f"{path.name} is not a file; upload a run's monitor.jsonl.")
        records = read_log(path, MAX_LOG_BYTES)
        logged_task = records[0].get("task")
        if logged_task is not None and logged_task != task:
            raise InputError(f"{path.name} logs a {logged_task} run; choose the {logged_task} task to see it (the "
                             f"{task} runs measure other figures).")
        runs[f"yours: {records[0].get('run') or path.stem}"] = records
    if not runs:
        raise InputError("Choose at least one run, or upload a monitor.jsonl.")
    return runs


def figure_names(runs: dict[str, list[dict]]) -> list[str]:
    """Every figure the runs logged: ``agreement: f1``, ``consensus stride 8: foreground``, ``cka stride 16``,
    ``losses: distillation``...

    Raises:
        InputError: the runs logged no figure at all (records with a step and nothing else).
    """
    names: dict[str, None] = {}
    for records in runs.values():
        record = records[-1]
        names |= dict.fromkeys(f"agreement: {k}" for k in record.get("agreement", {}))
        for stride, block in record.get("consensus", {}).items():
            names |= dict.fromkeys(f"consensus {stride}: {k}" for k in block)
        names |= dict.fromkeys(f"cka {stride}" for stride in record.get("cka", {}))
        names |= dict.fromkeys(f"losses: {k}" for k in record.get("losses", {}))
    if not names:
        raise InputError("These logs hold steps but no figures (agreement, consensus, cka or losses); log them with "
                         "compare.monitor.DistillMonitor.")
    return list(names)


def value_of(record: dict, figure: str) -> float | None:
    """One figure of one record (None where it was not defined)."""
    if figure.startswith("agreement: "):
        return record.get("agreement", {}).get(figure.removeprefix("agreement: "))
    if figure.startswith("losses: "):
        return record.get("losses", {}).get(figure.removeprefix("losses: "))
    if figure.startswith("cka "):
        return record.get("cka", {}).get(figure.removeprefix("cka "))
    stride, _, key = figure.removeprefix("consensus ").partition(": ")
    return record.get("consensus", {}).get(stride, {}).get(key)


def curves_figure(runs: dict[str, list[dict]], figure: str):
    """Plotly lines of one figure against the training step, one per run (CKA with its permuted-images chance
    level dotted)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, records in runs.items():
        fig.add_trace(go.Scatter(x=[r["step"] for r in records], y=[value_of(r, figure) for r in records],
                                 mode="lines+markers", name=name, marker={"size": 4}))
        if figure.startswith("cka "):
            stride = figure.removeprefix("cka ")
            fig.add_trace(go.Scatter(x=[r["step"] for r in records],
                                     y=[r.get("cka_baseline", {}).get(stride) for r in records], mode="lines",
                                     line={"dash": "dot"}, name=f"{name}: other images (chance)"))
    fig.update_layout(title=FIGURE_WORDS.get(figure, figure), xaxis_title="training step", yaxis_title=figure,
                      height=420, margin={"l": 50, "r": 10, "t": 40, "b": 100},
                      legend={"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0})
    return fig


def steps_of(runs: dict[str, list[dict]]) -> list[int]:
    """Every logged step of the runs (the slider snaps to the one at or before its value)."""
    return sorted({r["step"] for records in runs.values() for r in records})


def snapped(steps: list[int], value) -> int:
    """The logged step at or just before ``value`` (the first one below it all; the last when none is asked)."""
    try:
        value = int(round(float(value)))
    except (TypeError, ValueError):
        return steps[-1]
    return max([s for s in steps if s <= value] or steps[:1])


def _has_maps(record: dict) -> bool:
    return bool((record.get("maps") or {}).get("images"))


def maps_figure(runs: dict[str, list[dict]], step: int):
    """The consensus maps of the probe images at (or just before) ``step``: one row per run that logged maps, one
    column per probe image, on one colour scale with numbers; None when no run logged any."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = []
    for name, records in runs.items():
        logged = [r for r in records if _has_maps(r)]
        if logged:
            before = [r for r in logged if r["step"] <= step] or logged[:1]
            rows.append((name, before[-1]))
    if not rows:
        return None
    columns = max(len(r["maps"]["images"]) for _, r in rows)
    fig = make_subplots(len(rows), columns, horizontal_spacing=0.02, vertical_spacing=0.06,
                        row_titles=[f"{name} (step {r['step']}, stride {r['maps'].get('stride', '?')})"
                                    for name, r in rows],
                        column_titles=[f"probe {i + 1}" for i in range(columns)])
    for i, (_, record) in enumerate(rows, 1):
        for j, image in enumerate(record["maps"]["images"], 1):
            fig.add_trace(go.Heatmap(z=image, zmin=-1, zmax=1, colorscale="Viridis", showscale=i == j == 1,
                                     colorbar={"title": {"text": "consensus<br>(affinity r)"}, "tickvals":
                                               [-1, 0, 1], "ticktext": ["−1 opposite", "0 unrelated", "1 same"]}),
                          i, j)
            fig.update_yaxes(autorange="reversed", showticklabels=False, row=i, col=j)
            fig.update_xaxes(showticklabels=False, row=i, col=j)
    fig.update_layout(title=f"Where each student agrees with its teacher, at step {step} (or the last logged before)",
                      height=140 + 150 * len(rows), margin={"l": 10, "r": 10, "t": 60, "b": 10})
    return fig


def summary_markdown(runs: dict[str, list[dict]], figure: str) -> str:
    """One line per run: the figure at the first and the last logged step."""
    lines = [f"**{FIGURE_WORDS.get(figure, figure)}**, first → last logged step:"]
    for name, records in runs.items():
        first, last = value_of(records[0], figure), value_of(records[-1], figure)
        shown = [("–" if v is None else f"{v:.3f}") for v in (first, last)]
        lines.append(f"- **{name}**: {shown[0]} (step {records[0]['step']}) → {shown[1]} "
                     f"(step {records[-1]['step']})")
    if "online-adm" in runs:
        lines.append("\n*online-adm* is compared with its own teacher, trained from scratch beside it (at step 1 both "
                     "are random and find no boxes: an F1 of 1 between two empty sets); the other three with the "
                     "committed teacher.")
    return "\n".join(lines)


def shown(task: str, names: list[str] | None, upload, figure: str | None, step) -> dict:
    """What the tab shows for these runs: ``summary``, ``curves``, ``maps``, the ``figures`` menu and its ``figure``
    (the asked one if logged, else the task's default), the logged ``steps`` and the ``step`` snapped to them."""
    runs = load_runs(task, names, upload)
    figures = figure_names(runs)
    default = DEFAULT_FIGURES.get(task)
    figure = figure if figure in figures else (default if default in figures else figures[0])
    steps = steps_of(runs)
    step = snapped(steps, step)
    return {"summary": summary_markdown(runs, figure), "curves": curves_figure(runs, figure),
            "maps": maps_figure(runs, step), "figures": figures, "figure": figure, "steps": steps, "step": step}


def slider_range(steps: list[int]) -> dict:
    """The step slider over the logged steps: every whole step, snapped to the logged one at or before it."""
    return {"minimum": steps[0], "maximum": max(steps[-1], steps[0] + 1), "step": 1}


def view(task: str, names: list[str] | None, upload, figure: str | None, step: int | None):
    """Everything the tab shows, as its outputs: summary, curves, maps, the figure menu and the step slider."""
    import gradio as gr

    out = shown(task, names, upload, figure, step)
    return (out["summary"], out["curves"], out["maps"], gr.update(choices=out["figures"], value=out["figure"]),
            gr.update(**slider_range(out["steps"]), value=out["step"]))


def run_meta(task: str) -> str:
    """What the shipped runs are, from their ``.meta.json``."""
    notes = []
    for method, path in shipped_runs(task).items():
        meta_path = path.with_suffix(".meta.json")
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            same = {True: "the committed student's weights, bit for bit", False: "a rerun (weights differ from the "
                    "committed student's)", None: "no committed student to compare"}[meta.get("same_weights_as_"
                                                                                         "committed")]
            notes.append(f"{method}: {meta['steps']} steps, logged every {meta['every']}; {same}")
    return "; ".join(notes)


def first_view(task: str) -> dict:
    """The tab's values before any click: the shipped runs of ``task`` on its default figure, at the last step."""
    return shown(task, None, None, None, None)


def build_training_tab() -> None:
    import gradio as gr

    from demos.jobs import user_errors

    task = TASKS[0]
    runs = list(shipped_runs(task))
    try:
        first = first_view(task)
    except InputError:  # no shipped logs (python -m compare.training_logs writes them): an empty view
        first = {"summary": "No shipped runs here; upload a monitor.jsonl.", "curves": None, "maps": None,
                 "figures": [], "figure": None, "steps": [1, 2], "step": 2}
    with gr.Tab("Training", id="training"):
        gr.Markdown("How each student came to agree with its teacher while it trained, logged by the training "
                    "monitor (`compare.monitor.DistillMonitor`, a few lines in any loop) on a fixed probe of 16 "
                    "held-out scenes: the builtin recipe's four distillation methods, same budget and seed, or your "
                    "own run's `monitor.jsonl`. Pick a figure; slide the step to see where they agree.")
        with gr.Row():
            with gr.Column(scale=1):
                task_menu = gr.Radio(list(TASKS), value=task, label="Task")
                names = gr.Dropdown(runs, value=runs, multiselect=True, label="Shipped runs (the recipe's methods)",
                                    elem_id="training-runs")
                upload = gr.File(label="Your run: a monitor.jsonl (at most 20 MB)", file_types=[".jsonl"])
                figure = gr.Dropdown(first["figures"], value=first["figure"], label="Figure",
                                     elem_id="training-figure")
                step = gr.Slider(**slider_range(first["steps"]), value=first["step"],
                                 label="Step (consensus maps below)")
                meta = gr.Markdown(run_meta(task))
            with gr.Column(scale=2):
                summary = gr.Markdown(first["summary"], elem_id="training-summary")
                curves = gr.Plot(first["curves"], label="Over training", elem_id="training-curves")
                maps = gr.Plot(first["maps"], label="Consensus maps of the probe", elem_id="training-maps")
        inputs, outputs = [task_menu, names, upload, figure, step], [summary, curves, maps, figure, step]
        shown = user_errors(view)
        for trigger in (names.change, upload.change, figure.input, step.release):
            trigger(shown, inputs, outputs, api_visibility="private")

        def switch(new_task):
            choices = list(shipped_runs(new_task))
            return gr.update(choices=choices, value=choices), run_meta(new_task)

        task_menu.change(switch, task_menu, [names, meta], api_visibility="private")
