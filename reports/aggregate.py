"""Aggregates of a dataset run: pure functions of its records, so any split of the work gives the same summary."""

from __future__ import annotations

import math
import statistics

import numpy as np
import torch

from reports.gallery import rank_key
from reports.inputs import Labels
from weights.predictors import BoxArrays


def _class_pixels(class_map: np.ndarray, classes: list[str]) -> dict[str, int]:
    counts = np.bincount(class_map.ravel(), minlength=len(classes))
    return {classes[i]: int(c) for i, c in enumerate(counts) if c}


def _overlap(prediction: np.ndarray, truth: np.ndarray, num_classes: int,
             ignore: np.ndarray | None = None) -> dict[str, list[int]]:
    """Per-class intersection and union with the labels (summed over images, they give the dataset's mIoU); pixels
    where ``ignore`` is set (crowd regions, classes the pair lacks) count for nothing."""
    keep = slice(None) if ignore is None else ~ignore.ravel()
    p = torch.from_numpy(prediction.astype(np.int64).ravel()[keep])
    t = torch.from_numpy(truth.astype(np.int64).ravel()[keep])
    inter = torch.bincount(t[p == t], minlength=num_classes)
    truth_pixels = torch.bincount(t, minlength=num_classes)
    union = torch.bincount(p, minlength=num_classes) + truth_pixels - inter
    return {"intersection": inter.tolist(), "union": union.tolist(), "truth": truth_pixels.tolist()}


RESAMPLES = 1000  # bootstrap resamples of the images
SEED = 0  # a fixed generator: the same records give the same intervals, however the run was split


def resamples_of(n: int, resamples: int = RESAMPLES, seed: int = SEED, chunk: int = 50):
    """Efron's bootstrap over ``n`` images: (rows, n) arrays of image indices drawn with replacement, ``resamples``
    rows in all, in chunks so memory stays at ``chunk × n``; the fixed ``seed`` makes every interval a function of
    the records alone."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, chunk):
        yield rng.integers(0, n, (min(chunk, resamples - start), n))


def resampled_counts(n: int):
    """The same resamples as how often each image was drawn: (rows, n) float counts."""
    for indices in resamples_of(n):
        yield np.stack([np.bincount(row, minlength=n) for row in indices]).astype(float)


def percentile_interval(draws: np.ndarray, level: float = 0.95) -> list[float] | None:
    """``[low, high]``, the percentile interval of bootstrap draws (undefined ones left out); None if none is
    defined."""
    draws = draws[~np.isnan(draws)]
    if not len(draws):
        return None
    tail = (1 - level) / 2 * 100
    return [round(float(np.percentile(draws, tail)), 4), round(float(np.percentile(draws, 100 - tail)), 4)]


def bootstrap_means(values: np.ndarray) -> np.ndarray:
    """(RESAMPLES,) means of ``values`` (n,) over :func:`resamples_of` the images."""
    return np.concatenate([values[indices].mean(1) for indices in resamples_of(len(values))])


MIN_IMAGES = 5  # under this many images a bootstrap interval is only the spread of the few values: undefined


def _few_images(entry: dict, images: int) -> dict:
    """``entry`` with a note (added to any it has) where its intervals are null for want of images: under
    :data:`MIN_IMAGES`, the resamples would only spread the few values."""
    if images >= MIN_IMAGES or not any(k.endswith("ci95") and entry[k] is None for k in entry):
        return entry
    said = f"no interval (ci95 null): {images} image{'s' if images != 1 else ''}, under {MIN_IMAGES}"
    entry["note"] = f"{entry['note']}; {said}" if entry.get("note") else said
    return entry


def interval(values: list[float] | np.ndarray, level: float = 0.95) -> list[float] | None:
    """The percentile bootstrap interval of the mean over images, ``[low, high]``; None under :data:`MIN_IMAGES`
    values."""
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if len(values) < MIN_IMAGES:
        return None
    return percentile_interval(bootstrap_means(values), level)


def _number(value) -> float | None:
    """A per-image figure as a number: a yes/no one (``top1_match``) as 1 or 0, so its mean is a share."""
    return float(value) if isinstance(value, bool) else value


def _agreement_keys(blocks: list[dict]) -> list[str]:
    """The agreement figures of the images: numbers, or None where undefined for an image (e.g. ``mean_iou`` with no
    box matched; one undefined on every image is kept, null with a note); sorted, so however the records were
    written the order is the same; not the IoU threshold, a setting."""
    return sorted({k for block in blocks for k, v in block["agreement"].items()
                   if (v is None or isinstance(v, (int, float))) and k != "iou_threshold"})


def _stats(values: list[float], with_interval: bool = True) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "median": None, "min": None, "max": None} | ({"ci95": None} if with_interval else {}) | {
            "note": "undefined: no image has this figure (e.g. no foreground cell, no box matched)"}
    out = {"mean": round(statistics.fmean(values), 4), "median": round(statistics.median(values), 4),
           "min": round(min(values), 4), "max": round(max(values), 4)}
    if not with_interval:
        return out
    return _few_images({**out, "ci95": interval(values)}, len(values))


# The figure that ranks students, per task, and its direction (the tabs' own).
RANKED_BY = {"detection": ("f1", True), "segmentation": ("miou", True), "image-classification": ("js", False),
             "classification": ("js", False)}


def ranking(records: list[dict], students: list[str], task: str) -> dict:
    """The students ranked by their mean agreement with the teacher, and whether the top two differ beyond chance:
    a paired bootstrap over images of the difference of their per-image figures (95 % interval excluding 0)."""
    key, higher = RANKED_BY[task]
    per_image = {n: [r["students"][n]["agreement"].get(key) for r in records] for n in students}
    means = {n: statistics.fmean(v) if (v := [x for x in per_image[n] if x is not None]) else None for n in students}
    order = sorted(students, key=lambda n: (means[n] is None, -(means[n] or 0) if higher else (means[n] or 0)))
    out = {"by": key, "higher_is_better": higher, "order": order, "top_two": None}
    if len(order) < 2:
        return out | {"note": "top_two: null, one student (nothing to compare it with)"}
    a, b = order[:2]
    pairs = [(x, y) for x, y in zip(per_image[a], per_image[b], strict=True) if x is not None and y is not None]
    if len(pairs) < MIN_IMAGES:
        out["top_two"] = {"students": [a, b], "difference": None, "ci95": None,
                          "verdict": f"undefined: fewer than {MIN_IMAGES} images with both figures"}
        return out
    difference = np.array([x - y for x, y in pairs])
    low, high = interval(difference)
    apart = low > 0 or high < 0
    better = a if (difference.mean() > 0) == higher else b
    out["top_two"] = {"students": [a, b], "difference": round(float(difference.mean()), 4), "ci95": [low, high],
                      "verdict": f"{better} agrees more with the teacher ({key}; 95 % paired bootstrap interval of "
                                 f"the difference {low:+.4f} … {high:+.4f})" if apart else
                                 f"not distinguishable: the 95 % paired bootstrap interval of the difference in "
                                 f"{key} ({low:+.4f} … {high:+.4f}) includes 0"}
    return out


def _matches(boxes: list[list[float]], labels: list[str], truth: list[tuple[str, list[float]]]) -> list[bool]:
    """Which labelled objects a set of boxes finds (same class, IoU >= 0.5, each box used once, best first)."""
    from torchvision.ops import box_iou

    found = [False] * len(truth)
    if not boxes or not truth:
        return found
    iou = box_iou(torch.tensor(boxes), torch.tensor([b for _, b in truth]))
    values = iou.tolist()  # the float32 IoUs as Python floats: compared one by one below, not as tensors
    used = set()
    for j, (label, _) in enumerate(truth):
        for i in iou[:, j].argsort(descending=True).tolist():
            if i not in used and labels[i] == label and values[i][j] >= 0.5:
                found[j] = True
                used.add(i)
                break
    return found


def summarise(records: list[dict], pair, students: list[str], labels: Labels | None, gallery: int,
              score_threshold: float | None = None) -> dict:
    """Aggregates of a run, a pure function of its records (so any split of the work gives the same summary);
    ``score_threshold``: the one the detection accuracy was computed at."""
    ok = [r for r in records if "error" not in r]
    summary: dict = {"pair": pair.name, "task": pair.task, "students": students, "images": len(ok),
                     "unreadable": [{"image": r["image"], "reason": r["error"]} for r in records if "error" in r]}
    per_student = {}
    for name in students:
        blocks = [r["students"][name] for r in ok]
        per_class, per_class_ci95 = _per_class(ok, name, pair.task)
        entry = {"agreement": {k: _stats([_number(b["agreement"].get(k)) for b in blocks])
                               for k in _agreement_keys(blocks)},
                 "disagreement": _stats([b["disagreement"] for b in blocks]),
                 "per_class": per_class, "per_class_ci95": per_class_ci95}
        if pair.task in ("detection", "segmentation", "image-classification"):
            entry["consensus"] = {k: _stats([b["consensus"][k] for b in blocks])
                                  for k in ("mean", "foreground", "background")}
        per_student[name] = entry
    summary["per_student"] = per_student
    summary["ranking"] = ranking(ok, students, pair.task)
    ranked = sorted(ok, key=lambda r: rank_key(r, students[0]))
    summary["largest_disagreement"] = [
        {"image": r["image"], "disagreement": r["students"][students[0]]["disagreement"]} for r in ranked[:gallery]
        if r["students"][students[0]]["disagreement"] is not None]
    if labels is not None:
        labelled = [r for r in ok if r["image"] in labels.listed and "labels_error" not in r]
        summary["labels"] = labels_summary(ok, labelled, labels, pair.task)
        summary["accuracy"] = _accuracy(labelled, pair, students, labels, score_threshold)
        if pair.task in ("classification", "image-classification"):
            summary["calibration"] = calibration(labelled, students, labels)
        summary["inherited_errors"] = inherited_errors(labelled, students, labels, pair.task)
        if pair.task == "detection":
            measured = {r["image"] for r in labelled}
            summary["misses"] = _miss_ranking(labelled, [r for r in ranked if r["image"] in measured], students[0],
                                              labels)
    return summary


def labels_summary(records: list[dict], labelled: list[dict], labels: Labels, task: str) -> dict:
    """What the label file covered of the images read: how many it labels (an image it does not list is unlabelled,
    not an image without objects), the annotations left out because the pair has no such class, the crowd regions
    ignored, and the images whose labels could not be used (each with its reason); with a note for each."""
    unlisted = [r["image"] for r in records if r["image"] not in labels.listed]
    if task in ("classification", "image-classification"):  # measured: the images with one class the pair has
        labelled = [r for r in labelled if r["image"] in labels.classes]
        mixed = sum(r["image"] in labels.mixed for r in records)
    broken = [{"image": r["image"], "reason": r["labels_error"]} for r in records if "labels_error" in r]
    ignored = sum(len(labels.crowd_boxes.get(r["image"], [])) if task == "detection" else
                  len(labels.ignored.get(r["image"], [])) if task == "segmentation" else 0 for r in labelled)
    notes = []
    if unlisted:
        notes.append(f"{len(unlisted)} of the {len(records)} images read are not in the label file: they are left "
                     "out of every figure against the labels (an image the file lists without annotations counts "
                     "as one with no object).")
    if ignored:
        notes.append(f"{ignored} crowd region(s) (iscrowd) ignored: a detection or pixel there is neither right nor "
                     "wrong." if task == "detection" else f"{ignored} region(s) ignored (crowd, a class the pair "
                     "lacks, or an object's box without its mask): their pixels count for nothing.")
    if labels.skipped:
        notes.append("Annotations of classes the pair does not have were left out: " + ", ".join(
            f"{name} ({count})" for name, count in sorted(labels.skipped.items())) + ".")
    if task in ("classification", "image-classification") and mixed:
        notes.append(f"{mixed} images carry annotations of two or more classes: no single class, so they are left "
                     "out of the classification figures.")
    unmasked = sum(len(labels.unmasked.get(r["image"], [])) for r in labelled) if task == "segmentation" else 0
    if unmasked:
        notes.append(f"{unmasked} labelled objects have a box but no mask: their boxes are ignored, neither right "
                     "nor wrong.")
    outside = sum(r.get("labels_outside", 0) for r in labelled)
    if outside and task == "detection":
        notes.append(f"{outside} labelled box(es) with no area inside their image: no model can find them, so they "
                     "count as missed objects (as COCO's evaluation counts them); check the label file's "
                     "coordinates (xywh in pixels of the image as stored).")
    elif outside:
        notes.append(f"{outside} labelled object(s) with no pixel inside the image left out.")
    if broken:
        whose = f"{len(broken)} images'" if len(broken) > 1 else "1 image's"
        notes.append(f"{whose} labels could not be used (see labels.unusable); left out.")
    return {"images_labelled": len(labelled), "images_unlisted": len(unlisted), "unlisted_examples": unlisted[:10],
            "skipped_classes": dict(sorted(labels.skipped.items())), "ignored_regions": ignored, "unusable": broken,
            "notes": notes}


def _per_class(records: list[dict], name: str, task: str) -> tuple[dict[str, float], dict[str, list | None]]:
    """Detection: share of the teacher's boxes of each class that the student matches (same class, IoU >= 0.5);
    segmentation: mean teacher-vs-student IoU of each class over images where it occurs; classification: top-1
    match rate per teacher top-1 class. Returns ``(figures, ci95)``: each class's figure and its 95 % bootstrap
    interval, images resampled (a class's values of one image move together), None under :data:`MIN_IMAGES`."""
    hits: dict[str, list[tuple[int, float]]] = {}  # class -> (image index, value)
    for i, r in enumerate(records):
        if task == "detection":
            teacher = r["teacher"]["detections"]
            found = _matches([d["box"] for d in r["students"][name]["detections"]],
                             [d["label"] for d in r["students"][name]["detections"]],
                             [(d["label"], d["box"]) for d in teacher])
            for d, f in zip(teacher, found, strict=True):
                hits.setdefault(d["label"], []).append((i, float(f)))
        elif task == "segmentation":
            for label, value in r["students"][name]["agreement"]["per_class"].items():
                hits.setdefault(label, []).append((i, value))
        else:
            top = r["teacher"]["top1"]
            hits.setdefault(top, []).append((i, float(r["students"][name]["top1"] == top)))
    classes = sorted(hits)
    figures = {label: round(statistics.fmean(v for _, v in hits[label]), 4) for label in classes}
    n = len(records)
    if n < MIN_IMAGES or not classes:
        return figures, dict.fromkeys(classes)
    sums, counts = np.zeros((n, len(classes))), np.zeros((n, len(classes)))
    for k, label in enumerate(classes):
        for i, value in hits[label]:
            sums[i, k] += value
            counts[i, k] += 1
    draws = []
    for drawn in resampled_counts(n):  # (rows, n): how often each image was drawn
        with np.errstate(invalid="ignore", divide="ignore"):
            draws.append((drawn @ sums) / (drawn @ counts))  # NaN where a resample holds no value of the class
    draws = np.concatenate(draws)
    return figures, {label: percentile_interval(draws[:, k]) for k, label in enumerate(classes)}


def _accuracy(records: list[dict], pair, students: list[str], labels: Labels, score_threshold: float | None = None,
              ) -> dict:
    """Each model's own accuracy against the labels (torchmetrics); detection: mAP@0.5 over the boxes scoring
    ``score_threshold`` or more (the run's accuracy threshold; named in each entry)."""
    models = ["teacher", *students]
    if pair.task == "detection":
        from torchmetrics.detection import MeanAveragePrecision

        names = sorted({label for r in records for table in (labels.boxes, labels.crowd_boxes)
                        for label, _ in table.get(r["image"], [])}
                       | {d["label"] for r in records for d in accuracy_detections(r["teacher"], score_threshold)}
                       | {d["label"] for r in records for s in students
                          for d in accuracy_detections(r["students"][s], score_threshold)})
        index = {n: i for i, n in enumerate(names)}  # every class any model or label names: none is unknown
        out = {}
        if not any(labels.boxes.get(r["image"]) for r in records):  # torchmetrics would give its -1 sentinel
            note = "undefined: no labelled object in the labelled images that were read"
            return {model: {"map_50": None, "score_threshold": score_threshold, "note": note} for model in models}
        truth = [_box_table(labels.boxes.get(r["image"], []) + labels.crowd_boxes.get(r["image"], []), index,
                            crowd_from=len(labels.boxes.get(r["image"], []))) for r in records]
        for model in models:
            found = [_box_table([(d["label"], d["box"], d["score"]) for d in accuracy_detections(
                r["teacher"] if model == "teacher" else r["students"][model], score_threshold)], index)
                for r in records]
            # COCO scores every class on its own (its matching and its 100 detections an image are per class), so
            # torchmetrics runs one class at a time: the same mAP@0.5, and pycocotools' per-detection Python objects
            # (~1 KB each) are a class's at a time, not the whole dataset's (~900 MB over 10,000 scenes at once)
            images_of: dict[int, list[int]] = {}  # per class, the images with a box of it (the others add nothing)
            for i, (mine, labelled) in enumerate(zip(found, truth, strict=True)):
                for c in np.union1d(mine["labels"], labelled["labels"]).tolist():
                    images_of.setdefault(c, []).append(i)
            per_class = []
            for c, images in sorted(images_of.items()):
                # rank 0 alone; COCO's evaluation in C++ (faster-coco-eval): pycocotools' figures, the summary of
                # 10,000 scenes in 36 s rather than 54 (summary.json byte-identical)
                metric = MeanAveragePrecision(iou_thresholds=[0.5], sync_on_compute=False, backend=COCO_BACKEND)
                for i in images:
                    kept, held = found[i]["labels"] == c, truth[i]["labels"] == c
                    metric.update([{k: torch.from_numpy(v[kept]) for k, v in found[i].items()}],
                                  [{k: torch.from_numpy(v[held]) for k, v in truth[i].items()}])
                ap = float(metric.compute()["map_50"])
                if ap >= 0:  # -1: no labelled object of this class (torchmetrics' sentinel), left out of the mean
                    per_class.append(ap)
            if not per_class:  # every labelled box ignored (crowd, or over COCO's area range of 1e10 pixels²)
                out[model] = {"map_50": None, "score_threshold": score_threshold,
                              "note": "undefined: every labelled object is a crowd region or over COCO's area range"}
                continue
            # the mean of the classes' APs in float64: torchmetrics' own mean (float32, over every class's 101 recall
            # points) can differ in the last bit, so a value halfway between two 4-decimal roundings may differ by 1e-4
            out[model] = _few_images({"map_50": round(float(np.mean(per_class)), 4),
                                      "ci95": map50_interval(records, model, labels, score_threshold=score_threshold),
                                      "score_threshold": score_threshold}, len(records))
        return out
    if pair.task == "segmentation":
        out = {}
        records = [r for r in records if "vs_labels" in r["teacher"]]
        if not records:
            return {model: {"miou": None, "note": "undefined: no labelled image among the images that were read"}
                    for model in models}
        # mIoU over the classes the labels hold in these images: a class they never label (one the file lacks, or
        # only in ignored regions) cannot be scored, and would read 0 from a few predicted pixels
        truth = np.array([r["teacher"]["vs_labels"].get("truth", r["teacher"]["vs_labels"]["union"]) for r in records])
        for model in models:
            sides = [r["teacher"] if model == "teacher" else r["students"][model] for r in records]
            inter = np.array([s["vs_labels"]["intersection"] for s in sides])
            union = np.array([s["vs_labels"]["union"] for s in sides])
            present = truth.sum(0) > 0
            out[model] = {"miou": round(float((inter.sum(0)[present] / union.sum(0)[present]).mean()), 4),
                          "ci95": _miou_interval(inter, union, truth)}
            if present.sum() == 1:
                out[model]["note"] = "one class only holds labelled pixels here (every object ignored or missing)"
            _few_images(out[model], len(records))
        return out
    from torchmetrics.functional.classification import multiclass_accuracy

    named = [r for r in records if r["image"] in labels.classes]
    if not named:
        return {model: {"top1": None, "note": "undefined: no image among those read has one class label"}
                for model in models}
    classes = sorted({labels.classes[r["image"]] for r in named} | {r["teacher"]["top1"] for r in named}
                     | {r["students"][s]["top1"] for r in named for s in students})
    truth = torch.tensor([classes.index(labels.classes[r["image"]]) for r in named])
    out = {}
    for model in models:
        sides = [r["teacher"] if model == "teacher" else r["students"][model] for r in named]
        predicted = torch.tensor([classes.index(side["top1"]) for side in sides])
        # micro accuracy does not depend on how many classes there are; torchmetrics asks for at least two
        top1 = multiclass_accuracy(predicted, truth, max(2, len(classes)), average="micro")
        out[model] = {"top1": round(float(top1), 4),
                      "top1_ci95": interval((predicted == truth).double().numpy())}
        if all("top5" in side for side in sides):  # image classifiers: is the label among the model's top five
            hits = [labels.classes[r["image"]] in side["top5"] for r, side in zip(named, sides, strict=True)]
            out[model]["top5"] = round(sum(hits) / len(hits), 4) if hits else None
            out[model]["top5_ci95"] = interval(np.array(hits, dtype=np.float64))
        _few_images(out[model], len(named))
    return out


def _box_table(boxes: list[tuple], index: dict[str, int], crowd_from: int | None = None) -> dict[str, np.ndarray]:
    """One image's boxes as torchmetrics' mAP reads them, in numpy: ``(label, xyxy)`` labels (with ``crowd_from``,
    the index from which they are crowd regions: ``iscrowd``) or ``(label, xyxy, score)`` detections -> ``boxes``
    (N, 4) float32, ``labels`` (N,) int64 indices into ``index``, and ``scores`` (N,) float32 or ``iscrowd`` (N,)
    int64."""
    table = {"boxes": np.array([b[1] for b in boxes], dtype=np.float32).reshape(-1, 4),
             "labels": np.array([index[b[0]] for b in boxes], dtype=np.int64)}
    if crowd_from is None:
        table["scores"] = np.array([b[2] for b in boxes], dtype=np.float32)
    else:
        table["iscrowd"] = (np.arange(len(boxes)) >= crowd_from).astype(np.int64)
    return table


CALIBRATION_BINS = 10


def calibration(records: list[dict], students: list[str], labels: Labels, bins: int = CALIBRATION_BINS) -> dict:
    """Each classifier's calibration against the labels: expected calibration error of its top-1 confidence (Guo et
    al. 2017; torchmetrics' top-label ECE, ``bins`` equal-width bins, L1) and the reliability diagram's bins
    (``count``, mean ``confidence``, ``accuracy``; empty bins left out)."""
    from torchmetrics.functional.classification import binary_calibration_error

    named = [r for r in records if r["image"] in labels.classes and "confidence" in r["teacher"]]
    out = {}
    for model in ["teacher", *students]:
        sides = [r["teacher"] if model == "teacher" else r["students"][model] for r in named]
        if not sides:
            out[model] = {"ece": None, "bins": [], "note": "undefined: no labelled image with a confidence"}
            continue
        confidence = torch.tensor([s["confidence"] for s in sides], dtype=torch.float64)
        correct = torch.tensor([s["top1"] == labels.classes[r["image"]] for r, s in zip(named, sides, strict=True)])
        ece = binary_calibration_error(confidence, correct.long(), n_bins=bins, norm="l1")
        which = (confidence * bins).long().clamp(max=bins - 1)
        table = [{"low": k / bins, "high": (k + 1) / bins, "count": int((which == k).sum()),
                  "confidence": round(float(confidence[which == k].mean()), 4),
                  "accuracy": round(float(correct[which == k].double().mean()), 4)}
                 for k in range(bins) if (which == k).any()]
        out[model] = _few_images({"ece": round(float(ece), 4), "bins": table, "images": len(sides),
                                  "ece_ci95": ece_interval(confidence.numpy(), correct.numpy(), bins)}, len(sides))
    return out


def ece_interval(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS,
                 level: float = 0.95) -> list[float] | None:
    """Bootstrap interval of the top-label ECE: images resampled; per resample, each bin's summed gap between
    confidence and correctness (images counted as often as drawn), ``sum |gap| / images``. ``confidence`` (n,) in
    [0, 1], ``correct`` (n,) bool; None under :data:`MIN_IMAGES` images."""
    n = len(confidence)
    if n < MIN_IMAGES:
        return None
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    gaps = np.zeros((n, bins))
    gaps[np.arange(n), which] = confidence - correct.astype(np.float64)  # (n, bins): each image's gap in its bin
    draws = [np.abs(counts @ gaps).sum(1) / n for counts in resampled_counts(n)]
    return percentile_interval(np.concatenate(draws), level)


def object_found(class_map: np.ndarray, mask: np.ndarray, index: int, iou: float = 0.5) -> bool:
    """Whether a model's (H, W) class map finds one labelled object: IoU >= ``iou`` between the object's mask and the
    model's pixels of its class inside the object's bounding box (so other objects of the class do not count)."""
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return False
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    predicted, truth = class_map[box] == index, mask[box]
    inter = int((predicted & truth).sum())
    return inter / (int(predicted.sum()) + int(truth.sum()) - inter) >= iou


OUTCOMES = ("both right", "fixed", "lost", "inherited", "both wrong, differently")


def inherited_errors(records: list[dict], students: list[str], labels: Labels, task: str) -> dict:
    """How each student's errors relate to its teacher's, against the labels, overall and per class: per labelled
    image (classification, by top-1) or per labelled object (detection: found or missed, as for mAP@0.5; segmentation:
    IoU >= 0.5 inside the object's box): ``both right``; ``fixed`` (the teacher wrong, the student right); ``lost``
    (the teacher right, the student wrong); ``inherited`` (both wrong: the same wrong class, or both miss the
    object); ``both wrong, differently`` (classification: two different wrong classes)."""
    out = {}
    for student in students:
        cases: list[tuple[str, str]] = []  # (class, outcome)
        for r in records:
            if task in ("classification", "image-classification"):
                truth = labels.classes.get(r["image"])
                if truth is None:
                    continue
                t, s = r["teacher"]["top1"], r["students"][student]["top1"]
                outcome = ("both right" if t == truth == s else "fixed" if s == truth else "lost" if t == truth
                           else "inherited" if t == s else "both wrong, differently")
                cases.append((truth, outcome))
            elif task == "detection":
                truth = labels.boxes.get(r["image"], [])
                t_dets, s_dets = r["teacher"]["detections"], r["students"][student]["detections"]
                t = _matches([d["box"] for d in t_dets], [d["label"] for d in t_dets], truth)
                s = _matches([d["box"] for d in s_dets], [d["label"] for d in s_dets], truth)
                cases += [(label, _outcome(a, b)) for (label, _), a, b in zip(truth, t, s, strict=True)]
            else:
                objects = r["teacher"].get("objects", [])
                found = r["students"][student].get("objects_found", [])
                cases += [(o["label"], _outcome(o["found"], f)) for o, f in zip(objects, found, strict=True)]
        differently = task in ("classification", "image-classification")  # found/missed has no "differently"
        out[student] = {"overall": _tally((o for _, o in cases), differently),
                        "per_class": {c: _tally((o for k, o in cases if k == c), differently)
                                      for c in sorted({k for k, _ in cases})}}
        if not differently:
            out[student]["note"] = ("both wrong, differently: null throughout, an object is found or missed (no two "
                                    "ways to be wrong)")
    return out


def _outcome(teacher_right: bool, student_right: bool) -> str:
    return ("both right" if teacher_right and student_right else "fixed" if student_right
            else "lost" if teacher_right else "inherited")


def _tally(outcomes, differently: bool = True) -> dict:
    """Counts of each outcome; ``both wrong, differently`` is None where it cannot happen (found or missed)."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for outcome in outcomes:
        counts[outcome] += 1
    total = sum(counts.values())
    teacher_wrong = counts["inherited"] + counts["fixed"] + counts["both wrong, differently"]
    notes = []
    if not differently:
        counts["both wrong, differently"] = None  # said once per student (inherited_errors' note)
    share = round(counts["inherited"] / teacher_wrong, 4) if teacher_wrong else None
    if not total:
        notes.append("undefined: no labelled image or object to count")
    elif share is None:
        notes.append("inherited_share_of_teacher_errors: null, the teacher made no error here")
    return {"total": total, **counts, "inherited_share_of_teacher_errors": share} | (
        {"note": "; ".join(notes)} if notes else {})


def accuracy_detections(side: dict, score_threshold: float | None = None) -> list[dict]:
    """A model's boxes for accuracy against labels, as ``{"label", "score", "box"}`` dicts: every box down to the
    accuracy threshold when the run kept them (stored as columns, :meth:`weights.predictors.BoxArrays.to_dict`),
    else the boxes above the run's threshold; those scoring under ``score_threshold`` left out (an accuracy threshold
    above the run's)."""
    found = side.get("detections_for_accuracy")
    boxes = side["detections"] if found is None else BoxArrays.from_dict(found)
    # a NaN score ranks nowhere (and the COCO evaluation refuses it): no comparison holds for it, so it is left out
    low = -math.inf if score_threshold is None else score_threshold
    return [d for d in boxes if d["score"] >= low]


COCO_BACKEND = "faster_coco_eval"  # torchmetrics' backend for mAP@0.5 (a test compares it with pycocotools')
RECALL_POINTS = np.linspace(0, 1, 101)  # COCO's 101 recall thresholds, as torchmetrics' mAP uses them


def _detections_matched(records: list[dict], model: str, labels: Labels,
                        score_threshold: float | None = None) -> dict[str, dict]:
    """Per class: every detection's (image index, score, true positive) and every image's labelled-object count,
    matched as COCO does at IoU 0.5 (by score, each labelled object once, the best unmatched IoU, at most 100
    detections per image)."""
    from torchvision.ops import box_iou

    classes: dict[str, dict] = {}
    for i, r in enumerate(records):
        side = r["teacher"] if model == "teacher" else r["students"][model]
        dets = sorted(accuracy_detections(side, score_threshold), key=lambda d: -d["score"])[:100]
        truth = labels.boxes.get(r["image"], [])
        for label in {d["label"] for d in dets} | {t for t, _ in truth}:
            mine = [d for d in dets if d["label"] == label]
            gt = [b for t, b in truth if t == label]
            entry = classes.setdefault(label, {"image": [], "score": [], "tp": [],
                                               "positives": np.zeros(len(records))})
            entry["positives"][i] = len(gt)
            used = [False] * len(gt)
            iou = box_iou(torch.tensor([d["box"] for d in mine]).reshape(-1, 4),
                          torch.tensor(gt).reshape(-1, 4)).tolist() if mine and gt else None  # float32 as floats
            crowd = [b for t, b in labels.crowd_boxes.get(r["image"], []) if t == label]
            covered = _covered_by_crowd([d["box"] for d in mine], crowd)
            for k, d in enumerate(mine):
                best, best_iou = -1, 0.5
                for j in range(len(gt)):
                    if not used[j] and iou is not None and iou[k][j] >= best_iou:
                        best, best_iou = j, iou[k][j]
                if best >= 0:
                    used[best] = True
                elif covered[k]:  # on a crowd region and no labelled object: neither right nor wrong (COCO)
                    continue
                entry["image"].append(i)
                entry["score"].append(d["score"])
                entry["tp"].append(best >= 0)
    return classes


def _covered_by_crowd(boxes: list[list[float]], crowd: list[list[float]]) -> list[bool]:
    """Per box, whether it lies on a crowd region: its intersection with one covers at least half the box (COCO's
    IoU against a crowd annotation, intersection over the detection's own area)."""
    if not boxes or not crowd:
        return [False] * len(boxes)
    d, c = torch.tensor(boxes, dtype=torch.float64), torch.tensor(crowd, dtype=torch.float64)
    low, high = torch.maximum(d[:, None, :2], c[None, :, :2]), torch.minimum(d[:, None, 2:], c[None, :, 2:])
    inter = (high - low).clamp_min(0).prod(-1)
    area = ((d[:, 2:] - d[:, :2]).clamp_min(0).prod(-1))[:, None]
    return (inter >= 0.5 * area).any(1).tolist()


def _ranked_runs(entry: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A class's detections as the AP needs them: ``(image, tp, starts)``, the detections by descending
    score (stable) up to its last true positive, and where each segment (a run of false positives and the run of
    true positives after it) starts; None without a true positive. Detections after the last true positive cannot
    raise precision at any recall, and within a run of true positives precision and recall only grow, so the
    precision envelope at COCO's recall points is read at the segments' ends alone (the same numbers as reading it
    at every detection)."""
    tp = np.asarray(entry["tp"], dtype=bool)
    if not tp.any():
        return None
    order = np.argsort(-np.asarray(entry["score"]), kind="stable")
    tp = tp[order]
    last = int(np.flatnonzero(tp)[-1]) + 1
    tp, image = tp[:last], np.asarray(entry["image"])[order[:last]]
    ends = np.flatnonzero(tp & np.append(~tp[1:], True))  # the last detection of each run of true positives
    return image, tp.astype(np.float64), np.concatenate([[0], ends[:-1] + 1])


def weighted_map50(classes: dict[str, dict], weights: np.ndarray) -> np.ndarray:
    """(R,) mAP@0.5 for R weightings of the images (bootstrap counts; ones give the plain mAP): per class, the
    101-point interpolated AP of its detections, each counted as often as its image; classes without a labelled
    object in a weighting are left out of its mean."""
    return _weighted_map50([(entry["positives"], _ranked_runs(entry)) for entry in classes.values()], weights)


def _weighted_map50(classes: list[tuple[np.ndarray, tuple | None]], weights: np.ndarray) -> np.ndarray:
    """:func:`weighted_map50` of classes already ranked (``(positives, _ranked_runs(entry))`` each)."""
    per_class = []
    for positives, runs in classes:
        positives = weights @ positives  # (R,)
        if runs is None:  # no detection, or none right: AP 0 wherever the class holds a labelled object
            per_class.append(np.where(positives > 0, 0.0, np.nan))
            continue
        image, tp, starts = runs
        # a few rows at a time, so the (rows, D) weights of a class's D detections stay ~BOOTSTRAP_CELLS numbers
        # however large the dataset (every row is a resample of its own: the same numbers in any blocks)
        step = max(1, BOOTSTRAP_CELLS // len(image))
        per_class.append(np.concatenate([_average_precisions(weights[lo:lo + step], positives[lo:lo + step], image,
                                                             tp, starts) for lo in range(0, len(weights), step)]))
    if not per_class:
        return np.full(len(weights), np.nan)
    stacked = np.stack(per_class)
    defined = ~np.isnan(stacked)  # a weighting with no labelled object of any class: NaN (no warning for it)
    with np.errstate(invalid="ignore"):
        return np.where(defined, stacked, 0.0).sum(0) / defined.sum(0)


BOOTSTRAP_CELLS = 2_000_000  # the most (resample, detection) weights one class's AP holds at once (16 MB)


def _average_precisions(weights: np.ndarray, positives: np.ndarray, image: np.ndarray, tp: np.ndarray,
                        starts: np.ndarray) -> np.ndarray:
    """(R,) a class's 101-point AP under R weightings of the images (NaN where a weighting holds no labelled object
    of it), from its ranked detections (:func:`_ranked_runs`) and its (R,) weighted labelled-object counts."""
    w = weights[:, image]  # (R, D): each detection counted as often as its image was drawn
    found = np.add.reduceat(w * tp, starts, 1).cumsum(1)  # (R, S) at each segment's end: exact integer sums
    made = np.add.reduceat(w, starts, 1).cumsum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = found / positives[:, None]
        precision = np.where(made > 0, found / made, 0.0)
    envelope = np.maximum.accumulate(precision[:, ::-1], 1)[:, ::-1]
    # (R, 101): the first segment reaching each recall point (rows are sorted; row by row, so memory stays R x S)
    index = np.stack([np.searchsorted(row, RECALL_POINTS, side="left") for row in recall])
    read = np.take_along_axis(envelope, np.minimum(index, envelope.shape[1] - 1), 1)
    ap = np.where(index < envelope.shape[1], read, 0.0).mean(1)
    return np.where(positives > 0, ap, np.nan)


def map50_interval(records: list[dict], model: str, labels: Labels, level: float = 0.95,
                   score_threshold: float | None = None) -> list[float] | None:
    """Bootstrap interval of mAP@0.5: images resampled, detections re-weighted by how often their image was drawn
    (:func:`weighted_map50`; its value at unit weights is torchmetrics' mAP@0.5, a test checks)."""
    n = len(records)
    if n < MIN_IMAGES:
        return None
    classes = _detections_matched(records, model, labels, score_threshold)
    ranked = [(entry["positives"], _ranked_runs(entry)) for entry in classes.values()]  # sorted once, not per chunk
    return percentile_interval(np.concatenate([_weighted_map50(ranked, counts) for counts in resampled_counts(n)]),
                               level)


def _miou_interval(inter: np.ndarray, union: np.ndarray, truth: np.ndarray,
                   level: float = 0.95) -> list[float] | None:
    """Bootstrap interval of a dataset mIoU: images resampled, their (n, K) intersections and unions summed per
    resample, mIoU over the classes the labels hold in that resample (``truth``, (n, K) labelled pixels)."""
    n = len(inter)
    if n < MIN_IMAGES:
        return None
    values = []
    for counts in resampled_counts(n):
        i, u, t = counts @ inter, counts @ union, counts @ truth  # (rows, K)
        with np.errstate(invalid="ignore", divide="ignore"):
            values.append(np.nanmean(np.where(t > 0, i / u, np.nan), axis=1))
    return percentile_interval(np.concatenate(values), level)


def _miss_ranking(records: list[dict], ranked: list[dict], student: str, labels: Labels, top: int = 10) -> dict:
    """Is the ranking meaningful? Share of images where the student misses a labelled object the teacher finds, in
    the whole folder and among the ``top`` images of largest disagreement."""
    def misses(r: dict) -> bool:
        truth = labels.boxes.get(r["image"], [])
        t = _matches([d["box"] for d in r["teacher"]["detections"]], [d["label"] for d in r["teacher"]["detections"]],
                     truth)
        s_dets = r["students"][student]["detections"]
        s = _matches([d["box"] for d in s_dets], [d["label"] for d in s_dets], truth)
        return any(a and not b for a, b in zip(t, s, strict=True))

    if not any(labels.boxes.get(r["image"]) for r in records):
        return {"student": student, "folder_share": None, "top": 0, "top_share": None, "images": [],
                "note": "undefined: no labelled object in the images that were read"}
    flags = {r["image"]: misses(r) for r in records}
    share = sum(flags.values()) / max(1, len(flags))
    head = [flags[r["image"]] for r in ranked[:top]]
    return {"student": student, "folder_share": round(share, 4), "top": len(head),
            "top_share": round(sum(head) / max(1, len(head)), 4),
            "images": sorted(k for k, v in flags.items() if v)}


def summarise_timing(timings: list[dict]) -> dict:
    students = sorted({n for t in timings for n in t["students_ms"]})
    return {"teacher_ms": _stats([t["teacher_ms"] for t in timings], False),
            "students_ms": {n: _stats([t["students_ms"].get(n) for t in timings], False) for n in students}}


def _ratio(values: np.ndarray, norms: np.ndarray) -> list[list[float | None]]:
    return [[round(float(v / n), 4) if n > 0 else None for v, n in zip(row, norm_row, strict=True)]
            for row, norm_row in zip(values, norms, strict=True)]


def dataset_cka(terms: list[dict], students: list[str]) -> dict:
    """Minibatch CKA across the images (Nguyen et al. 2021, unbiased HSIC) from every batch's terms (``cka.jsonl``),
    teacher stages × student stages, and its chance level (the student's features of other images of the batch).

    Returns ``{student: {teacher_layers, student_layers, matrix, baseline, batches, images}}``; a student with no
    usable batch (every batch under four readable images) gets ``None`` figures and a note. A CLIP pair's one
    "stage" is each tower's image embedding."""
    out = {}
    for name in students:
        blocks = [t["students"][name] for t in terms if name in t.get("students", {})]
        if not blocks:
            out[name] = {"matrix": None, "baseline": None, "batches": 0,
                         "note": "undefined: no batch of four or more readable images (use --batch 4 or more)"}
            continue
        cross = np.sum([b["cross"] for b in blocks], axis=0)
        shuffled = np.sum([b["cross_shuffled"] for b in blocks], axis=0)
        norms = np.sqrt(np.clip(np.outer(np.sum([b["self_t"] for b in blocks], axis=0),
                                         np.sum([b["self_s"] for b in blocks], axis=0)), 0, None))

        out[name] = {"teacher_layers": blocks[0]["teacher_layers"], "student_layers": blocks[0]["student_layers"],
                     "matrix": _ratio(cross, norms), "baseline": _ratio(shuffled, norms), "batches": len(blocks),
                     "images": int(sum(b["images"] for b in blocks))}
    return out


# The deploy gate ---------------------------------------------------------------------------------------------------
GATE_FIGURES = {
    "detection": ("agreement", "f1", "mean_iou", "label_agreement", "missed", "extra", "consensus", "map50",
                  "inherited"),
    "segmentation": ("agreement", "miou", "pixel_agreement", "consensus", "label_miou", "inherited"),
    "image-classification": ("agreement", "top1_match", "top5_overlap", "spearman", "consensus", "top1", "top5", "js",
                             "kl", "ece", "inherited"),
    "classification": ("agreement", "top1_match", "spearman", "top1", "js", "kl", "ece", "inherited"),
}
# ``missed``/``extra``: the teacher's boxes the student misses, and boxes it adds, per image; ``ece``: the student's
# calibration error; ``inherited``: the share of the teacher's errors (against the labels) the student repeats
LOWER_IS_BETTER = ("js", "kl", "missed", "extra", "ece", "inherited")
# what each figure can be (the others are shares in [0, 1]): a gate outside it is a typo
GATE_RANGES = {"consensus": (-1.0, 1.0), "spearman": (-1.0, 1.0), "js": (0.0, 1.0), "kl": (0.0, float("inf")),
               "missed": (0.0, float("inf")), "extra": (0.0, float("inf"))}


def parse_gate(text: str | None, task: str, flag: str = "--fail-under") -> dict[str, float]:
    """``"agreement=0.9,map50=0.8"`` -> ``{"agreement": 0.9, "map50": 0.8}``, names checked against the task's figures
    (``agreement`` is the figure that ranks students: F1, mIoU or top-1 match).

    Raises:
        ValueError: a malformed item, an unknown figure (the valid ones named), or a figure whose direction does not
            fit the flag (``js`` under ``--fail-under``).
    """
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        name = name.strip()
        try:
            number = float(value) if sep else float("nan")
        except ValueError:
            number = float("nan")
        if not sep or number != number:
            raise ValueError(f"{flag} takes name=number pairs separated by commas (e.g. agreement=0.9,map50=0.8); "
                             f"got {item.strip()!r}.")
        if name not in GATE_FIGURES[task]:
            raise ValueError(f"{flag}: {name!r} is not a {task} figure; choose from {', '.join(GATE_FIGURES[task])}.")
        if name in out:
            raise ValueError(f"{flag} names {name} twice; give each figure once.")
        lower = name in LOWER_IS_BETTER
        if lower != (flag == "--fail-over"):
            other = "--fail-over" if lower else "--fail-under"
            raise ValueError(f"{flag}: {name} is {'lower' if lower else 'higher'} when the student is better; use "
                             f"{other} {name}={value}.")
        low, high = GATE_RANGES.get(name, (0.0, 1.0))
        if not low <= number <= high:
            share = " (a share: 0.9, not 90)" if high == 1.0 and 1 < number <= 100 else ""
            raise ValueError(f"{flag}: {name} lies between {low:g} and {high:g}; got {number:g}{share}.")
        out[name] = number
    return out


def gate_figure(summary: dict, student: str, name: str) -> float | None:
    """One student's summary figure by its gate name (None where undefined)."""
    task = summary["task"]
    block = summary["per_student"][student]
    if name == "agreement":
        name = {"detection": "f1", "segmentation": "miou"}.get(task, "top1_match")
    if name == "consensus":
        return (block.get("consensus") or {}).get("mean", {}).get("mean")
    accuracy = (summary.get("accuracy") or {}).get(student, {})
    if name in ("map50", "label_miou", "top1", "top5"):
        return accuracy.get({"map50": "map_50", "label_miou": "miou"}.get(name, name))
    if name == "ece":
        return ((summary.get("calibration") or {}).get(student) or {}).get("ece")
    if name == "inherited":
        errors = ((summary.get("inherited_errors") or {}).get(student) or {}).get("overall") or {}
        return errors.get("inherited_share_of_teacher_errors")
    return block["agreement"].get(name, {}).get("mean")


def gate_failures(summary: dict, under: dict[str, float], over: dict[str, float]) -> list[str]:
    """Every (student, figure) that fails the gate, as a line: below its ``under`` floor, above its ``over`` ceiling,
    or undefined (a figure that cannot be checked fails: e.g. map50 without labels)."""
    failures = []
    for student in summary["students"]:
        for name, limit in [*((n, ("under", v)) for n, v in under.items()),
                            *((n, ("over", v)) for n, v in over.items())]:
            side, bound = limit
            value = gate_figure(summary, student, name)
            if value is None:
                failures.append(f"{student}: {name} is undefined (e.g. no labels), required "
                                f"{'≥' if side == 'under' else '≤'} {bound}")
            elif (side == "under" and value < bound) or (side == "over" and value > bound):
                failures.append(f"{student}: {name} {value:.4f} {'<' if side == 'under' else '>'} {bound}")
    return failures
