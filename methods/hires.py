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

VARIANTS = ("paper", "fast")
SCHEDULES = {"2x": (0.4, 0.0), "4x": (0.7, 0.3)}  # HiDiffusion's (T1, T2) ratios for SD 1.5 at 1024² and 2048²


@dataclass
class HiResController:
    """The state of one high-resolution run. Pass :meth:`callback_on_step_end` to the pipeline call.

    ``variant`` ``"paper"`` follows the official HiDiffusion code: T1 = int(ratio · steps); at 4× the UNet's native
    latent side (SD 1.5 at 2048²) T1 = 0.7 and an extra stage T2 = 0.3 pools the second level after its first block
    and restores it in the mirror up block; the upsampler interpolates to the full size and convolves there; MSW-MSA
    draws one of four diagonal shifts for every attention call and resizes odd grids (bicubic). ``"fast"`` is ours:
    T1 = round(0.4 · steps) at every scale, the upsampler convolves at its usual 2× and a bilinear resize does the
    rest (0.45 GFLOP a step less on SD 1.5 at 1024², at a measured cost in duplicated objects: README), and one
    random shift per UNet call with odd grids padded.
    """

    num_steps: int
    raunet: bool
    msw_msa: bool
    switch_fraction: float | None
    generator: torch.Generator | None
    variant: str = "paper"
    step: int = 0
    level_sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # down level -> its input (h, w)
    shift: tuple[int, int] = (0, 0)
    on_switch: Callable[[], None] | None = None  # puts the original modules back when RAU-Net ends
    shift_generator: torch.Generator | None = None
    schedule: str = "2x"  # set from the latent size at the first UNet call (paper variant)
    extra_size: tuple[int, int] | None = None  # the second level's size before the extra pooling
    extra_pooled: tuple[int, int] | None = None  # and after it: what its mirror upsampler must produce

    @property
    def t1_ratio(self) -> float:
        if self.switch_fraction is not None:
            return self.switch_fraction
        return SCHEDULES[self.schedule][0] if self.variant == "paper" else SCHEDULES["2x"][0]

    @property
    def switch_step(self) -> int:
        value = self.t1_ratio * self.num_steps
        return int(value) if self.variant == "paper" else round(value)

    @property
    def extra_step(self) -> int:
        return int(SCHEDULES[self.schedule][1] * self.num_steps) if self.variant == "paper" else 0

    @property
    def raunet_active(self) -> bool:
        return self.raunet and self.step < self.switch_step

    @property
    def extra_active(self) -> bool:
        return self.raunet and self.step < self.extra_step

    def callback_on_step_end(self, pipeline, step_index: int, timestep, callback_kwargs: dict) -> dict:
        self.step = step_index + 1
        if self.on_switch is not None and not self.raunet_active:
            self.on_switch()
            self.on_switch = None
        return callback_kwargs

    def _generator(self) -> torch.Generator:
        if self.shift_generator is None:
            seed = self.generator.initial_seed() if self.generator is not None else int(torch.seed())
            self.shift_generator = torch.Generator().manual_seed(seed)
        return self.shift_generator

    def draw_shift(self, height: int, width: int) -> None:
        """A new window offset in [0, h/2) x [0, w/2), from the run's CPU shift generator (fast variant)."""
        generator = self._generator()
        dy = int(torch.randint(0, max(1, height // 2), (1,), generator=generator))
        dx = int(torch.randint(0, max(1, width // 2), (1,), generator=generator))
        self.shift = (dy, dx)

    def diagonal_shift(self, window: tuple[int, int]) -> tuple[int, int]:
        """One of HiDiffusion's four shifts, (k·⌊wh/4⌋, k·⌊ww/4⌋) for k in 0..3, drawn for one attention call."""
        k = int(torch.randint(0, 4, (1,), generator=self._generator()))
        return window[0] // 4 * k, window[1] // 4 * k


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

    Paper variant: it interpolates to that size (4x at the mirror of the stride-4 downsampler) and convolves there,
    as the official code does through diffusers' ``upsample_size``. Fast variant: where the target is more than twice
    the input, the upsampler runs at its usual 2x and a bilinear resize does the rest, so its convolution never runs
    at more than its usual size.
    """

    def __init__(self, inner: torch.nn.Module, controller: HiResController, level: int):
        super().__init__()
        self.inner, self.controller, self.level = inner, controller, level

    def forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
        target = self.controller.level_sizes.get(self.level, output_size)
        if self.level == 1 and self.controller.extra_active and self.controller.extra_pooled is not None:
            target = self.controller.extra_pooled  # the second level runs pooled during the extra stage
        if target is None:
            return self.inner(hidden_states, output_size=output_size)
        h, w = hidden_states.shape[-2:]
        if self.controller.variant == "paper" or (target[0] <= 2 * h and target[1] <= 2 * w):
            return self.inner(hidden_states, output_size=tuple(target))
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
        if self.controller.variant == "paper":
            return self._paper(attn, hidden_states, h, w, temb, **kwargs)
        dy, dx = self.controller.shift
        x = hidden_states.reshape(b, h, w, c).roll(shifts=(-dy, -dx), dims=(1, 2))
        ph, pw = h % 2, w % 2
        x = F.pad(x, (0, 0, 0, pw, 0, ph))  # even sides so the 2 x 2 windows tile exactly
        hh, ww = (h + ph) // 2, (w + pw) // 2
        windows = x.reshape(b, 2, hh, 2, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b * 4, hh * ww, c)
        out = self.inner(attn, windows, None, None, temb, **kwargs)
        out = out.reshape(b, 2, 2, hh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h + ph, w + pw, c)
        return out[:, :h, :w].roll(shifts=(dy, dx), dims=(1, 2)).reshape(b, h * w, c)

    def _paper(self, attn, hidden_states: torch.Tensor, h: int, w: int, temb, **kwargs) -> torch.Tensor:
        """The official MSW-MSA: windows of ⌈h/2⌉ x ⌈w/2⌉, a diagonal shift drawn for this call (rolled only when its
        first offset is positive), and an odd grid resized to twice the window (bicubic) and back."""
        b, _, c = hidden_states.shape
        window = (-(-h // 2), -(-w // 2))
        dy, dx = self.controller.diagonal_shift(window)
        x = hidden_states.reshape(b, h, w, c)
        odd = h % 2 != 0 or w % 2 != 0
        if odd:
            x = F.interpolate(x.permute(0, 3, 1, 2), size=(2 * window[0], 2 * window[1]),
                              mode="bicubic").permute(0, 2, 3, 1)
        if dy > 0:
            x = x.roll(shifts=(-dy, -dx), dims=(1, 2))
        windows = x.reshape(b, 2, window[0], 2, window[1], c).permute(0, 1, 3, 2, 4, 5)
        out = self.inner(attn, windows.reshape(b * 4, window[0] * window[1], c), None, None, temb, **kwargs)
        out = out.reshape(b, 2, 2, window[0], window[1], c).permute(0, 1, 3, 2, 4, 5)
        out = out.reshape(b, 2 * window[0], 2 * window[1], c)
        if dy > 0:
            out = out.roll(shifts=(dy, dx), dims=(1, 2))
        if odd:
            out = F.interpolate(out.permute(0, 3, 1, 2), size=(h, w), mode="bicubic").permute(0, 2, 3, 1)
        return out.reshape(b, h * w, c)


def _pairs(block) -> list[torch.nn.Module]:
    """The modules that end each (resnet, attention) pair of a block: its attentions, else its resnets."""
    return list(getattr(block, "attentions", None) or block.resnets)


def _replace_sample(output, sample: torch.Tensor):
    """The module's output with its sample replaced (a tensor, a tuple, or a diffusers output object)."""
    if torch.is_tensor(output):
        return sample
    if isinstance(output, tuple):
        return (sample, *output[1:])
    output.sample = sample
    return output


def _sample(output) -> torch.Tensor:
    return output if torch.is_tensor(output) else (output[0] if isinstance(output, tuple) else output.sample)


def _top_self_attention(unet) -> list[str]:
    """Processor names of the self-attention in the highest-resolution down and up blocks."""
    last_up = len(unet.up_blocks) - 1
    return [name for name in unet.attn_processors
            if name.endswith("attn1.processor") and (name.startswith("down_blocks.0.")
                                                     or name.startswith(f"up_blocks.{last_up}."))]


def check_layout(unet) -> None:
    """Refuse a UNet whose layout RAU-Net and MSW-MSA cannot follow, naming what is missing: as many up blocks as
    down blocks, self-attention in the first (highest-resolution) down block (SDXL's first block has none), and a
    downsampler there."""
    if len(unet.up_blocks) != len(unet.down_blocks):
        raise ValueError("high_resolution needs a UNet with as many up blocks as down blocks")
    first = unet.down_blocks[0]
    if not getattr(first, "attentions", None):
        raise ValueError("high_resolution follows SD 1.5's layout: its first down block must hold self-attention "
                         f"(this UNet's first down block, {type(first).__name__}, has none, as SDXL's); HiDiffusion "
                         "places RAU-Net and MSW-MSA elsewhere for such layouts, which this implementation does not")
    if not getattr(first, "downsamplers", None):
        raise ValueError("high_resolution needs a downsampler in the first down block")


@contextmanager
def high_resolution(unet, num_steps: int, raunet: bool = True, msw_msa: bool = True,
                    switch_fraction: float | None = None, generator: torch.Generator | None = None,
                    variant: str = "paper") -> Iterator[HiResController]:
    """Apply RAU-Net and/or MSW-MSA (HiDiffusion, Zhang et al., 2024) to a UNet for one run; everything is
    restored on exit.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` of SD 1.5's layout (SD 1.5, BK-SDM, ours; see
            :func:`check_layout`).
        num_steps: the run's denoising steps (RAU-Net is active for the first T1 of them).
        raunet, msw_msa: which techniques to apply; with both off nothing is installed at all.
        switch_fraction: T1 as a fraction of the steps; None: the official schedule (0.4, and 0.7 with an extra
            stage until 0.3 at 4x the native latent side, paper variant).
        generator: the pipeline's generator; the window shifts come from a CPU generator seeded from its seed.
        variant: ``"paper"`` (the official code's behaviour) or ``"fast"`` (ours: see :class:`HiResController`).

    Yields:
        The run's :class:`HiResController`; pass its ``callback_on_step_end`` to the pipeline.

    Raises:
        ValueError: an unknown variant, a step count or fraction out of range, or a layout it cannot follow.
    """
    check_layout(unet)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {str(variant)[:20]!r}")
    num_steps = in_range(num_steps, "num_steps", 1, 10_000, integer=True)
    if switch_fraction is not None:
        in_range(switch_fraction, "switch_fraction", 0.0, 1.0)
    controller = HiResController(num_steps, raunet, msw_msa, switch_fraction, generator, variant)
    native = getattr(unet.config, "sample_size", None)
    native = native if isinstance(native, int) else (min(native) if native else None)
    replaced: list[tuple[torch.nn.ModuleList, int, torch.nn.Module]] = []
    level_hooks, handles, raunet_hooks = [], [], []  # level sizes; MSW-MSA's; RAU-Net's (gone at the switch)
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
        while raunet_hooks:
            raunet_hooks.pop().remove()
        if not msw_msa:
            while level_hooks:
                level_hooks.pop().remove()

    def choose_schedule(_module, args, kwargs):
        sample = kwargs.get("sample") if "sample" in kwargs else args[0]
        if native and min(sample.shape[-2:]) >= 4 * native:  # the official 2048² schedule of SD 1.5 (latent 256)
            controller.schedule = "4x"

    def new_call(_module, args, kwargs):
        sample = kwargs.get("sample") if "sample" in kwargs else args[0]
        controller.draw_shift(*sample.shape[-2:])

    def pool_extra(_module, _args, output):
        if not controller.extra_active:
            return None
        sample = _sample(output)
        controller.extra_size = tuple(sample.shape[-2:])
        pooled = F.avg_pool2d(sample, kernel_size=2, ceil_mode=True)
        controller.extra_pooled = tuple(pooled.shape[-2:])
        return _replace_sample(output, pooled)

    def restore_extra(_module, _args, output):
        if not controller.extra_active or controller.extra_size is None:
            return None
        return _replace_sample(output, F.interpolate(_sample(output), size=controller.extra_size, mode="bicubic"))

    try:
        if msw_msa and variant == "fast":
            handles.append(unet.register_forward_pre_hook(new_call, with_kwargs=True))
        if raunet and variant == "paper":
            raunet_hooks.append(unet.register_forward_pre_hook(choose_schedule, with_kwargs=True))
        if raunet or msw_msa:  # RAU-Net needs every level's size; MSW-MSA only the top level's
            for level, block in enumerate(unet.down_blocks if raunet else unet.down_blocks[:1]):
                level_hooks.append(block.register_forward_pre_hook(record_size(level), with_kwargs=True))
        if msw_msa:
            top = set(_top_self_attention(unet))
            unet.set_attn_processor({name: WindowedSelfAttention(p, controller) if name in top else p
                                     for name, p in processors.items()})
        if raunet and variant == "paper" and len(unet.down_blocks) > 2:
            # the 4x schedule's extra stage: the second level pooled after its first block (while T2 lasts), and
            # brought back in its mirror up block once that has used the pooled skips
            down, up = unet.down_blocks[1], unet.up_blocks[len(unet.up_blocks) - 2]
            raunet_hooks.append(_pairs(down)[0].register_forward_hook(pool_extra))
            raunet_hooks.append(_pairs(up)[len(_pairs(down)) - 1].register_forward_hook(restore_extra))
        if raunet and controller.raunet_active:
            n = len(unet.up_blocks)
            for j, block in enumerate(unet.up_blocks):
                if getattr(block, "upsamplers", None):
                    replaced.append((block.upsamplers, 0, block.upsamplers[0]))
                    block.upsamplers[0] = SizeMatchedUpsample(block.upsamplers[0], controller, level=n - 2 - j)
            first = unet.down_blocks[0]
            replaced.append((first.downsamplers, 0, first.downsamplers[0]))
            first.downsamplers[0] = RAUDownsample(first.downsamplers[0])
            controller.on_switch = restore_modules
        yield controller
    finally:
        restore_modules()
        for handle in level_hooks + handles + raunet_hooks:
            handle.remove()
        if processors is not None:
            unet.set_attn_processor(processors)
