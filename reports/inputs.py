"""A report's inputs: image folders, uploaded zips (bounded, names sanitised) and COCO-style label files."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compare.inputs import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_IMAGES = 5000  # per run (the CLI); the tab takes MAX_ZIP_IMAGES
MAX_ZIP_IMAGES = 500
MAX_ZIP_BYTES = 200 * 2**20  # the uploaded archive
MAX_ZIP_UNPACKED = 1024 * 2**20  # what it may expand to (zip bombs)
def list_images(folder: Path, limit: int = MAX_IMAGES) -> list[Path]:
    """Image files directly in ``folder`` (by suffix), sorted by name; at most ``limit``. ``folder`` may also be a
    glob pattern of files (``demos/examples/photo_*.jpg``)."""
    folder = Path(folder)
    if any(c in str(folder.name) for c in "*?[") and folder.parent.is_dir():
        candidates = folder.parent.glob(folder.name)
    elif folder.is_dir():
        candidates = folder.iterdir()
    else:
        raise InputError(f"{folder} is not a folder of images (or a pattern such as 'DIR/*.jpg').")
    files = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in {folder}.")
    if len(files) > limit:
        raise InputError(f"{len(files)} images in {folder}; one run takes at most {limit}.")
    return files


def extract_zip(archive: str | Path, folder: Path) -> list[str]:
    """Unpack the images of an uploaded zip into ``folder`` under sanitised flat names; returns notes.

    Bounded: the archive's size, the number of images and the bytes they expand to. Members that are not images
    by suffix, or whose names repeat, are skipped with a note; nothing is written outside ``folder``.
    """
    archive = Path(archive)
    if archive.stat().st_size > MAX_ZIP_BYTES:
        raise InputError(f"The archive is larger than {MAX_ZIP_BYTES // 2**20} MB.")
    try:
        bundle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise InputError("Could not read the upload as a zip archive.") from error
    notes, names = [], set()
    with bundle:
        members = [m for m in bundle.infolist() if not m.is_dir()]
        images = [m for m in members if Path(m.filename).suffix.lower() in IMAGE_SUFFIXES]
        if len(members) > len(images):
            notes.append(f"{len(members) - len(images)} files that are not images (by suffix) were skipped.")
        if not images:
            raise InputError("The archive holds no images (png, jpg, webp, bmp, tif).")
        if len(images) > MAX_ZIP_IMAGES:
            raise InputError(f"The archive holds {len(images)} images; the tab takes at most {MAX_ZIP_IMAGES} "
                             "(the command line takes more: python -m reports.dataset).")
        if sum(m.file_size for m in images) > MAX_ZIP_UNPACKED:
            raise InputError(f"The images would unpack to more than {MAX_ZIP_UNPACKED // 2**20} MB.")
        folder.mkdir(parents=True, exist_ok=True)
        for member in images:
            name = safe_name(Path(member.filename).name)
            if name in names:
                notes.append(f"{member.filename}: a second file named {name}, skipped.")
                continue
            names.add(name)
            with bundle.open(member) as source, open(folder / name, "wb") as target:
                target.write(source.read(MAX_ZIP_UNPACKED))
    return notes


def safe_name(name: str) -> str:
    """A flat file name of letters, digits, ``-``, ``_`` and ``.``; never empty, never hidden."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-120:].lstrip(".")
    return cleaned or "image"


@dataclass
class Labels:
    """Ground truth from a COCO-style file, keyed by image file name."""

    boxes: dict[str, list[tuple[str, list[float]]]] = field(default_factory=dict)  # name -> [(class, xyxy)]
    polygons: dict[str, list[tuple[str, list[list[float]]]]] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)  # name -> class (classification)

    @classmethod
    def read(cls, path: Path) -> Labels:
        try:
            coco = json.loads(Path(path).read_text())
            files = {im["id"]: Path(im["file_name"]).name for im in coco["images"]}
            names = {c["id"]: c["name"] for c in coco["categories"]}
            labels = cls()
            for a in coco.get("annotations", []):
                image, label = files[a["image_id"]], names[a["category_id"]]
                if "bbox" in a:
                    x, y, w, h = map(float, a["bbox"])
                    labels.boxes.setdefault(image, []).append((label, [x, y, x + w, y + h]))
                if a.get("segmentation"):
                    labels.polygons.setdefault(image, []).append((label, a["segmentation"]))
                labels.classes.setdefault(image, label)
            return labels
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(f"Could not read the labels {Path(path).name} as COCO-style JSON ({error}).") from error

    def mask(self, image: str, size: tuple[int, int], classes: list[str]) -> np.ndarray:
        """(H, W) class indices painted from the image's polygons (later annotations on top; 0 elsewhere)."""
        from PIL import Image, ImageDraw

        canvas = Image.new("L", (size[1], size[0]), 0)
        draw = ImageDraw.Draw(canvas)
        for label, polygons in self.polygons.get(image, []):
            for polygon in polygons:
                draw.polygon([tuple(polygon[i:i + 2]) for i in range(0, len(polygon) - 1, 2)],
                             fill=classes.index(label))
        return np.asarray(canvas)
