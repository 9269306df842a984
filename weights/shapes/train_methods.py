"""Recipe of the distillation-method comparison: one student architecture, one step budget, four methods, three seeds.

    python -m weights.shapes.train_methods                    # everything: 2 tasks x 4 methods x 3 seeds, 2 workers
    python -m weights.shapes.train_methods --task detection --method online-adm --seed 0   # one run

Methods (see ``METHODS`` in :mod:`weights.shapes.train_nets`): ``output-kd``, ``feature-kd``, ``adm-consensus``
(the committed teacher, frozen) and ``online-adm`` (a teacher trained from scratch beside the student). Every run
uses the same budget (``STEPS`` steps of ``BATCH`` scenes from a pool of ``POOL`` training scenes) and writes fp16
safetensors to ``weights/checkpoints/distill_methods/``; seed 0 of each method is registered as a student, and
``python -m benchmarks.distill_methods`` compares all of them on held-out scenes. Runs whose checkpoint exists are
skipped (a stopped run resumes), unless ``--force``.
"""

from __future__ import annotations

import argparse
import itertools
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from weights.shapes.checkpoints import BUILTIN_DIR

STEPS, BATCH, POOL = 800, 16, 3000
OUT = BUILTIN_DIR / "distill_methods"
SEEDS = (0, 1, 2)


def run(task: str, method: str, seed: int, steps: int, out: Path, monitor=None) -> str:
    """Train one student (and for ``online-adm`` its teacher) on one CPU thread; returns the student's path.
    ``monitor``: see :func:`weights.shapes.train_nets.train` (``python -m compare.training_logs`` logs seed 0)."""
    import torch

    from weights.shapes.train_nets import train

    torch.set_num_threads(1)
    return str(train(task, "student", steps, batch_size=BATCH, pool_size=POOL, seed=seed, method=method, out=out,
                     half=True, log_every=100, monitor=monitor))


def main() -> None:
    from weights.shapes.train_nets import METHODS, comparison_name

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", nargs="+", choices=["detection", "segmentation"],
                        default=["detection", "segmentation"])
    parser.add_argument("--method", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--seed", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--workers", type=int, default=2, help="training processes, one CPU thread each")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--force", action="store_true", help="retrain runs whose checkpoint exists")
    args = parser.parse_args()
    jobs = [(t, m, s) for s, t, m in itertools.product(args.seed, args.task, args.method)
            if args.force or not (args.out / comparison_name(t, "student", m, s)).exists()]
    print(f"{len(jobs)} runs to train into {args.out}", flush=True)
    with ProcessPoolExecutor(args.workers) as pool:
        for path in pool.map(run, *zip(*jobs, strict=True), itertools.repeat(args.steps),
                             itertools.repeat(args.out)):
            print(f"saved {path}", flush=True)


if __name__ == "__main__":
    main()
