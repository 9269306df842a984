"""The committed builtin weights really work: a quick held-out check (the full table is benchmarks.builtin_nets)."""

import numpy as np
import torch
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.detection import MeanAveragePrecision

from weights.registry import list_pairs
from weights.shapes.checkpoints import load_named_checkpoint
from weights.shapes.nets import decode_detections, normalise
from weights.shapes.world import EVAL_SEED_START, render_scene

SEEDS = range(EVAL_SEED_START + 900, EVAL_SEED_START + 940)  # held out, and not the README's 500 either


def builtin_models(task: str) -> list[tuple[str, str, str]]:
    """``(pair, model name, checkpoint)`` of the teacher of the task's main pair and every builtin student."""
    models = []
    for pair in list_pairs(task):
        if pair.source != "builtin":
            continue
        if pair.name == f"shapes-{task}":
            models.append((pair.name, "teacher", pair.teacher.location))
        models += [(pair.name, s.name, s.source.location) for s in pair.students]
    return models


@torch.inference_mode()
def test_builtin_detectors_find_the_shapes():
    for pair, name, location in builtin_models("detection"):
        bar = 0.85 if name == "teacher" else 0.75
        model, metric = load_named_checkpoint(location), MeanAveragePrecision(iou_thresholds=[0.5])
        for seed in SEEDS:
            scene = render_scene(seed)
            pred = decode_detections(model(normalise(torch.from_numpy(scene.image)[None])), 0.01)[0]
            metric.update([pred], [{"boxes": torch.from_numpy(scene.boxes),
                                    "labels": torch.from_numpy(scene.class_ids)}])
        assert metric.compute()["map_50"] >= bar, (pair, name)


@torch.inference_mode()
def test_builtin_segmenters_label_the_pixels():
    for pair, name, location in builtin_models("segmentation"):
        bar = 0.80 if name == "teacher" else 0.70
        model, metric = load_named_checkpoint(location), MulticlassJaccardIndex(6, average="macro")
        for seed in SEEDS:
            scene = render_scene(seed)
            logits = model(normalise(torch.from_numpy(scene.image)[None]))["logits"]
            metric.update(logits.argmax(1), torch.from_numpy(scene.labels.astype(np.int64))[None])
        assert metric.compute() >= bar, (pair, name)
