"""Image classifiers with their own label set (timm models, your modules): probabilities from each model's logits
and their agreement with the teacher's."""

from __future__ import annotations

import numpy as np

from compare.results import ClassificationComparison
from compare.vision import forward_batched, profile
from compare.zero_shot import agreement
from weights.predictors import Predictor
from weights.registry import Pair, Student


def classify_logits(pair: Pair, chosen: list[Student], predictors: dict[str, Predictor], images: list[np.ndarray],
                    notes: list[list[str]], latency: bool = True) -> list[ClassificationComparison]:
    """Every model once over the images; softmax of each model's (B, K) logits over the teacher's labels.

    Raises:
        ValueError: a student whose logits do not have the teacher's number of classes.
    """
    probs, profiles = {}, {}
    classes = predictors["teacher"].labels
    for name, p in predictors.items():
        prepared = [p.prepare(image) for image in images]
        forwarded = forward_batched(p, prepared, with_stages=False)
        probs[name] = [None] * len(images)
        for group in forwarded:
            logits = p.family.logits(p, group.outputs).float()
            if logits.shape[-1] != len(classes):
                raise ValueError(f"{name} gives {logits.shape[-1]} logits; the teacher's labels are {len(classes)}")
            distribution = logits.softmax(-1).cpu()
            for k, i in enumerate(group.indices):
                probs[name][i] = distribution[k]
        profiles[name] = profile(p, prepared, forwarded, latency)
    return [ClassificationComparison(
        pair.name, chosen, profiles, list(notes[i]), None, classes, {n: probs[n][i] for n in predictors}, {},
        {s.name: agreement(probs["teacher"][i], probs[s.name][i]) for s in chosen}, {})
        for i in range(len(images))]
