"""Steps per second of an SD 1.5-architecture UNet and a BK-SDM-Small-architecture UNet (random weights: time does
not depend on weights) at high resolution, without and with RAU-Net and MSW-MSA.

    python -m benchmarks.hires_speed --side 1024 2048 [--steps 20]      # on a CUDA machine (fp16)
    python -m benchmarks.hires_speed --side 512 --steps 10 --width-scale 0.25   # the CPU check (fp32)

Each run is a full denoising loop of UNet calls at batch 2 (classifier-free guidance), each technique in both
variants: HiDiffusion's own algorithm (``paper``) and ours (``fast``: the mirror upsampler at half size); one untimed
round of every setting, then the best of ``--repeats`` rounds in which the settings take turns.
"""

from __future__ import annotations

import argparse

import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from analysis.profiling import DispatchCounter, Stopwatch
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


# (RAU-Net, MSW-MSA, variant): HiDiffusion's own algorithm ("paper") and our faster variant ("fast")
SETTINGS = {"plain": (False, False, "paper"), "RAU-Net": (True, False, "paper"), "MSW-MSA": (False, True, "paper"),
            "both": (True, True, "paper"), "RAU-Net fast": (True, False, "fast"), "both fast": (True, True, "fast")}


def _inputs(unet, side: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    latents = torch.randn(2, 4, side // 8, side // 8, device=device, dtype=dtype)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    return latents, text


def loop_seconds(unet, side: int, steps: int, device, dtype, raunet: bool, msw_msa: bool, variant: str = "paper",
                 channels_last: bool = False) -> float:
    """Seconds of one whole denoising loop of UNet calls with the given techniques."""
    latents, text = _inputs(unet, side, device, dtype)
    if channels_last:
        latents = latents.to(memory_format=torch.channels_last)
    timesteps = torch.arange(999, 999 - steps, -1, device=device)  # uploaded once: no copy (and sync) per step
    generator = torch.Generator(device=device).manual_seed(0)
    with (torch.inference_mode(), Stopwatch(device) as watch,
          high_resolution(unet, steps, raunet=raunet, msw_msa=msw_msa, generator=generator,
                          variant=variant) as controller):
        for step in range(steps):
            unet(latents, timesteps[step], encoder_hidden_states=text)
            controller.callback_on_step_end(None, step, None, {})
    return watch.seconds


def steps_per_second(unet, side: int, steps: int, device, dtype, channels_last: bool = False, repeats: int = 3,
                     ) -> dict[str, float]:
    """Steps per second of every setting: one untimed round of all settings, then ``repeats`` rounds in which the
    settings take turns (so a clock that drifts, or a first setting that runs cold, favours none), the best loop
    of each setting counted."""
    best = {k: float("inf") for k in SETTINGS}
    for round_ in range(repeats + 1):
        for name, (raunet, msw_msa, variant) in SETTINGS.items():
            seconds = loop_seconds(unet, side, steps, device, dtype, raunet, msw_msa, variant, channels_last)
            if round_:  # the first round warms up
                best[name] = min(best[name], seconds)
    return {k: steps / v for k, v in best.items()}


def cost_per_run(config: dict, width_scale: float, side: int, steps: int, raunet: bool, msw_msa: bool,
                 variant: str = "paper") -> tuple[float, list[int]]:
    """FLOPs of a whole denoising loop as ``torch.utils.flop_counter`` counts them, and the aten ops one step
    dispatches in each phase (what the host must launch per step), on the meta device (shapes only, no arithmetic).
    A step's cost depends only on which modules are in place, not on the timestep or the window shift, so one step
    is counted per phase (the paper variant's extra stage at 4x, RAU-Net, then after the switch) and multiplied by the
    number of steps in that phase."""
    with torch.device("meta"):
        unet = build(config, width_scale).eval()
    latents, text = _inputs(unet, side, torch.device("meta"), torch.float32)
    total, ops = 0, []
    generator = torch.Generator().manual_seed(0)  # the window shifts (a roll or none) fixed: counts repeat exactly
    with torch.no_grad(), high_resolution(unet, steps, raunet=raunet, msw_msa=msw_msa, generator=generator,
                                          variant=variant) as controller:
        first, done = 0, 0
        while first < steps:
            if first:  # move the run to this phase (the extra stage ends, then RAU-Net's modules go at the switch)
                controller.callback_on_step_end(None, first - 1, None, {})
            with FlopCounterMode(display=False) as counter, DispatchCounter() as dispatched:
                unet(latents, torch.tensor(999 - first, device="meta"), encoder_hidden_states=text)
            # the phase boundaries are known once the first call has set the schedule from the latent size
            bounds = sorted({b for b in (controller.extra_step, controller.switch_step if raunet else 0, steps)
                             if b > first})
            count = bounds[0] - first
            total += count * counter.get_total_flops()
            ops.append(dispatched.ops)
            first, done = bounds[0], done + count
    return total, ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, nargs="+", default=[1024])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--width-scale", type=float, default=1.0, help="shrink channel widths (CPU checks only)")
    parser.add_argument("--channels-last", action="store_true", help="run the UNets in channels_last layout")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed loops per setting (the best counts)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({args.threads} threads)"
    print(f"UNet steps per second, batch 2, {args.steps} steps (RAU-Net: paper = HiDiffusion's schedule, 0.4 of the "
          f"steps, at 4x 0.7 with an extra stage to 0.3; fast = ours, 0.4), {name}, {dtype}"
          + (f", channel widths x{args.width_scale}" if args.width_scale != 1 else "")
          + (", channels_last" if args.channels_last else "") + "\n")
    rows, ratios, launches = [], [], []
    for side in args.side:
        for label, config in (("SD 1.5 architecture", SD15), ("BK-SDM-Small architecture", BK_SDM_SMALL)):
            unet = build(config, args.width_scale).to(device, dtype).eval()
            if args.channels_last:
                unet = unet.to(memory_format=torch.channels_last)
            rates = steps_per_second(unet, side, args.steps, device, dtype, args.channels_last, args.repeats)
            costs = {k: cost_per_run(config, args.width_scale, side, args.steps, *v) for k, v in SETTINGS.items()}
            flops = {k: v[0] for k, v in costs.items()}
            if side == args.side[0]:  # ops per step do not depend on the side
                launches.append(f"| {label} | " + " | ".join(" / ".join(f"{n:,}" for n in costs[k][1])
                                                           for k in SETTINGS) + " |")
            rows.append(f"| {label} | {side}² | {' | '.join(f'{r:.2f}' for r in rates.values())} | "
                        f"{rates['both'] / rates['plain']:.2f}x | {rates['both fast'] / rates['plain']:.2f}x |")
            for k in [k for k in SETTINGS if k != "plain"]:
                ratio, speedup = flops["plain"] / flops[k], rates[k] / rates["plain"]
                ratios.append(f"| {label} | {side}² | {k} | {ratio:.2f}x | {speedup:.2f}x | {speedup / ratio:.0%} |")
            del unet
            print(rows[-1], flush=True)
    print("\n| UNet | side | " + " | ".join(SETTINGS) + " | both vs plain | both fast vs plain |\n|---|---|"
          + "---|" * (len(SETTINGS) + 2))
    print("\n".join(rows))
    print("\nShare of FLOP ratio reached: measured speed-up / FLOP ratio (FLOPs of the whole loop, on the meta "
          "device).\n")
    print("| UNet | side | setting | FLOP ratio to plain | measured speed-up | share of FLOP ratio reached |")
    print("|---|---|---|---|---|---|")
    print("\n".join(ratios))
    print("\nHost work per step: aten ops one UNet call dispatches (RAU-Net phase / after the switch where they "
          "differ), each a kernel launch or more on a GPU; counted on the meta device.\n")
    print("| UNet | " + " | ".join(SETTINGS) + " |\n|---|" + "---|" * len(SETTINGS))
    print("\n".join(launches))


if __name__ == "__main__":
    main()
