"""Watch a student learn: a few lines in any PyTorch training loop log how it comes to agree with its teacher.

    from compare.monitor import DistillMonitor

    monitor = DistillMonitor(teacher, student, probe_images, "segmentation", every=100, log_dir="runs/kd",
                             adapter=compare.TaskAdapter("segmentation", labels))
    for step in range(1, steps + 1):
        ...                                   # your forward, loss, backward, optimiser step
        monitor.step(step, losses={"task": task_loss.item(), "kd": kd_loss.item()})
    monitor.close()

Every ``every`` steps, on the fixed probe images, one forward of each model (under ``torch.inference_mode``, both
models in eval mode, their modes restored after) gives:

- **agreement** with the teacher, as the tabs compute it (detection: F1, mean IoU of matches; segmentation: mIoU,
  pixel agreement; classification: top-1 match, KL, JS), averaged over the probe images;
- **consensus** per shared stride (the Analysis tab's affinity consensus after ADM: mean, and on the foreground and
  background, where the foreground is the probe's own masks or boxes when given, else the teacher's);
- **dataset CKA** per shared stride over the probe images with the unbiased estimator (:mod:`analysis.cka`), beside
  its permuted-images baseline;
- the **losses** the loop passes in;
- a **snapshot**: the consensus map at the deepest shared stride of the first ``snapshots`` probe images.

Each logged step is one JSON line in ``<log_dir>/monitor.jsonl`` (the Training tab reads it) and, when
``tensorboard`` is installed, TensorBoard scalars and images in ``log_dir``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analysis.cka import MIN_SAMPLES, dataset_cka
from analysis.consensus import affinity_consensus
from analysis.features import match_stages
from compare.analysis import DEFAULT_TAU
from compare.inputs import InputError
from compare.modules import ModulePair, TaskAdapter
from compare.vision import VisionRequest, run_vision
from weights.predictors import Predictor
from weights.registry import Pair, Student, get_pair

LOG_NAME = "monitor.jsonl"
AGREEMENT_KEYS = {"detection": ("f1", "mean_iou", "label_agreement"), "segmentation": ("miou", "pixel_agreement"),
                  "image-classification": ("top1_match", "kl", "js")}


def _mean(values: list) -> float | None:
    numbers = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return round(sum(numbers) / len(numbers), 5) if numbers else None


def _loss(value) -> float | None:
    """A loss for the log: rounded, or None (JSON null) when it is NaN or infinite (a diverged step)."""
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None


def _number(value: float) -> float | None:
    """A figure for the log: rounded, or None (JSON null) where it is undefined (NaN: constant features)."""
    return None if math.isnan(value) else round(value, 5)


def _modes(model: torch.nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def _restore(model: torch.nn.Module, modes: list[bool]) -> None:
    for module, training in zip(model.modules(), modes, strict=True):
        module.training = training


def foreground_from_targets(target: Any, height: int, width: int) -> torch.Tensor:
    """A probe image's ground-truth foreground, (H, W) bool: from a mask (any (H, W) array, nonzero = object), or
    from boxes ((N, 4) xyxy in pixels)."""
    array = torch.as_tensor(np.asarray(target))
    if array.dim() == 2 and tuple(array.shape) == (height, width):
        return array != 0
    boxes = array.reshape(-1, 4).float()
    ys = torch.arange(height).float()[:, None] + 0.5
    xs = torch.arange(width).float()[None] + 0.5
    mask = torch.zeros(height, width, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes.tolist():
        mask |= (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    return mask


class DistillMonitor:
    """Log a student's agreement with its teacher over training (see the module).

    Args:
        teacher, student: the two modules (any architecture; their weights are read, never changed).
        probe: the fixed probe images: a list of RGB uint8 (H, W, 3) arrays (or paths, PIL images), all of one
            size, at least four (dataset CKA needs four); a few dozen at most keeps the cost low.
        task: ``"detection"``, ``"segmentation"`` or ``"image-classification"``.
        every: log every this many steps (and at step 1).
        log_dir: where ``monitor.jsonl`` (and TensorBoard's files) go; None: keep the records in memory only.
        adapter: how plain modules read images and write outputs (:class:`compare.TaskAdapter`).
        like: instead of ``adapter``, a registered pair whose family reads these modules (e.g. ``"shapes-detection"``
            for the builtin nets).
        targets: per probe image, ground-truth masks ((H, W), nonzero = object) or boxes ((N, 4) xyxy): ADM's
            foreground and background figures then use them; None: the teacher's own boxes or mask.
        name: the student's name in the records.
        snapshots: how many probe images' consensus maps to keep per logged step.
        tau: the consensus softmax temperature (as the Analysis tab's).
        tensorboard: also write TensorBoard scalars and images when ``torch.utils.tensorboard`` imports.
        run: a name for this run in the records (e.g. the method).

    Raises:
        InputError: a bad task, fewer than four probe images, images of different sizes, no adapter and no ``like``.
    """

    def __init__(self, teacher: torch.nn.Module, student: torch.nn.Module, probe: Sequence[Any], task: str,
                 every: int = 100, log_dir: str | Path | None = None, adapter: TaskAdapter | None = None,
                 like: str | None = None, targets: Sequence[Any] | None = None, name: str = "student",
                 snapshots: int = 4, tau: float = DEFAULT_TAU, tensorboard: bool = True, run: str = ""):
        from compare import read_images

        if task == "classification":
            task = "image-classification"
        if task not in AGREEMENT_KEYS:
            raise InputError(f"task must be one of {', '.join(AGREEMENT_KEYS)}, got {task!r}")
        if not isinstance(every, int) or every < 1:
            raise InputError(f"every must be a whole number of steps >= 1, got {every!r}")
        self.images, _ = read_images(list(probe))
        if len(self.images) < MIN_SAMPLES:
            raise InputError(f"the probe needs at least {MIN_SAMPLES} images (dataset CKA), got {len(self.images)}")
        if len({image.shape for image in self.images}) != 1:
            raise InputError("the probe images must all have one size (one batch)")
        self.teacher, self.student, self.task, self.every, self.name = teacher, student, task, every, name
        self.tau, self.snapshots, self.run = tau, snapshots, run
        self.pair, self.predictors = self._bind(adapter, like)
        height, width = self.images[0].shape[:2]
        self.foregrounds = None if targets is None else [foreground_from_targets(t, height, width) for t in targets]
        self.records: list[dict] = []
        self.seconds = 0.0  # time spent measuring, for the overhead benchmark
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.writer = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            (self.log_dir / LOG_NAME).unlink(missing_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.writer = SummaryWriter(str(self.log_dir))
                except ImportError:  # tensorboard is optional: the JSONL has everything
                    self.writer = None

    def _bind(self, adapter: TaskAdapter | None, like: str | None) -> tuple[Pair, dict[str, Predictor]]:
        if adapter is not None:
            pair = ModulePair(self.teacher, {self.name: self.student}, adapter, name=self.run or "training")
            spec = pair.as_pair()
            return spec, pair.predictors(spec, list(spec.students))
        if like is None:
            raise InputError("give adapter= (a compare.TaskAdapter for your modules) or like= (a registered pair "
                             "whose family reads them, e.g. 'shapes-detection')")
        base = get_pair(like, self.task)
        spec = Pair(self.run or base.name, base.task, base.teacher, (Student(self.name, base.students[0].source,
                                                                             "in training"),),
                    base.licence, labels=base.labels, preprocessing=base.preprocessing)
        from weights.families import family_of

        family = family_of(base.teacher)
        return spec, {"teacher": Predictor(spec, base.teacher, family=family, loaded=(self.teacher, None)),
                      self.name: Predictor(spec, base.students[0].source, family=family, loaded=(self.student, None))}

    def step(self, step: int, losses: dict[str, float] | None = None, force: bool = False) -> dict | None:
        """Measure and log at step 1 and every ``every`` steps (or when ``force``); returns the record, else None."""
        if not force and step != 1 and step % self.every:
            return None
        start = time.perf_counter()
        modes = {"teacher": _modes(self.teacher), "student": _modes(self.student)}
        try:
            self.teacher.eval()
            self.student.eval()
            with torch.inference_mode():
                record = self.measure()
        finally:
            _restore(self.teacher, modes["teacher"])
            _restore(self.student, modes["student"])
        record = {"step": int(step), "run": self.run, "task": self.task, **record,
                  "losses": {k: _loss(v) for k, v in (losses or {}).items()}}
        self.seconds += time.perf_counter() - start
        record["monitor_seconds"] = round(time.perf_counter() - start, 4)
        self.records.append(record)
        self._write(record)
        return record

    def measure(self) -> dict:
        """The figures on the probe from one forward of each model (see the module); no logging."""
        stages: dict = {}
        request = VisionRequest(self.pair, list(self.pair.students), self.images, latency=False, consensus=True,
                                tau=self.tau, foregrounds=self.foregrounds, overlays=False)  # figures, batched
        results = run_vision(request, self.predictors, stages)
        agreement = {key: _mean([r.agreement[self.name].get(key) for r in results])
                     for key in AGREEMENT_KEYS[self.task]}
        per_stride: dict[str, dict] = {}
        for r in results:
            for stage in r.analysis.per_student[self.name]["stages"]:
                block = per_stride.setdefault(f"stride {stage['stride']}", {"mean": [], "foreground": [],
                                                                             "background": []})
                for key in block:
                    block[key].append(stage[f"consensus_{key}"])
        consensus = {stride: {key: _mean(values) for key, values in block.items()}
                     for stride, block in per_stride.items()}
        matched = match_stages(stages["teacher"][0], stages[self.name][0])
        index = {(t.name, s.name): k for k, (t, s) in enumerate(matched)}
        student_maps = [torch.cat(self._by_stage(stages[self.name], s.name)) for _, s in matched]
        teacher_maps = [torch.cat(self._by_stage(stages["teacher"], t.name)) for t, _ in matched]
        fitted = [self._fit(t, s) for t, s in zip(teacher_maps, student_maps, strict=True)]
        matrix, baseline = dataset_cka([t for t, _ in fitted], [s for _, s in fitted])
        diagonal = torch.stack([matrix.diagonal(), baseline.diagonal()]).cpu().tolist()  # the one read-back
        cka = {f"stride {t.stride}": _number(diagonal[0][index[(t.name, s.name)]]) for t, s in matched}
        chance = {f"stride {t.stride}": _number(diagonal[1][index[(t.name, s.name)]]) for t, s in matched}
        deepest_t, deepest_s = teacher_maps[-1], student_maps[-1]
        maps = affinity_consensus(deepest_t[: self.snapshots], deepest_s[: self.snapshots])
        return {"agreement": agreement, "consensus": consensus, "cka": cka, "cka_baseline": chance,
                "maps": {"stride": matched[-1][0].stride,
                         "images": [[[None if math.isnan(v) else round(v, 3) for v in row] for row in image]
                                    for image in maps.float().cpu().tolist()]}}

    @staticmethod
    def _by_stage(per_image: list[list], name: str) -> list[torch.Tensor]:
        return [next(s.features for s in stages if s.name == name) for stages in per_image]

    @staticmethod
    def _fit(teacher: torch.Tensor, student: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both maps on one grid (a stride's grids can differ by a cell where sizes round differently)."""
        h, w = min(teacher.shape[-2], student.shape[-2]), min(teacher.shape[-1], student.shape[-1])
        return teacher[..., :h, :w], student[..., :h, :w]

    def _write(self, record: dict) -> None:
        if self.log_dir is None:
            return
        with open(self.log_dir / LOG_NAME, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = record["step"]
            for group in ("agreement", "cka", "cka_baseline", "losses"):
                for key, value in record[group].items():
                    if value is not None:
                        self.writer.add_scalar(f"{group}/{key}", value, step)
            for stride, block in record["consensus"].items():
                for key, value in block.items():
                    if value is not None:
                        self.writer.add_scalar(f"consensus/{stride}/{key}", value, step)
            for i, image in enumerate(record["maps"]["images"]):
                array = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
                self.writer.add_image(f"consensus_map/probe_{i}", (array[None] + 1) / 2, step)  # [-1, 1] -> [0, 1]
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_log(path: str | Path, max_bytes: int = 50_000_000) -> list[dict]:
    """The records of a ``monitor.jsonl`` (a run's log), in step order.

    Raises:
        InputError: a file over ``max_bytes``, not JSON lines, or lines without a ``step``.
    """
    path = Path(path)
    if path.stat().st_size > max_bytes:
        raise InputError(f"{path.name} is {path.stat().st_size / 1e6:.0f} MB; a monitor log is at most "
                         f"{max_bytes / 1e6:.0f} MB here (log less often, or fewer snapshots).")
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise InputError(f"{path.name}, line {number}: not JSON ({error.msg}).") from error
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise InputError(f"{path.name}, line {number}: not a monitor record (no whole-number 'step').")
            records.append(record)
    if not records:
        raise InputError(f"{path.name} holds no records.")
    return sorted(records, key=lambda r: r["step"])
