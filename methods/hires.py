"""Training-free high resolution for any diffusers ``UNet2DConditionModel`` (teacher or block-removed student),
after HiDiffusion: RAU-Net and MSW-MSA, our own implementation on current diffusers.

- RAU-Net: until a switching step, the first down block's downsampler works with stride 4 (its own 3x3 weights,
  dilation 2, padding 2), so the deep blocks see the feature-map size they were trained on. That convolution equals
  the ordinary stride-2 convolution of the same weights on every other pixel (``x[..., ::2, ::2]``), which is how
  it runs here: the fast, common kernel instead of a dilated one (``tests/test_hires.py`` proves the equality).
  The mirror upsampler then brings the features back up: it runs at its usual 2x (its 3x3 convolution at half the
  final size) and a bilinear resize does the last 2x. Every upsampler resizes to the size its mirror down level
  actually had, so any (non-square, odd) latent size works. At the switching step the original modules are put
  back, once; from then on the UNet runs exactly as without RAU-Net.
- MSW-MSA: self-attention in the top (highest-resolution) transformer blocks runs inside a 2 x 2 grid of windows,
  shifted by a random offset each UNet call, drawn from a CPU generator seeded from the pipeline's generator (runs
  repeat exactly, and drawing never waits for the GPU).

Everything happens inside :func:`high_resolution`, which installs only what the chosen techniques need (nothing
when both are off) and restores every module, attention processor and hook in ``finally`` (also after an error or
a cancelled run). Per-run state (the step counter, the shift) lives in the :class:`HiResController` of that run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from methods.checks import in_range


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
    on_switch: Callable[[], None] | None = None  # puts the original modules back when RAU-Net ends
    shift_generator: torch.Generator | None = None

    @property
    def switch_step(self) -> int:
        return round(self.switch_fraction * self.num_steps)

    @property
    def raunet_active(self) -> bool:
        return self.raunet and self.step < self.switch_step

    def callback_on_step_end(self, pipeline, step_index: int, timestep, callback_kwargs: dict) -> dict:
        self.step = step_index + 1
        if self.on_switch is not None and not self.raunet_active:
            self.on_switch()
            self.on_switch = None
        return callback_kwargs

    def draw_shift(self, height: int, width: int) -> None:
        """A new window offset in [0, h/2) x [0, w/2), from the run's CPU shift generator."""
        if self.shift_generator is None:
            seed = self.generator.initial_seed() if self.generator is not None else int(torch.seed())
            self.shift_generator = torch.Generator().manual_seed(seed)
        dy = int(torch.randint(0, max(1, height // 2), (1,), generator=self.shift_generator))
        dx = int(torch.randint(0, max(1, width // 2), (1,), generator=self.shift_generator))
        self.shift = (dy, dx)


class RAUDownsample(torch.nn.Module):
    """Replaces a ``Downsample2D`` while RAU-Net is active: its 3x3 convolution with stride 4, dilation 2 and
    padding 2, computed as the same convolution with stride 2 and padding 1 on every other pixel."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        conv = getattr(inner, "conv", None)
        if not (isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (3, 3) and inner.norm is None):
            raise ValueError("RAU-Net needs a 3x3 convolutional Downsample2D in the first down block")
        self.inner = inner

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        conv = self.inner.conv
        return F.conv2d(hidden_states[..., ::2, ::2], conv.weight, conv.bias, stride=2, padding=1)


class SizeMatchedUpsample(torch.nn.Module):
    """Replaces an ``Upsample2D`` while RAU-Net is active, so it resizes to the size its mirror down level had.

    Where that is more than twice the input (the mirror of the stride-4 downsampler), the upsampler runs at its
    usual 2x and a bilinear resize does the rest, so its convolution never runs at more than its usual size.
    """

    def __init__(self, inner: torch.nn.Module, controller: HiResController, level: int):
        super().__init__()
        self.inner, self.controller, self.level = inner, controller, level

    def forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
        target = self.controller.level_sizes.get(self.level, output_size)
        if target is None:
            return self.inner(hidden_states, output_size=output_size)
        h, w = hidden_states.shape[-2:]
        if target[0] <= 2 * h and target[1] <= 2 * w:
            return self.inner(hidden_states, output_size=target)
        middle = self.inner(hidden_states, output_size=(2 * h, 2 * w))
        return F.interpolate(middle, size=tuple(target), mode="bilinear", align_corners=False)


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
        raunet, msw_msa: which techniques to apply; with both off nothing is installed at all.
        switch_fraction: HiDiffusion's T1 as a fraction of the steps (0.4 for SD 1.5 at 1024^2).
        generator: the pipeline's generator; the window shifts come from a CPU generator seeded from its seed.

    Yields:
        The run's :class:`HiResController`; pass its ``callback_on_step_end`` to the pipeline.
    """
    if len(unet.up_blocks) != len(unet.down_blocks):
        raise ValueError("high_resolution needs a UNet with as many up blocks as down blocks")
    num_steps = in_range(num_steps, "num_steps", 1, 10_000, integer=True)
    in_range(switch_fraction, "switch_fraction", 0.0, 1.0)
    controller = HiResController(num_steps, raunet, msw_msa, switch_fraction, generator)
    replaced: list[tuple[torch.nn.ModuleList, int, torch.nn.Module]] = []
    level_hooks, handles = [], []
    processors = dict(unet.attn_processors) if msw_msa else None

    def record_size(level: int) -> Callable:
        def hook(_module, args, kwargs):
            sample = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            controller.level_sizes[level] = tuple(sample.shape[-2:])
        return hook

    def restore_modules() -> None:
        while replaced:
            container, index, original = replaced.pop()
            container[index] = original
        if not msw_msa:
            while level_hooks:
                level_hooks.pop().remove()

    try:
        if raunet or msw_msa:  # RAU-Net needs every level's size; MSW-MSA only the top level's
            for level, block in enumerate(unet.down_blocks if raunet else unet.down_blocks[:1]):
                level_hooks.append(block.register_forward_pre_hook(record_size(level), with_kwargs=True))
        if msw_msa:
            def new_call(_module, args, kwargs):
                sample = kwargs.get("sample") if "sample" in kwargs else args[0]
                controller.draw_shift(*sample.shape[-2:])
            handles.append(unet.register_forward_pre_hook(new_call, with_kwargs=True))
            top = set(_top_self_attention(unet))
            unet.set_attn_processor({name: WindowedSelfAttention(p, controller) if name in top else p
                                     for name, p in processors.items()})
        if raunet and controller.raunet_active:
            n = len(unet.up_blocks)
            for j, block in enumerate(unet.up_blocks):
                if getattr(block, "upsamplers", None):
                    replaced.append((block.upsamplers, 0, block.upsamplers[0]))
                    block.upsamplers[0] = SizeMatchedUpsample(block.upsamplers[0], controller, level=n - 2 - j)
            first = next(b for b in unet.down_blocks if getattr(b, "downsamplers", None))
            replaced.append((first.downsamplers, 0, first.downsamplers[0]))
            first.downsamplers[0] = RAUDownsample(first.downsamplers[0])
            controller.on_switch = restore_modules
        yield controller
    finally:
        restore_modules()
        for handle in level_hooks + handles:
            handle.remove()
        if processors is not None:
            unet.set_attn_processor(processors)
