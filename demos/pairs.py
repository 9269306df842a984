"""Pairs tab: every teacher/student pair in the registry, with sources and licences; serves ``/pairs``."""

from __future__ import annotations

from weights.registry import list_pairs

COLUMNS = ("name", "task", "source", "teacher", "student", "licence")


def pairs() -> list[dict]:
    """All registered pairs: ``[{name, task, source ("builtin"|"hub"), teacher, student, licence, ...}]``."""
    return [pair.summary() for pair in list_pairs()]


def build_pairs_tab() -> None:
    import gradio as gr

    with gr.Tab("Pairs", id="pairs"):
        gr.Markdown("Builtin pairs work offline. Hub pairs download their models on first use (or read them from "
                    "the Hugging Face cache, e.g. with `HF_HUB_OFFLINE=1`).")
        gr.Dataframe(value=[[p[c] for c in COLUMNS] for p in pairs()], headers=list(COLUMNS), interactive=False,
                     wrap=True)
        gr.api(pairs, api_name="pairs")
