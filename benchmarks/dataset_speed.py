"""Images per second of the dataset report against its forward-only limit, in one process and data-parallel; its
memory over a long run; and whether its ranking means anything.

    python -m benchmarks.dataset_speed [--scenes 2000] [--procs 1 2] [--batch 16] [--pair shapes-detection]
    python -m benchmarks.dataset_speed --rss-scenes 10000      # memory over a long run, one process

Writes ``--scenes`` held-out Shapes scenes and their COCO-style box labels to a temporary folder, then runs ``python -m
reports.dataset`` on them once per process count (``torchrun --standalone --nproc_per_node N`` beyond one; one CPU
thread per process; on CUDA, as many processes as asked on the one GPU). Printed per run: the report loop's images per
second (rank 0's loop: reading, the models, the consensus analysis, CKA terms, writing; start-up, model loading and the
final summary excluded), the whole command's wall-clock, and whether ``results.jsonl``, ``summary.json`` and
``cka.jsonl`` equal the one-process run's. The **forward-only limit** is measured in the same run, before and after the
report runs: the teacher's and students' forwards alone on batches of ``--batch`` scenes (one thread), images per
second, the fastest of several rounds and the higher of the two measurements (so a slow moment of the machine never
flatters the share); N processes have N times it. The report's loop decodes the next batch's files in a background
thread, as a data loader would. ``--rss-scenes`` runs one process over that many scenes and prints its resident memory
as the images go by (sampled from ``/proc``). Last, the ranking check: the share of images where the student misses a
labelled object that its teacher finds, in the whole folder and among the 10 images of largest disagreement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from weights.shapes.world import CLASS_NAMES, EVAL_SEED_START, render_scene

ROOT = Path(__file__).resolve().parents[1]
SEED_START = EVAL_SEED_START + 3000  # held out from training, apart from the accuracy tables' scenes


def write_scenes(folder: Path, count: int) -> Path:
    """``count`` held-out scenes as PNGs in ``folder/images`` and their boxes in ``folder/labels.json``."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [],
            "categories": [{"id": i, "name": c} for i, c in enumerate(CLASS_NAMES) if i]}
    for k in range(count):
        scene = render_scene(SEED_START + k)
        name = f"scene_{k:04d}.png"
        Image.fromarray(scene.image).save(images / name)
        coco["images"].append({"id": k, "file_name": name})
        for (x0, y0, x1, y1), c in zip(scene.boxes.tolist(), scene.class_ids.tolist(), strict=True):
            coco["annotations"].append({"image_id": k, "category_id": int(c), "bbox": [x0, y0, x1 - x0, y1 - y0]})
    labels = folder / "labels.json"
    labels.write_text(json.dumps(coco))
    return labels


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, MB (Linux ``/proc``)."""
    total = 0
    for proc in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        kids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _children(k)]


def run(procs: int, folder: Path, labels: Path, out: Path, pair: str, students: str, batch: int,
        watch: bool = False) -> tuple[float, list[tuple[int, float]]]:
    """One report command: its wall-clock seconds and, when ``watch``, (images done, RSS MB) samples."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)] if procs > 1 else []
    command = [sys.executable, *launcher, "-m", "reports.dataset", "--images", str(folder / "images"), "--pair", pair,
               "--out", str(out), "--labels", str(labels), "--students", students, "--threads", "1",
               "--batch", str(batch)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    samples = []
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as process:
        while watch and process.poll() is None:
            results = out / "results.jsonl"
            done = sum(1 for _ in open(results)) if results.exists() else 0
            samples.append((done, rss_mb(process.pid)))
            time.sleep(2)
        _, err = process.communicate()
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(err[-3000:])
    return seconds, samples


def forward_limit(pair: str, students: str, folder: Path, batch: int, rounds: int = 5, batches: int = 8) -> float:
    """Images per second of the models' forwards alone (teacher and students, no analysis), one thread, batches of
    ``batch`` scenes: ``rounds`` timed passes over ``batches`` distinct batches after a warm-up, the fastest round
    (the most the loop could reach on this machine: a slow moment never lowers the limit)."""
    import torch

    import compare

    torch.set_num_threads(1)
    _, _, predictors = compare.load(pair, students or None)
    paths = sorted((folder / "images").glob("*.png"))[:batch * batches]
    groups = [paths[k:k + batch] for k in range(0, len(paths), batch)]
    prepared = [{name: {"pixel_values": torch.cat([p.prepare(np.array(Image.open(f).convert("RGB")))[0]["pixel_values"]
                                                   for f in group])} for name, p in predictors.items()}
                for group in groups]
    best = float("inf")
    for round_ in range(rounds + 1):
        start = time.perf_counter()
        for inputs in prepared:
            for name, predictor in predictors.items():
                predictor.forward(inputs[name])
        if round_:  # the first round warms up
            best = min(best, time.perf_counter() - start)
    return len(paths) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=2000)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pair", default="shapes-detection")
    parser.add_argument("--students", default="")
    parser.add_argument("--rss-scenes", type=int, default=0, help="instead: memory over this many scenes, 1 process")
    args = parser.parse_args()
    import torch

    device = f"CUDA ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.rss_scenes:
            labels = write_scenes(folder, args.rss_scenes)
            seconds, samples = run(1, folder, labels, folder / "out", args.pair, args.students, args.batch, True)
            print(f"Resident memory of one report process over {args.rss_scenes} scenes ({args.pair}, batch "
                  f"{args.batch}, {device}; {seconds:.0f} s):\n")
            print("| images done | RSS (MB) |\n|---|---|")
            shown = [s for s in samples if s[0] > 0]
            marks = {round(f * args.rss_scenes) for f in (0.05, 0.25, 0.5, 0.75, 1.0)}
            for mark in sorted(marks):
                done, rss = min(shown, key=lambda s: abs(s[0] - mark))
                print(f"| {done} | {rss:.0f} |")
            return
        labels = write_scenes(folder, args.scenes)
        before = forward_limit(args.pair, args.students, folder, args.batch)
        rows, reference = [], None
        for procs in args.procs:
            out = folder / f"out{procs}"
            seconds, _ = run(procs, folder, labels, out, args.pair, args.students, args.batch)
            files = {n: (out / n).read_text() for n in ("results.jsonl", "summary.json", "cka.jsonl")}
            reference = reference or files
            timing = json.loads((out / "timing.json").read_text())
            rows.append((procs, timing["images_rank0"] / timing["loop_seconds_rank0"] * procs, seconds,
                         files == reference))
        limit = max(before, forward_limit(args.pair, args.students, folder, args.batch))  # measured on both sides
        print(f"Dataset report over {args.scenes} held-out Shapes scenes, {args.pair}, batch {args.batch}, on "
              f"{device}; forward-only limit {limit:.1f} images/s per process (teacher and students, one thread; "
              f"the faster of before and after the runs: {before:.1f}, then this)\n")
        print("| processes | report loop, images / s | share of the forward-only limit | whole command (s) | "
              "results, summary and CKA equal to 1 process |")
        print("|---|---|---|---|---|")
        for procs, rate, seconds, same in rows:
            print(f"| {procs} | {rate:.1f} | {rate / (limit * procs):.0%} | {seconds:.1f} | "
                  f"{'yes' if same else 'NO'} |")
        summary = json.loads(reference["summary.json"])
        if "misses" in summary:
            m = summary["misses"]
            print(f"\nRanking check ({m['student']}): images where the student misses a labelled object its teacher "
                  f"finds: {m['folder_share']:.1%} of the folder ({len(m['images'])} of {summary['images']}), "
                  f"{m['top_share']:.0%} of the {m['top']} images of largest disagreement "
                  f"({m['top_share'] / max(m['folder_share'], 1e-9):.1f}× the folder's share; bar: 2×).")
            print(f"Accuracy against the labels: {json.dumps(summary['accuracy'])}")


if __name__ == "__main__":
    main()
