"""The pictures of a report's gallery without a second forward: detections are drawn from the records; the class
maps of a segmentation run's images of largest disagreement are kept on disk while the run goes, a bounded few per
process (:class:`GalleryStore`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from compare.drawing import draw_detections, draw_mask
from compare.inputs import InputError, read_image
from weights.predictors import Detection


def rank_key(record: dict, student: str) -> tuple[bool, float, str]:
    """The summary's order of largest disagreement: highest first, then by image name."""
    value = record["students"][student]["disagreement"]
    return (value is None, -(value or 0.0), record["image"])  # an undefined disagreement ranks last


class GalleryStore:
    """Keeps, in ``folder``, the class maps of the ``size`` images this process has seen with the largest
    disagreement (the summary's order); files of images that drop out are deleted, so the folder stays bounded.

    Across processes each keeps its own images' top ``size``; the run's top ``size`` is among their union.
    """

    def __init__(self, folder: Path, size: int, student: str, records: list[dict], mine: set[str]):
        self.folder, self.size, self.student = folder, size, student
        folder.mkdir(parents=True, exist_ok=True)
        done = {r["image"]: r for r in records if "error" not in r and r["image"] in mine}
        present = {p.name for p in folder.glob("*.npz")}  # a resumed run adopts what it kept before
        self.kept = {name: rank_key(record, student) for name, record in done.items()
                     if maps_file(folder, name).name in present}

    def offer(self, record: dict, maps: dict[str, np.ndarray]) -> None:
        """Keep this image's maps if it is among the ``size`` largest disagreements so far."""
        if self.size <= 0 or "error" in record:
            return
        key = rank_key(record, self.student)
        if len(self.kept) >= self.size:
            worst = max(self.kept, key=self.kept.get)
            if key >= self.kept[worst]:
                return
            maps_file(self.folder, worst).unlink(missing_ok=True)
            del self.kept[worst]
        np.savez_compressed(maps_file(self.folder, record["image"]), **maps)
        self.kept[record["image"]] = key


def maps_file(folder: Path, image: str) -> Path:
    """Where an image's kept maps go: named by a hash of the image's name (a name of 255 bytes, or of any bytes,
    cannot take a suffix as a file name)."""
    return folder / f"{hashlib.sha256(os.fsencode(image)).hexdigest()[:32]}.npz"


def kept_maps(folder: Path, image: str) -> dict[str, np.ndarray] | None:
    path = maps_file(folder, image)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as maps:
        return {k: maps[k] for k in maps.files}


def overlays(path: Path, record: dict, task: str, students: list[str], labels: list[str], classes: list[str],
             maps: dict[str, np.ndarray] | None) -> list[tuple[str, np.ndarray]]:
    """Teacher and each student's boxes or masks over one image, from its record (detection) or its kept class
    maps (segmentation); for classification the image once, captioned with each model's top-1; the image alone when
    its maps were not kept."""
    import torch

    try:
        array = read_image(str(path))[0]
    except InputError:
        return []
    names = ["teacher", *students]
    if task == "detection":
        def boxes(name):
            side = record["teacher"] if name == "teacher" else record["students"][name]
            return [Detection(d["label"], d["score"], d["box"]) for d in side["detections"]]
        return [(name, draw_detections(array, boxes(name), labels)) for name in names]
    if task == "segmentation" and maps is not None:
        return [(name, draw_mask(array, torch.from_numpy(maps[name]), len(classes))) for name in names]
    if "top1" in record.get("teacher", {}):  # a classifier: the image once, captioned with each model's top-1
        sides = [record["teacher"], *(record["students"][n] for n in students)]
        return [(" · ".join(f"{name}: {side['top1']}" for name, side in zip(names, sides, strict=True)), array)]
    return [("image", array)]
