"""What the training monitor costs a training loop: the builtin recipe's student, trained with and without it.

    python -m benchmarks.monitor_overhead [--steps 300] [--every 100 25] [--threads 1]

For each task: the recipe's ``feature-kd`` student (batch 16, one CPU thread as ``weights.shapes.train_methods``
runs it) trained ``--steps`` steps without a monitor, then with a :class:`compare.monitor.DistillMonitor` on the
recipe's probe (16 scenes of 128 x 128) for each ``--every``. Printed per row: the training step's time without the
monitor, one monitor call, and the monitor's share of the training time, ``monitor seconds / (training seconds
without monitor)`` over the same steps, both measured in this run (the pool of training scenes is rendered once and
not counted).
"""

from __future__ import annotations

import argparse

import torch


class Timed:
    """A monitor factory that keeps the monitor it made, to read its measuring time."""

    def __init__(self, task: str, every: int):
        self.task, self.every, self.monitor = task, every, None

    def __call__(self, teacher, student):
        from compare.monitor import DistillMonitor
        from weights.shapes.train_nets import probe_scenes

        images, targets = probe_scenes(self.task)
        self.monitor = DistillMonitor(teacher, student, images, self.task, every=self.every,
                                      like=f"shapes-{self.task}", targets=targets, name="feature-kd",
                                      tensorboard=False)
        return self.monitor


def timed_training(task: str, steps: int, monitor: Timed | None) -> float:
    """Seconds of ``steps`` training steps of the recipe (the scene pool's rendering excluded)."""
    import tempfile
    from pathlib import Path

    from weights.shapes.train_nets import train

    timings: dict = {}
    with tempfile.TemporaryDirectory() as out:
        train(task, "student", steps, batch_size=16, pool_size=800, seed=0, method="feature-kd", out=Path(out),
              half=True, log_every=10**9, monitor=monitor, timings=timings)
    return timings["loop_seconds"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, nargs="+", default=[100, 25])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| task | every | training step, ms | one monitor call, ms | monitor share of training time |")
    print("|---|---|---|---|---|")
    for task in ("detection", "segmentation"):
        base = timed_training(task, args.steps, None)
        for every in args.every:
            timed = Timed(task, every)
            timed_training(task, args.steps, timed)
            calls = len(timed.monitor.records)
            print(f"| {task} | {every} | {base / args.steps * 1000:.1f} | {timed.monitor.seconds / calls * 1000:.0f} "
                  f"({calls} calls) | {timed.monitor.seconds / base:.1%} |", flush=True)


if __name__ == "__main__":
    main()
