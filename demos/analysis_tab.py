"""Analysis tab: where teacher and student features agree and disagree (consensus and divergence maps after ADM),
their layer similarity (CKA), and their attention for the same target."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from analysis.attention import capture_deformable_sampling, grad_cam, sampling_point_map
from analysis.consensus import FIGURES, SIMILARITY, analyse_stages, projection_is_determined
from analysis.features import Stage, forward_with_stages, match_stages
from analysis.graphs import GraphCache
from analysis.readback import Layout, pack, unpack
from demos.common import (
    ROLES,
    InputError,
    examples,
    exclusive,
    heat_overlay,
    heat_overlays,
    notes_markdown,
    on_gpu,
    read_image,
    students_report,
    upload_image,
    with_colour_bar,
)
from weights.predictors import Geometry, Predictor, predictors_for
from weights.registry import get_pair

DEFAULT_PAIR = "shapes-segmentation"
DEFAULT_TAU = 0.1
METHODS = SIMILARITY
FOREGROUND_SCORE = 0.3
USE_CUDA_GRAPHS = os.environ.get("DISTILL_LENS_CUDA_GRAPHS", "1") != "0"  # replay repeated analyses as one graph
ANALYSIS_GRAPHS = GraphCache()


def _valid_region(stage: Stage, geometry: Geometry, padded: tuple[int, int]) -> Stage:
    """Crop a stage to the part of the grid that covers the image (builtin inputs are padded to a multiple of 16)."""
    h, w = stage.features.shape[-2:]
    rows = max(1, round(h * geometry.resized_height / padded[0]))
    cols = max(1, round(w * geometry.resized_width / padded[1]))
    if (rows, cols) == (h, w):  # no padding to drop
        return stage
    return Stage(stage.name, stage.stride, stage.features[..., :rows, :cols])


@dataclass
class Side:
    """One model of a pair as the analysis sees it: the module, its prepared input, and how the input was resized
    (to crop padded grids to the image)."""

    model: torch.nn.Module
    pixels: torch.Tensor
    geometry: Geometry


def forward_stages(side: Side) -> tuple[object, list[Stage]]:
    """One forward of the side's model that also yields its feature maps (the forward the tab shows)."""
    with torch.no_grad():
        outputs, stages = forward_with_stages(side.model, side.pixels)
    padded = tuple(side.pixels.shape[-2:])
    return outputs, [_valid_region(s, side.geometry, padded) for s in stages]


def analyse_sides(teacher: Side, student: Side, foreground_of: Callable[[object], torch.Tensor], image: np.ndarray,
                  tau: float = DEFAULT_TAU, method: str = "affinity", teacher_forward: tuple | None = None,
                  ) -> tuple[list[tuple[np.ndarray, str]], dict]:
    """The analysis of one image exactly as the tab runs it: one forward per model, then everything on the models'
    device until a single read-back at the end.

    Args:
        teacher, student: the two models with their prepared inputs.
        foreground_of: the teacher's outputs -> (H, W) bool foreground on the device (its boxes or its mask).
        image: the RGB uint8 image the overlays are drawn on.
        tau: softmax temperature, > 0.
        method: a key of :data:`METHODS`.
        teacher_forward: the teacher's ``forward_stages`` result when the caller already has it (several
            students of one teacher share it); None runs it here.

    Returns:
        ``(overlays, report)`` as :func:`consensus` returns them (without the pair's name).
    """
    t_out, t_all = teacher_forward if teacher_forward is not None else forward_stages(teacher)
    _, s_all = forward_stages(student)
    device = t_all[0].features.device
    pairs = match_stages(t_all, s_all)
    if not pairs:
        raise InputError("Teacher and student share no feature stride to compare.")
    notes, methods = [], []
    for t, s in pairs:
        determined = method != "projection" or projection_is_determined(t.features, s.features)
        methods.append(method if determined else "affinity")
        if not determined:  # least squares would fit anything with this few locations
            notes.append(f"Stride {t.stride}: too few locations for a least-squares map of "
                         f"{s.features.shape[1]} student channels; the affinity method is used there.")
    size = overlay_size(*image.shape[:2])
    canvas = upload_image(image, device)
    index = [(next(i for i, x in enumerate(t_all) if x is t), next(j for j, x in enumerate(s_all) if x is s))
             for t, s in pairs]
    n_t, n_s = len(t_all), len(s_all)

    def compute(*tensors: torch.Tensor) -> tuple[torch.Tensor, Layout]:
        t_maps, s_maps, foreground, canvas = tensors[:n_t], tensors[n_t:n_t + n_s], tensors[-2], tensors[-1]
        if tuple(canvas.shape[:2]) != size:
            canvas = torch.nn.functional.interpolate(canvas.permute(2, 0, 1)[None].float(), size=size,
                                                     mode="area")[0].permute(1, 2, 0).round().to(torch.uint8)
        result = analyse_stages([(t_maps[i], s_maps[j]) for i, j in index], methods, foreground, tau, size,
                                list(t_maps), list(s_maps))
        overlays = heat_overlays(canvas, result.weights.flatten(0, 2))  # (P * 2, H, W, 3): consensus, divergence
        return pack({"overlays": overlays, "figures": result.figures[:, 0], "cka": result.cka})

    inputs = ([t.features for t in t_all] + [s.features.to(device) for s in s_all]
              + [foreground_of(t_out).to(device)[None], canvas])

    def finish(packed: tuple[torch.Tensor, Layout]) -> dict[str, np.ndarray]:
        return unpack(packed[0].cpu().numpy(), packed[1])

    if device.type == "cuda" and USE_CUDA_GRAPHS:
        key = (tuple((tuple(x.shape), x.dtype) for x in inputs), tuple(index), tuple(methods), tau, size)
        host = ANALYSIS_GRAPHS.run(key, compute, inputs, finish)
    else:
        host = finish(compute(*inputs))
    captions = [f"{kind} · stride {t.stride} · {t.name} ↔ {s.name}" for t, s in pairs
                for kind in ("consensus", "divergence")]
    stages = [{"teacher_layer": t.name, "student_layer": s.name, "stride": t.stride, "method": m,
               **{k: _number(v) for k, v in zip(FIGURES, row, strict=True)}}
              for (t, s), m, row in zip(pairs, methods, host["figures"], strict=True)]
    report = {"method": method, "tau": tau, "stages": stages,
              "cka": {"teacher_layers": [f"{s.name} (/{s.stride})" for s in t_all],
                      "student_layers": [f"{s.name} (/{s.stride})" for s in s_all],
                      "matrix": np.round(host["cka"].astype(np.float64), 4).tolist()},
              "notes": notes}
    bars = [with_colour_bar(o, *(("agree less", "agree more") if i % 2 == 0 else ("disagree less", "disagree more")))
            for i, o in enumerate(host["overlays"])]
    return list(zip(bars, captions, strict=True)), report


def overlay_size(height: int, width: int, max_side: int = 512) -> tuple[int, int]:
    """Overlays are drawn at the image's own size, shrunk to at most ``max_side`` on the long side."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def side_of(predictor: Predictor, image: np.ndarray) -> Side:
    inputs, geometry = predictor.prepare(image)
    return Side(predictor.model, inputs["pixel_values"], geometry)


@on_gpu
def consensus(image, pair: str = DEFAULT_PAIR, tau: float = DEFAULT_TAU, method: str = "affinity",
              students: str | list[str] | None = None) -> tuple[list[tuple[np.ndarray, str]], dict]:
    """Consensus and divergence maps at every stage stride that the teacher and each chosen student share, and
    their CKA.

    Args:
        image: a file path, numpy RGB array or PIL image.
        pair: a detection or segmentation pair.
        tau: softmax temperature of the consensus and divergence weights, > 0.
        method: ``"affinity"`` (dimension-free) or ``"projection"`` (least squares).
        students: one or two student names (a list or a comma-separated string); default the pair's first.

    Returns:
        ``(overlays, report)``: (image, caption) overlays, consensus then divergence for each matched stage, the
        first student's then the second's; ``report`` is ``{pair, method, tau, students: {name: {method, source,
        stages: [{teacher_layer, student_layer, stride, consensus_mean, consensus_foreground, consensus_background,
        energy_foreground_teacher, energy_foreground_student, foreground_area}], cka: {teacher_layers,
        student_layers, matrix}, agreement: {consensus_mean}, adm_training}}, ranking, notes}``, with the first
        student's ``stages`` and ``cka`` also at the top level (single-student fields, kept for one release).
        ``adm_training`` (students trained with ADM's loss, else None) names the strides and τ at which the
        consensus maps are the weights that loss gives each location.
    """
    try:
        tau = float(tau)
    except (TypeError, ValueError) as error:
        raise InputError(f"tau must be a positive number, got {tau!r}.") from error
    if not 1e-3 <= tau <= 100:
        raise InputError(f"tau must lie in [0.001, 100], got {tau}.")
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {str(method)[:40]!r}.")
    spec = get_pair(pair)
    if spec.task not in ("detection", "segmentation"):
        raise InputError(f"The Analysis tab takes detection or segmentation pairs; {spec.name} is {spec.task}.")
    chosen = spec.choose_students(students)
    array, notes = read_image(image)
    predictors = predictors_for(spec, students=chosen)
    teacher = predictors["teacher"]
    teacher_side = side_of(teacher, array)

    def foreground_of(outputs):
        return teacher.foreground(outputs, teacher_side.geometry, FOREGROUND_SCORE)

    overlays, per_student = [], {}
    teacher_forward = forward_stages(teacher_side)  # one teacher forward, whichever students are compared with it
    for student in chosen:
        try:
            drawn, result = analyse_sides(teacher_side, side_of(predictors[student.name], array), foreground_of,
                                          array, tau, method, teacher_forward)
        except InputError as error:
            raise InputError(f"{spec.name}: {error}") from error
        adm = _adm_training(student, tau, method)
        if adm is not None:
            drawn = [(picture, caption + (" · ADM training weights" if adm["equal"] and kind == 0
                                          and any(f"stride {s} " in caption for s in adm["strides"]) else ""))
                     for kind, (picture, caption) in zip(itertools.cycle((0, 1)), drawn)]
            notes.append(adm["note"])
        prefix = f"{student.name} · " if len(chosen) > 1 else ""
        overlays += [(picture, prefix + caption) for picture, caption in drawn]
        notes += [f"{student.name}: {n}" if len(chosen) > 1 else n for n in result.pop("notes")]
        means = [s["consensus_mean"] for s in result["stages"] if s["consensus_mean"] is not None]
        per_student[student.name] = {**result, "adm_training": adm,
                                     "agreement": {"consensus_mean": round(sum(means) / len(means), 4)
                                                   if means else None}}
    block = students_report(chosen, per_student, "consensus_mean")
    first = block["students"][chosen[0].name]
    report = {"pair": spec.name, "method": method, "tau": tau, "stages": first["stages"], "cka": first["cka"],
              "students": block["students"], "ranking": block["ranking"], "ranked_by": block["ranked_by"],
              "notes": notes}
    return overlays, report


def _adm_training(student, tau: float, method: str) -> dict | None:
    """For a student trained with ADM's weighted loss: at which strides and τ the tab's consensus maps are the
    weights that loss gave each location (affinity similarity, as in training), and whether this call's settings
    reproduce them."""
    if not student.adm:
        return None
    strides, trained_tau = list(student.adm["strides"]), student.adm["tau"]
    equal = method == "affinity" and abs(tau - trained_tau) < 1e-9
    where = ", ".join(f"/{s}" for s in strides)
    note = (f"{student.name} was trained with ADM's consensus-weighted feature loss at strides {where}: "
            + (f"its consensus maps there are the weights that loss gives each location of this image "
               f"(affinity similarity, τ = {trained_tau})." if equal else
               f"choose the affinity similarity and τ = {trained_tau} to see the weights that loss gives each "
               "location of this image."))
    return {"strides": strides, "tau": trained_tau, "equal": equal, "note": note}


def _number(value: float) -> float | None:
    return None if value != value else round(float(value), 4)  # NaN (no foreground) -> None


# Attention for one target --------------------------------------------------------------------------------------

def _detection_target(report_detections: list, target: str) -> int:
    """Index of the teacher detection named by ``target``: '' or a rank ('0', '1', ...) or a label."""
    if not report_detections:
        raise InputError("The teacher found no object to explain at this image; try another image.")
    target = (target or "").strip()
    if target == "" or target.isdigit():
        rank = int(target or 0)
        if rank >= len(report_detections):
            raise InputError(f"target rank {rank} is out of range: the teacher found {len(report_detections)} "
                             f"objects (ranks 0 to {len(report_detections) - 1}).")
        return rank
    for i, d in enumerate(report_detections):
        if d.label == target:
            return i
    raise InputError(f"The teacher found no {target[:40]!r}; it found: "
                     f"{', '.join(sorted({d.label for d in report_detections}))}.")


def _box_cell(box: list[float], geometry: Geometry, grid: tuple[int, int], padded: tuple[int, int]) -> tuple[int, int]:
    """The heat-map cell under a box centre (input pixels -> network grid)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    sx, sy = geometry.resized_width / geometry.width, geometry.resized_height / geometry.height
    return (min(int(cy * sy * grid[0] / padded[0]), grid[0] - 1), min(int(cx * sx * grid[1] / padded[1]), grid[1] - 1))


def _query_for_box(outputs, box_xyxy: torch.Tensor) -> int:
    """The DETR query whose predicted box overlaps the target box most (boxes in [0, 1] cxcywh)."""
    from torchvision.ops import box_convert, box_iou

    boxes = box_convert(outputs.pred_boxes[0].float(), "cxcywh", "xyxy")
    return int(box_iou(boxes, box_xyxy[None].to(boxes.device)).squeeze(1).argmax())


def _attention_map(predictor: Predictor, array: np.ndarray, task: str, target_box: list[float] | None,
                   target_label: int | None, region: torch.Tensor | None) -> tuple[torch.Tensor, str]:
    """One side's (h, w) map in [0, 1] for the shared target, and the method's name."""
    inputs, geometry = predictor.prepare(array)
    pixels = inputs["pixel_values"]
    padded = tuple(pixels.shape[-2:])
    if getattr(predictor.model.config, "model_type", "") == "rt_detr":
        with capture_deformable_sampling(predictor.model) as captured, torch.no_grad():
            outputs = predictor.model(pixel_values=pixels)
        locations, weights = captured[sorted(captured)[-1]]  # the last decoder layer
        w, h = geometry.width, geometry.height
        query = _query_for_box(outputs, torch.tensor(target_box) / torch.tensor([w, h, w, h]))
        return sampling_point_map(locations[0, query], weights[0, query], (h, w)), "deformable sampling points"

    if task == "detection":
        def score(out):
            y, x = _box_cell(target_box, geometry, out["heatmap"].shape[-2:], padded)
            return out["heatmap"][:, target_label - 1, y, x]
    else:
        def score(out):
            logits = out["logits"] if isinstance(out, dict) else out.logits
            mask = torch.nn.functional.interpolate(region[None, None].float(), size=padded, mode="nearest")
            mask = torch.nn.functional.interpolate(mask, size=logits.shape[-2:], mode="area").to(logits.device)
            return (logits[:, target_label].float() * mask[:, 0]).sum((1, 2)) / mask.sum().clamp_min(1)
    cam, _ = grad_cam(predictor.model, pixels, score)
    return _valid_region(Stage("cam", 1, cam[:, None]), geometry, padded).features[0, 0], "Grad-CAM (last stage)"


@on_gpu
def attention(image, pair: str = DEFAULT_PAIR, target: str = "", students: str | list[str] | None = None,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Teacher and student attention for the same target, and their absolute difference.

    Args:
        image: a file path, numpy RGB array or PIL image.
        pair: a detection or segmentation pair.
        target: detection: a rank of the teacher's detections ('' or '0' = its best) or a label;
            segmentation: a class name ('' = the largest non-background class in the teacher's mask).
        students: the student to explain (a name; of several, the first is used); default the pair's first.

    Returns:
        ``(teacher_image, student_image, difference_image, report)`` with
        ``report = {pair, student, target, method: {teacher, student}, mean_abs_difference, notes}``.
    """
    spec = get_pair(pair)
    if spec.task not in ("detection", "segmentation"):
        raise InputError(f"Attention maps take detection or segmentation pairs; {spec.name} is {spec.task}.")
    student = spec.choose_students(students)[0]
    array, notes = read_image(image)
    predictors = predictors_for(spec, students=[student])
    predictors = {"teacher": predictors["teacher"], "student": predictors[student.name]}
    teacher = predictors["teacher"]
    inputs, geometry = teacher.prepare(array)
    outputs = teacher.forward(inputs)
    box, label, region = None, None, None
    if spec.task == "detection":
        detections = teacher.detect(outputs, geometry, 0.0)  # ranked by score; rank 0 is the teacher's best
        chosen = detections[_detection_target(detections, str(target))]
        box, label = chosen.box, teacher.labels.index(chosen.label)
        target_info = {"kind": "box", "label": chosen.label, "box": [round(v, 2) for v in box],
                       "score": round(chosen.score, 4)}
    else:
        class_map = teacher.class_map(outputs, geometry).cpu()
        counts = torch.bincount(class_map.flatten(), minlength=len(teacher.labels))
        if (target or "").strip():
            if target.strip() not in teacher.labels:
                raise InputError(f"Unknown class {target.strip()[:40]!r}; classes: {', '.join(teacher.labels[:20])}"
                                 + (" …" if len(teacher.labels) > 20 else "") + ".")
            label = teacher.labels.index(target.strip())
        else:
            ranked = counts.argsort(descending=True).tolist()
            label = next((c for c in ranked if teacher.labels[c] != "background"), ranked[0])
        region = class_map == label
        if not region.any():
            raise InputError(f"The teacher predicts no {teacher.labels[label]!r} pixels in this image.")
        target_info = {"kind": "segment", "label": teacher.labels[label], "pixels": int(region.sum())}
    maps, methods = {}, {}
    for role in ROLES:
        with exclusive(predictors[role].model):  # hooks on the shared model, for this call only
            maps[role], methods[role] = _attention_map(predictors[role], array, spec.task, box, label, region)
    size = array.shape[:2]
    full = {r: torch.nn.functional.interpolate(maps[r][None, None].float().cpu(), size=size, mode="bilinear",
                                               align_corners=False)[0, 0] for r in ROLES}
    for role in ROLES:
        if not float(full[role].max()) > 0:
            notes.append(f"The {role}'s map is empty: its {methods[role]} gives no positive evidence for this target "
                         "(e.g. the gradient vanished); the difference then shows the other map alone.")
    difference = (full["teacher"] - full["student"]).abs()
    images = [heat_overlay(array, full[r]) for r in ROLES] + [heat_overlay(array, difference)]
    report = {"pair": spec.name, "student": student.name, "target": target_info, "method": methods,
              "mean_abs_difference": round(float(difference.mean()), 4), "notes": notes}
    return images[0], images[1], images[2], report


def cka_figure(report: dict | None):
    """Plotly heat map of the teacher-by-student linear CKA matrix."""
    import plotly.graph_objects as go

    if not report:
        return None
    cka = report["cka"]
    fig = go.Figure(go.Heatmap(z=cka["matrix"], x=cka["student_layers"], y=cka["teacher_layers"], zmin=0, zmax=1,
                               colorscale="Viridis", text=cka["matrix"], texttemplate="%{text:.2f}"))
    fig.update_layout(title="Linear CKA, teacher stages × student stages", xaxis_title="student",
                      yaxis_title="teacher", height=360, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def figures_markdown(report: dict | None) -> str:
    if not report:
        return ""

    def fmt(v):
        return "–" if v is None else f"{v:.3f}"

    tables = []
    for name, block in report.get("students", {"student": report}).items():
        rows = "\n".join(
            f"| /{s['stride']} {s['teacher_layer']} ↔ {s['student_layer']} | {fmt(s['consensus_mean'])} | "
            f"{fmt(s['consensus_foreground'])} | {fmt(s['consensus_background'])} | "
            f"{fmt(s['energy_foreground_teacher'])} | {fmt(s['energy_foreground_student'])} | "
            f"{fmt(s['foreground_area'])} |" for s in block["stages"])
        tables.append(f"**{name}**\n\n| stage | consensus | on foreground | on background | teacher energy on fg "
                      f"| student energy on fg | fg area |\n|---|---|---|---|---|---|---|\n{rows}\n\n"
                      + verdict(block["stages"]))
    return (notes_markdown(report.get("notes", []))
            + "ADM's findings on this image (foreground = the teacher's own boxes or mask): consensus should be "
            "higher on the foreground, and the teacher should put more of its feature energy there.\n\n"
            + "\n\n".join(tables))


def verdict(stages: list[dict]) -> str:
    """One line: at how many stages this image shows ADM's two findings."""
    def count(a: str, b: str) -> tuple[int, int]:
        pairs = [(s[a], s[b]) for s in stages if s[a] is not None and s[b] is not None]
        return sum(x > y for x, y in pairs), len(pairs)

    (c, n), (e, m) = count("consensus_foreground", "consensus_background"), \
        count("energy_foreground_teacher", "energy_foreground_student")
    if not n:
        return "*Verdict:* no foreground on this image, so neither finding can be checked."
    first = "holds" if c == n else ("fails" if c == 0 else "holds in part")
    second = "holds" if e == m else ("fails" if e == 0 else "holds in part")
    return (f"*Verdict on this image:* consensus higher on the foreground than on the background: {first} ({c} of "
            f"{n} stages); the teacher's share of energy on the foreground above the student's: {second} ({e} of {m} "
            "stages).")


def stage_pair(overlays: list | None, stage: int) -> tuple:
    """The consensus and divergence overlays of one stage from the gallery list."""
    if not overlays:
        return None, None
    index = max(0, min(int(stage), len(overlays) // 2 - 1))
    return overlays[2 * index][0], overlays[2 * index + 1][0]


def consensus_overlay(image, pair: str, enabled: bool, students: str | list[str] | None = None):
    """For the detection and segmentation tabs' toggle: the consensus overlay at the deepest shared stride, for the
    first chosen student."""
    if not enabled or image is None:
        return None
    first = get_pair(pair).choose_students(students)[0].name
    overlays, _ = consensus(image, pair, students=[first])
    return overlays[-2][0]


def consensus_toggle():
    """The checkbox of the detection and segmentation tabs' consensus overlay (place it in the inputs column)."""
    import gradio as gr

    return gr.Checkbox(label="Consensus overlay (deepest shared stride, τ = 0.1)", value=False)


def consensus_overlay_image(task: str):
    """The image the consensus toggle fills (place it in the results column)."""
    import gradio as gr

    return gr.Image(label="Consensus (teacher ↔ student)", interactive=False, height=300, elem_id=f"{task}-consensus")


def wire_consensus_toggle(event, image, pair, toggle, overlay, students) -> None:
    """Refresh the overlay image after each run of the tab and whenever the checkbox changes."""
    from demos.common import GPU_QUEUE, user_errors

    for trigger in (event.then, toggle.change):
        trigger(user_errors(consensus_overlay), [image, pair, toggle, students], overlay, api_visibility="private",
                **GPU_QUEUE)


def build_analysis_tab() -> None:
    import gradio as gr

    from demos.common import GPU_QUEUE, pair_dropdown, student_picker, user_errors, wire_student_picker
    from demos.components import user_image

    with gr.Tab("Analysis", id="analysis"):
        gr.Markdown("Where do teacher and student features agree (**consensus**) and disagree (**divergence**)? "
                    "Similarity per location at every stride both models share; weights are a spatial softmax "
                    "of similarity / τ (consensus) or (1 − similarity) / τ (divergence).")
        with gr.Row():
            with gr.Column(scale=1):
                image = user_image(label="Image", elem_id="analysis-image")
                examples("analysis", image)
                pair = pair_dropdown(("detection", "segmentation"), DEFAULT_PAIR)
                students = student_picker("segmentation", DEFAULT_PAIR)
                tau = gr.Slider(0.01, 2.0, value=DEFAULT_TAU, step=0.01, label="τ (softmax temperature)")
                method = gr.Radio(list(METHODS), value="affinity", label="Similarity",
                                  info="affinity: dimension-free; projection: least-squares channel map")
                stage = gr.Slider(0, 4, value=0, step=1, label="Stage (0 = finest shared stride)")
                run = gr.Button("Analyse", variant="primary", elem_id="analysis-run")
                target = gr.Textbox(value="", label="Attention target", placeholder="detection: rank or label; "
                                    "segmentation: class name (empty = the main object)")
                explain = gr.Button("Attention maps", elem_id="analysis-attention")
            with gr.Column(scale=2):
                with gr.Row():
                    chosen = [gr.Image(label=f"{k.capitalize()} (chosen stage)", interactive=False)
                              for k in ("consensus", "divergence")]
                gallery = gr.Gallery(label="All stages", columns=4, height=260)
                figures = gr.Markdown(elem_id="analysis-summary")
                cka = gr.Plot(label="CKA")
                report = gr.JSON(label="Report", open=False)
                with gr.Row():
                    attention_images = [gr.Image(label=label, interactive=False)
                                        for label in ("Teacher attention", "Student attention", "|difference|")]
                attention_report = gr.JSON(label="Attention report", open=False)
        event = run.click(user_errors(consensus), [image, pair, tau, method, students], [gallery, report],
                          api_name="consensus", **GPU_QUEUE)
        event.failure(lambda: (None, None, "", None, None, None), None, [gallery, report, figures, cka, *chosen],
                      api_visibility="private")
        wire_student_picker(pair, students)
        event.then(lambda r, g, s: (figures_markdown(r), cka_figure(r), *stage_pair(g, s)), [report, gallery, stage],
                   [figures, cka, *chosen], api_visibility="private")
        stage.change(stage_pair, [gallery, stage], chosen, api_visibility="private")
        explain.click(user_errors(attention), [image, pair, target, students], [*attention_images, attention_report],
                      api_name="attention", **GPU_QUEUE)
