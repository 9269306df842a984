"""Pairs tab: every teacher/student pair in the registry, with its students, sources and licences; serves
``/pairs``."""

from __future__ import annotations

from weights.loaders import stored_parameters
from weights.registry import list_pairs

COLUMNS = ("name", "task", "source", "teacher", "students", "licence")


def pairs() -> list[dict]:
    """All registered pairs: ``[{name, task, source ("builtin"|"hub"), teacher, teacher_params, students: [{name,
    source, method, licence, params}], licence, description, ...}]``. ``params`` is read from the weights' file header
    when the weights are on this machine (builtin, or already in the Hub cache), else None. ``student`` (the default
    student's source) is kept for one release: read ``students``."""
    rows = []
    for pair in list_pairs():
        row = pair.summary()
        row["teacher_params"] = stored_parameters(pair.teacher)
        for block, student in zip(row["students"], pair.students, strict=True):
            block["params"] = stored_parameters(student.source)
        rows.append(row)
    return rows


def _cell(row: dict, column: str) -> str:
    if column != "students":
        return row[column]
    return "; ".join(f"{s['name']} ({s['params'] / 1e6:.2f} M)" if s["params"] else s["name"]
                     for s in row["students"])


def build_pairs_tab() -> None:
    import gradio as gr

    with gr.Tab("Pairs", id="pairs"):
        gr.Markdown("Builtin pairs work offline. Hub pairs download their models on first use (or read them from "
                    "the Hugging Face cache, e.g. with `HF_HUB_OFFLINE=1`). A pair has one teacher and one or more "
                    "students; the first is the default.")
        gr.Dataframe(value=[[_cell(p, c) for c in COLUMNS] for p in pairs()], headers=list(COLUMNS),
                     interactive=False, wrap=True)
        gr.api(pairs, api_name="pairs")
