"""The engine (``compare/``): the same reports as before it, one forward per model per request, batching, latency
from a cache, your own modules and the model families."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import compare
from compare.counting import count_forwards, stem_of
from compare.latency import LATENCY
from weights.predictors import predictors_for
from weights.registry import get_pair
from weights.shapes.world import render_scene

FIXTURES = Path(__file__).parent / "fixtures"
ADDED = {"latency_cached", "this_run_ms", "gflops",  # figures the engine adds (/classify had no FLOPs before)
         "latency_alone",  # whether a latency was timed with no other call running (session 15)
         "chance", "estimator", "consensus_chance", "locations",
         "consensus_chance_foreground", "consensus_chance_background"}  # chance levels beside per-image figures (#30)
# Deliberate changes since the reference: per-image CKA uses the unbiased HSIC estimator (#30, session 9), whose
# values differ from the biased estimator's; everything else must be equal.
CHANGED = ("/cka/matrix",)
RECOLOURED = ("consensus-overlays/", "attention-maps/")  # heat maps in Viridis since #25 (Turbo before): new means
ADDED_NOTES = ("Few locations at", "feature-kd: Few locations at", "adm-consensus: Few locations at")  # (#30)


def same_or_added(old, new, path: str = "") -> list[str]:
    """Where ``new`` departs from ``old``: every value equal (a float to its 4th decimal or 1e-4 of it: the analysis
    may sum in another order), except keys the engine adds and figures that were undefined (None) before and are
    measured now."""
    if path.endswith(CHANGED):
        return []
    if path.endswith("/notes") and isinstance(old, list) and isinstance(new, list):
        return [f"{path}: {n!r} missing" for n in old if n not in new] + [
            f"{path}: {n!r} new" for n in new if n not in old and not n.startswith(ADDED_NOTES)]
    if isinstance(old, dict):
        problems = [f"{path}/{k}: missing" for k in old if k not in new]
        problems += [f"{path}/{k}: new key" for k in new if k not in old and k not in ADDED]
        return problems + [p for k in old if k in new for p in same_or_added(old[k], new[k], f"{path}/{k}")]
    if isinstance(old, list):
        if len(old) != len(new):
            return [f"{path}: {len(old)} items, now {len(new)}"]
        return [p for i, (a, b) in enumerate(zip(old, new, strict=True)) for p in same_or_added(a, b, f"{path}[{i}]")]
    if old is None and isinstance(new, (int, float)):
        return []
    if isinstance(old, float) and isinstance(new, float):  # float32 sums in another order: the last digit may move
        return [] if math.isclose(old, new, rel_tol=1e-4, abs_tol=1.5e-4) else [f"{path}: {old!r} -> {new!r}"]
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def test_the_endpoints_give_the_reports_of_the_code_before_the_engine():
    from tests.fixtures.make_engine_reference import reference_reports

    before = json.loads((FIXTURES / "engine_reference.json").read_text())
    now = reference_reports()
    assert sorted(now) == sorted(before)
    for key in [k for k in before if k.startswith(RECOLOURED)]:  # as many pictures; their colours are new
        assert len(now.pop(key)) == len(before.pop(key)), key
    assert {key: same_or_added(before[key], now[key])[:3] for key in before if same_or_added(before[key], now[key])} \
        == {}


def test_the_comparison_test_sees_a_changed_figure():
    assert same_or_added({"a": [1.0, {"b": 2}]}, {"a": [1.0, {"b": 3}]}) == ["/a[1]/b: 2 -> 3"]
    assert same_or_added({"a": None}, {"a": 0.5, "this_run_ms": 1.0}) == []
    assert same_or_added({"a": 1}, {"a": 1, "surprise": 2}) == ["/surprise: new key"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("engine") / "scene.png"
    Image.fromarray(render_scene(10_000_123).image).save(path)
    return str(path)


def models_of(pair: str, students: str) -> dict[str, torch.nn.Module]:
    spec = get_pair(pair)
    return {name: p.model for name, p in predictors_for(spec, students=spec.choose_students(students)).items()}


ENDPOINTS = {
    "/detect": ("shapes-detection", lambda img, s: __import__("demos.detection").detection.detect(
        img, "shapes-detection", 0.3, s)),
    "/segment": ("shapes-segmentation", lambda img, s: __import__("demos.segmentation").segmentation.segment(
        img, "shapes-segmentation", s)),
    "/consensus": ("shapes-segmentation", lambda img, s: __import__("demos.analysis_tab").analysis_tab.consensus(
        img, "shapes-segmentation", 0.1, "affinity", s)),
    "/attention": ("shapes-detection", lambda img, s: __import__("demos.analysis_tab").analysis_tab.attention(
        img, "shapes-detection", "", s)),
    "/classify": ("shapes-clip", lambda img, s: __import__("demos.classification").classification.classify(
        img, "shapes-clip", "circle, square, triangle, star, cross", "", "", s)),
}


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_each_model_runs_once_per_request(endpoint, scene):
    pair, call = ENDPOINTS[endpoint]
    students = {"shapes-clip": "clip-kd,narrow-captions"}.get(pair, "feature-kd,adm-consensus")
    if endpoint == "/attention":
        students = "adm-consensus"  # one student is explained
    image = scene if pair != "shapes-clip" else "demos/examples/single_0.png"
    call(image, students)  # the latency cache is warm after the first request
    with count_forwards(models_of(pair, students)) as counts:
        call(image, students)
    assert dict(counts) == dict.fromkeys(["teacher", *students.split(",")], 1)


def test_the_page_runs_each_model_once_for_boxes_and_the_consensus_overlay(scene):
    from demos.detection import run_detection

    run_detection(scene, "shapes-detection", 0.3, "feature-kd", overlay=True)
    with count_forwards(models_of("shapes-detection", "feature-kd")) as counts:
        *_, overlay = run_detection(scene, "shapes-detection", 0.3, "feature-kd", overlay=True)
    assert dict(counts) == {"teacher": 1, "feature-kd": 1} and overlay.shape[2] == 3


@pytest.mark.parametrize("pair", ["shapes-detection", "shapes-segmentation"])
def test_the_dataset_report_runs_each_model_once_per_image(pair, tmp_path):
    from reports.dataset import run_dataset

    images = []
    for i in range(4):
        images.append(tmp_path / f"scene_{i}.png")
        Image.fromarray(render_scene(10_000_200 + i).image).save(images[-1])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with count_forwards(models_of(pair, "feature-kd")) as counts:
        summary = run_dataset(sorted([*images, tmp_path / "broken.png"]), pair, tmp_path / "out", "feature-kd",
                              gallery=2)
    assert dict(counts) == {"teacher": 4, "feature-kd": 4}  # gallery pictures come from records or kept maps
    assert summary["images"] == 4 and len(summary["unreadable"]) == 1
    assert "<img" in (tmp_path / "out" / "report.html").read_text()


def test_the_forward_counter_counts_images_through_any_path():
    model = get_pair("shapes-detection")
    net = predictors_for(model)["teacher"].model
    x = torch.randn(3, 3, 64, 64)
    with count_forwards({"net": net}) as counts, torch.no_grad():
        net(x)
        net.forward_intermediates(x[:1])
    assert counts["net"] == 4 and stem_of(net) is next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert not stem_of(net)._forward_pre_hooks  # removed on exit


def test_latency_comes_from_a_cache_measured_once(scene):
    LATENCY.clear()
    first = compare.detect(scene, "shapes-detection", 0.3, "feature-kd")
    second = compare.detect(scene, "shapes-detection", 0.3, "feature-kd")
    for name in ("teacher", "feature-kd"):
        a, b = first.profiles[name], second.profiles[name]
        assert a.latency_cached is False and b.latency_cached is True and a.runs >= 1
        assert (a.latency_ms, a.runs, a.gflops) == (b.latency_ms, b.runs, b.gflops) and a.gflops > 0
        assert b.this_run_ms > 0
    assert compare.detect(scene, "shapes-detection", latency=False).profiles["teacher"].latency_ms is None


def test_a_latency_timed_while_another_call_ran_is_timed_again_when_the_process_is_idle():
    """A figure timed while another call ran in the process is kept as provisional (``alone`` False): served while
    others still run, timed again by the first call that finds none, and from then on served from the cache."""
    import threading

    from compare.latency import Activity, LatencyCache

    activity = Activity()
    cache = LatencyCache(activity=activity)
    forwards = []
    inside, leave = threading.Event(), threading.Event()

    def other_call():
        with activity.running():
            inside.set()
            leave.wait(10)

    other = threading.Thread(target=other_call)
    other.start()
    inside.wait(10)
    with activity.running():  # this call, while the other runs
        first, cached = cache.measure("model", lambda: forwards.append(1), torch.device("cpu"))
        assert not first.alone and not cached and forwards
        timed = len(forwards)
        again, cached = cache.measure("model", lambda: forwards.append(1), torch.device("cpu"))
        assert cached and again == first and len(forwards) == timed  # the other still runs: no new timing
    leave.set()
    other.join()
    with activity.running():  # alone now: timed again, then reused
        second, cached = cache.measure("model", lambda: forwards.append(1), torch.device("cpu"))
        assert second.alone and not cached and len(forwards) > timed
        third, cached = cache.measure("model", lambda: forwards.append(1), torch.device("cpu"))
        assert cached and third == second
    # a call that starts while one is being timed makes that timing provisional too
    cache.clear()

    calls = []

    def forward_while_another_call_comes_and_goes():
        calls.append(1)
        if len(calls) == 3:  # during the timed forwards: a call in another thread starts and ends
            brief = threading.Thread(target=other_call)  # ``leave`` is set: it leaves at once
            brief.start()
            brief.join()

    assert not cache.measure("late", forward_while_another_call_comes_and_goes, torch.device("cpu"))[0].alone


def test_images_run_as_one_batch_give_what_each_gives_alone(scene):
    images = [render_scene(10_000_300 + i).image for i in range(3)]
    batched = compare.compare("shapes-detection", images, "feature-kd", latency=False)
    alone = [compare.compare("shapes-detection", image, "feature-kd", latency=False)[0] for image in images]
    with count_forwards(models_of("shapes-detection", "feature-kd")) as counts:
        compare.compare("shapes-detection", images, "feature-kd", latency=False)
    assert dict(counts) == {"teacher": 3, "feature-kd": 3}
    for b, a in zip(batched, alone, strict=True):
        for name in ("teacher", "feature-kd"):
            assert [d.label for d in b.detections[name]] == [d.label for d in a.detections[name]]
            np.testing.assert_allclose([d.box for d in b.detections[name]], [d.box for d in a.detections[name]],
                                       atol=1e-3)
        assert b.agreement == a.agreement


def test_images_prepared_together_are_each_as_prepared_alone():
    """The builtin family prepares images of one size as one batch: each image's pixels (values, shape) and geometry
    are those it gets alone, whatever the mix of sizes, and a batch of one size goes to the model without a copy."""
    from compare.vision import batches
    from weights.families.shapes import builtin_pixels
    from weights.shapes.nets import IMAGE_MEAN, IMAGE_STD

    spec = get_pair("shapes-detection")
    predictor = predictors_for(spec, students=spec.choose_students(None))["teacher"]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in
              [(128, 128, 3), (100, 150, 3), (128, 128, 3), (300, 200, 3), (100, 150, 3)]]
    for image, (inputs, geometry) in zip(images, predictor.prepare_many(images), strict=True):
        alone, alone_geometry = builtin_pixels(image, spec.preprocessing)
        assert torch.equal(inputs["pixel_values"], alone) and geometry == alone_geometry
    raw = torch.from_numpy(images[0]).permute(2, 0, 1).float()[None]  # the normalisation as its definition writes it
    expected = (raw / 255.0 - torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    assert torch.equal(builtin_pixels(images[0], spec.preprocessing)[0], expected)
    from weights.shapes.nets import normalise

    given = torch.full((1, 4, 4, 3), 255.0)
    normalise(given)
    assert torch.equal(given, torch.full((1, 4, 4, 3), 255.0))  # never written into, float input included
    same_size = predictor.prepare_many(images[:1] * 4)
    (indices, batch), = batches(same_size)
    assert indices == [0, 1, 2, 3] and batch["pixel_values"].data_ptr() == same_size[0][0]["pixel_values"].data_ptr()


def test_a_tensor_batch_is_taken_as_images():
    images = np.stack([render_scene(10_000_400 + i).image for i in range(2)])
    as_uint8 = torch.from_numpy(images).permute(0, 3, 1, 2)
    from_tensor = compare.compare("shapes-segmentation", as_uint8, latency=False)
    from_float = compare.compare("shapes-segmentation", as_uint8.float() / 255, latency=False)
    from_list = compare.compare("shapes-segmentation", list(images), latency=False)
    assert [r.to_json()["agreement"] for r in from_tensor] == [r.to_json()["agreement"] for r in from_list] \
        == [r.to_json()["agreement"] for r in from_float]
    with pytest.raises(compare.InputError, match=r"\(B, 3, H, W\)"):
        compare.compare("shapes-segmentation", torch.zeros(2, 1, 8, 8))


class TinySegmenter(torch.nn.Module):
    def __init__(self, width: int, classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.layer1 = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, 2, 1), torch.nn.ReLU())
        self.layer2 = torch.nn.Sequential(torch.nn.Conv2d(width, width, 3, 2, 1), torch.nn.ReLU())
        self.head = torch.nn.Conv2d(width, classes, 1)

    def forward(self, x):
        return self.head(self.layer2(self.layer1(x)))


def test_your_own_modules_compare_like_a_registered_pair():
    labels = ["background", "thing", "other"]
    pair = compare.ModulePair(TinySegmenter(16), {"small": TinySegmenter(8, seed=1), "tiny": TinySegmenter(4, seed=2)},
                              compare.TaskAdapter("segmentation", labels))
    images = [render_scene(10_000_500).image, render_scene(10_000_501, 96, 128).image]
    results = compare.compare(pair, images, consensus=True)
    assert [tuple(r.class_maps["teacher"].shape) for r in results] == [(128, 128), (96, 128)]
    report = results[0].to_json()
    assert set(report["students"]) == {"small", "tiny"} and report["students"]["small"]["source"] == "module"
    assert 0 <= report["agreement"]["miou"] <= 1 and report["teacher"]["params"] > 0
    assert [s["stride"] for s in results[0].analysis.to_json()["stages"]] == [2, 4]  # found by hooks
    with count_forwards({"teacher": pair.teacher, **pair.students}) as counts:
        compare.compare(pair, images, consensus=True, latency=False)
    assert dict(counts) == {"teacher": 2, "small": 2, "tiny": 2}


def test_your_own_classifier_and_detector():
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                     torch.nn.Linear(4, 3))
    adapter = compare.TaskAdapter("classification", ["cat", "dog", "cup"])
    [result] = compare.compare(compare.ModulePair(classifier, classifier, adapter), render_scene(1).image)
    assert result.agreement["student"] == {"top1_match": True, "kl": 0.0, "js": 0.0, "spearman": 1.0,
                                           "top5_overlap": 1.0}
    assert abs(float(result.probs["teacher"].sum()) - 1) < 1e-4 and len(result.to_json()["teacher"]["top5"]) == 3

    class Detector(torch.nn.Module):
        def __init__(self, shift: float):
            super().__init__()
            self.conv, self.shift = torch.nn.Conv2d(3, 1, 1), shift

        def forward(self, x):  # one box per image, in the input's pixels
            self.conv(x)
            box = torch.tensor([[10.0, 10.0, 30.0 + self.shift, 30.0]])
            return [{"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])} for _ in x]

    half_size = compare.TaskAdapter("detection", ["thing", "other"], preprocess=lambda image: torch.nn.functional.
                                    interpolate(compare.modules.default_preprocess(image), scale_factor=0.5))
    [result] = compare.compare(compare.ModulePair(Detector(0), Detector(10), half_size), render_scene(2).image)
    assert result.detections["teacher"][0].box == [20.0, 20.0, 60.0, 60.0]  # back in the image's pixels
    assert result.agreement["student"]["matched"] == 1 and result.detections["student"][0].label == "other"


def test_a_timm_classifier_loads_from_a_folder_through_its_family(tmp_path):
    import timm
    from timm.models import save_for_hf

    from weights.families import ModelUnavailableError
    from weights.registry import ModelSource, Pair

    folders = []
    for seed, name in ((0, "teacher"), (1, "student")):
        torch.manual_seed(seed)
        model = timm.create_model("test_resnet", num_classes=4)
        save_for_hf(model, str(tmp_path / name), model_config={"label_names": ["a", "b", "c", "d"]},
                               safe_serialization=True)
        folders.append(tmp_path / name)
    sources = [ModelSource("hub", str(f), "timm", family="timm") for f in folders]
    pair = Pair("tiny-timm", "image-classification", sources[0], sources[1], "test only")
    [result] = compare.compare(pair, render_scene(3).image)
    assert result.classes == ["a", "b", "c", "d"] and set(result.probs) == {"teacher", "student"}
    assert result.profiles["teacher"].params == sum(p.numel() for p in timm.create_model(
        "test_resnet", num_classes=4).parameters())
    pickled = tmp_path / "pickled"  # a folder with only pickled weights is refused, not read
    pickled.mkdir()
    (pickled / "config.json").write_text((folders[1] / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"pickled weights are never read")
    with pytest.raises(ModelUnavailableError, match="model.safetensors"):
        compare.compare(Pair("tiny-timm-bin", "image-classification", sources[0],
                             ModelSource("hub", str(pickled), "timm", family="timm"), "test only"),
                        render_scene(3).image)


def test_the_readme_python_example_runs(monkeypatch):
    import re

    monkeypatch.setenv("DISTILL_LENS_ALLOW_LOCAL", "0")  # the example sets it; restored after the test

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("## Python"):readme.index("## Adding a model family")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2  # registered pairs and modules; your own saved checkpoints
    for code in blocks:
        exec(compile(code, "README.md (Python)", "exec"), {})


@pytest.mark.parametrize(("pair", "students"), [("shapes-detection", "feature-kd,adm-consensus"),
                                                ("shapes-segmentation", "feature-kd"),
                                                ("efficientnet-lite2-to-lite0", "lite0")])
def test_the_batched_figures_only_consensus_gives_the_analysis_tabs_figures(pair, students):
    """The dataset report's path (images batched, no pictures, no per-image CKA) gives, image by image, exactly the
    figures the Analysis tab computes one image at a time."""
    from compare.vision import VisionRequest, run_vision

    images = [render_scene(10_000_600 + i).image for i in range(3)] + [render_scene(10_000_700, 128, 160).image]
    spec, chosen, predictors = compare.load(pair, students)
    one_by_one = run_vision(VisionRequest(spec, chosen, images, latency=False, consensus=True), predictors)
    batched = run_vision(VisionRequest(spec, chosen, images, latency=False, consensus=True, overlays=False),
                         predictors)
    for a, b in zip(one_by_one, batched, strict=True):
        assert b.analysis.overlays == []
        for name in a.analysis.per_student:  # every figure of the batched path (it adds no chance levels)
            batched_rows = b.analysis.per_student[name]["stages"]
            assert [{k: row[k] for k in other} for row, other in zip(a.analysis.per_student[name]["stages"],
                                                                      batched_rows, strict=True)] == batched_rows
        assert a.analysis.summary() == b.analysis.summary()
