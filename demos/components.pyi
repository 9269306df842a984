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
class AnnotatedResult(gr.AnnotatedImage):
    """Gradio's annotated image (a legend whose entries highlight their boxes or masks), fed with
    ``(base RGB uint8 array, [(mask or box, label, (r, g, b)), ...])`` and writing every file through
    :func:`demos.served.served_files`: ``gr.AnnotatedImage`` itself writes its layers to content-hash paths without
    a temporary name, so two users with the same image would rewrite a file another is being served."""

    is_template = True  # the AnnotatedImage frontend

    def postprocess(self, value) -> AnnotatedImageData | None:
        if value is None:
            return None
        base, annotations = value
        base = np.ascontiguousarray(np.asarray(base, dtype=np.uint8)[..., :3])
        sections = [Annotation(image=FileData(path=served_files(annotation_layer(region, base.shape[:2], colour))),
                               label=label) for region, label, colour in annotations]
        return AnnotatedImageData(image=FileData(path=served_files(base)), annotations=sections)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component

    