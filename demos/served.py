"""Files the app serves: every output image is written once, to a fresh name, in a private folder bounded in entries
and bytes."""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import tempfile
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

MAX_OUTPUT_FILES = 2000  # the oldest entries beyond this many are deleted
MAX_OUTPUT_BYTES = int(float(os.environ.get("DISTILL_LENS_OUTPUT_MB", "2000")) * 2**20)  # and beyond this many bytes
PRUNE_EVERY = 100  # outputs between two prunings
_written = itertools.count()
_folder: Path | None = None


def output_dir() -> Path:
    """The folder of the app's outputs: ``DISTILL_LENS_OUTPUT_DIR`` when set, else a fresh private folder (mode 0700,
    made by ``mkdtemp``) for this process, so no other user of the machine can read it or plant links in it."""
    global _folder
    if _folder is None:
        given = os.environ.get("DISTILL_LENS_OUTPUT_DIR")
        if given:
            _folder = Path(given)
            _folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        else:
            _folder = Path(tempfile.mkdtemp(prefix="distill_lens_outputs-"))
    return _folder


def _size_and_age(entry: Path) -> tuple[int, float]:
    """Bytes and newest modification time of an entry, links never followed (a link counts as itself); a folder is
    as old as its newest file, so a dataset run still writing is kept."""
    try:
        info = entry.lstat()
        if not stat.S_ISDIR(info.st_mode):
            return info.st_size, info.st_mtime
        size, newest = 0, info.st_mtime
        for root, _dirs, files in os.walk(entry, followlinks=False):
            for name in files:
                child = os.lstat(os.path.join(root, name))
                size, newest = size + child.st_size, max(newest, child.st_mtime)
        return size, newest
    except OSError:  # removed meanwhile by another call
        return 0, 0.0


def prune(folder: Path, max_entries: int | None = None, max_bytes: int | None = None) -> None:
    """Delete the oldest entries of ``folder`` until at most ``max_entries`` remain (default
    :data:`MAX_OUTPUT_FILES`) and they hold at most ``max_bytes`` (:data:`MAX_OUTPUT_BYTES`). Links are removed as
    links (never followed), folders with ``rmtree`` (which follows none)."""
    max_entries = MAX_OUTPUT_FILES if max_entries is None else max_entries
    max_bytes = MAX_OUTPUT_BYTES if max_bytes is None else max_bytes
    entries = sorted(((e, *_size_and_age(e)) for e in folder.iterdir()), key=lambda item: item[2])
    total = sum(size for _, size, _ in entries)
    for k, (entry, size, _) in enumerate(entries):
        if len(entries) - k <= max_entries and total <= max_bytes:
            break
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        total -= size


def output_path(prefix: str, suffix: str) -> Path:
    """A fresh, never user-given path for one output file (or, made by the caller, a folder such as a dataset run's),
    in a folder kept to :data:`MAX_OUTPUT_FILES` entries and :data:`MAX_OUTPUT_BYTES` bytes
    (``DISTILL_LENS_OUTPUT_MB``): every :data:`PRUNE_EVERY` outputs, the oldest beyond either bound are deleted."""
    folder = output_dir()
    if next(_written) % PRUNE_EVERY == 0:
        prune(folder)
    return folder / f"{prefix}-{uuid.uuid4().hex[:16]}{suffix}"


def served_files(value: object) -> object:
    """Every RGB(A) uint8 image in an event's result, written to a PNG file of its own (name unique per call, written
    under a temporary name and renamed), so that two calls with identical images never share, rewrite or serve a
    half-written file; galleries' (image, caption) pairs keep their captions. Anything else is returned as it is."""
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 3 and value.shape[2] in (3, 4):
        path = output_path("image", ".png")
        partial = path.with_suffix(".partial")
        Image.fromarray(value).save(partial, format="PNG")
        os.replace(partial, path)
        return str(path)
    if isinstance(value, tuple):
        return tuple(served_files(v) for v in value)
    if isinstance(value, list):
        return [served_files(v) for v in value]
    return value
