"""The engine's pictures: heat maps over images with their colour bar, boxes and masks over images, and the
enlargement that keeps small images legible. Pure torch and PIL; heat maps are drawn on the tensors' device."""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks


def display_scale(height: int, width: int, target: int = 512) -> float:
    """Small images are drawn enlarged so that boxes and labels stay legible."""
    return max(1.0, target / max(height, width))

@functools.cache
def font_path() -> str | None:
    """A TrueType font for box labels when the system has DejaVu Sans; None falls back to PIL's default."""
    from PIL import ImageFont

    try:
        ImageFont.truetype("DejaVuSans.ttf", 12)
        return "DejaVuSans.ttf"
    except OSError:
        return None

def enlarge(image: np.ndarray, scale: float) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, h, w) uint8 tensor, enlarged by ``scale`` with nearest neighbours."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if scale == 1.0:
        return tensor
    size = (round(image.shape[0] * scale), round(image.shape[1] * scale))
    return torch.nn.functional.interpolate(tensor[None].float(), size=size, mode="nearest")[0].to(torch.uint8)

def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` well-separated colours (golden-ratio hues); index 0 is grey for background."""
    import colorsys

    colours = [(90, 90, 90)]
    for i in range(1, n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours

@functools.cache
def _heat_lut() -> torch.Tensor:
    """256 colours of plotly's Viridis scale (perceptually uniform, readable in grey and by colour-blind eyes),
    (256, 3) uint8."""
    from plotly.colors import sample_colorscale, unlabel_rgb

    colours = sample_colorscale("Viridis", [i / 255 for i in range(256)])
    return torch.tensor([unlabel_rgb(c) for c in colours], dtype=torch.float32).round().to(torch.uint8)

@functools.cache
def _heat_lut_on(device: torch.device) -> torch.Tensor:
    """The heat-map colours as (256, 3) float32 on ``device``, uploaded once per device."""
    return _heat_lut().float().to(device)

def upload_image(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 numpy -> the same tensor on ``device``; to CUDA through pinned memory, without waiting."""
    tensor = torch.from_numpy(np.ascontiguousarray(image))
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)

def heat_overlays(canvas: torch.Tensor, heats: torch.Tensor, alpha: float = 0.55) -> torch.Tensor:
    """Blend maps over an image as Viridis heat maps, on the tensors' device.

    Args:
        canvas: (H, W, 3) uint8 image.
        heats: (N, h, w) maps in [0, 1] (resized to (H, W) when their size differs).
        alpha: the heat map's weight.

    Returns:
        (N, H, W, 3) uint8 overlays.
    """
    size = tuple(canvas.shape[:2])
    if tuple(heats.shape[-2:]) != size:
        heats = torch.nn.functional.interpolate(heats[:, None].float(), size=size, mode="bilinear",
                                                align_corners=False)[:, 0]
    heats = torch.nan_to_num(heats.float(), nan=0.0).clamp(0, 1)  # a NaN (fp16 overflow) must not index the LUT
    colours = _heat_lut_on(canvas.device)[(heats * 255).round().long()]  # (N, H, W, 3)
    return ((1 - alpha) * canvas.float() + alpha * colours).round().to(torch.uint8)

def heat_overlay(image: np.ndarray, heat: torch.Tensor, alpha: float = 0.55, low: str = "lowest",
                 high: str = "highest") -> np.ndarray:
    """Blend an (h, w) map in [0, 1] (any grid, any device) over the image as a Viridis heat map, with its colour
    bar underneath."""
    canvas = enlarge(image, display_scale(*image.shape[:2])).permute(1, 2, 0)
    return with_colour_bar(heat_overlays(canvas, heat.detach().float().cpu()[None], alpha)[0].numpy(), low, high)

COLOUR_BAR_HEIGHT = 30  # pixels under a heat map: the colour ramp, then its numbers and words


@functools.lru_cache(maxsize=64)
def _colour_bar(width: int, low: str, high: str) -> np.ndarray:
    """A (30, width, 3) strip: the colour scale from 0 to 1, numbered at 0, 0.5 and 1, with the words of its two ends
    (``0 · lowest``, ``highest · 1``: every map is scaled to its own range) where they fit. Drawn once per width and
    words (text rendering costs about a millisecond, as much as the rest of a GPU analysis); read-only."""
    from PIL import ImageDraw, ImageFont

    lut = _heat_lut().numpy()
    ramp = lut[np.linspace(0, 255, width).round().astype(int)]
    strip = Image.new("RGB", (width, COLOUR_BAR_HEIGHT), (255, 255, 255))
    strip.paste(Image.fromarray(np.repeat(ramp[None], 12, axis=0)), (0, 0))
    draw = ImageDraw.Draw(strip)
    font = ImageFont.truetype(font_path(), 11) if font_path() else ImageFont.load_default()
    ink = (40, 40, 40)
    draw.line([(width // 2, 12), (width // 2, 15)], fill=ink)
    middle = draw.textlength("0.5", font=font)
    draw.text((width / 2 - middle / 2, 15), "0.5", fill=ink, font=font)
    for left, right in ((f"0 · {low}", f"{high} · 1"), ("0", "1")):  # the words where they fit beside the middle
        if max(draw.textlength(left, font=font), draw.textlength(right, font=font)) + 6 <= width / 2 - middle / 2:
            break
    draw.text((2, 15), left, fill=ink, font=font)
    draw.text((width - draw.textlength(right, font=font) - 2, 15), right, fill=ink, font=font)
    bar = np.array(strip)
    bar.flags.writeable = False
    return bar


def with_colour_bar(overlay: np.ndarray, low: str = "lowest", high: str = "highest") -> np.ndarray:
    """The overlay with its colour bar (0 ``low`` to 1 ``high``, numbered) appended underneath."""
    return np.concatenate([overlay, _colour_bar(overlay.shape[1], low, high)], axis=0)


def display_canvas(image: np.ndarray) -> tuple[torch.Tensor, float]:
    """The image as drawn in the app: ``(canvas, scale)``, a (3, h, w) uint8 tensor enlarged by
    :func:`display_scale` (small images stay legible), and that scale."""
    scale = display_scale(*image.shape[:2])
    return enlarge(image, scale), scale


def as_picture(canvas: torch.Tensor) -> np.ndarray:
    """A (3, h, w) uint8 canvas as the (h, w, 3) numpy picture components take."""
    return canvas.permute(1, 2, 0).numpy()


def draw_detections(image: np.ndarray, detections: list, labels: list[str]) -> np.ndarray:
    """Boxes with ``label score`` captions over the image (enlarged when small); colours follow the label."""
    canvas, scale = display_canvas(image)
    if not detections:
        return as_picture(canvas)
    colours = palette(len(labels) + 1)
    boxes = torch.tensor([d.box for d in detections]) * scale
    font = font_path()
    drawn = draw_bounding_boxes(
        canvas, boxes, labels=[f"{d.label} {d.score:.2f}" for d in detections],
        colors=[colours[labels.index(d.label) % len(colours)] for d in detections],
        width=max(2, round(min(canvas.shape[1:]) / 200)), font=font,
        font_size=max(12, round(min(canvas.shape[1:]) / 30)) if font else None)
    return as_picture(drawn)


def resize_class_map(class_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An (H, W) class-index map resized to ``size`` by nearest neighbours, int64 on the CPU."""
    return torch.nn.functional.interpolate(class_map[None, None].float().cpu(), size=size, mode="nearest")[0, 0].long()


def draw_mask(image: np.ndarray, class_map: torch.Tensor, num_classes: int, alpha: float = 0.55) -> np.ndarray:
    """Colour every non-background class of ``class_map`` (H, W) over the image (enlarged when small)."""
    canvas, _ = display_canvas(image)
    big = resize_class_map(class_map, tuple(canvas.shape[1:]))
    present = [c for c in big.unique().tolist() if c != 0]
    if not present:
        return as_picture(canvas)
    colours = palette(num_classes)
    masks = torch.stack([big == c for c in present])
    drawn = draw_segmentation_masks(canvas, masks, alpha=alpha, colors=[colours[c] for c in present])
    return as_picture(drawn)
