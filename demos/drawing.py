"""Drawing for the page: annotation layers of boxes and masks, and their legend colours."""

from __future__ import annotations

import numpy as np


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)

def annotation_layer(region: np.ndarray | tuple, shape: tuple[int, int], colour: tuple[int, int, int],
                     ) -> np.ndarray:
    """One annotation of an annotated image as an (H, W, 4) uint8 layer in ``colour``: a mask ((H, W), nonzero
    where it covers) in that colour, or a box ``(x0, y0, x1, y1)`` drawn as a solid outline over a light tint."""
    h, w = shape
    layer = np.zeros((h, w, 4), np.uint8)
    layer[..., :3] = colour
    if isinstance(region, np.ndarray):
        layer[..., 3] = np.where(region > 0, 255, 0)  # opaque: a tint would mix with the object's own colour
        return layer
    x0, y0, x1, y1 = (int(round(v)) for v in region)
    x0, x1, y0, y1 = max(0, x0), min(w, x1), max(0, y0), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        return layer
    border = max(2, round(min(h, w) / 200))
    layer[y0:y1, x0:x1, 3] = 40
    for rows, cols in ((slice(y0, y0 + border), slice(x0, x1)), (slice(y1 - border, y1), slice(x0, x1)),
                       (slice(y0, y1), slice(x0, x0 + border)), (slice(y0, y1), slice(x1 - border, x1))):
        layer[rows, cols, 3] = 255
    return layer
