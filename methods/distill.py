"""Distillation losses the builtin recipes train with, for any teacher and student of the same task.

- :func:`soft_label_kd`: Hinton et al.'s output KD on class logits (per pixel for dense outputs), temperature
  softened and scaled by ``T²``.
- :func:`heatmap_kd`: output KD for CenterNet-style detectors: binary cross-entropy against the teacher's sigmoid
  heatmap, weighted toward its peaks, plus L1 on the box size and offset maps where the teacher is confident.
- :func:`feature_kd`: FitNets-style feature KD: MSE between the (adapted) student map and the teacher map, each
  layer-normalised over its spatial extent so that stages of different scale weigh alike.
- :func:`clip_kd`: CLIP-KD's feature term (MSE on normalised image and text embeddings) and relational term
  (KL between the image-to-text logits).

Every function takes tensors and returns a scalar loss; none knows our registry or our models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.checks import in_range


def soft_label_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0,
                  ) -> torch.Tensor:
    """KL(teacher ‖ student) of temperature-softened class distributions, × T², averaged over batch and locations.

    Args:
        student_logits, teacher_logits: (B, K) or (B, K, H, W) logits; classes on dim 1.
        temperature: the softening temperature T.
    """
    t = in_range(temperature, "temperature", 0.0, 1e4, open_low=True)
    locations = student_logits[0, 0].numel()
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.softmax(teacher_logits / t, 1),
                    reduction="batchmean") * t * t / locations


def heatmap_kd(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], peak_threshold: float = 0.3,
               ) -> torch.Tensor:
    """Output KD for a centre-heatmap detector.

    Args:
        student, teacher: outputs with ``heatmap`` (B, K, h, w) logits and ``size``, ``offset`` (B, 2, h, w).
        peak_threshold: teacher heatmap probability above which the box regression is distilled.
    """
    soft = teacher["heatmap"].sigmoid()
    heat = F.binary_cross_entropy_with_logits(student["heatmap"], soft, reduction="none")
    heat = (heat * (soft + 0.05)).sum() / (soft.sum() + 0.05 * soft.numel())  # emphasise peaks
    confident = (soft.amax(1, keepdim=True) > peak_threshold).float()
    boxes = F.l1_loss(torch.cat([student["size"], student["offset"]], 1),
                      torch.cat([teacher["size"], teacher["offset"]], 1), reduction="none")
    return heat + (boxes * confident).sum() / confident.sum().clamp(min=1)


def feature_kd(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor]) -> torch.Tensor:
    """Sum over stages of the MSE between spatially layer-normalised maps of equal shape.

    Args:
        student_maps: (B, C, h, w) student maps, already adapted to the teacher's channels.
        teacher_maps: the teacher's maps at the same stages.
    """
    def normalised(x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-2:]).flatten()

    return sum(F.mse_loss(normalised(s), normalised(t)) for s, t in zip(student_maps, teacher_maps, strict=True))


def clip_kd(student_out: tuple, teacher_out: tuple) -> torch.Tensor:
    """CLIP-KD: feature MSE on normalised image and text embeddings, and relational KL on image->text logits.

    Args:
        student_out, teacher_out: ``(image_features, text_features, logit_scale, ...)`` as open_clip returns them,
            features L2-normalised.
    """
    s_image, s_text, s_scale = student_out[:3]
    t_image, t_text, t_scale = teacher_out[:3]
    features = F.mse_loss(s_image, t_image, reduction="sum") / len(s_image) \
        + F.mse_loss(s_text, t_text, reduction="sum") / len(s_text)
    s_logits, t_logits = t_scale * s_image @ s_text.t(), t_scale * t_image @ t_text.t()
    relational = F.kl_div(s_logits.log_softmax(1), t_logits.log_softmax(1), reduction="batchmean", log_target=True)
    return features + relational


def adm_feature_losses(student_map: torch.Tensor, teacher_map: torch.Tensor, tau: float = 0.1,
                       student_features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ADM's consensus learning (for the student) and divergence learning (for the teacher), our formulation.

    What is the paper's: in online distillation the student should learn most where teacher and student already
    agree (consensus) and the teacher most where they disagree (divergence), driven by a per-location similarity of
    their features. What is ours (the exact formula is not public): the similarity S is the analysis package's
    dimension-free affinity consensus, computed without gradient; the student's loss weights each location by
    softmax(S / tau) over locations, the teacher's by softmax((1 - S) / tau); each location's error is the mean
    squared difference of the layer-normalised feature vectors, against the other side detached.

    Args:
        student_map: (B, C, h, w) student features, already adapted to the teacher's channels.
        teacher_map: (B, C, h, w) teacher features of the same stage.
        tau: softmax temperature, > 0.
        student_features: the student's own features before any adapter; when given, S is computed from them
            (the affinity consensus is dimension-free), so the weights are exactly the consensus maps that the
            analysis package draws for the trained student.

    Returns:
        ``(student_loss, teacher_loss)``: scalars; the first has gradients only into the student's features, the
        second only into the teacher's.
    """
    from analysis.consensus import affinity_consensus, consensus_weights, divergence_weights

    with torch.no_grad():
        own = student_map if student_features is None else student_features
        similarity = affinity_consensus(teacher_map.detach(), own.detach())  # (B, h, w) on the teacher grid
        similarity = torch.nan_to_num(similarity, nan=0.0)  # undefined (constant features): no preference
        w_student, w_teacher = consensus_weights(similarity, tau), divergence_weights(similarity, tau)

    def per_location(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x, target = (F.layer_norm(v.transpose(1, -1), v.shape[1:2]).transpose(1, -1) for v in (x, target))
        return (x - target).square().mean(1)  # (B, h, w)

    student_loss = (w_student * per_location(student_map, teacher_map.detach())).sum((1, 2)).mean()
    teacher_loss = (w_teacher * per_location(teacher_map, student_map.detach())).sum((1, 2)).mean()
    return student_loss, teacher_loss
