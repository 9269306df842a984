"""The computation behind the tabs, called without Gradio, on builtin and tiny Hub pairs, and on bad input."""

import numpy as np
import pytest
from PIL import Image

from compare.inputs import InputError, read_image
from demos.detection import detect
from demos.segmentation import segment
from weights.registry import UnknownPairError
from weights.shapes.world import render_scene

SCENE_SEED = 10_000_321


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(render_scene(SCENE_SEED).image).save(path)
    return path


def test_detect_reports_both_sides_in_input_pixels(scene_png):
    teacher_img, student_img, report = detect(str(scene_png), "shapes-detection", 0.3)
    assert teacher_img.shape == student_img.shape and teacher_img.shape[2] == 3
    for role in ("teacher", "student"):
        side = report[role]
        assert side["params"] > 0 and side["gflops"] > 0 and side["latency_ms"] > 0
        for d in side["detections"]:
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128 and d["score"] >= 0.3
    assert report["teacher"]["params"] > 3 * report["student"]["params"]
    assert report["agreement"]["matched"] + report["agreement"]["missed"] == len(report["teacher"]["detections"])


def test_boxes_follow_the_input_size(scene_png, tmp_path):
    """The same scene at twice the size gives boxes twice as large, in that image's pixels."""
    big = tmp_path / "big.png"
    Image.open(scene_png).resize((256, 256), Image.Resampling.NEAREST).save(big)
    small_boxes, big_boxes = (
        np.array([d["box"] for d in detect(str(path), "shapes-detection", 0.3)[2]["teacher"]["detections"]])
        for path in (scene_png, big))
    assert len(small_boxes) == len(big_boxes) > 0
    order = lambda b: b[np.lexsort(b.T[::-1])]  # noqa: E731
    np.testing.assert_allclose(order(big_boxes), 2 * order(small_boxes), atol=4)


def test_segment_returns_maps_at_the_input_size(scene_png):
    teacher_img, student_img, report, npz = segment(str(scene_png), "shapes-segmentation")
    maps = np.load(npz)
    assert set(maps.files) == {"teacher", "student", "feature-kd"}  # "student": the first, kept for one release
    assert maps["teacher"].shape == maps["student"].shape == (128, 128)
    assert report["classes"][0] == "background" and len(report["classes"]) == 6
    agreement = report["agreement"]
    assert 0 <= agreement["miou"] <= 1
    assert agreement["pixel_agreement"] == pytest.approx((maps["teacher"] == maps["student"]).mean(), abs=1e-4)


def test_hub_pairs_run_through_the_same_code(tiny_hub_pairs, scene_png):
    _, _, report = detect(str(scene_png), tiny_hub_pairs["detection"], 0.0)
    assert report["teacher"]["detections"] and report["teacher"]["params"] > report["student"]["params"]
    assert {d["label"] for d in report["teacher"]["detections"]} <= {"person", "cat", "cup"}
    _, _, report, npz = segment(str(scene_png), tiny_hub_pairs["segmentation"])
    assert np.load(npz)["teacher"].shape == (128, 128)
    assert report["classes"] == ["wall", "person", "cat", "cup"]


# Bad input: every case gets a clear message or a handled result.

def _save(tmp_path, name, image, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return str(path)


def test_corrupt_and_non_image_files_are_refused(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 100)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    for path in (corrupt, text):
        with pytest.raises(InputError, match="Could not read the file as an image"):
            detect(str(path), "shapes-detection")


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "CMYK", "P", "LA", "1"])
def test_any_image_mode_becomes_rgb(tmp_path, mode):
    rgb = Image.fromarray(render_scene(SCENE_SEED).image)
    image = rgb.convert(mode) if mode != "I;16" else Image.fromarray(
        (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    path = _save(tmp_path, f"img.{'tif' if mode in ('CMYK', 'I;16') else 'png'}", image)
    array, notes = read_image(path)
    assert array.shape == (128, 128, 3) and array.dtype == np.uint8
    assert any("RGB" in n for n in notes)
    if mode == "I;16":  # 16-bit is rescaled, not clipped to white
        assert abs(int(array.mean()) - int(np.asarray(rgb.convert("L")).mean())) <= 2
    assert detect(path, "shapes-detection")[2]["pair"] == "shapes-detection"


def test_a_one_pixel_image_is_refused(tmp_path):
    path = _save(tmp_path, "dot.png", Image.new("RGB", (1, 1)))
    with pytest.raises(InputError, match="1×1"):
        segment(path, "shapes-segmentation")


def test_a_panorama_is_handled(tmp_path):
    path = _save(tmp_path, "pano.png", Image.new("RGB", (10000, 200), (120, 130, 140)))
    teacher_img, _, report = detect(path, "shapes-detection")
    assert any("Downscaled from 10000×200" in n for n in report["notes"])
    assert any("aspect ratio" in n for n in report["notes"])
    _, _, seg_report, npz = segment(path, "shapes-segmentation")
    assert np.load(npz)["teacher"].shape == (41, 2048)


def test_a_40_megapixel_photo_is_downscaled_with_a_note(tmp_path):
    photo = Image.fromarray(render_scene(SCENE_SEED, 512, 512).image).resize((7300, 5480))
    path = _save(tmp_path, "big.jpg", photo, quality=70)
    _, _, report = detect(path, "shapes-detection")
    assert any("Downscaled from 7300×5480 to 2048×1537" in n for n in report["notes"])
    assert all(b <= 2048 for d in report["teacher"]["detections"] for b in d["box"])


def test_unknown_pair_and_bad_threshold(scene_png):
    with pytest.raises(UnknownPairError, match="Choose one of"):
        detect(str(scene_png), "../../etc/passwd")
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        detect(str(scene_png), "shapes-detection", 1.5)
    with pytest.raises(InputError, match="No image"):
        segment(None, "shapes-segmentation")


def test_a_huge_image_is_refused_from_its_header_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (12_000, 12_000)).save(path)  # 144 MP, a few kB on disk
    with pytest.raises(InputError, match="12,000×12,000 pixels"):
        read_image(str(path))


def test_disagreement_maps_show_what_the_student_misses_adds_and_mislabels(scene_png, tmp_path):
    from demos.detection import EXTRA, MISSED, disagreement_image
    from demos.segmentation import disagreement_image as segmentation_disagreement

    box = {"label": "circle", "score": 0.9, "box": [10.0, 10.0, 40.0, 40.0]}
    other = {"label": "star", "score": 0.8, "box": [70.0, 70.0, 100.0, 100.0]}
    report = {"teacher": {"detections": [box]},
              "students": {"s": {"detections": [other], "agreement": {"iou_threshold": 0.5}}}}
    drawn = disagreement_image(str(scene_png), report)
    colours = {tuple(c) for c in drawn.reshape(-1, 3)}
    assert MISSED in colours and EXTRA in colours  # the teacher's circle is missed, the student's star is extra
    report["students"]["s"]["detections"] = [box]
    assert MISSED not in {tuple(c) for c in disagreement_image(str(scene_png), report).reshape(-1, 3)}

    teacher = np.zeros((128, 128), np.int32)
    student = teacher.copy()
    student[:10, :10] = 2  # the student paints a corner the teacher calls background
    teacher[50:60, 50:60] = 3  # and misses a patch the teacher labels
    np.savez(tmp_path / "maps.npz", teacher=teacher, s=student)
    classes = ["background", "circle", "square", "triangle", "star", "cross"]
    drawn = segmentation_disagreement(str(scene_png), {"classes": classes, "students": {"s": {}}},
                                      str(tmp_path / "maps.npz"))
    scale = drawn.shape[0] // 128
    from compare.drawing import palette

    assert tuple(drawn[55 * scale, 55 * scale]) == palette(6)[3]  # in the teacher's class colour
    assert tuple(drawn[5 * scale, 5 * scale]) == palette(6)[0]  # the teacher's background, where they differ
    assert tuple(drawn[100 * scale, 100 * scale]) != palette(6)[0]  # agreeing pixels: the dimmed image
