"""The paths the Hub pairs take on a GPU, where they run in fp16, run here in bfloat16 on the CPU: a dtype mismatch
fails the same way in both. On a machine with CUDA the same tests also run on the GPU in fp16 (device mismatches
show up there)."""

import pytest
import torch
from PIL import Image

from weights import loaders
from weights.shapes.world import render_scene

SETTINGS = [("cpu", torch.bfloat16)] + ([("cuda", torch.float16)] if torch.cuda.is_available() else [])


@pytest.fixture(params=SETTINGS, ids=[f"{d}-{str(t).removeprefix('torch.')}" for d, t in SETTINGS])
def half(request, monkeypatch):
    """Load Hub models on the given device in the given dtype, as ``default_device``/``default_dtype`` do on CUDA."""
    from compare import generation

    device, dtype = torch.device(request.param[0]), request.param[1]
    monkeypatch.setattr(loaders, "default_device", lambda: device)
    monkeypatch.setattr(generation, "default_device", lambda: device)
    monkeypatch.setattr(loaders, "default_dtype", lambda _d, source: dtype if source.kind == "hub" else torch.float32)
    return device, dtype


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("half") / "scene.png"
    Image.fromarray(render_scene(10_000_909, 128, 160).image).save(path)
    return str(path)


def test_detection_and_segmentation_tabs(half, tiny_hub_pairs, scene):
    pytest.importorskip("gradio")  # the tabs' modules define Gradio components
    from demos.detection import detect
    from demos.segmentation import segment

    *_, report = detect(scene, tiny_hub_pairs["detection"], 0.0)
    assert report["teacher"]["detections"] is not None
    *_, report, _ = segment(scene, tiny_hub_pairs["segmentation"])
    assert 0 <= report["agreement"]["pixel_agreement"] <= 1


def test_consensus_and_attention(half, tiny_hub_pairs, scene):
    from demos.analysis_tab import attention, consensus

    for task in ("detection", "segmentation"):
        _, report = consensus(scene, tiny_hub_pairs[task], 0.1)
        means = [s["consensus_mean"] for s in report["stages"]]
        assert report["stages"] and all(m is None or -1 <= m <= 1 for m in means) and any(m is not None for m in means)
        # the tiny RT-DETR's stride-16 encoder features are ~1e-15: constant, so its consensus there is undefined
        assert all(m is not None for m in means) or any("undefined" in n for n in report["notes"])
        *_, report = attention(scene, tiny_hub_pairs[task], "")
        assert report["mean_abs_difference"] >= 0


def test_classification_and_prompt_tuning(half, tiny_hub_pairs, tmp_path, monkeypatch):
    from demos.classification import classify, tune_prompts
    from weights import prompt_store

    monkeypatch.setattr(prompt_store, "PROMPT_DIR", tmp_path)
    path = tmp_path / "single.png"
    Image.fromarray(render_scene(10_000_910, single_object=True).image).save(path)
    _, report = classify(str(path), tiny_hub_pairs["classification"], "circle, square, star", "", "a {}")
    assert abs(sum(report["student"]["probs"].values()) - 1) < 1e-2
    name, figures = tune_prompts(tiny_hub_pairs["classification"], "red circle, blue square", "caspl", "half", None,
                                 2, 3)
    _, report = classify(str(path), tiny_hub_pairs["classification"], "red circle, blue square", name)
    assert "learned prompt" in report["student"]["prompt"]


def test_generation_with_both_techniques(half, tiny_hub_pairs):
    from demos.diffusion import generate

    teacher, student, report = generate("a red circle", tiny_hub_pairs["generation"], seed=1, width=128, height=96,
                                        steps=2, raunet=True, msw_msa=True)
    assert teacher.shape == student.shape == (96, 128, 3)
