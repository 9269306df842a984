"""What one request costs, before and after the engine: forwards per model, and wall time over the models' forwards.

    python -m benchmarks.request_cost [--before 6931fde] [--repeats 5] [--threads 2]

For every endpoint and builtin pair (the pair's students, at most two): one warm-up call (models loaded, latency
cache filled), then ``--repeats`` calls. Printed per row:

- **forwards per model per request**: images each model ran on during one call, counted by a hook on each model's
  stem (:mod:`compare.counting`), whatever path ran it (timed repeats, FLOP counting, a second forward for an
  overlay, Grad-CAM);
- **request / Σ forwards**: the call's median wall time over the sum of each model's single warm forward on the
  same image (median of 5): 1.0 would be a request that costs exactly its models' forwards.

The "before" columns run the same calls on the code of ``--before`` (a git worktree made for the run, in a
subprocess); the "after" columns on this checkout. One table, one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "demos" / "examples"
BEFORE = "6931fde"  # the last commit before the engine

# (endpoint, pair, image)
ROWS = [
    ("/detect", "shapes-detection", "shapes_0.png"),
    ("/detect", "shapes-detection-online-adm", "shapes_0.png"),
    ("/segment", "shapes-segmentation", "shapes_0.png"),
    ("/segment", "shapes-segmentation-online-adm", "shapes_0.png"),
    ("/classify", "shapes-clip", "single_0.png"),
    ("/consensus", "shapes-detection", "shapes_0.png"),
    ("/consensus", "shapes-segmentation", "shapes_0.png"),
    ("/attention", "shapes-detection", "shapes_0.png"),
    ("/attention", "shapes-segmentation", "shapes_0.png"),
    ("dataset, per image", "shapes-detection", "shapes_0.png"),
    ("dataset, per image", "shapes-segmentation", "shapes_0.png"),
    ("dataset, per image", "shapes-clip", "single_0.png"),
]
CLASSES = "circle, square, triangle, star, cross"


def _counting():
    """``compare/counting.py`` of this checkout, loaded on its own (it needs torch only), so the same counter runs
    on the code before the engine."""
    spec = importlib.util.spec_from_file_location("request_cost_counting", ROOT / "compare" / "counting.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _call(endpoint: str, pair: str, image: str, students: list[str]):
    """The call as the app (or the dataset report) makes it, on whichever code is on the path."""
    names = ",".join(students)
    if endpoint == "/detect":
        from demos.detection import detect

        return lambda: detect(image, pair, 0.3, names)
    if endpoint == "/segment":
        from demos.segmentation import segment

        return lambda: segment(image, pair, names)
    if endpoint == "/classify":
        from demos.classification import classify

        return lambda: classify(image, pair, CLASSES, "", "", names)
    if endpoint == "/consensus":
        from demos.analysis_tab import consensus

        return lambda: consensus(image, pair, 0.1, "affinity", names)
    if endpoint == "/attention":
        from demos.analysis_tab import attention

        return lambda: attention(image, pair, "", students[0])
    return _dataset_call(pair, image, students)


def _dataset_call(pair: str, image: str, students: list[str]):
    from weights.registry import get_pair

    spec = get_pair(pair)
    try:  # the engine's report, in batches since session 9: here a batch of this one image
        from reports.measure import analyse_batch
        from weights.predictors import predictors_for

        chosen = spec.choose_students(students)
        predictors = predictors_for(spec, students=chosen)
        return lambda: analyse_batch([Path(image)], spec, chosen, predictors, 0.3, CLASSES, None)
    except ImportError:  # the code before the engine: the tabs' functions per image
        from demos.dataset import analyse_image

        return lambda: analyse_image(Path(image), spec, students, 0.3, CLASSES, None)


def measure(repeats: int) -> list[dict]:
    """Every row on the code on ``sys.path``: forwards per model in one call, median call time, and each model's
    single warm forward."""
    import numpy as np
    from PIL import Image

    from analysis.profiling import time_call
    from weights.predictors import predictors_for
    from weights.registry import get_pair

    counting = _counting()
    rows = []
    for endpoint, pair, image_name in ROWS:
        spec = get_pair(pair)
        students = [s.name for s in spec.students[:2]] if endpoint != "/attention" else [spec.students[0].name]
        image = str(EXAMPLES / image_name)
        call = _call(endpoint, pair, image, students)
        call()  # models loaded, caches warm
        predictors = predictors_for(spec, students=spec.choose_students(students))
        with counting.count_forwards({n: p.model for n, p in predictors.items()}) as counts:
            call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        array = np.asarray(Image.open(image).convert("RGB"))
        single = {}
        for name, p in predictors.items():
            inputs, _ = p.prepare(array)
            timing = time_call(lambda p=p, x=inputs: p.forward(x), p.device, repeats=5, budget_s=5.0)[1]
            single[name] = timing.median_ms
        rows.append({"endpoint": endpoint, "pair": pair, "students": students, "forwards": dict(counts),
                     "request_ms": statistics.median(times) * 1000, "forwards_ms": sum(single.values())})
    return rows


def measure_before(revision: str, repeats: int, threads: int) -> list[dict]:
    """The same rows on ``revision``'s code, in a subprocess run from a temporary worktree."""
    with tempfile.TemporaryDirectory() as folder:
        tree = Path(folder) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), revision], check=True,
                       capture_output=True)
        try:
            out = Path(folder) / "rows.json"
            env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure-only", str(out),
                            "--repeats", str(repeats), "--threads", str(threads)], cwd=tree, env=env, check=True)
            return json.loads(out.read_text())
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False,
                           capture_output=True)


def per_model(row: dict) -> str:
    values = sorted(set(row["forwards"].values()))
    return "/".join(str(v) for v in values)


def table(before: list[dict], after: list[dict], revision: str) -> str:
    lines = [f"| request | pair | students | forwards per model, before ({revision}) → after | request / Σ forwards, "
             "before → after | request ms, before → after |", "|---|---|---|---|---|---|"]
    for b, a in zip(before, after, strict=True):
        lines.append(f"| {a['endpoint']} | `{a['pair']}` | {', '.join(a['students'])} | {per_model(b)} → "
                     f"{per_model(a)} | {b['request_ms'] / b['forwards_ms']:.1f}× → "
                     f"{a['request_ms'] / a['forwards_ms']:.1f}× | {b['request_ms']:.0f} → {a['request_ms']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=BEFORE, help="the revision to compare with (default: before the engine)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--measure-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.measure_only:
        args.measure_only.write_text(json.dumps(measure(args.repeats)))
        return
    before = measure_before(args.before, args.repeats, args.threads)
    after = measure(args.repeats)
    print(f"CPU, {args.threads} threads; medians of {args.repeats} calls after one warm-up call.\n")
    print(table(before, after, args.before))


if __name__ == "__main__":
    main()
