"""One teacher, several students: the registry, the tabs' students argument and report, the distillation methods'
recipe, and the ADM weights the Analysis tab shows."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from weights.registry import (
    ADM_TRAINING,
    ModelSource,
    Pair,
    Student,
    UnknownStudentError,
    get_pair,
    list_pairs,
    register_pair,
    unregister_pair,
)
from weights.shapes.world import render_scene

SCENE_SEED = 10_000_444


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("students") / "scene.png"
    Image.fromarray(render_scene(SCENE_SEED).image).save(path)
    return path


@pytest.fixture
def two_students():
    """The builtin detection and segmentation pairs with a second student: the teacher itself under another name
    (so its agreement is perfect and the ranking has a known answer)."""
    names = []
    for task in ("detection", "segmentation"):
        base = get_pair(f"shapes-{task}")
        second = Student("teacher-copy", base.teacher, "the teacher itself (a test)")
        names.append(register_pair(dataclasses.replace(base, name=f"two-{task}",
                                                       students=(base.students[0], second))).name)
    yield dict(zip(("detection", "segmentation"), names, strict=True))
    for name in names:
        unregister_pair(name)


def test_every_pair_names_its_students_and_how_they_were_made():
    for pair in list_pairs():
        names = [s.name for s in pair.students]
        assert names and len(names) == len(set(names)) and all(s.method for s in pair.students)
        assert pair.student == pair.students[0].source  # the single-student field stays for one release
        rows = pair.summary()["students"]
        assert [r["name"] for r in rows] == names and all(r["licence"] for r in rows)
    assert [s.name for s in get_pair("rtdetr-r101vd-to-r18vd").students] == ["r18vd", "r34vd"]
    assert [s.name for s in get_pair("segformer-b5-to-b0-ade").students] == ["b0", "b2"]


def test_a_bare_model_source_still_makes_a_one_student_pair():
    pair = Pair("x", "detection", ModelSource("builtin", "a", "ShapesNet", family="shapes"),
                ModelSource("builtin", "b", "ShapesNet", family="shapes"), "MIT")
    assert [s.name for s in pair.students] == ["student"] and pair.student.location == "b"
    with pytest.raises(ValueError, match="distinct names"):
        Pair("y", "detection", pair.teacher, (pair.students[0], pair.students[0]), "MIT")


def test_choosing_students():
    pair = get_pair("shapes-detection")
    first, second = (s.name for s in pair.students[:2])
    assert [s.name for s in pair.choose_students(None)] == [first]
    assert [s.name for s in pair.choose_students("")] == [first]
    assert [s.name for s in pair.choose_students(f" {second} , {first}")] == [second, first]
    assert [s.name for s in pair.choose_students([second, second])] == [second]
    with pytest.raises(UnknownStudentError, match=f"Its students: {first}"):
        pair.choose_students("nobody")
    with pytest.raises(UnknownStudentError, match="at most 2"):
        pair.choose_students([first, second, "third"])
    with pytest.raises(UnknownStudentError, match="names"):
        pair.choose_students([1, 2])


def test_pairs_rows_carry_each_students_parameters():
    from demos.pairs import pairs
    from weights.loaders import load_model

    row = next(r for r in pairs() if r["name"] == "shapes-detection")
    model, _ = load_model(get_pair("shapes-detection").students[0].source)
    assert row["students"][0]["params"] == sum(p.numel() for p in model.parameters())
    assert row["teacher_params"] > 3 * row["students"][0]["params"]
    hub = next(r for r in pairs() if r["name"] == "rtdetr-r101vd-to-r18vd")
    assert [s["params"] for s in hub["students"]] == [None, None]  # not on this machine: nothing is downloaded


def test_detect_with_two_students_ranks_them_and_keeps_the_old_fields(two_students, scene_png):
    from demos.detection import detect, student_detections_image

    teacher_img, student_img, report = detect(str(scene_png), two_students["detection"], 0.3,
                                              students="feature-kd,teacher-copy")
    assert list(report["students"]) == ["feature-kd", "teacher-copy"]
    copy = report["students"]["teacher-copy"]
    assert copy["detections"] == report["teacher"]["detections"] and copy["agreement"]["f1"] == 1.0
    ranked = [r["f1"] for r in report["ranking"]]
    assert ranked == sorted(ranked, reverse=True) and ranked[0] == 1.0  # best first; the copy cannot be beaten
    alone = detect(str(scene_png), "shapes-detection", 0.3)[2]
    assert report["student"]["detections"] == alone["student"]["detections"] == \
        report["students"]["feature-kd"]["detections"]
    assert report["agreement"] == alone["agreement"]
    second = student_detections_image(str(scene_png), report)
    assert np.array_equal(second, teacher_img)  # drawn from the report alone, like the teacher's own boxes
    assert student_detections_image(str(scene_png), alone) is None


def test_segment_with_two_students_saves_each_map(two_students, scene_png):
    from demos.segmentation import segment, student_mask_image

    teacher_img, student_img, report, npz = segment(str(scene_png), two_students["segmentation"],
                                                    ["feature-kd", "teacher-copy"])
    maps = np.load(npz)
    assert np.array_equal(maps["teacher-copy"], maps["teacher"])
    assert np.array_equal(maps["student"], maps["feature-kd"])
    assert report["students"]["teacher-copy"]["agreement"]["miou"] == 1.0
    assert report["ranking"][0]["name"] == "teacher-copy" and report["ranked_by"] == "miou"
    assert report["ranking"][1]["miou"] < 1.0
    assert np.array_equal(student_mask_image(str(scene_png), report, npz), teacher_img)


def test_unknown_students_are_refused_with_the_choices(scene_png):
    from demos.detection import detect

    with pytest.raises(UnknownStudentError, match="feature-kd"):
        detect(str(scene_png), "shapes-detection", 0.3, students="ghost")


def test_adm_training_settings_match_the_recipe():
    from weights.shapes.train_nets import ADM_TAU, KD_STAGES

    strides = tuple(2 ** (stage + 1) for stage in KD_STAGES)  # stage i of ShapesNet has stride 2^(i+1)
    assert ADM_TRAINING == {"strides": strides, "tau": ADM_TAU}


def test_the_registry_states_the_recipes_step_budgets():
    from weights.registry import ONLINE_RECIPE_BUDGET, RECIPE_BUDGET
    from weights.shapes.train_nets import ONLINE_STEPS, STEPS

    assert RECIPE_BUDGET.startswith(f"{STEPS:,} steps") and ONLINE_RECIPE_BUDGET.startswith(f"{ONLINE_STEPS:,} steps")


def test_the_analysis_shows_the_weights_adm_trains_toward(monkeypatch):
    """The consensus map the Analysis tab draws is, location by location, the weight ADM's student loss uses."""
    from analysis.consensus import analyse_stages
    from methods.distill import adm_feature_losses

    torch.manual_seed(0)
    teacher = torch.randn(2, 24, 8, 8)
    student = teacher[:, :16] + 0.3 * torch.randn(2, 16, 8, 8)
    adapted = torch.nn.Conv2d(16, 24, 1)(student)
    tau = ADM_TRAINING["tau"]
    result = analyse_stages([(teacher[:1], student[:1])], ["affinity"], torch.ones(1, 8, 8, dtype=torch.bool),
                            tau, (8, 8), [teacher[:1]], [student[:1]])
    shown = result.weights[0, 0, 0]  # stage 0, image 0, consensus; rescaled for display to [0, 1]

    import analysis.consensus as consensus

    captured, original = {}, consensus.consensus_weights

    def spy(similarity, t):
        captured["weights"] = original(similarity, t)
        return captured["weights"]

    monkeypatch.setattr(consensus, "consensus_weights", spy)
    adm_feature_losses(adapted[:1], teacher[:1], tau, student_features=student[:1])
    trained = captured["weights"][0]
    trained = (trained - trained.min()) / (trained.max() - trained.min())
    shown = (shown - shown.min()) / (shown.max() - shown.min())
    torch.testing.assert_close(shown, trained, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["output-kd", "feature-kd", "adm-consensus", "online-adm"])
def test_each_method_trains_and_saves_half_precision_checkpoints(method, tmp_path):
    from weights.shapes.checkpoints import load_checkpoint
    from weights.shapes.train_nets import comparison_name, train

    path = train("segmentation", "student", steps=2, batch_size=2, pool_size=4, method=method, out=tmp_path,
                 half=True, log_every=1)
    assert path.name == comparison_name("segmentation", "student", method, 0)
    model = load_checkpoint(path)
    assert next(model.parameters()).dtype == torch.float32
    teacher = tmp_path / comparison_name("segmentation", "teacher", method, 0)
    assert teacher.exists() == (method == "online-adm")


def test_the_analysis_tab_says_where_an_adm_student_was_trained_toward(scene_png):
    from demos.analysis_tab import consensus

    overlays, report = consensus(str(scene_png), "shapes-segmentation", 0.1, "affinity", "adm-consensus")
    marked = [caption for _, caption in overlays if caption.endswith("ADM training weights")]
    assert [c.split(" · ")[1] for c in marked] == ["stride 8", "stride 16"]
    assert all(c.startswith("consensus") for c in marked)
    assert report["students"]["adm-consensus"]["adm_training"]["equal"]
    assert any("are the weights that loss gives" in n for n in report["notes"])
    _, other = consensus(str(scene_png), "shapes-segmentation", 0.5, "affinity", "adm-consensus")
    assert not other["students"]["adm-consensus"]["adm_training"]["equal"]
    assert any("choose the affinity similarity and τ = 0.1" in n for n in other["notes"])
    _, plain = consensus(str(scene_png), "shapes-segmentation", 0.1, "affinity", "feature-kd")
    assert plain["students"]["feature-kd"]["adm_training"] is None


def test_annotated_views_show_the_reports_boxes_and_masks_from_files_of_their_own(scene_png):
    """The Detection and Segmentation panels (gr.AnnotatedImage) are drawn from the call's report and class maps,
    in the drawn panels' colours, and every layer is written to a file of its own: Gradio's AnnotatedImage would
    write identical layers of two users to one content-hash path."""
    from compare.drawing import display_scale, palette
    from compare.inputs import read_image
    from demos.components import AnnotatedResult, annotated_update
    from demos.detection import detect, detection_annotations
    from demos.segmentation import segment, segmentation_annotations

    _, _, report = detect(str(scene_png), "shapes-detection", 0.3, "feature-kd, adm-consensus")
    scale = display_scale(*read_image(str(scene_png))[0].shape[:2])
    for position, side in ((None, report["teacher"]), (1, report["students"]["adm-consensus"])):
        base, annotations = detection_annotations(str(scene_png), report, position)
        assert [a[1] for a in annotations] == [f"{d['label']} {d['score']:.2f}" for d in side["detections"]]
        assert [a[0] for a in annotations] == [tuple(v * scale for v in d["box"]) for d in side["detections"]]
    assert detection_annotations(str(scene_png), report, 2) is None
    value = detection_annotations(str(scene_png), report, None)
    first, second = AnnotatedResult().postprocess(value), AnnotatedResult().postprocess(value)
    assert first.image.path != second.image.path and len(first.annotations) == len(value[1])
    assert {a.image.path for a in first.annotations}.isdisjoint(a.image.path for a in second.annotations)

    _, _, report, npz = segment(str(scene_png), "shapes-segmentation")
    base, annotations = segmentation_annotations(str(scene_png), report, npz, 0)
    with np.load(npz) as maps:
        student = maps[next(iter(report["students"]))]
    present = sorted(int(c) for c in np.unique(student) if c != 0)
    assert [a[1] for a in annotations] == [report["classes"][c] for c in present]
    colours = palette(len(report["classes"]))
    assert annotated_update((base, annotations))["color_map"] == {
        report["classes"][c]: "#{:02x}{:02x}{:02x}".format(*colours[c]) for c in present}
    covered = sum(a[0].sum() for a in annotations) / (base.shape[0] * base.shape[1])
    assert abs(covered - (student != 0).mean()) < 0.01  # the masks cover the student's non-background pixels


def test_the_annotated_views_read_the_image_once_and_survive_a_cleared_image(scene_png):
    from demos.detection import detect, detection_annotations
    from demos.widgets import annotated_views_update

    _, _, report = detect(str(scene_png), "shapes-detection", 0.3, "feature-kd, adm-consensus")
    arrays = []

    def value_of(array, position):
        arrays.append(array)
        return detection_annotations(array, report, position)

    teacher, first, second = annotated_views_update(str(scene_png), report, value_of)
    assert len(arrays) == 3 and all(a is arrays[0] for a in arrays)  # one read for all three panels
    assert teacher["value"] is not None and second["visible"] and second["label"] == "Student: adm-consensus"
    cleared = annotated_views_update(None, report, value_of)  # the user cleared the image after the run
    assert [u["value"] for u in cleared] == [None] * 3 and len(arrays) == 3


def test_the_ranking_table_says_when_a_latency_was_timed_while_other_calls_ran():
    from demos.widgets import ranking_markdown

    block = {"latency_ms": 4.0, "latency_iqr_ms": 0.4, "runs": 5, "params": 1e6, "gflops": 0.1}
    report = {"ranked_by": "f1", "teacher": {**block, "latency_alone": True},
              "students": {"s": {**block, "latency_alone": False}}, "ranking": [{"rank": 1, "name": "s", "f1": 0.9}]}
    teacher_row, student_row = ranking_markdown(report).splitlines()[2:]
    assert "other requests ran" in student_row and "other requests ran" not in teacher_row
