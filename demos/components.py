"""Gradio components of our own. Gradio writes a ``.pyi`` stub beside any module defining a component;
``components.pyi`` is that stub, committed."""

from __future__ import annotations

import gradio as gr
import numpy as np
from gradio.components.annotated_image import AnnotatedImageData, Annotation
from gradio.data_classes import FileData

from compare.inputs import MAX_UPLOAD_BYTES, UNREADABLE
from demos.drawing import annotation_layer, hex_colour
from demos.served import served_files


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


def data_url_file(url: str) -> str:
    """An inline ``data:[type];base64,...`` image written to a served file: its size is checked from the URL's
    length before anything is decoded."""
    import base64
    import binascii

    from demos.served import output_path

    header, _, body = url.partition(",")
    if len(body) * 3 // 4 > MAX_UPLOAD_BYTES:
        raise gr.Error(f"The inline image is about {len(body) * 3 // 4 / 2**20:.0f} MB, more than "
                       f"{MAX_UPLOAD_BYTES // 2**20} MB: upload a smaller file.", print_exception=False)
    if ";base64" not in header:
        raise gr.Error(UNREADABLE, print_exception=False)
    try:
        data = base64.b64decode(body, validate=False)
    except (binascii.Error, ValueError):
        raise gr.Error(UNREADABLE, print_exception=False) from None
    path = output_path("inline", ".img")
    path.write_bytes(data)
    return str(path)


class CheckedSlider(gr.Slider):
    """A slider that passes the caller's value through untouched: the engine checks every number once, with a
    message naming the field and its range (:func:`compare.checks.number`); ``gr.Slider`` itself would refuse an API
    caller's ``None``, a NaN or another pair's larger size with a generic error, before our code runs."""

    is_template = True  # the Slider frontend

    def preprocess(self, payload):
        return payload


class CheckedNumber(gr.Number):
    """A number field that passes the caller's value through untouched (see :class:`CheckedSlider`)."""

    is_template = True

    def preprocess(self, payload):
        return payload


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


def annotated_result(label: str, elem_id: str, visible: bool = True) -> AnnotatedResult:
    """A result panel of boxes or masks over the image, with its legend."""
    return AnnotatedResult(label=label, elem_id=elem_id, visible=visible, show_legend=True, format="png")


def annotated_update(value, label: str | None = None, visible: bool = True) -> dict:
    """Show ``value`` in an :class:`AnnotatedResult`, its legend colours set to the annotations' own colours (the
    frontend otherwise hue-shifts layers whose label it has no colour for)."""
    if value is None:
        return gr.update(value=None, visible=visible)
    colour_map = {label_: hex_colour(colour) for _, label_, colour in value[1]}
    extra = {} if label is None else {"label": label}
    return gr.update(value=value, color_map=colour_map, visible=visible, **extra)
