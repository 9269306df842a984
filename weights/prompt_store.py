"""Learned prompts on disk: safetensors tensors plus JSON metadata under ``weights/prompts/``.

Names come from users, so they are sanitised to ``[A-Za-z0-9_-]`` and looked up only among the files listed here;
a name is never joined into a path before it has passed that check.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MAX_PROMPTS = 200


class PromptError(ValueError):
    """A prompt name or file that cannot be used; the message says why."""


def sanitise_name(name: str) -> str:
    """A safe file stem from a user's name: path parts dropped, other characters replaced by '-'."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", str(name).replace("\\", "/").split("/")[-1]).strip("-_")[:64]
    if not stem or not NAME_PATTERN.fullmatch(stem):
        raise PromptError("Give the prompt a name made of letters, digits, '-' or '_'.")
    return stem


def list_prompts(directory: Path | None = None) -> list[dict]:
    """Metadata of every saved prompt, newest first: ``[{name, pair, method, classes, n_context, figures, ...}]``."""
    directory = directory or PROMPT_DIR
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True):
        if NAME_PATTERN.fullmatch(path.stem):
            with safe_open(str(path), framework="pt") as f:
                found.append(json.loads((f.metadata() or {}).get("distill_lens", "{}")) | {"name": path.stem})
    return found


def save_prompt(name: str, tensors: dict[str, torch.Tensor], metadata: dict, directory: Path | None = None,
                overwrite: bool = False) -> str:
    """Save context tensors and metadata; returns the sanitised name actually used."""
    stem = sanitise_name(name)
    directory = directory or PROMPT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.safetensors"
    if path.exists() and not overwrite:
        raise PromptError(f"A prompt named {stem!r} exists already; choose another name.")
    if len(list(directory.glob("*.safetensors"))) >= MAX_PROMPTS and not path.exists():
        raise PromptError(f"There are already {MAX_PROMPTS} saved prompts; delete some first.")
    state = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    save_file(state, str(path), metadata={"distill_lens": json.dumps(metadata), "format": "pt"})
    return stem


def load_prompt(name: str, directory: Path | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a saved prompt, found by exact name among the listed files."""
    directory = directory or PROMPT_DIR
    known = {p["name"]: p for p in list_prompts(directory)}
    if not isinstance(name, str) or name not in known:
        shown = str(name)[:60]
        raise PromptError(f"Unknown prompt {shown!r}. Saved prompts: {', '.join(known) or 'none yet'}.")
    tensors = {}
    with safe_open(str(directory / f"{name}.safetensors"), framework="pt") as f:
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    return tensors, known[name]
