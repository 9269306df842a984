"""Judge the builtin pairs on Shapes scenes that training never saw, and print the table the README shows.

    python -m benchmarks.builtin_nets [--scenes 500] [--threads 2]

Every builtin detection and segmentation pair of the registry: its teacher and each of its students.

Detection: COCO-style mAP at IoU 0.5 over the five shapes (torchmetrics ``MeanAveragePrecision``).
Segmentation: mIoU over the six labels, background included (torchmetrics ``MulticlassJaccardIndex``).
Latency: median CPU milliseconds per 128x128 scene at batch 1, teacher and student interleaved in one run.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.detection import MeanAveragePrecision

from analysis.profiling import Stopwatch, count_parameters
from weights.registry import list_pairs
from weights.shapes.checkpoints import load_named_checkpoint
from weights.shapes.nets import decode_detections, normalise
from weights.shapes.world import EVAL_SEED_START, render_scene

BARS = {("detection", "teacher"): 0.90, ("detection", "student"): 0.80,
        ("segmentation", "teacher"): 0.85, ("segmentation", "student"): 0.75}


@torch.inference_mode()
def evaluate_pair(pair, scenes: int, threshold: float = 0.01) -> dict[str, dict]:
    """Score, parameters and batch-1 CPU latency of a builtin pair's teacher and every student (interleaved)."""
    task = pair.task
    models = {"teacher": load_named_checkpoint(pair.teacher.location)}
    models |= {s.name: load_named_checkpoint(s.source.location) for s in pair.students}
    if task == "detection":
        metrics = {r: MeanAveragePrecision(iou_thresholds=[0.5], class_metrics=False) for r in models}
    else:
        metrics = {r: MulticlassJaccardIndex(num_classes=6, average="macro") for r in models}
    latency: dict[str, list[float]] = {r: [] for r in models}
    for seed in range(EVAL_SEED_START, EVAL_SEED_START + scenes):
        scene = render_scene(seed)
        x = normalise(torch.from_numpy(scene.image)[None])
        for role, model in models.items():
            with Stopwatch() as watch:
                out = model(x)
            latency[role].append(watch.seconds)
            if task == "detection":
                pred = decode_detections(out, threshold)[0]
                target = {"boxes": torch.from_numpy(scene.boxes), "labels": torch.from_numpy(scene.class_ids)}
                metrics[role].update([pred], [target])
            else:
                metrics[role].update(out["logits"].argmax(1), torch.from_numpy(scene.labels.astype(np.int64))[None])
    results = {}
    for role, model in models.items():
        value = metrics[role].compute()
        score = float(value["map_50"] if task == "detection" else value)
        results[role] = {"score": score, "params": count_parameters(model),
                         "latency_ms": statistics.median(latency[role][5:]) * 1000}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--task", choices=["detection", "segmentation", "all"], default="all")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tasks = ["detection", "segmentation"] if args.task == "all" else [args.task]
    print(f"Builtin pairs on {args.scenes} held-out Shapes scenes (seeds {EVAL_SEED_START}+), "
          f"CPU latency at batch 1 with {args.threads} threads\n")
    print("| pair | model | how it was made | metric | score | bar | params | ÷ teacher params | latency (ms) "
          "| ÷ teacher latency |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for task in tasks:
        metric = "mAP@0.5" if task == "detection" else "mIoU (6 labels)"
        for pair in list_pairs(task):
            if pair.source != "builtin":
                continue
            r = evaluate_pair(pair, args.scenes)
            t = r["teacher"]
            how = {"teacher": "ground truth" if pair.name == f"shapes-{task}" else "online ADM, with its student"}
            how |= {s.name: s.method for s in pair.students}
            for name, row in r.items():
                bar = BARS[(task, "teacher" if name == "teacher" else "student")]
                ok = "✓" if row["score"] >= bar else "✗"
                if name != "teacher" and row["params"] > t["params"] / 3:
                    ok += " (params > ⅓)"
                print(f"| {pair.name} | {name} | {how[name]} | {metric} | {row['score']:.3f} | {bar:.2f} {ok} | "
                      f"{row['params'] / 1e6:.3f} M | {row['params'] / t['params']:.2f} | {row['latency_ms']:.2f} | "
                      f"{row['latency_ms'] / t['latency_ms']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
