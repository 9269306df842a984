"""Aggregates of a dataset run: pure functions of its records, so any split of the work gives the same summary."""

from __future__ import annotations

import statistics

import numpy as np
import torch

from reports.inputs import Labels


def _class_pixels(class_map: np.ndarray, classes: list[str]) -> dict[str, int]:
    counts = np.bincount(class_map.ravel(), minlength=len(classes))
    return {classes[i]: int(c) for i, c in enumerate(counts) if c}


def _overlap(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[str, list[int]]:
    """Per-class intersection and union with the labels (summed over images, they give the dataset's mIoU)."""
    p = torch.from_numpy(prediction.astype(np.int64)).flatten()
    t = torch.from_numpy(truth.astype(np.int64)).flatten()
    inter = torch.bincount(t[p == t], minlength=num_classes)
    union = torch.bincount(p, minlength=num_classes) + torch.bincount(t, minlength=num_classes) - inter
    return {"intersection": inter.tolist(), "union": union.tolist()}


def _stats(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "median": None, "min": None, "max": None}
    return {"mean": round(statistics.fmean(values), 4), "median": round(statistics.median(values), 4),
            "min": round(min(values), 4), "max": round(max(values), 4)}


def _matches(boxes: list[list[float]], labels: list[str], truth: list[tuple[str, list[float]]]) -> list[bool]:
    """Which labelled objects a set of boxes finds (same class, IoU >= 0.5, each box used once, best first)."""
    from torchvision.ops import box_iou

    found = [False] * len(truth)
    if not boxes or not truth:
        return found
    iou = box_iou(torch.tensor(boxes), torch.tensor([b for _, b in truth]))
    used = set()
    for j, (label, _) in enumerate(truth):
        for i in iou[:, j].argsort(descending=True).tolist():
            if i not in used and labels[i] == label and iou[i, j] >= 0.5:
                found[j] = True
                used.add(i)
                break
    return found


def summarise(records: list[dict], pair, students: list[str], labels: Labels | None, gallery: int) -> dict:
    """Aggregates of a run, a pure function of its records (so any split of the work gives the same summary)."""
    ok = [r for r in records if "error" not in r]
    summary: dict = {"pair": pair.name, "task": pair.task, "students": students, "images": len(ok),
                     "unreadable": [{"image": r["image"], "reason": r["error"]} for r in records if "error" in r]}
    per_student = {}
    for name in students:
        blocks = [r["students"][name] for r in ok]
        agreement_keys = [k for k, v in (blocks[0]["agreement"] if blocks else {}).items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "iou_threshold"]
        entry = {"agreement": {k: _stats([b["agreement"][k] for b in blocks]) for k in agreement_keys},
                 "disagreement": _stats([b["disagreement"] for b in blocks]),
                 "per_class": _per_class(ok, name, pair.task)}
        if pair.task in ("detection", "segmentation", "image-classification"):
            entry["consensus"] = {k: _stats([b["consensus"][k] for b in blocks])
                                  for k in ("mean", "foreground", "background")}
        per_student[name] = entry
    summary["per_student"] = per_student
    ranked = sorted(ok, key=lambda r: (-r["students"][students[0]]["disagreement"], r["image"]))
    summary["largest_disagreement"] = [
        {"image": r["image"], "disagreement": r["students"][students[0]]["disagreement"]} for r in ranked[:gallery]]
    if labels is not None:
        summary["accuracy"] = _accuracy(ok, pair, students, labels)
        if pair.task == "detection":
            summary["misses"] = _miss_ranking(ok, ranked, students[0], labels)
    return summary


def _per_class(records: list[dict], name: str, task: str) -> dict[str, float]:
    """Detection: share of the teacher's boxes of each class that the student matches (same class, IoU >= 0.5);
    segmentation: mean teacher-vs-student IoU of each class over images where it occurs; classification: top-1
    match rate per teacher top-1 class."""
    hits: dict[str, list[float]] = {}
    for r in records:
        if task == "detection":
            teacher = r["teacher"]["detections"]
            found = _matches([d["box"] for d in r["students"][name]["detections"]],
                             [d["label"] for d in r["students"][name]["detections"]],
                             [(d["label"], d["box"]) for d in teacher])
            for d, f in zip(teacher, found, strict=True):
                hits.setdefault(d["label"], []).append(float(f))
        elif task == "segmentation":
            for label, value in r["students"][name]["agreement"]["per_class"].items():
                hits.setdefault(label, []).append(value)
        else:
            top = r["teacher"]["top1"]
            hits.setdefault(top, []).append(float(r["students"][name]["top1"] == top))
    return {label: round(statistics.fmean(v), 4) for label, v in sorted(hits.items())}


def _accuracy(records: list[dict], pair, students: list[str], labels: Labels) -> dict:
    """Each model's own accuracy against the labels (torchmetrics)."""
    models = ["teacher", *students]
    if pair.task == "detection":
        from torchmetrics.detection import MeanAveragePrecision

        names = sorted({label for r in records for label, _ in labels.boxes.get(r["image"], [])}
                       | {d["label"] for r in records for d in r["teacher"]["detections"]}
                       | {d["label"] for r in records for s in students for d in r["students"][s]["detections"]})
        index = {n: i for i, n in enumerate(names)}  # every class any model or label names: none is unknown
        out = {}
        if not any(labels.boxes.get(r["image"]) for r in records):  # torchmetrics would give its -1 sentinel
            note = "undefined: no labelled object in the images that were read"
            return {model: {"map_50": None, "note": note} for model in models}
        for model in models:
            metric = MeanAveragePrecision(iou_thresholds=[0.5], sync_on_compute=False)  # rank 0 alone
            for r in records:
                side = r["teacher"] if model == "teacher" else r["students"][model]
                truth = labels.boxes.get(r["image"], [])
                metric.update(
                    [{"boxes": torch.tensor([d["box"] for d in side["detections"]]).reshape(-1, 4),
                      "scores": torch.tensor([d["score"] for d in side["detections"]]),
                      "labels": torch.tensor([index[d["label"]] for d in side["detections"]], dtype=torch.long)}],
                    [{"boxes": torch.tensor([b for _, b in truth]).reshape(-1, 4),
                      "labels": torch.tensor([index[label] for label, _ in truth], dtype=torch.long)}])
            out[model] = {"map_50": round(float(metric.compute()["map_50"]), 4)}
        return out
    if pair.task == "segmentation":
        out = {}
        for model in models:
            sides = [r["teacher"] if model == "teacher" else r["students"][model] for r in records]
            inter = np.sum([s["vs_labels"]["intersection"] for s in sides], axis=0)
            union = np.sum([s["vs_labels"]["union"] for s in sides], axis=0)
            present = union > 0
            out[model] = {"miou": round(float((inter[present] / union[present]).mean()), 4)}
        return out
    from torchmetrics.functional.classification import multiclass_accuracy

    named = [r for r in records if r["image"] in labels.classes]
    classes = sorted({labels.classes[r["image"]] for r in named} | {r["teacher"]["top1"] for r in named}
                     | {r["students"][s]["top1"] for r in named for s in students})
    truth = torch.tensor([classes.index(labels.classes[r["image"]]) for r in named])
    out = {}
    for model in models:
        sides = [r["teacher"] if model == "teacher" else r["students"][model] for r in named]
        predicted = torch.tensor([classes.index(side["top1"]) for side in sides])
        out[model] = {"top1": round(float(multiclass_accuracy(predicted, truth, len(classes), average="micro")), 4)}
        if all("top5" in side for side in sides):  # image classifiers: is the label among the model's top five
            hits = [labels.classes[r["image"]] in side["top5"] for r, side in zip(named, sides, strict=True)]
            out[model]["top5"] = round(sum(hits) / len(hits), 4) if hits else None
    return out


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

    flags = {r["image"]: misses(r) for r in records}
    share = sum(flags.values()) / max(1, len(flags))
    head = [flags[r["image"]] for r in ranked[:top]]
    return {"student": student, "folder_share": round(share, 4), "top": len(head),
            "top_share": round(sum(head) / max(1, len(head)), 4),
            "images": sorted(k for k, v in flags.items() if v)}


def summarise_timing(timings: list[dict]) -> dict:
    students = sorted({n for t in timings for n in t["students_ms"]})
    return {"teacher_ms": _stats([t["teacher_ms"] for t in timings]),
            "students_ms": {n: _stats([t["students_ms"].get(n) for t in timings]) for n in students}}
