"""Four ways to distil the same student, compared on held-out Shapes scenes, three training seeds each.

    python -m benchmarks.distill_methods [--scenes 500] [--dir weights/checkpoints/distill_methods]

The checkpoints come from ``python -m weights.shapes.train_methods`` (same architecture, same step budget). Per
task, method and seed, on ``--scenes`` held-out scenes (seeds from ``EVAL_SEED_START``, never used in training):

- the student's own accuracy: mAP@0.5 (torchmetrics ``MeanAveragePrecision``) or mIoU over the six labels
  (``MulticlassJaccardIndex``), and its teacher's (the committed teacher, or for online ADM its own);
- agreement with its teacher, as the tabs compute it: detection F1 of the student's boxes against the teacher's
  (IoU 0.5, both at score 0.3); segmentation mIoU of the student's mask against the teacher's;
- ADM's two findings at the distilled stages (strides 8 and 16, averaged): consensus (affinity, the ground-truth
  foreground) on the foreground vs the background, and the share of feature energy on the foreground, teacher vs
  student.

Each cell is the mean over seeds ± their standard deviation (n-1), so a difference can be read against the
spread between seeds.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.detection import MeanAveragePrecision

from analysis.agreement import detection_agreement
from analysis.consensus import affinity_consensus, foreground_figures
from analysis.features import forward_with_stages
from weights.shapes.checkpoints import load_builtin_model, load_checkpoint
from weights.shapes.nets import decode_detections, normalise
from weights.shapes.train_methods import OUT
from weights.shapes.train_nets import METHODS, comparison_name
from weights.shapes.world import EVAL_SEED_START, render_scene

STRIDES = (8, 16)  # the stages every feature-distilling method matches
AGREEMENT_SCORE = 0.3  # the Detection tab's default threshold


@torch.inference_mode()
def evaluate(task: str, teacher: torch.nn.Module, student: torch.nn.Module, scenes: int, batch: int = 25) -> dict:
    """Accuracy of both models, the student's agreement with the teacher, and ADM's findings (means over scenes)."""
    models = {"teacher": teacher, "student": student}
    if task == "detection":
        metrics = {r: MeanAveragePrecision(iou_thresholds=[0.5], class_metrics=False) for r in models}
        counts = np.zeros(3)  # matched, missed, extra over all scenes
    else:
        metrics = {r: MulticlassJaccardIndex(num_classes=6, average="macro") for r in models}
        agreement = MulticlassJaccardIndex(num_classes=6, average="macro")
    findings: dict[str, list[torch.Tensor]] = {}
    for start in range(EVAL_SEED_START, EVAL_SEED_START + scenes, batch):
        rendered = [render_scene(s) for s in range(start, min(start + batch, EVAL_SEED_START + scenes))]
        x = normalise(torch.stack([torch.from_numpy(s.image) for s in rendered]))
        outputs, stages = {}, {}
        for role, model in models.items():
            outputs[role], captured = forward_with_stages(model, x)  # one forward gives outputs and stages
            stages[role] = {s.stride: s for s in captured}
        if task == "detection":
            targets = [{"boxes": torch.from_numpy(s.boxes), "labels": torch.from_numpy(s.class_ids)}
                       for s in rendered]
            for role in models:
                metrics[role].update(decode_detections(outputs[role], 0.01), targets)
            sides = [decode_detections(outputs[r], AGREEMENT_SCORE) for r in ("teacher", "student")]
            for t, s in zip(*sides, strict=True):
                a = detection_agreement(t, s)
                counts += (a["matched"], a["missed"], a["extra"])
        else:
            truth = torch.from_numpy(np.stack([s.labels for s in rendered]).astype(np.int64))
            maps = {r: outputs[r]["logits"].argmax(1) for r in models}
            for role in models:
                metrics[role].update(maps[role], truth)
            agreement.update(maps["student"], maps["teacher"])
        foreground = torch.stack([torch.from_numpy(s.labels > 0) for s in rendered])
        for stride in STRIDES:
            t, s = stages["teacher"][stride].features, stages["student"][stride].features
            figures = foreground_figures(affinity_consensus(t, s), t, s, foreground)
            for key, value in figures.items():
                findings.setdefault(key, []).append(value)
    scores = {r: float(m.compute()["map_50"] if task == "detection" else m.compute()) for r, m in metrics.items()}
    if task == "detection":
        matched, missed, extra = counts
        agree = 2 * matched / max(1.0, 2 * matched + missed + extra)
    else:
        agree = float(agreement.compute())
    means = {k: float(torch.cat(v).nanmean()) for k, v in findings.items()}
    return {"teacher_score": scores["teacher"], "student_score": scores["student"], "agreement": agree, **means}


def load_run(task: str, method: str, seed: int, folder: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The (teacher, student) of one run: online ADM's own teacher, or the committed one."""
    student = load_checkpoint(folder / comparison_name(task, "student", method, seed))
    teacher = load_checkpoint(folder / comparison_name(task, "teacher", method, seed)) if method == "online-adm" \
        else load_builtin_model(task, "teacher")
    return teacher, student


def spread(values: list[float], digits: int = 3) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=OUT)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--task", nargs="+", choices=["detection", "segmentation"],
                        default=["detection", "segmentation"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Distillation methods on {args.scenes} held-out Shapes scenes (seeds {EVAL_SEED_START}+), "
          f"training seeds {', '.join(map(str, args.seeds))}: mean ± std over seeds\n")
    print("| task | method | student score | teacher score | agreement with teacher | consensus fg | consensus bg "
          "| energy on fg, teacher | energy on fg, student |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task in args.task:
        metric = "mAP@0.5" if task == "detection" else "mIoU"
        for method in METHODS:
            runs = [evaluate(task, *load_run(task, method, seed, args.dir), args.scenes) for seed in args.seeds
                    if (args.dir / comparison_name(task, "student", method, seed)).exists()]
            if not runs:
                continue
            cells = [spread([r[k] for r in runs]) for k in (
                "student_score", "teacher_score", "agreement", "consensus_foreground", "consensus_background",
                "energy_foreground_teacher", "energy_foreground_student")]
            print(f"| {task} ({metric}) | {method} (n={len(runs)}) | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
