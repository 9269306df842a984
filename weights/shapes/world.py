"""The Shapes world: seeded synthetic scenes with exact ground truth (see ``shared/SHAPES.md``).

A seed names a scene exactly: all randomness comes from one ``numpy.random.Generator``.
Every length scales with ``min(height, width) / 128``. Shapes are rasterised at 4x and box-filtered
down, so edges are anti-aliased and each object carries a fractional coverage map.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES: tuple[str, ...] = ("background", "circle", "square", "triangle", "star", "cross")
SHAPE_NAMES: tuple[str, ...] = CLASS_NAMES[1:]
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 50),
    "green": (50, 170, 70),
    "blue": (50, 90, 220),
    "yellow": (235, 205, 50),
    "purple": (150, 70, 200),
    "orange": (240, 140, 40),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
COLOUR_SHAPE_NAMES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOUR_NAMES for s in SHAPE_NAMES)

# Seed ranges, in one place. Every recipe draws its training scenes from TRAIN_SEEDS (pools use its start);
# tuning scenes (prompt learning, probes) come from TUNING_SEED_START on, training-range seeds no pool reaches;
# every measurement uses seeds from EVAL_SEED_START on, which nothing ever trains or tunes on.
TRAIN_SEEDS = range(0, 1_000_000)
TUNING_SEED_START = 900_000
EVAL_SEED_START = 10_000_000

_SUPERSAMPLE = 4
_MAX_HIDDEN = 0.4
_MAX_REDRAWS = 20


@dataclass
class ShapeObject:
    """One painted object. ``box`` is ``[x0, y0, x1, y1]`` of the visible part, x1/y1 exclusive."""

    class_id: int
    colour: str
    box: list[int]
    mask: np.ndarray  # (H, W) bool, visible pixels

    @property
    def name(self) -> str:
        return CLASS_NAMES[self.class_id]

    @property
    def phrase(self) -> str:
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.colour} {self.name}"


@dataclass
class Scene:
    """A rendered scene: ``image`` (H, W, 3) uint8, ``labels`` (H, W) uint8 class ids, and its objects."""

    image: np.ndarray
    labels: np.ndarray
    objects: list[ShapeObject] = field(default_factory=list)

    @property
    def caption(self) -> str:
        phrases = [o.phrase for o in sorted(self.objects, key=lambda o: (o.box[0] + o.box[2]) / 2)]
        if len(phrases) <= 1:
            return "".join(phrases)
        return ", ".join(phrases[:-1]) + " and " + phrases[-1]

    @property
    def boxes(self) -> np.ndarray:
        return np.array([o.box for o in self.objects], dtype=np.float32).reshape(-1, 4)

    @property
    def class_ids(self) -> np.ndarray:
        return np.array([o.class_id for o in self.objects], dtype=np.int64)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0, 0.35), rng.uniform(0.15, 0.95)
    base = np.array(colorsys.hsv_to_rgb(hue, sat, val)) * 255.0
    angle, amplitude = np.deg2rad(rng.uniform(0, 360)), rng.uniform(0, 40)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    ramp = (xs - (width - 1) / 2) * np.cos(angle) + (ys - (height - 1) / 2) * np.sin(angle)
    ramp /= max(np.abs(ramp).max(), 1e-6)
    sigma = rng.uniform(0, 10)
    image = base[None, None, :] + amplitude * ramp[..., None] + rng.normal(0, sigma, (height, width, 3))
    return np.clip(image, 0, 255)


def _outline(class_id: int, cx: float, cy: float, size: float, angle: float) -> list[tuple[float, float]]:
    """Polygon vertices of a shape inscribed in the circle of diameter ``size`` (not used for circles)."""
    radius = size / 2
    if class_id == 2:  # square
        polar = [(radius, angle + np.pi / 4 + k * np.pi / 2) for k in range(4)]
    elif class_id == 3:  # triangle
        polar = [(radius, angle - np.pi / 2 + k * 2 * np.pi / 3) for k in range(3)]
    elif class_id == 4:  # star
        polar = [(radius if k % 2 == 0 else 0.45 * radius, angle - np.pi / 2 + k * np.pi / 5) for k in range(10)]
    elif class_id == 5:  # cross: arm width 0.33 s, arm corners on the circle
        half_w = 0.33 * size / 2
        reach = np.sqrt(radius**2 - half_w**2)
        corners = [(reach, half_w), (half_w, half_w), (half_w, reach), (-half_w, reach), (-half_w, half_w),
                   (-reach, half_w), (-reach, -half_w), (-half_w, -half_w), (-half_w, -reach), (half_w, -reach),
                   (half_w, -half_w), (reach, -half_w)]
        cos, sin = np.cos(angle), np.sin(angle)
        return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in corners]
    else:
        raise ValueError(f"unknown shape id {class_id}")
    return [(cx + r * np.cos(a), cy + r * np.sin(a)) for r, a in polar]


def _coverage(class_id: int, cx: float, cy: float, size: float, angle: float, height: int, width: int) -> np.ndarray:
    """Fractional pixel coverage (H, W) float32 in [0, 1], rasterised at 4x and box-filtered."""
    k = _SUPERSAMPLE
    x0, y0 = max(int(cx - size / 2) - 1, 0), max(int(cy - size / 2) - 1, 0)
    x1, y1 = min(int(np.ceil(cx + size / 2)) + 1, width), min(int(np.ceil(cy + size / 2)) + 1, height)
    canvas = Image.new("L", ((x1 - x0) * k, (y1 - y0) * k), 0)
    draw = ImageDraw.Draw(canvas)
    lx, ly = (cx - x0) * k, (cy - y0) * k
    if class_id == 1:
        r = size / 2 * k
        draw.ellipse([lx - r, ly - r, lx + r, ly + r], fill=255)
    else:
        draw.polygon(_outline(class_id, lx, ly, size * k, angle), fill=255)
    fine = np.asarray(canvas, dtype=np.float32) / 255.0
    local = fine.reshape(y1 - y0, k, x1 - x0, k).mean(axis=(1, 3))
    full = np.zeros((height, width), dtype=np.float32)
    full[y0:y1, x0:x1] = local
    return full


def _draw_placement(rng: np.random.Generator, height: int, width: int, size_range: tuple[float, float],
                    centre_jitter: float | None) -> tuple[float, float, float]:
    size = rng.uniform(*size_range)
    if centre_jitter is None:
        cx = rng.uniform(size / 2, width - size / 2)
        cy = rng.uniform(size / 2, height - size / 2)
    else:
        cx = width / 2 + rng.uniform(-centre_jitter, centre_jitter)
        cy = height / 2 + rng.uniform(-centre_jitter, centre_jitter)
    return cx, cy, size


def render_scene(seed: int, height: int = 128, width: int = 128, single_object: bool = False) -> Scene:
    """Render the scene named by ``seed``.

    Args:
        seed: seeds the one ``numpy.random.Generator`` behind every random choice.
        height, width: canvas size in pixels, each in [64, 512].
        single_object: one large, centred object (classification and generation scenes).

    Returns:
        A :class:`Scene` with the image, the semantic label map and the annotated objects.
    """
    if not (64 <= height <= 512 and 64 <= width <= 512):
        raise ValueError(f"canvas sides must lie in [64, 512], got {height}x{width}")
    rng = np.random.default_rng(seed)
    scale = min(height, width) / 128
    image = _background(rng, height, width)
    if single_object:
        count, size_range, jitter = 1, (40 * scale, 80 * scale), 16 * scale
    else:
        count, size_range, jitter = int(rng.integers(1, 6)), (14 * scale, 48 * scale), None

    full: list[np.ndarray] = []  # unoccluded coverage of each painted object
    visible: list[np.ndarray] = []  # coverage left visible
    meta: list[tuple[int, str]] = []
    for _ in range(count):
        class_id = int(rng.integers(1, 6))
        colour = COLOUR_NAMES[int(rng.integers(0, 6))]
        rgb = np.clip(np.array(COLOURS[colour]) + rng.uniform(-20, 20, 3), 0, 255)
        angle = 0.0 if class_id == 1 else rng.uniform(0, 2 * np.pi)
        for _attempt in range(_MAX_REDRAWS + 1):
            cx, cy, size = _draw_placement(rng, height, width, size_range, jitter)
            cover = _coverage(class_id, cx, cy, size, angle, height, width)
            hides_too_much = any(
                (vis * cover).sum() > _MAX_HIDDEN * f.sum() for f, vis in zip(full, visible, strict=True)
            )
            if not hides_too_much:
                break
        else:
            continue  # left out after 20 redraws
        for vis in visible:
            vis *= 1.0 - cover
        full.append(cover)
        visible.append(cover.copy())
        meta.append((class_id, colour))
        image = image * (1.0 - cover[..., None]) + rgb[None, None, :] * cover[..., None]

    labels = np.zeros((height, width), dtype=np.uint8)
    objects = []
    for (class_id, colour), vis in zip(meta, visible, strict=True):
        mask = vis > 0.5
        labels[mask] = class_id
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        objects.append(ShapeObject(class_id=class_id, colour=colour, box=box, mask=mask))
    return Scene(image=np.round(image).astype(np.uint8), labels=labels, objects=objects)


def write_labelled_scenes(folder, seeds) -> tuple:
    """Scenes as PNG files ``folder/images/scene_<k>.png`` and their boxes as a COCO-style label file
    ``folder/labels.json`` (categories by :data:`SHAPE_NAMES`, ``bbox`` as ``[x, y, w, h]`` in pixels), the input the
    dataset report takes. Returns ``(images folder, label file)`` as :class:`pathlib.Path`."""
    import json
    from pathlib import Path

    images = Path(folder) / "images"
    images.mkdir(parents=True, exist_ok=True)
    coco: dict = {"images": [], "annotations": [],
                  "categories": [{"id": i, "name": c} for i, c in enumerate(CLASS_NAMES) if i]}
    for k, seed in enumerate(seeds):
        scene = render_scene(seed)
        name = f"scene_{k:04d}.png"
        Image.fromarray(scene.image).save(images / name)
        coco["images"].append({"id": k, "file_name": name})
        for (x0, y0, x1, y1), c in zip(scene.boxes.tolist(), scene.class_ids.tolist(), strict=True):
            coco["annotations"].append({"image_id": k, "category_id": int(c), "bbox": [x0, y0, x1 - x0, y1 - y0]})
    labels = Path(folder) / "labels.json"
    labels.write_text(json.dumps(coco))
    return images, labels
