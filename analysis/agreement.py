"""How closely a student's predictions agree with its teacher's, the teacher taken as the reference."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_jaccard_index
from torchvision.ops import box_iou


def match_detections(teacher_boxes: torch.Tensor, student_boxes: torch.Tensor, student_scores: torch.Tensor,
                     iou_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy COCO-style matching: student boxes in score order take the best free teacher box.

    Args:
        teacher_boxes: (N, 4) xyxy.
        student_boxes: (M, 4) xyxy, same device.
        student_scores: (M,) confidence used for the matching order.
        iou_threshold: minimum IoU of a match.

    Returns:
        ``match`` (M,) int64, the teacher index matched to each student box or -1, and ``ious`` (M,) the IoU of
        each match (0 where unmatched), on the boxes' device.
    """
    pairs = _greedy_pairs(teacher_boxes, student_boxes, student_scores, iou_threshold)
    m, device = student_boxes.shape[0], student_boxes.device
    match, ious = [-1] * m, [0.0] * m
    for s, t, iou in pairs:
        match[s], ious[s] = t, iou
    return torch.tensor(match, dtype=torch.long, device=device), torch.tensor(ious, device=device)


def _greedy_pairs(teacher_boxes: torch.Tensor, student_boxes: torch.Tensor, student_scores: torch.Tensor,
                  iou_threshold: float) -> list[tuple[int, int, float]]:
    """The matches of :func:`match_detections` as ``(student index, teacher index, IoU)``: the IoU matrix and the
    score order read back once, then the greedy walk on the host (a few boxes per image: a Python loop costs less
    than a tensor op per box)."""
    if student_boxes.shape[0] == 0 or teacher_boxes.shape[0] == 0:
        return []
    if isinstance(student_boxes, np.ndarray):  # boxes already on the host: the same arithmetic in numpy, ~4x faster
        order = np.argsort(-student_scores, kind="stable")
        rows = _host_box_iou(student_boxes[order].astype(np.float32), teacher_boxes.astype(np.float32)).tolist()
    else:
        order = student_scores.argsort(descending=True, stable=True)
        rows = box_iou(student_boxes[order].float(), teacher_boxes.float()).tolist()  # (M, N), the one read-back
    taken: set[int] = set()
    pairs = []
    for s, row in zip(order.tolist(), rows, strict=True):
        best, best_iou = -1, -1.0
        for t, iou in enumerate(row):  # the first of equal IoUs wins, as argmax
            if t not in taken and iou > best_iou:
                best, best_iou = t, iou
        if best >= 0 and best_iou >= iou_threshold:
            pairs.append((s, best, best_iou))
            taken.add(best)
    return pairs


def _host_box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, 4), (N, 4) float32 xyxy -> (M, N) IoU, torchvision's ``box_iou`` operation for operation (the same bits,
    tested): for a few boxes on the host, numpy's small-array ops cost a fraction of torch's dispatch."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    corner = np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None)
    inter = corner[..., 0] * corner[..., 1]
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 for empty boxes: NaN, as torchvision gives
        return inter / (area_a[:, None] + area_b[None] - inter)


def detection_agreement(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor],
                        iou_threshold: float = 0.5) -> dict:
    """Matched, missed and extra objects, mean IoU of matches and label agreement.

    Args:
        teacher, student: dicts with ``boxes`` (N, 4) xyxy, ``scores`` (N,) and ``labels`` (N,) int: tensors on any
            device, or numpy arrays for boxes already on the host.
        iou_threshold: minimum IoU for a student box to count as the same object.

    Returns:
        ``{matched, missed, extra, mean_iou, label_agreement, iou_threshold}``; ``mean_iou`` and
        ``label_agreement`` are None when nothing matched.
    """
    pairs = _greedy_pairs(teacher["boxes"], student["boxes"], student["scores"], iou_threshold)
    n_matched = len(pairs)
    if n_matched:
        teacher_labels, student_labels = teacher["labels"].tolist(), student["labels"].tolist()
        same = sum(student_labels[s] == teacher_labels[t] for s, t, _ in pairs)
    return {
        "matched": n_matched,
        "missed": int(teacher["boxes"].shape[0]) - n_matched,
        "extra": int(student["boxes"].shape[0]) - n_matched,
        "mean_iou": round(sum(iou for _, _, iou in pairs) / n_matched, 4) if n_matched else None,
        "label_agreement": round(same / n_matched, 4) if n_matched else None,
        "iou_threshold": iou_threshold,
    }


def segmentation_agreement(teacher_map: torch.Tensor, student_map: torch.Tensor, num_classes: int) -> dict:
    """Teacher-vs-student mIoU and pixel agreement of two class-index maps.

    Args:
        teacher_map, student_map: (H, W) or (B, H, W) int class indices in [0, num_classes).
        num_classes: number of classes the models predict.

    Returns:
        ``{miou, pixel_agreement, per_class}``: ``per_class`` maps the index of every class present in either map
        to its IoU; ``miou`` averages over those classes only.
    """
    per_class = multiclass_jaccard_index(student_map.flatten(), teacher_map.flatten(), num_classes, average=None)
    counts = torch.bincount(teacher_map.flatten(), minlength=num_classes) + torch.bincount(
        student_map.flatten(), minlength=num_classes)
    present = counts[:num_classes] > 0
    return {
        "miou": round(float(per_class[present].mean()), 4),
        "pixel_agreement": round(float((teacher_map == student_map).float().mean()), 4),
        "per_class": {int(i): round(float(per_class[i]), 4) for i in present.nonzero().flatten().tolist()},
    }
