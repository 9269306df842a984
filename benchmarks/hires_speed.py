"""Steps per second of an SD 1.5-architecture UNet and a BK-SDM-Small-architecture UNet (random weights: time does
not depend on weights) at high resolution, without and with RAU-Net and MSW-MSA.

    python -m benchmarks.hires_speed [--side 1024] [--steps 20]      # on a CUDA machine (fp16)
    python -m benchmarks.hires_speed --side 256 --steps 2 --width-scale 0.25   # a quick CPU check of the code

Each run is a full denoising loop of UNet calls at batch 2 (classifier-free guidance), with RAU-Net active for
the first 40 % of the steps as in HiDiffusion's SD 1.5 setting.
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import UNet2DConditionModel

from methods.hires import high_resolution

SD15 = dict(layers_per_block=2, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
            attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
BK_SDM_SMALL = SD15 | dict(layers_per_block=1, mid_block_type=None)


def build(config: dict, width_scale: float) -> UNet2DConditionModel:
    config = dict(config)
    widths = config["block_out_channels"]
    config["block_out_channels"] = tuple(max(32, int(c * width_scale) // 32 * 32) for c in widths)
    return UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, **config)


def steps_per_second(unet, side: int, steps: int, device, dtype, raunet: bool, msw_msa: bool) -> float:
    latents = torch.randn(2, 4, side // 8, side // 8, device=device, dtype=dtype)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.inference_mode(), high_resolution(unet, steps, raunet=raunet, msw_msa=msw_msa,
                                                 generator=generator) as controller:
        unet(latents, torch.tensor(999, device=device), encoder_hidden_states=text)  # warm-up
        controller.step = 0
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for step in range(steps):
            unet(latents, torch.tensor(999 - step, device=device), encoder_hidden_states=text)
            controller.callback_on_step_end(None, step, None, {})
        if device.type == "cuda":
            torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--width-scale", type=float, default=1.0, help="shrink channel widths (CPU checks only)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"UNet steps per second at {args.side}x{args.side}, batch 2, {args.steps} steps, {name}, {dtype}"
          + (f", channel widths x{args.width_scale}" if args.width_scale != 1 else "") + "\n")
    print("| UNet | plain | RAU-Net | MSW-MSA | both | both vs plain |")
    print("|---|---|---|---|---|---|")
    for label, config in (("SD 1.5 architecture", SD15), ("BK-SDM-Small architecture", BK_SDM_SMALL)):
        unet = build(config, args.width_scale).to(device, dtype).eval()
        rates = [steps_per_second(unet, args.side, args.steps, device, dtype, r, m)
                 for r, m in ((False, False), (True, False), (False, True), (True, True))]
        print(f"| {label} | {' | '.join(f'{r:.2f}' for r in rates)} | {rates[3] / rates[0]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
