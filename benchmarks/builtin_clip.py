"""Judge the builtin CLIP pair's students on held-out single-object Shapes scenes, and print the README's tables.

    python -m benchmarks.builtin_clip [--scenes 300] [--unlabelled 1024] [--steps 150] [--save-prompts]

Per student: zero-shot accuracy on the 5 shapes and the 30 colour-shapes (template ``a {}``, teacher beside it); a
linear probe on its image features (3,000 labelled tuning-range scenes), about the ceiling for anything that only
changes the class vectors, as a text-side prompt does; then the student with learned prompts on the 30 classes:
CasPL's boosting prompt (``caspl``: learned from the teacher's logits on unlabelled tuning scenes, no labels), CoOp
(``coop``: 4 labelled tuning scenes per class) and the cascade (``cascade``: boosting, then adapting on the same
labels). "Gap closed" is the share of the student's zero-shot gap to the teacher that a prompt closes; "of the
reachable gap" measures against min(teacher, probe ceiling) instead.

``--save-prompts`` writes each student's boosting prompt to ``weights/prompts/`` (shipped, marked builtin), with
these figures in its metadata; the "shipped" row always evaluates the file on disk, so
``/classify(..., prompt="shapes-clip-<student>-caspl")`` gives what the table says.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from methods.prompts import prompted_text_features, tune
from weights.predictors import predictors_for
from weights.prompt_store import PromptError, load_prompt, save_builtin_prompt
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


SHIPPED = "shapes-clip-{}-caspl"  # the shipped boosting prompt of each builtin student


def student_rows(pair, student, args, pixels, shapes, colour_shapes, unlabelled, labelled, probe_set) -> dict:
    """Every figure of one student: zero-shot, probe ceilings, learned prompts, the shipped prompt."""
    predictors = predictors_for(pair, students=[student])
    teacher, model = predictors["teacher"], predictors[student.name]
    row = {}
    for key, classes, labels in (("zero_shot_5", SHAPE_NAMES, shapes), ("zero_shot_30", COLOUR_SHAPE_NAMES,
                                                                        colour_shapes)):
        for role, p in (("teacher", teacher), ("student", model)):
            row[f"{role}_{key}"] = accuracy(p, pixels, p.text_features([f"a {c}" for c in classes]), labels)
    probe_images, probe_labels = probe_set
    for role, p in (("teacher", teacher), ("student", model)):
        with torch.no_grad():
            train_features = p.forward({"pixel_values": clip_image_batch(probe_images)}).float().clone()
            test_features = p.forward({"pixel_values": pixels}).float().clone()
        predicted = linear_probe(train_features, probe_labels, test_features, len(COLOUR_SHAPE_NAMES))
        row[f"{role}_probe"] = float((predicted == colour_shapes).mean())
    classes = list(COLOUR_SHAPE_NAMES)
    row["prompts"] = {}
    for method in ("caspl", "coop", "cascade"):
        torch.manual_seed(0)
        tensors = tune(model, teacher, classes, method, labelled, (unlabelled, unlabelled), steps=args.steps)
        row["prompts"][method] = accuracy(model, pixels, prompted_text_features(model, classes, tensors),
                                          colour_shapes)
        if method == "caspl" and args.save_prompts:
            save_builtin_prompt(SHIPPED.format(student.name), tensors, {
                "pair": pair.name, "student": student.name, "method": "caspl", "template": "a {}",
                "classes": classes, "n_classes": len(classes), "n_context": sum(t.shape[0] for t in tensors.values()),
                "steps": args.steps, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "figures": {"measured_on": f"{args.scenes} held-out Shapes scenes (benchmarks.builtin_clip)",
                            "zero_shot": row["student_zero_shot_30"], "with_prompt": row["prompts"]["caspl"],
                            "teacher": row["teacher_zero_shot_30"], "probe_ceiling": row["student_probe"],
                            "verdict": verdict(row["student_zero_shot_30"], row["prompts"]["caspl"],
                                               row["teacher_zero_shot_30"], row["student_probe"])}})
    try:
        tensors, _ = load_prompt(SHIPPED.format(student.name))
        row["shipped"] = accuracy(model, pixels, prompted_text_features(model, classes, tensors), colour_shapes)
    except PromptError:
        row["shipped"] = None
    return row


def verdict(zero_shot: float, prompted: float, teacher: float, ceiling: float) -> str:
    """One phrase on whether a prompt can close this student's gap, from its probe ceiling."""
    reachable = min(teacher, ceiling) - zero_shot
    if reachable < 0.5 * (teacher - zero_shot):
        return ("its gap is visual: its image features cap any prompt at the probe ceiling, "
                "below half the way to the teacher")
    closed = (prompted - zero_shot) / (teacher - zero_shot) if teacher > zero_shot else float("nan")
    return (f"its gap is on the text side: its image features would allow {ceiling:.3f}, and the prompt closes "
            f"{closed:.0%} of the gap to the teacher")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--unlabelled", type=int, default=1024)
    parser.add_argument("--shots", type=int, default=4, help="labelled scenes per class for CoOp / the cascade")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--probe", type=int, default=3000, help="labelled scenes for the linear-probe ceiling")
    parser.add_argument("--students", nargs="*", help="student names (default: all)")
    parser.add_argument("--save-prompts", action="store_true", help="ship each student's boosting prompt")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pair = get_pair("shapes-clip")
    images, shapes, colour_shapes = scenes(SEED_START, args.scenes)
    pixels = clip_image_batch(images)
    classes = list(COLOUR_SHAPE_NAMES)
    unlabelled = clip_image_batch(scenes(TUNING_SEED_START, args.unlabelled)[0])
    pool_images, _, pool_labels = scenes(TUNING_SEED_START + args.unlabelled, 40 * len(classes))
    chosen = np.concatenate([np.flatnonzero(pool_labels == k)[: args.shots] for k in range(len(classes))])
    labelled = (clip_image_batch(pool_images[chosen]), torch.from_numpy(pool_labels[chosen]))
    probe_images, _, probe_labels = scenes(TUNING_SEED_START + args.unlabelled + 40 * len(classes), args.probe)
    rows = {s.name: student_rows(pair, s, args, pixels, shapes, colour_shapes, unlabelled, labelled,
                                 (probe_images, probe_labels))
            for s in pair.students if not args.students or s.name in args.students}
    first = next(iter(rows.values()))
    print(f"Builtin CLIP pair (shapes-clip) on {args.scenes} held-out single-object scenes (seeds {SEED_START}+); "
          f"prompts: {args.unlabelled} unlabelled scenes for the boosting prompt, {args.shots} labelled scenes per "
          f"class for CoOp and the adapting prompt, {args.steps} steps a phase\n")
    print("| model | zero-shot, 5 shapes | zero-shot, 30 colour-shapes | linear-probe ceiling, 30 |")
    print("|---|---|---|---|")
    print(f"| teacher | {first['teacher_zero_shot_5']:.3f} | {first['teacher_zero_shot_30']:.3f} | "
          f"{first['teacher_probe']:.3f} |")
    for name, r in rows.items():
        print(f"| student `{name}` | {r['student_zero_shot_5']:.3f} | {r['student_zero_shot_30']:.3f} | "
              f"{r['student_probe']:.3f} |")
    print("\n| student | prompt | accuracy, 30 | gap to teacher closed | of the reachable gap |")
    print("|---|---|---|---|---|")
    labels = {"caspl": "CasPL boosting prompt (teacher logits, no labels)", "coop": "CoOp (labels)",
              "cascade": "CasPL cascade (boosting + adapting)"}
    bars = []
    for name, r in rows.items():
        s, t, ceiling = r["student_zero_shot_30"], r["teacher_zero_shot_30"], r["student_probe"]
        reachable = min(t, ceiling) - s
        print(f"| `{name}` | zero-shot `a {{}}` | {s:.3f} | – | – |")
        shown = list(r["prompts"].items()) + ([("shipped", r["shipped"])] if r["shipped"] is not None else [])
        for method, acc in shown:
            label = f"shipped `{SHIPPED.format(name)}`" if method == "shipped" else labels[method]
            closed = f"{(acc - s) / (t - s):.0%}" if t > s else "–"
            of_reachable = f"{(acc - s) / reachable:.0%}" if reachable >= 0.05 else "– (ceiling ≈ zero-shot)"
            print(f"| `{name}` | {label} | {acc:.3f} | {closed} | {of_reachable} |")
        shipped = r["shipped"] if r["shipped"] is not None else r["prompts"]["caspl"]
        bars.append((name, reachable >= 0.5 * (t - s), t > s and shipped - s >= 0.5 * (t - s)))
    print(f"\nTeacher 5-shape zero-shot >= 0.90: {'met' if first['teacher_zero_shot_5'] >= 0.90 else 'NOT met'}")
    for name, text_side, closed in bars:
        kind = "text-limited (probe ceiling reaches past half the gap)" if text_side else "vision-limited"
        print(f"- `{name}`: {kind}; shipped boosting prompt closes >= half the gap to the teacher: "
              f"{'yes' if closed else 'no'}")


if __name__ == "__main__":
    main()
