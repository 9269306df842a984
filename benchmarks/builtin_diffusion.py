"""Measure the builtin text-to-image pair at 1x, 2x and 4x its training side, and print the README's table.

    python -m benchmarks.builtin_diffusion [--seeds 32] [--steps 20]      # about 55 minutes on 2 CPU cores

Prompts ``a <colour> <shape>`` cycle over the 30 colour-shapes, one per seed. For each image the objects are the
connected components of saturated pixels near one of the six named colours (see
:func:`weights.shapes.measure.objects`), of at least 0.5 % of the image; "extra objects" are the components beyond
the one asked for. At 1x it also reports the share of images whose largest object has the asked colour.
Seconds are the mean wall-clock time per image on this machine, teacher and student, without and with MSW-MSA.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from compare.generation import generate
from weights.registry import get_pair
from weights.shapes.measure import objects
from weights.shapes.world import COLOUR_NAMES, SHAPE_NAMES

GUIDANCE = 4.0
def prompt_for(seed: int) -> tuple[str, str]:
    """``(prompt, colour)`` for a seed: ``a <colour> <shape>``, cycling over the 30 colour-shapes."""
    colour = COLOUR_NAMES[seed % 6]
    return f"a {colour} {SHAPE_NAMES[(seed // 6) % 5]}", colour


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pair", default="shapes-diffusion")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4], help="multiples of the training side")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    side = get_pair(args.pair, "generation").native["width"]
    colour_hits = {"teacher": [], "student": []}
    print(f"Builtin pair {args.pair}, {args.seeds} seeds per size, {args.steps} DDIM steps, guidance {GUIDANCE:g}\n")
    print("| size | model | extra objects / image | with RAU-Net | seconds / image | with MSW-MSA |")
    print("|---|---|---|---|---|---|", flush=True)
    for scale in args.scales:
        stats = {}
        for setting, (raunet, msw) in {"plain": (False, False), "raunet": (True, False), "msw": (False, True)}.items():
            for seed in range(args.seeds):
                prompt, colour = prompt_for(seed)
                teacher, student, report = generate(prompt, args.pair, seed, side * scale, side * scale, args.steps,
                                                    GUIDANCE, raunet, msw)
                for role, image in (("teacher", teacher), ("student", student)):
                    n, found = objects(image)
                    stats.setdefault((role, setting), {"extra": [], "seconds": []})
                    stats[(role, setting)]["extra"].append(max(0, n - 1))
                    stats[(role, setting)]["seconds"].append(report[role]["seconds"])
                    if scale == 1 and setting == "plain":
                        colour_hits[role].append(found == colour)
        for role in ("teacher", "student"):
            extra = [statistics.mean(stats[(role, k)]["extra"]) for k in ("plain", "raunet")]
            seconds = [statistics.mean(stats[(role, k)]["seconds"]) for k in ("plain", "msw")]
            print(f"| {scale * side}² | {role} | {extra[0]:.2f} | {extra[1]:.2f} | {seconds[0]:.2f} | "
                  f"{seconds[1]:.2f} |", flush=True)  # each size as soon as it is done
    if 1 in args.scales:
        print("\nAt 1x, images whose object has the colour asked for: "
              + ", ".join(f"{role} {np.mean(hits):.2f}" for role, hits in colour_hits.items()) + " (teacher bar: 0.8)")


if __name__ == "__main__":
    main()
