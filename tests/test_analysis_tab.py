"""The Analysis tab's computations on builtin and tiny Hub pairs, and their bad-input messages."""

import pytest
from PIL import Image

from compare.inputs import InputError
from demos.analysis_tab import attention, consensus
from weights.shapes.world import render_scene


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("analysis") / "scene.png"
    Image.fromarray(render_scene(10_000_555, 128, 160).image).save(path)
    return str(path)


@pytest.mark.parametrize("pair", ["shapes-detection", "shapes-segmentation"])
def test_consensus_on_builtin_pairs(scene_png, pair):
    overlays, report = consensus(scene_png, pair, 0.1)
    assert [s["stride"] for s in report["stages"]] == [2, 4, 8, 16]
    assert len(overlays) == 8 and overlays[0][0].shape[2] == 3 and "consensus" in overlays[0][1]
    for stage in report["stages"]:
        assert -1 <= stage["consensus_mean"] <= 1 and 0 <= stage["energy_foreground_teacher"] <= 1
    matrix = report["cka"]["matrix"]
    assert len(matrix) == len(report["cka"]["teacher_layers"]) == 4 and len(matrix[0]) == 4
    assert all(0 <= v <= 1.0001 for row in matrix for v in row)


def test_projection_falls_back_where_locations_are_too_few(scene_png):
    _, report = consensus(scene_png, "shapes-detection", 0.5, "projection")
    methods = [s["method"] for s in report["stages"]]
    assert methods[0] == "projection" and methods[-1] == "affinity"
    assert any("too few" in n for n in report["notes"])


def test_consensus_on_hub_pairs(scene_png, tiny_hub_pairs):
    _, report = consensus(scene_png, tiny_hub_pairs["segmentation"], 0.1)
    assert [s["stride"] for s in report["stages"]] == [4, 8]
    _, report = consensus(scene_png, tiny_hub_pairs["detection"], 0.1)
    assert [s["stride"] for s in report["stages"]] == [8, 16, 32]


def test_attention_for_the_same_target(scene_png, tiny_hub_pairs):
    *images, report = attention(scene_png, "shapes-detection", "0")
    assert report["target"]["kind"] == "box" and report["method"]["teacher"].startswith("Grad-CAM")
    assert len({im.shape for im in images}) == 1
    *_, report = attention(scene_png, "shapes-segmentation", "")
    assert report["target"]["kind"] == "segment" and report["target"]["label"] != "background"
    *_, report = attention(scene_png, tiny_hub_pairs["detection"], "")
    assert report["method"] == {"teacher": "deformable sampling points", "student": "deformable sampling points"}
    *_, report = attention(scene_png, tiny_hub_pairs["segmentation"], "")
    assert report["method"]["student"].startswith("Grad-CAM")


@pytest.mark.parametrize("kwargs, message", [
    ({"tau": 0}, "tau"), ({"tau": "warm"}, "tau"), ({"method": "magic"}, "method"),
    ({"pair": "nope"}, "Choose one of"),
])
def test_bad_consensus_input(scene_png, kwargs, message):
    with pytest.raises(ValueError, match=message):
        consensus(scene_png, **{"pair": "shapes-segmentation", **kwargs})


@pytest.mark.parametrize("pair, target, message", [
    ("shapes-detection", "500", "out of range"), ("shapes-detection", "unicorn", "found no 'unicorn'"),
    ("shapes-segmentation", "unicorn", "Unknown class"),
])
def test_bad_attention_target(scene_png, pair, target, message):
    with pytest.raises(InputError, match=message):
        attention(scene_png, pair, target)


def test_the_verdict_counts_the_stages_that_show_each_finding():
    from demos.analysis_tab import verdict

    stage = {"consensus_foreground": 0.8, "consensus_background": 0.5, "energy_foreground_teacher": 0.3,
             "energy_foreground_student": 0.4}
    line = verdict([stage, stage | {"consensus_foreground": 0.1}])
    assert "background: holds in part (1 of 2 stages)" in line and "student's: fails (0 of 2 stages)" in line
    assert "no foreground" in verdict([dict.fromkeys(stage)])


def test_the_visible_notes_say_when_a_result_means_little(scene_png, tmp_path):
    """A low-score attention target and a builtin pair on an image far larger than a Shapes scene each get a note on
    the result (the summary shows the notes), and neither note appears where it does not apply."""
    import numpy as np
    from PIL import Image

    from compare.vision import BUILTIN_ON_OTHER_IMAGES
    from demos.detection import run_detection

    *_, best = attention(scene_png, "shapes-detection", "0")
    *_, faint = attention(scene_png, "shapes-detection", "40")  # a candidate far below the shown boxes
    assert faint["target"]["score"] < 0.3 and any("scores only" in n for n in faint["notes"])
    assert best["target"]["score"] >= 0.3 and not any("scores only" in n for n in best["notes"])
    photo = tmp_path / "photo.png"
    Image.fromarray(np.asarray(Image.open(scene_png).convert("RGB").resize((400, 300)))).save(photo)
    *_, on_photo, _ = run_detection(str(photo), "shapes-detection", 0.3)
    *_, on_scene, _ = run_detection(scene_png, "shapes-detection", 0.3)
    assert BUILTIN_ON_OTHER_IMAGES in on_photo["notes"] and BUILTIN_ON_OTHER_IMAGES not in on_scene["notes"]
