"""A report's inputs: image folders, uploaded zips (bounded, names sanitised) and COCO-style label files."""

from __future__ import annotations

import json
import os
import unicodedata
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path, PureWindowsPath

import numpy as np

from compare.inputs import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")  # a GIF: its first frame
MAX_ZIP_IMAGES = 500
MAX_ZIP_BYTES = 200 * 2**20  # the uploaded archive
MAX_ZIP_UNPACKED = 1024 * 2**20  # what it may expand to (zip bombs)


def _is_text(name: str) -> bool:
    """Whether a file name is valid UTF-8 (Python holds other bytes as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def list_images(folder: Path, limit: int | None = None) -> list[Path]:
    """Image files directly in ``folder`` (by suffix), sorted by name; any number unless ``limit`` (the tab's zips).
    ``folder`` may also be a glob pattern of files (``demos/examples/photo_*.jpg``). The folder is scanned once and
    only the paths are kept (an image is read when its batch runs)."""
    folder = Path(folder)
    if folder.is_dir():  # a folder whose name holds *, ? or [ is still a folder
        candidates = folder.iterdir()
    elif any(c in str(folder.name) for c in "*?[") and folder.parent.is_dir():
        candidates = folder.parent.glob(folder.name)
    elif folder.suffix.lower() == ".zip" and folder.is_file():
        raise InputError(f"{folder} is a zip: extract it and give its folder (the app's Dataset tab takes a zip as "
                         "it is).")
    else:
        raise InputError(f"{folder} is not a folder of images (or a pattern such as 'DIR/*.jpg').")
    files = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in {folder}.")
    undecodable = [p.name for p in files if not _is_text(p.name)]
    if undecodable:  # the records, labels and report name images in UTF-8: such a name cannot be written or matched
        shown = os.fsencode(undecodable[0]).decode("utf-8", "backslashreplace")
        raise InputError(f"{len(undecodable)} image file name(s) in {folder} are not valid UTF-8 (e.g. '{shown}'): "
                         "rename them (e.g. convmv -f latin1 -t utf8 -r --notest DIR).")
    if limit is not None and len(files) > limit:
        raise InputError(f"{len(files)} images in {folder}; one run takes at most {limit}.")
    return files


def _macos_metadata(member: str) -> bool:
    """A zip member macOS adds (resource forks as AppleDouble ``._name`` files, under ``__MACOSX/``)."""
    parts = member.replace("\\", "/").split("/")
    return "__MACOSX" in parts or parts[-1].startswith("._")


def extract_zip(archive: str | Path, folder: Path, originals: dict[str, str] | None = None) -> list[str]:
    """Unpack the images of an uploaded zip into ``folder`` under sanitised flat names; returns notes, and fills
    ``originals`` (when given) with each unpacked file's name in the archive, by its name on disk.

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
        apple = [m for m in members if _macos_metadata(m.filename)]
        if apple:  # what macOS's Compress adds beside each file: not images, whatever their names say
            notes.append(f"{len(apple)} macOS metadata files (__MACOSX/, ._*) were skipped.")
            members = [m for m in members if not _macos_metadata(m.filename)]
        images = [m for m in members if Path(m.filename).suffix.lower() in IMAGE_SUFFIXES]
        if len(members) > len(images):
            notes.append(f"{len(members) - len(images)} files that are not images (by suffix) were skipped.")
        if not images:
            raise InputError("The archive holds no images (png, jpg, webp, bmp, tif, gif).")
        if len(images) > MAX_ZIP_IMAGES:
            raise InputError(f"The archive holds {len(images)} images; the tab takes at most {MAX_ZIP_IMAGES} "
                             "(the command line takes more: python -m reports.dataset).")
        if sum(m.file_size for m in images) > MAX_ZIP_UNPACKED:
            raise InputError(f"The images would unpack to more than {MAX_ZIP_UNPACKED // 2**20} MB.")
        folder.mkdir(parents=True, exist_ok=True)
        budget = MAX_ZIP_UNPACKED  # counted on the bytes actually read: an archive's declared sizes may lie
        # Names that sanitise alike must not be guessed between (a label file names the originals): a file already
        # named safely keeps its name and the others are skipped; several others alone are all skipped.
        by_safe: dict[str, list[str]] = {}
        for member in images:
            by_safe.setdefault(safe_name(Path(member.filename).name), []).append(Path(member.filename).name)
        for member in images:
            original = Path(member.filename).name
            name = safe_name(original)
            clash = by_safe[name]
            if name in names or name.lstrip("._") == "" or name.lower() in {s.lstrip(".") for s in IMAGE_SUFFIXES}:
                notes.append(f"{member.filename[:80]}: " + (f"a second file named {name}, skipped." if name in names
                                                           else "no usable file name, skipped."))
                continue
            if len(set(clash)) > 1 and original != name:
                others = ", ".join(sorted({c for c in clash if c != original}))[:120]
                notes.append(f"{member.filename[:80]}: its name becomes {name} when made safe, as {others} does; "
                             "skipped (rename one of them).")
                continue
            names.add(name)
            if originals is not None:
                originals[name] = original
            try:
                budget -= _unpack(bundle, member, folder / name, budget)
            except _Unreadable as error:
                (folder / name).unlink(missing_ok=True)
                names.discard(name)
                if originals is not None:
                    originals.pop(name, None)
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
    """A flat file name of letters, digits, ``-``, ``_`` and ``.``; never empty, never hidden. Composed first (NFC:
    ``é`` one character, as macOS's decomposed ``e`` + accent is not), so both spellings give one name."""
    name = unicodedata.normalize("NFC", name)
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-120:].lstrip(".")
    return cleaned or "image"


def _file_name(value) -> str:
    """A label file's ``file_name`` as the name of the file: its last part, after ``/`` or ``\\`` (a Windows path,
    ``C:\\val\\x.png``). Raises TypeError for anything but a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"a file_name of {value!r}: each image needs its file's name")
    name = Path(value).name
    return PureWindowsPath(name).name if "\\" in name else name


def _aliases(name: str) -> set[str]:
    """Other names the file a label names may have: sanitised as an uploaded zip's images are unpacked
    (:func:`safe_name`), and its accents composed or decomposed (NFC, as most systems write, and NFD, as macOS's
    file system did)."""
    return {safe_name(name), unicodedata.normalize("NFC", name), unicodedata.normalize("NFD", name)} - {name}


def _crowd_flag(value) -> bool:
    """COCO's ``iscrowd``: 0 or 1 (``"0"``/``"1"`` and booleans read alike); anything else is refused (a string
    such as ``"0"`` read by truth would make every object a crowd region)."""
    if value in (0, 1, "0", "1"):
        return bool(int(value))
    raise ValueError(f"its iscrowd {str(value)[:20]!r} is not 0 or 1")


def _decode_rle(rle: dict) -> np.ndarray:
    """A COCO RLE mask (compressed, or uncompressed ``counts`` list) -> (H, W) uint8, with pycocotools."""
    from pycocotools import mask as coco_mask

    encoded = coco_mask.frPyObjects(rle, *rle["size"]) if isinstance(rle["counts"], list) else rle
    return coco_mask.decode(encoded)


def _check_rle(rle: dict) -> None:
    """Raise ValueError unless ``rle`` is a COCO RLE pycocotools can decode: ``size`` [H, W] of positive integers,
    ``counts`` a compressed string or a list of non-negative run lengths covering exactly H·W pixels."""
    if not {"counts", "size"} <= set(rle):
        raise ValueError("an RLE segmentation needs 'counts' and 'size'")
    size = rle["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"an RLE 'size' is [height, width] in pixels, not {str(size)[:40]}")
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(isinstance(v, int) and v >= 0 for v in counts) or sum(counts) != size[0] * size[1]:
            raise ValueError(f"uncompressed RLE counts must be run lengths summing to {size[0]}×{size[1]} pixels")
    elif isinstance(counts, str):
        _decode_rle(rle)  # pycocotools: "Invalid RLE mask representation" (a ValueError) when it is not one
    else:
        raise ValueError("RLE 'counts' is a string (compressed) or a list of run lengths")


def _polygon_mask(polygons: list[list[float]], size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool of COCO polygons, rasterised as COCO's own tools do (pycocotools; the same pixels as its
    ``annToMask``, so polygon and RLE labels of one mask give the same figures)."""
    from pycocotools import mask as coco_mask

    return coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polygons, *size))).astype(bool)


def _box_polygon(box: list[float]) -> list[list[float]]:
    """An xyxy box as a COCO polygon (one ring of its four corners)."""
    x0, y0, x1, y1 = box
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def match_class(label: str, classes: list[str]) -> str | None:
    """The pair's spelling of a label's class: the same name, else the one name equal to it ignoring case and
    surrounding spaces; None when the pair has no such class."""
    if label in classes:
        return label
    folded = [c for c in classes if c.strip().casefold() == label.strip().casefold()]
    return folded[0] if len(folded) == 1 else None


# Labels' tables keyed by image name (what an alias of a name shares, and what for_images filters)
PER_IMAGE = ("boxes", "polygons", "rle", "classes", "crowd_boxes", "ignored", "unmasked")


@dataclass
class Labels:
    """Ground truth from a COCO-style file, keyed by image file name.

    ``listed``: every image the file lists (an image it lists without annotations has no object, as in COCO; an
    image it does not list is unlabelled and left out of the accuracy figures). Crowd annotations (``iscrowd: 1``) are
    regions to ignore, as COCO evaluates them: ``crowd_boxes`` for detection, ``ignored`` masks for segmentation.
    """

    boxes: dict[str, list[tuple[str, list[float]]]] = field(default_factory=dict)  # name -> [(class, xyxy)]
    polygons: dict[str, list[tuple[str, list[list[float]]]]] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)  # name -> class (classification)
    rle: dict[str, list[tuple[str, dict]]] = field(default_factory=dict)  # name -> [(class, COCO RLE)]
    listed: set[str] = field(default_factory=set)
    crowd_boxes: dict[str, list[tuple[str, list[float]]]] = field(default_factory=dict)
    ignored: dict[str, list[tuple[str, list[list[float]] | dict]]] = field(default_factory=dict)  # polygons or RLE
    aliases: dict[str, str] = field(default_factory=dict)  # another name an image may have -> the name the file gives
    skipped: dict[str, int] = field(default_factory=dict)  # class -> annotations of it left out (not the pair's)
    unmasked: dict[str, list[tuple[str, list[float]]]] = field(default_factory=dict)  # boxes without a mask
    mixed: set[str] = field(default_factory=set)  # images whose annotations name two or more classes

    @classmethod
    def read(cls, path: Path) -> Labels:
        """Read a COCO-style file: ``images`` (``id``, ``file_name``), ``categories`` (``id``, ``name``) and
        ``annotations`` (``image_id``, ``category_id``, and ``bbox`` ``[x, y, w, h]``, ``segmentation`` polygons or
        RLE (compressed or not), or only the category for classification; ``iscrowd`` 1 marks a crowd region).

        Raises:
            InputError: a file that is not such JSON, naming what is wrong and where (the annotation's id): an unknown
                image or category, a box that is not four finite numbers with non-negative width and height, a
                polygon of under three points, an RLE that does not decode.
        """
        name = Path(path).name
        try:
            coco = json.loads(Path(path).read_text(encoding="utf-8-sig"))  # a byte-order mark (Windows) is fine
        except RecursionError:
            raise InputError(f"The labels {name} are nested too deeply to be COCO-style JSON.") from None
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise InputError(f"Could not read the labels {name} as JSON ({str(error)[:120]}).") from None
        if not isinstance(coco, dict):
            raise InputError(f"The labels {name} are not COCO-style: the file holds a JSON {type(coco).__name__}, not "
                             "an object with 'images', 'categories' and 'annotations' lists.")
        missing = [key for key in ("images", "categories") if not isinstance(coco.get(key), list)]
        if missing:
            raise InputError(f"The labels {name} are not COCO-style: {' and '.join(repr(k) for k in missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} missing or not a list (they need 'images' (id, "
                             "file_name) and 'categories' (id, name) lists, and 'annotations').")
        try:
            files = {im["id"]: _file_name(im["file_name"]) for im in coco["images"]}
            names = {c["id"]: str(c["name"]) for c in coco["categories"]}
            annotations = coco.get("annotations", [])
            if not isinstance(annotations, list):
                raise TypeError("'annotations' is not a list")
            repeated = [("image id", [im["id"] for im in coco["images"]]),
                        ("category id", [c["id"] for c in coco["categories"]]),
                        ("image file_name", list(files.values()))]
        except (KeyError, TypeError, AttributeError) as error:
            raise InputError(f"The labels {name} are not COCO-style: they need 'images' (id, file_name) and "
                             f"'categories' (id, name) lists ({str(error)[:80]}).") from None
        for what, values in repeated:  # which annotation belongs where would be a guess
            seen: set = set()
            twice = [v for v in values if v in seen or seen.add(v)]
            if twice:
                more = f" (and {len(twice) - 1} more)" if len(twice) > 1 else ""
                raise InputError(f"The labels {name} give the {what} {twice[0]!r} twice{more}: each image and "
                                 "category needs its own id, each image file one entry.")
        labels = cls(listed=set(files.values()))
        for k, a in enumerate(annotations):
            where = f"annotation {a.get('id', k) if isinstance(a, dict) else k}"
            try:
                image, label = files[a["image_id"]], names[a["category_id"]]
                crowd = _crowd_flag(a.get("iscrowd", 0))
                if "bbox" in a:
                    if not isinstance(a["bbox"], list) or len(a["bbox"]) != 4:
                        raise ValueError(f"its bbox {str(a['bbox'])[:60]} is not [x, y, width, height]")
                    x, y, w, h = (float(v) for v in a["bbox"])
                    if not all(np.isfinite([x, y, w, h])) or w < 0 or h < 0:
                        raise ValueError(f"its bbox {a['bbox']} is not [x, y, width, height] of finite numbers "
                                         "with width, height >= 0")
                    table = labels.crowd_boxes if crowd else labels.boxes
                    table.setdefault(image, []).append((label, [x, y, x + w, y + h]))
                segmentation = a.get("segmentation")
                if isinstance(segmentation, dict):
                    _check_rle(segmentation)
                    shape = segmentation
                elif segmentation:
                    shape = [[float(v) for v in polygon] for polygon in segmentation]
                    if any(len(p) < 6 or len(p) % 2 or not np.all(np.isfinite(p)) for p in shape):
                        raise ValueError("a polygon needs at least three x, y points of finite numbers")
                if segmentation and crowd:
                    labels.ignored.setdefault(image, []).append((label, shape))
                elif isinstance(segmentation, dict):
                    labels.rle.setdefault(image, []).append((label, shape))
                elif segmentation:
                    labels.polygons.setdefault(image, []).append((label, shape))
                elif "bbox" in a and crowd:  # a crowd box with no mask: an ignored region for segmentation too
                    labels.ignored.setdefault(image, []).append((label, _box_polygon([x, y, x + w, y + h])))
                elif "bbox" in a:  # a box with no mask: for segmentation, a region to ignore
                    labels.unmasked.setdefault(image, []).append((label, [x, y, x + w, y + h]))
                if not crowd and labels.classes.setdefault(image, label) != label:
                    labels.mixed.add(image)  # two classes on one image: no single class for classification
            except KeyError as error:
                raise InputError(f"The labels {name}: {where} names an unknown image or category "
                                 f"({str(error)[:40]}).") from None
            except (TypeError, ValueError, AttributeError) as error:
                raise InputError(f"The labels {name}: {where} is not COCO-style ({str(error)[:100]}).") from None
        tables = [getattr(labels, key) for key in PER_IMAGE]
        originals = set(files.values())
        by_alias: dict[str, list[str]] = {}
        for original in originals:  # the names an image of the file may have on disk
            for alias in _aliases(original):
                by_alias.setdefault(alias, []).append(original)
        for safe, group in by_alias.items():
            if safe in originals or len(group) > 1:  # taken by an image of that very name, or ambiguous: no guess
                continue
            labels.listed.add(safe)
            labels.aliases[safe] = group[0]
            if group[0] in labels.mixed:
                labels.mixed.add(safe)
            for table in tables:
                if group[0] in table:
                    table[safe] = table[group[0]]
        return labels

    def for_images(self, names: set[str], originals: dict[str, str] | None = None) -> Labels:
        """These labels for a run over images of these ``names``: an alias (a sanitised or differently composed
        name, :meth:`read`) stands for the file the labels name only where that file is not among the images; where
        both are, the alias is another image, which the file does not label (found by a review: it got the other
        image's objects). ``originals``: each image's name before it was made safe (an uploaded zip's, as
        :func:`extract_zip` records them): then an alias stands for exactly the file it was unpacked from. Returns
        new labels (sharing the per-image lists), or these when nothing changes."""
        wrong = {alias for alias, original in self.aliases.items() if alias in names and (
            original in names if originals is None
            else unicodedata.normalize("NFC", originals.get(alias, alias)) != unicodedata.normalize("NFC", original))}
        if not wrong:
            return self
        return replace(self, listed=self.listed - wrong, mixed=self.mixed - wrong,
                       aliases={a: o for a, o in self.aliases.items() if a not in wrong},
                       **{key: {image: v for image, v in getattr(self, key).items() if image not in wrong}
                          for key in PER_IMAGE})

    def for_classes(self, classes: list[str], task: str) -> Labels:
        """These labels as a pair with ``classes`` can be measured against: each class named as the pair names it
        (the same name ignoring case); annotations of other classes are left out and counted, per class, in
        ``skipped`` (those ``task`` reads: boxes for detection, masks for segmentation, one class per image
        otherwise). For segmentation their regions are ignored, neither right nor wrong; for classification the
        image is unlabelled."""
        out = Labels(listed=set(self.listed), ignored={k: list(v) for k, v in self.ignored.items()})
        out.crowd_boxes = {image: [(match_class(label, classes) or label, box) for label, box in items]
                           for image, items in self.crowd_boxes.items()}  # crowd regions of any class stay ignored

        def skip(label: str) -> None:
            out.skipped[label] = out.skipped.get(label, 0) + 1

        for table, target, counted in ((self.boxes, out.boxes, task == "detection"),
                                       (self.polygons, out.polygons, task == "segmentation"),
                                       (self.rle, out.rle, task == "segmentation")):
            for image, items in table.items():
                for label, value in items:
                    match = match_class(label, classes)
                    if match is not None:
                        target.setdefault(image, []).append((match, value))
                        continue
                    if counted:
                        skip(label)
                    if target is not out.boxes:
                        out.ignored.setdefault(image, []).append((label, value))
        out.mixed = set(self.mixed)
        for image, label in self.classes.items():
            match = match_class(label, classes)
            if task not in ("detection", "segmentation") and image in self.mixed:
                continue  # two classes on one image: unlabelled for classification (``mixed``, noted)
            if match is not None:
                out.classes[image] = match
            elif task not in ("detection", "segmentation"):
                skip(label)
        if task == "segmentation":  # an object labelled by its box alone: its box is ignored, not background
            out.unmasked = {image: list(items) for image, items in self.unmasked.items()}
            for image, items in self.unmasked.items():
                out.ignored.setdefault(image, []).extend((label, _box_polygon(box)) for label, box in items)
        return out

    def _paint(self, shape, size: tuple[int, int]) -> np.ndarray:
        """One annotation's (H, W) bool mask: polygons as COCO rasterises them, or an RLE; ValueError when an RLE's
        size is not the image's."""
        if isinstance(shape, dict):
            decoded = _decode_rle(shape)
            if decoded.shape[:2] != tuple(size):
                raise ValueError(f"an RLE mask of {decoded.shape[0]}×{decoded.shape[1]} pixels on an image of "
                                 f"{size[0]}×{size[1]}")
            return decoded.astype(bool)
        return _polygon_mask(shape, size)

    def objects(self, image: str, size: tuple[int, int], classes: list[str],
                keep_empty: bool = False) -> list[tuple[str, np.ndarray]]:
        """Each labelled object of the image as ``(class, (H, W) bool mask)``, in the file's order (polygons, then
        RLE); objects of classes the pair does not have, "background" (a region, not an object), crowd regions and
        (unless ``keep_empty``) objects with no pixel inside the image are left out.

        Raises:
            ValueError: an RLE mask of another size than the image's (naming both).
        """
        painted = [(label, self._paint(shape, size)) for table in (self.polygons, self.rle)
                   for label, shape in table.get(image, []) if label in classes and label != "background"]
        return painted if keep_empty else [(label, mask) for label, mask in painted if mask.any()]

    def mask(self, image: str, size: tuple[int, int], classes: list[str]) -> np.ndarray:
        """(H, W) class indices painted from the image's polygons and RLE masks (background regions first, then the
        others in the file's order, later on top; 0 elsewhere), polygons rasterised as COCO does, RLE decoded with
        pycocotools.

        Raises:
            ValueError: an RLE mask of another size than the image's.
        """
        painted = np.zeros(size, dtype=np.int64)
        items = [item for table in (self.polygons, self.rle) for item in table.get(image, [])]
        items.sort(key=lambda item: item[0] != "background")  # a background region first, never over the objects
        for label, shape in items:
            if label in classes:  # a class the pair does not have: left out (``skipped``, ignored regions)
                painted[self._paint(shape, size)] = classes.index(label)
        return painted

    def ignore_mask(self, image: str, size: tuple[int, int]) -> np.ndarray:
        """(H, W) bool: the pixels no figure counts (crowd regions, and regions of classes the pair lacks)."""
        ignored = np.zeros(size, dtype=bool)
        for _, shape in self.ignored.get(image, []):
            ignored |= self._paint(shape, size)
        return ignored
