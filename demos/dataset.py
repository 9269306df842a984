"""Dataset report: a pair over a whole image folder, and where each student disagrees with its teacher most.

    python -m demos.dataset --images DIR --pair shapes-detection --out OUT [--students a,b] [--labels coco.json]
                            [--resume] [--gallery 12] [--threads 1]
    torchrun --nproc_per_node 2 -m demos.dataset --images DIR --pair shapes-detection --out OUT   # data-parallel

Every image runs through the same functions as the tabs (``detect``, ``segment``, ``classify`` and, for detection
and segmentation, ``consensus``), so its agreement figures are the tabs' own. Output, in ``OUT``:

- ``results.jsonl``: one JSON object per image, appended as images finish (``{"image", "students": {name:
  {"agreement": {...}, "disagreement", "consensus": {...}, ...}}, "teacher": {...}}``; an unreadable file gets
  ``{"image", "error"}``). When the run ends it is rewritten sorted by image name, so it is the same whether the run
  was interrupted and resumed, or split over several processes.
- ``summary.json``: aggregates per student (agreement, per-class agreement, mean consensus, with ``--labels`` each
  model's own mAP@0.5 / mIoU / top-1 via torchmetrics), the images of largest disagreement, and the unreadable files
  with their reasons.
- ``timing.jsonl`` and ``timing.json``: per-image and median latency. Timings differ from run to run, so they are
  kept apart: ``results.jsonl`` and ``summary.json`` depend only on the images and the models.
- ``report.html``: a static page (plotly, embedded, opens offline): distributions, per-class bars, and a gallery of
  the images of largest disagreement with teacher and student overlays side by side.

``--resume`` skips images already in ``results.jsonl`` (a line cut short by a crash is dropped and redone). Under
``torchrun`` each rank takes every ``world``-th image of the sorted list, appends to its own
``results.rank<r>.jsonl``, and rank 0 merges and writes the rest (gloo on CPU, nccl on CUDA). On the CPU each
process uses ``--threads`` threads (default 1, so results are bitwise the same for any number of processes).

Labels (``--labels``) are a COCO-style JSON: ``images`` (``id``, ``file_name``), ``categories`` (``id``, ``name``:
the pair's class names) and ``annotations`` (``image_id``, ``category_id``, and ``bbox`` ``[x, y, w, h]`` for
detection, ``segmentation`` polygons for segmentation, nothing more for classification).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import statistics
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from demos.common import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_IMAGES = 5000  # per run (the CLI); the tab takes MAX_ZIP_IMAGES
MAX_ZIP_IMAGES = 500
MAX_ZIP_BYTES = 200 * 2**20  # the uploaded archive
MAX_ZIP_UNPACKED = 1024 * 2**20  # what it may expand to (zip bombs)
GALLERY = 12
DEFAULT_THRESHOLD = 0.3
DEFAULT_CLASSES = "circle, square, triangle, star, cross"


# Inputs ---------------------------------------------------------------------------------------------------------

def list_images(folder: Path, limit: int = MAX_IMAGES) -> list[Path]:
    """Image files directly in ``folder`` (by suffix), sorted by name; at most ``limit``."""
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder of images.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
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
                             "(the command line takes more: python -m demos.dataset).")
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


# One image ------------------------------------------------------------------------------------------------------

def _consensus_summary(report: dict) -> dict[str, dict]:
    """Per student: consensus over the stages (mean, on the teacher's foreground, on the background)."""
    out = {}
    for name, block in report["students"].items():
        stages = block["stages"]

        def mean(key: str, stages=stages) -> float | None:
            values = [s[key] for s in stages if s[key] is not None]
            return round(sum(values) / len(values), 4) if values else None

        out[name] = {"mean": mean("consensus_mean"), "foreground": mean("consensus_foreground"),
                     "background": mean("consensus_background")}
    return out


def analyse_image(path: Path, pair, students: list[str], threshold: float, classes: str, labels: Labels | None,
                  ) -> tuple[dict, dict]:
    """One image through the tabs' own functions: ``(record, timing)``."""
    from demos.analysis_tab import consensus
    from demos.classification import classify
    from demos.detection import detect
    from demos.segmentation import segment

    record: dict = {"image": path.name}
    if pair.task == "detection":
        _, _, report = detect(str(path), pair.name, threshold, students)
        record["teacher"] = {"detections": report["teacher"]["detections"]}
        record["students"] = {n: {"agreement": b["agreement"], "disagreement": round(1 - b["agreement"]["f1"], 4),
                                  "detections": b["detections"]} for n, b in report["students"].items()}
    elif pair.task == "segmentation":
        _, _, report, npz = segment(str(path), pair.name, students)
        with np.load(npz, allow_pickle=False) as maps:
            arrays = {k: maps[k] for k in maps.files}
        Path(npz).unlink(missing_ok=True)
        record["teacher"] = {"pixels": _class_pixels(arrays["teacher"], report["classes"])}
        record["students"] = {n: {"agreement": b["agreement"], "disagreement": round(1 - b["agreement"]["miou"], 4)}
                              for n, b in report["students"].items()}
        if labels is not None:
            truth = labels.mask(path.name, arrays["teacher"].shape, report["classes"])
            record["teacher"]["vs_labels"] = _overlap(arrays["teacher"], truth, len(report["classes"]))
            for n in record["students"]:
                record["students"][n]["vs_labels"] = _overlap(arrays[n], truth, len(report["classes"]))
    else:
        _, report = classify(str(path), pair.name, classes, "", "", students)
        top = max(report["teacher"]["probs"], key=report["teacher"]["probs"].get)
        record["teacher"] = {"top1": top}
        record["students"] = {n: {"agreement": b["agreement"], "disagreement": b["agreement"]["js"],
                                  "top1": max(b["probs"], key=b["probs"].get)} for n, b in report["students"].items()}
    if pair.task in ("detection", "segmentation"):
        _, analysis = consensus(str(path), pair.name, students=students)
        for name, figures in _consensus_summary(analysis).items():
            record["students"][name]["consensus"] = figures
    timing = {"image": path.name, "teacher_ms": report["teacher"]["latency_ms"],
              "students_ms": {n: b["latency_ms"] for n, b in report["students"].items()}}
    return record, timing


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


# The run --------------------------------------------------------------------------------------------------------

def read_records(path: Path) -> list[dict]:
    """The complete JSON lines of a results file (a last line cut short by a crash is left out)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # only the last line can be partial: the file is appended line by line
    return records


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _rewrite(path: Path, records: list[dict]) -> None:
    """Replace a JSON-lines file atomically (a crash leaves the old file or the new one, never half)."""
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    os.replace(partial, path)


def run_dataset(images: list[Path], pair: str, out: Path, students: str | list[str] | None = None,
                labels: Path | None = None, resume: bool = False, threshold: float = DEFAULT_THRESHOLD,
                classes: str = DEFAULT_CLASSES, gallery: int = GALLERY, rank: int = 0, world: int = 1,
                progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
                barrier: Callable[[], None] | None = None) -> dict | None:
    """Run a pair over images, writing ``out`` as the module docstring says; returns the summary (rank 0) or None.

    Args:
        images: the image files, sorted; rank ``r`` of ``world`` takes ``images[r::world]``.
        pair, students: the pair and one or two of its students (default its first).
        out: the output folder (created).
        labels: a COCO-style label file, or None.
        resume: keep finished images of an earlier run in ``out``; without it, earlier results are replaced.
        progress: ``progress(done, total)`` after each image of this rank.
        cancel: checked before each image; once true the run stops (what is finished stays for ``--resume``).
        barrier: waits for every rank (torch.distributed's barrier); None in one process.
    """
    from weights.registry import get_pair

    spec = get_pair(pair)
    if spec.task == "generation":
        raise InputError(f"{spec.name} is a generation pair; the dataset report takes detection, segmentation or "
                         "classification pairs.")
    chosen = [s.name for s in spec.choose_students(students)]
    truth = Labels.read(labels) if labels else None
    out.mkdir(parents=True, exist_ok=True)
    shard = out / ("results.jsonl" if world == 1 else f"results.rank{rank}.jsonl")
    timing_file = out / ("timing.jsonl" if world == 1 else f"timing.rank{rank}.jsonl")
    if rank == 0 and not resume:
        for old in [*out.glob("results*.jsonl"), *out.glob("timing*.jsonl")]:
            old.unlink()
    if barrier:
        barrier()
    finished = {r["image"] for f in out.glob("results*.jsonl") for r in read_records(f)} if resume else set()
    if resume:  # drop a partial last line before appending after it
        _rewrite(shard, read_records(shard))
    mine = [p for p in images[rank::world] if p.name not in finished]
    for done, path in enumerate(mine, start=1):
        if cancel is not None and cancel():
            break
        try:
            record, timing = analyse_image(path, spec, chosen, threshold, classes, truth)
        except InputError as error:  # unreadable or unusable file: listed, never fatal
            record, timing = {"image": path.name, "error": str(error)}, None
        _append(shard, record)
        if timing is not None:
            _append(timing_file, timing)
        if progress is not None:
            progress(done, len(mine))
    stopped = cancel is not None and cancel()
    if barrier:
        barrier()
    if rank != 0 or stopped:
        return None
    records = sorted({r["image"]: r for f in sorted(out.glob("results*.jsonl")) for r in read_records(f)}.values(),
                     key=lambda r: r["image"])
    timings = sorted({t["image"]: t for f in sorted(out.glob("timing*.jsonl")) for t in read_records(f)}.values(),
                     key=lambda t: t["image"])
    for extra in [*out.glob("results.rank*.jsonl"), *out.glob("timing.rank*.jsonl")]:
        extra.unlink()
    _rewrite(out / "results.jsonl", records)
    _rewrite(out / "timing.jsonl", timings)
    summary = summarise(records, spec, chosen, truth, gallery)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    (out / "timing.json").write_text(json.dumps(summarise_timing(timings), indent=1, sort_keys=True) + "\n")
    write_report(out / "report.html", summary, records, timings, images, spec, chosen, threshold, classes)
    return summary


# Aggregates -----------------------------------------------------------------------------------------------------

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
        if pair.task in ("detection", "segmentation"):
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
                       | {d["label"] for r in records for d in r["teacher"]["detections"]})
        index = {n: i for i, n in enumerate(names)}
        out = {}
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


# The static page ------------------------------------------------------------------------------------------------

def _png(array: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _overlays(path: Path, spec, students: list[str], threshold: float, classes: str) -> list[tuple[str, np.ndarray]]:
    """Teacher and each student's overlay of one image, drawn by the tabs' own code."""
    from demos.detection import detect, student_detections_image
    from demos.segmentation import segment, student_mask_image

    if spec.task == "detection":
        teacher, first, report = detect(str(path), spec.name, threshold, students)
        second = student_detections_image(str(path), report)
    elif spec.task == "segmentation":
        teacher, first, report, npz = segment(str(path), spec.name, students)
        second = student_mask_image(str(path), report, npz)
        Path(npz).unlink(missing_ok=True)
    else:
        from demos.common import read_image

        return [("image", read_image(str(path))[0])]
    pictures = [("teacher", teacher), (students[0], first)]
    return pictures + ([(students[1], second)] if second is not None else [])


def write_report(path: Path, summary: dict, records: list[dict], timings: list[dict], images: list[Path], spec,
                 students: list[str], threshold: float, classes: str) -> None:
    """A self-contained HTML page: distributions, per-class bars and the gallery of largest disagreement."""
    import plotly.graph_objects as go

    ok = [r for r in records if "error" not in r]
    figures = []
    fig = go.Figure([go.Histogram(x=[r["students"][n]["disagreement"] for r in ok], name=n, opacity=0.7, nbinsx=20)
                     for n in students])
    fig.update_layout(title="Disagreement with the teacher per image (detection 1 − F1, segmentation 1 − mIoU, "
                            "classification JS)", barmode="overlay", xaxis_title="disagreement",
                      yaxis_title="images", height=360)
    figures.append(fig)
    per_class = summary["per_student"]
    fig = go.Figure([go.Bar(x=list(per_class[n]["per_class"]), y=list(per_class[n]["per_class"].values()), name=n)
                     for n in students])
    fig.update_layout(title="Per-class agreement with the teacher", barmode="group", yaxis={"range": [0, 1]},
                      height=360)
    figures.append(fig)
    if timings:
        fig = go.Figure([go.Box(y=[t["teacher_ms"] for t in timings], name="teacher")]
                        + [go.Box(y=[t["students_ms"][n] for t in timings if n in t["students_ms"]], name=n)
                           for n in students])
        fig.update_layout(title="Latency per image (ms; this run's, not part of the results)", height=360)
        figures.append(fig)
    plots = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figures)]
    by_name = {p.name: p for p in images}
    gallery = []
    for item in summary["largest_disagreement"]:
        source = by_name.get(item["image"])
        if source is None:
            continue
        cells = "".join(f'<figure><img src="{_png(a)}" width="256"><figcaption>{html.escape(label)}</figcaption>'
                        "</figure>" for label, a in _overlays(source, spec, students, threshold, classes))
        gallery.append(f"<section><h3>{html.escape(item['image'])} — disagreement {item['disagreement']:.3f}</h3>"
                       f'<div class="row">{cells}</div></section>')
    unreadable = "".join(f"<li>{html.escape(u['image'])}: {html.escape(u['reason'])}</li>"
                         for u in summary["unreadable"])
    accuracy = summary.get("accuracy")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Distill Lens dataset report: {
        html.escape(spec.name)}</title><style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}
.row{{display:flex;gap:8px;flex-wrap:wrap}}figure{{margin:0}}figcaption{{text-align:center}}
pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style></head><body>
<h1>Dataset report: {html.escape(spec.name)}</h1>
<p>{summary['images']} images; students {html.escape(', '.join(students))}; the teacher is the reference.</p>
{'<h2>Accuracy against the labels</h2><pre>' + html.escape(json.dumps(accuracy, indent=1)) + '</pre>'
 if accuracy else ''}
<h2>Summary</h2><pre>{html.escape(json.dumps(summary['per_student'], indent=1))}</pre>
{''.join(plots)}
<h2>Largest disagreement ({html.escape(students[0])})</h2>{''.join(gallery)}
{'<h2>Unreadable files</h2><ul>' + unreadable + '</ul>' if unreadable else ''}
</body></html>"""
    path.write_text(page)


# Command line ---------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--pair", required=True)
    parser.add_argument("--students", default="", help="one or two student names, comma-separated")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--labels", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="detection score threshold")
    parser.add_argument("--classes", default=DEFAULT_CLASSES, help="classification: comma-separated class names")
    parser.add_argument("--gallery", type=int, default=GALLERY)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    barrier = None
    if world > 1:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        barrier = dist.barrier
    try:
        images = list_images(args.images)
        summary = run_dataset(images, args.pair, args.out, args.students, args.labels, args.resume, args.threshold,
                              args.classes, args.gallery, rank, world,
                              progress=lambda done, total: print(f"[rank {rank}] {done}/{total}", flush=True)
                              if done % 25 == 0 or done == total else None, barrier=barrier)
    except InputError as error:
        raise SystemExit(f"error: {error}") from None
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    if summary is not None:
        print(json.dumps({k: summary[k] for k in ("pair", "images", "unreadable")} | {
            "per_student": {n: s["agreement"] for n, s in summary["per_student"].items()}}, indent=1))
        print(f"wrote {args.out / 'results.jsonl'}, summary.json, report.html")


if __name__ == "__main__":
    main()


# The tab --------------------------------------------------------------------------------------------------------

def dataset_report(archive, pair: str = "shapes-detection", students: str | list[str] | None = None,
                   labels=None, classes: str = DEFAULT_CLASSES, threshold: float = DEFAULT_THRESHOLD,
                   progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
                   ) -> tuple[str, object, list, list[str]]:
    """The Dataset tab's computation: a zip of images (and optionally COCO-style labels) through a pair.

    Returns:
        ``(summary_markdown, per_class_figure, gallery, files)``: ``gallery`` holds (image, caption) overlays of the
        images of largest disagreement; ``files`` are ``results.jsonl``, ``summary.json``, ``timing.json`` and
        ``report.html`` (only ``results.jsonl`` when stopped early).
    """
    from demos.common import Cancelled, output_path

    if archive is None:
        raise InputError("Upload a zip archive of images.")
    archive_path = archive if isinstance(archive, (str, Path)) else getattr(archive, "name", str(archive))
    labels_path = None if labels is None else Path(labels if isinstance(labels, (str, Path))
                                                   else getattr(labels, "name", str(labels)))
    if labels_path is not None and labels_path.stat().st_size > 20 * 2**20:
        raise InputError("The label file is larger than 20 MB.")
    try:
        threshold = float(threshold)
    except (TypeError, ValueError) as error:
        raise InputError(f"threshold must be a number in [0, 1], got {threshold!r}.") from error
    work = output_path("dataset", "")
    notes = extract_zip(archive_path, work / "images")
    images = list_images(work / "images", MAX_ZIP_IMAGES)
    out = work / "report"
    summary = run_dataset(images, pair, out, students, labels_path, threshold=threshold, classes=classes,
                          progress=progress, cancel=cancel)
    if summary is None:
        done = len(read_records(out / "results.jsonl"))
        raise Cancelled(f"Stopped after {done} of {len(images)} images; nothing was summarised. Run again to "
                        "finish (the command line's --resume keeps finished images).")
    from weights.registry import get_pair

    spec = get_pair(pair)
    gallery = []
    for item in summary["largest_disagreement"][:6]:
        for label, picture in _overlays(work / "images" / item["image"], spec, summary["students"], threshold,
                                        classes):
            gallery.append((picture, f"{item['image']} · {label} · disagreement {item['disagreement']:.3f}"))
    files = [str(out / name) for name in ("report.html", "results.jsonl", "summary.json", "timing.json")]
    return summary_markdown(summary, notes), per_class_figure(summary), gallery, files


def summary_markdown(summary: dict, notes: list[str] = ()) -> str:
    from demos.common import notes_markdown

    lines = [f"**{summary['images']} images** through `{summary['pair']}`"
             + (f"; {len(summary['unreadable'])} unreadable (listed in summary.json)." if summary["unreadable"]
                else ".")]
    for name, block in summary["per_student"].items():
        d = block["disagreement"]
        consensus = block.get("consensus", {}).get("mean", {}).get("mean")
        lines.append(f"**{name}**: mean disagreement with the teacher {d['mean']:.3f} (median {d['median']:.3f}, "
                     f"worst {d['max']:.3f})" + (f"; mean consensus {consensus:.3f}" if consensus is not None
                                                 else "") + ".")
    if "accuracy" in summary:
        lines.append("**Against the labels:** " + "; ".join(
            f"{model} {', '.join(f'{k} {v:.3f}' for k, v in figures.items())}"
            for model, figures in summary["accuracy"].items()) + ".")
    if "misses" in summary:
        m = summary["misses"]
        lines.append(f"Images where {m['student']} misses a labelled object its teacher finds: "
                     f"{m['folder_share']:.0%} of the folder, {m['top_share']:.0%} of the {m['top']} images of "
                     "largest disagreement.")
    return notes_markdown(list(notes)) + "\n\n".join(lines)


def per_class_figure(summary: dict):
    import plotly.graph_objects as go

    fig = go.Figure([go.Bar(x=list(block["per_class"]), y=list(block["per_class"].values()), name=name)
                     for name, block in summary["per_student"].items()])
    fig.update_layout(title="Per-class agreement with the teacher", barmode="group", yaxis={"range": [0, 1]},
                      height=320, margin={"l": 40, "r": 10, "t": 40, "b": 40})
    return fig


def build_dataset_tab() -> None:
    import gradio as gr

    from demos.common import (
        GPU_QUEUE,
        pair_dropdown,
        session_of,
        stop_flag,
        stop_session,
        student_picker,
        takes_request,
        user_errors,
        wire_student_picker,
    )

    with gr.Tab("Dataset", id="dataset"):
        gr.Markdown(f"A pair over a whole folder: upload a zip of images (at most {MAX_ZIP_IMAGES}, "
                    f"{MAX_ZIP_BYTES // 2**20} MB), optionally with COCO-style labels. The teacher is the reference; "
                    "the report ranks the images where the student disagrees most. Larger folders, resumable and "
                    "on several GPUs: `python -m demos.dataset` (see the README).")
        with gr.Row():
            with gr.Column(scale=1):
                archive = gr.File(label="Images (.zip)", file_types=[".zip"])
                labels = gr.File(label="Labels (COCO-style .json, optional)", file_types=[".json"])
                pair = pair_dropdown(("detection", "segmentation", "classification"), "shapes-detection")
                students = student_picker("detection", "shapes-detection")
                classes = gr.Textbox(value=DEFAULT_CLASSES, label="Class names (classification pairs)")
                threshold = gr.Slider(0.0, 1.0, value=DEFAULT_THRESHOLD, step=0.05, label="Score threshold "
                                      "(detection)")
                with gr.Row():
                    run = gr.Button("Run", variant="primary", elem_id="dataset-run")
                    stop = gr.Button("Stop")
            with gr.Column(scale=2):
                summary = gr.Markdown(elem_id="dataset-summary")
                plot = gr.Plot(label="Per-class agreement")
                gallery = gr.Gallery(label="Largest disagreement (teacher and students)", columns=3, height=360)
                files = gr.File(label="report.html, results.jsonl, summary.json, timing.json", file_count="multiple")

        @takes_request
        def run_report(archive, pair, students, labels, classes, threshold, request,
                       progress=gr.Progress()):  # noqa: B008 (Gradio injects progress through this default)
            flag = stop_flag(session_of(request))
            return dataset_report(archive, pair, students, labels, classes, threshold,
                                  progress=lambda done, total: progress(done / total, desc=f"{done}/{total} images"),
                                  cancel=flag.is_set)

        run.click(user_errors(run_report), [archive, pair, students, labels, classes, threshold],
                          [summary, plot, gallery, files], api_name="dataset", **GPU_QUEUE)
        stop.click(takes_request(stop_session), None, None, api_visibility="private")
        wire_student_picker(pair, students)
