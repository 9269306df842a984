"""Label files as COCO evaluates them: polygons and RLE alike, crowd regions ignored, unlisted images unlabelled,
classes the pair lacks left out and listed, malformed annotations refused naming them."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from compare.inputs import InputError
from reports.aggregate import _accuracy, _detections_matched, labels_summary, summarise, weighted_map50
from reports.dataset import check_labels_fit, read_records, run_dataset
from reports.inputs import Labels, list_images
from weights.registry import get_pair
from weights.shapes.world import CLASS_NAMES, EVAL_SEED_START, render_scene

CATEGORIES = [{"id": i, "name": c} for i, c in enumerate(CLASS_NAMES) if i]


def coco_file(tmp_path, annotations, images=("a.png",), name="labels.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"images": [{"id": k, "file_name": f} for k, f in enumerate(images)],
                                "categories": CATEGORIES, "annotations": annotations}))
    return path


def test_polygons_are_rasterised_as_pycocotools_does():
    from pycocotools import mask as coco_mask

    square = [10, 10, 20, 10, 20, 20, 10, 20]
    labels = Labels(polygons={"a.png": [("circle", [square])]}, listed={"a.png"})
    painted = labels.mask("a.png", (40, 40), ["background", "circle"])
    expected = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects([square], 40, 40)))
    assert (painted == 1).sum() == 100 and np.array_equal(painted == 1, expected.astype(bool))


def test_polygon_and_rle_labels_of_the_same_masks_give_the_same_figures(tmp_path):
    from pycocotools import mask as coco_mask

    images = tmp_path / "images"
    images.mkdir()
    names, polygons, rles = [], [], []
    for k in range(5):
        scene = render_scene(EVAL_SEED_START + 3200 + k)
        names.append(f"s{k}.png")
        Image.fromarray(scene.image).save(images / names[-1])
        for obj in scene.objects:
            mask = obj.mask.astype(np.uint8)
            rle = coco_mask.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode()
            rles.append({"image_id": k, "category_id": obj.class_id, "segmentation": rle})
            ys, xs = np.nonzero(mask)  # the object's bounding rectangle as a polygon, and the same as an RLE below
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            polygons.append({"image_id": k, "category_id": obj.class_id,
                             "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
    rects = []
    for a in polygons:  # the polygons' own pixels, as COCO's tools draw them, encoded as RLE
        size = (128, 128)
        rle = coco_mask.merge(coco_mask.frPyObjects(a["segmentation"], *size))
        rle["counts"] = rle["counts"].decode()
        rects.append({**a, "segmentation": rle})
    uncompressed = []  # the true masks again, as COCO's uncompressed RLE: run lengths down the columns, zeros first
    for a in rles:
        flat = coco_mask.decode(a["segmentation"]).flatten(order="F")
        edges = np.flatnonzero(np.diff(flat)) + 1
        counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
        uncompressed.append({**a, "segmentation": {"size": a["segmentation"]["size"],
                                                   "counts": ([0] if flat[0] else []) + counts}})
    summaries = [run_dataset(list_images(images), "shapes-segmentation", tmp_path / f"out{i}", None,
                             coco_file(tmp_path, annotations, names, f"labels{i}.json"), gallery=0)
                 for i, annotations in enumerate([polygons, rects, rles, uncompressed])]
    assert summaries[0]["accuracy"] == summaries[1]["accuracy"]
    assert summaries[2]["accuracy"] == summaries[3]["accuracy"]  # compressed or not, the same masks
    assert summaries[2]["accuracy"] != summaries[0]["accuracy"]  # the true masks are not their rectangles


def test_crowd_regions_are_neither_misses_nor_false_positives():
    """A detection on a crowd region is ignored, as COCO and torchmetrics do; our bootstrap's matching agrees."""
    from torchmetrics.detection import MeanAveragePrecision

    labels = Labels(boxes={"a.png": [("circle", [0.0, 0.0, 10.0, 10.0])]}, listed={"a.png"},
                    crowd_boxes={"a.png": [("circle", [50.0, 50.0, 100.0, 100.0])]})
    found = [{"label": "circle", "score": 0.95, "box": [60.0, 60.0, 70.0, 70.0]},  # on the crowd region
             {"label": "circle", "score": 0.9, "box": [0.0, 0.0, 10.0, 10.0]}]
    records = [{"image": "a.png", "teacher": {"detections": found}, "students": {}}]
    accuracy = _accuracy(records, get_pair("shapes-detection"), [], labels)
    assert accuracy["teacher"]["map_50"] == 1.0  # without the crowd region the first box would be a false positive
    ours = weighted_map50(_detections_matched(records, "teacher", labels), np.ones((1, 1)))
    assert float(ours[0]) == 1.0
    metric = MeanAveragePrecision(iou_thresholds=[0.5])
    metric.update([{"boxes": torch.tensor([d["box"] for d in found]), "scores": torch.tensor([0.95, 0.9]),
                    "labels": torch.tensor([0, 0])}],
                  [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0])}])
    assert float(metric.compute()["map_50"]) < 1.0  # the same without iscrowd: the test can tell


def test_iscrowd_annotations_are_read_as_regions_to_ignore(tmp_path):
    path = coco_file(tmp_path, [{"image_id": 0, "category_id": 1, "bbox": [0, 0, 10, 10]},
                                {"image_id": 0, "category_id": 1, "bbox": [0, 0, 128, 128], "iscrowd": 1,
                                 "segmentation": [[0, 0, 128, 0, 128, 128, 0, 128]]}])
    labels = Labels.read(path)
    assert labels.boxes["a.png"] == [("circle", [0.0, 0.0, 10.0, 10.0])]
    assert labels.crowd_boxes["a.png"] == [("circle", [0.0, 0.0, 128.0, 128.0])]
    assert labels.ignore_mask("a.png", (128, 128)).all() and "a.png" not in labels.polygons
    records = [{"image": "a.png"}]
    assert "1 crowd region(s) (iscrowd) ignored" in labels_summary(records, records, labels, "detection")["notes"][0]


def test_images_the_file_does_not_list_are_unlabelled_not_empty(folder_records):
    """Labels for half the images: the figures are those of the labelled half alone, and the summary says so."""
    records, labels_path, spec = folder_records
    coco = json.loads(labels_path.read_text())
    kept = {im["id"] for im in coco["images"][:4]}
    half = Labels.read(labels_path)
    half.listed = {im["file_name"] for im in coco["images"] if im["id"] in kept}
    full = Labels.read(labels_path)
    summary = summarise(records, spec, ["feature-kd"], half, 0)
    subset = [r for r in records if r["image"] in half.listed]
    assert summary["accuracy"] == _accuracy(subset, spec, ["feature-kd"], full)
    assert summary["labels"]["images_unlisted"] == len(records) - len(subset) > 0
    assert "not in the label file" in summary["labels"]["notes"][0]
    from demos.dataset import summary_markdown
    from reports.html import labels_paragraph

    assert all("not in the label file" in text for text in (labels_paragraph(summary), summary_markdown(summary)))


@pytest.fixture(scope="module")
def folder_records(tmp_path_factory):
    from weights.shapes.world import write_labelled_scenes

    root = tmp_path_factory.mktemp("labelled")
    images, labels = write_labelled_scenes(root, range(EVAL_SEED_START + 3300, EVAL_SEED_START + 3308))
    run_dataset(list_images(images), "shapes-detection", root / "out", labels=labels, gallery=0)
    return ([r for r in read_records(root / "out" / "results.jsonl") if "error" not in r], labels,
            get_pair("shapes-detection"))


def test_classes_the_pair_lacks_are_left_out_and_listed(tmp_path):
    path = coco_file(tmp_path, [{"image_id": 0, "category_id": 1, "bbox": [0, 0, 10, 10]},
                                {"image_id": 0, "category_id": 2, "bbox": [20, 20, 10, 10]}])
    raw = json.loads(path.read_text())
    raw["categories"][1]["name"] = "hexagon"
    raw["categories"][0]["name"] = "Circle "  # the same class, spelled otherwise
    path.write_text(json.dumps(raw))
    labels = Labels.read(path).for_classes(["circle", "square"], "detection")
    assert labels.boxes["a.png"] == [("circle", [0.0, 0.0, 10.0, 10.0])] and labels.skipped == {"hexagon": 1}
    summary_labels = labels_summary([], [], labels, "detection")
    assert summary_labels["skipped_classes"] == {"hexagon": 1} and "hexagon (1)" in summary_labels["notes"][0]


def test_a_class_the_segmenter_lacks_is_an_ignored_region_not_background():
    from reports.aggregate import _overlap

    labels = Labels(polygons={"a.png": [("hexagon", [[0, 0, 10, 0, 10, 10, 0, 10]])]}, listed={"a.png"})
    labels = labels.for_classes(["background", "circle"], "segmentation")
    ignore = labels.ignore_mask("a.png", (20, 20))
    assert ignore.sum() == 100 and labels.skipped == {"hexagon": 1}
    prediction = np.zeros((20, 20), dtype=np.int64)
    prediction[:10, :10] = 1  # the model calls the hexagon a circle: not counted against it
    overlap = _overlap(prediction, labels.mask("a.png", (20, 20), ["background", "circle"]), 2, ignore)
    assert overlap["union"][1] == 0 and overlap["intersection"][0] == overlap["union"][0] == 300


@pytest.mark.parametrize("annotation, message", [
    ({"bbox": [0, 0, float("nan"), 10]}, "finite"),
    ({"bbox": [0, 0, -5, 10]}, "width, height >= 0"),
    ({"segmentation": {"counts": "garbage!!", "size": [128, 128]}}, "Invalid RLE"),
    ({"segmentation": {"counts": [5, 10, 20], "size": [128, 128]}}, "summing to 128×128"),
    ({"segmentation": {"counts": [5], "size": [128]}}, "height, width"),
    ({"segmentation": [[0, 0, 10, float("inf"), 10, 10]]}, "finite"),
])
def test_malformed_annotations_are_refused_naming_them(tmp_path, annotation, message):
    path = coco_file(tmp_path, [{"id": 7, "image_id": 0, "category_id": 1, **annotation}])
    with pytest.raises(InputError, match=f"annotation 7 .*{message}"):
        Labels.read(path)


def test_an_rle_of_another_size_is_recorded_for_its_image_and_the_run_goes_on(tmp_path):
    from pycocotools import mask as coco_mask

    images = tmp_path / "images"
    images.mkdir()
    annotations = []
    for k in range(2):
        scene = render_scene(EVAL_SEED_START + 3400 + k)
        Image.fromarray(scene.image).save(images / f"s{k}.png")
        mask = scene.objects[0].mask.astype(np.uint8)
        rle = coco_mask.encode(np.asfortranarray(mask if k == 0 else mask[:64, :64]))
        rle["counts"] = rle["counts"].decode()
        annotations.append({"image_id": k, "category_id": scene.objects[0].class_id, "segmentation": rle})
    summary = run_dataset(list_images(images), "shapes-segmentation", tmp_path / "out", None,
                          coco_file(tmp_path, annotations, ["s0.png", "s1.png"]), gallery=0)
    assert summary["labels"]["images_labelled"] == 1
    assert summary["labels"]["unusable"][0]["image"] == "s1.png"
    assert "64×64 pixels on an image of 128×128" in summary["labels"]["unusable"][0]["reason"]


def test_labels_of_the_wrong_kind_or_classes_are_refused(tmp_path):
    boxes = Labels.read(coco_file(tmp_path, [{"image_id": 0, "category_id": 1, "bbox": [0, 0, 10, 10]}]))
    with pytest.raises(InputError, match="hold no masks"):
        check_labels_fit(boxes, [tmp_path / "a.png"], "segmentation", ["background", "circle"], "labels.json")
    check_labels_fit(boxes, [tmp_path / "a.png"], "detection", ["circle"], "labels.json")
    with pytest.raises(InputError, match="None of the classes"):
        check_labels_fit(boxes, [tmp_path / "a.png"], "classification", ["cat", "dog"], "labels.json")


def test_zip_names_that_sanitise_alike_are_never_guessed_between(tmp_path):
    """'a b.png' and 'a_b.png' both become a_b.png: the file already so named keeps it (and its own labels); two
    other names that collide are both skipped, each with a note."""
    import zipfile

    from reports.inputs import extract_zip

    archive = tmp_path / "up.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("a b.png", "a_b.png", "c(1).png", "c[1].png", "d e.png"):
            z.writestr(name, name.encode())
    notes = extract_zip(archive, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_b.png", "d_e.png"]
    assert (tmp_path / "out" / "a_b.png").read_bytes() == b"a_b.png"
    assert sum("rename one of them" in n for n in notes) == 3
    path = coco_file(tmp_path, [{"image_id": k, "category_id": 1, "bbox": [k, 0, 10, 10]} for k in range(5)],
                     ("a b.png", "a_b.png", "c(1).png", "c[1].png", "d e.png"))
    labels = Labels.read(path)
    assert labels.boxes["a_b.png"][0][1][0] == 1.0 and labels.boxes["d_e.png"][0][1][0] == 4.0
    assert "c_1_.png" not in labels.listed  # ambiguous: no guess
    raw = json.loads(path.read_text())  # every table follows the sanitised name: a box without a mask, two classes
    raw["annotations"].append({"image_id": 4, "category_id": 2, "bbox": [0, 0, 3, 3]})
    path.write_text(json.dumps(raw))
    labels = Labels.read(path)
    assert labels.unmasked["d_e.png"] == labels.unmasked["d e.png"] and "d_e.png" in labels.mixed


def test_a_folder_whose_name_looks_like_a_pattern_is_a_folder(tmp_path):
    folder = tmp_path / "my [data]"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "x.png")
    assert [p.name for p in list_images(folder)] == ["x.png"]


def test_a_gate_spelled_with_spaces_reads_as_without():
    from reports.aggregate import parse_gate

    assert parse_gate(" agreement = 0.5 , map50=0.8", "detection") == {"agreement": 0.5, "map50": 0.8}


def test_miou_is_over_the_classes_the_labels_hold():
    """A class the labels never hold in these images (not in the file, or only in ignored regions) is not scored:
    a few predicted pixels of it would read IoU 0 and drag the mean down."""
    from reports.aggregate import _overlap

    truth = np.zeros((10, 10), dtype=np.int64)
    truth[:5] = 1  # background and circle labelled; square never
    prediction = truth.copy()
    prediction[9, 9] = 2  # one stray square pixel
    block = _overlap(prediction, truth, 3)
    records = [{"image": f"{k}.png", "teacher": {"vs_labels": block}, "students": {}} for k in range(5)]
    miou = _accuracy(records, get_pair("shapes-segmentation"), [], Labels())["teacher"]
    assert miou["miou"] == pytest.approx((49 / 50 + 1.0) / 2, abs=1e-4)  # background and circle only
    assert miou["ci95"] == [pytest.approx(miou["miou"], abs=1e-4)] * 2


def test_an_object_with_a_box_but_no_mask_is_ignored_by_segmentation(tmp_path):
    path = coco_file(tmp_path, [{"image_id": 0, "category_id": 1, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
                                {"image_id": 0, "category_id": 2, "bbox": [20, 20, 10, 10]}])
    labels = Labels.read(path).for_classes(["background", "circle", "square"], "segmentation")
    assert labels.ignore_mask("a.png", (40, 40))[20:30, 20:30].all()
    assert (labels.mask("a.png", (40, 40), ["background", "circle", "square"]) == 2).sum() == 0
    records = [{"image": "a.png"}]
    assert "box but no mask" in " ".join(labels_summary(records, records, labels, "segmentation")["notes"])


@pytest.mark.parametrize("change, says", [
    (lambda c: c["images"].append({"id": 0, "file_name": "b.png"}), "image id 0 twice"),
    (lambda c: c["categories"].append({"id": 1, "name": "square"}), "category id 1 twice"),
    (lambda c: c["images"].append({"id": 9, "file_name": "a.png"}), "image file_name 'a.png' twice"),
    (lambda c: c["annotations"].append({"image_id": 0, "category_id": 1, "bbox": [0, 0, 5]}), r"bbox \[0, 0, 5\]"),
])
def test_repeated_ids_and_short_boxes_are_refused(tmp_path, change, says):
    coco = json.loads(coco_file(tmp_path, [{"image_id": 0, "category_id": 1, "bbox": [0, 0, 10, 10]}]).read_text())
    change(coco)
    (tmp_path / "changed.json").write_text(json.dumps(coco))
    with pytest.raises(InputError, match=says):
        Labels.read(tmp_path / "changed.json")


def test_background_is_no_object():
    from reports.dataset import label_classes
    from weights.predictors import predictors_for

    spec = get_pair("shapes-detection")
    assert "background" not in label_classes(spec, predictors_for(spec, students=spec.choose_students(None)), "")
    labels = Labels(polygons={"a.png": [("background", [[0, 0, 40, 0, 40, 40, 0, 40]]),
                                        ("circle", [[0, 0, 10, 0, 10, 10, 0, 10]])]}, listed={"a.png"})
    assert [label for label, _ in labels.objects("a.png", (40, 40), ["background", "circle"])] == ["circle"]


def test_crowd_boxes_objects_outside_the_image_background_and_two_class_images(tmp_path):
    """A crowd box without a mask is ignored by segmentation too; an object with no pixel inside the image is no
    object; a background region is painted under the objects; an image labelled with two classes has no single class
    for classification (left out, noted)."""
    path = coco_file(tmp_path, [
        {"image_id": 0, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 1},
        {"image_id": 0, "category_id": 2, "segmentation": [[-50, -50, -20, -50, -20, -20]]},  # outside the image
        {"image_id": 0, "category_id": 1, "segmentation": [[20, 20, 30, 20, 30, 30, 20, 30]]},
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}, {"image_id": 1, "category_id": 2,
                                                                   "bbox": [9, 9, 5, 5]},
        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 5, 5]}], images=("a.png", "b.png", "c.png"))
    classes = ["background", "circle", "square"]
    seg = Labels.read(path).for_classes(classes, "segmentation")
    assert seg.ignore_mask("a.png", (40, 40))[:10, :10].all()
    assert [label for label, _ in seg.objects("a.png", (40, 40), classes)] == ["circle"]
    seg.polygons["a.png"].append(("background", [[0, 0, 40, 0, 40, 40, 0, 40]]))  # listed last, painted first
    assert (seg.mask("a.png", (40, 40), classes) == 1).sum() == 100
    cls = Labels.read(path).for_classes(["circle", "square"], "classification")
    assert "a.png" not in cls.classes and "b.png" not in cls.classes and cls.classes["c.png"] == "square"
    records = [{"image": name} for name in ("a.png", "b.png", "c.png")]
    block = labels_summary(records, records, cls, "classification")
    assert block["images_labelled"] == 1 and "2 images carry annotations of two or more classes" in block["notes"][0]


def test_an_object_outside_its_image_is_left_out_and_noted(tmp_path):
    scene = render_scene(EVAL_SEED_START + 3500)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(scene.image).save(images / "a.png")
    obj = scene.objects[0]
    ys, xs = np.nonzero(obj.mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    annotations = [{"image_id": 0, "category_id": obj.class_id, "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]},
                   {"image_id": 0, "category_id": 1, "segmentation": [[-50, -50, -20, -50, -20, -20]]}]
    summary = run_dataset(list_images(images), "shapes-segmentation", tmp_path / "out", None,
                          coco_file(tmp_path, annotations), gallery=0)
    assert summary["inherited_errors"]["feature-kd"]["overall"]["total"] == 1
    assert "1 labelled object(s) with no pixel inside the image left out." in summary["labels"]["notes"]


def test_a_box_outside_its_image_counts_as_missed_as_in_coco_and_is_noted(tmp_path):
    """COCO's evaluation counts a labelled box no detection can reach as a missed object; the summary keeps that mAP
    (equal to torchmetrics') and says how many such boxes the file holds, so a file in other coordinates is caught."""
    from torchmetrics.detection import MeanAveragePrecision

    scene = render_scene(EVAL_SEED_START + 3510)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(scene.image).save(images / "a.png")
    inside = [{"image_id": 0, "category_id": o.class_id,
               "bbox": [float(o.box[0]), float(o.box[1]), float(o.box[2] - o.box[0]), float(o.box[3] - o.box[1])]}
              for o in scene.objects]
    beyond = {"image_id": 0, "category_id": 1, "bbox": [300.0, 300.0, 20.0, 20.0]}  # the image is 128 x 128
    summary = run_dataset(list_images(images), "shapes-detection", tmp_path / "out", None,
                          coco_file(tmp_path, [*inside, beyond]), gallery=0)
    notes = summary["labels"]["notes"]
    assert any(n.startswith("1 labelled box(es) with no area inside their image") for n in notes), notes
    clean = run_dataset(list_images(images), "shapes-detection", tmp_path / "clean", None,
                        coco_file(tmp_path, inside, name="inside.json"), gallery=0)
    assert not any("no area inside" in n for n in clean["labels"]["notes"])
    record = read_records(tmp_path / "out" / "results.jsonl")[0]
    boxes = [a["bbox"] for a in [*inside, beyond]]
    target = {"boxes": torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes]),
              "labels": torch.tensor([a["category_id"] for a in [*inside, beyond]])}
    from reports.aggregate import accuracy_detections

    found = accuracy_detections(record["teacher"])
    names = list(CLASS_NAMES)
    metric = MeanAveragePrecision(iou_thresholds=[0.5])
    metric.update([{"boxes": torch.tensor([d["box"] for d in found]).reshape(-1, 4),
                    "scores": torch.tensor([d["score"] for d in found]),
                    "labels": torch.tensor([names.index(d["label"]) for d in found])}], [target])
    assert summary["accuracy"]["teacher"]["map_50"] == pytest.approx(float(metric.compute()["map_50"]), abs=1e-3)
    assert summary["accuracy"]["teacher"]["map_50"] < clean["accuracy"]["teacher"]["map_50"]


def test_label_files_as_other_tools_write_them(tmp_path):
    """Found by a review: a byte-order mark (Windows editors), Windows paths as file names, names whose accents are
    decomposed on one side (macOS) and composed on the other, and iscrowd written as a string ("0" read as true made
    every object a crowd region) all read as meant; a file_name that is not a name is refused, naming it."""
    import unicodedata

    box = {"id": 1, "image_id": 0, "category_id": 1, "bbox": [1, 2, 3, 4]}
    path = coco_file(tmp_path, [box | {"iscrowd": "0"}], images=("C:\\data\\val\\café 1.png",))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # UTF-8 with a byte-order mark
    labels = Labels.read(path)
    assert labels.boxes["café 1.png"] == [(CLASS_NAMES[1], [1.0, 2.0, 4.0, 6.0])] and not labels.crowd_boxes
    decomposed = unicodedata.normalize("NFD", "café 1.png")
    assert decomposed != "café 1.png" and labels.boxes[decomposed] == labels.boxes["café 1.png"]
    assert labels.boxes["café_1.png"] == labels.boxes["café 1.png"]  # as an uploaded zip unpacks either spelling
    assert Labels.read(coco_file(tmp_path, [box | {"iscrowd": "1"}], name="crowd.json")).crowd_boxes
    with pytest.raises(InputError, match="iscrowd 'yes' is not 0 or 1"):
        Labels.read(coco_file(tmp_path, [box | {"iscrowd": "yes"}], name="yes.json"))
    for bad in (None, "", 123):
        with pytest.raises(InputError, match=f"a file_name of {bad!r}"):
            Labels.read(coco_file(tmp_path, [], images=(bad,), name="bad.json"))


def test_a_run_json_cut_short_is_refused_with_a_message(tmp_path):
    from reports.dataset import start_folder

    (tmp_path / "run.json").write_text("")
    with pytest.raises(InputError, match="run.json cannot be read .* --overwrite"):
        start_folder(tmp_path, {"pair": "shapes-detection"}, resume=True, overwrite=False)
    (tmp_path / "run.json").write_text("[1]\n")
    with pytest.raises(InputError, match="cannot be read"):
        start_folder(tmp_path, {"pair": "shapes-detection"}, resume=True, overwrite=False)


def test_an_alias_never_labels_another_image_of_the_folder(tmp_path):
    """A label file naming ``scene one.png`` labels ``scene_one.png`` (its sanitised name, as a zip unpacks it) only
    when ``scene one.png`` itself is not among the images: where both are, ``scene_one.png`` is another image the
    file does not label (found by a review: it got the first image's boxes). The same for composed/decomposed
    accents."""
    import unicodedata

    box = {"id": 1, "image_id": 0, "category_id": 1, "bbox": [1, 2, 3, 4]}
    labels = Labels.read(coco_file(tmp_path, [box], images=("scene one.png",)))
    alone = labels.for_images({"scene_one.png"})  # only the sanitised name on disk: the file's image
    assert alone.boxes["scene_one.png"] == labels.boxes["scene one.png"] and "scene_one.png" in alone.listed
    both = labels.for_images({"scene one.png", "scene_one.png"})  # two images: the second is not labelled
    assert "scene_one.png" not in both.boxes and "scene_one.png" not in both.listed
    assert both.boxes["scene one.png"] == labels.boxes["scene one.png"]
    composed, decomposed = "café.png", unicodedata.normalize("NFD", "café.png")
    labels = Labels.read(coco_file(tmp_path, [box], images=(composed,), name="accents.json"))
    assert decomposed not in labels.for_images({composed, decomposed}).boxes
    assert decomposed in labels.for_images({decomposed}).boxes


def test_a_zip_whose_names_clash_when_made_safe_labels_only_the_file_it_names(tmp_path):
    """``scene one.png`` and ``scene_one.png`` in one zip: the second keeps its name, the first is skipped (their
    safe names clash); a label file naming only ``scene one.png`` must not give its boxes to ``scene_one.png``, a
    different image: the unpacked files' original names decide (an NFD name in the zip still matches NFC labels)."""
    import unicodedata
    import zipfile

    from reports.inputs import extract_zip

    scene = render_scene(EVAL_SEED_START + 3300)
    png = tmp_path / "s.png"
    Image.fromarray(scene.image).save(png)
    archive = tmp_path / "clash.zip"
    decomposed = unicodedata.normalize("NFD", "café.png")
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("scene one.png", "scene_one.png", decomposed):
            z.write(png, name)
    originals: dict[str, str] = {}
    extract_zip(archive, tmp_path / "out", originals)
    assert set(originals) == {"scene_one.png", "café.png"} and originals["scene_one.png"] == "scene_one.png"
    box = {"id": 1, "image_id": 0, "category_id": 1, "bbox": [1, 2, 3, 4]}
    labels = Labels.read(coco_file(tmp_path, [box, box | {"id": 2, "image_id": 1}],
                                   images=("scene one.png", "café.png")))
    fitted = labels.for_images(set(originals), originals)
    assert "scene_one.png" not in fitted.boxes and "scene_one.png" not in fitted.listed
    assert fitted.boxes["café.png"] == labels.boxes["café.png"]
