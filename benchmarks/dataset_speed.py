"""Images per second of the dataset report against its forward-only limit, in one process and data-parallel; its
memory over a long run; and whether its ranking means anything.

    python -m benchmarks.dataset_speed [--scenes 2000] [--procs 1 2] [--batch 16] [--repeats 5]
                                       [--pair shapes-detection]
    python -m benchmarks.dataset_speed --rss-scenes 10000      # memory over a long run, one process

Writes ``--scenes`` held-out Shapes scenes and their COCO-style box labels to a temporary folder, then runs ``python -m
reports.dataset`` on them once per process count (``torchrun --standalone --nproc_per_node N`` beyond one; one CPU
thread per process; on CUDA, as many processes as asked on the one GPU). Printed per run: the report loop's images per
second (rank 0's loop: reading, the models, the consensus analysis, CKA terms, writing; start-up, model loading and the
final summary excluded; N processes count N times rank 0's rate), the whole command's wall-clock, and whether
``results.jsonl``, ``summary.json`` and ``cka.jsonl`` equal the one-process run's. The **forward-only limit** is
measured beside each run, just before and just after it (the higher counts, so a slow moment of the machine never
flatters the share): as many processes as the run, at once, each doing only the teacher's and students' forwards over
the batches its rank of the report takes (read and prepared untimed), images over the summed time of the forward calls.
Each process count runs ``--repeats`` rounds of (limit, report, limit): the machine's speed drifts by several per cent
from minute to minute, so the table gives each figure's median over the rounds and the share's lowest and highest.
The report's loop decodes the next batch's files in a background thread when a core is spare, as a data loader
would. ``--rss-scenes`` runs one process over that many scenes and prints its resident memory as the images go by
(sampled from ``/proc`` every 2 s), and the highest sample once every image is done (the summary, the report). Last,
the ranking check: the share of images where the student misses a labelled object that its teacher finds, in the
whole folder and among the 10 images of largest disagreement.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from weights.shapes.world import EVAL_SEED_START, write_labelled_scenes

ROOT = Path(__file__).resolve().parents[1]
SEED_START = EVAL_SEED_START + 3000  # held out from training, apart from the accuracy tables' scenes


def write_scenes(folder: Path, count: int) -> Path:
    """``count`` held-out scenes as PNGs in ``folder/images`` and their boxes in ``folder/labels.json``."""
    return write_labelled_scenes(folder, range(SEED_START, SEED_START + count))[1]


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


def forward_rate(pair: str, students: str, folder: Path, batch: int, rank: int = 0, world: int = 1) -> float:
    """Images per second of the models' forwards alone (teacher and students, no analysis, one thread) over the
    batches this rank of the report would take (batches of ``batch`` scenes, every ``world``-th from ``rank``): the
    images over the summed time of the forward calls; each batch is read and prepared untimed, after a warm-up."""
    import torch

    import compare
    from reports.dataset import keep_freed_memory

    torch.set_num_threads(1)
    keep_freed_memory()  # as the report's process does
    _, _, predictors = compare.load(pair, students or None)
    paths = sorted((folder / "images").glob("*.png"))
    groups = [paths[k:k + batch] for k in range(0, len(paths), batch)][rank::world]
    seconds, images = 0.0, 0
    for position, group in enumerate([groups[0], *groups]):  # the first pass warms up
        arrays = [np.array(Image.open(f).convert("RGB")) for f in group]
        inputs = {name: {"pixel_values": torch.cat([p.prepare(a)[0]["pixel_values"] for a in arrays])}
                  for name, p in predictors.items()}
        start = time.perf_counter()
        for name, predictor in predictors.items():
            predictor.forward(inputs[name])
        if position:
            seconds, images = seconds + time.perf_counter() - start, images + len(group)
    return images / seconds


def forward_limit(procs: int, pair: str, students: str, folder: Path, batch: int) -> float:
    """The forward-only limit of ``procs`` processes running at once (each over its rank's batches, as the report's
    processes share the machine): the sum of their rates, images per second."""
    workers = [subprocess.Popen([sys.executable, "-m", "benchmarks.dataset_speed", "--forward-worker", str(folder),
                                 "--rank", str(rank), "--world", str(procs), "--pair", pair, "--students", students,
                                 "--batch", str(batch)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
               for rank in range(procs)]
    rates = [float(worker.communicate()[0].split()[-1]) for worker in workers]
    if any(worker.returncode for worker in workers):
        raise SystemExit("a forward-only worker failed")
    return sum(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=2000)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of (limit, report, limit) per process count")
    parser.add_argument("--pair", default="shapes-detection")
    parser.add_argument("--students", default="")
    parser.add_argument("--rss-scenes", type=int, default=0, help="instead: memory over this many scenes, 1 process")
    parser.add_argument("--forward-worker", type=Path, help=argparse.SUPPRESS)  # one process of forward_limit
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.forward_worker:
        print(forward_rate(args.pair, args.students, args.forward_worker, args.batch, args.rank, args.world))
        return
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
            running = [s for s in samples if 0 < s[0] < args.rss_scenes]
            marks = {round(f * args.rss_scenes) for f in (0.05, 0.25, 0.5, 0.75, 0.95)}
            for mark in sorted(marks) if running else []:
                done, rss = min(running, key=lambda s: abs(s[0] - mark))
                print(f"| {done} | {rss:.0f} |")
            after = [rss for done, rss in samples if done == args.rss_scenes]  # the summary, the report, the gallery
            print(f"| all {args.rss_scenes}: summary and report written, highest sample | "
                  f"{max(after):.0f} |" if after else "| all: no sample (the summary took under 2 s) | – |")
            return
        labels = write_scenes(folder, args.scenes)
        rows, reference = [], None
        for procs in args.procs:
            rounds, same = [], True
            for _ in range(args.repeats):
                before = forward_limit(procs, args.pair, args.students, folder, args.batch)
                out = folder / f"out{procs}"
                seconds, _ = run(procs, folder, labels, out, args.pair, args.students, args.batch)
                after = forward_limit(procs, args.pair, args.students, folder, args.batch)
                files = {n: (out / n).read_text() for n in ("results.jsonl", "summary.json", "cka.jsonl")}
                reference = reference or files
                same = same and files == reference
                timing = json.loads((out / "timing.json").read_text())
                rate = timing["images_rank0"] / timing["loop_seconds_rank0"] * procs
                rounds.append((rate, max(before, after), seconds))
                shutil.rmtree(out)
            rows.append((procs, rounds, same))
        print(f"Dataset report over {args.scenes} held-out Shapes scenes, {args.pair}, batch {args.batch}, on "
              f"{device}, one thread per process; medians over {args.repeats} rounds\n")
        print("| processes | report loop, images / s | forward-only limit, images / s | share of the limit "
              "(lowest–highest round) | whole command (s) | results, summary and CKA equal to 1 process |")
        print("|---|---|---|---|---|---|")
        for procs, rounds, same in rows:
            shares = sorted(rate / limit for rate, limit, _ in rounds)
            rate, limit, seconds = (statistics.median(column) for column in zip(*rounds, strict=True))
            print(f"| {procs} | {rate:.1f} | {limit:.1f} | {statistics.median(shares):.1%} "
                  f"({shares[0]:.1%}–{shares[-1]:.1%}) | {seconds:.1f} | {'yes' if same else 'NO'} |")
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
