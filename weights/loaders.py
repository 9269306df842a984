"""Lazy, cached, device-aware model loading for builtin checkpoints and Hub repos.

Models load on first use into a cache bounded in bytes; the least recently used model goes first.
CUDA when present (fp16 for Hub models, whose weights ship for it), CPU fp32 otherwise. How a model loads is its
family's business (``weights/families``): safetensors only, never ``trust_remote_code``, classes from each family's
allow-list.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from weights.families import ModelUnavailableError, family_of, no_inference_tensors
from weights.families.diffusers import assemble_pipeline, load_generation_pair
from weights.registry import ModelSource

__all__ = ["MODEL_CACHE", "ModelCache", "ModelUnavailableError", "assemble_pipeline", "default_device",
           "default_dtype", "load_generation_pair", "load_model", "module_bytes", "stored_bytes",
           "stored_parameters", "weights_at_hand"]

DEFAULT_CACHE_MB = int(os.environ.get("DISTILL_LENS_CACHE_MB", "6000"))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device, source: ModelSource) -> torch.dtype:
    """The dtype ``source`` runs in on ``device``, as its family decides (fp16 for Hub weights on CUDA)."""
    return family_of(source).default_dtype(device, source)


def module_bytes(obj: Any) -> int:
    """Bytes of parameters and buffers of a module, a (module, processor) pair or a diffusers pipeline."""
    item = obj[0] if isinstance(obj, tuple) else obj
    modules = [m for m in getattr(item, "components", {}).values() if isinstance(m, torch.nn.Module)] or [item]
    return sum(t.numel() * t.element_size() for m in modules if isinstance(m, torch.nn.Module)
               for t in list(m.parameters()) + list(m.buffers()))


class ModelCache:
    """A thread-safe least-recently-used cache bounded by the bytes of the modules it holds."""

    def __init__(self, max_bytes: int, sizeof: Callable[[Any], int] = module_bytes):
        self.max_bytes = max_bytes
        self._sizeof = sizeof
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._lock = threading.RLock()  # guards the dict only, never held while a model loads
        self._loading: dict[Any, threading.Lock] = {}

    def get_or_load(self, key: Any, load: Callable[[], Any]) -> Any:
        """The cached value of ``key``, loading it first if needed. A load blocks only the calls that need the same
        key (a first SD 1.5 download does not stall a Shapes detection); a failed load is retried by the next call.
        """
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:  # another call loaded it while this one waited
                    self._items.move_to_end(key)
                    return self._items[key][0]
            try:
                value = load()
                size = self._sizeof(value)
                with self._lock:
                    self._items[key] = (value, size)
                    while self.total_bytes > self.max_bytes and len(self._items) > 1:
                        self._items.popitem(last=False)
                return value
            finally:
                with self._lock:
                    self._loading.pop(key, None)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self._items.values())

    def keys(self) -> list:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


MODEL_CACHE = ModelCache(DEFAULT_CACHE_MB * 2**20)


def load_model(source: ModelSource, device: torch.device | None = None, cache: ModelCache = MODEL_CACHE,
               ) -> tuple[torch.nn.Module, Any]:
    """Load (or fetch from the cache) one model and its processor, through the model's family.

    Args:
        source: where the model comes from.
        device: where it runs; :func:`default_device` when None.
        cache: the LRU cache to use.

    Returns:
        ``(model, processor)``: the module in eval mode on ``device``; ``processor`` is what the family prepares
        inputs with (a Hub image processor, transforms and tokenizer, or None for builtin models).

    Raises:
        ModelUnavailableError: the family refuses the class, or the weights cannot be read here (the message says
            why and what to do).
    """
    device = device or default_device()
    dtype = default_dtype(device, source)
    family = family_of(source)

    def load():
        try:
            return family.load(source, device, dtype)
        except (ModelUnavailableError, MemoryError):
            raise
        except Exception as error:  # a corrupt weights file, weights that do not fit the class: a model not loaded
            from weights.hub import hub_error_message

            raise ModelUnavailableError(hub_error_message(source, error)) from error

    return cache.get_or_load((source, str(device), dtype), no_inference_tensors(load))


def _weights_file(source: ModelSource) -> Path | None:
    """The local safetensors file holding a model's weights, without downloading (see the family)."""
    return family_of(source).weights_file(source)


def weights_at_hand(source: ModelSource) -> bool:
    """Whether a model's weights are on this machine (builtin, a local folder, or already in the Hub cache)."""
    path = _weights_file(source)
    return path is not None and path.is_file()


def stored_bytes(source: ModelSource) -> int | None:
    """Bytes of a model's weights file when it is on this machine, else None."""
    path = _weights_file(source)
    return path.stat().st_size if path is not None and path.is_file() else None


BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # batch-norm state, not parameters


def safetensors_parameters(path: Path) -> int:
    """Parameters in a safetensors file, from its header (shapes only; no tensor is read), batch-norm state left out.

    Raises:
        Exception: whatever safetensors raises for an unreadable file.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if not k.endswith(BUFFERS))


def stored_parameters(source: ModelSource) -> int | None:
    """Parameter count from a safetensors header (shapes only; nothing is loaded or downloaded), or None when the
    weights are not on this machine. For a pipeline, its UNet; for a LoRA, the adapter's own parameters."""
    path = _weights_file(source)
    if path is None or not path.is_file():
        return None
    if path.suffix != ".safetensors":  # a package's own file: its family counts the architecture's parameters
        return family_of(source).parameters(source)
    try:
        return safetensors_parameters(path)
    except Exception:  # an unreadable file is reported by the loader when the model is used
        return None
