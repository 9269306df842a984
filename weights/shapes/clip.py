"""The builtin Shapes CLIP pair, registered as open_clip model configs so it loads through open_clip's own calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from weights.shapes.checkpoints import BUILTIN_DIR

CLIP_CONFIG_DIR = Path(__file__).resolve().parents[1] / "clip_configs"
CLIP_ROLES = ("teacher", "student", "narrow")  # "narrow": the student of the narrow caption corpus
CLIP_MODEL_NAMES = {role: f"shapes-clip-{role}" for role in CLIP_ROLES}
CLIP_CHECKPOINTS = {role: BUILTIN_DIR / f"shapes_clip_{role}.safetensors" for role in CLIP_ROLES}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 64


def register_clip_configs() -> None:
    """Make the builtin configs (``shapes-clip-teacher``, ``-student``, ``-narrow``) known to open_clip."""
    import open_clip

    if CLIP_MODEL_NAMES["teacher"] not in open_clip.list_models():
        open_clip.add_model_config(CLIP_CONFIG_DIR)


def clip_checkpoint(role: str, folder: Path | None = None) -> Path:
    """Where a builtin CLIP's safetensors live: ``weights/checkpoints``, or ``folder`` (a recipe's ``--out``)."""
    return CLIP_CHECKPOINTS[role] if folder is None else folder / CLIP_CHECKPOINTS[role].name


def create_builtin_clip(role: str, pretrained: bool = True, folder: Path | None = None):
    """``(model, tokenizer)`` for a builtin CLIP via ``open_clip.create_model``; weights from safetensors, read
    from ``folder`` when given (a recipe's ``--out``) instead of ``weights/checkpoints``."""
    import open_clip

    register_clip_configs()
    name = CLIP_MODEL_NAMES[role]
    checkpoint = str(clip_checkpoint(role, folder)) if pretrained else None
    model = open_clip.create_model(name, pretrained=checkpoint)
    return model, open_clip.get_tokenizer(name)


def clip_image_batch(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 Shapes scenes -> (B, 3, 64, 64) CLIP-normalised float (antialiased resize)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (x - mean) / std
