"""What a long job needs on shared models: exclusive use of a model while it is changed, and a stop."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

from compare.inputs import InputError

_MODEL_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


@contextmanager
def exclusive(*models: torch.nn.Module) -> Iterator[None]:
    """Hold the models for this call alone while it changes them (swapped modules, processors, hooks).

    Locks are taken in one global order, so two calls that need the same models can never deadlock; a call
    holding a model may take it again (re-entrant).
    """
    unique = sorted({id(m): m for m in models if m is not None}.values(), key=id)
    with _MODEL_LOCKS_GUARD:
        locks = [_MODEL_LOCKS.setdefault(m, threading.RLock()) for m in unique]
    with ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        yield


class Cancelled(InputError):
    """The caller stopped the job; the message says where it stopped and that nothing was kept."""
