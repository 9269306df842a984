"""Gradio components of our own. Gradio writes a ``.pyi`` stub beside any module defining a component;
``components.pyi`` is that stub, committed."""

from __future__ import annotations

import gradio as gr
import numpy as np
from gradio.components.annotated_image import AnnotatedImageData, Annotation
from gradio.data_classes import FileData

from compare.inputs import UNREADABLE
from demos.drawing import annotation_layer, hex_colour
from demos.served import served_files


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
