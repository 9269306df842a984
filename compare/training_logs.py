"""The shipped training logs: the four distillation methods of the builtin recipe, each watched by the training
monitor while it trains (``weights/shapes/train_methods.py``, seed 0: the same recipe, budget and seed as the
method comparison's registered students).

    python -m compare.training_logs                       # 2 tasks x 4 methods, 2 workers (~25 min on 2 CPU cores)
    python -m compare.training_logs --task detection --method adm-consensus
    python -m compare.training_logs --table               # the README's table, from the shipped logs

Each run writes ``weights/training_logs/<task>/<method>.jsonl`` (a :class:`compare.monitor.DistillMonitor` record
every ``EVERY`` steps on the recipe's fixed probe of 16 held-out scenes); the students trained here go to a
temporary folder, so the committed checkpoints are untouched. The Training tab lists these runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

LOGS = Path(__file__).resolve().parents[1] / "weights" / "training_logs"
OUT = Path(__file__).resolve().parents[1] / "weights" / "checkpoints" / "distill_methods"
EVERY = 25


class RecipeMonitor:
    """Makes the recipe's monitor for a run (picklable, so each worker process builds its own)."""

    def __init__(self, task: str, method: str, log_dir: Path, every: int = EVERY):
        self.task, self.method, self.log_dir, self.every = task, method, log_dir, every

    def __call__(self, teacher, student):
        from compare.monitor import DistillMonitor
        from weights.shapes.train_nets import probe_scenes

        images, targets = probe_scenes(self.task)
        return DistillMonitor(teacher, student, images, self.task, every=self.every, log_dir=self.log_dir,
                              like=f"shapes-{self.task}", targets=targets, name=self.method, run=self.method,
                              tensorboard=False)


def same_weights(trained: Path, committed: Path) -> bool | None:
    """Whether a retrained student's weights equal the committed checkpoint's bit for bit (None: none committed):
    the monitor only reads the models, so a log of the recipe describes the committed student itself."""
    from safetensors.torch import load_file

    if not committed.is_file():
        return None
    a, b = load_file(str(trained)), load_file(str(committed))
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def log_run(task: str, method: str, steps: int, out: Path) -> Path:
    """Train one method's seed-0 student with the monitor; returns its log (``<out>/<task>/<method>.jsonl``)."""
    from weights.shapes.train_methods import run

    scratch = Path(tempfile.mkdtemp(prefix="distill_lens_logs_"))
    try:
        trained = Path(run(task, method, 0, steps, scratch, monitor=RecipeMonitor(task, method, scratch / "monitor")))
        target = out / task / f"{method}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(scratch / "monitor" / "monitor.jsonl", target)
        target.with_suffix(".meta.json").write_text(json.dumps({
            "task": task, "method": method, "seed": 0, "steps": steps, "every": EVERY,
            "same_weights_as_committed": same_weights(trained, OUT / trained.name)}, indent=1) + "\n")
        return target
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def shipped_logs(task: str, out: Path = LOGS) -> dict[str, Path]:
    """``{method: log}`` of the runs of a task in ``out``, in the recipe's order of methods (others after, by
    name)."""
    from weights.shapes.train_nets import METHODS

    found = {p.stem: p for p in sorted((out / task).glob("*.jsonl"))}
    order = list(METHODS)
    return {m: found[m] for m in sorted(found, key=lambda m: (order.index(m) if m in order else len(order), m))}


TABLE_STEPS = (1, 100, 800)
TABLE_FIGURES = {"detection": ("agreement", "f1"), "segmentation": ("agreement", "miou")}


def table(out: Path = LOGS, strides: tuple[str, ...] = ("stride 8", "stride 16")) -> str:
    """A markdown table of the shipped runs: agreement, consensus on the foreground and dataset CKA (with its
    permuted-images chance level) at a few steps."""
    from compare.monitor import read_log

    head = ["task", "method", "step", "agreement"] + [f"consensus fg, {s}" for s in strides] + \
        [f"CKA {s} (chance)" for s in strides]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task in ("detection", "segmentation"):
        group, key = TABLE_FIGURES[task]
        for path in shipped_logs(task, out).values():
            records = {r["step"]: r for r in read_log(path)}
            for step in TABLE_STEPS:
                r = records.get(step)
                if r is None:
                    continue
                fg = [r["consensus"].get(s, {}).get("foreground") for s in strides]
                cka = [f"{r['cka'][s]:.3f} ({r['cka_baseline'][s]:+.3f})" if r["cka"].get(s) is not None
                       and r["cka_baseline"].get(s) is not None else "undefined" for s in strides]
                cells = [task, path.stem, str(step), f"{key} {r[group][key]:.3f}",
                         *("–" if v is None else f"{v:.3f}" for v in fg), *cka]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)



def main(argv: list[str] | None = None) -> None:
    from weights.shapes.train_methods import STEPS
    from weights.shapes.train_nets import METHODS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", nargs="+", choices=["detection", "segmentation"],
                        default=["detection", "segmentation"])
    parser.add_argument("--method", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=LOGS)
    parser.add_argument("--table", action="store_true", help="print the table of the logs in --out; train nothing")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.out))
        return
    jobs = list(itertools.product(args.task, args.method))
    with ProcessPoolExecutor(args.workers) as pool:
        for path in pool.map(log_run, *zip(*jobs, strict=True), itertools.repeat(args.steps),
                             itertools.repeat(args.out)):
            print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
