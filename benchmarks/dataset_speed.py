"""Images per second of the dataset report, in one process and data-parallel, and whether its ranking means anything.

    python -m benchmarks.dataset_speed [--scenes 200] [--procs 1 2] [--pair shapes-detection]

Writes ``--scenes`` held-out Shapes scenes and their COCO-style box labels to a temporary folder, then runs
``python -m reports.dataset`` on them once per process count (``torchrun --standalone --nproc_per_node N`` beyond one;
one CPU thread per process; on CUDA, as many processes as asked on the one GPU). Prints wall-clock seconds of each
whole command (start-up and model loading included) and images per second, whether every run's ``results.jsonl`` and
``summary.json`` equal the one-process run's, and the ranking check: the share of images where the student misses a
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


def run(procs: int, folder: Path, labels: Path, out: Path, pair: str, students: str) -> float:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)] if procs > 1 else []
    command = [sys.executable, *launcher, "-m", "reports.dataset", "--images", str(folder / "images"), "--pair", pair,
               "--out", str(out), "--labels", str(labels), "--students", students, "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--pair", default="shapes-detection")
    parser.add_argument("--students", default="")
    args = parser.parse_args()
    import torch

    device = f"CUDA ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        labels = write_scenes(folder, args.scenes)
        print(f"Dataset report over {args.scenes} held-out Shapes scenes, {args.pair}, on {device}\n")
        print("| processes | wall-clock (s) | images / s | speed-up | results and summary equal to 1 process |")
        print("|---|---|---|---|---|")
        reference, base = None, None
        for procs in args.procs:
            out = folder / f"out{procs}"
            seconds = run(procs, folder, labels, out, args.pair, args.students)
            files = {n: (out / n).read_text() for n in ("results.jsonl", "summary.json")}
            reference = reference or files
            base = base or seconds
            print(f"| {procs} | {seconds:.1f} | {args.scenes / seconds:.2f} | {base / seconds:.2f}× | "
                  f"{'yes' if files == reference else 'NO'} |", flush=True)
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
