"""Gradio components of our own. Gradio writes a ``.pyi`` stub beside any module defining a component;
``components.pyi`` is that stub, committed."""

from __future__ import annotations

import gradio as gr

from demos.common import UNREADABLE

from gradio.events import Dependency

class UserImage(gr.Image):
    """An image input that hands our reader (:func:`compare.inputs.read_image`) a file path and decodes nothing
    itself: ``gr.Image`` opens every upload with PIL first (a 200-million-pixel image then fails there as
    "unreadable") and decodes inline ``data:`` URLs whole. Here an uploaded file's path is passed through untouched,
    and a ``data:`` URL is refused over :data:`compare.inputs.MAX_UPLOAD_BYTES` from its length alone, before any
    decoding, then written to a file of its own; the reader checks the size in pixels from the header."""

    is_template = True  # use the Image frontend (Gradio reads the props from gr.Image's own signature)

    def preprocess(self, payload):
        if payload is None:
            return None
        url = getattr(payload, "url", None) or ""
        if url.startswith("data:"):
            return data_url_file(url)
        if getattr(payload, "path", None) is None:
            raise gr.Error(UNREADABLE, print_exception=False)
        return str(payload.path)
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

    
class CheckedSlider(gr.Slider):
    """A slider that passes the caller's value through untouched: the engine checks every number once, with a
    message naming the field and its range (:func:`compare.checks.number`); ``gr.Slider`` itself would refuse an API
    caller's ``None``, a NaN or another pair's larger size with a generic error, before our code runs."""

    is_template = True  # the Slider frontend

    def preprocess(self, payload):
        return payload
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component

    
class CheckedNumber(gr.Number):
    """A number field that passes the caller's value through untouched (see :class:`CheckedSlider`)."""

    is_template = True

    def preprocess(self, payload):
        return payload
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component

    