"""Recipe that trains the builtin Shapes pairs: teacher first, then the student distilled from it.

    python -m weights.shapes.train_nets                      # all four models, the committed recipe
    python -m weights.shapes.train_nets --task detection --role student --steps 300   # one model
    python -m weights.shapes.train_nets --role student --method adm-consensus --half  # the ADM students
    python -m weights.shapes.train_nets --role student --method online-adm --half     # the online-ADM pairs

The online-ADM pairs train for ``ONLINE_STEPS`` (4,000) joint steps, twice the offline recipe: an offline student
is the end of 4,000 steps in sequence (its teacher's 2,000, then its own 2,000 from a finished teacher), and the
online pair gets as many; at 2,000 joint steps the online segmentation student stayed below the student bar.

Students learn from ground truth plus the teacher's outputs (soft heatmaps / soft pixel labels) and the
teacher's encoder features at strides 8 and 16 (1x1 adapters map student channels onto the teacher's;
the adapters are dropped after training). Scenes come from seeds in ``TRAIN_SEEDS``; evaluation uses
``EVAL_SEED_START`` onwards, which training never sees.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from analysis.profiling import count_parameters
from methods.distill import adm_feature_losses, feature_kd, heatmap_kd, soft_label_kd
from weights.shapes.checkpoints import BUILTIN_CONFIGS, BUILTIN_DIR, checkpoint_path, save_checkpoint
from weights.shapes.nets import DETECTION_STRIDE, ShapesNet, ShapesNetConfig, normalise
from weights.shapes.world import TRAIN_SEEDS, TUNING_SEED_START, render_scene

KD_STAGES = (2, 3)  # encoder stages (strides 8 and 16) matched by feature distillation
ADM_TAU = 0.1  # softmax temperature of ADM's consensus and divergence weights (the Analysis tab's default)
STEPS = 2000  # the committed recipe's steps (batch 32) for a teacher, or for a student from a finished teacher
ONLINE_STEPS = 4000  # online ADM: teacher and student trained together, as many steps as both of the offline way


def detection_targets(boxes: np.ndarray, labels: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    """CenterNet targets at stride 4: Gaussian class heatmaps, log sizes and offsets at the centre cells."""
    h, w = height // DETECTION_STRIDE, width // DETECTION_STRIDE
    heat = np.zeros((5, h, w), np.float32)
    reg = np.zeros((4, h, w), np.float32)  # log w, log h, dx, dy (in cells)
    mask = np.zeros((h, w), np.float32)
    ys, xs = np.mgrid[0:h, 0:w]
    for (x0, y0, x1, y1), label in zip(boxes, labels, strict=True):
        cx, cy = (x0 + x1) / 2 / DETECTION_STRIDE, (y0 + y1) / 2 / DETECTION_STRIDE
        bw, bh = (x1 - x0) / DETECTION_STRIDE, (y1 - y0) / DETECTION_STRIDE
        ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
        sigma = max(math.sqrt(bw * bh) / 6, 0.5)
        gauss = np.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma**2))
        heat[label - 1] = np.maximum(heat[label - 1], gauss)
        reg[:, iy, ix] = (math.log(bw), math.log(bh), cx - ix, cy - iy)
        mask[iy, ix] = 1.0
    return {"heat": heat, "reg": reg, "mask": mask}


class ScenePool:
    """Scenes rendered once from training seeds, served in random batches with flips."""

    def __init__(self, task: str, count: int, seed_offset: int = 0):
        self.task = task
        scenes = [render_scene(TRAIN_SEEDS[seed_offset + i]) for i in range(count)]
        self.images = torch.from_numpy(np.stack([s.image for s in scenes]))
        if task == "segmentation":
            self.labels = torch.from_numpy(np.stack([s.labels for s in scenes]).astype(np.int64))
        else:
            self.boxes = [s.boxes for s in scenes]
            self.classes = [s.class_ids for s in scenes]

    def batch(self, rng: np.random.Generator, size: int) -> dict[str, torch.Tensor]:
        index = rng.integers(0, len(self.images), size)
        flip_x, flip_y = rng.random(size) < 0.5, rng.random(size) < 0.5
        images = self.images[index].clone()
        for i in range(size):  # flips keep every shape a valid shape of the same class
            images[i] = images[i].flip(1) if flip_x[i] else images[i]
            images[i] = images[i].flip(0) if flip_y[i] else images[i]
        out = {"images": images}
        if self.task == "segmentation":
            labels = self.labels[index].clone()
            for i in range(size):
                labels[i] = labels[i].flip(1) if flip_x[i] else labels[i]
                labels[i] = labels[i].flip(0) if flip_y[i] else labels[i]
            out["labels"] = labels
            return out
        height, width = images.shape[1:3]
        targets = []
        for i, j in enumerate(index):
            boxes = self.boxes[j].copy()
            if flip_x[i]:
                boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
            if flip_y[i]:
                boxes[:, [1, 3]] = height - boxes[:, [3, 1]]
            targets.append(detection_targets(boxes, self.classes[j], height, width))
        for key in ("heat", "reg", "mask"):
            out[key] = torch.from_numpy(np.stack([t[key] for t in targets]))
        return out


def photometric_jitter(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Small brightness, contrast and noise changes so the models do not rely on exact rendering."""
    b = x.shape[0]
    gain = torch.from_numpy(rng.uniform(0.85, 1.15, (b, 1, 1, 1))).float()
    bias = torch.from_numpy(rng.uniform(-0.2, 0.2, (b, 1, 1, 1))).float()
    noise = torch.randn_like(x) * torch.from_numpy(rng.uniform(0, 0.15, (b, 1, 1, 1))).float()
    return x * gain + bias + noise


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of objects."""
    pred = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    pos = -(torch.log(pred) * (1 - pred) ** 2 * positive).sum()
    neg = -(torch.log(1 - pred) * pred**2 * (1 - target) ** 4 * (1 - positive)).sum()
    return (pos + neg) / positive.sum().clamp(min=1)


def task_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    if "logits" in out:
        return F.cross_entropy(out["logits"], batch["labels"])
    mask = batch["mask"].unsqueeze(1)
    reg = torch.cat([out["size"], out["offset"]], dim=1)
    reg_loss = (F.l1_loss(reg, batch["reg"], reduction="none") * mask).sum() / mask.sum().clamp(min=1)
    return focal_loss(out["heatmap"], batch["heat"]) + reg_loss


METHODS: dict[str, str] = {
    "output-kd": "output KD",
    "feature-kd": "output KD + feature KD",
    "adm-consensus": "output KD + ADM consensus-weighted feature KD (frozen teacher)",
    "online-adm": "online ADM: teacher and student from scratch together (consensus / divergence learning)",
}


def output_kd(out: dict, teacher_out: dict, temperature: float = 2.0) -> torch.Tensor:
    """Output distillation: soft pixel labels for segmentation, soft heat maps and boxes for detection."""
    if "logits" in out:
        return soft_label_kd(out["logits"], teacher_out["logits"], temperature)
    return heatmap_kd(out, teacher_out)


def distillation_loss(method: str, out: dict, teacher_out: dict, adapters: nn.ModuleList) -> torch.Tensor:
    """The distillation terms of ``method`` (a key of :data:`METHODS`), added to the student's task loss.

    For ``online-adm`` the teacher's outputs carry gradients: its divergence-learning term is included here
    (gradients reach only the teacher through it), while every student term sees the teacher detached.
    """
    detached = {k: v.detach() if torch.is_tensor(v) else [f.detach() for f in v] for k, v in teacher_out.items()}
    loss = output_kd(out, detached)
    if method == "output-kd":
        return loss
    student_maps = [adapter(out["features"][s]) for adapter, s in zip(adapters, KD_STAGES, strict=True)]
    teacher_maps = [teacher_out["features"][s] for s in KD_STAGES]
    if method == "feature-kd":
        return loss + feature_kd(student_maps, [t.detach() for t in teacher_maps])
    for stage, student_map, teacher_map in zip(KD_STAGES, student_maps, teacher_maps, strict=True):
        consensus, divergence = adm_feature_losses(student_map, teacher_map, ADM_TAU, out["features"][stage])
        loss = loss + consensus + (divergence if method == "online-adm" else 0.0)
    return loss


PROBE_SCENES, PROBE_SIZE = 16, 128  # the training monitor's fixed probe: tuning-range scenes no pool reaches


def probe_scenes(task: str) -> tuple[list, list]:
    """The monitor's probe: ``(images, targets)``, 16 scenes of 128 x 128 from ``TUNING_SEED_START`` on, with their
    ground-truth boxes (detection) or label masks (segmentation) for ADM's foreground figures."""
    scenes = [render_scene(TUNING_SEED_START + 50_000 + i, PROBE_SIZE, PROBE_SIZE) for i in range(PROBE_SCENES)]
    return [s.image for s in scenes], [s.boxes if task == "detection" else s.labels for s in scenes]


def train(task: str, role: str, steps: int, batch_size: int = 32, pool_size: int = 12000, lr: float = 2e-3,
          seed: int = 0, log_every: int = 50, method: str = "feature-kd", out: Path | None = None,
          half: bool = False, monitor: Callable | None = None, timings: dict | None = None) -> Path:
    """Train one builtin model and save it as safetensors; returns the path.

    ``role="teacher"`` trains a teacher on ground truth alone. ``role="student"`` trains a student on ground
    truth plus the distillation terms of ``method``: from the committed teacher (frozen), or for ``online-adm``
    from a teacher trained from scratch beside it, saved too (``..._teacher_online-adm...``).
    ``out``: a folder for the comparison's checkpoints (names carry method and seed); by default the committed
    ``weights/checkpoints/shapes_<task>_<role>[_<method>].safetensors`` (no method suffix for ``feature-kd``, the
    recipe of the pairs' first students). ``half``: store fp16 (they load as fp32). ``monitor``: for a student,
    ``monitor(teacher, student)`` makes an object with ``every`` and ``step(step, losses)`` (e.g. a
    :class:`compare.monitor.DistillMonitor`; ``python -m compare.training_logs`` passes one), called at step 1 and
    every ``every`` steps with the loss terms. ``timings``: filled with ``loop_seconds``, the training loop's wall
    time (scene rendering excluded).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config: ShapesNetConfig = BUILTIN_CONFIGS[(task, role)]
    model = ShapesNet(config).train()
    teacher, adapters, online = None, nn.ModuleList(), role == "student" and method == "online-adm"
    if role == "student":
        from weights.shapes.checkpoints import load_builtin_model

        teacher = ShapesNet(BUILTIN_CONFIGS[(task, "teacher")]).train() if online \
            else load_builtin_model(task, "teacher").eval()
        t_widths = BUILTIN_CONFIGS[(task, "teacher")].widths
        adapters = nn.ModuleList(nn.Conv2d(config.widths[s], t_widths[s], 1) for s in KD_STAGES)
    params = list(model.parameters()) + list(adapters.parameters())
    params += list(teacher.parameters()) if online else []
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.05)
    start = time.time()
    tag = f"{task}/{role}" + (f"/{method}/s{seed}" if out is not None else "")
    print(f"[{tag}] rendering {pool_size} training scenes", flush=True)
    pool = ScenePool(task, pool_size)
    print(f"[{tag}] {count_parameters(model):,} params; pool ready in {time.time() - start:.0f}s", flush=True)
    if out is None:  # the registered checkpoints: today's students keep their name, other methods add theirs
        path = checkpoint_path(task, role, None if method == "feature-kd" else method)
        teacher_path = checkpoint_path(task, "teacher", method) if online else None
    else:
        out.mkdir(parents=True, exist_ok=True)
        path = out / comparison_name(task, role, method, seed)
        teacher_path = out / comparison_name(task, "teacher", method, seed) if online else None
    monitor = monitor(teacher, model) if monitor is not None and teacher is not None else None
    loop_start = time.perf_counter()
    for step in range(1, steps + 1):
        batch = pool.batch(rng, batch_size)
        x = photometric_jitter(normalise(batch["images"]), rng)
        result = model(x)
        loss = student_task = task_loss(result, batch)
        if teacher is not None:
            with torch.set_grad_enabled(online):
                teacher_out = teacher(x)
            distil = distillation_loss(method, result, teacher_out, adapters)
            loss = loss + distil
            if online:
                loss = loss + task_loss(teacher_out, batch)
            if monitor is not None and (step == 1 or step % monitor.every == 0):  # the only host syncs it adds
                monitor.step(step, {"task": student_task.item(), "distillation": distil.item(), "total": loss.item()})
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 5.0)
        optimiser.step()
        schedule.step()
        if step % log_every == 0 or step == steps:
            print(f"[{tag}] step {step}/{steps} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
        if step % 500 == 0 or step == steps:
            for net, where in ((model, path), (teacher, teacher_path)):
                if where is not None:
                    save_checkpoint(net.eval(), where, half=half)
                    net.train()
    if timings is not None:
        timings["loop_seconds"] = time.perf_counter() - loop_start
    return path


def comparison_name(task: str, role: str, method: str, seed: int) -> str:
    """File name of one checkpoint of the distillation-method comparison."""
    return f"shapes_{task}_{role}_{method}_s{seed}.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["detection", "segmentation", "all"], default="all")
    parser.add_argument("--role", choices=["teacher", "student", "both"], default="both")
    parser.add_argument("--method", choices=list(METHODS), default="feature-kd",
                        help="how the student is distilled (online-adm also trains its own teacher)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training steps (default {STEPS}; {ONLINE_STEPS} for online-adm, teacher and student "
                             "together)")
    parser.add_argument("--half", action="store_true", help="store fp16 weights (half the bytes)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = ["detection", "segmentation"] if args.task == "all" else [args.task]
    roles = ["teacher", "student"] if args.role == "both" else [args.role]
    BUILTIN_DIR.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        for role in roles:
            steps = args.steps or (ONLINE_STEPS if role == "student" and args.method == "online-adm" else STEPS)
            print(f"saved {train(task, role, steps, method=args.method, half=args.half)}", flush=True)


if __name__ == "__main__":
    main()
