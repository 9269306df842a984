"""Files the app serves: every output image is written once, to a fresh name, in a folder bounded in entries."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

OUTPUT_DIR = Path(tempfile.gettempdir()) / "distill_lens_outputs"

MAX_OUTPUT_FILES = 2000  # the oldest files beyond this many are deleted

_written = itertools.count()

def output_path(prefix: str, suffix: str) -> Path:
    """A fresh, never user-given path for one output file (or, made by the caller, a folder such as a dataset run's),
    in a folder kept to ``MAX_OUTPUT_FILES`` entries: the oldest files and folders beyond that are deleted."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    if next(_written) % 100 == 0:
        def age(entry: Path) -> float:
            try:
                newest = entry.stat().st_mtime
                if entry.is_dir():  # as old as its newest file, so a dataset run still writing is kept
                    newest = max([newest] + [f.stat().st_mtime for f in entry.rglob("*")])
                return newest
            except OSError:  # removed meanwhile by another call
                return 0.0

        files = sorted(OUTPUT_DIR.iterdir(), key=age)
        for old in files[: max(0, len(files) - MAX_OUTPUT_FILES)]:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    return OUTPUT_DIR / f"{prefix}-{uuid.uuid4().hex[:16]}{suffix}"

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
