"""Training-free high resolution for any diffusers ``UNet2DConditionModel`` (teacher or block-removed student),
after HiDiffusion: RAU-Net and MSW-MSA, our own implementation on current diffusers.

- RAU-Net: until a switching step, the first down block's downsampler works with stride 4 (its own 3x3 weights,
  dilation 2, padding 2), so the deep blocks see the feature-map size they were trained on; the mirror upsampler
  then brings features back up. Every upsampler interpolates to the size its mirror down level actually had, so
  any (non-square, odd) latent size works. After the switching step the UNet runs normally.
- MSW-MSA: self-attention in the top (highest-resolution) transformer blocks runs inside a 2 x 2 grid of windows,
  shifted by a random offset each UNet call, drawn from the pipeline's generator (runs repeat exactly).

Everything happens inside :func:`high_resolution`, which restores every module, attention processor and hook in
``finally`` (also after an error or a cancelled run). Per-run state (the step counter, the shift) lives in the
:class:`HiResController` of that run, never in the UNet's modules, so nothing goes stale between runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class HiResController:
    """The state of one high-resolution run. Pass :meth:`callback_on_step_end` to the pipeline call."""

    num_steps: int
    raunet: bool
    msw_msa: bool
    switch_fraction: float
    generator: torch.Generator | None
    step: int = 0
    level_sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # down level -> its input (h, w)
    shift: tuple[int, int] = (0, 0)

    @property
    def raunet_active(self) -> bool:
        return self.raunet and self.step < round(self.switch_fraction * self.num_steps)

    def callback_on_step_end(self, pipeline, step_index: int, timestep, callback_kwargs: dict) -> dict:
        self.step = step_index + 1
        return callback_kwargs

    def draw_shift(self, height: int, width: int, device: torch.device) -> None:
        """A new window offset in [0, h/2) x [0, w/2), from the run's generator."""
        generator = self.generator
        gen_device = generator.device if generator is not None else torch.device("cpu")
        dy = int(torch.randint(0, max(1, height // 2), (1,), generator=generator, device=gen_device))
        dx = int(torch.randint(0, max(1, width // 2), (1,), generator=generator, device=gen_device))
        self.shift = (dy, dx)


class RAUDownsample(torch.nn.Module):
    """Wraps a ``Downsample2D``: stride 4 (dilation 2, padding 2, same weights) while RAU-Net is active."""

    def __init__(self, inner: torch.nn.Module, controller: HiResController):
        super().__init__()
        conv = getattr(inner, "conv", None)
        if not (isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (3, 3) and inner.norm is None):
            raise ValueError("RAU-Net needs a 3x3 convolutional Downsample2D in the first down block")
        self.inner, self.controller = inner, controller

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if not self.controller.raunet_active:
            return self.inner(hidden_states, *args, **kwargs)
        conv = self.inner.conv
        return F.conv2d(hidden_states, conv.weight, conv.bias, stride=4, padding=2, dilation=2)


class SizeMatchedUpsample(torch.nn.Module):
    """Wraps an ``Upsample2D`` so it always interpolates to the size its mirror down level had."""

    def __init__(self, inner: torch.nn.Module, controller: HiResController, level: int):
        super().__init__()
        self.inner, self.controller, self.level = inner, controller, level

    def forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
        target = self.controller.level_sizes.get(self.level, output_size)
        return self.inner(hidden_states, output_size=target)


class WindowedSelfAttention:
    """An attention processor that runs the wrapped one inside 2 x 2 shifted windows (self-attention only)."""

    def __init__(self, inner, controller: HiResController):
        self.inner, self.controller = inner, controller

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs) -> torch.Tensor:
        sizes = [s for s in self.controller.level_sizes.values() if s[0] * s[1] == hidden_states.shape[1]]
        if (not self.controller.msw_msa or encoder_hidden_states is not None or hidden_states.dim() != 3
                or not sizes):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        (h, w), (b, _, c) = sizes[0], hidden_states.shape
        dy, dx = self.controller.shift
        x = hidden_states.reshape(b, h, w, c).roll(shifts=(-dy, -dx), dims=(1, 2))
        ph, pw = h % 2, w % 2
        x = F.pad(x, (0, 0, 0, pw, 0, ph))  # even sides so the 2 x 2 windows tile exactly
        hh, ww = (h + ph) // 2, (w + pw) // 2
        windows = x.reshape(b, 2, hh, 2, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b * 4, hh * ww, c)
        out = self.inner(attn, windows, None, None, temb, **kwargs)
        out = out.reshape(b, 2, 2, hh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h + ph, w + pw, c)
        return out[:, :h, :w].roll(shifts=(dy, dx), dims=(1, 2)).reshape(b, h * w, c)


def _top_self_attention(unet) -> list[str]:
    """Processor names of the self-attention in the highest-resolution down and up blocks."""
    last_up = len(unet.up_blocks) - 1
    return [name for name in unet.attn_processors
            if name.endswith("attn1.processor") and (name.startswith("down_blocks.0.")
                                                     or name.startswith(f"up_blocks.{last_up}."))]


@contextmanager
def high_resolution(unet, num_steps: int, raunet: bool = True, msw_msa: bool = True, switch_fraction: float = 0.4,
                    generator: torch.Generator | None = None) -> Iterator[HiResController]:
    """Apply RAU-Net and/or MSW-MSA to a UNet for one run; everything is restored on exit.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` with as many up as down blocks (SD 1.5, BK-SDM, ours).
        num_steps: the run's denoising steps (RAU-Net is active for the first ``switch_fraction`` of them).
        raunet, msw_msa: which techniques to apply.
        switch_fraction: HiDiffusion's T1 as a fraction of the steps (0.4 for SD 1.5 at 1024^2).
        generator: the pipeline's generator; the window shifts are drawn from it.

    Yields:
        The run's :class:`HiResController`; pass its ``callback_on_step_end`` to the pipeline.
    """
    if len(unet.up_blocks) != len(unet.down_blocks):
        raise ValueError("high_resolution needs a UNet with as many up blocks as down blocks")
    controller = HiResController(num_steps, raunet, msw_msa, switch_fraction, generator)
    replaced: list[tuple[torch.nn.ModuleList, int, torch.nn.Module]] = []
    handles = []
    processors = dict(unet.attn_processors)
    try:
        for level, block in enumerate(unet.down_blocks):
            handles.append(block.register_forward_pre_hook(
                lambda _m, args, kwargs, level=level: controller.level_sizes.__setitem__(
                    level, tuple((kwargs.get("hidden_states") if "hidden_states" in kwargs else args[0]).shape[-2:])),
                with_kwargs=True))
        if msw_msa:
            def new_call(_module, args, kwargs):
                sample = kwargs.get("sample") if "sample" in kwargs else args[0]
                controller.draw_shift(*sample.shape[-2:], sample.device)
            handles.append(unet.register_forward_pre_hook(new_call, with_kwargs=True))
            top = set(_top_self_attention(unet))
            unet.set_attn_processor({name: WindowedSelfAttention(p, controller) if name in top else p
                                     for name, p in processors.items()})
        if raunet:
            n = len(unet.up_blocks)
            for j, block in enumerate(unet.up_blocks):
                if getattr(block, "upsamplers", None):
                    replaced.append((block.upsamplers, 0, block.upsamplers[0]))
                    block.upsamplers[0] = SizeMatchedUpsample(block.upsamplers[0], controller, level=n - 2 - j)
            first = next(b for b in unet.down_blocks if getattr(b, "downsamplers", None))
            replaced.append((first.downsamplers, 0, first.downsamplers[0]))
            first.downsamplers[0] = RAUDownsample(first.downsamplers[0], controller)
        yield controller
    finally:
        for container, index, original in reversed(replaced):
            container[index] = original
        for handle in handles:
            handle.remove()
        unet.set_attn_processor(processors)
