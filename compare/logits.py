"""Agreement of two classifiers over one label set (timm models, your modules)."""

from __future__ import annotations

import torch

from compare.zero_shot import agreement

TOP_K = 5


def logits_agreement(teacher_probs: torch.Tensor, student_probs: torch.Tensor) -> dict:
    """Top-1 match, the overlap of the two top fives (a share in [0, 1]), KL(teacher ‖ student), Jensen-Shannon
    divergence and Spearman rank correlation over all classes, from (K,) probabilities."""
    k = min(TOP_K, teacher_probs.numel())
    top_t, top_s = set(teacher_probs.topk(k).indices.tolist()), set(student_probs.topk(k).indices.tolist())
    return {**agreement(teacher_probs, student_probs), "top5_overlap": round(len(top_t & top_s) / k, 4)}
