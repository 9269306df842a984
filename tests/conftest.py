"""Shared fixtures. The suite never touches the network: the Hub is forced offline before anything imports it."""

from __future__ import annotations

import dataclasses
import os
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_hub_pairs(tmp_path_factory):
    """Register a detection and a segmentation pair of tiny transformers models saved to a temporary folder."""
    from tests.tiny_hub import save_tiny_diffusion, save_tiny_open_clip, save_tiny_rtdetr, save_tiny_segformer
    from weights.registry import ModelSource, Pair, _open_clip, _rtdetr, _segformer, register_pair, unregister_pair

    root = tmp_path_factory.mktemp("hub")

    def local(source, path):
        return dataclasses.replace(source, location=str(path))

    pairs = [
        Pair("tiny-rtdetr", "detection", local(_rtdetr("t"), save_tiny_rtdetr(root / "rt_t", seed=0)),
             local(_rtdetr("s"), save_tiny_rtdetr(root / "rt_s", seed=1, width=16)), "test only"),
        Pair("tiny-segformer", "segmentation", local(_segformer("t"), save_tiny_segformer(root / "sf_t", seed=0)),
             local(_segformer("s"), save_tiny_segformer(root / "sf_s", seed=1, width=8)), "test only"),
        Pair("tiny-clip", "classification",
             local(_open_clip("t", "tiny-clip-hub", ""), save_tiny_open_clip(root / "clip_t", "tiny-clip-hub", 0)),
             local(_open_clip("s", "tiny-clip-hub", ""), save_tiny_open_clip(root / "clip_s", "tiny-clip-hub", 1)),
             "test only"),
    ]
    diffusion = save_tiny_diffusion(root / "sd")
    pairs.append(Pair("tiny-diffusion", "generation",
                      ModelSource("hub", str(diffusion), "StableDiffusionPipeline", revision="main",
                                  family="diffusers"),
                      ModelSource("hub", str(diffusion), "UNet2DConditionModel", revision="main", family="diffusers",
                                  subfolder="unet_student"),
                      "test only", native={"width": 64, "height": 64, "steps": 4, "guidance": 4.0}))
    for pair in pairs:
        register_pair(pair)
    yield {p.task: p.name for p in pairs}
    for pair in pairs:
        unregister_pair(pair.name)


@pytest.fixture
def slow_steps(monkeypatch):
    """Every long job's per-step stop check takes 20 ms more: a job of many steps outlasts the cancel's delay on any
    machine (a fast one finished the whole job before the cancel came)."""
    from compare import jobs

    gone = jobs.caller_gone
    monkeypatch.setattr(jobs, "caller_gone", lambda: (time.sleep(0.02), gone())[1])
