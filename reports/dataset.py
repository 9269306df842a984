"""Dataset report: a pair over a whole image folder, and where each student disagrees with its teacher most.

    python -m reports.dataset --images DIR --pair shapes-detection --out OUT [--students a,b] [--labels coco.json]
                            [--resume] [--gallery 12] [--threads 1]
    torchrun --nproc_per_node 2 -m reports.dataset --images DIR --pair shapes-detection --out OUT   # data-parallel
    python -m reports.dataset --images DIR --out OUT --task detection --teacher org/teacher \
        --student org/student [--student ./my_student ...]                       # your own models

Your own models are Hub repo ids (``org/name[@revision]``) or local folders (any folder by default: the CLI runs on
your machine; ``DISTILL_LENS_ALLOW_LOCAL`` set to folders limits them, ``0`` refuses them), checked before anything
downloads (see
``weights/custom.py``); ``--pair`` also takes the same as one spec string (``"detection: org/t -> org/s"``).

Every image runs through the same functions as the tabs (``detect``, ``segment``, ``classify`` and, for detection
and segmentation, ``consensus``), so its agreement figures are the tabs' own. Output, in ``OUT``:

- ``results.jsonl``: one JSON object per image, appended as images finish (``{"image", "students": {name: {"agreement":
  {...}, "disagreement", "consensus": {...}, ...}}, "teacher": {...}}``; an unreadable file gets ``{"image",
  "error"}``). With detection labels each model also keeps every box down to the accuracy threshold for mAP, as base64
  float32 columns (``detections_for_accuracy``, read by ``reports.aggregate.accuracy_detections``). When the run ends
  it is rewritten sorted by image name, so it is the same whether the run was interrupted and resumed, or split over
  several processes.
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
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from analysis.cka import MIN_SAMPLES
from compare.checks import number
from compare.inputs import InputError
from compare.jobs import glibc, stop_check
from compare.vision import detection_labels
from compare.zero_shot import parse_classes
from reports.aggregate import (
    dataset_cka,
    gate_failures,
    parse_gate,
    summarise,
    summarise_timing,
)
from reports.gallery import GalleryStore, kept_maps, overlays
from reports.html import write_report
from reports.inputs import Labels, list_images, match_class
from reports.measure import analyse_batch, read_batch
from weights.custom import OwnModelError
from weights.loaders import ModelUnavailableError
from weights.predictors import predictors_for
from weights.registry import Pair, Student, UnknownPairError, UnknownStudentError, get_pair

GALLERY = 12
ACCURACY_THRESHOLD = 0.01  # detection accuracy (mAP@0.5) counts every box scoring this or more, as the benchmarks do
BATCH = 16  # images per batch: one forward of each model per batch (per input shape within it)
DEFAULT_THRESHOLD = 0.3
DEFAULT_CLASSES = "circle, square, triangle, star, cross"


OUTPUTS = ("results*.jsonl", "timing*.jsonl", "cka*.jsonl", "summary.json", "timing.json", "report.html", "run.json")


def check_writable(out: Path) -> None:
    """That ``out`` is, or can be made, a folder this process writes in: its nearest existing ancestor is a folder
    we may write in (nothing is created here). Raises InputError naming ``--out`` otherwise."""
    existing = out.absolute()
    if existing.exists() and not existing.is_dir():
        raise InputError(f"--out {out} is a file: give a folder (it is created if missing).")
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"--out {out}: {existing} is a file, so the folder cannot be made there; give another path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: no permission to write in {existing}; give a folder you can write to.")


def image_identity(images: list[Path]) -> str:
    """The images a run covers, as one hash of every file's name, size and modification time (a resume over another
    folder, or over files replaced in place, is refused)."""
    import hashlib

    digest = hashlib.sha256()
    for path in images:
        stat = path.stat()
        digest.update(os.fsencode(path.name) + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())  # any bytes
    return f"{len(images)} images, {digest.hexdigest()[:16]}"


def run_settings(spec: Pair, students: list[Student], threshold: float, classes: str, labels: Path | None,
                 batch: int = BATCH, accuracy_threshold: float = ACCURACY_THRESHOLD,
                 images: list[Path] | None = None) -> dict:
    """What a run's results depend on, recorded in ``run.json``: the pair, its students and their weights, the
    threshold, the classes (CLIP), the label file's content hash, the images (:func:`image_identity`)."""
    import hashlib

    def model(source) -> str:
        return f"{source.display_name}@{source.revision}" if source.revision else source.display_name

    return {"pair": spec.name, "students": [s.name for s in students],
            "models": [model(spec.teacher)] + [model(s.source) for s in students], "threshold": threshold,
            "classes": classes if spec.task == "classification" else None,
            "labels": hashlib.sha256(Path(labels).read_bytes()).hexdigest()[:16] if labels else None,
            "batch": batch, "accuracy_threshold": accuracy_threshold if labels and spec.task == "detection" else None,
            "images": image_identity(images) if images is not None else None}


def start_folder(out: Path, settings: dict, resume: bool, overwrite: bool, check_only: bool = False) -> None:
    """Prepare ``out`` for a run: a resume must have the recorded settings; a fresh run needs an empty folder (or
    ``overwrite``, which clears the old run's files first, so an old summary never sits beside new results).

    Raises:
        InputError: a resume with other settings (each difference named), or a run already in ``out``.
    """
    recorded = out / "run.json"
    held = [p for pattern in OUTPUTS for p in out.glob(pattern)]
    if resume and recorded.exists():
        try:
            before = json.loads(recorded.read_text())
            if not isinstance(before, dict):
                raise ValueError("not a JSON object")
        except (OSError, UnicodeDecodeError, ValueError) as error:  # cut short by a crash, or edited by hand
            raise InputError(f"{recorded} cannot be read ({str(error)[:80]}), so the run's settings cannot be "
                             "checked: start again with --overwrite, or give another --out.") from None
        changed = [f"{k}: {before.get(k)!r} then, {v!r} now" for k, v in settings.items() if before.get(k) != v]
        if changed:
            raise InputError(f"{out} holds a run with other settings ({'; '.join(changed)}): resume with the same "
                             "settings, or start a new run with --overwrite or another --out.")
    elif resume and [p for p in held if p.name != "run.json"]:  # results whose settings cannot be checked
        raise InputError(f"{out} holds results but no run.json recording their settings, so they cannot be checked "
                         "against this run's: start again with --overwrite, or give another --out.")
    elif held and not resume and not overwrite:
        raise InputError(f"{out} holds a run already: --resume to finish it, --overwrite to replace it, or give "
                         "another --out.")
    if check_only:
        return
    if not resume:
        for old in held:
            old.unlink()
        shutil.rmtree(out / "gallery", ignore_errors=True)
    _rewrite(recorded, [settings])


def read_records(path: Path) -> list[dict]:
    """The complete JSON lines of a results file (a last line cut short by a crash is left out), read line by line
    (the file's text is never held whole). A detection record's box label names (one per kept box, ~100 a model
    and image) become one string object per distinct name: a third of a record's memory when the summary reads
    every record back."""
    if not path.exists():
        return []
    records, names = [], {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # only the last line can be partial: the file is appended line by line
            blocks = [record.get("teacher"), *(record.get("students") or {}).values()] \
                if isinstance(record, dict) and isinstance(record.get("students", {}), dict) else []
            for block in blocks:
                columns = block.get("detections_for_accuracy") if isinstance(block, dict) else None
                if isinstance(columns, dict) and isinstance(columns.get("labels"), list):
                    columns["labels"] = [names.setdefault(n, n) if isinstance(n, str) else n
                                         for n in columns["labels"]]
            records.append(record)
    return records


def _append(path: Path, records: list[dict]) -> None:
    """Append records to a JSON-lines file, one write for all of them (a batch's). Once written they survive the
    process being killed (they are the system's to keep). They are not forced to disk (an fsync per batch cost ~5 %
    of the loop with two processes), so a crash of the whole machine may lose any of the last lines, in any order:
    ``--resume`` redoes a batch with a record missing or with its CKA terms missing; a lost timing line only leaves
    that image out of the timing medians. Keys are sorted when the run ends and rewrites the files
    (:func:`_rewrite`), not here."""
    if not records:
        return
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


def _rewrite(path: Path, records: list[dict]) -> None:
    """Replace a JSON-lines file atomically (a crash leaves the old file or the new one, never half)."""
    partial = path.with_suffix(path.suffix + ".partial")
    with open(partial, "w", encoding="utf-8") as f:  # line by line: the whole file's text is never one string
        for record in records:
            f.write(json.dumps(record, sort_keys=True) + "\n")
    os.replace(partial, path)


class _Inline:
    """A ``ThreadPoolExecutor``'s ``submit``/``shutdown`` that runs the call at once, in this thread."""

    def submit(self, fn: Callable, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def _spare_core(world: int) -> bool:
    """Whether this machine has a core beyond those its report processes compute on (torchrun's local ranks)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores > int(os.environ.get("LOCAL_WORLD_SIZE", world)) * torch.get_num_threads()


def run_dataset(images: list[Path], pair: str | Pair, out: Path, students: str | list[str] | None = None,
                labels: Path | None = None, resume: bool = False, threshold: float = DEFAULT_THRESHOLD,
                classes: str = DEFAULT_CLASSES, gallery: int = GALLERY, rank: int = 0, world: int = 1,
                progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
                barrier: Callable[[], None] | None = None, overwrite: bool = False, batch: int = BATCH,
                accuracy_threshold: float = ACCURACY_THRESHOLD, checked: Checked | None = None,
                original_names: dict[str, str] | None = None) -> dict | None:
    """Run a pair over images, writing ``out`` as the module docstring says; returns the summary (rank 0) or None.

    Args:
        images: the image files, sorted, any number; they run in batches of ``batch`` consecutive images (batch
            ``k`` is ``images[k*batch:(k+1)*batch]`` however the run is split), and rank ``r`` of ``world`` takes
            batches ``r, r + world, ...``.
        pair, students: the pair and one or two of its students (default its first).
        out: the output folder (created).
        labels: a COCO-style label file, or None.
        resume: keep finished images of an earlier run in ``out`` (refused when its settings differ: ``run.json``
            records them); without it, a folder holding a run is refused unless ``overwrite``.
        overwrite: replace a run already in ``out``.
        progress: ``progress(done, total)`` after each batch of this rank (images done, of this rank's images).
        cancel: checked before each batch, as is whether the caller has gone (an API cancel, a closed page); then
            the run stops (what is finished stays for ``--resume``).
        barrier: waits for every rank (torch.distributed's barrier); None in one process.
        checked: what :func:`check_arguments` already loaded for these arguments (the models, the label file read),
            so that neither is loaded twice; None: loaded here.
        original_names: each image's name before it was made safe (an uploaded zip's, from
            :func:`reports.inputs.extract_zip`), so labels match the very file they name.
    """
    spec = pair if isinstance(pair, Pair) else get_pair(pair)
    if spec.task == "generation":
        raise InputError(f"{spec.name} is a generation pair; the dataset report takes detection, segmentation or "
                         "classification pairs.")
    students_chosen = spec.choose_students(students)
    chosen = [s.name for s in students_chosen]
    # loaded once for the whole run
    predictors = checked.predictors if checked is not None else predictors_for(spec, students=students_chosen)
    truth = None
    if labels:
        classes_measured = label_classes(spec, predictors, classes)
        if checked is not None and checked.labels is not None:  # read and checked against these images already
            truth = checked.labels
        else:
            truth = Labels.read(labels).for_images({p.name for p in images}, original_names)
            check_labels_fit(truth, images, spec.task, classes_measured, Path(labels).name)
        truth = truth.for_classes(classes_measured, spec.task)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--out {out} cannot be made a folder ({error.strerror}): give a folder you can write to.") \
            from error
    shard = out / ("results.jsonl" if world == 1 else f"results.rank{rank}.jsonl")
    timing_file = out / ("timing.jsonl" if world == 1 else f"timing.rank{rank}.jsonl")
    settings = run_settings(spec, students_chosen, threshold, classes, labels, batch, accuracy_threshold, images)
    if rank == 0:
        start_folder(out, settings, resume, overwrite)
    if barrier:
        barrier()
    cka_file = out / ("cka.jsonl" if world == 1 else f"cka.rank{rank}.jsonl")
    earlier = [r for f in out.glob("results*.jsonl") for r in read_records(f)] if resume else []  # read once
    finished = {r["image"]: "error" not in r for r in earlier}  # image -> whether it was readable
    cka_done = {c["batch"] for f in out.glob("cka*.jsonl") for c in read_records(f)} if resume else set()
    if resume:  # drop a partial last line (a crash while writing it) before appending after it
        for file in (shard, timing_file, cka_file):
            _rewrite(file, read_records(file))
    batches = [(k, images[start:start + batch]) for k, start in enumerate(range(0, len(images), batch))][rank::world]
    store = GalleryStore(out / "gallery", gallery if spec.task == "segmentation" else 0, chosen[0], earlier,
                         {p.name for _, paths in batches for p in paths})
    del earlier  # not held through the run: memory stays flat however many images were done before

    def terms_missing(k: int, paths: list[Path]) -> bool:  # records all written, CKA terms lost (a machine crash)
        return spec.task != "classification" and k not in cka_done and \
            sum(finished.get(p.name, False) for p in paths) >= MIN_SAMPLES

    todo = [(k, paths) for k, paths in batches
            if any(p.name not in finished for p in paths) or terms_missing(k, paths)]
    total, done = sum(len(paths) for _, paths in todo), 0
    cancel = stop_check(cancel)
    loop_start = time.perf_counter()
    # with a core to spare, the next batch's files are decoded in a thread while this one runs (PIL frees the GIL);
    # without one, the thread would only take turns with the models, so they are decoded when needed
    reader = ThreadPoolExecutor(1, "decode") if _spare_core(world) else _Inline()
    upcoming = reader.submit(read_batch, todo[0][1]) if todo else None
    try:
        for position, (k, paths) in enumerate(todo):
            if cancel():
                break
            read = upcoming.result()
            if position + 1 < len(todo):
                upcoming = reader.submit(read_batch, todo[position + 1][1])
            # a batch cut short by a crash runs again whole (the same images, the same numbers); only its missing
            # images are written
            analysed, cka = analyse_batch(paths, spec, students_chosen, predictors, threshold, classes, truth, k,
                                          accuracy_threshold, read)
            fresh = [a for a in analysed if a.record["image"] not in finished]
            for a in fresh:
                if a.maps is not None:
                    store.offer(a.record, a.maps)
            if cka is not None and k not in cka_done:  # a resumed run redoes a batch whose terms were lost
                _append(cka_file, [{"batch": k, "students": cka}])
            _append(shard, [a.record for a in fresh])
            _append(timing_file, [a.timing for a in fresh if a.timing is not None])
            done += len(paths)
            if progress is not None:
                progress(done, total)
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
    loop_seconds = time.perf_counter() - loop_start
    stopped = cancel()
    if barrier:
        barrier()
    if rank != 0 or stopped:
        return None
    records = sorted({r["image"]: r for f in sorted(out.glob("results*.jsonl")) for r in read_records(f)}.values(),
                     key=lambda r: r["image"])
    timings = sorted({t["image"]: t for f in sorted(out.glob("timing*.jsonl")) for t in read_records(f)}.values(),
                     key=lambda t: t["image"])
    terms = sorted({c["batch"]: c for f in sorted(out.glob("cka*.jsonl")) for c in read_records(f)}.values(),
                   key=lambda c: c["batch"])
    for extra in [*out.glob("results.rank*.jsonl"), *out.glob("timing.rank*.jsonl"), *out.glob("cka.rank*.jsonl")]:
        extra.unlink()
    _rewrite(out / "results.jsonl", records)
    _rewrite(out / "timing.jsonl", timings)
    _rewrite(out / "cka.jsonl", terms)
    summary = summarise(records, spec, chosen, truth, gallery, accuracy_threshold)
    summary["dataset_cka"] = dataset_cka(terms, chosen)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    (out / "timing.json").write_text(json.dumps(summarise_timing(timings) | {
        "loop_seconds_rank0": round(loop_seconds, 3), "images_rank0": done}, indent=1, sort_keys=True) + "\n")
    pictures = gallery_pictures(summary["largest_disagreement"], records, images, spec, students_chosen, predictors,
                                out / "gallery")
    write_report(out / "report.html", summary, records, timings, pictures, spec, chosen)
    return summary


def gallery_pictures(items: list[dict], records: list[dict], images: list[Path], spec: Pair, chosen: list[Student],
                     predictors: dict, kept: Path) -> list[tuple[dict, list[tuple[str, np.ndarray]]]]:
    """The overlays of the images of largest disagreement, drawn from their records or kept class maps; an image
    whose maps were not kept (a resumed run that kept fewer) is run again, and only that one."""
    by_name = {p.name: p for p in images}
    by_record = {r["image"]: r for r in records}
    labels = detection_labels(predictors)
    out = []
    for item in items:
        path = by_name.get(item["image"])
        if path is None:
            continue
        maps = kept_maps(kept, item["image"]) if spec.task == "segmentation" else None
        if spec.task == "segmentation" and maps is None:
            maps = analyse_batch([path], spec, chosen, predictors, 0.0, "", None)[0][0].maps
        out.append((item, overlays(path, by_record[item["image"]], spec.task, [s.name for s in chosen], labels,
                                   list(predictors["teacher"].labels), maps)))
    return out


# Command line ---------------------------------------------------------------------------------------------------

def pair_argument(args: argparse.Namespace) -> str:
    """``--pair``, or the pair spec of ``--task``, ``--teacher`` and ``--student`` (your own models).

    Raises:
        InputError: both or neither given, or a part of the own pair missing.
    """
    own = [args.task, args.teacher, *args.student]
    if args.pair and any(own):
        raise InputError("Give either --pair or your own models (--task, --teacher, --student), not both.")
    if args.pair:
        return args.pair
    if not any(own):
        raise InputError("Name the models: --pair NAME, or --task T --teacher ID --student ID [--student ID ...].")
    missing = [flag for flag, value in (("--task", args.task), ("--teacher", args.teacher),
                                        ("--student", args.student)) if not value]
    if missing:
        raise InputError(f"Your own models need {', '.join(missing)} too (e.g. --task detection --teacher "
                         "org/teacher --student org/student).")
    tasks = ("detection", "segmentation", "image-classification", "classification")
    if args.task not in tasks:
        raise InputError(f"--task {args.task[:40]!r} is not one the report takes; choose one of {', '.join(tasks)}.")
    if args.students:
        raise InputError("--students picks among a registered pair's students; with your own models, list them with "
                         "--student.")
    return f"{args.task}: {args.teacher} -> {', '.join(args.student)}"


@dataclass
class Checked:
    """What :func:`check_arguments` found and loaded: the images, the models (``{"teacher": ..., <student>: ...}``)
    and the label file read (None without ``--labels``), handed on to :func:`run_dataset` so that neither the
    models nor a large label file is loaded twice."""

    images: list[Path]
    predictors: dict
    labels: Labels | None


def check_arguments(args: argparse.Namespace) -> Checked:
    """Every argument checked once, before any work: the pair and students, the numbers, the classes, the output
    folder, the label file, the images, and that the models load here.

    Raises:
        InputError, UnknownPairError, UnknownStudentError, ModelUnavailableError: naming what to change.
    """
    spec = get_pair(args.pair)
    if spec.task == "generation":
        raise InputError(f"{spec.name} is a generation pair; the dataset report takes detection, segmentation, "
                         "classification or image-classification pairs.")
    chosen = spec.choose_students(args.students)
    try:
        args.gate_under = parse_gate(getattr(args, "fail_under", None), spec.task, "--fail-under")
        args.gate_over = parse_gate(getattr(args, "fail_over", None), spec.task, "--fail-over")
    except ValueError as error:
        raise InputError(str(error)) from error
    args.threshold = number(args.threshold, "--threshold", 0.0, 1.0)
    args.gallery = number(args.gallery, "--gallery", 0, 1000, integer=True)
    args.threads = number(args.threads, "--threads", 1, 1024, integer=True)
    args.batch = number(args.batch, "--batch", 1, 4096, integer=True)
    args.accuracy_threshold = number(args.accuracy_threshold, "--accuracy-threshold", 0.0, 1.0)
    if spec.task == "classification":
        if args.classes is None:
            if spec.source != "builtin":
                raise InputError(f"{spec.name[:80]} is a CLIP pair: give the class names to classify into with "
                                 "--classes 'cat, dog, cup'.")
            args.classes = DEFAULT_CLASSES
        parse_classes(args.classes)
    elif args.classes is None:
        args.classes = DEFAULT_CLASSES
    check_writable(args.out)
    truth = None
    if args.labels is not None:
        if not args.labels.is_file():
            raise InputError(f"--labels {args.labels} is not a file.")
        truth = Labels.read(args.labels)
    elif any(name in LABEL_FIGURES for name in [*args.gate_under, *args.gate_over]):
        raise InputError(f"--fail-under/--fail-over name a figure against labels "
                         f"({', '.join(n for n in [*args.gate_under, *args.gate_over] if n in LABEL_FIGURES)}): give "
                         "--labels too.")
    images = list_images(args.images)
    if args.out.is_dir():  # every process checks, before any waits for the others
        start_folder(args.out, run_settings(spec, chosen, args.threshold, args.classes, args.labels, args.batch,
                                            args.accuracy_threshold, images), args.resume,
                     args.overwrite, check_only=True)
    predictors = predictors_for(spec, students=chosen)  # offline and uncached, a Hub pair says so here
    if truth is not None:
        truth = truth.for_images({p.name for p in images})
        check_labels_fit(truth, images, spec.task, label_classes(spec, predictors, args.classes), args.labels.name)
    return Checked(images, predictors, truth)


LABEL_FIGURES = ("map50", "label_miou", "top1", "top5")


def label_classes(spec: Pair, predictors: dict, classes: str) -> list[str]:
    """The class names labels are measured in: a CLIP pair's ``classes``, otherwise the teacher's (a detector's
    "background" is no object class)."""
    if spec.task == "classification":
        return parse_classes(classes)[0]
    return [c for c in predictors["teacher"].labels if spec.task != "detection" or c != "background"]


def check_labels_fit(truth: Labels, images: list[Path], task: str, classes: list[str], name: str) -> None:
    """Refuse a label file that cannot measure anything here: none of its images among ``images``; for detection
    no box, for segmentation no mask (polygons or RLE); or none of its classes among the pair's ``classes``.

    Raises:
        InputError: naming what does not fit.
    """
    if truth.listed and not truth.listed & {p.name for p in images}:
        raise InputError(f"No image that {name} labels is in --images (it labels e.g. {sorted(truth.listed)[0]!r}): "
                         "give the folder those labels are for.")
    if task == "detection":
        named = {label for table in (truth.boxes, truth.crowd_boxes) for items in table.values() for label, _ in items}
        kind = "boxes ('bbox')"
    elif task == "segmentation":
        named = {label for table in (truth.polygons, truth.rle, truth.ignored) for items in table.values()
                 for label, _ in items}
        kind = "masks ('segmentation' polygons or RLE)"
    else:
        named, kind = set(truth.classes.values()), ""
    if kind and truth.classes and not named:  # annotations, none of the kind this task measures
        raise InputError(f"The labels {name} hold no {kind}: a {task} pair is measured against those.")
    if named and not any(match_class(label, classes) for label in named):
        raise InputError(f"None of the classes in {name} ({', '.join(sorted(named)[:6])}) is one of the pair's "
                         f"({', '.join(classes[:8])}{', …' if len(classes) > 8 else ''}); name the categories as "
                         "the models do.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m reports.dataset", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="a folder of images, or a pattern ('DIR/*.jpg')")
    models = parser.add_argument_group("models", "a registered pair (--pair), or your own (--task, --teacher, "
                                       "--student)")
    models.add_argument("--pair", help="a registered pair's name, or a pair spec ('detection: org/t -> org/s')")
    models.add_argument("--students", default="", help="one or two student names of --pair, comma-separated")
    models.add_argument("--task", help="your own models' task: detection, segmentation, image-classification or "
                        "classification")
    models.add_argument("--teacher", help="your own teacher: a Hub repo id (org/name[@revision]) or a local folder")
    models.add_argument("--student", action="append", default=[], help="your own student, as --teacher; 1 to 3 "
                        "times (name=MODEL names it)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--labels", type=Path)
    parser.add_argument("--resume", action="store_true", help="finish a run in --out (with the same settings)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="detection score threshold")
    parser.add_argument("--classes", default=None, help="CLIP pairs: comma-separated class names (required for "
                        f"your own CLIP models; builtin pairs default to {DEFAULT_CLASSES!r})")
    parser.add_argument("--gallery", type=int, default=GALLERY)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    parser.add_argument("--batch", type=int, default=BATCH, help="images per batch (one forward per model per batch)")
    parser.add_argument("--accuracy-threshold", type=float, default=ACCURACY_THRESHOLD,
                        help="detection with labels: mAP@0.5 counts every box scoring this or more (the agreement "
                             "keeps --threshold)")
    gate = parser.add_argument_group("deploy gate", "exit 1 (after writing the report) when any student fails; for CI")
    gate.add_argument("--fail-under", help="floors, e.g. agreement=0.9,map50=0.8 (figures of summary.json)")
    gate.add_argument("--fail-over", help="ceilings of lower-is-better figures, e.g. js=0.05")
    args = parser.parse_args(argv)
    added = "DISTILL_LENS_ALLOW_LOCAL" not in os.environ
    if added:  # the CLI runs on the user's own machine: any local folder, for this command only
        os.environ["DISTILL_LENS_ALLOW_LOCAL"] = os.sep
    try:
        _run(parser, args)
    finally:
        if added:
            os.environ.pop("DISTILL_LENS_ALLOW_LOCAL", None)


def keep_freed_memory() -> None:
    """Let this process keep the memory it frees instead of handing it back to the system at once (glibc's
    ``mallopt``; Linux only, elsewhere nothing). PyTorch's CPU tensors come straight from ``malloc``, which maps large
    blocks afresh and returns freed memory to the system, so the analysis' megabyte temporaries page-fault anew on
    every batch (measured: a fifth of the consensus time). Resident memory then stays at its peak. Called by the CLI
    for its own process only."""
    libc = glibc()
    if libc is not None:
        m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
        libc.mallopt(m_mmap_threshold, 1 << 30)  # blocks up to 1 GiB from the heap, which keeps what is freed
        libc.mallopt(m_trim_threshold, 1 << 31)


class PeerStopped(Exception):
    """Another process of a data-parallel run stopped (Ctrl-C reaches every process, but one may be waiting at a
    barrier when the others have gone): the collective call failed."""


def _barrier() -> None:
    """torch.distributed's barrier, its failure for a process that has gone said as :class:`PeerStopped`."""
    import torch.distributed as dist

    try:
        dist.barrier()
    except RuntimeError as error:  # gloo's "Connection closed by peer", NCCL's errors: DistBackendError
        raise PeerStopped(str(error)) from error


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    try:
        args.pair = pair_argument(args)
        checked = check_arguments(args)
    except (InputError, UnknownPairError, UnknownStudentError, ModelUnavailableError, OwnModelError) as error:
        parser.error(str(error))  # one line, exit 2
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    barrier = None
    if world > 1:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        barrier = _barrier
    tag = f"[rank {rank}] " if world > 1 else ""
    try:
        summary = run_dataset(checked.images, args.pair, args.out, args.students, args.labels, args.resume,
                              args.threshold, args.classes, args.gallery, rank, world,
                              progress=lambda done, total: print(f"{tag}{done}/{total}", flush=True)
                              if done % 25 == 0 or done == total else None, barrier=barrier,
                              overwrite=args.overwrite, batch=args.batch,
                              accuracy_threshold=args.accuracy_threshold, checked=checked)
    except InputError as error:
        raise SystemExit(f"error: {error}") from None
    except (KeyboardInterrupt, PeerStopped) as stop:  # Ctrl-C: what is finished stays, one line says how to go on
        done = sum(len(read_records(f)) for f in args.out.glob("results*.jsonl"))
        why = "another process of this run stopped, so this one did too" if isinstance(stop, PeerStopped) else \
            "stopped"
        print(f"\n{tag}{why}: {done} images finished in {args.out}; run the same command with --resume to finish.",
              file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if world > 1:
            import torch.distributed as dist

            with contextlib.suppress(RuntimeError):  # a process already gone: nothing left to tear down with it
                dist.destroy_process_group()
    if summary is not None and summary["images"] == 0:
        raise SystemExit(f"error: no image of --images could be read ({len(summary['unreadable'])} unreadable, each "
                         f"with its reason in {args.out / 'summary.json'}); nothing was measured.")
    if summary is not None:
        print(json.dumps({k: summary[k] for k in ("pair", "images", "unreadable")} | {
            "per_student": {n: s["agreement"] for n, s in summary["per_student"].items()}} | {
            k: summary[k] for k in ("accuracy", "labels") if k in summary}, indent=1))
        print(f"wrote {args.out / 'results.jsonl'}, summary.json, report.html")
        failures = gate_failures(summary, args.gate_under, args.gate_over)
        if failures:
            print("deploy gate failed:\n" + "\n".join(f"  {line}" for line in failures), file=sys.stderr)
            raise SystemExit(1)
        if args.gate_under or args.gate_over:
            print("deploy gate passed")


if __name__ == "__main__":
    main()
