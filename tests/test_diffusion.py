"""The Diffusion tab's computation on a tiny random pipeline (diffusers format, loaded from a folder)."""

import numpy as np
import pytest
import torch

from demos.diffusion import generate


def test_teacher_and_student_from_the_same_seed(tiny_hub_pairs):
    teacher, student, report = generate("a red circle", tiny_hub_pairs["generation"], seed=3, width=64, height=48,
                                        steps=3)
    assert teacher.shape == student.shape == (48, 64, 3) and teacher.dtype == np.uint8
    assert report["teacher"]["steps"] == 3 and report["teacher"]["seconds"] > 0
    again, _, _ = generate("a red circle", tiny_hub_pairs["generation"], seed=3, width=64, height=48, steps=3)
    assert np.array_equal(teacher, again)  # runs repeat exactly


def test_high_resolution_with_both_techniques_on_a_non_square_size(tiny_hub_pairs):
    teacher, student, report = generate("a blue star", tiny_hub_pairs["generation"], seed=0, width=256, height=136,
                                        steps=3, raunet=True, msw_msa=True)
    assert teacher.shape == (136, 256, 3) and student.shape == (136, 256, 3)
    assert report["settings"]["raunet"] and report["settings"]["msw_msa"]
    first, _, _ = generate("a blue star", tiny_hub_pairs["generation"], seed=0, width=256, height=136, steps=3,
                           raunet=True, msw_msa=True)
    assert np.array_equal(first, teacher)


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt": ""}, "Enter a prompt"), ({"width": 1000}, r"\[32, 256\]"), ({"steps": 0}, "steps"),
    ({"steps": 1000}, "steps"), ({"pair": "nope"}, "Choose one of"),
    ({"steps": 150, "width": 256, "height": 256}, "more than this CPU server runs per request"),
])
def test_bad_requests(tiny_hub_pairs, kwargs, message):
    args = {"prompt": "a red circle", "pair": tiny_hub_pairs["generation"], "steps": 2} | kwargs
    with pytest.raises(ValueError, match=message):
        generate(**args)


def test_long_prompts_and_odd_sizes_are_handled_with_notes(tiny_hub_pairs):
    _, _, report = generate("a red circle " * 300, tiny_hub_pairs["generation"], width=61, height=67, steps=1)
    assert (report["settings"]["width"], report["settings"]["height"]) == (64, 64)
    assert any("cut from" in n for n in report["notes"]) and any("rounded" in n for n in report["notes"])


def test_offline_hub_pair_says_how_to_fix_it():
    from weights.loaders import ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE"):
        generate("a cat", "sd15-to-bk-sdm-small", steps=1, width=512, height=512)


def test_insight_records_without_changing_the_images(tiny_hub_pairs):
    found = {}
    args = ("a red circle", tiny_hub_pairs["generation"], 5, 96, 64, 4, 4.0, True, True)
    teacher, student, report = generate(*args, insight=found, insight_step=2)
    plain_teacher, plain_student, _ = generate(*args)
    assert np.array_equal(teacher, plain_teacher) and np.array_equal(student, plain_student)
    assert [f["block"] for f in report["unet_consensus"]] == ["up_blocks.0", "up_blocks.1", "up_blocks.2"]
    assert all(-1 <= f["consensus_mean"] <= 1 for f in report["unet_consensus"])
    for role in ("teacher", "student"):
        assert [word for _, word in found["attention"][role]] == ["a", "red", "circle"]
        assert found["attention"][role][0][0].shape[2] == 3


def test_cross_attention_capture_is_restored_after_an_error(tiny_hub_pairs):
    from analysis.attention import capture_cross_attention
    from tests.test_hires import snapshot, tiny_unet

    unet = tiny_unet()
    before = snapshot(unet)
    with pytest.raises(RuntimeError):
        with capture_cross_attention(unet) as store:
            unet(torch.randn(1, 4, 16, 16), torch.tensor(3), encoder_hidden_states=torch.randn(1, 3, 8))
            assert store and store[0].shape[-1] == 3
            raise RuntimeError("stop")
    assert snapshot(unet) == before


def test_the_object_counter_on_ground_truth_scenes():
    """The measurement's detector, checked where the answer is known: rendered Shapes scenes."""
    from weights.shapes.measure import objects
    from weights.shapes.world import render_scene

    for seed in range(40):
        scene = render_scene(20_000_000 + seed, 64 if seed % 2 else 256, 64 if seed % 2 else 256,
                             single_object=True)
        assert objects(scene.image) == (1, scene.objects[0].colour)
    scenes = [render_scene(21_000_000 + seed) for seed in range(40)]
    exact = np.mean([objects(s.image)[0] == len(s.objects) for s in scenes])
    assert exact >= 0.7  # touching same-coloured objects merge; a saturated-only detector managed about 0.5
    backdrop = np.full((64, 64, 3), (40, 200, 200), np.uint8)  # saturated, but cyan: not an object colour
    assert objects(backdrop) == (0, None)
    backdrop[20:40, 20:40] = (150, 70, 200)
    assert objects(backdrop) == (1, "purple")


def test_the_recipe_resumes_a_saved_pipeline_and_snapshots_the_teacher(tmp_path):
    """``--resume``: the saved VAE, text encoder and teacher come back unchanged and the student starts fresh;
    a teacher trained with ``snapshot`` leaves a loadable UNet behind at every snapshot step."""
    from diffusers import UNet2DConditionModel

    from weights.shapes.diffusion import build_components, encode_prompts
    from weights.shapes.train_diffusion import load_components, save_teacher_pipeline, train_unet

    parts = build_components()
    parts["vae"].register_to_config(scaling_factor=0.5)
    with torch.no_grad():
        parts["unet"].conv_out.bias.fill_(0.25)  # something a fresh teacher does not have
    save_teacher_pipeline(parts, tmp_path / "pipe")
    resumed = load_components(tmp_path / "pipe")
    assert resumed["vae"].config.scaling_factor == 0.5
    for name in ("unet", "vae", "text_encoder"):
        saved = parts[name].state_dict()
        assert all(torch.equal(v, saved[k]) for k, v in resumed[name].state_dict().items()), name
    fresh = build_components()["unet_student"].state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in resumed["unet_student"].state_dict().items())

    latents = torch.randn(4, 4, 16, 16)
    text = encode_prompts(resumed["tokenizer"], resumed["text_encoder"], ["a red circle"] * 4)
    empty = encode_prompts(resumed["tokenizer"], resumed["text_encoder"], [""])
    before = resumed["unet"].conv_out.bias.clone()
    train_unet(resumed["unet"], latents, text, empty, resumed["scheduler"], 4, torch.Generator().manual_seed(0),
               batch=2, snapshot=tmp_path / "snap", snapshot_every=2)
    assert not torch.equal(resumed["unet"].conv_out.bias, before)
    snapped = UNet2DConditionModel.from_pretrained(tmp_path / "snap")  # step 2, not the final step 4
    assert not torch.equal(snapped.conv_out.bias, before)
    assert not torch.equal(snapped.conv_out.bias, resumed["unet"].conv_out.bias)


def test_the_with_and_without_comparison_runs_both_from_one_latent():
    from demos.diffusion import compare_techniques, comparison_markdown

    images, report = compare_techniques("a red circle", "shapes-diffusion", seed=3, width=128, height=128, steps=2)
    assert len(images) == 4 and all(image.shape == (128, 128, 3) for image, _ in images)
    assert not report["without"]["settings"]["raunet"] and report["with"]["settings"]["msw_msa"]
    assert set(report["speedup"]) == {"teacher", "student"} and "speed-up" in comparison_markdown(report)
    assert not np.array_equal(images[0][0], images[2][0])  # the techniques change the teacher's image
