"""Measure the builtin text-to-image pair at 1x, 2x and 4x its training side, and print the README's table.

    python -m benchmarks.builtin_diffusion [--seeds 32] [--steps 20] [--scales 1 2 4]

Prompts ``a <colour> <shape>`` cycle over the 30 colour-shapes, one per seed. For each image the objects are the
connected components of saturated pixels near one of the six named colours (see
:func:`weights.shapes.measure.objects`), of at least 0.5 % of the image; "extra objects" are the components beyond
the one asked for; "asked colour" is the share of images whose largest object has the colour asked for. Above 1x
each size runs plain, with HiDiffusion's RAU-Net and MSW-MSA as published (paper) and with our faster variant
(fast); seconds are the mean wall-clock time per image on this machine.
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


SETTINGS = {"plain": (False, False, "paper"), "paper": (True, True, "paper"), "fast": (True, True, "fast")}


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
    print(f"Builtin pair {args.pair}, {args.seeds} seeds per size and setting, {args.steps} DDIM steps, guidance "
          f"{GUIDANCE:g}; plain: neither technique; paper and fast: RAU-Net and MSW-MSA, HiDiffusion's own "
          "algorithm and our faster variant\n")
    print("| size | model | setting | extra objects / image | asked colour | seconds / image |")
    print("|---|---|---|---|---|---|", flush=True)
    for scale in args.scales:
        settings = {"plain": SETTINGS["plain"]} if scale == 1 else SETTINGS
        stats = {}
        for setting, (raunet, msw, variant) in settings.items():
            for seed in range(args.seeds):
                prompt, colour = prompt_for(seed)
                teacher, student, report = generate(prompt, args.pair, seed, side * scale, side * scale, args.steps,
                                                    GUIDANCE, raunet, msw, variant=variant)
                for role, image in (("teacher", teacher), ("student", student)):
                    n, found = objects(image)
                    block = stats.setdefault((role, setting), {"extra": [], "colour": [], "seconds": []})
                    block["extra"].append(max(0, n - 1))
                    block["colour"].append(found == colour)
                    block["seconds"].append(report[role]["seconds"])
        for role in ("teacher", "student"):
            for setting in settings:
                block = stats[(role, setting)]
                print(f"| {scale * side}² | {role} | {setting} | {statistics.mean(block['extra']):.2f} | "
                      f"{np.mean(block['colour']):.2f} | {statistics.mean(block['seconds']):.2f} |", flush=True)
    print("\nasked colour: the share of images whose largest object has the colour asked for (teacher bar at 1x: "
          "0.8).")


if __name__ == "__main__":
    main()
