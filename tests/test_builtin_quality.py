"""The committed builtin weights really work: a quick held-out check (the full table is benchmarks.builtin_nets)."""

import numpy as np
import torch
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.detection import MeanAveragePrecision

from weights.shapes.checkpoints import load_builtin_model
from weights.shapes.nets import decode_detections, normalise
from weights.shapes.world import EVAL_SEED_START, render_scene

SEEDS = range(EVAL_SEED_START + 900, EVAL_SEED_START + 940)  # held out, and not the README's 500 either


@torch.inference_mode()
def test_builtin_detectors_find_the_shapes():
    for role, bar in (("teacher", 0.85), ("student", 0.75)):
        model, metric = load_builtin_model("detection", role), MeanAveragePrecision(iou_thresholds=[0.5])
        for seed in SEEDS:
            scene = render_scene(seed)
            pred = decode_detections(model(normalise(torch.from_numpy(scene.image)[None])), 0.01)[0]
            metric.update([pred], [{"boxes": torch.from_numpy(scene.boxes),
                                    "labels": torch.from_numpy(scene.class_ids)}])
        assert metric.compute()["map_50"] >= bar, role


@torch.inference_mode()
def test_builtin_segmenters_label_the_pixels():
    for role, bar in (("teacher", 0.80), ("student", 0.70)):
        model, metric = load_builtin_model("segmentation", role), MulticlassJaccardIndex(6, average="macro")
        for seed in SEEDS:
            scene = render_scene(seed)
            logits = model(normalise(torch.from_numpy(scene.image)[None]))["logits"]
            metric.update(logits.argmax(1), torch.from_numpy(scene.labels.astype(np.int64))[None])
        assert metric.compute() >= bar, role
