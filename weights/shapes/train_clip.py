"""Recipe that trains the builtin Shapes CLIP pair through open_clip's own model classes: a tiny teacher trained
contrastively on single-object Shapes scenes and their captions, then two students distilled from it (``student``:
a small image tower, every caption form; ``narrow``: a wider image tower, captions that never name a colour and a
shape together, see ``CAPTION_FORMS``).

    python -m weights.shapes.train_clip                  # all roles, the committed recipe (teacher first)
    python -m weights.shapes.train_clip --role narrow --steps 200

Captions take three forms: ``a red circle``, ``a circle`` and ``a red shape``. The task loss is multi-positive
contrastive (every caption that describes an image is a positive for it), so ``a circle`` does not push away the
other circles in the batch. The student adds CLIP-KD's distillation terms against the frozen teacher: feature
distillation (MSE between the two models' normalised image and text embeddings, which share a width) and
relational distillation (KL between the teacher's and the student's image-to-text similarity distributions over
the batch). Weights are saved in fp16 safetensors (open_clip casts them back on load).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from analysis.profiling import count_parameters
from methods.distill import clip_kd
from weights.shapes.clip import CLIP_ROLES, clip_checkpoint, clip_image_batch, create_builtin_clip
from weights.shapes.world import COLOUR_NAMES, SHAPE_NAMES, TRAIN_SEEDS, render_scene

STEPS = {"teacher": 1500, "student": 2000, "narrow": 2000}


def caption_forms(colour: str | None, shape: str | None) -> str:
    article = "an" if (colour or shape or "x")[0] in "aeiou" else "a"
    return f"{article} {colour or ''} {shape or 'shape'}".replace("  ", " ")


# Shares of caption forms per role: full (``a red circle``), shape only (``a circle``), colour only (``a red shape``).
# The narrow student never reads a colour and a shape named together.
CAPTION_FORMS = {"teacher": (0.6, 0.25, 0.15), "student": (0.6, 0.25, 0.15), "narrow": (0.0, 0.6, 0.4)}


def sample_captions(colours: np.ndarray, shapes: np.ndarray, rng: np.random.Generator,
                    forms: tuple[float, float, float] = CAPTION_FORMS["teacher"],
                    ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One caption per image, its form drawn with the shares ``forms``; -1 marks a missing field."""
    form = rng.choice(3, size=len(colours), p=list(forms))
    cap_colours = np.where(form == 1, -1, colours)
    cap_shapes = np.where(form == 2, -1, shapes)
    texts = [caption_forms(COLOUR_NAMES[c] if c >= 0 else None, SHAPE_NAMES[s] if s >= 0 else None)
             for c, s in zip(cap_colours, cap_shapes, strict=True)]
    return texts, cap_colours, cap_shapes


def multi_positive_loss(logits: torch.Tensor, matches: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against uniform targets over every matching pair, in both directions."""
    image_targets = matches / matches.sum(1, keepdim=True)
    text_targets = matches.t() / matches.t().sum(1, keepdim=True)
    return (-(image_targets * logits.log_softmax(1)).sum(1).mean()
            - (text_targets * logits.t().log_softmax(1)).sum(1).mean()) / 2


def train(role: str, steps: int, pool_size: int = 12000, batch_size: int = 128, lr: float = 1e-3,
          seed: int = 0, out: Path | None = None) -> None:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model, tokenizer = create_builtin_clip(role, pretrained=False)
    model.train()
    teacher = None
    if role != "teacher":
        teacher = create_builtin_clip("teacher", folder=out)[0].float().eval().requires_grad_(False)
    start = time.time()
    scenes = [render_scene(TRAIN_SEEDS[i], single_object=True) for i in range(pool_size)]
    images = clip_image_batch(np.stack([s.image for s in scenes]))
    shapes = np.array([s.objects[0].class_id - 1 for s in scenes])
    colours = np.array([COLOUR_NAMES.index(s.objects[0].colour) for s in scenes])
    print(f"[clip/{role}] {count_parameters(model):,} params; {pool_size} scenes in "
          f"{time.time() - start:.0f}s", flush=True)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.1)
    for step in range(1, steps + 1):
        index = torch.from_numpy(rng.integers(0, pool_size, batch_size))
        x = images[index]
        x = torch.where(torch.rand(batch_size, 1, 1, 1) < 0.5, x.flip(-1), x)
        texts, cap_colours, cap_shapes = sample_captions(colours[index], shapes[index], rng, CAPTION_FORMS[role])
        tokens = tokenizer(texts)
        outputs = model(x, tokens)
        image_features, text_features, scale = outputs[:3]
        logits = scale * image_features @ text_features.t()
        matches = torch.from_numpy(
            ((cap_colours[None, :] < 0) | (cap_colours[None, :] == colours[index][:, None]))
            & ((cap_shapes[None, :] < 0) | (cap_shapes[None, :] == shapes[index][:, None]))).float()
        loss = multi_positive_loss(logits, matches)
        if teacher is not None:
            with torch.no_grad():
                teacher_out = teacher(x, tokens)
            loss = loss + clip_kd(outputs, teacher_out)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 50 == 0 or step == steps:
            print(f"[clip/{role}] step {step}/{steps} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    path = clip_checkpoint(role, out)
    save_file(state, str(path), metadata={"format": "pt"})
    print(f"saved {path}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=[*CLIP_ROLES, "all"], default="all")
    parser.add_argument("--steps", type=int, default=0, help="0: the recipe's own count per role")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="write here instead of weights/checkpoints (a student distils from the teacher there)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for role in CLIP_ROLES if args.role == "all" else [args.role]:
        train(role, args.steps or STEPS[role], out=args.out)


if __name__ == "__main__":
    main()
