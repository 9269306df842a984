"""Judge the builtin CLIP pair on held-out single-object Shapes scenes, and print the README's table.

    python -m benchmarks.builtin_clip [--scenes 300] [--unlabelled 1024] [--steps 150]

Zero-shot accuracy of teacher and student on the 5 shapes and the 30 colour-shapes (template ``a {}``), then the
student with learned prompts on the 30 classes: CasPL's boosting prompt (learned from the teacher's logits on
unlabelled training scenes, no labels), CoOp (4 labelled training scenes per class) and the CasPL cascade
(boosting prompt, then an adapting prompt on the same labels). "Gap closed" is the share of the student's
zero-shot gap to the teacher that the prompt closes. Last, a linear probe per model on 3,000 labelled
training-range scenes: about the ceiling for anything that only changes the class vectors.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from methods.prompts import prompted_text_features, tune
from weights.predictors import predictors_for
from weights.registry import get_pair
from weights.shapes.clip import clip_image_batch
from weights.shapes.world import COLOUR_SHAPE_NAMES, EVAL_SEED_START, SHAPE_NAMES, TUNING_SEED_START, render_scene

SEED_START = EVAL_SEED_START + 3000  # held out from training and from the other tables


def scenes(start: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rendered = [render_scene(s, single_object=True) for s in range(start, start + count)]
    images = np.stack([r.image for r in rendered])
    shapes = np.array([SHAPE_NAMES.index(r.objects[0].name) for r in rendered])
    colour_shapes = np.array([COLOUR_SHAPE_NAMES.index(f"{r.objects[0].colour} {r.objects[0].name}")
                              for r in rendered])
    return images, shapes, colour_shapes


def accuracy(predictor, pixels: torch.Tensor, text: torch.Tensor, labels: np.ndarray) -> float:
    logits = predictor.logits(predictor.forward({"pixel_values": pixels}), text)
    return float((logits.argmax(1).cpu().numpy() == labels).mean())


def linear_probe(train: torch.Tensor, labels: np.ndarray, test: torch.Tensor, classes: int, steps: int = 500
                 ) -> np.ndarray:
    """Predictions of a logistic-regression probe (weights and bias, Adam) fitted on normalised image features.

    Any text-side prompt only moves the class vectors the student's image features are compared with, i.e. it is
    one particular linear classifier on those features; a probe fitted on plenty of labels shows about how far
    such a classifier can go on them.
    """
    torch.manual_seed(0)
    train, test = train.float().cpu(), test.float().cpu()  # a small probe, fitted on the host wherever features are
    probe = torch.nn.Linear(train.shape[1], classes)
    optimiser = torch.optim.Adam(probe.parameters(), lr=0.01)
    y = torch.from_numpy(labels)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(probe(10 * train), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        return probe(10 * test).argmax(1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--unlabelled", type=int, default=1024)
    parser.add_argument("--shots", type=int, default=4, help="labelled scenes per class for CoOp / CasPL")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--probe", type=int, default=3000, help="labelled scenes for the linear-probe ceiling")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    predictors = predictors_for(get_pair("shapes-clip"))
    teacher, student = predictors["teacher"], predictors["student"]
    images, shapes, colour_shapes = scenes(SEED_START, args.scenes)
    pixels = clip_image_batch(images)
    rows = {}
    for name, classes, labels in (("5 shapes", SHAPE_NAMES, shapes), ("30 colour-shapes", COLOUR_SHAPE_NAMES,
                                                                      colour_shapes)):
        rows[name] = {role: accuracy(p, pixels, p.text_features([f"a {c}" for c in classes]), labels)
                      for role, p in predictors.items()}
    classes = list(COLOUR_SHAPE_NAMES)
    unlabelled_images = scenes(TUNING_SEED_START, args.unlabelled)[0]
    unlabelled = clip_image_batch(unlabelled_images)
    pool_images, _, pool_labels = scenes(TUNING_SEED_START + args.unlabelled, 40 * len(classes))
    chosen = np.concatenate([np.flatnonzero(pool_labels == k)[: args.shots] for k in range(len(classes))])
    labelled = (clip_image_batch(pool_images[chosen]), torch.from_numpy(pool_labels[chosen]))
    tuned = {}
    for method in ("caspl-boost", "coop", "caspl"):
        tensors = tune(student, teacher, classes, method, labelled, (unlabelled, unlabelled), steps=args.steps)
        tuned[method] = accuracy(student, pixels, prompted_text_features(student, classes, tensors), colour_shapes)

    print(f"Builtin CLIP pair (shapes-clip) on {args.scenes} held-out single-object scenes (seeds {SEED_START}+)\n")
    print("| classes | teacher zero-shot | student zero-shot |")
    print("|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['teacher']:.3f} | {r['student']:.3f} |")
    t, s = rows["30 colour-shapes"]["teacher"], rows["30 colour-shapes"]["student"]
    print(f"\nStudent prompts on the 30 colour-shapes ({args.unlabelled} unlabelled scenes for the boosting prompt, "
          f"{args.shots} labelled scenes per class for CoOp and the adapting prompt, {args.steps} steps a phase):\n")
    print("| student prompt | accuracy | gap to teacher closed |")
    print("|---|---|---|")
    print(f"| zero-shot `a {{}}` | {s:.3f} | – |")
    labels = {"caspl-boost": "CasPL boosting prompt (teacher logits, no labels)", "coop": "CoOp (labels)",
              "caspl": "CasPL boosting + adapting (cascade)"}
    for method, acc in tuned.items():
        closed = (acc - s) / (t - s) if t > s else float("nan")
        print(f"| {labels[method]} | {acc:.3f} | {closed:.0%} |")
    probe_images, _, probe_labels = scenes(TUNING_SEED_START + args.unlabelled + 40 * len(classes), args.probe)
    print(f"\nLinear probe on image features, 30 colour-shapes ({args.probe} labelled training-range scenes; "
          "about the most any text-side prompt can reach):")
    for role, p in predictors.items():
        with torch.no_grad():
            train_features = p.forward({"pixel_values": clip_image_batch(probe_images)}).float().clone()
            test_features = p.forward({"pixel_values": pixels}).float().clone()
        predicted = linear_probe(train_features, probe_labels, test_features, len(classes))
        print(f"- {role}: {float((predicted == colour_shapes).mean()):.3f}")
    ok = rows["5 shapes"]["teacher"] >= 0.90 and t > s and (tuned["caspl-boost"] - s) >= 0.5 * (t - s)
    print(f"\nBars: teacher 5-shape zero-shot >= 0.90 and the boosting prompt closes >= half the 30-class gap: "
          f"{'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
