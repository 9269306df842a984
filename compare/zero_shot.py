"""CLIP zero-shot comparison: teacher and students classify an image over the user's classes, each with its own
text (a template, or a prompt learned for that student); and prompts tuned live for a student from its teacher
(CoOp, CasPL)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional import kl_divergence, spearman_corrcoef

from compare.checks import number
from compare.inputs import InputError, read_image
from compare.jobs import Cancelled, stop_check
from compare.latency import profile_of
from compare.results import ClassificationComparison
from methods.prompts import method_name, prompted_text_features, tune
from weights.predictors import Predictor, predictors_for
from weights.prompt_store import PromptError, check_name_free, load_prompt, save_prompt
from weights.registry import Pair, Student, get_pair
from weights.shapes.world import COLOUR_SHAPE_NAMES, SHAPE_NAMES, TUNING_SEED_START, render_scene

DEFAULT_PAIR = "shapes-clip"
PRESETS = {
    "Shapes: 5 shapes": ", ".join(SHAPE_NAMES),
    "Shapes: 30 colour-shapes": ", ".join(COLOUR_SHAPE_NAMES),
    "Everyday objects": "cat, dog, car, bicycle, cup, chair, person, bird, tree, house",
}
DEFAULT_TEMPLATE = "a {}"
MAX_CLASSES = 1000
MAX_NAME_CHARS = 100
TOP_K = 5
MAX_TUNE_IMAGES = 64
MAX_TUNE_STEPS = 500
TUNE_SEED_START = TUNING_SEED_START + 50_000  # Shapes tuning scenes, never the evaluation seeds
HELD_OUT_SEED_START = TUNING_SEED_START + 75_000  # Shapes scenes that judge a freshly tuned prompt (never tuned on)
HELD_OUT_PER_CLASS = 4


def parse_classes(text: str) -> tuple[list[str], list[str]]:
    """Comma- or newline-separated class names -> (unique names in order, notes).

    Raises:
        InputError: fewer than two names, more than ``MAX_CLASSES``, or a name over ``MAX_NAME_CHARS``.
    """
    if not isinstance(text, str):
        raise InputError("Class names must be text: a comma-separated list.")
    names = [re.sub(r"\s+", " ", n).strip() for n in re.split(r"[,\n]", text)]
    names = [n for n in names if n]
    notes = []
    long = [n for n in names if len(n) > MAX_NAME_CHARS]
    if long:
        raise InputError(f"Class names are limited to {MAX_NAME_CHARS} characters; one has {len(long[0]):,}.")
    unique = list(dict.fromkeys(names))
    if len(unique) < len(names):
        notes.append(f"Removed {len(names) - len(unique)} duplicate class name(s).")
    if len(unique) < 2:
        raise InputError("Give at least two different class names, separated by commas.")
    if len(unique) > MAX_CLASSES:
        raise InputError(f"At most {MAX_CLASSES} classes, got {len(unique):,}.")
    return unique, notes


def check_template(template: str) -> str:
    """The template with exactly one ``{}`` for the class name; any other brace is refused with a message saying
    which (``str.format`` would otherwise fail with a bare KeyError or ValueError)."""
    template = (template or "").strip() or DEFAULT_TEMPLATE
    example = "e.g. 'a photo of a {}.'"
    if len(template) > 200:
        raise InputError(f"The prompt template is {len(template)} characters; keep it under 200, {example}")
    if template.count("{}") != 1:
        raise InputError(f"The prompt template needs exactly one {{}} where the class name goes, {example}")
    rest = template.replace("{}", "", 1)
    if "{" in rest or "}" in rest:
        raise InputError(f"The prompt template may hold no braces besides its one {{}} (found "
                         f"{''.join(c for c in rest if c in '{}')!r}); {example}")
    return template


def agreement(teacher_probs: torch.Tensor, student_probs: torch.Tensor) -> dict:
    """Top-1 match, KL(teacher || student), Jensen-Shannon divergence and Spearman rank correlation."""
    t, s = teacher_probs[None].double(), student_probs[None].double()
    mixture = (t + s) / 2
    js = (kl_divergence(t, mixture) + kl_divergence(s, mixture)) / 2
    return {"top1_match": bool(t.argmax() == s.argmax()), "kl": round(float(kl_divergence(t, s)), 5),
            "js": round(float(js), 5), "spearman": round(float(spearman_corrcoef(t[0], s[0])), 4)}


def check_tokens(predictor: Predictor, who: str, names: list[str], template: str, reserved: int = 0) -> None:
    """Refuse a class name whose prompt is longer than the model's text tower reads: its tokenizer would cut it
    without a word (two classes could become one prompt).

    Args:
        reserved: tokens a learned prompt's context vectors take before the class name.

    Raises:
        InputError: naming the class (or the template), its token count, the model and its limit.
    """
    texts = [template.format(n) for n in names] if not reserved else [f"{'X ' * reserved}{n}" for n in names]
    counts, context = predictor.family.token_counts(predictor, texts)
    if counts is None:
        return
    over = [(n, c) for n, c in zip(names, counts, strict=True) if c > context]
    if not over:
        return
    name, count = max(over, key=lambda item: item[1])
    what = (f"'{template}' alone is {predictor.family.token_counts(predictor, [template.format('')])[0][0]} tokens"
            if len(over) == len(names) and not reserved else f"class {name[:60]!r} makes a prompt of {count} tokens")
    raise InputError(f"The {who}'s text tower reads {context} tokens (start and end included); {what}, so its "
                     f"tokenizer would cut {len(over)} of the {len(names)} prompts without a word. Shorten the class "
                     "names or the template." + (f" (A learned prompt takes {reserved} of them.)" if reserved else ""))


def _student_text(student, student_name: str, names: list[str], template: str, prompt: str, spec,
                  prompts: Path | None = None) -> tuple[torch.Tensor, str]:
    zero_shot = f"zero-shot '{template}'"
    if not prompt:
        return student.text_features([template.format(n) for n in names]), zero_shot
    tensors, meta = load_prompt(prompt, prompts)
    if meta.get("pair") != spec.name:
        raise PromptError(f"Prompt {prompt!r} was learned for pair {meta.get('pair')!r}, not {spec.name!r}.")
    if meta.get("student", spec.students[0].name) != student_name:  # learned for another student of the pair
        return student.text_features([template.format(n) for n in names]), zero_shot
    check_tokens(student, f"student {student_name}", names, "{}",
                 reserved=sum(t.shape[0] for t in tensors.values()))
    return prompted_text_features(student, names, tensors), f"learned prompt '{prompt}' ({meta.get('method')})"


def zero_shot(pair: Pair, chosen: list[Student], predictors: dict[str, Predictor], images: list[np.ndarray],
              names: list[str], template: str, prompt: str = "", notes: list[list[str]] | None = None,
              latency: bool = True, prompts: Path | None = None) -> list[ClassificationComparison]:
    """Every model once over the images (one batch per input shape), against each side's text features.

    Args:
        pair, chosen: a classification pair and its chosen students.
        predictors: ``{"teacher": ..., <student name>: ...}``.
        images: RGB uint8 (H, W, 3) each.
        names: the class names; ``template`` has one ``{}`` for the name.
        prompt: a learned prompt's name (it applies to the student it was learned for; the others run zero-shot).
        notes: notes on each image to carry.
        latency: report each image tower's warm latency (measured once per input shape, then cached).
        prompts: the user's prompt folder (``weights.prompt_store.user_folder``); default this machine's own.

    Returns:
        One :class:`ClassificationComparison` per image, with the patch tokens of each tower (for similarity maps).
    """
    notes = notes or [[] for _ in images]
    probs: dict[str, list] = {}
    patches: dict[str, list] = {}
    embedded: dict[str, list] = {}
    used, profiles = {}, {}
    for name, p in predictors.items():
        check_tokens(p, "teacher" if name == "teacher" else f"student {name}", names, template)
    for name, p in predictors.items():
        if name == "teacher":
            text, used[name] = p.text_features([template.format(n) for n in names]), f"zero-shot '{template}'"
        else:
            text, used[name] = _student_text(p, name, names, template, (prompt or "").strip(), pair, prompts)
        prepared = [p.prepare(image) for image in images]
        probs[name], patches[name], embedded[name] = [None] * len(images), [None] * len(images), [None] * len(images)
        seconds = 0.0
        for group in _encode_batched(p, prepared):
            features, tokens, indices, took = group
            seconds += took
            distribution = p.logits(features, text).softmax(-1).cpu()
            for k, i in enumerate(indices):
                probs[name][i] = distribution[k]
                patches[name][i] = None if tokens is None else tokens[k]
                embedded[name][i] = features[k]
        profiles[name] = profile_of(p, prepared[0][0] if prepared else None, seconds / max(1, len(images)) * 1000,
                                    latency)
    return [ClassificationComparison(
        pair.name, chosen, profiles, list(notes[i]), None, names, {n: probs[n][i] for n in predictors}, used,
        {s.name: agreement(probs["teacher"][i], probs[s.name][i]) for s in chosen},
        {n: patches[n][i] for n in predictors}, {n: embedded[n][i] for n in predictors}) for i in range(len(images))]


def similarity_map(predictor: Predictor, patches: torch.Tensor | None, text: str) -> torch.Tensor | None:
    """(h, w) cosine similarity of every patch token to one text's features, or None without patch tokens."""
    if patches is None:
        return None
    return patches.float() @ predictor.text_features([text])[0].float()


def _encode_batched(predictor: Predictor, prepared: list) -> list[tuple]:
    """``[(features (b, D), patch tokens (b, h, w, D) or None, image indices, seconds)]``, one batch per shape."""
    from analysis.profiling import Stopwatch
    from compare.vision import batches

    done = []
    for indices, batch in batches(prepared):
        with Stopwatch(predictor.device) as watch:
            features, tokens = predictor.encode(batch)
        done.append((features, tokens, indices, watch.seconds))
    return done


# Prompt tuning ------------------------------------------------------------------------------------------------

def _name_key(name: str, dashes: bool = False) -> str:
    """A class name as file names are compared with it: Unicode NFC (macOS writes file names decomposed),
    case-folded, underscores (and with ``dashes``, hyphens) as spaces, spaces collapsed."""
    import unicodedata

    key = unicodedata.normalize("NFC", name).casefold().replace("_", " ")
    return " ".join((key.replace("-", " ") if dashes else key).split())


def _label_of(path: str, names: list[str]) -> int:
    """The class of an uploaded tuning image, from its file name ``<class>_<n>.<ext>``: everything before the last
    ``_<n>`` (``hot_dog_1.png`` -> ``hot dog``, ``t-shirt_2.png`` -> ``t-shirt``, ``red circle_3.png`` ->
    ``red circle``), compared after Unicode normalisation and case folding; a hyphen may stand for a space."""
    stem = Path(path).name.rsplit(".", 1)[0]
    head, _, tail = stem.rpartition("_")
    label = head if head and tail.isdigit() else stem
    for dashes in (False, True):
        keys = [_name_key(n, dashes) for n in names]
        if _name_key(label, dashes) in keys:
            return keys.index(_name_key(label, dashes))
    raise InputError(f"Cannot tell the class of {Path(path).name[:60]!r}: name files '<class>_<n>.png' with a "
                     f"class from the list (e.g. '{names[0]}_1.png').")


def _shapes_examples(names: list[str], per_class: int, start: int = TUNE_SEED_START,
                     ) -> tuple[list[np.ndarray], list[int]]:
    """Labelled Shapes scenes for classes that are shapes or colour-shapes, drawn from seeds ``start`` on."""
    images, labels, wanted = [], [], {n.lower(): i for i, n in enumerate(names)}
    if not set(wanted) <= set(SHAPE_NAMES) | set(COLOUR_SHAPE_NAMES):
        raise InputError("Shapes examples only exist for Shapes classes (shapes or colour-shapes); upload "
                         "labelled images for other classes.")
    counts = dict.fromkeys(wanted.values(), 0)
    seed = start
    while min(counts.values()) < per_class and seed < start + 200 * per_class * len(names):
        scene = render_scene(seed, single_object=True)
        seed += 1
        obj = scene.objects[0]
        for key in (obj.name, f"{obj.colour} {obj.name}"):
            if key in wanted and counts[wanted[key]] < per_class:
                images.append(scene.image)
                labels.append(wanted[key])
                counts[wanted[key]] += 1
    return images, labels


def _pixels(predictor, images: list[np.ndarray]) -> torch.Tensor:
    return torch.cat([predictor.prepare(im)[0]["pixel_values"] for im in images])


def split_held_out(labels: list[int], every: int = 4) -> tuple[list[int], list[int]]:
    """Indices of uploaded images to tune on and to judge on: every ``every``-th image of each class is held out
    (its last one when it has fewer than ``every``); a class with a single image is only tuned on."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    held = {i for members in by_class.values() if len(members) >= 2
            for i in (members[every - 1::every] or members[-1:])}
    return [i for i in range(len(labels)) if i not in held], sorted(held)


def tune_prompts(pair: str = DEFAULT_PAIR, class_names: str = PRESETS["Shapes: 30 colour-shapes"],
                 method: str = "cascade", name: str = "my-prompt", files: list | None = None, per_class: int = 4,
                 steps: int = 100, progress=None, template: str = "",
                 cancel: threading.Event | Callable[[], bool] | None = None,
                 student: str = "", prompts: Path | None = None) -> tuple[str, dict]:
    """Learn a prompt for one student of a CLIP pair and save it in the user's prompt folder.

    Args:
        pair: a classification pair.
        class_names: the classes (2 to 1000).
        method: ``coop`` (labels), ``caspl`` (CasPL's boosting prompt, from the teacher's logits) or ``cascade``
            (the boosting prompt, then an adapting prompt on labels); ``caspl-boost`` is the old name of ``caspl``.
        name: the prompt's name (sanitised; letters, digits, '-' and '_').
        files: labelled images named ``<class>_<n>.<ext>``; when empty, Shapes scenes of the classes are used.
        per_class: Shapes scenes per class when ``files`` is empty.
        steps: optimisation steps per phase (1 to 500).
        progress: a ``gr.Progress`` (or None).
        cancel: a flag (or callable) checked every step, as is whether the caller has gone (an API cancel, a closed
            page: :func:`compare.jobs.caller_gone`); then training stops, nothing is saved and :class:`Cancelled` is
            raised.
        template: the zero-shot template the context starts from (empty: ``a {}``).
        student: the student the prompt is for (empty: the pair's first); it applies to that student only.
        prompts: the user's prompt folder it is saved in (``weights.prompt_store.user_folder``); default this
            machine's own.

    Returns:
        ``(name, figures)``: the saved name and ``{method, student, before, after, measured_on, ...}``: the
        student's accuracy and agreement with the teacher before and after, on images not used for tuning (every
        fourth uploaded image of each class, or Shapes scenes drawn for it); ``measured_on`` says which.
    """
    spec = get_pair(pair, "classification")
    names, notes = parse_classes(class_names)
    try:
        method = method_name(method)
    except ValueError as error:
        raise InputError(f"{error}.") from None
    chosen = spec.choose_students(student or None)
    if len(chosen) != 1:
        raise InputError(f"A prompt is learned for one student at a time; name one (got {len(chosen)}: "
                         f"{', '.join(s.name for s in chosen)}).")
    student_name = chosen[0].name
    stem = check_name_free(name, prompts) if (name or "").strip() else unique_prompt_name(spec.name, method)
    template = check_template(template)
    steps = number(steps, "steps", 1, MAX_TUNE_STEPS, integer=True)
    per_class = number(per_class, "per_class", 1, 16, integer=True)
    if files and len(files) > MAX_TUNE_IMAGES:
        raise InputError(f"{len(files)} images were uploaded; prompt tuning takes at most {MAX_TUNE_IMAGES}.")
    if files:
        paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in files]
        all_labels = [_label_of(p, names) for p in paths]
        all_images = [read_image(p)[0] for p in paths]
        tune_on, held_out = split_held_out(all_labels)
        images, labels = [all_images[i] for i in tune_on], [all_labels[i] for i in tune_on]
        if held_out:
            eval_images, eval_labels = [all_images[i] for i in held_out], [all_labels[i] for i in held_out]
            measured_on = (f"{len(held_out)} of the {len(paths)} uploaded images, held out from tuning "
                           f"(every fourth of each class)")
        else:
            eval_images, eval_labels = images, labels
            measured_on = (f"the {len(paths)} tuning images themselves (no class had two images to hold one out):"
                           " read as a fit, not as held-out accuracy")
        source = f"{len(images)} uploaded images"
    else:
        images, labels = _shapes_examples(names, max(1, min(per_class, 16)))
        eval_images, eval_labels = _shapes_examples(names, HELD_OUT_PER_CLASS, HELD_OUT_SEED_START)
        source = f"{len(images)} Shapes scenes (tuning seeds)"
        measured_on = f"{len(eval_images)} Shapes scenes drawn for it (seeds never used for tuning)"
    predictors = predictors_for(spec, students=chosen)
    student, teacher = predictors[student_name], predictors["teacher"]
    check_tokens(teacher, "teacher", names, template)
    check_tokens(student, f"student {student_name}", names, template)
    s_pixels, t_pixels = _pixels(student, images), _pixels(teacher, images)
    targets = torch.tensor(labels)

    stopped = stop_check(cancel)

    def on_step(phase: str, step: int, loss: float) -> None:
        if stopped():
            raise Cancelled(f"Prompt tuning stopped at step {step}/{steps} of the {phase} prompt; nothing was saved.")
        if progress is not None:
            progress(step / steps, desc=f"{phase} prompt · step {step}/{steps} · loss {loss:.4f}")

    with torch.enable_grad():
        tensors = tune(student, teacher, names, method, (s_pixels, targets), (s_pixels, t_pixels), steps=steps,
                       template=template, on_step=on_step)

    e_student, e_teacher = _pixels(student, eval_images), _pixels(teacher, eval_images)
    e_targets = torch.tensor(eval_labels)
    with torch.no_grad():
        t_text = teacher.text_features([template.format(n) for n in names])
        t_probs = teacher.logits(teacher.forward({"pixel_values": e_teacher}), t_text).softmax(-1)
        s_features = student.forward({"pixel_values": e_student})

    def scores(text: torch.Tensor) -> dict:
        s_probs = student.logits(s_features, text).softmax(-1)
        return {"accuracy": round(float((s_probs.argmax(1).cpu() == e_targets).float().mean()), 4),
                "top1_match_with_teacher": round(float((s_probs.argmax(1) == t_probs.argmax(1)).float().mean()), 4),
                "teacher_accuracy": round(float((t_probs.argmax(1).cpu() == e_targets).float().mean()), 4)}

    before = scores(student.text_features([template.format(n) for n in names]))
    after = scores(prompted_text_features(student, names, tensors))
    figures = {"method": method, "student": student_name, "before": before, "after": after,
               "measured_on": measured_on, "tuned_on": source, "notes": notes}
    metadata = {"pair": spec.name, "student": student_name, "method": method, "template": template,
                "classes": names[:50], "n_classes": len(names),
                "n_context": sum(t.shape[0] for t in tensors.values()), "steps": steps, "figures": figures,
                "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    if stopped():  # stopped while the figures were measured: nothing is saved either
        raise Cancelled(f"Prompt tuning stopped after its {steps} steps, before saving; nothing was saved.")
    saved = save_prompt(stem, tensors, metadata, prompts)
    return saved, figures


def unique_prompt_name(pair: str, method: str) -> str:
    """A fresh name for a prompt saved without one: never two users' prompts under one name."""
    import uuid

    return f"{pair}-{method}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


