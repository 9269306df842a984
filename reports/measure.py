"""One batch of the dataset report: images through the engine (one forward of each model per image, images of one
shape as one batch), each image's record, and what the batch adds to the dataset's figures across images (CKA's
HSIC terms, embeddings)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from analysis.cka import MIN_SAMPLES, MinibatchCKA
from analysis.consensus import pool_to, reading_maps
from analysis.features import Stage, match_stages, stack_images
from compare.inputs import InputError, read_image
from compare.vision import VisionRequest, run_vision
from compare.zero_shot import check_template, parse_classes, zero_shot
from reports.aggregate import _class_pixels, _overlap, object_found
from reports.inputs import Labels
from weights.registry import Pair, Student

CKA_GRID = (8, 8)  # every stage pooled to this grid per image, so images of any size share one representation
EMBEDDING_DIMS = 32  # the deepest stage's pooled features, projected to this many numbers per image


@dataclass
class Analysed:
    """One image of a batch: its ``results.jsonl`` record, its ``timing.jsonl`` record (None if unreadable) and, for
    segmentation, its class maps by model (for the gallery)."""

    record: dict
    timing: dict | None = None
    maps: dict[str, np.ndarray] | None = None


def read_batch(paths: list[Path]) -> list[tuple[np.ndarray, list[str]] | InputError]:
    """Each file decoded (:func:`compare.inputs.read_image`), or the error that made it unusable."""
    out: list[tuple[np.ndarray, list[str]] | InputError] = []
    for path in paths:
        try:
            out.append(read_image(str(path)))
        except InputError as error:
            out.append(error)
    return out


def analyse_batch(paths: list[Path], spec: Pair, chosen: list[Student], predictors: dict, threshold: float,
                  classes: str, labels: Labels | None, batch_index: int = 0, accuracy_threshold: float | None = None,
                  read: list | None = None) -> tuple[list[Analysed], dict | None]:
    """A batch of images through the engine; unreadable files get an error record and never stop the batch.
    ``read``: the files already decoded by :func:`read_batch` (the report decodes the next batch meanwhile).

    Returns:
        ``(per image, cka)``: an :class:`Analysed` per path, in order; and the batch's CKA terms (see
        :func:`cka_terms`; None for CLIP pairs or under four readable images).
    """
    arrays, notes, readable = [], [], []
    out: list[Analysed | None] = [None] * len(paths)
    for i, (path, decoded) in enumerate(zip(paths, read or read_batch(paths), strict=True)):
        if isinstance(decoded, InputError):  # unreadable or unusable file: listed, never fatal
            out[i] = Analysed({"image": path.name, "error": str(decoded)})
            continue
        array, image_notes = decoded
        arrays.append(array)
        notes.append(image_notes)
        readable.append(i)
    cka = None
    if arrays and spec.task == "classification":
        names, class_notes = parse_classes(classes)
        results = zero_shot(spec, chosen, predictors, arrays, names, check_template(""), "",
                            [class_notes + n for n in notes], latency=False)
        # each tower's image embedding as a one-cell "stage": the embedding view and CKA across the images
        stages = {name: [[Stage("image embedding", 1, r.image_features[name][None, :, None, None])] for r in results]
                  for name in ["teacher", *(s.name for s in chosen)]}
        embedded = {name: embeddings(images) for name, images in stages.items()}
        for k, (i, result) in enumerate(zip(readable, results, strict=True)):
            record, timing = clip_record(paths[i].name, result.to_json())
            record["teacher"]["embedding"] = embedded["teacher"][k]
            for s in chosen:
                record["students"][s.name]["embedding"] = embedded[s.name][k]
            out[i] = Analysed(record, timing)
        if len(arrays) >= MIN_SAMPLES:
            cka = cka_terms(stages, [s.name for s in chosen], batch_index)
    elif arrays:
        stages: dict = {}
        pooled = PooledMaps(CKA_GRID)  # CKA's pooled maps, made as the consensus reads each map (still in cache)
        with reading_maps(pooled.add):
            results = run_vision(VisionRequest(spec, chosen, arrays, notes, threshold, latency=False, consensus=True,
                                               overlays=False,
                                               accuracy_threshold=accuracy_threshold if labels else None),
                                 predictors, stages)
        embedded = {name: embeddings(images) for name, images in stages.items()}
        for k, (i, result) in enumerate(zip(readable, results, strict=True)):
            record, timing, maps = vision_record(paths[i], result, spec, labels, arrays[k].shape[:2])
            for name in ["teacher", *(s.name for s in chosen)]:
                block = record["teacher"] if name == "teacher" else record["students"][name]
                block["embedding"] = embedded[name][k]
            out[i] = Analysed(record, timing, maps)
        if len(arrays) >= MIN_SAMPLES:
            cka = cka_terms(stages, [s.name for s in chosen], batch_index, pooled)
    return out, cka


def clip_record(name: str, report: dict) -> tuple[dict, dict]:
    top = max(report["teacher"]["probs"], key=report["teacher"]["probs"].get)
    record = {"image": name, "teacher": {"top1": top, "confidence": report["teacher"]["probs"][top]},
              "students": {n: {"agreement": b["agreement"], "disagreement": b["agreement"]["js"],
                               "top1": max(b["probs"], key=b["probs"].get), "confidence": max(b["probs"].values())}
                           for n, b in report["students"].items()}}
    return record, timing_of(name, report)


def timing_of(name: str, report: dict) -> dict:
    return {"image": name, "teacher_ms": report["teacher"]["this_run_ms"],
            "students_ms": {n: b["this_run_ms"] for n, b in report["students"].items()}}


def vision_record(path: Path, result, spec: Pair, labels: Labels | None, size: tuple[int, int] | None = None,
                  ) -> tuple[dict, dict, dict[str, np.ndarray] | None]:
    """The record of one detection, segmentation or image-classification comparison (with its labels' figures);
    ``size``: the image's (height, width), to count labelled boxes with no area inside it."""
    report = result.to_json()
    record: dict = {"image": path.name}
    maps = None
    if spec.task == "image-classification":
        record["teacher"] = {"top1": report["teacher"]["top5"][0]["label"],
                             "confidence": report["teacher"]["top5"][0]["prob"],
                             "top5": [e["label"] for e in report["teacher"]["top5"]]}
        record["students"] = {n: {"agreement": b["agreement"], "disagreement": b["agreement"]["js"],
                                  "top1": b["top5"][0]["label"], "confidence": b["top5"][0]["prob"],
                                  "top5": [e["label"] for e in b["top5"]]}
                              for n, b in report["students"].items()}
    elif spec.task == "detection":
        record["teacher"] = {"detections": report["teacher"]["detections"]}
        record["students"] = {n: {"agreement": b["agreement"], "disagreement": round(1 - b["agreement"]["f1"], 4),
                                  "detections": b["detections"]} for n, b in report["students"].items()}
        if result.all_detections is not None:  # with labels: every box down to the accuracy threshold, for mAP
            for name, found in result.all_detections.items():
                block = record["teacher"] if name == "teacher" else record["students"][name]
                block["detections_for_accuracy"] = found.to_dict()  # columns
        if labels is not None and size is not None and path.name in labels.listed:
            # a box with no area inside the image: no model can find it, so it counts as missed (as in COCO)
            outside = sum(_area_inside(box, size) <= 0 for _, box in labels.boxes.get(path.name, []))
            if outside:
                record["labels_outside"] = outside
    else:
        maps = result.arrays()
        classes = report["classes"]
        record["teacher"] = {"pixels": _class_pixels(maps["teacher"], classes)}
        record["students"] = {n: {"agreement": b["agreement"], "disagreement": round(1 - b["agreement"]["miou"], 4)}
                              for n, b in report["students"].items()}
        if labels is not None and path.name in labels.listed:  # an image the file does not list is unlabelled
            size = maps["teacher"].shape
            try:
                truth, ignore = labels.mask(path.name, size, classes), labels.ignore_mask(path.name, size)
                painted = labels.objects(path.name, size, classes, keep_empty=True)
                objects = [(label, mask) for label, mask in painted if mask.any()]
                if len(painted) > len(objects):  # objects with no pixel inside the image: left out, and counted
                    record["labels_outside"] = len(painted) - len(objects)
            except ValueError as error:  # e.g. an RLE mask of another size: this image's labels only, never fatal
                record["labels_error"] = f"its labels do not fit the image: {error}"
                objects = None
            for name in ["teacher", *record["students"]] if objects is not None else []:
                block = record["teacher"] if name == "teacher" else record["students"][name]
                block["vs_labels"] = _overlap(maps[name], truth, len(classes), ignore)
                found = [object_found(maps[name], mask, classes.index(label)) for label, mask in objects]
                if name == "teacher":
                    block["objects"] = [{"label": label, "found": f} for (label, _), f in zip(objects, found,
                                                                                             strict=True)]
                else:
                    block["objects_found"] = found
    for name, figures in result.analysis.summary().items():
        record["students"][name]["consensus"] = figures
    return record, timing_of(path.name, report), maps


def _area_inside(box: list[float], size: tuple[int, int]) -> float:
    """Pixels² of an xyxy box inside an image of (height, width)."""
    height, width = size
    return max(0.0, min(box[2], width) - max(box[0], 0.0)) * max(0.0, min(box[3], height) - max(box[1], 0.0))


def _per_batch(maps: list[torch.Tensor], op) -> torch.Tensor:
    """``op`` of one stage of the batch's images, (1, C, h_i, w_i) each, stacked along the batch: in one call when
    the images share a shape (the usual batch, a view of the forward's output), else image by image (``op`` must
    bring every image to one shape)."""
    if all(m.shape == maps[0].shape for m in maps):
        return op(stack_images(maps).float())
    return torch.cat([op(m.float()) for m in maps])


class PooledMaps:
    """Stage maps pooled to ``grid`` as :func:`analysis.consensus.reading_maps` hands them over, found again by what
    they are a view of (storage, offset, shape, strides, dtype) when the same batch's stage is stacked again: the
    pooling (:func:`pool_to` of the map as float32, as :meth:`stage` pools a map not handed over) then costs what
    it costs on a map in cache.

    Each entry keeps the map it was pooled from, so that its memory cannot be freed and given to another map of the
    same shape while this object lives (a temporary the consensus stacked from two forwards' batches, then dropped,
    would otherwise hand its pooled numbers to whichever map came to lie there), and the map's version counter, so
    that a map written into since is pooled again.
    """

    def __init__(self, grid: tuple[int, int]):
        self.grid = tuple(grid)
        self.maps: dict[tuple, tuple[torch.Tensor, int, torch.Tensor]] = {}

    @staticmethod
    def _key(features: torch.Tensor) -> tuple:
        return (features.device, features.untyped_storage().data_ptr(), features.storage_offset(),
                tuple(features.shape), features.stride(), features.dtype)

    def add(self, features: torch.Tensor) -> None:
        """Pool a (B, C, h, w) map and keep it with the result; anything else (or an inference tensor, which keeps
        no version counter) is left to be pooled when asked for."""
        if features.dim() != 4 or features.is_inference():
            return
        self.maps[self._key(features)] = (features, features._version, pool_to(features.float(), self.grid))

    def get(self, features: torch.Tensor) -> torch.Tensor | None:
        """The pooled (B, C, *grid) float32 map of ``features`` (the same memory, shape and strides as a map added),
        or None: never added, or written into since."""
        found = self.maps.get(self._key(features))
        if found is None or found[0]._version != found[1]:
            return None
        return found[2]

    def stage(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """One stage of the batch's images, (1, C, h_i, w_i) each -> (n, C, *grid) float32: as pooled when the
        consensus read it, else pooled now."""
        if all(m.shape == maps[0].shape for m in maps):
            found = self.get(stack_images(maps))
            if found is not None:
                return found
        return _per_batch(maps, lambda x: pool_to(x, self.grid))


def cka_terms(stages: dict[str, list[list]], students: list[str], batch_index: int,
              pooled: PooledMaps | None = None) -> dict:
    """The batch's unbiased HSIC terms between the teacher's and each student's matched stages (each stage pooled to
    :data:`CKA_GRID` per image), and against the student's features of other images of the batch (a permutation
    seeded by the batch's index, so any split of the run gives the same terms). Summed over batches they give
    minibatch CKA (:class:`analysis.cka.MinibatchCKA`). ``pooled``: maps the consensus already pooled (the same
    numbers, cheaper)."""
    pooled = pooled if pooled is not None else PooledMaps(CKA_GRID)
    out = {}
    for name in students:
        pairs = match_stages(stages["teacher"][0], stages[name][0])
        at_t = {s.name: k for k, s in enumerate(stages["teacher"][0])}  # every image's stages come in one order
        at_s = {s.name: k for k, s in enumerate(stages[name][0])}
        teacher = [pooled.stage([image[at_t[t.name]].features for image in stages["teacher"]]) for t, _ in pairs]
        student = [pooled.stage([image[at_s[st.name]].features for image in stages[name]]) for _, st in pairs]
        cka = MinibatchCKA(torch.Generator().manual_seed(batch_index))
        cka.update(teacher, student)
        terms = torch.stack([cka.cross.flatten(), cka.cross_shuffled.flatten()]).cpu()  # the one read-back
        selves = torch.cat([cka.self_t, cka.self_s]).cpu()
        out[name] = {"teacher_layers": [_layer(t) for t, _ in pairs], "student_layers": [_layer(s) for _, s in pairs],
                     "cross": terms[0].reshape(len(pairs), len(pairs)).tolist(),
                     "cross_shuffled": terms[1].reshape(len(pairs), len(pairs)).tolist(),
                     "self_t": selves[: len(pairs)].tolist(), "self_s": selves[len(pairs):].tolist(),
                     "images": len(stages["teacher"])}
    return out


def _layer(stage: Stage) -> str:
    """A stage as the report names it: with its stride, where it is a map (a CLIP tower's embedding is not)."""
    return f"{stage.name} (/{stage.stride})" if stage.stride > 1 else stage.name


def embeddings(images: list[list]) -> list[list[float]]:
    """Each image's embedding for the report's map: its deepest stage's features averaged over locations, projected
    to :data:`EMBEDDING_DIMS` numbers by a fixed Gaussian projection (Johnson-Lindenstrauss; seeded by the width, so
    the same model always projects alike). ``images``: per image, one model's stages (the deepest last, (1, C, h, w));
    one read-back for the batch."""
    deepest = _per_batch([stages[-1].features for stages in images], lambda x: x.mean((-2, -1)))  # (n, C)
    # in float64, so the rounded numbers do not depend on the product's kernel (which varies with the batch's size)
    projected = (deepest.double() @ _projection(deepest.shape[1]).to(deepest.device).double()).cpu().numpy()
    return [[round(v, 4) for v in row] for row in projected.tolist()]


@functools.lru_cache(maxsize=16)
def _projection(width: int) -> torch.Tensor:
    """(width, EMBEDDING_DIMS) float32 Gaussian projection, the same for every image of that width."""
    return torch.randn(width, EMBEDDING_DIMS, generator=torch.Generator().manual_seed(width)) / EMBEDDING_DIMS ** 0.5
