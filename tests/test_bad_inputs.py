"""Bad inputs of every kind get a message naming what to change, and the app keeps serving (issue #28): numbers,
tokens, undefined figures, file-name labels, the dataset CLI, label files and zips."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import compare
from compare.checks import number
from compare.inputs import InputError
from weights.shapes.world import render_scene

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("value", "message"), [
    (None, "seed is missing"), (float("nan"), "got nan"), ("abc", "got 'abc'"), (2.5, "whole number"),
    ([1], "got \\[1\\]"), (True, "got True"), (float("inf"), "got inf"), (11, "must lie in \\[0, 10\\], got 11")])
def test_one_checking_path_names_the_field_and_its_range(value, message):
    with pytest.raises(InputError, match=message):
        number(value, "seed", 0, 10, integer=True)
    assert number("7", "seed", 0, 10, integer=True) == 7 and number(3.0, "seed", 0, 10, integer=True) == 3


def test_endpoints_check_their_numbers_with_messages():
    from demos.analysis_tab import consensus
    from demos.detection import detect
    from demos.diffusion import generate

    scene = render_scene(1).image
    with pytest.raises(InputError, match="score_threshold must be a number"):
        detect(scene, "shapes-detection", float("nan"))
    with pytest.raises(InputError, match="tau is missing"):
        consensus(scene, "shapes-segmentation", None)
    with pytest.raises(InputError, match="seed is missing"):
        generate("a red circle", "shapes-diffusion", None, 64, 64, 2)
    with pytest.raises(InputError, match=r"width \(up to 4x shapes-diffusion's native 64 px\) must lie in "):
        generate("a red circle", "shapes-diffusion", 0, 512, 64, 2)
    with pytest.raises(InputError, match="steps must be a whole number"):
        generate("a red circle", "shapes-diffusion", 0, 64, 64, float("nan"))


def test_a_clip_prompt_longer_than_the_text_tower_reads_is_refused():
    long_template = " ".join(["word"] * 16) + " {}"
    with pytest.raises(InputError, match="reads 16 tokens.*alone is"):
        compare.compare("shapes-clip", render_scene(2).image, classes=["circle", "square"], template=long_template)
    with pytest.raises(InputError, match="class 'square and then .*' makes a prompt of"):
        compare.compare("shapes-clip", render_scene(2).image,
                        classes=["circle", "square and then " + " ".join(["more"] * 12)])


def test_a_diffusion_prompt_says_what_the_text_encoder_ignores():
    from demos.diffusion import generate

    *_, report = generate("a red circle beside " + " ".join(["a blue square"] * 6), "shapes-diffusion", 0, 64, 64, 1)
    assert any("ignores" in note for note in report["notes"])
    assert any("letter by letter" in note and "'beside'" in note for note in report["notes"])


def test_undefined_figures_are_none_with_a_note():
    from analysis.consensus import cka_matrix, linear_cka

    torch.manual_seed(0)
    x, y = torch.randn(1, 8, 6, 6), torch.randn(1, 8, 6, 6)
    assert torch.isnan(cka_matrix([torch.ones(1, 8, 6, 6)], [y])).all()  # constant features
    assert torch.isnan(cka_matrix([torch.randn(1, 8, 1, 1)], [torch.randn(1, 8, 1, 1)])).all()  # one location
    assert torch.isnan(cka_matrix([torch.randn(1, 8, 1, 2)], [torch.randn(1, 8, 1, 2)])).all()  # two: always 1
    plain = float(cka_matrix([x], [y]))
    assert float(cka_matrix([x + 1000], [y])) == pytest.approx(plain, abs=1e-4)  # centred before the product
    assert float(cka_matrix([x * 1e20], [y])) == pytest.approx(plain, abs=1e-4)  # no float32 overflow
    reference = linear_cka(x.flatten(2)[0].T.double(), y.flatten(2)[0].T.double())
    assert plain == pytest.approx(float(reference), abs=1e-4)
    grey = np.full((128, 128, 3), 128, np.uint8)
    report = compare.consensus("shapes-segmentation", grey).to_json()
    assert any("undefined" in note for note in report["notes"])
    assert all(v is None or (isinstance(v, float) and not math.isnan(v)) for row in report["cka"]["matrix"]
               for v in row)


def test_tuning_labels_are_read_from_file_names_as_documented():
    from compare.zero_shot import _label_of

    names = ["t-shirt", "hot dog", "café", "red circle"]
    assert [names[_label_of(f, names)] for f in ("t-shirt_1.png", "hot_dog_1.png",
                                                 unicodedata.normalize("NFD", "café_1.png"), "Red-Circle_12.jpg")] \
        == names
    with pytest.raises(InputError, match="'t-shirt_1.png'"):
        _label_of("sock_1.png", names)


def test_grad_cam_explains_the_cell_each_detection_was_decoded_from():
    from weights.predictors import predictors_for
    from weights.registry import get_pair

    teacher = predictors_for(get_pair("shapes-detection"))["teacher"]
    checked = 0
    for seed in range(10_000_000, 10_000_030):
        inputs, geometry = teacher.prepare(render_scene(seed).image)
        outputs = teacher.forward(inputs)
        padded = tuple(inputs["pixel_values"].shape[-2:])
        for d in teacher.detections(outputs, [geometry], 0.3)[0]:
            score = teacher.family.detection_score(teacher, outputs, d.box, teacher.labels.index(d.label), geometry,
                                                   padded)
            assert float(torch.sigmoid(score)) == pytest.approx(d.score, abs=1e-3)
            checked += 1
    assert checked > 50


def test_the_clip_similarity_map_is_the_chosen_students():
    from demos.classification import run_classification

    *_, maps = run_classification("demos/examples/single_0.png", "shapes-clip", "circle, square, triangle", "", "",
                                  "narrow-captions")
    *_, first = run_classification("demos/examples/single_0.png", "shapes-clip", "circle, square, triangle", "", "",
                                   "clip-kd")
    assert maps[1] is not None and not np.allclose(maps[1], first[1])


@pytest.mark.parametrize("target", ["²", "9" * 5000, "٣"])
def test_an_attention_target_that_is_no_rank_is_read_as_a_label(target):
    with pytest.raises(InputError, match="The teacher found no"):
        compare.attention("shapes-detection", render_scene(3).image, target)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reports.dataset", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
                                                       "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize(("args", "message"), [
    (["--pair", "nope"], "Unknown pair 'nope'"), (["--students", "nobody"], "has no student 'nobody'"),
    (["--pair", "rtdetr-r50vd-to-r18vd"], "HF_HUB_OFFLINE is set"), (["--threshold", "nan"], "got nan"),
    (["--threshold", "2"], r"must lie in \[0, 1\]"), (["--out", "README.md"], "is a file")])
def test_the_dataset_cli_says_what_is_wrong_in_one_line_and_exits_2(args, message, tmp_path):
    import re

    base = {"--images": "demos/examples/shapes_*.png", "--pair": "shapes-detection", "--out": str(tmp_path / "o")}
    for key, value in zip(args[::2], args[1::2], strict=True):
        base[key] = value
    done = run_cli(*[part for item in base.items() for part in item])
    assert done.returncode == 2 and re.search(message, done.stderr.strip().splitlines()[-1]), done.stderr[-500:]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("content", "message"), [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "circle"}],
      "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "segmentation": [[1.0, 2.0]]}]},
     "annotation 7 is not COCO-style.*three"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "circle"}],
      "annotations": [{"id": 8, "image_id": 1, "category_id": 1, "segmentation": ["a polygon"]}]},
     "annotation 8 is not COCO-style"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "circle"}],
      "annotations": [{"id": 9, "image_id": 5, "category_id": 1}]}, "annotation 9 names an unknown image"),
    ({"pictures": []}, "need 'images'"), ("{not json", "as JSON"), ([], "holds a JSON list, not an object"),
    ({}, "'images' and 'categories' are missing"), ({"images": [], "categories": {}}, "'categories' is missing")])
def test_label_files_of_every_kind_get_a_message(content, message, tmp_path):
    from reports.inputs import Labels

    path = tmp_path / "labels.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(InputError, match=message):
        Labels.read(path)


def test_rle_segmentations_are_read(tmp_path):
    from pycocotools import mask as coco_mask

    from reports.inputs import Labels

    truth = np.zeros((8, 8), np.uint8, order="F")
    truth[2:5, 3:6] = 1
    encoded = coco_mask.encode(truth)
    encoded["counts"] = encoded["counts"].decode()
    coco = {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 2, "name": "square"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "segmentation": encoded}]}
    (tmp_path / "l.json").write_text(json.dumps(coco))
    painted = Labels.read(tmp_path / "l.json").mask("a.png", (8, 8), ["background", "circle", "square"])
    assert (painted == 2 * truth).all()


def zip_with(tmp_path: Path, name: str, members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", compression=compression) as bundle:
        for member, data in members.items():
            bundle.writestr(member, data)
    return path


def png_bytes(seed: int) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(render_scene(seed).image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_zips_of_every_kind_get_a_message(tmp_path):
    from reports.inputs import extract_zip

    good = png_bytes(1)
    corrupt = zip_with(tmp_path, "crc.zip", {"a.png": good, "b.png": png_bytes(2)})
    raw = bytearray(corrupt.read_bytes())
    raw[raw.index(good[100:120]) + 5] ^= 0xFF  # one flipped byte inside the first member: its CRC fails
    corrupt.write_bytes(bytes(raw))
    notes = extract_zip(corrupt, tmp_path / "out1")
    assert any("corrupt" in n for n in notes) and (tmp_path / "out1" / "b.png").exists()
    encrypted = zip_with(tmp_path, "enc.zip", {"a.png": good})
    raw = bytearray(encrypted.read_bytes())
    for offset in (6, raw.index(b"PK\x01\x02") + 8):  # the "encrypted" flag in the local and central headers
        raw[offset] |= 1
    encrypted.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="No image in the archive could be unpacked.*encrypted"):
        extract_zip(encrypted, tmp_path / "out2")
    with pytest.raises(InputError, match="holds no images"):
        extract_zip(zip_with(tmp_path, "none.zip", {"notes.txt": b"x"}), tmp_path / "out3")
    notes = extract_zip(zip_with(tmp_path, "dots.zip", {"..png": good, "c.png": good}), tmp_path / "out4")
    assert any("..png" in n and "skipped" in n for n in notes)
    unsupported = zip_with(tmp_path, "method.zip", {"a.png": good, "b.png": good})
    raw = bytearray(unsupported.read_bytes())
    for header in (0, raw.index(b"PK\x01\x02")):  # compression method 97 (WavPack) in both headers of a.png
        raw[header + (8 if header == 0 else 10)] = 97
    unsupported.write_bytes(bytes(raw))
    notes = extract_zip(unsupported, tmp_path / "out5")
    assert any("compression method" in n for n in notes) and (tmp_path / "out5" / "b.png").exists()
    lying = zip_with(tmp_path, "lies.zip", {"a.png": good, "b.png": good})
    raw = bytearray(lying.read_bytes())
    central = raw.index(b"PK\x01\x02")
    raw[central + 20:central + 28] = (100).to_bytes(4, "little") * 2  # a.png claims 100 bytes, packed and unpacked
    lying.write_bytes(bytes(raw))
    notes = extract_zip(lying, tmp_path / "out6")
    assert any("a.png" in n and "corrupt" in n for n in notes)


def test_the_methods_check_their_own_arguments():
    from methods.distill import soft_label_kd
    from methods.hires import high_resolution
    from weights.loaders import load_generation_pair
    from weights.registry import get_pair

    with pytest.raises(ValueError, match="temperature must be a number in \\(0, 10000\\]"):
        soft_label_kd(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0.0)
    unet = load_generation_pair(get_pair("shapes-diffusion"))["teacher"].unet
    for kwargs, name in (({"num_steps": 0}, "num_steps"), ({"num_steps": 10, "switch_fraction": float("nan")},
                                                          "switch_fraction")):
        with pytest.raises(ValueError, match=name), high_resolution(unet, **kwargs):
            pass


def test_an_image_is_turned_upright_by_its_exif_orientation_and_the_callers_image_is_left_alone(tmp_path):
    """Orientation 6 (turn 90° clockwise to view): a file is read upright; a PIL image passed in is read upright too
    and is not changed (the turning happens in a copy)."""
    from compare.inputs import read_image

    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :30] = 255  # left half white, as stored
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    path = tmp_path / "turned.jpg"
    image.save(path, exif=exif, quality=95)
    from_file, _ = read_image(str(path))
    assert from_file.shape == (60, 40, 3) and from_file[:30].mean() > 200 and from_file[30:].mean() < 50
    given = Image.open(path)
    given.load()
    from_image, _ = read_image(given)
    assert np.array_equal(from_image, from_file)
    assert given.size == (60, 40) and given.getexif().get(0x0112) == 6  # the caller's image as it was
