"""What a long job needs on shared models: exclusive use of a model while it is changed, and a stop."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
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


def caller_gone() -> bool:
    """Whether the caller of the event running this worker thread has gone: Gradio cancels an event's task when a
    ``gradio_client`` job is cancelled or the page's connection closes, but a function already running in a worker
    thread runs on unless it asks. AnyIO lets the thread ask (``from_thread.check_cancelled``). False outside a
    worker thread (scripts, tests, the CLI)."""
    import asyncio

    from anyio import from_thread

    try:
        from_thread.check_cancelled()
    except RuntimeError:  # not in an AnyIO worker thread
        return False
    except (asyncio.CancelledError, Exception):  # the host task was cancelled
        return True
    return False


def stop_check(cancel: threading.Event | Callable[[], bool] | None) -> Callable[[], bool]:
    """One question a long job asks every step: has its Stop been pressed (``cancel``: a flag, or a callable) or has
    its caller gone (:func:`caller_gone`)?"""
    if cancel is None:
        return caller_gone
    if isinstance(cancel, threading.Event):
        return lambda: cancel.is_set() or caller_gone()
    return lambda: bool(cancel()) or caller_gone()
