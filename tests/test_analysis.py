"""Known answers for the analysis package, and proof that it leaves models and inputs as it found them."""

import pytest
import timm
import torch

from analysis.attention import (
    attention_rollout,
    capture_deformable_sampling,
    grad_cam,
    sampling_point_map,
    unfused_attention,
    vit_rollout_map,
)
from analysis.consensus import (
    affinity_consensus,
    cka_matrix,
    consensus_weights,
    divergence_weights,
    foreground_figures,
    linear_cka,
    projected_consensus,
)
from analysis.features import (
    capture_modules,
    capture_stages,
    infer_grid,
    match_stages,
    tokens_to_map,
)
from weights.shapes.checkpoints import BUILTIN_CONFIGS
from weights.shapes.nets import ShapesNet

CONSENSUS = [affinity_consensus, projected_consensus]


@pytest.fixture
def features():
    torch.manual_seed(0)
    return torch.randn(2, 24, 16, 12)


def rotate(x, q):
    return torch.einsum("bchw,cd->bdhw", x, q)


@pytest.mark.parametrize("method", CONSENSUS)
def test_teacher_equal_to_student_agrees_everywhere(features, method):
    assert torch.allclose(method(features, features), torch.ones(2, 16, 12), atol=1e-3)


@pytest.mark.parametrize("method", CONSENSUS)
def test_consensus_is_invariant_to_rotation_and_scaling(features, method):
    q = torch.linalg.qr(torch.randn(24, 24))[0]
    student = rotate(features, q) * 7.5
    assert torch.allclose(method(features, student), torch.ones(2, 16, 12), atol=1e-3)


def test_projection_handles_other_widths_and_per_channel_scaling(features):
    wider = torch.cat([features * torch.linspace(0.1, 3, 24).view(1, -1, 1, 1), features[:, :8]], dim=1)
    assert torch.allclose(projected_consensus(features, wider), torch.ones(2, 16, 12), atol=1e-3)


@pytest.mark.parametrize("method", CONSENSUS)
def test_a_planted_disagreement_lights_up_the_divergence_map(features, method):
    q = torch.linalg.qr(torch.randn(24, 24))[0]
    student = rotate(features, q)
    student[:, :, 2:6, 3:7] = torch.randn(2, 24, 4, 4)  # the student gets this region wrong
    region = torch.zeros(16, 12, dtype=torch.bool)
    region[2:6, 3:7] = True
    similarity = method(features, student)
    divergence = divergence_weights(similarity, tau=0.1)
    assert divergence[:, region].sum(-1).min() > 0.9  # nearly all divergence weight sits in the region
    assert similarity[:, ~region].mean() > similarity[:, region].mean() + 0.3
    consensus = consensus_weights(similarity, tau=0.1)
    assert torch.allclose(consensus.sum((1, 2)), torch.ones(2)) and consensus[:, region].sum(-1).max() < 0.1


def test_student_maps_of_another_size_are_brought_to_the_teacher_grid(features):
    small = torch.nn.functional.avg_pool2d(features, 2)
    assert affinity_consensus(features, small).shape == (2, 16, 12)


def test_cka_known_answers(features):
    q = torch.linalg.qr(torch.randn(24, 24))[0]
    matrix = cka_matrix([features, features[:, :4]], [features, rotate(features, q) * 3])
    assert torch.allclose(matrix[0], torch.ones(2), atol=1e-5)
    assert matrix[1, 0] < 0.9
    x = torch.randn(500, 8)
    assert linear_cka(x, torch.randn(500, 8)) < 0.1  # independent representations


def test_foreground_figures(features):
    similarity = torch.zeros(2, 16, 12)
    similarity[:, :8] = 1.0
    foreground = torch.zeros(2, 64, 48, dtype=torch.bool)
    foreground[:, :32] = True  # the top half of the image
    teacher = features.abs()
    teacher[:, :, 8:] = 0  # all teacher energy on the foreground
    figures = foreground_figures(similarity, teacher, features, foreground)
    assert figures["consensus_foreground"].tolist() == [1.0, 1.0]
    assert figures["consensus_background"].tolist() == [0.0, 0.0]
    assert torch.allclose(figures["energy_foreground_teacher"], torch.ones(2))
    assert torch.allclose(figures["foreground_area"], torch.full((2,), 0.5))
    assert torch.isnan(foreground_figures(similarity, teacher, features, torch.zeros_like(foreground))
                       ["consensus_foreground"]).all()


def test_tau_must_be_positive(features):
    with pytest.raises(ValueError, match="tau"):
        consensus_weights(torch.ones(1, 2, 2), tau=0.0)


@pytest.mark.parametrize("method", CONSENSUS)
def test_inputs_are_not_modified(features, method):
    student = features[:, :10].clone()
    before = features.clone(), student.clone()
    method(features, student)
    cka_matrix([features], [student])
    assert torch.equal(features, before[0]) and torch.equal(student, before[1])


# Feature capture ----------------------------------------------------------------------------------------------

def test_infer_grid():
    assert infer_grid(197, 224, 224) == (1, 14, 14)
    assert infer_grid(14 * 10, 224, 160) == (0, 14, 10)
    assert infer_grid(1 + 4 + 7 * 5, 112, 80) == (5, 7, 5)  # class and register tokens
    with pytest.raises(ValueError):
        infer_grid(2, 64, 640)  # no grid of 1 or 2 tokens has a 1:10 aspect


def test_tokens_to_map_round_trip():
    maps = torch.randn(2, 8, 6, 4)
    tokens = torch.cat([torch.randn(2, 1, 8), maps.flatten(2).transpose(1, 2)], dim=1)
    assert torch.equal(tokens_to_map(tokens, 96, 64), maps)


def tiny_vit():
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2, embed_dim=32,
                             num_heads=2, num_classes=5, dynamic_img_size=True).eval()


def test_capture_from_explicit_methods_and_hooks_agree():
    model = ShapesNet(BUILTIN_CONFIGS[("detection", "student")]).eval()
    x = torch.randn(1, 3, 64, 96)
    explicit, hooked = capture_stages(model, x), capture_stages(model, x, pattern=r"stages\.\d")
    assert [s.stride for s in explicit] == [2, 4, 8, 16]
    assert all(torch.equal(a.features, b.features) for a, b in zip(explicit, hooked, strict=True))
    vit = capture_stages(tiny_vit(), torch.randn(1, 3, 64, 64))
    assert [tuple(s.features.shape) for s in vit] == [(1, 32, 4, 4)] * 2 and vit[0].stride == 16


def test_a_sequence_first_layer_is_no_stage():
    """A hooked transformer layer that keeps tokens sequence-first, (N, B, C), would read as N images of a made-up
    grid (and, split per image, hand each image another's numbers): only maps whose first axis is the batch are
    stages, at any batch size."""
    class SequenceFirst(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stages = torch.nn.ModuleList([torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)])
            self.layers = torch.nn.ModuleList([torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=False)])

        def forward(self, x):
            return self.layers[0](self.stages[0](x).flatten(2).permute(2, 0, 1)).mean(0)

    model = SequenceFirst().eval()
    for batch in (1, 2, 16):
        stages = capture_stages(model, torch.randn(batch, 3, 32, 32))
        assert [(s.name, tuple(s.features.shape)) for s in stages] == [("stages.0", (batch, 8, 8, 8))], batch


def test_transformers_models_give_their_own_maps(tiny_hub_pairs):
    from weights.loaders import load_model
    from weights.registry import get_pair

    for name, strides in ((tiny_hub_pairs["segmentation"], [4, 8]), (tiny_hub_pairs["detection"], [8, 16, 32])):
        model, _ = load_model(get_pair(name).teacher, torch.device("cpu"))
        assert [s.stride for s in capture_stages(model, torch.randn(1, 3, 64, 64))] == strides


def test_stages_are_matched_by_stride():
    teacher = capture_stages(ShapesNet(BUILTIN_CONFIGS[("segmentation", "teacher")]).eval(), torch.randn(1, 3, 64, 64))
    vit = capture_stages(tiny_vit(), torch.randn(1, 3, 64, 64))
    pairs = match_stages(teacher, vit)
    assert [(t.stride, s.stride) for t, s in pairs] == [(16, 16)]
    assert pairs[0][1].name == "block1"  # the deepest student stage of that stride


def test_hooks_are_gone_after_the_block_even_after_an_error():
    model = ShapesNet(BUILTIN_CONFIGS[("detection", "student")])
    with capture_modules(model, r"stages\.\d") as captured:
        model(torch.randn(1, 3, 32, 32))
    assert len(captured) == 4
    with pytest.raises(RuntimeError, match="boom"):
        with capture_modules(model, r"stages\.\d"):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())


def test_unfused_attention_is_restored_even_after_an_error():
    vit = tiny_vit()
    flags = [m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn")]
    with pytest.raises(RuntimeError):
        with unfused_attention(vit) as probs:
            vit(torch.randn(1, 3, 64, 64))
            assert len(probs) == 2 and probs[0].shape == (1, 2, 17, 17)
            raise RuntimeError("cancelled")
    assert [m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn")] == flags
    assert all(not m._forward_hooks for m in vit.modules())


def test_overlapping_unfused_attention_calls_leave_the_shared_model_as_it_was():
    # two users' calls on one cached model, in two threads, overlapping: the first to leave must not switch the
    # second's modules back, and the last to leave restores the model's own flags (a plain save-and-restore left
    # them switched off for good)
    import threading

    vit = tiny_vit()
    attention = [m for m in vit.modules() if hasattr(m, "fused_attn")]
    flags = [m.fused_attn for m in attention]
    assert all(flags)  # timm's default where the fused kernel exists: the test needs a flag to flip
    entered, first_left, seen = threading.Event(), threading.Event(), {}

    def first():
        with unfused_attention(vit):
            entered.set()
            second_entered.wait(10)
        first_left.set()

    def second():
        entered.wait(10)
        with unfused_attention(vit) as probs:
            second_entered.set()
            first_left.wait(10)
            seen["switched"] = [m.fused_attn for m in attention]
            vit(torch.randn(1, 3, 64, 64))
            seen["probs"] = len(probs)

    second_entered = threading.Event()
    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert seen == {"switched": [False] * len(attention), "probs": len(attention)}
    assert [m.fused_attn for m in attention] == flags
    assert all(not m._forward_hooks for m in vit.modules())


def test_deformable_sampling_hooks_are_removed(tiny_hub_pairs):
    from weights.loaders import load_model
    from weights.registry import get_pair

    model, _ = load_model(get_pair(tiny_hub_pairs["detection"]).teacher, torch.device("cpu"))
    with pytest.raises(KeyError):
        with capture_deformable_sampling(model) as captured, torch.no_grad():
            model(pixel_values=torch.randn(1, 3, 64, 64))
            locations, weights = next(iter(captured.values()))
            assert locations.shape[-1] == 2 and torch.allclose(weights.sum((-1, -2)), torch.ones(1))
            raise KeyError("stop")
    assert all(not m._forward_pre_hooks for m in model.modules())


# Attention maps -----------------------------------------------------------------------------------------------

def test_rollout_known_answers():
    n = 5
    identity = [torch.eye(n).expand(1, 2, n, n)] * 3
    assert torch.allclose(attention_rollout(identity)[0], torch.eye(n))
    uniform = [torch.full((1, 2, n, n), 1 / n)] * 3
    rollout = attention_rollout(uniform, residual=0.0)[0]
    assert torch.allclose(rollout, torch.full((n, n), 1 / n))


def test_vit_rollout_map_covers_the_patch_grid():
    heat = vit_rollout_map(tiny_vit(), torch.randn(2, 3, 64, 48))
    assert heat.shape == (2, 4, 3) and heat.min() >= 0 and heat.max() <= 1


def test_grad_cam_leaves_the_model_as_it_was():
    model = ShapesNet(BUILTIN_CONFIGS[("segmentation", "student")]).train()
    x = torch.randn(1, 3, 64, 64)
    x0 = x.clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cam, _ = grad_cam(model, x, lambda out: out["logits"][:, 1].mean((1, 2)))
    assert cam.shape == (1, 4, 4) and 0 <= cam.min() and cam.max() <= 1
    assert model.training and torch.equal(x, x0)
    assert all(p.grad is None for p in model.parameters())
    model.eval()  # BatchNorm statistics moved in train mode, as they would in any forward; compare in eval
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    grad_cam(model, x, lambda out: out["logits"][:, 1].mean((1, 2)))
    assert all(torch.equal(frozen[k], v) for k, v in model.state_dict().items()) and not model.training
    assert set(state) == set(frozen)


def test_grad_cam_points_at_the_evidence():
    """A brightness detector scored on total brightness attends to the one bright patch of a dark image."""
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stages = torch.nn.ModuleList([torch.nn.Conv2d(3, 2, 3, padding=1, bias=False)])
            with torch.no_grad():
                self.stages[0].weight.zero_()
                self.stages[0].weight[0] = 1.0 / 27  # channel 0: local brightness; channel 1: nothing

        def forward(self, x):
            return self.stages[0](x).relu().sum((1, 2, 3))

    image = torch.zeros(1, 3, 16, 16)
    image[:, :, 2:6, 3:7] = 1.0
    cam, _ = grad_cam(Toy(), image, lambda out: out, pattern=r"stages\.0")
    assert cam[0, 3:5, 4:6].min() == 1.0 and cam[0, 2:6, 3:7].min() > 0.4 and cam[0, 9:, 9:].max() == 0


def test_sampling_point_map_puts_weight_where_the_points_are():
    locations = torch.tensor([[[[0.25, 0.25], [0.75, 0.75]]]])  # 1 head, 1 level, 2 points
    weights = torch.tensor([[[0.9, 0.1]]])
    heat = sampling_point_map(locations, weights, (40, 40), blur=1.0)
    assert heat[10, 10] == 1.0 and heat[30, 30] < 0.2


def test_affinity_consensus_equals_its_explicit_definition():
    """The O(N C^2) computation matches correlating the explicit (N, N) affinity rows."""
    torch.manual_seed(1)
    teacher, student = torch.randn(2, 24, 10, 9).relu(), torch.randn(2, 40, 10, 9)
    student[:, :24] += teacher

    def explicit(x):
        unit = torch.nn.functional.normalize(x.flatten(2).transpose(1, 2), dim=-1)
        affinity = unit @ unit.transpose(1, 2)
        return affinity - affinity.mean(-1, keepdim=True)

    a, b = explicit(teacher), explicit(student)
    expected = ((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).reshape(2, 10, 9)
    assert torch.allclose(affinity_consensus(teacher, student), expected, atol=1e-4)


def test_open_clip_models_give_their_patch_maps(tmp_path):
    import json

    import open_clip

    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8,
                                               "head_width": 16},
              "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "tiny-clip-test.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path)
    model = open_clip.create_model("tiny-clip-test").eval()
    stages = capture_stages(model, torch.randn(2, 3, 32, 32))
    assert [(s.stride, tuple(s.features.shape)) for s in stages] == [(8, (2, 32, 4, 4))] * 2


def test_per_image_figures_come_with_their_chance_levels():
    """Unbiased CKA over one image's locations: 1 for the same features, ~0 with the student's locations shuffled;
    the report puts a chance level beside every consensus and CKA figure and names stages with few locations."""
    import numpy as np

    import compare
    from analysis.consensus import cka_matrices
    from weights.shapes.world import render_scene

    torch.manual_seed(0)
    features = torch.randn(1, 32, 16, 16)
    matrix, chance = cka_matrices([features], [features.clone() * 3])
    assert float(matrix[0, 0]) == pytest.approx(1.0, abs=1e-5) and abs(float(chance[0, 0])) < 0.1
    report = compare.consensus("shapes-detection", render_scene(10_000_555, 64, 64).image).to_json()
    assert all(s["consensus_chance"] is not None and s["consensus_mean"] > s["consensus_chance"]
               for s in report["stages"])
    for s in report["stages"]:  # on the foreground and the background too, each beside its own chance level
        assert s["consensus_chance_foreground"] is not None and s["consensus_chance_background"] is not None
        assert s["consensus_foreground"] > s["consensus_chance_foreground"]
        share = s["foreground_area"]  # the two regions' chance levels average to the whole map's, by area
        assert share * s["consensus_chance_foreground"] + (1 - share) * s["consensus_chance_background"] == \
            pytest.approx(s["consensus_chance"], abs=2e-3)
    assert [s["locations"] for s in report["stages"]] == [4096, 1024, 256, 64]  # the input is 128 x 128
    assert np.asarray(report["cka"]["chance"], dtype=float).shape == np.asarray(report["cka"]["matrix"]).shape
    assert any("Few locations at /16 (64)" in note for note in report["notes"])
