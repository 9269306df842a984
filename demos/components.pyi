"""Gradio components of our own. Gradio writes a ``.pyi`` stub beside any module defining a component;
``components.pyi`` is that stub, committed."""

from __future__ import annotations

import gradio as gr

from demos.common import UNREADABLE

from gradio.events import Dependency

class UserImage(gr.Image):
    """An image input that passes the file path through untouched and turns an unreadable upload into a clear
    ``gr.Error`` (the plain ``gr.Image`` fails inside pre-processing with a generic error)."""

    is_template = True  # use the Image frontend (Gradio reads the props from gr.Image's own signature)

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Exception as error:
            raise gr.Error(UNREADABLE, print_exception=False) from error
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


def user_image(**kwargs) -> UserImage:
    """An image input for a tab: a file path (so we read the file ourselves), from upload, webcam or clipboard."""
    defaults = {"type": "filepath", "image_mode": None, "sources": ["upload", "webcam", "clipboard"], "height": 320}
    return UserImage(**{**defaults, **kwargs})