"""Real weights on real photos: EfficientNet-Lite2 (teacher) against Lite0 and Lite1, on every bundled photo.

    python -m benchmarks.real_classification [--pair efficientnet-lite2-to-lite0] [--figure docs/real_lite.png]

Per photo (``demos/examples/photo_*.jpg``): each model's top-1 class and probability, each student's agreement with
the teacher (top-5 overlap, Jensen-Shannon divergence), Grad-CAM of the teacher's top class on teacher and student
(mean |difference|, 0 = the same regions), and the analysis at the deepest shared stage: consensus (mean affinity
similarity) and linear CKA of teacher and student features on this photo, each beside its chance level, the same
figure with the student's features of the *next* photo. Consensus is also split by where the teacher looks: the
cells of its Grad-CAM ≥ 0.5 ("object") against the rest. Everything runs through the engine (``compare``).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

import compare
from compare.analysis import Side, analyse_pair, forward_stages

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "demos" / "examples").glob("photo_*.jpg"))


def stages_of(predictor, image: np.ndarray):
    inputs, geometry = predictor.prepare(image)
    explicit = predictor.family.stages if predictor.family.explicit_stages else None
    return forward_stages(Side(predictor.model, inputs["pixel_values"], geometry, explicit))[1]


def deepest(report: dict) -> tuple[float, float, float | None, float | None]:
    """Consensus and CKA at the deepest matched stage, and consensus on and off the foreground."""
    stage = report["stages"][-1]
    t_names = [name.split(" ")[0] for name in report["cka"]["teacher_layers"]]
    s_names = [name.split(" ")[0] for name in report["cka"]["student_layers"]]
    cka = report["cka"]["matrix"][t_names.index(stage["teacher_layer"])][s_names.index(stage["student_layer"])]
    return stage["consensus_mean"], cka, stage["consensus_foreground"], stage["consensus_background"]


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else f"{value:{spec}}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="efficientnet-lite2-to-lite0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--figure", type=Path, help="write teacher/student Grad-CAM and consensus of one photo here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec, chosen, predictors = compare.load(args.pair, [s.name for s in compare.load(args.pair)[0].students[:2]])
    images = [compare.read_image(str(p))[0] for p in PHOTOS]
    stages = {name: [stages_of(p, image) for image in images] for name, p in predictors.items()}
    rows, summary = [], {s.name: {"same": [], "other": [], "cka_same": [], "cka_other": [], "on": [], "off": []}
                         for s in chosen}
    for i, (path, image) in enumerate(zip(PHOTOS, images, strict=True)):
        result, _ = compare.classify_image(image, spec, [s.name for s in chosen], explain_top=False)
        report = result.to_json()
        cells = [f"{path.stem.removeprefix('photo_')}",
                 f"{report['teacher']['top5'][0]['label'].split(',')[0]} {report['teacher']['top5'][0]['prob']:.2f}"]
        for student in chosen:
            block = report["students"][student.name]
            attention = compare.attention(spec, image, "", student.name)
            looks = torch.nn.functional.interpolate(attention.maps["teacher"][None, None], size=image.shape[:2],
                                                    mode="bilinear", align_corners=False)[0, 0] >= 0.5
            _, same = analyse_pair(stages["teacher"][i], stages[student.name][i], looks, image)
            _, other = analyse_pair(stages["teacher"][i], stages[student.name][(i + 1) % len(images)], looks, image)
            c_same, k_same, on, off = deepest(same)
            c_other, k_other, _, _ = deepest(other)
            for key, value in (("same", c_same), ("other", c_other), ("cka_same", k_same), ("cka_other", k_other),
                               ("on", on), ("off", off)):
                if value is not None:
                    summary[student.name][key].append(value)
            cells += [f"{block['top5'][0]['label'].split(',')[0]} {block['top5'][0]['prob']:.2f}",
                      f"{block['agreement']['top5_overlap']:.1f} / {block['agreement']['js']:.3f}",
                      f"{attention.to_json()['mean_abs_difference']:.3f}",
                      f"{fmt(c_same)} / {fmt(c_other)}", f"{fmt(k_same)} / {fmt(k_other)}", f"{fmt(on)} / {fmt(off)}"]
        rows.append("| " + " | ".join(cells) + " |")
        if args.figure is not None and path.stem == "photo_chelsea":
            write_figure(args.figure, image, spec, chosen[0].name)
    header = ["photo", "teacher top-1"]
    for student in chosen:
        header += [f"{student.name} top-1", "top-5 overlap / JS", "Grad-CAM \\|diff\\|",
                   "consensus: this photo / other photo", "CKA: this / other", "consensus on object / elsewhere"]
    print(f"`{spec.name}`: {len(PHOTOS)} photos; the deepest shared stage (stride 32); 'other photo' pairs the "
          "teacher's features of a photo with the student's of the next one (the chance level of that grid)\n")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n" + "\n".join(rows))
    print()
    for name, figures in summary.items():
        mean = {k: statistics.fmean(v) if v else None for k, v in figures.items()}
        print(f"{name}: mean over photos — consensus {fmt(mean['same'], '.3f')} (other photo "
              f"{fmt(mean['other'], '.3f')}), CKA {fmt(mean['cka_same'], '.3f')} (other photo "
              f"{fmt(mean['cka_other'], '.3f')}), consensus where the teacher looks {fmt(mean['on'], '.3f')} vs "
              f"elsewhere {fmt(mean['off'], '.3f')} ({len(figures['on'])} photos)")


def write_figure(path: Path, image: np.ndarray, spec, student: str) -> None:
    """Teacher and student Grad-CAM of the teacher's class, their difference, and the deepest consensus overlay."""
    from PIL import Image

    attention = compare.attention(spec, image, "", student)
    consensus = compare.consensus(spec, image, student)
    pictures = [*attention.images(image), consensus.overlays[-2][0]]
    height = max(p.shape[0] for p in pictures)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 8), (0, 0)), constant_values=255) for p in pictures]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(padded, axis=1)).save(path)


if __name__ == "__main__":
    main()
