"""Objects in a generated Shapes image, found by colour: the detector behind the diffusion measurement
(``python -m benchmarks.builtin_diffusion``) and the diffusion recipe's VAE check."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.color import rgb2hsv

from weights.shapes.world import COLOUR_NAMES, COLOURS

SATURATION = 0.5
MAX_COLOUR_DISTANCE = 70.0
MIN_AREA = 0.005


def objects(image: np.ndarray) -> tuple[int, str | None]:
    """(number of objects, named colour of the largest) of an RGB uint8 image.

    A pixel is object-coloured when it is saturated (Shapes backgrounds have saturation at most 0.35, the six
    object colours about 0.65-0.83) and within ``MAX_COLOUR_DISTANCE`` (RGB) of a named colour (object colours
    are jittered by at most 20 per channel, about 35 away), so that a generated background that comes out
    saturated in some other hue is not taken for an object. Objects are the connected components of each named
    colour's pixels, of at least ``MIN_AREA`` of the image. On ground-truth scenes this finds exactly one object
    of the right colour in single-object scenes, and the exact object count in most multi-object scenes
    (``tests/test_diffusion.py``).
    """
    hsv = rgb2hsv(image)
    named = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32)
    distance = np.linalg.norm(image.astype(np.float32)[..., None, :] - named, axis=-1)  # (H, W, 6)
    nearest = distance.argmin(-1)
    coloured = (distance.min(-1) < MAX_COLOUR_DISTANCE) & (hsv[..., 1] > SATURATION) & (hsv[..., 2] > 0.25)
    found: list[tuple[float, str]] = []
    for k, name in enumerate(COLOUR_NAMES):
        mask = ndimage.binary_opening(coloured & (nearest == k), iterations=1)
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        if count:
            areas = ndimage.sum(mask, labels, range(1, count + 1))
            found += [(float(a), name) for a in areas if a >= MIN_AREA * mask.size]
    if not found:
        return 0, None
    return len(found), max(found)[1]
