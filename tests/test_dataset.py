"""The dataset report: one command over a folder, resumable, the same in one or two processes, and a tab."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compare.inputs import InputError
from reports.aggregate import _miss_ranking, accuracy_detections
from reports.dataset import read_records, run_dataset
from reports.inputs import Labels, extract_zip, list_images, safe_name
from weights.shapes.world import CLASS_NAMES, EVAL_SEED_START, render_scene, write_labelled_scenes

ROOT = Path(__file__).resolve().parents[1]
SEEDS = range(EVAL_SEED_START + 3000, EVAL_SEED_START + 3008)  # held out from training
BATCH = 2  # small batches, so that stops, kills and shards fall between them


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Eight held-out Shapes scenes, a corrupt file, and COCO-style box labels."""
    root = tmp_path_factory.mktemp("dataset")
    images, _ = write_labelled_scenes(root, SEEDS)
    (images / "broken.png").write_bytes(b"not an image")
    return root


def outputs(out: Path) -> dict[str, str]:
    return {name: (out / name).read_text() for name in ("results.jsonl", "summary.json", "cka.jsonl")}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The CLI's one thread per process, for every run here: results are bitwise the same for any number of
    processes at the same threads per process (a convolution's sums depend on how many threads share them)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted(folder, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("full")
    summary = run_dataset(list_images(folder / "images"), "shapes-detection", out, labels=folder / "labels.json",
                          gallery=2, batch=BATCH)
    return out, summary


def test_a_folder_gives_results_summary_and_a_static_report(folder, uninterrupted):
    out, summary = uninterrupted
    records = read_records(out / "results.jsonl")
    assert [r["image"] for r in records] == sorted(p.name for p in (folder / "images").iterdir())
    assert summary["unreadable"] == [{"image": "broken.png", "reason": records[0]["error"]}]
    assert summary["images"] == 8 and set(summary["accuracy"]) == {"teacher", "feature-kd"}
    assert summary["accuracy"]["teacher"]["map_50"] > 0.8
    scene = records[1]
    assert set(scene["students"]["feature-kd"]) >= {"agreement", "disagreement", "consensus", "detections"}
    assert scene["students"]["feature-kd"]["disagreement"] == pytest.approx(
        1 - scene["students"]["feature-kd"]["agreement"]["f1"], abs=1e-4)
    worst = summary["largest_disagreement"]
    assert len(worst) == 2 and worst[0]["disagreement"] == max(
        r["students"]["feature-kd"]["disagreement"] for r in records if "error" not in r)
    page = (out / "report.html").read_text()
    assert "plotly" in page and page.count("data:image/png;base64") >= 4 and "broken.png" in page
    assert "latency" not in (out / "results.jsonl").read_text()  # timings live apart: they differ run to run
    assert len(read_records(out / "timing.jsonl")) == 8


def test_a_stopped_or_crashed_run_resumes_to_the_same_files(folder, uninterrupted, tmp_path):
    images = list_images(folder / "images")
    calls = []
    stopped = run_dataset(images, "shapes-detection", tmp_path, labels=folder / "labels.json", gallery=2,
                          cancel=lambda: (calls.append(1), len(calls) > 2)[1], batch=BATCH)
    assert stopped is None and len(read_records(tmp_path / "results.jsonl")) == 4  # two batches of two
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"image": "scene_0005.png", "stud')  # a crash in the middle of a line
    run_dataset(images, "shapes-detection", tmp_path, labels=folder / "labels.json", gallery=2, resume=True,
                batch=BATCH)
    assert outputs(tmp_path) == outputs(uninterrupted[0])


def test_a_resume_redoes_a_batch_whose_cka_terms_a_crash_lost(folder, tmp_path):
    """Lines are appended without forcing them to disk, so a crashed machine may keep a batch's records and lose its
    CKA terms: the resumed run redoes that batch (writing its terms, no record twice) and ends with the files of an
    uninterrupted run. Batches of four: the first holds the unreadable file (three readable images, no terms)."""
    images = list_images(folder / "images")
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    for out in (whole, crashed):
        run_dataset(images, "shapes-detection", out, labels=folder / "labels.json", gallery=0, batch=4)
    terms = read_records(crashed / "cka.jsonl")
    assert [t["batch"] for t in terms] == [1]  # four readable images in batch 1 only
    (crashed / "cka.jsonl").write_text("")  # the crash kept every record and lost the terms
    run_dataset(images, "shapes-detection", crashed, labels=folder / "labels.json", gallery=0, batch=4, resume=True)
    assert outputs(crashed) == outputs(whole)


def test_records_read_back_share_their_label_names_and_drop_a_cut_last_line(tmp_path):
    """The summary reads every record back: a detection record's ~100 box label names a model are one string object
    per distinct name (a third of a record's memory), the values unchanged; a last line cut short by a crash is left
    out, the lines before it kept."""
    columns = {"boxes": "", "scores": "", "labels": ["circle", "square", "circle"]}
    record = {"image": "a.png", "teacher": {"detections_for_accuracy": columns},
              "students": {"s": {"detections_for_accuracy": {**columns, "labels": ["square", "circle"]}}}}
    path = tmp_path / "results.jsonl"
    odd = {"image": "d.png", "teacher": {"detections_for_accuracy": {"labels": [["not a name"]]}}, "students": None}
    path.write_text(json.dumps(record) + "\n" + json.dumps({**record, "image": "b.png"}) + "\n" + json.dumps(odd)
                    + "\n" + '{"image": "c.p')
    read = read_records(path)
    assert [r["image"] for r in read] == ["a.png", "b.png", "d.png"] and read[0] == record and read[2] == odd
    blocks = [b for r in read[:2] for b in (r["teacher"], r["students"]["s"])]
    names = [n for b in blocks for n in b["detections_for_accuracy"]["labels"]]
    assert len({id(n) for n in names}) == 2  # "circle" and "square", one object each across the records


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo")
def test_two_processes_give_exactly_what_one_gives(folder, uninterrupted, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "reports.dataset", "--images", str(folder / "images"), "--pair", "shapes-detection",
               "--out", str(tmp_path), "--labels", str(folder / "labels.json"), "--gallery", "2", "--batch",
               str(BATCH)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert outputs(tmp_path) == outputs(uninterrupted[0])
    assert not list(tmp_path.glob("*.rank*.jsonl"))


def test_segmentation_and_classification_pairs(folder, tmp_path):
    images = list_images(folder / "images")[:3]
    seg = run_dataset(images, "shapes-segmentation", tmp_path / "seg", students="feature-kd,adm-consensus",
                      gallery=1)
    assert seg["students"] == ["feature-kd", "adm-consensus"] and set(seg["per_student"]["adm-consensus"]) >= {
        "agreement", "per_class", "consensus"}
    clip = run_dataset(images, "shapes-clip", tmp_path / "clip", gallery=1)
    assert 0 <= clip["per_student"]["clip-kd"]["agreement"]["kl"]["mean"]
    # a CLIP pair's representations: each tower's image embedding, in the embedding view and in CKA across images
    records = [r for r in read_records(tmp_path / "clip" / "results.jsonl") if "error" not in r]
    assert all(len(r["teacher"]["embedding"]) == len(r["students"]["clip-kd"]["embedding"]) == 32 for r in records)
    four = run_dataset(list_images(folder / "images")[:5], "shapes-clip", tmp_path / "clip4", gallery=0)
    assert "embeddings (PCA)" in (tmp_path / "clip4" / "report.html").read_text()
    cka = four["dataset_cka"]["clip-kd"]
    assert cka["teacher_layers"] == ["image embedding"] and -1 <= cka["matrix"][0][0] <= 1 and cka["baseline"]
    with pytest.raises(InputError, match="generation pair"):
        run_dataset(images, "shapes-diffusion", tmp_path / "gen")


def test_the_tab_summary_gives_each_figure_its_interval_and_the_ranking_verdict(folder, tmp_path):
    """The tab is where a student is chosen: its summary shows the intervals and the paired-bootstrap verdict that
    summary.json and report.html hold, not only the means."""
    from demos.dataset import summary_markdown

    summary = run_dataset(list_images(folder / "images"), "shapes-detection", tmp_path, "feature-kd,adm-consensus",
                          gallery=0, batch=4)
    text = summary_markdown(summary)
    for name in ("feature-kd", "adm-consensus"):
        block = summary["per_student"][name]
        for figures in (block["disagreement"], block["consensus"]["mean"]):
            assert f"{figures['mean']:.3f} [{figures['ci95'][0]:.3f}, {figures['ci95'][1]:.3f}]" in text
    assert summary["ranking"]["top_two"]["verdict"] in text and "**Ranking** (by f1)" in text
    from demos.dataset import per_class_figure

    bars = per_class_figure(summary).data  # the per-class bars carry their intervals too (report.html's as well)
    for bar, name in zip(bars, ("feature-kd", "adm-consensus"), strict=True):
        ci = summary["per_student"][name]["per_class_ci95"]
        assert bar.error_y.visible == any(ci.values())
        for label, value, up, down in zip(bar.x, bar.y, bar.error_y.array, bar.error_y.arrayminus, strict=True):
            if ci[label]:
                assert (value - down, value + up) == pytest.approx(tuple(ci[label]))


def test_the_miss_ranking_counts_images_where_the_student_misses_what_the_teacher_finds():
    box = [10.0, 10.0, 30.0, 30.0]
    labels = Labels(boxes={"a.png": [("circle", box)], "b.png": [("circle", box)]})
    found = {"detections": [{"box": box, "label": "circle", "score": 0.9}]}
    records = [{"image": "a.png", "teacher": found, "students": {"s": {"detections": []}}},
               {"image": "b.png", "teacher": found, "students": {"s": found}}]
    result = _miss_ranking(records, records, "s", labels, top=1)
    assert result["folder_share"] == 0.5 and result["top_share"] == 1.0 and result["images"] == ["a.png"]


def test_zip_uploads_are_bounded_and_flattened(tmp_path):
    archive = tmp_path / "up.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../../evil name.png", b"x")
        z.writestr("nested/dir/ok.png", b"y")
        z.writestr("notes.txt", b"z")
    notes = extract_zip(archive, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["evil_name.png", "ok.png"]
    assert any("not images" in n for n in notes)
    assert safe_name("..hidden.png") == "hidden.png"
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="zip"):
        extract_zip(tmp_path / "bad.zip", tmp_path / "x")
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as z:
        for i in range(501):
            z.writestr(f"{i}.png", b"")
    with pytest.raises(InputError, match="at most 500"):
        extract_zip(many, tmp_path / "y")


def test_the_tab_function_runs_a_zip(folder, tmp_path):
    from demos.dataset import dataset_report

    archive = tmp_path / "scenes.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted((folder / "images").iterdir())[:3]:
            z.write(path, path.name)
    markdown, figure, gallery, files = dataset_report(str(archive), "shapes-detection", None,
                                                      str(folder / "labels.json"))
    assert "images** through `shapes-detection`" in markdown and "unreadable" in markdown
    assert gallery and all(Path(f).exists() for f in files)


def test_a_run_killed_halfway_then_resumed_gives_the_same_files(folder, uninterrupted, tmp_path):
    """The bar as stated: kill the command (SIGKILL, no clean-up) once some images are done, resume, compare."""
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    arguments = ["--images", str(folder / "images"), "--pair", "shapes-detection", "--out", str(tmp_path),
                 "--labels", str(folder / "labels.json"), "--gallery", "2", "--batch", str(BATCH)]
    # The same CLI, each file write followed by a pause: a whole run takes ~0.1 s of work a batch, faster than this
    # loop can watch it, so without the pauses the kill may come after the last batch (it did, on CI).
    slowed = ("import time, reports.dataset as d; append = d._append; "
              "d._append = lambda path, records: (append(path, records), time.sleep(0.4))[0]; d.main()")
    process = subprocess.Popen([sys.executable, "-c", slowed, *arguments], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(read_records(tmp_path / "results.jsonl")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(read_records(tmp_path / "results.jsonl"))
    assert 3 <= done < 9 and not (tmp_path / "summary.json").exists()  # really killed halfway
    resumed = subprocess.run([sys.executable, "-m", "reports.dataset", *arguments, "--resume"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert outputs(tmp_path) == outputs(uninterrupted[0])


def test_ctrl_c_says_how_to_go_on_in_one_line(folder, tmp_path):
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    slowed = ("import time, reports.dataset as d; append = d._append; "
              "d._append = lambda path, records: (append(path, records), time.sleep(0.4))[0]; d.main()")
    process = subprocess.Popen([sys.executable, "-c", slowed, "--images", str(folder / "images"), "--pair",
                                "shapes-detection", "--out", str(tmp_path), "--batch", str(BATCH)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(read_records(tmp_path / "results.jsonl")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert "images finished" in err and "--resume" in err


def test_a_resume_with_other_settings_is_refused_naming_the_difference(folder, tmp_path):
    images = [p for p in list_images(folder / "images") if p.name != "broken.png"][:3]
    run_dataset(images, "shapes-detection", tmp_path, gallery=0)
    with pytest.raises(InputError, match=r"threshold: 0.3 then, 0.5 now"):
        run_dataset(images, "shapes-detection", tmp_path, resume=True, threshold=0.5)
    with pytest.raises(InputError, match=r"students: \['feature-kd'\] then, \['adm-consensus'\] now"):
        run_dataset(images, "shapes-detection", tmp_path, "adm-consensus", resume=True)
    with pytest.raises(InputError, match="holds a run already: --resume"):
        run_dataset(images, "shapes-detection", tmp_path, threshold=0.5)  # a fresh run over an old one
    run_dataset(images[:2], "shapes-detection", tmp_path, threshold=0.5, overwrite=True, gallery=0)
    assert json.loads((tmp_path / "summary.json").read_text())["images"] == 2  # the old summary is gone
    assert json.loads((tmp_path / "run.json").read_text())["threshold"] == 0.5
    (tmp_path / "run.json").unlink()  # results whose settings nothing records: never resumed on trust
    with pytest.raises(InputError, match="no run.json"):
        run_dataset(images, "shapes-detection", tmp_path, resume=True, threshold=0.5, gallery=0)


def test_timings_resume_like_results(folder, tmp_path):
    images = list_images(folder / "images")
    calls = []
    run_dataset(images, "shapes-detection", tmp_path, gallery=0, batch=BATCH,
                cancel=lambda: (calls.append(1), len(calls) > 2)[1])  # two batches, then stopped
    (tmp_path / "timing.jsonl").write_text((tmp_path / "timing.jsonl").read_text() + '{"image": "cut sh')
    (tmp_path / "summary.json").unlink(missing_ok=True)  # the crash came before the end
    run_dataset(images, "shapes-detection", tmp_path, resume=True, gallery=0, batch=BATCH)
    timings = read_records(tmp_path / "timing.jsonl")
    assert len(timings) == len(images) - 1  # every readable image, none lost behind the cut line


def test_labels_follow_sanitised_names_and_no_labelled_object_is_null_not_minus_one(folder, tmp_path):
    """A zip's odd file names are sanitised on extraction; their labels still apply. A label file with no object
    gives mAP null with a note, not torchmetrics' -1 sentinel; a class only a student finds breaks nothing."""
    from reports.aggregate import _accuracy
    from weights.registry import get_pair

    coco = json.loads((folder / "labels.json").read_text())
    coco["images"][0]["file_name"] = "my scene (1)'s.png"
    (tmp_path / "odd.json").write_text(json.dumps(coco))
    labels = Labels.read(tmp_path / "odd.json")
    assert labels.boxes[safe_name("my scene (1)'s.png")] == labels.boxes["my scene (1)'s.png"]
    record = {"image": "a.png", "teacher": {"detections": []},
              "students": {"s": {"detections": [{"box": [0, 0, 5, 5], "label": "unicorn", "score": 0.9}]}}}
    empty = _accuracy([record], get_pair("shapes-detection"), ["s"], Labels())
    assert empty["teacher"]["map_50"] is None and "no labelled object" in empty["teacher"]["note"]
    truth = Labels(boxes={"a.png": [("circle", [1.0, 1.0, 9.0, 9.0])]})
    assert _accuracy([record], get_pair("shapes-detection"), ["s"], truth)["s"]["map_50"] == 0.0
    # a box over COCO's area range (1e10 pixels²) is ignored as COCO ignores it: no object left to score, null
    huge = _accuracy([record], get_pair("shapes-detection"), ["s"], Labels(boxes={"a.png": [("circle", [0, 0, 2e5,
                                                                                                       1e5])]}))
    assert huge["s"]["map_50"] is None and "area range" in huge["s"]["note"]


def test_every_aggregate_has_a_bootstrap_interval_and_the_ranking_says_whether_the_top_two_differ(uninterrupted):
    from reports.aggregate import interval, ranking

    _, summary = uninterrupted
    block = summary["per_student"]["feature-kd"]
    for stats in [*block["agreement"].values(), *block["consensus"].values()]:
        if stats["mean"] is not None:
            low, high = stats["ci95"]
            assert low <= stats["mean"] <= high
    assert set(block["per_class_ci95"]) == set(block["per_class"])
    for label, value in block["per_class"].items():  # per class too, images resampled
        low, high = block["per_class_ci95"][label]
        assert low <= value <= high
    assert summary["ranking"]["by"] == "f1" and summary["ranking"]["top_two"] is None  # one student
    assert interval([1.0, 0.5, 0.7, 0.9]) is None and interval([0.5] * 5) == [0.5, 0.5]  # under 5 images: none
    rng = __import__("numpy").random.default_rng(1)
    values = rng.normal(0.7, 0.1, 400)
    low, high = interval(values)
    assert low < 0.7 < high and high - low == pytest.approx(2 * 1.96 * 0.1 / 20, rel=0.25)  # ≈ the normal theory

    def records(a, b):
        return [{"students": {"a": {"agreement": {"f1": x}}, "b": {"agreement": {"f1": y}}}}
                for x, y in zip(a, b, strict=True)]

    same = ranking(records(values, values + rng.normal(0, 0.05, 400)), ["a", "b"], "detection")
    assert same["top_two"]["verdict"].startswith("not distinguishable")
    apart = ranking(records(values, values - 0.05), ["a", "b"], "detection")
    assert apart["order"] == ["a", "b"] and apart["top_two"]["verdict"].startswith("a agrees more")


def test_the_deploy_gate_exits_1_naming_each_failing_figure(folder, tmp_path, capsys):
    from reports.dataset import main

    args = ["--images", str(folder / "images"), "--pair", "shapes-detection", "--labels", str(folder / "labels.json"),
            "--students", "feature-kd,adm-consensus"]
    main([*args, "--out", str(tmp_path / "pass"), "--fail-under", "agreement=0.1,map50=0.1"])
    assert "deploy gate passed" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stopped:
        main([*args, "--out", str(tmp_path / "fail"), "--fail-under", "agreement=0.999,consensus=0.1"])
    assert stopped.value.code == 1 and (tmp_path / "fail" / "report.html").is_file()  # the report is written first
    err = capsys.readouterr().err
    assert "feature-kd: agreement" in err and "adm-consensus: agreement" in err and "< 0.999" in err
    assert "consensus" not in err.split("deploy gate failed:")[1].replace("adm-consensus", "")
    for bad, says in (("agreement", "name=number"), ("speed=3", "not a detection figure"),
                      ("js=0.1", "not a detection figure"), ("agreement=90", "a share: 0.9, not 90"),
                      ("agreement=-1", "between 0 and 1"), ("consensus=-2", "between -1 and 1")):
        with pytest.raises(SystemExit):
            main([*args, "--out", str(tmp_path / "bad"), "--fail-under", bad])
        assert says in capsys.readouterr().err


def test_the_command_loads_the_models_and_reads_the_label_file_once(folder, tmp_path, monkeypatch):
    """check_arguments loads both to refuse bad arguments before any work; the run reuses them (a large COCO file's
    RLE checks and a Hub pair's weights are not paid twice)."""
    import reports.dataset as dataset

    calls = {"read": 0, "load": 0}
    read, load = Labels.read, dataset.predictors_for

    def counted_read(path):
        calls["read"] += 1
        return read(path)

    def counted_load(*args, **kwargs):
        calls["load"] += 1
        return load(*args, **kwargs)

    monkeypatch.setattr(dataset.Labels, "read", staticmethod(counted_read))
    monkeypatch.setattr(dataset, "predictors_for", counted_load)
    dataset.main(["--images", str(folder / "images"), "--pair", "shapes-detection", "--labels",
                  str(folder / "labels.json"), "--out", str(tmp_path / "out"), "--gallery", "0"])
    assert calls == {"read": 1, "load": 1}
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["accuracy"]["teacher"]["map_50"] is not None


def test_calibration_is_the_top_label_ece_of_guo_et_al():
    from reports.aggregate import calibration

    labels = Labels(classes={f"{i}.png": "cat" for i in range(20)})

    def record(i, conf_t, top_t, conf_s, top_s):
        return {"image": f"{i}.png", "teacher": {"top1": top_t, "confidence": conf_t},
                "students": {"s": {"top1": top_s, "confidence": conf_s}}}

    # teacher: 0.9 confident, right on 18 of 20 (calibrated); student: 0.95 confident, right on 10 of 20
    records = [record(i, 0.9, "cat" if i < 18 else "dog", 0.95, "cat" if i < 10 else "dog") for i in range(20)]
    out = calibration(records, ["s"], labels)
    assert out["teacher"]["ece"] == pytest.approx(0.0, abs=1e-6) and out["s"]["ece"] == pytest.approx(0.45)
    assert out["s"]["bins"] == [{"low": 0.9, "high": 1.0, "count": 20, "confidence": 0.95, "accuracy": 0.5}]
    low, high = out["s"]["ece_ci95"]  # resampled images: the student's gap stays clear of 0, the teacher's does not
    assert 0.2 < low < 0.45 < high < 0.7 and out["teacher"]["ece_ci95"][0] == 0.0


def test_inherited_and_corrected_errors_per_labelled_object_and_image(uninterrupted, folder):
    import numpy as np

    from reports.aggregate import OUTCOMES, inherited_errors, object_found

    out, summary = uninterrupted
    labels = Labels.read(folder / "labels.json")
    errors = summary["inherited_errors"]["feature-kd"]
    objects = sum(len(labels.boxes.get(r["image"], [])) for r in read_records(out / "results.jsonl")
                  if "error" not in r)
    assert errors["overall"]["total"] == objects == sum(errors["overall"][o] or 0 for o in OUTCOMES)
    assert errors["overall"]["both wrong, differently"] is None  # found or missed: no "differently" for objects
    assert sum(t["total"] for t in errors["per_class"].values()) == objects
    assert "Inherited and corrected errors (labelled objects)" in (out / "report.html").read_text()

    truth = Labels(classes={"a.png": "cat", "b.png": "cat", "c.png": "cat", "d.png": "cat", "e.png": "dog"})
    tops = {"a.png": ("cat", "cat"), "b.png": ("dog", "cat"), "c.png": ("cat", "dog"), "d.png": ("dog", "dog"),
            "e.png": ("cat", "bird")}
    records = [{"image": k, "teacher": {"top1": t}, "students": {"s": {"top1": s}}} for k, (t, s) in tops.items()]
    tally = inherited_errors(records, ["s"], truth, "classification")["s"]
    assert {o: tally["overall"][o] for o in OUTCOMES} == {"both right": 1, "fixed": 1, "lost": 1, "inherited": 1,
                                                         "both wrong, differently": 1}
    assert tally["overall"]["inherited_share_of_teacher_errors"] == pytest.approx(1 / 3, abs=1e-4)
    assert tally["per_class"]["dog"]["both wrong, differently"] == 1

    square = np.zeros((20, 20), dtype=bool)
    square[5:15, 5:15] = True
    shifted = np.zeros((20, 20), dtype=np.int64)
    shifted[5:15, 8:18] = 2  # 70 of 100 object pixels, 30 more inside the box: IoU 70/100 within the box
    assert object_found(shifted, square, 2) and not object_found(shifted, square, 1)
    shifted[:] = 0
    shifted[5:15, 11:20] = 2  # 40 pixels inside the object: IoU 0.4
    assert not object_found(shifted, square, 2)


def test_segmentation_objects_from_rle_labels_are_found_or_missed(tmp_path):
    import numpy as np
    from pycocotools import mask as coco_mask

    images = tmp_path / "images"
    images.mkdir()
    coco = {"images": [], "annotations": [],
            "categories": [{"id": i, "name": c} for i, c in enumerate(CLASS_NAMES) if i]}
    count = 0
    for k in range(3):
        scene = render_scene(EVAL_SEED_START + 3100 + k)
        Image.fromarray(scene.image).save(images / f"s{k}.png")
        coco["images"].append({"id": k, "file_name": f"s{k}.png"})
        for obj in scene.objects:
            rle = coco_mask.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            coco["annotations"].append({"image_id": k, "category_id": obj.class_id, "segmentation": rle})
            count += 1
    (tmp_path / "labels.json").write_text(json.dumps(coco))
    summary = run_dataset(list_images(images), "shapes-segmentation", tmp_path / "out", "feature-kd,adm-consensus",
                          tmp_path / "labels.json")
    for student in ("feature-kd", "adm-consensus"):
        overall = summary["inherited_errors"][student]["overall"]
        assert overall["total"] == count and overall["both right"] >= count // 2  # trained nets find most objects
    assert summary["accuracy"]["teacher"]["ci95"] is None  # three images: too few for an interval


def test_dataset_cka_of_a_model_against_itself_is_one_beside_its_chance_level(folder, tmp_path):
    from weights.registry import Pair, Student, get_pair

    base = get_pair("shapes-detection")
    itself = Pair("shapes-detection-itself", "detection", base.teacher, (Student("itself", base.teacher),),
                  base.licence, labels=base.labels, preprocessing=base.preprocessing)
    images = [p for p in list_images(folder / "images") if p.name != "broken.png"]
    summary = run_dataset(images, itself, tmp_path, gallery=0, batch=8)
    block = summary["dataset_cka"]["itself"]
    assert block["batches"] == 1 and block["images"] == 8
    diagonal = [block["matrix"][i][i] for i in range(len(block["matrix"]))]
    assert diagonal == pytest.approx([1.0] * len(diagonal), abs=1e-4)
    assert all(block["baseline"][i][i] < 0.9 for i in range(len(diagonal)))  # other images: far from 1
    page = (tmp_path / "report.html").read_text()
    assert "Representations across the dataset: CKA" in page and "other images:" in page
    assert "embeddings (PCA)" in page
    records = read_records(tmp_path / "results.jsonl")
    assert len(records[0]["teacher"]["embedding"]) == 32


def test_the_bootstrap_map_at_unit_weights_is_torchmetrics_map50(uninterrupted, folder):
    import numpy as np

    from reports.aggregate import _detections_matched, weighted_map50

    out, summary = uninterrupted
    labels = Labels.read(folder / "labels.json")
    records = [r for r in read_records(out / "results.jsonl") if "error" not in r]
    for model in ("teacher", "feature-kd"):
        classes = _detections_matched(records, model, labels)
        ours = float(weighted_map50(classes, np.ones((1, len(records))))[0])
        assert ours == pytest.approx(summary["accuracy"][model]["map_50"], abs=1e-4)
        low, high = summary["accuracy"][model]["ci95"]
        assert low <= summary["accuracy"][model]["map_50"] + 1e-9 and high <= 1.0
    # a class with missed objects: recall stops short, AP falls with it
    truth = Labels(boxes={"a.png": [("circle", [0, 0, 10, 10]), ("circle", [20, 20, 30, 30])]})
    one = [{"image": "a.png", "teacher": {"detections": [{"label": "circle", "score": 0.9, "box": [0, 0, 10, 10]}]},
            "students": {}}]
    assert float(weighted_map50(_detections_matched(one, "teacher", truth), np.ones((1, 1)))[0]) == pytest.approx(
        51 / 101)


def test_map_counts_every_box_down_to_the_accuracy_threshold_and_says_so(uninterrupted, folder, tmp_path):
    """mAP@0.5 uses the benchmarks' boxes (scores down to 0.01) while the agreement keeps the run's threshold; the
    summary names the threshold, and a run asking for the agreement's threshold gets its (lower) mAP."""
    from demos.dataset import figures_text

    out, summary = uninterrupted
    records = read_records(out / "results.jsonl")
    kept = [r for r in records if "error" not in r]
    assert all(d["score"] >= 0.3 for r in kept for d in r["teacher"]["detections"])
    assert any(d["score"] < 0.3 for r in kept for d in accuracy_detections(r["teacher"]))
    shown = [{"label": d["label"], "score": round(d["score"], 4), "box": [round(v, 2) for v in d["box"]]}
             for d in accuracy_detections(kept[0]["teacher"]) if d["score"] >= 0.3]
    assert shown == kept[0]["teacher"]["detections"]  # the columns hold the shown boxes, to the digit
    assert summary["accuracy"]["teacher"]["score_threshold"] == 0.01
    images = [p for p in list_images(folder / "images") if p.name != "broken.png"]
    strict = run_dataset(images, "shapes-detection", tmp_path, labels=folder / "labels.json", gallery=0,
                         batch=BATCH, accuracy_threshold=0.3)
    assert strict["accuracy"]["teacher"]["score_threshold"] == 0.3
    assert strict["accuracy"]["teacher"]["map_50"] <= summary["accuracy"]["teacher"]["map_50"]
    assert strict["per_student"] == summary["per_student"]  # the agreement does not move
    assert "(boxes scoring 0.01 or more)" in figures_text(summary["accuracy"]["teacher"])
    # above the run's threshold too (it was ignored: mAP came from the agreement's boxes, said to be at 0.3)
    stricter = run_dataset(images, "shapes-detection", tmp_path / "0.9", labels=folder / "labels.json", gallery=0,
                           batch=BATCH, accuracy_threshold=0.9)
    assert stricter["accuracy"]["teacher"]["score_threshold"] == 0.9
    assert stricter["accuracy"]["teacher"]["map_50"] < strict["accuracy"]["teacher"]["map_50"]


def test_what_cannot_be_measured_is_refused_or_said(folder, tmp_path, capsys):
    """A resume over other images, labels of other classes or other files, a gate naming a label figure without
    labels, a figure named twice, and a folder of unreadable files: each stops with a message naming it."""
    from reports.dataset import main

    images = folder / "images"
    args = ["--pair", "shapes-detection", "--out", str(tmp_path / "run")]
    main(["--images", str(images), *args, "--batch", "4"])
    subset = tmp_path / "subset"
    subset.mkdir()
    for p in sorted(images.iterdir())[:3]:
        (subset / p.name).write_bytes(p.read_bytes())
    cases = [
        (["--images", str(subset), *args, "--batch", "4", "--resume"], "images: '9 images"),
        (["--images", str(images), "--pair", "shapes-detection", "--out", str(tmp_path / "a"), "--fail-under",
          "map50=0.5"], "give --labels too"),
        (["--images", str(images), "--pair", "shapes-detection", "--out", str(tmp_path / "b"), "--fail-under",
          "agreement=0.9,agreement=0.1"], "names agreement twice"),
    ]
    coco = json.loads((folder / "labels.json").read_text())
    other = dict(coco, categories=[{"id": c["id"], "name": f"dog{c['id']}"} for c in coco["categories"]])
    (tmp_path / "other.json").write_text(json.dumps(other))
    cases.append((["--images", str(images), "--pair", "shapes-detection", "--out", str(tmp_path / "c"),
                   "--labels", str(tmp_path / "other.json")], "is one of the pair's"))
    elsewhere = dict(coco, images=[dict(i, file_name=f"x_{i['file_name']}") for i in coco["images"]])
    (tmp_path / "elsewhere.json").write_text(json.dumps(elsewhere))
    cases.append((["--images", str(images), "--pair", "shapes-detection", "--out", str(tmp_path / "d"),
                   "--labels", str(tmp_path / "elsewhere.json")], "is in --images"))
    for argv, says in cases:
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2 and says in capsys.readouterr().err, says
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="no image of --images could be read"):
        main(["--images", str(broken), "--pair", "shapes-detection", "--out", str(tmp_path / "e")])


def test_the_chance_level_pairs_every_image_with_another_once():
    import torch

    from analysis.cka import derangement

    for n in (2, 4, 5, 16, 17):
        for seed in range(20):
            order = derangement(n, torch.Generator().manual_seed(seed))
            assert sorted(order.tolist()) == list(range(n)) and not (order == torch.arange(n)).any()


def test_a_classifier_gallery_picture_is_captioned_with_each_models_top1(tmp_path):
    from reports.gallery import overlays

    path = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(path)
    record = {"image": "a.png", "teacher": {"top1": "cat"}, "students": {"s": {"top1": "dog"}}}
    (caption, picture), = overlays(path, record, "classification", ["s"], [], [], None)
    assert caption == "teacher: cat · s: dog" and picture.shape == (32, 32, 3)


def test_cka_terms_pooled_while_the_consensus_reads_the_maps_equal_a_separate_pass(folder, monkeypatch):
    """The report pools each stage for CKA as the consensus reads it (in cache): the terms are bitwise those of a
    separate pass over the maps, and the pooled maps are really the ones used."""
    import contextlib

    import compare
    import reports.measure as measure
    from weights.registry import get_pair

    spec = get_pair("shapes-detection")
    chosen = spec.choose_students(None)
    _, _, predictors = compare.load("shapes-detection", None)
    paths = sorted((folder / "images").glob("scene_*.png"))[:6]
    found = []
    get = measure.PooledMaps.get
    monkeypatch.setattr(measure.PooledMaps, "get", lambda self, x: found.append(get(self, x)) or found[-1])
    _, together = measure.analyse_batch(paths, spec, chosen, predictors, 0.3, "", None, 3)
    assert found and all(f is not None for f in found)  # every stage CKA pooled was pooled during the consensus
    monkeypatch.setattr(measure, "reading_maps", lambda reader: contextlib.nullcontext())
    found.clear()
    _, apart = measure.analyse_batch(paths, spec, chosen, predictors, 0.3, "", None, 3)
    assert found and all(f is None for f in found)  # pooled in a pass of its own
    assert json.dumps(together, sort_keys=True) == json.dumps(apart, sort_keys=True)


def test_cka_terms_of_images_of_two_sizes_in_one_batch_equal_a_separate_pass(tmp_path, monkeypatch):
    """Images of two input sizes whose stages crop to one shape: the consensus analyses temporary copies stacked from
    the two forwards, then drops them, and the CKA pass stacks new ones, which can come to lie where the first ones
    lay. Pooled maps found again by address must not be another map's (a student's CKA terms came out with the other
    student's stage before the pooled maps kept what they were pooled from)."""
    import contextlib

    import numpy as np

    import compare
    import reports.measure as measure
    from weights.registry import get_pair

    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(1000, 1378), (1000, 1380)] * 3):  # one consensus group, two forward batches
        image = np.full((h, w, 3), 30, np.uint8)
        for _ in range(6):
            y, x, side = rng.integers(0, h - 200), rng.integers(0, w - 200), rng.integers(60, 200)
            image[y:y + side, x:x + side] = rng.integers(0, 255, 3)
        paths.append(tmp_path / f"scene_{i}.png")
        Image.fromarray(image).save(paths[-1])
    spec = get_pair("shapes-detection")
    chosen = list(spec.students)  # two students of one architecture: stages of the same shapes
    _, _, predictors = compare.load("shapes-detection", [s.name for s in chosen])
    _, together = measure.analyse_batch(paths, spec, chosen, predictors, 0.3, "", None, 3)
    monkeypatch.setattr(measure, "reading_maps", lambda reader: contextlib.nullcontext())
    _, apart = measure.analyse_batch(paths, spec, chosen, predictors, 0.3, "", None, 3)
    assert json.dumps(together, sort_keys=True) == json.dumps(apart, sort_keys=True)


def _map50_at_every_detection(classes, weights):
    """Reference for :func:`weighted_map50`: the precision envelope computed and read at every detection."""
    import numpy as np

    from reports.aggregate import RECALL_POINTS

    per_class = []
    for entry in classes.values():
        positives = weights @ entry["positives"]
        if not entry["score"]:
            per_class.append(np.where(positives > 0, 0.0, np.nan))
            continue
        order = np.argsort(-np.asarray(entry["score"]), kind="stable")
        w = weights[:, np.asarray(entry["image"])[order]]
        tp = np.asarray(entry["tp"], dtype=np.float64)[order]
        tp_sum, fp_sum = np.cumsum(w * tp, 1), np.cumsum(w * (1 - tp), 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = tp_sum / positives[:, None]
            precision = np.where(tp_sum + fp_sum > 0, tp_sum / (tp_sum + fp_sum), 0.0)
        envelope = np.maximum.accumulate(precision[:, ::-1], 1)[:, ::-1]
        ap = np.full(len(weights), np.nan)
        for r in range(len(weights)):
            if positives[r] > 0:
                index = np.searchsorted(recall[r], RECALL_POINTS, side="left")
                ap[r] = np.where(index < len(recall[r]), envelope[r][np.minimum(index, len(recall[r]) - 1)], 0).mean()
        per_class.append(ap)
    stacked = np.stack(per_class)
    with np.errstate(invalid="ignore"):
        return np.nansum(stacked, 0) / (~np.isnan(stacked)).sum(0)


def test_the_bootstrap_map_read_at_segment_ends_equals_reading_it_at_every_detection():
    """weighted_map50 reads the precision envelope only where a run of true positives ends and drops detections after
    the last one: bit for bit the AP of reading it at every detection, for bootstrap weights with images drawn
    twice or not at all, tied scores, classes with no true positive, no detection or no labelled object."""
    import numpy as np

    from reports.aggregate import resampled_counts, weighted_map50

    rng = np.random.default_rng(3)
    for trial in range(40):
        n = int(rng.integers(5, 40))
        classes = {}
        for c in range(int(rng.integers(1, 5))):
            d = int(rng.integers(0, 80)) if c else 0  # class 0: labelled objects, no detection
            kind = trial % 4  # scores: distinct, heavily tied, all equal, distinct with no true positive
            scores = rng.random(d) if kind in (0, 3) else rng.integers(0, 4 if kind == 1 else 1, d) / 4
            tp = rng.random(d) < (0 if kind == 3 else rng.random())
            classes[f"c{c}"] = {"image": rng.integers(0, n, d).tolist(), "score": scores.tolist(), "tp": tp.tolist(),
                                "positives": rng.integers(0, 3, n).astype(float) * (rng.random() < 0.9)}
        weights = np.vstack([np.ones((1, n)), next(resampled_counts(n))])
        assert np.array_equal(weighted_map50(classes, weights), _map50_at_every_detection(classes, weights),
                              equal_nan=True)
        with pytest.MonkeyPatch.context() as patch:  # a class's resamples a few rows at a time: the same numbers
            patch.setattr("reports.aggregate.BOOTSTRAP_CELLS", int(rng.integers(1, 200)))
            assert np.array_equal(weighted_map50(classes, weights), _map50_at_every_detection(classes, weights),
                                  equal_nan=True)


def test_a_figure_missing_on_the_first_image_is_still_summarised_and_gated(folder, tmp_path, capsys):
    """The agreement figures come from every record: a first image (by name) with no box at all has no mean IoU of
    matches, yet the summary keeps that figure for the other images, and the gate reads it (found by a review: the
    figures were taken from the first record only, and the gate then failed them as undefined)."""
    from reports.dataset import main

    images = tmp_path / "images"
    images.mkdir()
    for path in list_images(folder / "images")[:6]:
        (images / path.name).write_bytes(path.read_bytes())
    Image.new("RGB", (128, 128)).save(images / "000_blank.png")  # sorts first; nothing to detect
    main(["--images", str(images), "--pair", "shapes-detection", "--out", str(tmp_path / "out"), "--gallery", "0",
          "--fail-under", "mean_iou=0.5,label_agreement=0.5"])
    records = read_records(tmp_path / "out" / "results.jsonl")
    assert records[0]["image"] == "000_blank.png" and records[0]["students"]["feature-kd"]["agreement"][
        "mean_iou"] is None
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["per_student"]["feature-kd"]["agreement"]["mean_iou"]["mean"] > 0.5
    assert "deploy gate passed" in capsys.readouterr().out


def test_classification_summaries_share_the_top1_match_and_never_die_on_few_labelled_classes(folder, tmp_path, capsys):
    """CLIP pairs: ``top1_match`` (yes or no per image) is summarised as a share, so ``--fail-under agreement=…``
    reads it; labels naming one class only give top-1 accuracy, and labels naming none for these images give null
    with a note (both crashed after every image was done)."""
    from reports.dataset import main

    images = folder / "images"
    names = [p.name for p in list_images(images)[:5]]
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"images": [{"id": k, "file_name": n} for k, n in enumerate(names[:3])],
                               "categories": [{"id": 1, "name": "star"}],
                               "annotations": [{"id": k, "image_id": k, "category_id": 1} for k in range(3)]}))
    args = ["--images", str(images), "--pair", "shapes-clip", "--gallery", "0"]
    main([*args, "--out", str(tmp_path / "a"), "--labels", str(one), "--fail-under", "agreement=0.01"])
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    matches = [r["students"]["clip-kd"]["agreement"]["top1_match"]
               for r in read_records(tmp_path / "a" / "results.jsonl") if "error" not in r]
    assert summary["per_student"]["clip-kd"]["agreement"]["top1_match"]["mean"] == pytest.approx(
        sum(matches) / len(matches), abs=1e-4)
    top1 = summary["accuracy"]["teacher"]["top1"]
    assert top1 is not None and 0 <= top1 <= 1 and "deploy gate passed" in capsys.readouterr().out
    none = tmp_path / "none.json"  # lists the images, but labels none of them with a class
    none.write_text(json.dumps({"images": [{"id": k, "file_name": n} for k, n in enumerate(names)],
                                "categories": [{"id": 1, "name": "star"}], "annotations": []}))
    main([*args, "--out", str(tmp_path / "b"), "--labels", str(none)])
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["accuracy"]["teacher"] == {"top1": None, "note": summary["accuracy"]["teacher"]["note"]}
    assert (tmp_path / "b" / "report.html").exists()
    overall = summary["inherited_errors"]["clip-kd"]["overall"]
    assert overall["total"] == 0 and overall["inherited_share_of_teacher_errors"] is None and overall["note"]


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="file names of any bytes: Linux")
def test_odd_file_names_and_output_places_get_a_message_not_a_traceback(folder, tmp_path, capsys):
    """Found by a review: a file name that is not UTF-8 crashed the run's start, a legal 255-byte name crashed a
    segmentation run midway (its kept maps took the name plus a suffix), and ``--out`` under a file crashed after the
    models loaded. Now: a one-line refusal naming the file, maps kept under a hashed name, a one-line refusal naming
    ``--out``."""
    from reports.dataset import main

    source = list_images(folder / "images")
    odd = tmp_path / "odd"
    odd.mkdir()
    for path in source[:5]:
        (odd / path.name).write_bytes(path.read_bytes())
    os.link(source[5], os.path.join(os.fsencode(odd), b"bad\xff name.png"))
    args = ["--pair", "shapes-detection", "--gallery", "0"]
    with pytest.raises(SystemExit) as stopped:
        main(["--images", str(odd), *args, "--out", str(tmp_path / "a")])
    assert stopped.value.code == 2 and "not valid UTF-8 (e.g. 'bad\\xff name.png'): rename" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as stopped:
        main(["--images", str(folder / "images"), *args, "--out", str(tmp_path / "afile" / "sub")])
    assert stopped.value.code == 2 and "afile is a file" in capsys.readouterr().err
    long = tmp_path / "long"
    long.mkdir()
    for k, path in enumerate(source[:5]):
        (long / (chr(ord("a") + k) * 251 + ".png")).write_bytes(path.read_bytes())
    summary = run_dataset(list_images(long), "shapes-segmentation", tmp_path / "seg", gallery=2)
    assert len(summary["largest_disagreement"]) == 2 and (tmp_path / "seg" / "report.html").exists()
    assert len(list((tmp_path / "seg" / "gallery").glob("*.npz"))) == 2


def test_the_tab_with_few_images_two_students_macos_metadata_and_nothing_readable(folder, tmp_path):
    """Found by a review of the tab: under five images the intervals were null with no word why (summary, page and
    tab); the gallery captioned every picture with the first student's disagreement; a zip made by macOS counted its
    ``__MACOSX/._*`` files as unreadable images; a zip of unreadable images only crashed the tab."""
    from demos.dataset import dataset_report

    good = [p for p in sorted((folder / "images").iterdir()) if p.name != "broken.png"][:3]
    archive = tmp_path / "mac.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in good:
            z.write(path, f"scenes/{path.name}")
            z.writestr(f"__MACOSX/scenes/._{path.name}", b"\x00\x05\x16\x07 AppleDouble")
    markdown, _, gallery, files = dataset_report(str(archive), "shapes-detection", "feature-kd, adm-consensus",
                                                 str(folder / "labels.json"))
    assert "3 macOS metadata files" in markdown and "unreadable" not in markdown
    assert "(no interval: under 5 images)" in markdown
    summary = json.loads(Path(next(f for f in files if f.endswith("summary.json"))).read_text())
    disagreement = summary["per_student"]["feature-kd"]["disagreement"]
    assert disagreement["ci95"] is None and "under 5" in disagreement["note"]
    assert summary["accuracy"]["teacher"]["ci95"] is None and "under 5" in summary["accuracy"]["teacher"]["note"]
    page = Path(next(f for f in files if f.endswith("report.html"))).read_text()
    assert "(no interval)" in page
    records = {r["image"]: r for r in read_records(Path(files[1]))}
    assert any(" · adm-consensus · " in caption for _, caption in gallery)
    for _, caption in gallery:
        image, model = caption.split(" · ")[:2]
        if model.startswith("teacher"):
            assert model == "teacher (the reference)"
        else:  # each student's picture with its own figure
            value = records[image]["students"][model]["disagreement"]
            assert caption.endswith(f"disagreement {value:.3f}")
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("a.png", b"not a png")
        z.writestr("b.png", b"")
    with pytest.raises(InputError, match="No image in the archive could be read .*nothing was measured"):
        dataset_report(str(broken), "shapes-detection")


def test_a_figure_undefined_on_every_image_stays_null_and_every_summary_figure_can_be_gated(tmp_path, capsys):
    """Found by an acceptance check: images where no model finds anything have no mean IoU of matches on any image;
    the summary kept the figure out (and the page's column) where it should read null with a note. And the gate took
    only some figures: now also ``missed``, ``extra``, ``spearman``, ``ece`` and the inherited share."""
    from reports.aggregate import gate_figure, parse_gate
    from reports.dataset import main

    images = tmp_path / "grey"
    images.mkdir()
    for k in range(6):
        Image.new("RGB", (128, 128), (120, 120, 120)).save(images / f"{k}.png")
    main(["--images", str(images), "--pair", "shapes-detection", "--out", str(tmp_path / "out"), "--gallery", "0",
          "--fail-over", "missed=0,extra=0"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    mean_iou = summary["per_student"]["feature-kd"]["agreement"]["mean_iou"]
    assert mean_iou["mean"] is None and mean_iou["note"].startswith("undefined")
    assert "mean IoU of matches" in (tmp_path / "out" / "report.html").read_text()
    assert "deploy gate passed" in capsys.readouterr().out  # nothing found, nothing missed or added
    assert parse_gate("ece=0.1,inherited=0.5", "image-classification", "--fail-over") == {"ece": 0.1, "inherited": 0.5}
    with pytest.raises(ValueError, match="use --fail-over"):
        parse_gate("missed=1", "detection")
    summary = {"task": "image-classification", "per_student": {"s": {"agreement": {}}},
               "calibration": {"s": {"ece": 0.07}},
               "inherited_errors": {"s": {"overall": {"inherited_share_of_teacher_errors": 0.4}}}}
    assert (gate_figure(summary, "s", "ece"), gate_figure(summary, "s", "inherited")) == (0.07, 0.4)


def test_each_students_embedding_panel_is_coloured_by_its_own_disagreement():
    from reports.html import embedding_figure

    records = [{"image": f"{k}.png", "teacher": {"embedding": [k, k * k % 5, 1]},
                "students": {"a": {"embedding": [k, 1, k % 3], "disagreement": k / 10},
                             "b": {"embedding": [1, k, k % 2], "disagreement": 1 - k / 10}}} for k in range(6)]
    fig = embedding_figure(records, ["a", "b"])
    teacher, a, b = (list(trace.marker.color) for trace in fig.data)
    assert teacher == a == [k / 10 for k in range(6)] and b == [1 - k / 10 for k in range(6)]
    assert fig.data[0].marker.cmin == fig.data[2].marker.cmin == 0.0  # one scale for every panel


def test_map50_of_boxes_with_nan_is_a_number_and_agrees_with_its_bootstrap():
    """A NaN score (a model gone wrong, or a hand-made results file) leaves its box out rather than failing the whole
    accuracy section (the COCO evaluation refuses it); a box with a NaN coordinate overlaps nothing, a false positive,
    in the headline mAP@0.5 as in its bootstrap."""
    from reports.aggregate import _accuracy, _detections_matched, weighted_map50
    from weights.registry import get_pair

    nan = float("nan")
    truth = Labels(boxes={"a.png": [("circle", [0, 0, 10, 10])], "b.png": [("circle", [20, 20, 30, 30])]})

    def record(image: str, found: list[tuple]) -> dict:
        return {"image": image, "teacher": {"detections": [{"box": b, "label": "circle", "score": p}
                                                           for b, p in found]}, "students": {}}

    good = [record("a.png", [([0, 0, 10, 10], 0.5)]), record("b.png", [([20, 20, 30, 30], 0.8)])]
    with_nan_score = [record("a.png", [([0, 0, 10, 10], 0.5), ([1, 1, 9, 9], nan)]), good[1]]
    pair = get_pair("shapes-detection")
    assert _accuracy(with_nan_score, pair, [], truth)["teacher"]["map_50"] == _accuracy(good, pair, [], truth)[
        "teacher"]["map_50"] == 1.0
    with_nan_box = [record("a.png", [([nan, 0, 10, 10], 0.9), ([0, 0, 10, 10], 0.5)]), good[1]]
    headline = _accuracy(with_nan_box, pair, [], truth)["teacher"]["map_50"]
    assert headline == pytest.approx(float(weighted_map50(_detections_matched(with_nan_box, "teacher", truth),
                                                          np.ones((1, 2)))[0]), abs=1e-4)
    assert headline < 1.0  # the NaN box, ranked first, matched nothing


def test_map50_one_class_at_a_time_equals_torchmetrics_over_all_classes_at_once():
    """The summary's mAP@0.5 runs torchmetrics one class at a time (bounding the COCO evaluation's memory), through
    faster-coco-eval: on random images with crowd regions, a class only a model finds, a labelled class no model
    finds and images with nothing, it equals torchmetrics' mAP@0.5 over every class at once through pycocotools."""
    from torchmetrics.detection import MeanAveragePrecision

    from reports.aggregate import _accuracy
    from weights.registry import get_pair

    generator = np.random.default_rng(3)

    def boxes(n: int) -> np.ndarray:
        corner = generator.uniform(0, 100, (n, 2))
        return np.concatenate([corner, corner + generator.uniform(4, 30, (n, 2))], 1).round(1)

    values = []
    for case in range(6):
        records, truth, crowd = [], {}, {}
        for i in range(12):
            labelled = boxes(int(generator.integers(0, 5)))
            names = generator.choice(["circle", "square", "star"], len(labelled)).tolist()
            truth[f"{i}.png"] = [(n, b.tolist()) for n, b in zip(names, labelled, strict=True)]
            crowd[f"{i}.png"] = [("square", boxes(1)[0].tolist())] if i % 5 == 1 else []
            sides = {}
            for model in ("teacher", "s"):
                near = labelled[generator.random(len(labelled)) < 0.8] + generator.normal(0, 2, (1, 4))
                found = np.concatenate([near, boxes(int(generator.integers(0, 4)))]) if len(near) else boxes(2)
                labels = generator.choice(["circle", "square", "star", "unicorn"], len(found)).tolist()
                sides[model] = {"detections": [{"box": b.tolist(), "label": n, "score": float(generator.random())}
                                               for b, n in zip(found, labels, strict=True)]}
            records.append({"image": f"{i}.png", "teacher": sides["teacher"], "students": {"s": sides["s"]}})
        ours = _accuracy(records, get_pair("shapes-detection"), ["s"], Labels(boxes=truth, crowd_boxes=crowd))
        index = {n: k for k, n in enumerate(["circle", "square", "star", "unicorn"])}
        for model in ("teacher", "s"):
            metric = MeanAveragePrecision(iou_thresholds=[0.5], backend="pycocotools")
            for r in records:
                found = (r["teacher"] if model == "teacher" else r["students"][model])["detections"]
                held = truth[r["image"]] + crowd[r["image"]]
                metric.update([{"boxes": torch.tensor([d["box"] for d in found]).reshape(-1, 4),
                                "scores": torch.tensor([d["score"] for d in found]),
                                "labels": torch.tensor([index[d["label"]] for d in found])}],
                              [{"boxes": torch.tensor([b for _, b in held]).reshape(-1, 4),
                                "labels": torch.tensor([index[n] for n, _ in held]),
                                "iscrowd": torch.tensor([k >= len(truth[r["image"]]) for k in range(len(held))])}])
            at_once = float(metric.compute()["map_50"])
            # equal up to the 4-decimal rounding (torchmetrics takes its mean in float32)
            assert ours[model]["map_50"] == pytest.approx(at_once, abs=1e-4 + 1e-9), (case, model)
            values.append(at_once)
    assert sum(0 < v < 1 for v in values) >= 8  # the cases are not degenerate


def test_a_process_whose_peer_stopped_says_so_in_one_line(folder, tmp_path, monkeypatch, capsys):
    """Ctrl-C on torchrun while one process already waits at a barrier for the others: the barrier fails (gloo:
    "Connection closed by peer"); that process says another one stopped and how to go on, with no traceback."""
    import torch.distributed as dist

    from reports.dataset import main

    def gone(*_, **__):
        raise RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:29500")

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "init_process_group", lambda backend: None)
    monkeypatch.setattr(dist, "barrier", gone)
    monkeypatch.setattr(dist, "destroy_process_group", gone)
    with pytest.raises(SystemExit) as stopped:
        main(["--images", str(folder / "images"), "--pair", "shapes-detection", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert stopped.value.code == 130, err
    assert "[rank 0] another process of this run stopped, so this one did too" in err and "--resume" in err


def test_the_console_gives_the_figures_against_the_labels_and_a_single_process_no_rank(folder, tmp_path, capsys):
    from reports.dataset import main

    main(["--images", str(folder / "images"), "--pair", "shapes-detection", "--out", str(tmp_path / "run"),
          "--labels", str(folder / "labels.json"), "--batch", "4"])
    out = capsys.readouterr().out
    printed = json.loads(out[out.index("{"):out.index("\nwrote ")])  # after the progress lines
    assert printed["accuracy"]["teacher"]["score_threshold"] == 0.01 and 0 < printed["accuracy"]["teacher"]["map_50"]
    assert printed["labels"]["images_labelled"] == 8 and "[rank" not in out


def test_a_zip_given_as_the_folder_is_named_as_a_zip(tmp_path):
    archive = tmp_path / "scenes.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.png", b"")
    with pytest.raises(InputError, match="is a zip: extract it"):
        list_images(archive)


def test_the_reports_words_fit_the_task_and_say_why_a_figure_is_undefined():
    """A CLIP pair's errors are wrong classes, not missed objects, and its CKA is over image embeddings, not stages
    pooled to 8×8; an undefined mAP says why in the page itself and still names its score threshold."""
    from reports.html import cka_section, errors_table, figures_table

    tally = {"total": 2, "both right": 1, "fixed": 0, "lost": 0, "inherited": 1, "both wrong, differently": 0}
    cka = {"matrix": [[0.9]], "baseline": [[0.01]], "teacher_layers": ["image embedding"],
           "student_layers": ["image embedding"], "batches": 1, "images": 16}
    clip = {"task": "classification", "inherited_errors": {"s": {"overall": tally, "per_class": {}}},
            "dataset_cka": {"s": cka}}
    assert "the same wrong class" in errors_table(clip) and "miss" not in errors_table(clip)
    assert "image embedding, one vector per image" in cka_section(clip) and "8×8" not in cka_section(clip)
    detection = dict(clip, task="detection")
    assert "both miss the object" in errors_table(detection) and "pooled to 8×8" in cka_section(detection)
    note = "undefined: no labelled object in the labelled images that were read"
    summary = {"per_student": {"s": {"agreement": {"f1": {"mean": 0.9, "ci95": [0.8, 1.0]}},
                                     "consensus": {"mean": {"mean": 0.5, "ci95": [0.4, 0.6]}}}},
               "accuracy": {m: {"map_50": None, "score_threshold": 0.01, "note": note} for m in ("teacher", "s")}}
    page = figures_table(summary, ["s"])
    assert f"Against the labels, teacher, s: {note}." in page and "scoring 0.01 or more" in page
