"""What a long job needs on shared models: exclusive use of a model while it is changed, and a stop."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from compare.inputs import InputError
from weights.families import shared_lock


@contextmanager
def exclusive(*models: Any) -> Iterator[None]:
    """Hold the models (and any other shared object: a tokenizer) for this call alone while it changes them
    (swapped modules, processors, hooks) or relies on their state (:func:`weights.families.shared_lock`).

    Locks are taken in one global order, so two calls that need the same models can never deadlock; a call
    holding a model may take it again (re-entrant).
    """
    unique = sorted({id(m): m for m in models if m is not None}.values(), key=id)
    locks = [shared_lock(m) for m in unique]
    with ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        yield


class Cancelled(InputError):
    """The caller stopped the job; the message says where it stopped and that nothing was kept."""


def _anyio_cancelled() -> bool:
    """Whether the AnyIO cancel scope of the task running this worker thread was cancelled (a caller that runs the
    job through ``anyio.to_thread`` and cancels its scope); False outside an AnyIO worker thread."""
    import asyncio

    from anyio import from_thread

    try:
        from_thread.check_cancelled()
    except RuntimeError:  # not in an AnyIO worker thread
        return False
    except (asyncio.CancelledError, Exception):  # the host's scope was cancelled
        return True
    return False


# How a surface tells that the caller of the job running in this thread has gone: the app registers Gradio's
# (an event whose task was cancelled: a gradio_client job.cancel(), a Stop wired with `cancels`, a closed page).
CALLER_GONE_PROBES: list[Callable[[], bool]] = [_anyio_cancelled]


def caller_gone() -> bool:
    """Whether the caller of the job running in this thread has gone, by any registered probe. A function already
    running in a worker thread runs on after its caller's task is cancelled unless it asks; long jobs ask every
    step."""
    return any(probe() for probe in CALLER_GONE_PROBES)


def stop_check(cancel: threading.Event | Callable[[], bool] | None) -> Callable[[], bool]:
    """One question a long job asks every step: has its Stop been pressed (``cancel``: a flag, or a callable) or has
    its caller gone (:func:`caller_gone`)?"""
    if cancel is None:
        return caller_gone
    if isinstance(cancel, threading.Event):
        return lambda: cancel.is_set() or caller_gone()
    return lambda: bool(cancel()) or caller_gone()


@functools.cache
def glibc():
    """The C library when it is glibc (its ``malloc_trim`` and ``mallopt`` tune how this process returns memory);
    None elsewhere (macOS, musl), where callers do nothing."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
