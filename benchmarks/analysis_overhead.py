"""How much the Analysis tab's analysis of one image adds to the pair's own inference, on every device here.

    python -m benchmarks.analysis_overhead [--repeats 20] [--only shapes-detection ...]

Both columns time the tab's own code (:func:`compare.analysis.analyse_sides`), not a copy of it: "inference" is
the teacher's and the student's forward on the prepared input; "inference + analysis" is the tab's whole analysis
of the same input, whose features come from those same forwards (consensus and divergence maps with the overlays
drawn, ADM's foreground figures, the CKA matrix over every stage, one read-back to the host). Pairs: the builtin
Shapes pairs (their committed weights) and real-size architectures at random weights built from their configs
(time does not depend on weights): SegFormer-B5 -> B0 at 512², RT-DETR R101vd -> R18vd at 640², timm ViT-B/16 ->
ViT-Ti/16 at 224², timm ResNet-101 -> ResNet-18 at 640². Real-size pairs run in fp16 on CUDA, fp32 on the CPU.

The ops column counts aten ops with a ``TorchDispatchMode`` (:class:`analysis.profiling.DispatchCounter`): the
teacher's forward alone, and the analysis alone (the tab's whole call minus both forwards). Host syncs count scalar
reads, data-dependent shapes and copies between host and device made by the analysis; the final read-back is one
of them on CUDA (on the CPU it is no copy at all). Ops are counted on the eager analysis; on CUDA the timed runs
replay it as one captured graph once its input shapes repeat (``DISTILL_LENS_CUDA_GRAPHS=0`` times it eagerly).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from analysis.profiling import DispatchCounter, time_call
from compare import analysis as analysis_tab
from compare.analysis import FOREGROUND_SCORE, Side, analyse_sides, forward_stages
from weights.families.transformers import detr_candidates
from weights.predictors import Geometry, box_foreground, class_foreground
from weights.shapes.checkpoints import load_builtin_model
from weights.shapes.nets import normalise
from weights.shapes.world import EVAL_SEED_START, render_scene


@dataclass
class Bench:
    """A pair to measure: how to build its two models, the input side, and the teacher's foreground rule."""

    name: str
    build: Callable[[], tuple[torch.nn.Module, torch.nn.Module]]
    side: int
    foreground: Callable[[object, int], torch.Tensor]  # (teacher outputs, side) -> (side, side) bool
    real_size: bool = True


def _shapes(task: str) -> Callable:
    return lambda: tuple(load_builtin_model(task, role) for role in ("teacher", "student"))


def _segformer() -> tuple[torch.nn.Module, torch.nn.Module]:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    b5 = SegformerConfig(depths=[3, 6, 40, 3], hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=768,
                         num_labels=150)
    b0 = SegformerConfig(depths=[2, 2, 2, 2], hidden_sizes=[32, 64, 160, 256], decoder_hidden_size=256,
                         num_labels=150)
    return SegformerForSemanticSegmentation(b5), SegformerForSemanticSegmentation(b0)


def _rtdetr() -> tuple[torch.nn.Module, torch.nn.Module]:
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrResNetConfig

    r101 = RTDetrConfig(backbone_config=RTDetrResNetConfig(
        depths=[3, 4, 23, 3], layer_type="bottleneck", hidden_sizes=[256, 512, 1024, 2048], embedding_size=64,
        out_features=["stage2", "stage3", "stage4"]), encoder_in_channels=[512, 1024, 2048],
        encoder_hidden_dim=384, encoder_ffn_dim=2048, decoder_in_channels=[384, 384, 384], decoder_layers=6,
        num_labels=80)
    r18 = RTDetrConfig(backbone_config=RTDetrResNetConfig(
        depths=[2, 2, 2, 2], layer_type="basic", hidden_sizes=[64, 128, 256, 512], embedding_size=64,
        downsample_in_bottleneck=False, out_features=["stage2", "stage3", "stage4"]),
        encoder_in_channels=[128, 256, 512], encoder_hidden_dim=256, encoder_ffn_dim=1024, decoder_layers=3,
        num_labels=80)
    return RTDetrForObjectDetection(r101), RTDetrForObjectDetection(r18)


def _timm(teacher: str, student: str) -> Callable:
    def build():
        import timm

        return timm.create_model(teacher, pretrained=False), timm.create_model(student, pretrained=False)
    return build


def _segmentation_foreground(outputs, side: int) -> torch.Tensor:
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    return class_foreground(logits[0].argmax(0), has_background=not hasattr(outputs, "logits"))


def _centre_foreground(outputs, side: int) -> torch.Tensor:
    """Classifiers have no boxes: the central half of the image stands in for the object (made on the device)."""
    logits = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
    cells = torch.arange(side, device=logits.device)
    inside = (cells >= side // 4) & (cells < 3 * side // 4)
    return inside[:, None] & inside[None, :]


def _shapes_detection_foreground(outputs, side: int) -> torch.Tensor:
    from weights.shapes.nets import detection_candidates

    boxes, scores, _ = detection_candidates(outputs)
    return box_foreground(boxes[0], scores[0], FOREGROUND_SCORE, side, side)


def _detr_foreground(outputs, side: int) -> torch.Tensor:
    """As the tab makes it: the teacher's confident boxes, on a grid of at most 256 px."""
    cells = min(side, 256)
    return box_foreground(*detr_candidates(outputs, cells, cells), FOREGROUND_SCORE, cells, cells)


BENCHES = (
    Bench("shapes-detection (builtin)", _shapes("detection"), 128, _shapes_detection_foreground, real_size=False),
    Bench("shapes-segmentation (builtin)", _shapes("segmentation"), 128, _segmentation_foreground, real_size=False),
    Bench("SegFormer-B5 → B0", _segformer, 512, _segmentation_foreground),
    Bench("RT-DETR R101vd → R18vd", _rtdetr, 640, _detr_foreground),
    Bench("timm ViT-B/16 → ViT-Ti/16", _timm("vit_base_patch16_224", "vit_tiny_patch16_224"), 224,
          _centre_foreground),
    Bench("timm ResNet-101 → ResNet-18", _timm("resnet101", "resnet18"), 640, _centre_foreground),
)


def measure(bench: Bench, device: torch.device, repeats: int) -> dict:
    """Time and count one pair on one device."""
    dtype = torch.float16 if device.type == "cuda" and bench.real_size else torch.float32
    teacher, student = (m.to(device, dtype).eval() for m in bench.build())
    rendered = render_scene(EVAL_SEED_START + 7, min(bench.side, 512), min(bench.side, 512)).image
    image = np.array(Image.fromarray(rendered).resize((bench.side, bench.side), Image.BILINEAR))
    pixels = normalise(torch.from_numpy(image)[None]).to(device, dtype)
    geometry = Geometry(bench.side, bench.side, bench.side, bench.side)
    sides = Side(teacher, pixels, geometry), Side(student, pixels, geometry)

    def inference():
        with torch.no_grad():
            return [side.model(side.pixels) for side in sides]

    def analysis():
        return analyse_sides(*sides, lambda out: bench.foreground(out, bench.side).to(device), image)

    for _ in range(2):  # warm-up: the second analysis captures its CUDA graph
        inference(), analysis()
    inference_times, analysis_times = [], []
    for _ in range(repeats):  # interleaved, so a drifting clock or a neighbour's load hits both alike
        inference_times.append(time_call(inference, device, repeats=1, warmup=0)[1].median_ms)
        result, timing = time_call(analysis, device, repeats=1, warmup=0)
        analysis_times.append(timing.median_ms)
    with DispatchCounter() as forward_ops:
        inference()
    with DispatchCounter() as teacher_ops:
        forward_stages(sides[0])
    with DispatchCounter() as stage_ops:
        forward_stages(sides[0]), forward_stages(sides[1])
    graphs, analysis_tab.USE_CUDA_GRAPHS = analysis_tab.USE_CUDA_GRAPHS, False
    try:  # ops and syncs of the eager analysis: what a CUDA graph replays is the same kernels, launched once
        with DispatchCounter() as tab_ops:
            analysis()
    finally:
        analysis_tab.USE_CUDA_GRAPHS = graphs
    return {"dtype": str(dtype).removeprefix("torch."), "inference_ms": statistics.median(inference_times),
            "with_analysis_ms": statistics.median(analysis_times), "teacher_ops": teacher_ops.ops,
            "analysis_ops": tab_ops.ops - stage_ops.ops, "syncs": tab_ops.syncs - stage_ops.syncs,
            "sync_ops": tab_ops.sync_ops, "forward_syncs": forward_ops.syncs, "report": result[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="pair names (or prefixes) to measure")
    parser.add_argument("--devices", nargs="*", help="devices to measure on (default: cpu, and cuda if present)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = [torch.device(d) for d in args.devices] if args.devices else (
        [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else []))
    gpu = f" ({torch.cuda.get_device_name()}, torch {torch.__version__})" if torch.cuda.is_available() else ""
    print(f"Analysis overhead of one image, median of {args.repeats} warm runs (inference and analysis "
          f"interleaved); devices: "
          f"{', '.join(str(d) for d in devices)}{gpu}\n")
    print("| pair | device | dtype | inference (ms) | inference + analysis (ms) | analysis adds "
          "| aten ops: teacher forward / analysis | host syncs in analysis |")
    print("|---|---|---|---|---|---|---|---|")
    agreement = []
    for bench in BENCHES:
        if args.only and not any(bench.name.startswith(o) for o in args.only):
            continue
        reports = []
        for device in devices:
            torch.manual_seed(0)
            r = measure(bench, device, args.repeats)
            reports.append(r["report"])
            added = r["with_analysis_ms"] / r["inference_ms"] - 1
            print(f"| {bench.name} | {device.type} | {r['dtype']} | {r['inference_ms']:.2f} | "
                  f"{r['with_analysis_ms']:.2f} | {added:+.0%} | {r['teacher_ops']:,} / {r['analysis_ops']:,} | "
                  f"{r['syncs']} |", flush=True)
        if len(reports) > 1 and not bench.real_size:  # same weights on every device: the results must agree
            cka = np.abs(np.array(reports[0]["cka"]["matrix"]) - np.array(reports[1]["cka"]["matrix"])).max()
            sim = max(abs((a[k] or 0) - (b[k] or 0)) for a, b in zip(reports[0]["stages"], reports[1]["stages"],
                                                                      strict=True) for k in ("consensus_mean",))
            agreement.append(f"{bench.name}: max |Δ| mean consensus {sim:.1e}, CKA {cka:.1e}")
    if agreement:
        print("\nCPU vs CUDA, same weights: " + "; ".join(agreement))


if __name__ == "__main__":
    main()
