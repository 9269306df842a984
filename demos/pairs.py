"""Pairs tab: every teacher/student pair in the registry, with its students, sources and licences; serves
``/pairs``."""

from __future__ import annotations

from demos.jobs import user_errors
from demos.own_models import inspect_model_api
from weights.loaders import stored_bytes, stored_parameters, weights_at_hand
from weights.registry import list_pairs

COLUMNS = ("name", "task", "status", "students", "teacher", "size", "licence")  # the licence last: long


def pairs() -> list[dict]:
    """All registered pairs: ``[{name, task, source ("builtin"|"package"|"hub"), teacher, teacher_params,
    students: [{name, source, method, licence, params}], licence, description, status, size_mb, ...}]``. ``params``
    is read from the weights' file header when the weights are on this machine (builtin, installed, or already in the
    Hub cache), else None; ``status`` is ``builtin``, ``installed`` (weights from a Python package), ``cached`` or
    ``not downloaded``; ``size_mb`` sums the weights at hand. ``student`` (the default student's source) is kept for
    one release: read ``students``."""
    rows = []
    for pair in list_pairs():
        row = pair.summary()
        sources = [pair.teacher, *(s.source for s in pair.students)]
        row["teacher_params"] = stored_parameters(pair.teacher)
        for block, student in zip(row["students"], pair.students, strict=True):
            block["params"] = stored_parameters(student.source)
        at_hand = [weights_at_hand(source) for source in sources]
        row["status"] = {"builtin": "builtin", "package": "installed" if all(at_hand) else "not installed"}.get(
            pair.source, "cached" if all(at_hand) else "not downloaded")
        row["size_mb"] = round(sum(stored_bytes(source) or 0 for source in sources) / 2**20, 1) if any(at_hand) \
            else None
        rows.append(row)
    return rows


def _millions(params: int | None) -> str:
    return "" if not params else f" ({params / 1e6:.2f} M)"


def _cell(row: dict, column: str) -> str:
    if column == "students":
        return "; ".join(s["name"] + _millions(s["params"]) for s in row["students"])
    if column == "teacher":
        return row["teacher"] + _millions(row["teacher_params"])
    if column == "size":
        return "–" if row["size_mb"] is None else f"{row['size_mb']} MB"
    return row[column]


def build_pairs_tab() -> None:
    import gradio as gr

    with gr.Tab("Pairs", id="pairs"):
        gr.Markdown("Builtin pairs work offline. Hub pairs download their models on first use (or read them from "
                    "the Hugging Face cache, e.g. with `HF_HUB_OFFLINE=1`). A pair has one teacher and one or more "
                    "students; the first is the default.")
        gr.Dataframe(value=[[_cell(p, c) for c in COLUMNS] for p in pairs()], headers=list(COLUMNS),
                     interactive=False, wrap=True)
        gr.api(pairs, api_name="pairs")
        gr.api(user_errors(inspect_model_api), api_name="inspect_model")
