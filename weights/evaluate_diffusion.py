"""Measure the builtin text-to-image pair at 1x, 2x and 4x its training side, and print the README's table.

    python -m weights.evaluate_diffusion [--seeds 32] [--steps 20]      # about 55 minutes on 2 CPU cores

Prompts ``a <colour> <shape>`` cycle over the 30 colour-shapes, one per seed. For each image the objects are the
connected components of saturated pixels near one of the six named colours (see :func:`objects`), of at least
0.5 % of the image; "extra objects" are the components beyond the one asked for. At 1x it also reports the share
of images whose largest object has the asked colour.
Seconds are the mean wall-clock time per image on this machine, teacher and student, without and with MSW-MSA.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
from scipy import ndimage
from skimage.color import rgb2hsv

from demos.diffusion import generate
from weights.registry import get_pair
from weights.shapes import COLOUR_NAMES, COLOURS, SHAPE_NAMES

GUIDANCE = 4.0
SATURATION = 0.5
MAX_COLOUR_DISTANCE = 70.0
MIN_AREA = 0.005


def objects(image: np.ndarray) -> tuple[int, str | None]:
    """(number of objects, named colour of the largest) of an RGB uint8 image.

    A pixel is object-coloured when it is saturated (Shapes backgrounds have saturation at most 0.35, the six
    object colours about 0.65-0.83) and within ``MAX_COLOUR_DISTANCE`` (RGB) of a named colour (object colours
    are jittered by at most 20 per channel, about 35 away), so that a generated background that comes out
    saturated in some other hue is not taken for an object. Objects are the connected components of each named
    colour's pixels, of at least ``MIN_AREA`` of the image. On ground-truth scenes this finds exactly one object
    of the right colour in single-object scenes, and the exact object count in most multi-object scenes
    (``tests/test_diffusion.py``).
    """
    hsv = rgb2hsv(image)
    named = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32)
    distance = np.linalg.norm(image.astype(np.float32)[..., None, :] - named, axis=-1)  # (H, W, 6)
    nearest = distance.argmin(-1)
    coloured = (distance.min(-1) < MAX_COLOUR_DISTANCE) & (hsv[..., 1] > SATURATION) & (hsv[..., 2] > 0.25)
    found: list[tuple[float, str]] = []
    for k, name in enumerate(COLOUR_NAMES):
        mask = ndimage.binary_opening(coloured & (nearest == k), iterations=1)
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        if count:
            areas = ndimage.sum(mask, labels, range(1, count + 1))
            found += [(float(a), name) for a in areas if a >= MIN_AREA * mask.size]
    if not found:
        return 0, None
    return len(found), max(found)[1]


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    side = get_pair(args.pair, "generation").native["width"]
    colour_hits = {"teacher": [], "student": []}
    print(f"Builtin pair {args.pair}, {args.seeds} seeds per size, {args.steps} DDIM steps, guidance {GUIDANCE:g}\n")
    print("| size | model | extra objects / image | with RAU-Net | seconds / image | with MSW-MSA |")
    print("|---|---|---|---|---|---|", flush=True)
    for scale in (1, 2, 4):
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
    print("\nAt 1x, images whose object has the colour asked for: "
          + ", ".join(f"{role} {np.mean(hits):.2f}" for role, hits in colour_hits.items()) + " (teacher bar: 0.8)")


if __name__ == "__main__":
    main()
