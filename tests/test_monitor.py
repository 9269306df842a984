"""The training monitor (compare/monitor.py), dataset CKA (analysis/cka.py) and the Training tab."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

import compare
from analysis.cka import MinibatchCKA, dataset_cka, hsic_unbiased
from compare.inputs import InputError
from compare.monitor import DistillMonitor, read_log
from weights.shapes.world import render_scene

LABELS = ["background", "circle", "square", "triangle", "star", "cross"]


class TinySegmenter(nn.Module):
    """Two strided stages (hooked as ``layer1``, ``layer2``) with batch norm, and a 1x1 head."""

    def __init__(self, width: int):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(width, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Conv2d(width, len(LABELS), 1)

    def forward(self, x):
        return self.head(self.layer2(self.layer1(x)))


@pytest.fixture(scope="module")
def probe():
    scenes = [render_scene(900_000 + 60_000 + i, 64, 64) for i in range(6)]
    return [s.image for s in scenes], [s.labels for s in scenes]


def test_the_monitor_logs_the_engines_own_figures_and_leaves_training_as_it_was(probe, tmp_path):
    """A tiny pair trained for a few steps: every logged figure equals what the engine reports on the same probe
    with the same models; the student stays in training mode and the monitor moves none of its statistics."""
    torch.manual_seed(0)
    teacher, student = TinySegmenter(16).eval(), TinySegmenter(8).train()
    adapter = compare.TaskAdapter("segmentation", LABELS)
    images, masks = probe
    monitor = DistillMonitor(teacher, student, images, "segmentation", every=3, log_dir=tmp_path, adapter=adapter,
                             tensorboard=False)
    optimiser = torch.optim.SGD(student.parameters(), lr=0.05)
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    for step in range(1, 7):
        loss = (student(batch) - teacher(batch).detach()).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        before = student.layer1[1].running_mean.clone()
        record = monitor.step(step, {"kd": loss.item()})
        assert student.training and all(m.training for m in student.modules())
        assert torch.equal(student.layer1[1].running_mean, before)
        assert (record is None) == (step not in (1, 3, 6))
    lines = [json.loads(line) for line in (tmp_path / "monitor.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 3, 6] and lines[-1]["losses"]["kd"] == pytest.approx(loss.item(), 1e-5)
    student.eval()
    engine = compare.compare(compare.ModulePair(teacher, {"student": student}, adapter), images, consensus=True,
                             latency=False)
    last = lines[-1]
    for key in ("miou", "pixel_agreement"):
        assert last["agreement"][key] == pytest.approx(np.mean([r.agreement["student"][key] for r in engine]),
                                                       abs=1e-4)
    for stage in engine[0].analysis.per_student["student"]["stages"]:
        stride = f"stride {stage['stride']}"
        expected = np.mean([s["consensus_mean"] for r in engine for s in r.analysis.per_student["student"]["stages"]
                            if s["stride"] == stage["stride"]])
        assert last["consensus"][stride]["mean"] == pytest.approx(expected, abs=1e-4)
    assert last["maps"]["stride"] == 4 and np.asarray(last["maps"]["images"], dtype=float).shape == (4, 16, 16)
    assert read_log(tmp_path / "monitor.jsonl") == lines


def test_ground_truth_masks_give_adms_foreground_figures(probe):
    torch.manual_seed(0)
    teacher, student = TinySegmenter(16).eval(), TinySegmenter(8).eval()
    images, masks = probe
    adapter = compare.TaskAdapter("segmentation", LABELS)
    own = DistillMonitor(teacher, student, images, "segmentation", adapter=adapter).step(1)
    truth = DistillMonitor(teacher, student, images, "segmentation", adapter=adapter, targets=masks).step(1)
    assert own["consensus"]["stride 4"]["mean"] == truth["consensus"]["stride 4"]["mean"]  # the same maps
    assert own["consensus"]["stride 4"]["foreground"] != truth["consensus"]["stride 4"]["foreground"]


def test_dataset_cka_is_one_against_itself_and_near_chance_for_other_images(probe):
    torch.manual_seed(0)
    teacher = TinySegmenter(16).eval()
    images, _ = probe
    record = DistillMonitor(teacher, copy.deepcopy(teacher), images, "segmentation",
                            adapter=compare.TaskAdapter("segmentation", LABELS)).step(1)
    assert all(v == pytest.approx(1.0, abs=1e-4) for v in record["cka"].values())
    assert record["agreement"]["miou"] == 1.0


def test_the_builtin_recipes_monitor_reads_the_builtin_nets_as_the_tabs_do():
    """``like="shapes-detection"``: the committed teacher and student modules, logged as the Detection tab reports
    them on each probe scene."""
    from weights.shapes.checkpoints import load_builtin_model

    scenes = [render_scene(900_000 + 70_000 + i, 128, 128) for i in range(4)]
    teacher, student = load_builtin_model("detection", "teacher"), load_builtin_model("detection", "student")
    record = DistillMonitor(teacher, student, [s.image for s in scenes], "detection",
                            like="shapes-detection").step(1)
    tabs = [compare.detect(s.image, "shapes-detection", 0.3, "feature-kd", latency=False) for s in scenes]
    assert record["agreement"]["f1"] == pytest.approx(np.mean([t.agreement["feature-kd"]["f1"] for t in tabs]),
                                                      abs=1e-4)


def test_unbiased_hsic_is_song_et_als_estimator_and_cka_is_invariant_to_rotations():
    torch.manual_seed(0)
    a, b = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 7, dtype=torch.float64)
    k, l = a @ a.T, b @ b.T  # noqa: E741
    n = 9
    kt, lt = k.clone().fill_diagonal_(0), l.clone().fill_diagonal_(0)
    one = torch.ones(n, 1, dtype=torch.float64)
    reference = ((kt @ lt).trace() + (one.T @ kt @ one) * (one.T @ lt @ one) / ((n - 1) * (n - 2))
                 - 2 / (n - 2) * (one.T @ kt @ lt @ one)) / (n * (n - 3))
    assert float(hsic_unbiased(k, l)) == pytest.approx(float(reference), rel=1e-10)
    x = torch.randn(40, 12)
    rotation, _ = torch.linalg.qr(torch.randn(12, 12))
    matrix, baseline = dataset_cka([x], [x @ rotation * 7.0, torch.randn(40, 9)])
    assert float(matrix[0, 0]) == pytest.approx(1.0, abs=1e-5) and abs(float(matrix[0, 1])) < 0.15
    assert abs(float(baseline[0, 0])) < 0.15  # the teacher against other images' features: chance
    with pytest.raises(ValueError, match="at least 4"):
        MinibatchCKA().update([x[:3]], [x[:3]])


def test_minibatches_accumulate_to_the_whole_sets_figure_on_average():
    """Nguyen et al.'s minibatch CKA: HSIC averaged over batches, so batches of one dataset give one figure."""
    torch.manual_seed(0)
    x = torch.randn(64, 10)
    y = x @ torch.randn(10, 6) + 0.5 * torch.randn(64, 6)
    whole, _ = dataset_cka([x], [y])
    cka = MinibatchCKA()
    for start in range(0, 64, 16):
        cka.update([x[start:start + 16]], [y[start:start + 16]])
    assert float(cka.matrix()[0, 0]) == pytest.approx(float(whole[0, 0]), abs=0.1)


def test_bad_monitor_inputs_and_logs_are_named(probe, tmp_path):
    teacher = TinySegmenter(4)
    images, _ = probe
    adapter = compare.TaskAdapter("segmentation", LABELS)
    with pytest.raises(InputError, match="at least 4"):
        DistillMonitor(teacher, teacher, images[:3], "segmentation", adapter=adapter)
    with pytest.raises(InputError, match="one size"):
        DistillMonitor(teacher, teacher, [*images[:3], render_scene(1, 64, 96).image], "segmentation",
                       adapter=adapter)
    with pytest.raises(InputError, match="adapter= .* or like="):
        DistillMonitor(teacher, teacher, images, "segmentation")
    with pytest.raises(InputError, match="every must be"):
        DistillMonitor(teacher, teacher, images, "segmentation", adapter=adapter, every=0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(InputError, match="line 2: not JSON"):
        read_log(bad)
    bad.write_text('{"loss": 1}\n')
    with pytest.raises(InputError, match="no whole-number 'step'"):
        read_log(bad)
    bad.write_text('{"step": 1}\n' * 10)
    with pytest.raises(InputError, match="at most"):
        read_log(bad, max_bytes=50)


def test_the_training_tab_shows_the_four_methods_and_a_run_of_yours(probe, tmp_path):
    from demos.training import first_view, shipped_runs, view

    for task in ("detection", "segmentation"):
        assert list(shipped_runs(task)) == ["output-kd", "feature-kd", "adm-consensus", "online-adm"]
        shown = first_view(task)
        assert [trace.name for trace in shown["curves"].data] == list(shipped_runs(task))
        assert shown["figure"] == {"detection": "agreement: f1", "segmentation": "agreement: miou"}[task]
        assert shown["steps"][0] == 1 and shown["steps"][-1] == 800
    torch.manual_seed(0)
    images, _ = probe
    monitor = DistillMonitor(TinySegmenter(8), TinySegmenter(4), images, "segmentation", every=1, log_dir=tmp_path,
                             adapter=compare.TaskAdapter("segmentation", LABELS), run="mine", tensorboard=False)
    for step in (1, 2):
        monitor.step(step, {"kd": 1.0 / step})
    summary, curves, maps, figure, slider = view("segmentation", ["adm-consensus"], str(tmp_path / "monitor.jsonl"),
                                                 "losses: kd", None)
    assert [t.name for t in curves.data] == ["adm-consensus", "yours: mine"]
    assert "yours: mine" in summary and "1.000 (step 1) → 0.500 (step 2)" in summary
    assert figure["value"] == "losses: kd" and slider["value"] == 800


def test_a_monitored_recipe_trains_the_same_weights_bit_for_bit(tmp_path):
    """The monitor only reads: the builtin recipe with it gives exactly the weights it gives without it."""
    from safetensors.torch import load_file

    from compare.training_logs import RecipeMonitor
    from weights.shapes.train_nets import train

    weights = []
    for monitored in (False, True):
        out = tmp_path / str(monitored)
        monitor = RecipeMonitor("detection", "adm-consensus", out / "log", every=5) if monitored else None
        path = train("detection", "student", 12, batch_size=8, pool_size=64, seed=0, method="adm-consensus",
                     out=out, half=True, log_every=1000, monitor=monitor)
        weights.append(load_file(str(path)))
    assert weights[0].keys() == weights[1].keys() and all(weights[0][k].equal(weights[1][k]) for k in weights[0])
    assert [r["step"] for r in read_log(tmp_path / "True" / "log" / "monitor.jsonl")] == [1, 5, 10]


def test_tensorboard_gets_the_same_scalars_and_the_snapshots(probe, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    images, masks = probe
    monitor = DistillMonitor(TinySegmenter(8), TinySegmenter(4), images, "segmentation", every=1, log_dir=tmp_path,
                             adapter=compare.TaskAdapter("segmentation", LABELS), targets=masks)
    records = [monitor.step(step, {"kd": 0.5 * step}) for step in (1, 2)]
    monitor.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert {"agreement/miou", "losses/kd", "cka/stride 4", "consensus/stride 4/foreground"} <= set(tags["scalars"])
    assert [e.value for e in events.Scalars("losses/kd")] == [0.5, 1.0]
    assert [e.value for e in events.Scalars("agreement/miou")] == pytest.approx(
        [r["agreement"]["miou"] for r in records], abs=1e-6)
    assert {f"consensus_map/probe_{i}" for i in range(4)} <= set(tags["images"])


def test_the_training_view_snaps_to_logged_steps_and_takes_thin_logs(probe, tmp_path):
    """The step slider shows the logged step at or before its value; a log without maps, with a diverged loss, or of
    another task is shown or refused with a clear message, never a crash."""
    from demos.training import view

    *_, maps, _, slider = view("detection", ["output-kd"], None, None, 49)
    assert slider["value"] == 25 and any("step 25," in a.text for a in maps.layout.annotations)
    torch.manual_seed(0)
    images, _ = probe
    monitor = DistillMonitor(TinySegmenter(8), TinySegmenter(4), images, "segmentation", every=1, log_dir=tmp_path,
                             adapter=compare.TaskAdapter("segmentation", LABELS), snapshots=0, tensorboard=False)
    monitor.step(1, {"kd": float("nan")})
    monitor.step(2, {"kd": float("inf")})
    text = (tmp_path / "monitor.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text and json.loads(text.splitlines()[0])["losses"]["kd"] is None
    summary, curves, maps, *_ = view("segmentation", [], str(tmp_path / "monitor.jsonl"), "losses: kd", 2)
    assert maps is None and "– (step 1) → – (step 2)" in summary
    with pytest.raises(InputError, match="logs a segmentation run; choose the segmentation task"):
        view("detection", [], str(tmp_path / "monitor.jsonl"), None, None)
    thin = tmp_path / "thin.jsonl"
    thin.write_text('{"step": 1}\n')
    with pytest.raises(InputError, match="no figures"):
        view("segmentation", [], str(thin), None, None)
    with pytest.raises(InputError, match="is not one"):
        view("generation", None, None, None, None)
