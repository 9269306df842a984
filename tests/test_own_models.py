"""Your own teacher and students (weights/custom.py): tiny models of every allowed family saved to a temporary folder
and used as "own" pairs through the engine, the page's handler, the API (spec strings) and the CLI; the refusals
before anything downloads; a bad spec for every part of the grammar."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import compare
from weights.custom import OwnModelError, Settings, inspect_model, own_pair, parse_spec

LABELS = ["person", "cat", "cup"]


@pytest.fixture(scope="module")
def own(tmp_path_factory, monkeypatch_module):
    """Tiny models of every family, saved as their owners would (``save_pretrained`` / ``save_for_hf``)."""
    from tests.tiny_hub import (
        save_tiny_diffusion,
        save_tiny_open_clip_repo,
        save_tiny_rtdetr,
        save_tiny_segformer,
        save_tiny_timm,
        save_tiny_unet_student,
        save_tiny_vit_classifier,
    )

    root = tmp_path_factory.mktemp("own")
    monkeypatch_module.setenv("DISTILL_LENS_ALLOW_LOCAL", str(root))
    folders = {
        "rt_t": save_tiny_rtdetr(root / "rt_t", seed=0), "rt_s": save_tiny_rtdetr(root / "rt_s", seed=1, width=16),
        "sf_t": save_tiny_segformer(root / "sf_t", seed=0), "sf_s": save_tiny_segformer(root / "sf_s", 1, width=8),
        "vit_t": save_tiny_vit_classifier(root / "vit_t", 0, ["cat", "dog", "cup"]),
        "vit_s": save_tiny_vit_classifier(root / "vit_s", 1, ["Dog", "cat", "bird"], width=8),
        "timm_s": save_tiny_timm(root / "timm_s", "test_resnet", 2, ["cat", "dog", "cup"]),
        "clip_t": save_tiny_open_clip_repo(root / "clip_t", 0), "clip_s": save_tiny_open_clip_repo(root / "clip_s", 1),
        "sd": save_tiny_diffusion(root / "sd"),
    }
    folders["unet_s"] = save_tiny_unet_student(folders["sd"], root / "unet_s")
    return SimpleNamespace(root=root, **{k: str(v) for k, v in folders.items()})


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def scene():
    from weights.shapes.world import render_scene

    return render_scene(10_000_555, 128, 160).image


# The grammar ------------------------------------------------------------------------------------------------------
def test_a_spec_names_its_task_teacher_and_students():
    spec = parse_spec(" detection : PekingU/rtdetr_r50vd_coco_o365 -> PekingU/rtdetr_r18vd_coco_o365@v2 ,"
                      " mine=org/my-student ")
    assert spec.task == "detection" and spec.teacher.location == "PekingU/rtdetr_r50vd_coco_o365"
    assert [(s.name, s.location, s.revision) for s in spec.students] == [
        ("rtdetr_r18vd_coco_o365", "PekingU/rtdetr_r18vd_coco_o365", "v2"), ("mine", "org/my-student", None)]
    assert str(spec) == ("detection: PekingU/rtdetr_r50vd_coco_o365 -> PekingU/rtdetr_r18vd_coco_o365@v2, "
                         "mine=org/my-student")
    assert parse_spec(str(spec)) == spec
    assert parse_spec("image-classification: hf-hub:timm/resnet50.a1_in1k -> ./students/r18").students[0].name == "r18"


BAD_SPECS = [
    ("", "empty"),
    ("org/teacher -> org/student", "start with its task"),
    ("detect: org/teacher -> org/student", "start with its task"),
    ("detection org/teacher -> org/student", "start with its task"),
    ("detection: org/teacher org/student", "exactly one '->'"),
    ("detection: org/teacher -> org/a -> org/b", "exactly one '->'"),
    ("detection:  -> org/student", "teacher is empty"),
    ("detection: org/t1, org/t2 -> org/student", "one teacher"),
    ("detection: org/teacher -> ", "at least one student"),
    ("detection: org/teacher -> org/a,, org/b", "empty; remove the extra comma"),
    ("detection: org/teacher -> org/a, org/b, org/c, org/d", "At most 3 students"),
    ("detection: not a repo -> org/student", "neither a Hub repo id"),
    ("detection: org/teacher -> org/../../etc", "neither a Hub repo id"),
    ("detection: org/teacher@bad rev! -> org/student", "revision"),
    ("detection: org/teacher -> bad name!=org/student", "name"),
    ("detection: org/teacher -> teacher=org/student", "name"),
    ("detection: org/teacher -> a/x, b/x", "Two students are named 'x'"),
]


@pytest.mark.parametrize(("spec", "says"), BAD_SPECS)
def test_every_part_of_a_bad_spec_is_named(spec, says):
    with pytest.raises(OwnModelError, match=None) as caught:
        parse_spec(spec)
    assert says in str(caught.value), str(caught.value)


# Checks before anything downloads ---------------------------------------------------------------------------------
class FakeHub:
    """The three calls of ``huggingface_hub.HfApi`` the inspection makes, over local folders posing as repos; a size
    may be faked, and every download is recorded."""

    def __init__(self, repos: dict[str, str], sizes: dict[str, int] | None = None, licence: str | None = "mit"):
        self.repos, self.sizes, self.licence, self.downloads = repos, sizes or {}, licence, []

    def model_info(self, repo, revision=None, files_metadata=False):
        import httpx
        from huggingface_hub import errors

        if repo not in self.repos:
            response = httpx.Response(404, request=httpx.Request("GET", f"https://huggingface.co/api/models/{repo}"))
            raise errors.RepositoryNotFoundError(f"404: {repo}", response=response)
        folder = Path(self.repos[repo])
        files = [p for p in folder.rglob("*") if p.is_file()]
        siblings = [SimpleNamespace(rfilename=str(p.relative_to(folder)), size=self.sizes.get(
            str(p.relative_to(folder)), p.stat().st_size)) for p in files]
        return SimpleNamespace(siblings=siblings, card_data={"license": self.licence} if self.licence else None)

    def hf_hub_download(self, repo, name, revision=None):
        self.downloads.append(name)
        return str(Path(self.repos[repo]) / name)

    def get_safetensors_metadata(self, repo, revision=None):
        return SimpleNamespace(parameter_count={"F32": 1234})


def test_a_hub_model_is_described_from_its_metadata_and_configs_only(own):
    hub = FakeHub({"org/tiny-rtdetr": own.rt_t})
    found = inspect_model("org/tiny-rtdetr@main", "detection", api=hub)
    assert found.to_json() | {"size_mb": 0} == {
        "location": "org/tiny-rtdetr", "revision": "main", "where": "Hub", "task": "detection",
        "family": "transformers", "class": "RTDetrForObjectDetection", "size_mb": 0, "parameters": 1234,
        "licence": "mit", "labels": 3, "label_names": LABELS, "notes": []}
    assert found.size_mb > 0 and all(name.endswith(".json") for name in hub.downloads)  # no weights downloaded


def test_a_too_large_repo_is_refused_before_its_weights_download(own):
    hub = FakeHub({"org/huge": own.rt_t}, sizes={"model.safetensors": 3_000_000_000})
    with pytest.raises(OwnModelError, match="3,000 MB of weights, over the limit here of 2,000 MB"):
        inspect_model("org/huge", "detection", api=hub)
    assert not any(name.endswith(".safetensors") for name in hub.downloads)
    limit = Settings(local_roots=(), max_model_mb=5000)
    assert inspect_model("org/huge", "detection", api=hub, settings=limit).size_mb == 3000


def test_pickled_weights_a_class_outside_the_allow_list_and_remote_code_are_refused(own, tmp_path):
    import shutil

    settings = Settings(local_roots=(tmp_path,))
    only_bin = tmp_path / "only_bin"
    shutil.copytree(own.rt_t, only_bin)
    (only_bin / "model.safetensors").rename(only_bin / "pytorch_model.bin")
    with pytest.raises(OwnModelError, match=r"only pickled weights \(pytorch_model.bin\).*safetensors only"):
        inspect_model(str(only_bin), "detection", settings=settings)
    bert = tmp_path / "bert"
    shutil.copytree(own.rt_t, bert)
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps(config | {"architectures": ["BertModel"]}))
    with pytest.raises(OwnModelError, match="BertModel, which is not a transformers AutoModelForObjectDetection"):
        inspect_model(str(bert), "detection", settings=settings)
    with pytest.raises(OwnModelError, match="not a transformers AutoModelForSemanticSegmentation"):
        inspect_model(own.rt_t, "segmentation")  # a detector offered as a segmenter
    remote = tmp_path / "remote"
    shutil.copytree(own.rt_t, remote)
    (remote / "config.json").write_text(json.dumps(config | {"auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(OwnModelError, match="remote code"):
        inspect_model(str(remote), "detection", settings=settings)
    with pytest.raises(OwnModelError, match="does not exist on the Hugging Face Hub"):
        inspect_model("org/missing", "detection", api=FakeHub({}))


def test_local_folders_only_where_the_operator_allows(own, monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILL_LENS_ALLOW_LOCAL", "0")
    with pytest.raises(OwnModelError, match="Local folders are not allowed here"):
        inspect_model(own.rt_t, "detection")
    monkeypatch.setenv("DISTILL_LENS_ALLOW_LOCAL", str(tmp_path))
    with pytest.raises(OwnModelError, match="outside the folders allowed here"):
        inspect_model(own.rt_t, "detection")
    with pytest.raises(OwnModelError, match="outside the folders"):  # no way out through ..
        inspect_model(str(tmp_path / ".." / Path(own.rt_t).parent.name / "rt_t"), "detection")
    monkeypatch.setenv("DISTILL_LENS_ALLOW_CUSTOM", "0")
    with pytest.raises(OwnModelError, match="turned off"):
        own_pair(f"detection: {own.rt_t} -> {own.rt_s}")


# Every family as an own pair, through the engine -------------------------------------------------------------------
def test_own_detection_and_segmentation_pairs_run_like_registered_ones(own, scene):
    spec = f"detection: {own.rt_t} -> {own.rt_s}, same={own.rt_t}"
    result = compare.detect(scene, spec, 0.0)
    assert result.pair == spec and result.names == ["rt_s", "same"]  # an own pair runs all its students
    assert result.agreement["same"]["f1"] == 1.0 and result.agreement["rt_s"]["f1"] < 1.0
    segmented = compare.segment(scene, f"segmentation: {own.sf_t} -> {own.sf_s}", consensus=True)
    assert segmented.analysis is not None and 0 <= segmented.agreement["sf_s"]["miou"] <= 1


def test_students_with_other_class_names_are_compared_on_the_names_they_share(own, scene):
    result, attention = compare.classify_image(scene, f"image-classification: {own.vit_t} -> {own.vit_s}, "
                                                      f"{own.timm_s}")
    assert result.notes == ["vit_s's classes are matched to the teacher's by name: 2 shared; teacher only: cup; "
                            "student only: bird."]
    assert result.classes == ["cat", "dog", "cup"] and np.isfinite(result.agreement["vit_s"]["kl"])
    probs = result.probs["vit_s"]
    assert float(probs[2]) == 0.0 and abs(float(probs.sum()) - 1) < 1e-5  # 'cup' is not one of the student's
    assert attention.maps["student"].shape == attention.maps["teacher"].shape  # Grad-CAM of a transformers ViT
    from compare.labels import match_labels

    match = match_labels(["cat", "dog", "cup"], ["Dog", "cat", "bird"])
    assert match.index.tolist() == [1, 0, -1] and match.teacher_only == ["cup"] and match.student_only == ["bird"]


def test_own_clip_and_diffusion_pairs(own, scene):
    from compare.generation import generate

    [result] = compare.compare(f"classification: {own.clip_t} -> {own.clip_s}", [scene], classes=["red", "blue"])
    assert set(result.probs) == {"teacher", "clip_s"}
    teacher, student, report = generate("a red circle", f"generation: {own.sd} -> {own.unet_s}", 0, 64, 64, 2, 4.0)
    assert teacher.shape == student.shape == (64, 64, 3) and report["pair"].startswith("generation:")


def test_a_refolder_saved_student_is_read_again(own, scene, tmp_path, monkeypatch):
    """A researcher re-saves the student they are training into the same folder: the next run uses the new weights."""
    import shutil

    from tests.tiny_hub import save_tiny_rtdetr

    monkeypatch.setenv("DISTILL_LENS_ALLOW_LOCAL", f"{own.root}{__import__('os').pathsep}{tmp_path}")
    student = tmp_path / "student"
    shutil.copytree(own.rt_t, student)
    spec = f"detection: {own.rt_t} -> {student}"
    assert compare.detect(scene, spec, 0.0).agreement["student"]["f1"] == 1.0
    save_tiny_rtdetr(student, seed=5, width=16)
    assert compare.detect(scene, spec, 0.0).agreement["student"]["f1"] < 1.0


def test_two_users_with_different_own_pairs_at_once(own, scene):
    specs = [f"detection: {own.rt_t} -> {own.rt_s}", f"segmentation: {own.sf_t} -> {own.sf_s}"]
    alone = [compare.detect(scene, specs[0], 0.0).to_json(), compare.segment(scene, specs[1]).to_json()]
    results = [None, None]

    def run(i):
        results[i] = (compare.detect(scene, specs[0], 0.0) if i == 0 else compare.segment(scene, specs[1])).to_json()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for one, together in zip(alone, results, strict=True):
        assert together["pair"] == one["pair"] and together["students"].keys() == one["students"].keys()
        assert {n: s["agreement"] for n, s in together["students"].items()} == {
            n: s["agreement"] for n, s in one["students"].items()}
    from weights.registry import list_pairs

    assert not any("->" in p.name for p in list_pairs())  # nothing was registered


# The page, the API and the CLI --------------------------------------------------------------------------------------
def test_the_pages_check_makes_the_spec_the_tabs_pair(own, scene):
    from demos.detection import run_detection
    from demos.own_models import OWN, check_own_models

    findings, menu, students = check_own_models("detection", own.rt_t, f"{own.rt_s}\nsame={own.rt_t}",
                                                [("shapes-detection · builtin", "shapes-detection")])
    assert "- **teacher**: `own0/rt_t` (local folder), RTDetrForObjectDetection, 0.24 M parameters" in findings
    assert "- **same**:" in findings and "nothing has run" in findings
    assert menu["value"] == f"detection: {own.rt_t} -> {own.rt_s}, same={own.rt_t}"
    assert [c[1] for c in menu["choices"]] == ["shapes-detection", menu["value"], OWN]
    assert students["choices"] == ["rt_s", "same"] and students["max_choices"] == 3
    *_, report, _ = run_detection(scene, menu["value"], 0.0, [])
    assert list(report["students"]) == ["rt_s", "same"]


def test_the_api_takes_spec_strings_and_inspects_models(own, tmp_path):
    from gradio_client import Client, handle_file

    import app
    from tests.test_app import free_port

    path = tmp_path / "scene.png"
    from weights.shapes.world import render_scene

    Image.fromarray(render_scene(10_000_777).image).save(path)
    demo = app.build_app()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        spec = f"segmentation: {own.sf_t} -> {own.sf_s}"
        _, _, report, _ = client.predict(handle_file(str(path)), spec, api_name="/segment")
        assert report["pair"] == spec and list(report["students"]) == ["sf_s"]
        found = client.predict(own.vit_s, "image-classification", api_name="/inspect_model")
        assert found["class"] == "ViTForImageClassification" and found["label_names"] == ["Dog", "cat", "bird"]
        detect_spec = f"detection: {own.rt_t} -> {own.rt_s}"
        answers = {}

        def user(name, endpoint, pair):  # two users, each with a client (a session) and an own pair of their own
            other = Client(f"http://127.0.0.1:{port}/", verbose=False)
            args = (0.0,) if endpoint == "/detect" else ()
            answers[name] = other.predict(handle_file(str(path)), pair, *args, api_name=endpoint)[2]

        threads = [threading.Thread(target=user, args=("a", "/detect", detect_spec)),
                   threading.Thread(target=user, args=("b", "/segment", spec))]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert (answers["a"]["pair"], list(answers["a"]["students"])) == (detect_spec, ["rt_s"])
        assert (answers["b"]["pair"], answers["b"]["students"]["sf_s"]["agreement"]) == (
            spec, report["students"]["sf_s"]["agreement"])
        assert not any("->" in p["name"] for p in client.predict(api_name="/pairs"))
        with pytest.raises(Exception, match="exactly one '->'"):
            client.predict(handle_file(str(path)), f"segmentation: {own.sf_t}", api_name="/segment")
        with pytest.raises(Exception, match="this needs a detection pair"):
            client.predict(handle_file(str(path)), spec, 0.3, api_name="/detect")
    finally:
        demo.close()


def test_the_dataset_cli_takes_your_own_models(own, tmp_path, capsys):
    from reports.dataset import main
    from weights.shapes.world import render_scene

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(render_scene(20_000 + i, 96, 96).image).save(images / f"{i}.png")
    main(["--images", str(images), "--out", str(tmp_path / "out"), "--task", "detection", "--teacher", own.rt_t,
          "--student", own.rt_s, "--student", f"again={own.rt_t}", "--threshold", "0"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["pair"] == f"detection: {own.rt_t} -> {own.rt_s}, again={own.rt_t}"
    assert set(summary["per_student"]) == {"rt_s", "again"} and (tmp_path / "out" / "report.html").is_file()
    with pytest.raises(SystemExit):
        main(["--images", str(images), "--out", str(tmp_path / "o2"), "--task", "detection", "--teacher", own.rt_t])
    assert "need --student too" in capsys.readouterr().err


def test_one_download_per_user_at_a_time(own, monkeypatch):
    from gradio.context import LocalContext

    import demos.jobs as jobs
    import weights.loaders

    monkeypatch.setattr(weights.loaders, "weights_at_hand", lambda source: False)  # as if nothing were downloaded
    spec = f"detection: {own.rt_t} -> {own.rt_s}"
    token = LocalContext.request.set(SimpleNamespace(session_hash="user-a"))
    try:
        with jobs.download_slot(["image", spec]):
            with pytest.raises(OwnModelError, match="already downloading"):
                with jobs.download_slot([spec]):
                    pass
            LocalContext.request.set(SimpleNamespace(session_hash="user-b"))
            with jobs.download_slot([spec]):  # another user is not held up
                pass
            LocalContext.request.set(SimpleNamespace(session_hash="user-a"))
        with jobs.download_slot([spec]):  # the first download finished: the slot is free again
            pass
    finally:
        LocalContext.request.reset(token)


@pytest.mark.parametrize(("task", "folder", "role", "family", "model_class", "weights"), [
    ("image-classification", "timm_s", "student", "timm", "timm test_resnet", ["model.safetensors"]),
    ("image-classification", "vit_t", "teacher", "transformers", "ViTForImageClassification", ["model.safetensors"]),
    ("classification", "clip_t", "teacher", "open_clip", "open_clip CLIP", ["open_clip_model.safetensors"]),
    ("generation", "sd", "teacher", "diffusers", "StableDiffusionPipeline",
     ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
      "text_encoder/model.safetensors"]),
    ("generation", "sd", "student", "diffusers", "UNet2DConditionModel", ["unet/diffusion_pytorch_model.safetensors"]),
    ("generation", "unet_s", "student", "diffusers", "UNet2DConditionModel", ["diffusion_pytorch_model.safetensors"]),
])
def test_every_family_is_inspected_from_the_hubs_metadata(own, task, folder, role, family, model_class, weights):
    """The size counts the safetensors files that family loads, and nothing else (a pipeline: UNet, VAE, text
    encoder; a student repo with unet/: that UNet only)."""
    path = Path(getattr(own, folder))
    hub = FakeHub({"org/model": str(path)})
    found = inspect_model("org/model", task, role, api=hub)
    assert (found.family, found.model_class, found.where) == (family, model_class, "Hub")
    assert found.size_mb == pytest.approx(sum((path / w).stat().st_size for w in weights) / 1e6)
    assert not any(name.endswith(".safetensors") for name in hub.downloads)
    if task == "generation" and role == "teacher":
        assert found.native == {"width": 64, "height": 64, "steps": 25, "guidance": 7.5}


def test_students_with_other_spellings_or_too_few_shared_classes(own, scene, tmp_path, monkeypatch):
    """Detection boxes are matched by name case-insensitively (with a note); a classifier sharing one class name
    with its teacher has no agreement (undefined, with a note), and no invented zero-probability classes."""
    from tests.tiny_hub import save_tiny_rtdetr, save_tiny_vit_classifier

    monkeypatch.setenv("DISTILL_LENS_ALLOW_LOCAL", f"{own.root}{__import__('os').pathsep}{tmp_path}")
    renamed = save_tiny_rtdetr(tmp_path / "renamed", seed=0)  # the teacher's weights, other spellings
    config = json.loads((renamed / "config.json").read_text())
    config["id2label"] = {"0": "Person", "1": "dog", "2": "cup"}
    (renamed / "config.json").write_text(json.dumps(config))
    result = compare.detect(scene, f"detection: {own.rt_t} -> {renamed}", 0.0)
    assert {d.label for d in result.detections["renamed"]} <= {"person", "dog", "cup"}
    assert result.notes == ["renamed's classes are matched to the teacher's by name: 2 shared; teacher only: cat; "
                            "student only: dog."]
    lonely = save_tiny_vit_classifier(tmp_path / "lonely", 1, ["Cat", "bird", "cup_mug"], width=8)
    result, _ = compare.classify_image(scene, f"image-classification: {own.vit_t} -> {lonely}", explain_top=False)
    assert set(result.agreement["lonely"].values()) == {None}
    assert any("shares 1 class name" in n for n in result.notes)
    assert [e["label"] for e in result.to_json()["students"]["lonely"]["top5"]] == ["cat"]


def test_clear_messages_for_the_cli_and_the_inspection(own, tmp_path, capsys):
    from demos.own_models import inspect_model_api
    from reports.dataset import main

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(images / "a.png")
    for args, says in ((["--task", "classification", "--teacher", own.clip_t, "--student", own.clip_s],
                        "--classes 'cat, dog, cup'"),
                       (["--task", "detecton", "--teacher", own.rt_t, "--student", own.rt_s], "--task 'detecton'")):
        with pytest.raises(SystemExit):
            main(["--images", str(images), "--out", str(tmp_path / "out"), *args])
        assert says in capsys.readouterr().err
    with pytest.raises(OwnModelError, match="not a pair spec"):
        inspect_model_api(f"detection: {own.rt_t} -> b={own.rt_s}", "detection")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((Path(own.rt_t) / "config.json").read_text())
    (empty / "preprocessor_config.json").write_text((Path(own.rt_t) / "preprocessor_config.json").read_text())
    with pytest.raises(OwnModelError, match="safe_serialization=True"):
        inspect_model(str(empty), "detection", settings=Settings(local_roots=(tmp_path,)))


def test_a_cached_repo_is_described_from_the_cache_when_the_hub_is_out_of_reach(monkeypatch):
    """HF_HUB_OFFLINE unset and no network: huggingface_hub's HTTP client raises its own connection error (no builtin
    ConnectionError), which still sends the inspection to the local cache; a repo the Hub says does not exist does
    not."""
    import httpx
    from huggingface_hub import constants

    import weights.custom as custom
    import weights.hub as hub

    cached = object()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    monkeypatch.setattr(custom, "_cached_files", lambda ref: cached)

    class Away(FakeHub):
        def model_info(self, repo, revision=None, files_metadata=False):
            raise httpx.ConnectError("[Errno -2] Name or service not known")

    assert custom.hub_files(custom.ModelRef("org/cached"), api=Away({})) is cached
    with pytest.raises(custom.OwnModelError, match="does not exist"):
        custom.hub_files(custom.ModelRef("org/missing"), api=FakeHub({}))
