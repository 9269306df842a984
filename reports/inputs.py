"""A report's inputs: image folders, uploaded zips (bounded, names sanitised) and COCO-style label files."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compare.inputs import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_ZIP_IMAGES = 500
MAX_ZIP_BYTES = 200 * 2**20  # the uploaded archive
MAX_ZIP_UNPACKED = 1024 * 2**20  # what it may expand to (zip bombs)
def list_images(folder: Path, limit: int | None = None) -> list[Path]:
    """Image files directly in ``folder`` (by suffix), sorted by name; any number unless ``limit`` (the tab's zips).
    ``folder`` may also be a glob pattern of files (``demos/examples/photo_*.jpg``). The folder is scanned once and
    only the paths are kept (an image is read when its batch runs)."""
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
    if limit is not None and len(files) > limit:
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
        budget = MAX_ZIP_UNPACKED  # counted on the bytes actually read: an archive's declared sizes may lie
        for member in images:
            name = safe_name(Path(member.filename).name)
            if name in names or name.lstrip("._") == "" or name.lower() in {s.lstrip(".") for s in IMAGE_SUFFIXES}:
                notes.append(f"{member.filename[:80]}: " + (f"a second file named {name}, skipped." if name in names
                                                           else "no usable file name, skipped."))
                continue
            names.add(name)
            try:
                budget -= _unpack(bundle, member, folder / name, budget)
            except _Unreadable as error:
                (folder / name).unlink(missing_ok=True)
                names.discard(name)
                notes.append(f"{member.filename[:80]}: {error}; skipped.")
        if not names:
            raise InputError("No image in the archive could be unpacked: " + " ".join(notes[-3:]))
    return notes


class _Unreadable(Exception):
    """One archive member that cannot be unpacked (the message says why)."""


def _unpack(bundle: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Copy one member to ``target`` in chunks, at most ``budget`` bytes; returns the bytes written.

    Raises:
        _Unreadable: an encrypted member, a compression method Python's zipfile lacks, a corrupt member (bad CRC,
            truncated data).
        InputError: the archive unpacks to more than :data:`MAX_ZIP_UNPACKED` bytes (whatever it declares).
    """
    import zlib

    written = 0
    try:
        with bundle.open(member) as source, open(target, "wb") as out:
            while chunk := source.read(2**20):
                written += len(chunk)
                if written > budget:
                    raise InputError(f"The images unpack to more than {MAX_ZIP_UNPACKED // 2**20} MB (more than the "
                                     "archive declares).")
                out.write(chunk)
    except InputError:
        target.unlink(missing_ok=True)
        raise
    except NotImplementedError as error:  # "That compression method is not supported" (a RuntimeError too)
        raise _Unreadable(f"a compression method that is not supported ({error})") from error
    except RuntimeError as error:  # zipfile: "File ... is encrypted, password required for extraction"
        raise _Unreadable("encrypted (password-protected archives are not supported)") from error
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        raise _Unreadable(f"corrupt in the archive ({str(error)[:80] or type(error).__name__})") from error
    return written


def safe_name(name: str) -> str:
    """A flat file name of letters, digits, ``-``, ``_`` and ``.``; never empty, never hidden."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-120:].lstrip(".")
    return cleaned or "image"


def _decode_rle(rle: dict) -> np.ndarray:
    """A COCO RLE mask (compressed, or uncompressed ``counts`` list) -> (H, W) uint8, with pycocotools."""
    from pycocotools import mask as coco_mask

    encoded = coco_mask.frPyObjects(rle, *rle["size"]) if isinstance(rle["counts"], list) else rle
    return coco_mask.decode(encoded)


@dataclass
class Labels:
    """Ground truth from a COCO-style file, keyed by image file name."""

    boxes: dict[str, list[tuple[str, list[float]]]] = field(default_factory=dict)  # name -> [(class, xyxy)]
    polygons: dict[str, list[tuple[str, list[list[float]]]]] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)  # name -> class (classification)

    rle: dict[str, list[tuple[str, dict]]] = field(default_factory=dict)  # name -> [(class, COCO RLE)]

    @classmethod
    def read(cls, path: Path) -> Labels:
        """Read a COCO-style file: ``images`` (``id``, ``file_name``), ``categories`` (``id``, ``name``) and
        ``annotations`` (``image_id``, ``category_id``, and ``bbox`` ``[x, y, w, h]``, ``segmentation`` polygons or
        RLE, or only the category for classification).

        Raises:
            InputError: a file that is not such JSON, naming what is wrong and where (the annotation's id).
        """
        name = Path(path).name
        try:
            coco = json.loads(Path(path).read_text())
        except RecursionError:
            raise InputError(f"The labels {name} are nested too deeply to be COCO-style JSON.") from None
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise InputError(f"Could not read the labels {name} as JSON ({str(error)[:120]}).") from None
        try:
            files = {im["id"]: Path(str(im["file_name"])).name for im in coco["images"]}
            names = {c["id"]: str(c["name"]) for c in coco["categories"]}
            annotations = coco.get("annotations", [])
            if not isinstance(annotations, list):
                raise TypeError("'annotations' is not a list")
        except (KeyError, TypeError, AttributeError) as error:
            raise InputError(f"The labels {name} are not COCO-style: they need 'images' (id, file_name) and "
                             f"'categories' (id, name) lists ({str(error)[:80]}).") from None
        labels = cls()
        for k, a in enumerate(annotations):
            where = f"annotation {a.get('id', k) if isinstance(a, dict) else k}"
            try:
                image, label = files[a["image_id"]], names[a["category_id"]]
                if "bbox" in a:
                    x, y, w, h = (float(v) for v in a["bbox"])
                    labels.boxes.setdefault(image, []).append((label, [x, y, x + w, y + h]))
                segmentation = a.get("segmentation")
                if isinstance(segmentation, dict):
                    if not {"counts", "size"} <= set(segmentation):
                        raise ValueError("an RLE segmentation needs 'counts' and 'size'")
                    labels.rle.setdefault(image, []).append((label, segmentation))
                elif segmentation:
                    polygons = [[float(v) for v in polygon] for polygon in segmentation]
                    if any(len(p) < 6 or len(p) % 2 for p in polygons):
                        raise ValueError("a polygon needs at least three x, y points")
                    labels.polygons.setdefault(image, []).append((label, polygons))
                labels.classes.setdefault(image, label)
            except KeyError as error:
                raise InputError(f"The labels {name}: {where} names an unknown image or category "
                                 f"({str(error)[:40]}).") from None
            except (TypeError, ValueError, AttributeError) as error:
                raise InputError(f"The labels {name}: {where} is not COCO-style ({str(error)[:80]}).") from None
        for original in set(files.values()):  # an uploaded zip's images are unpacked under sanitised names
            safe = safe_name(original)
            if safe != original:
                for table in (labels.boxes, labels.polygons, labels.rle, labels.classes):
                    if original in table:
                        table.setdefault(safe, table[original])
        return labels

    def objects(self, image: str, size: tuple[int, int], classes: list[str]) -> list[tuple[str, np.ndarray]]:
        """Each labelled object of the image as ``(class, (H, W) bool mask)``, in the file's order (polygons, then
        RLE); objects of classes the pair does not have are left out."""
        from PIL import Image, ImageDraw

        out = []
        for label, polygons in self.polygons.get(image, []):
            if label in classes:
                canvas = Image.new("1", (size[1], size[0]), 0)
                draw = ImageDraw.Draw(canvas)
                for polygon in polygons:
                    draw.polygon([tuple(polygon[i:i + 2]) for i in range(0, len(polygon) - 1, 2)], fill=1)
                out.append((label, np.array(canvas, dtype=bool)))
        for label, rle in self.rle.get(image, []):
            if label in classes:
                decoded = _decode_rle(rle)
                if decoded.shape[:2] == tuple(size):
                    out.append((label, decoded.astype(bool)))
        return out

    def mask(self, image: str, size: tuple[int, int], classes: list[str]) -> np.ndarray:
        """(H, W) class indices painted from the image's polygons and RLE masks (later annotations on top; 0
        elsewhere; RLE decoded with pycocotools)."""
        from PIL import Image, ImageDraw

        canvas = Image.new("L", (size[1], size[0]), 0)
        draw = ImageDraw.Draw(canvas)
        for label, polygons in self.polygons.get(image, []):
            if label not in classes:  # a class the pair does not have: listed by the summary, not painted
                continue
            for polygon in polygons:
                draw.polygon([tuple(polygon[i:i + 2]) for i in range(0, len(polygon) - 1, 2)],
                             fill=classes.index(label))
        painted = np.array(canvas)
        for label, rle in self.rle.get(image, []):
            if label not in classes:
                continue
            decoded = _decode_rle(rle)
            if decoded.shape[:2] == painted.shape:
                painted[decoded.astype(bool)] = classes.index(label)
        return painted
