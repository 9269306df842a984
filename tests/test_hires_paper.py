"""The paper variant of RAU-Net and MSW-MSA against a reference written from the official HiDiffusion code
(``hidiffusion/hidiffusion.py`` of megvii-research/HiDiffusion, read for this test, not imported: it needs an old
diffusers): on a tiny UNet of SD 1.5's layout, one forward in every phase of a run, at the 2x and the 4x schedule,
for every one of the four window shifts."""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from methods.hires import high_resolution


def sd15_like(seed: int = 0) -> UNet2DConditionModel:
    """SD 1.5's block layout (three cross-attention levels and a plain one, two layers a block), tiny and random."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(8, 16, 16, 16),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=8, attention_head_dim=2,
        norm_num_groups=4).eval()


def run(unet, sample):
    text = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return unet(sample, torch.tensor(10), encoder_hidden_states=text).sample


# The reference: the official code's behaviour, module by module --------------------------------------------------

def official_ratios(latent: tuple[int, int]) -> tuple[float, float]:
    """``switching_threshold_ratio_dict``: sd15_1024 below a 256 latent side (4x SD 1.5's 64), else sd15_2048."""
    return (0.4, 0.0) if latent[0] < 4 * 8 or latent[1] < 4 * 8 else (0.7, 0.3)


def window_partition(x, window, shift, h, w):
    b, _, c = x.shape
    x = x.view(b, h, w, c)
    if h % 2 != 0 or w % 2 != 0:
        x = F.interpolate(x.permute(0, 3, 1, 2).contiguous(), size=(window[0] * 2, window[1] * 2),
                          mode="bicubic").permute(0, 2, 3, 1).contiguous()
    if shift[0] > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    x = x.view(b, 2, window[0], 2, window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window[0] * window[1], c)


def window_reverse(windows, window, h, w, shift):
    _, _, c = windows.shape
    b = windows.shape[0] // 4
    x = windows.view(b, 2, 2, window[0], window[1], -1).permute(0, 1, 3, 2, 4, 5).contiguous()
    x = x.view(b, window[0] * 2, window[1] * 2, -1)
    if shift[0] > 0:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    if h % 2 != 0 or w % 2 != 0:
        x = F.interpolate(x.permute(0, 3, 1, 2).contiguous(), size=(h, w), mode="bicubic").permute(0, 2, 3, 1)
    return x.contiguous().view(b, h * w, c)


class OfficialWindows:
    """MSW-MSA as the official transformer block applies it around ``attn1`` (shift index ``k`` fixed)."""

    def __init__(self, inner, size: tuple[int, int], k: int):
        self.inner, self.size, self.k = inner, size, k

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        n = hidden_states.shape[1]
        ratio = round(((self.size[0] * self.size[1]) / n) ** 0.5)
        h, w = math.ceil(self.size[0] / ratio), math.ceil(self.size[1] / ratio)
        window = (math.ceil(h / 2), math.ceil(w / 2))
        shift = (window[0] // 4 * self.k, window[1] // 4 * self.k)
        windows = window_partition(hidden_states, window, shift, h, w)
        return window_reverse(self.inner(attn, windows, None, None, temb, **kw), window, h, w, shift)


@contextlib.contextmanager
def official(unet, step: int, steps: int, k: int, raunet: bool = True, msw_msa: bool = True):
    """The official patches on ``unet`` for one forward at ``step`` of ``steps``."""
    handles, size = [], {}
    unet.num_upsamplers += 12  # the official hack: the UNet passes each up block the size of its skip
    t1_ratio = t2_ratio = 0.0

    def latent(_m, args, kwargs):
        nonlocal t1_ratio, t2_ratio
        size["latent"] = tuple((kwargs.get("sample") if "sample" in kwargs else args[0]).shape[-2:])
        t1_ratio, t2_ratio = official_ratios(size["latent"])

    handles.append(unet.register_forward_pre_hook(latent, with_kwargs=True))
    conv = unet.down_blocks[0].downsamplers[0].conv
    plain_conv = conv.forward

    def rau_conv(x):
        if raunet and step < int(steps * t1_ratio):
            return F.conv2d(x, conv.weight, conv.bias, stride=4, padding=2, dilation=2)
        return plain_conv(x)

    conv.forward = rau_conv

    def pool(_m, _a, out):  # down_blocks.1, after its first (resnet, attention) pair
        if raunet and step < int(steps * t2_ratio):
            size["upsample"] = out[0].shape[-2:]
            return (F.avg_pool2d(out[0], kernel_size=(2, 2), ceil_mode=True),)
        return None

    def unpool(_m, _a, out):  # up_blocks.2, after its second pair
        if raunet and step < int(steps * t2_ratio):
            return (F.interpolate(out[0], size=size["upsample"], mode="bicubic"),)
        return None

    handles.append(unet.down_blocks[1].attentions[0].register_forward_hook(pool))
    handles.append(unet.up_blocks[2].attentions[1].register_forward_hook(unpool))
    processors = dict(unet.attn_processors)
    if msw_msa:
        top = [n for n in processors if n.endswith("attn1.processor") and n.startswith(("down_blocks.0.",
                                                                                         "up_blocks.3."))]

        def windowed(_m, args, kwargs):
            sample = kwargs.get("sample") if "sample" in kwargs else args[0]
            unet.set_attn_processor({n: OfficialWindows(p, tuple(sample.shape[-2:]), k) if n in top else p
                                     for n, p in processors.items()})

        handles.append(unet.register_forward_pre_hook(windowed, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        conv.forward = plain_conv
        unet.num_upsamplers -= 12
        unet.set_attn_processor(processors)


def ours(unet, sample, step: int, steps: int, k: int, raunet: bool = True, msw_msa: bool = True):
    with high_resolution(unet, steps, raunet=raunet, msw_msa=msw_msa, variant="paper") as controller:
        controller.diagonal_shift = lambda window: (window[0] // 4 * k, window[1] // 4 * k)
        run(unet, sample)  # a run's first UNet call, as a pipeline's: it sets the schedule from the latent size
        for i in range(step):
            controller.callback_on_step_end(None, i, None, {})
        return run(unet, sample)


@pytest.mark.parametrize("latent", [(24, 40), (32, 48), (36, 44)])  # 2x schedule, 4x schedule (T2 too), 4x again
@pytest.mark.parametrize("step", [0, 5, 9, 14])  # across T2 = 0.3·N, T1 = 0.4 or 0.7·N of N = 20
def test_the_paper_variant_is_the_official_algorithm_at_every_phase(latent, step):
    unet = sd15_like()
    reference_unet = copy.deepcopy(unet)
    sample = torch.randn(1, 4, *latent, generator=torch.Generator().manual_seed(3))
    for k in range(4):
        with official(reference_unet, step, 20, k):
            expected = run(reference_unet, sample)
        got = ours(unet, sample, step, 20, k)
        assert torch.allclose(got, expected, atol=1e-5), (latent, step, k, (got - expected).abs().max())


def test_the_paper_variant_resizes_odd_window_grids_as_the_official_code():
    unet = sd15_like()
    reference_unet = copy.deepcopy(unet)
    sample = torch.randn(1, 4, 27, 33, generator=torch.Generator().manual_seed(4))
    for k in (1, 3):
        with official(reference_unet, 0, 20, k, raunet=False):
            expected = run(reference_unet, sample)
        assert torch.allclose(ours(unet, sample, 0, 20, k, raunet=False), expected, atol=1e-5)


def test_the_switch_steps_are_the_official_ones():
    from methods.hires import HiResController

    for n in range(1, 51):
        paper = HiResController(n, True, False, None, None, "paper")
        assert paper.switch_step == int(0.4 * n) and paper.extra_step == 0
        paper.schedule = "4x"
        assert (paper.switch_step, paper.extra_step) == (int(0.7 * n), int(0.3 * n))
        assert HiResController(n, True, False, None, None, "fast").switch_step == round(0.4 * n)


def test_a_layout_without_attention_in_its_first_block_is_refused_naming_it():
    """An SDXL-like layout: a plain first down block, cross-attention at two lower resolutions."""
    torch.manual_seed(0)
    sdxl_like = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8,
        attention_head_dim=2, norm_num_groups=4).eval()
    with pytest.raises(ValueError, match="first down block must hold self-attention.*DownBlock2D"):
        with high_resolution(sdxl_like, 10):
            pass
