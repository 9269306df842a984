"""Reading a user's image safely: any PIL mode to RGB, sizes checked before pixels are decoded, large images
downscaled with a note; and the error type whose message is meant for the user."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_UPLOAD_BYTES = 50 * 2**20  # also passed to launch(max_file_size=...)
MAX_INPUT_PIXELS = 100_000_000  # refuse to decode anything larger (decompression bombs)
MAX_WORKING_SIDE = 2048  # larger images are downscaled, with a note
MIN_SIDE = 8
Image.MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS


DOWNSCALE = f"Downscale it to at most {MAX_WORKING_SIDE} px on its long side (the app works at that size anyway)."
UNREADABLE = ("Could not read the file as an image (it may be corrupt or not an image). "
              "Give a PNG, JPEG, WebP, BMP, TIFF or GIF image.")


class InputError(ValueError):
    """Bad input from a user; the message is shown to them as it is."""


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16-bit and float greyscale are rescaled, alpha is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    return image if image.mode == "RGB" else image.convert("RGB")


def read_image(value: str | Path | np.ndarray | Image.Image | None) -> tuple[np.ndarray, list[str]]:
    """Read a user's image into RGB uint8 (H, W, 3), with notes on anything changed.

    Args:
        value: a file path, a numpy array or a PIL image.

    Returns:
        ``(image, notes)``. Images with a side over ``MAX_WORKING_SIDE`` are downscaled (a note says so).

    Raises:
        InputError: no image, an unreadable or non-image file, too many pixels, or a side under ``MIN_SIDE``.
    """
    if value is None:
        raise InputError("No image given: upload one, use the webcam, or pick an example.")
    notes: list[str] = []
    reduction = 1.0  # a large JPEG is decoded at 1/2, 1/4 or 1/8 of its stored size
    try:
        if isinstance(value, (str, Path)):
            path = Path(value)
            if path.stat().st_size > MAX_UPLOAD_BYTES:
                raise InputError(f"The file is larger than {MAX_UPLOAD_BYTES // 2**20} MB.")
            with warnings.catch_warnings():  # the size is checked just below, with a message that names it
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(path)  # reads the header only: the size is known before any pixel is decoded
            if image.width * image.height > MAX_INPUT_PIXELS:
                raise InputError(f"The image is {image.width:,}×{image.height:,} pixels, more than "
                                 f"{MAX_INPUT_PIXELS:,}: too large. {DOWNSCALE}")
            stored_width = image.width
            if image.format == "JPEG" and max(image.size) > 2 * MAX_WORKING_SIDE:
                image.draft("RGB", (MAX_WORKING_SIDE, MAX_WORKING_SIDE))  # decode a large JPEG at 1/2, 1/4 or 1/8
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.load()
            reduction = stored_width / image.width
        elif isinstance(value, np.ndarray):
            image = Image.fromarray(value)
        else:
            image = value
        if image is value:  # the caller's image: transposed in a copy
            image = ImageOps.exif_transpose(image)
        else:  # one this function opened or made: turned in place (no copy when its EXIF asks for nothing)
            ImageOps.exif_transpose(image, in_place=True)
        if image.mode != "RGB":
            notes.append(f"Converted from {image.mode} to RGB.")
        image = _to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(f"The image has more than {MAX_INPUT_PIXELS:,} pixels: too large. {DOWNSCALE}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(UNREADABLE) from error
    width, height = image.size
    stored = (round(width * reduction), round(height * reduction))
    if min(width, height) < MIN_SIDE:
        raise InputError(f"The image is {width}×{height} pixels; each side needs at least {MIN_SIDE} pixels.")
    if max(width, height) > MAX_WORKING_SIDE:
        scale = MAX_WORKING_SIDE / max(width, height)
        new_size = (max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale)))
        image = image.resize(new_size, Image.Resampling.LANCZOS)
    if stored != image.size:
        notes.append(f"Downscaled from {stored[0]}×{stored[1]} to {image.size[0]}×{image.size[1]} pixels.")
    if max(width, height) / min(width, height) > 8:
        notes.append(f"Extreme aspect ratio ({width}×{height}): objects may be too thin for the models.")
    return np.asarray(image, dtype=np.uint8).copy(), notes
