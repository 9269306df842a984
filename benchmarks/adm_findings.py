"""Do our builtin pairs reproduce ADM's two findings? Over held-out Shapes scenes, with the ground-truth
foreground:

1. teacher-student feature similarity (consensus) is higher on the foreground than on the background;
2. the teacher puts a larger share of its feature energy on the foreground than the student does.

    python -m benchmarks.adm_findings [--scenes 200] [--method affinity|projection]
"""

from __future__ import annotations

import argparse

import torch

from analysis.consensus import affinity_consensus, foreground_figures, projected_consensus, projection_is_determined
from analysis.features import capture_stages, match_stages
from weights.shapes.checkpoints import load_builtin_model
from weights.shapes.nets import normalise
from weights.shapes.world import EVAL_SEED_START, render_scene

SEED_START = EVAL_SEED_START + 2000  # held out from training, and apart from the accuracy table's scenes
METHODS = {"affinity": affinity_consensus, "projection": projected_consensus}


def findings(task: str, scenes: int, method: str, batch: int = 25, device: str = "cpu") -> list[dict]:
    """Per matched stage: means over images of the foreground figures, and the share of images where each
    finding holds."""
    models = {r: load_builtin_model(task, r).to(device) for r in ("teacher", "student")}
    per_stage: dict[int, dict[str, list[torch.Tensor]]] = {}
    for start in range(SEED_START, SEED_START + scenes, batch):
        rendered = [render_scene(s) for s in range(start, min(start + batch, SEED_START + scenes))]
        x = normalise(torch.stack([torch.from_numpy(s.image) for s in rendered])).to(device)
        foreground = torch.stack([torch.from_numpy(s.labels > 0) for s in rendered]).to(device)
        stages = {r: capture_stages(m, x) for r, m in models.items()}
        for t, s in match_stages(stages["teacher"], stages["student"]):
            if method == "projection" and not projection_is_determined(t.features, s.features):
                continue  # least squares would fit anything here; the table leaves this stride out
            similarity = METHODS[method](t.features, s.features)
            figures = foreground_figures(similarity, t.features, s.features, foreground)
            for key, value in figures.items():
                per_stage.setdefault(t.stride, {}).setdefault(key, []).append(value)
    rows = []
    for stride, lists in sorted(per_stage.items()):
        v = {k: torch.cat(x) for k, x in lists.items()}
        rows.append({
            "stride": stride,
            **{k: float(x.nanmean()) for k, x in v.items()},
            "finding1_share": float((v["consensus_foreground"] > v["consensus_background"]).float().mean()),
            "finding2_share": float((v["energy_foreground_teacher"] > v["energy_foreground_student"]).float().mean()),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--method", choices=list(METHODS), default="affinity")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"ADM's findings on {args.scenes} held-out Shapes scenes (seeds {SEED_START}+), {args.method} consensus, "
          f"ground-truth foreground\n")
    print("| pair | stride | consensus fg | consensus bg | fg > bg (images) | teacher energy on fg "
          "| student energy on fg | teacher > student (images) | fg area |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task in ("detection", "segmentation"):
        for r in findings(task, args.scenes, args.method):
            print(f"| shapes-{task} | /{r['stride']} | {r['consensus_foreground']:.3f} | "
                  f"{r['consensus_background']:.3f} | {r['finding1_share']:.0%} | "
                  f"{r['energy_foreground_teacher']:.3f} | {r['energy_foreground_student']:.3f} | "
                  f"{r['finding2_share']:.0%} | {r['foreground_area']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
