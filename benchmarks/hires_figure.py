"""The README's high-resolution figure: the builtin pair at 4x its training side, plain and with RAU-Net.

    python -m benchmarks.hires_figure [--out docs/hires_256.png] [--seeds 0 7 14] [--side 256]

Rows are seeds (prompt ``a <colour> <shape>`` as in ``benchmarks.builtin_diffusion``); columns are the teacher and
the student, each plain and with RAU-Net, from the same seed and initial latent. Each tile is labelled with the
number of objects that the measurement's detector finds in it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from benchmarks.builtin_diffusion import GUIDANCE, prompt_for
from compare.generation import generate
from weights.shapes.measure import objects

COLUMNS = (("teacher", False), ("teacher", True), ("student", False), ("student", True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/hires_256.png"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 7, 14])
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    header, pad = 18, 4
    tile = args.side
    canvas = Image.new("RGB", (len(COLUMNS) * (tile + pad) + pad, header + len(args.seeds) * (tile + header + pad)),
                       "white")
    draw = ImageDraw.Draw(canvas)
    for c, (role, raunet) in enumerate(COLUMNS):
        draw.text((pad + c * (tile + pad), 2), f"{role}, {'RAU-Net' if raunet else 'plain'}", fill="black")
    for r, seed in enumerate(args.seeds):
        prompt = prompt_for(seed)[0]
        images = {raunet: generate(prompt, "shapes-diffusion", seed, args.side, args.side, args.steps, GUIDANCE,
                                   raunet, False)[:2] for raunet in (False, True)}
        top = header + r * (tile + header + pad)
        for c, (role, raunet) in enumerate(COLUMNS):
            image = images[raunet][0 if role == "teacher" else 1]
            left = pad + c * (tile + pad)
            canvas.paste(Image.fromarray(np.asarray(image)), (left, top + header))
            draw.text((left, top + 3), f"'{prompt}' seed {seed}: {objects(image)[0]} object(s)", fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
