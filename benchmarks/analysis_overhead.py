"""How much the analysis of one image adds to the pair's own inference, on every device here.

    python -m benchmarks.analysis_overhead [--repeats 20]

For each builtin pair and device: the median time of the pair's inference (teacher and student forwards) and of
the same forwards with feature capture plus the analysis (consensus and divergence weights at every shared
stride, CKA across all stages, foreground figures). With CUDA present it also reports how far the CUDA results are
from the CPU ones.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from analysis.consensus import (
    affinity_consensus,
    cka_matrix,
    consensus_weights,
    divergence_weights,
    foreground_figures,
)
from analysis.features import forward_with_stages, match_stages
from weights.shapes.checkpoints import load_builtin_model
from weights.shapes.nets import normalise
from weights.shapes.world import EVAL_SEED_START, render_scene


def _timed(fn, device: torch.device, repeats: int) -> tuple[object, float]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return result, statistics.median(times) * 1000


def analyse(models: dict, x: torch.Tensor, foreground: torch.Tensor, tau: float = 0.1) -> dict:
    """The analysis of one image, as the Analysis tab runs it, kept on the device."""
    stages = {r: forward_with_stages(m, x)[1] for r, m in models.items()}
    out = {"similarity": [], "weights": [], "figures": []}
    for t, s in match_stages(stages["teacher"], stages["student"]):
        similarity = affinity_consensus(t.features, s.features)
        out["similarity"].append(similarity)
        out["weights"].append((consensus_weights(similarity, tau), divergence_weights(similarity, tau)))
        out["figures"].append(foreground_figures(similarity, t.features, s.features, foreground))
    out["cka"] = cka_matrix([s.features for s in stages["teacher"]], [s.features for s in stages["student"]])
    return out


@torch.no_grad()
def measure(task: str, device: torch.device, repeats: int, side: int) -> dict:
    models = {r: load_builtin_model(task, r).to(device) for r in ("teacher", "student")}
    scene = render_scene(EVAL_SEED_START + 7, side, side)
    x = normalise(torch.from_numpy(scene.image)[None]).to(device)
    foreground = torch.from_numpy(scene.labels > 0)[None].to(device)
    _, inference_ms = _timed(lambda: [m(x) for m in models.values()], device, repeats)
    result, analysis_ms = _timed(lambda: analyse(models, x, foreground), device, repeats)
    return {"inference_ms": inference_ms, "with_analysis_ms": analysis_ms, "result": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--side", type=int, default=128, help="scene side in pixels")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"Analysis overhead on a {args.side}x{args.side} Shapes scene, median of {args.repeats} runs; "
          f"devices: {', '.join(str(d) for d in devices)}"
          + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "") + "\n")
    print("| pair | device | inference (ms) | inference + analysis (ms) | analysis adds | CPU vs device |")
    print("|---|---|---|---|---|---|")
    for task in ("detection", "segmentation"):
        reference = None
        for device in devices:
            r = measure(task, device, args.repeats, args.side)
            agreement = "–"
            if reference is None:
                reference = r["result"]
            else:
                sim = max(float((a.cpu() - b.cpu()).abs().max())
                          for a, b in zip(reference["similarity"], r["result"]["similarity"], strict=True))
                cka = float((reference["cka"].cpu() - r["result"]["cka"].cpu()).abs().max())
                agreement = f"max |Δ| similarity {sim:.1e}, CKA {cka:.1e}"
            added = r["with_analysis_ms"] / r["inference_ms"] - 1
            print(f"| shapes-{task} | {device.type} | {r['inference_ms']:.2f} | {r['with_analysis_ms']:.2f} | "
                  f"{added:+.0%} | {agreement} |", flush=True)


if __name__ == "__main__":
    main()
