"""Learned prompts on disk: safetensors tensors plus JSON metadata.

Prompts users learn live in a data folder outside the source tree (``$DISTILL_LENS_DATA/prompts``, by default
``~/.cache/distill_lens/prompts``), one folder per user (:func:`user_folder`); prompts shipped with Distill Lens live
in ``weights/prompts/``, are marked ``builtin`` and are never overwritten or deleted. Each user keeps at most
``MAX_PROMPTS_PER_PAIR`` prompts of a pair (their oldest goes first), so no user can evict another's.

Names come from users, so they are sanitised to ``[A-Za-z0-9_-]`` and looked up only among the files listed here;
a name is never joined into a path before it has passed that check.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

BUILTIN_PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
PROMPT_DIR = Path(os.environ.get("DISTILL_LENS_DATA", Path.home() / ".cache" / "distill_lens")) / "prompts"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MAX_PROMPTS = 200  # one user's prompts in all
MAX_PROMPTS_PER_PAIR = 50  # one user's prompts of one pair
MAX_USERS = 1000  # users' folders kept; the least recently written go first


def user_folder(owner: str | None) -> Path:
    """The folder of one user's prompts: a hash of ``owner`` (the app passes a key kept in the browser, or the API
    client's session) under :data:`PROMPT_DIR`, so one user can neither see, evict nor overwrite another's prompts;
    ``None`` (scripts, the command line) is this machine's own folder."""
    import hashlib

    if owner is None:
        return PROMPT_DIR
    return PROMPT_DIR / ("u-" + hashlib.sha256(str(owner).encode()).hexdigest()[:24])


def _prune_users(root: Path) -> None:
    """Keep at most :data:`MAX_USERS` users' folders: the least recently written are removed."""
    import shutil

    folders = sorted((p for p in root.glob("u-*") if p.is_dir() and not p.is_symlink()),
                     key=lambda p: p.stat().st_mtime)
    for old in folders[: max(0, len(folders) - MAX_USERS)]:
        shutil.rmtree(old, ignore_errors=True)


class PromptError(ValueError):
    """A prompt name or file that cannot be used; the message says why."""


def sanitise_name(name: str) -> str:
    """A safe file stem from a user's name: path parts dropped, other characters replaced by '-'."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", str(name).replace("\\", "/").split("/")[-1]).strip("-_")[:64]
    if not stem or not NAME_PATTERN.fullmatch(stem):
        raise PromptError("Give the prompt a name made of letters, digits, '-' or '_'.")
    return stem


def _listed(directory: Path, builtin: bool) -> list[dict]:
    if not directory.is_dir():
        return []
    found = []
    for path in directory.glob("*.safetensors"):
        if not NAME_PATTERN.fullmatch(path.stem):
            continue
        try:
            modified = path.stat().st_mtime
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("distill_lens", "{}"))
        except (OSError, ValueError):  # removed meanwhile, or not one of ours
            continue
        found.append(meta | {"name": path.stem, "builtin": builtin, "_path": path, "_mtime": modified})
    return found


def _all(directory: Path | None) -> list[dict]:
    """Builtin prompts first (their names win), then the user's, newest first within each."""
    user = sorted(_listed(directory or PROMPT_DIR, False), key=lambda p: p["_mtime"], reverse=True)
    builtin = sorted(_listed(BUILTIN_PROMPT_DIR, True), key=lambda p: p["name"])
    names = {p["name"] for p in builtin}
    return builtin + [p for p in user if p["name"] not in names]


def list_prompts(directory: Path | None = None) -> list[dict]:
    """Metadata of every saved prompt, builtin ones first, then the newest:
    ``[{name, pair, method, classes, n_context, figures, builtin, ...}]``."""
    return [{k: v for k, v in p.items() if not k.startswith("_")} for p in _all(directory)]


def check_name_free(name: str, directory: Path | None = None) -> str:
    """The sanitised name, if a prompt may be saved under it now (checked before any training, and again when
    saving); raises :class:`PromptError` naming the clash otherwise."""
    stem = sanitise_name(name)
    known = {p["name"]: p for p in _all(directory or PROMPT_DIR)}
    if stem in known and known[stem]["builtin"]:
        raise PromptError(f"{stem!r} is a builtin prompt; choose another name.")
    if stem in known:
        raise PromptError(f"A prompt named {stem!r} exists already; choose another name (or leave it empty for a "
                          "fresh one).")
    return stem


def save_prompt(name: str, tensors: dict[str, torch.Tensor], metadata: dict, directory: Path | None = None,
                overwrite: bool = False) -> str:
    """Save context tensors and metadata in the user's data folder; returns the sanitised name actually used.

    The pair's oldest user prompts are removed beyond ``MAX_PROMPTS_PER_PAIR`` (and the oldest of all beyond
    ``MAX_PROMPTS``); builtin prompts are never touched and their names cannot be taken.
    """
    stem = sanitise_name(name)
    directory = directory or PROMPT_DIR
    known = {p["name"]: p for p in _all(directory)}
    if stem in known and known[stem]["builtin"]:
        raise PromptError(f"{stem!r} is a builtin prompt; choose another name.")
    path = directory / f"{stem}.safetensors"
    if stem in known and not overwrite:
        raise PromptError(f"A prompt named {stem!r} exists already; choose another name.")
    _write(path, tensors, metadata)
    user = [p for p in _all(directory) if not p["builtin"]]  # newest first
    same_pair = [p for p in user if p.get("pair") == metadata.get("pair")]
    for old in same_pair[MAX_PROMPTS_PER_PAIR:] + user[MAX_PROMPTS:]:
        if old["name"] != stem:
            old["_path"].unlink(missing_ok=True)
    if directory.parent == PROMPT_DIR:
        _prune_users(PROMPT_DIR)
    return stem


def save_builtin_prompt(name: str, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Write a prompt that ships with Distill Lens into ``weights/prompts/`` (recipes and benchmarks only; the app
    never calls this). Overwrites the same name, which is how a recipe refreshes its prompt."""
    path = BUILTIN_PROMPT_DIR / f"{sanitise_name(name)}.safetensors"
    _write(path, tensors, metadata)
    return path


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Context tensors (float32, on the host) and metadata to ``path``, written under a temporary name and renamed:
    never a half-written prompt under a listed name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    partial = path.parent / f".{path.stem}.partial"
    save_file(state, str(partial), metadata={"distill_lens": json.dumps(metadata), "format": "pt"})
    os.replace(partial, path)


def load_prompt(name: str, directory: Path | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a saved prompt, found by exact name among the listed files."""
    known = {p["name"]: p for p in _all(directory)}
    if not isinstance(name, str) or name not in known:
        shown = str(name)[:60]
        raise PromptError(f"Unknown prompt {shown!r}. Saved prompts: {', '.join(known) or 'none yet'}.")
    tensors = {}
    with safe_open(str(known[name]["_path"]), framework="pt") as f:
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    return tensors, {k: v for k, v in known[name].items() if not k.startswith("_")}
