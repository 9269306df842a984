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
    """``(pair, model name, checkpoint)`` of every builtin pair's teacher and students (the online-ADM pairs have
    teachers of their own)."""
    models = []
    for pair in list_pairs(task):
        if pair.source != "builtin":
            continue
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


@torch.inference_mode()
def test_builtin_clip_teacher_and_the_shipped_boosting_prompts():
    """Held-out scenes (not the README's 300): the teacher's 5-shape zero-shot, and each builtin student's shipped
    boosting prompt, which must reproduce what its metadata (written by benchmarks.builtin_clip) says."""
    from methods.prompts import prompted_text_features
    from weights.predictors import predictors_for
    from weights.prompt_store import load_prompt
    from weights.registry import get_pair
    from weights.shapes.clip import clip_image_batch
    from weights.shapes.world import COLOUR_SHAPE_NAMES, SHAPE_NAMES

    rendered = [render_scene(seed, single_object=True) for seed in range(EVAL_SEED_START + 5000,
                                                                          EVAL_SEED_START + 5200)]
    pixels = clip_image_batch(np.stack([r.image for r in rendered]))
    shapes = torch.tensor([SHAPE_NAMES.index(r.objects[0].name) for r in rendered])
    classes = list(COLOUR_SHAPE_NAMES)
    labels = torch.tensor([classes.index(f"{r.objects[0].colour} {r.objects[0].name}") for r in rendered])
    pair = get_pair("shapes-clip")
    predictors = predictors_for(pair, students=list(pair.students))

    def accuracy(p, text, y):
        return float((p.logits(p.forward({"pixel_values": pixels}), text).argmax(1).cpu() == y).float().mean())

    teacher = predictors["teacher"]
    assert accuracy(teacher, teacher.text_features([f"a {c}" for c in SHAPE_NAMES]), shapes) >= 0.88
    teacher_30 = accuracy(teacher, teacher.text_features([f"a {c}" for c in classes]), labels)
    for student in pair.students:
        p = predictors[student.name]
        tensors, meta = load_prompt(f"shapes-clip-{student.name}-caspl")
        assert meta["builtin"] and meta["student"] == student.name and meta["method"] == "caspl"
        zero_shot = accuracy(p, p.text_features([f"a {c}" for c in classes]), labels)
        prompted = accuracy(p, prompted_text_features(p, classes, tensors), labels)
        figures = meta["figures"]
        assert abs(zero_shot - figures["zero_shot"]) < 0.08 and abs(prompted - figures["with_prompt"]) < 0.08
        if student.name == "narrow-captions":  # the text-limited student: the prompt closes much of its gap
            assert prompted - zero_shot >= 0.4 * (teacher_30 - zero_shot), (zero_shot, prompted, teacher_30)
