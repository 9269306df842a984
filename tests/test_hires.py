"""RAU-Net and MSW-MSA on tiny diffusers UNets: shapes, known answers, exact repeats, and full restoration."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from methods.hires import WindowedSelfAttention, high_resolution


def tiny_unet(student: bool = False, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16, 16),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
        attention_head_dim=2, norm_num_groups=4, mid_block_type=None if student else "UNetMidBlock2DCrossAttn",
    ).eval()


def run(unet, sample, steps=None):
    text = torch.randn(sample.shape[0], 3, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return unet(sample, torch.tensor(10), encoder_hidden_states=text).sample


def snapshot(unet):
    return ({name: id(p) for name, p in unet.attn_processors.items()},
            [id(m) for m in unet.modules()], sum(len(m._forward_pre_hooks) for m in unet.modules()))


@pytest.mark.parametrize("student", [False, True])
@pytest.mark.parametrize("size", [(16, 16), (24, 40), (20, 28), (18, 30)])
def test_any_latent_size_keeps_its_shape(student, size):
    unet = tiny_unet(student)
    sample = torch.randn(2, 4, *size)
    with high_resolution(unet, num_steps=10, generator=torch.Generator().manual_seed(0)) as controller:
        assert controller.raunet_active
        out = run(unet, sample)
    assert out.shape == sample.shape and torch.isfinite(out).all()


def test_raunet_changes_early_steps_only_and_everything_is_restored():
    unet = tiny_unet()
    sample = torch.randn(1, 4, 24, 32)
    before, plain = snapshot(unet), run(unet, sample)
    with high_resolution(unet, num_steps=10, msw_msa=False, switch_fraction=0.4) as controller:
        early = run(unet, sample)
        for step in range(4):
            controller.callback_on_step_end(None, step, None, {})
        assert not controller.raunet_active
        late = run(unet, sample)
    assert not torch.allclose(early, plain, atol=1e-4)  # stride-4 path in the first 40 % of steps
    assert torch.allclose(late, plain, atol=1e-5)  # then the UNet runs normally
    assert snapshot(unet) == before and torch.equal(run(unet, sample), plain)


def test_everything_is_restored_after_an_error_or_a_cancelled_run():
    unet = tiny_unet(student=True)
    before = snapshot(unet)
    with pytest.raises(KeyboardInterrupt):
        with high_resolution(unet, num_steps=4, generator=torch.Generator().manual_seed(0)):
            run(unet, torch.randn(1, 4, 16, 24))
            raise KeyboardInterrupt  # e.g. the user pressed Stop mid-run
    assert snapshot(unet) == before
    assert not any(isinstance(p, WindowedSelfAttention) for p in unet.attn_processors.values())


def test_runs_repeat_exactly_with_the_same_generator_seed():
    unet = tiny_unet()
    sample = torch.randn(1, 4, 24, 24)
    outs, shifts = [], []
    for _ in range(2):
        with high_resolution(unet, num_steps=4, raunet=False, generator=torch.Generator().manual_seed(7)) as c:
            outs.append(run(unet, sample))
            shifts.append(c.shift)
    assert torch.equal(outs[0], outs[1]) and shifts[0] == shifts[1]


def test_shifts_come_from_the_generator():
    unet = tiny_unet()
    sample = torch.randn(1, 4, 24, 24)
    sequences = []
    for seed in (7, 8):
        with high_resolution(unet, num_steps=6, raunet=False, generator=torch.Generator().manual_seed(seed),
                             variant="fast") as c:
            sequences.append([(run(unet, sample), c.shift)[1] for _ in range(6)])
    assert sequences[0] != sequences[1]
    assert all(0 <= dy < 12 and 0 <= dx < 12 for seq in sequences for dy, dx in seq)


def test_raunet_shrinks_the_deep_feature_maps():
    unet = tiny_unet()
    with high_resolution(unet, num_steps=10, msw_msa=True, variant="fast") as controller:
        run(unet, torch.randn(1, 4, 32, 48))
        assert controller.level_sizes == {0: (32, 48), 1: (8, 12), 2: (4, 6)}  # /4 after the first block
        for step in range(4):
            controller.callback_on_step_end(None, step, None, {})
        run(unet, torch.randn(1, 4, 32, 48))
        assert controller.level_sizes == {0: (32, 48), 1: (16, 24), 2: (8, 12)}


def test_the_original_modules_come_back_once_at_the_switch_step():
    unet = tiny_unet()
    before = snapshot(unet)
    with high_resolution(unet, num_steps=10, msw_msa=False, switch_fraction=0.4) as controller:
        assert snapshot(unet) != before
        for step in range(3):
            controller.callback_on_step_end(None, step, None, {})
        assert snapshot(unet) != before  # still three steps of RAU-Net out of ten: step 4 is the last
        controller.callback_on_step_end(None, 3, None, {})
        assert snapshot(unet) == before  # the UNet itself from the switch on: no wrapper, no hook left
    assert snapshot(unet) == before


def test_nothing_is_installed_when_both_techniques_are_off():
    unet = tiny_unet()
    before = snapshot(unet)
    with high_resolution(unet, num_steps=10, raunet=False, msw_msa=False):
        assert snapshot(unet) == before


@pytest.mark.parametrize("size", [(16, 16), (17, 23), (30, 9), (5, 6)])
def test_the_stride_4_dilated_convolution_is_the_stride_2_one_on_every_other_pixel(size):
    from methods.hires import RAUDownsample

    unet = tiny_unet()
    downsampler = unet.down_blocks[0].downsamplers[0]
    conv = downsampler.conv
    x = torch.randn(2, conv.in_channels, *size)
    dilated = torch.nn.functional.conv2d(x, conv.weight, conv.bias, stride=4, padding=2, dilation=2)
    with torch.no_grad():
        assert torch.allclose(RAUDownsample(downsampler)(x), dilated, atol=1e-5)


def test_the_fast_mirror_upsampler_convolves_at_its_usual_size():
    """Under RAU-Net (fast variant) the mirror upsampler goes from 1/4 to full size; its convolution runs at 1/2
    size."""
    from torch.utils.flop_counter import FlopCounterMode

    from methods.hires import HiResController, SizeMatchedUpsample

    unet = tiny_unet()
    upsampler = unet.up_blocks[1].upsamplers[0]  # the mirror of down level 0
    controller = HiResController(10, True, False, 0.4, None, "fast", level_sizes={0: (32, 48)})
    x = torch.randn(1, upsampler.channels, 8, 12)
    with torch.no_grad(), FlopCounterMode(display=False) as ours:
        out = SizeMatchedUpsample(upsampler, controller, level=0)(x)
    with torch.no_grad(), FlopCounterMode(display=False) as direct:
        upsampler(x, output_size=(32, 48))
    assert out.shape[-2:] == (32, 48)
    assert ours.get_total_flops() * 4 == direct.get_total_flops()


def test_windows_confine_attention():
    """With MSW-MSA, a change in one window leaves the self-attention output of the other windows unchanged."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from methods.hires import HiResController

    torch.manual_seed(0)
    attn = Attention(query_dim=8, heads=2, dim_head=4)
    controller = HiResController(1, False, True, 0.4, None, "fast", level_sizes={0: (6, 8)}, shift=(0, 0))
    windowed = WindowedSelfAttention(AttnProcessor2_0(), controller)
    x = torch.randn(1, 48, 8)
    y = x.clone()
    y[0, 0] += 5.0  # token (0, 0): the top-left window
    a, b = windowed(attn, x), windowed(attn, y)
    grid_a, grid_b = a.reshape(6, 8, 8), b.reshape(6, 8, 8)
    assert not torch.allclose(grid_a[:3, :4], grid_b[:3, :4])
    assert torch.allclose(grid_a[3:], grid_b[3:]) and torch.allclose(grid_a[:3, 4:], grid_b[:3, 4:])
    whole = HiResController(1, False, False, 0.4, None, "fast", level_sizes={0: (6, 8)})  # off: plain attention
    assert torch.allclose(WindowedSelfAttention(AttnProcessor2_0(), whole)(attn, x), AttnProcessor2_0()(attn, x))


def test_the_techniques_save_flops_without_adding_host_work():
    """What the GPU must compute falls; what the host must launch per step barely grows (a few ops per window)."""
    from benchmarks.hires_speed import SD15, cost_per_run

    plain_flops, (plain_ops,) = cost_per_run(SD15, 0.1, 512, 10, raunet=False, msw_msa=False)
    both_flops, (early_ops, late_ops) = cost_per_run(SD15, 0.1, 512, 10, raunet=True, msw_msa=True)
    assert both_flops < 0.8 * plain_flops
    assert plain_ops <= min(early_ops, late_ops) and max(early_ops, late_ops) <= 1.05 * plain_ops
