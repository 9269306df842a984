import pytest
import torch

from analysis.agreement import detection_agreement, match_detections, segmentation_agreement


def dets(boxes, labels, scores=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    scores = torch.tensor(scores if scores is not None else [0.9] * len(boxes))
    return {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.long), "scores": scores}


def test_identical_detections_agree_fully():
    d = dets([[0, 0, 10, 10], [20, 20, 40, 30]], [1, 2])
    a = detection_agreement(d, d)
    assert (a["matched"], a["missed"], a["extra"]) == (2, 0, 0)
    assert a["mean_iou"] == 1.0 and a["label_agreement"] == 1.0


def test_missed_extra_and_label_disagreement():
    teacher = dets([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 2])
    student = dets([[0, 0, 10, 5], [100, 100, 110, 110]], [3, 1])  # IoU 0.5 with the first teacher box
    a = detection_agreement(teacher, student)
    assert (a["matched"], a["missed"], a["extra"]) == (1, 1, 1)
    assert a["mean_iou"] == pytest.approx(0.5)
    assert a["label_agreement"] == 0.0


def test_matching_is_one_to_one_in_score_order():
    teacher = torch.tensor([[0.0, 0, 10, 10]])
    students = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 9]])
    match, ious = match_detections(teacher, students, torch.tensor([0.2, 0.9]))
    assert match.tolist() == [-1, 0]  # the higher-scoring box takes the only teacher box
    assert ious[1] == pytest.approx(0.9)


def test_no_detections_at_all():
    empty = dets([], [])
    a = detection_agreement(empty, empty)
    assert (a["matched"], a["missed"], a["extra"], a["mean_iou"]) == (0, 0, 0, None)


def test_segmentation_agreement_known_answers():
    t = torch.zeros(4, 4, dtype=torch.long)
    t[:, 2:] = 1
    assert segmentation_agreement(t, t.clone(), 6) == {"miou": 1.0, "pixel_agreement": 1.0,
                                                        "per_class": {0: 1.0, 1: 1.0}}
    s = t.clone()
    s[:, 3] = 2  # half of class 1 predicted as class 2
    a = segmentation_agreement(t, s, 6)
    assert a["pixel_agreement"] == 0.75
    assert a["per_class"] == {0: 1.0, 1: 0.5, 2: 0.0}
    assert a["miou"] == pytest.approx(0.5)


def test_inputs_are_not_modified():
    t = torch.randint(0, 3, (8, 8))
    s = torch.randint(0, 3, (8, 8))
    t0, s0 = t.clone(), s.clone()
    segmentation_agreement(t, s, 3)
    assert torch.equal(t, t0) and torch.equal(s, s0)


def test_host_boxes_agree_exactly_as_tensors_do():
    """Boxes already on the host go through numpy (torchvision's IoU operation for operation): the same IoU bits and
    the same agreement as the tensor path, ties in scores and IoU, empty sides and degenerate boxes included."""
    import numpy as np
    from torchvision.ops import box_iou

    from analysis.agreement import _host_box_iou

    rng = np.random.default_rng(0)
    for trial in range(300):
        m, n = rng.integers(0, 9, 2)
        sides = []
        for count in (n, m):
            corner = (rng.random((count, 2)) * 64).round(trial % 2).astype(np.float32)
            boxes = np.concatenate([corner, corner + (rng.random((count, 2)) * 30).round(trial % 2)], 1)
            scores = rng.choice([0.3, 0.5, 0.9], count).astype(np.float32)  # ties
            sides.append({"boxes": boxes.astype(np.float32), "scores": scores,
                          "labels": rng.integers(0, 3, count)})
        host_t, host_s = sides
        tensor_t, tensor_s = ({k: torch.from_numpy(v) for k, v in side.items()} for side in sides)
        assert detection_agreement(host_t, host_s) == detection_agreement(tensor_t, tensor_s)
        if m and n:
            assert np.array_equal(_host_box_iou(host_s["boxes"], host_t["boxes"]),
                                  box_iou(tensor_s["boxes"], tensor_t["boxes"]).numpy(), equal_nan=True)
