"""How events run: one GPU queue for every model-running event, a stop flag per job, errors turned into messages
for people, and ZeroGPU support."""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import threading
from collections.abc import Callable

import torch

from compare.inputs import InputError
from compare.jobs import CALLER_GONE_PROBES, glibc
from compare.latency import ACTIVITY
from demos.served import served_files
from weights.custom import OwnModelError
from weights.loaders import ModelUnavailableError
from weights.prompt_store import PromptError
from weights.registry import UnknownPairError, UnknownStudentError

log = logging.getLogger("distill_lens")


def gpu_concurrency() -> int:
    """How many model-running events may run at once: ``DISTILL_LENS_GPU_CONCURRENCY``, else 1 on a GPU (one queue
    in front of it) and 2 on a CPU."""
    value = os.environ.get("DISTILL_LENS_GPU_CONCURRENCY")
    return max(1, int(value)) if value else (1 if torch.cuda.is_available() else 2)


# Every event that runs a model waits in this one queue, whether it came from the page or from the API.
GPU_QUEUE = {"concurrency_id": "gpu", "concurrency_limit": gpu_concurrency()}


# Errors whose message is meant for the user.
USER_ERRORS = (InputError, UnknownPairError, UnknownStudentError, ModelUnavailableError, PromptError, OwnModelError)


# (browser session, job) -> the flag that job checks every step; each Stop button stops its own tab's job only
_STOP_FLAGS: dict[tuple[str, str], threading.Event] = {}
_STOP_GUARD = threading.Lock()


def stop_flag(session: str | None, job: str = "job") -> threading.Event:
    """A fresh flag for a new ``job`` (e.g. ``"generation"``, ``"prompts"``, ``"dataset"``) of this browser session:
    its Stop button sets it, and the job checks it every step."""
    flag = threading.Event()
    if session:
        with _STOP_GUARD:
            _STOP_FLAGS[(session, job)] = flag
            while len(_STOP_FLAGS) > 10_000:
                _STOP_FLAGS.pop(next(iter(_STOP_FLAGS)))
    return flag


def request_stop(session: str | None, job: str = "job") -> None:
    """Stop this session's running ``job`` at its next step (its Stop button calls this); other jobs run on."""
    with _STOP_GUARD:
        flag = _STOP_FLAGS.get((session or "", job))
    if flag is not None:
        flag.set()


def gradio_event_cancelled() -> bool:
    """Whether the Gradio event running this worker thread was cancelled. Gradio cancels an event by cancelling its
    asyncio task (named ``<session>_<fn><gradio-sep><event id>``); the task ends while the function runs on in its
    worker thread. So: the thread's event id (a context variable Gradio sets for the function), and whether a task of
    that event still runs on the event loop (asked on the loop's own thread). False outside a Gradio event."""
    import asyncio

    from anyio._core._eventloop import threadlocals
    from gradio.context import LocalContext

    event_id = LocalContext.event_id.get(None)
    token = getattr(threadlocals, "current_token", None)
    if not event_id or token is None:
        return False

    async def running() -> bool:
        return any(task.get_name().endswith(f"<gradio-sep>{event_id}") and not task.cancelling()
                   for task in asyncio.all_tasks())

    import concurrent.futures

    try:
        return not asyncio.run_coroutine_threadsafe(running(), token.native_token).result(timeout=5)
    except concurrent.futures.TimeoutError:  # a loop too busy to answer: no sign the caller has gone
        return False
    except RuntimeError:  # the loop is closed: the app is stopping, and so should the job
        return True


CALLER_GONE_PROBES.append(gradio_event_cancelled)


def takes_request(fn: Callable) -> Callable:
    """Mark ``fn``'s ``request`` parameter as a ``gr.Request``, so Gradio passes the caller's request. (Our modules
    use postponed annotations and import gradio lazily, so a written ``gr.Request`` annotation would stay a string
    that Gradio cannot resolve.)"""
    import gradio as gr

    fn.__annotations__["request"] = gr.Request
    return fn


def session_of(request) -> str | None:
    return getattr(request, "session_hash", None)


def stop_button(job: str) -> Callable:
    """The handler of a tab's Stop button: the session's running ``job`` stops at its next step."""
    def stop(request) -> None:
        request_stop(session_of(request), job)

    return takes_request(stop)


_CALLS = itertools.count(1)
TRIM_EVERY = 10  # events between two returns of freed heap memory to the system


def release_memory() -> None:
    """Every :data:`TRIM_EVERY` events, give the heap memory that freed tensors left behind back to the system
    (glibc's ``malloc_trim``): many threads allocating and freeing image-sized buffers otherwise leave the server's
    resident memory creeping up wave after wave."""
    if next(_CALLS) % TRIM_EVERY == 0 and glibc() is not None:
        glibc().malloc_trim(0)


def out_of_space(error: BaseException) -> bool:
    """Whether an error (or its cause) is a full disk: ``ENOSPC`` from Python, or a library's own error carrying the
    OS's "no space left" (safetensors writes through Rust: ``StorageFull``, ``code: 28``)."""
    import errno

    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        text = str(error)
        if "No space left" in text or "StorageFull" in text or "code: 28" in text:
            return True
        error = error.__cause__ or error.__context__
    return False


_DOWNLOADS: dict[str, threading.Lock] = {}  # browser session -> held while its own models download


@contextlib.contextmanager
def download_slot(args: list):
    """At most one download of own models per user at a time: a run naming an own pair (a spec string) whose weights
    are not on this machine yet holds its session's slot; a second such run from the same session is refused."""
    from gradio.context import LocalContext

    from weights.custom import looks_like_spec
    from weights.loaders import weights_at_hand
    from weights.registry import get_pair

    spec = next((a for a in args if looks_like_spec(a)), None)
    request = LocalContext.request.get(None) if spec is not None else None
    session = getattr(request, "session_hash", None)
    if session is None:
        yield
        return
    try:
        pair = get_pair(spec)
        missing = not all(weights_at_hand(s) for s in [pair.teacher, *(s.source for s in pair.students)])
    except Exception:  # the run itself reports a bad spec
        missing = False
    if not missing:
        yield
        return
    with _STOP_GUARD:
        lock = _DOWNLOADS.setdefault(session, threading.Lock())
        while len(_DOWNLOADS) > 10_000:
            _DOWNLOADS.pop(next(iter(_DOWNLOADS)))
    if not lock.acquire(blocking=False):
        raise OwnModelError("Your models are already downloading for another run; wait for it to finish, then run "
                            "again (one download per user at a time).")
    try:
        yield
    finally:
        lock.release()


def stopped_as_outcome(fn: Callable, outputs: int, message_at: int | None = None, markdown: bool = True) -> Callable:
    """A page handler for which Stop is an outcome, not an error: when the job stops (:class:`compare.jobs.Cancelled`),
    a neutral notice says where it stopped, every output is emptied, and ``message_at`` (a Markdown output, or a
    text box when not ``markdown``) holds the same words; wrap it in :func:`user_errors` as usual."""
    from compare.jobs import Cancelled

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import gradio as gr

        try:
            return fn(*args, **kwargs)
        except Cancelled as stopped:
            gr.Info(str(stopped))
            values = [None] * outputs
            if message_at is not None:
                values[message_at] = f"**Stopped.** {stopped}" if markdown else f"Stopped: {stopped}"
            return tuple(values)

    return wrapper


def user_errors(fn: Callable) -> Callable:
    """Turn our user-facing errors into ``gr.Error`` (which reaches gradio_client callers too)
    and any other failure into a short message, so the app keeps serving. Images in the result are served from
    files of their own (:func:`served_files`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import gradio as gr

        try:
            with ACTIVITY.running(), download_slot([*args, *kwargs.values()]):  # counted: latencies timed meanwhile
                return served_files(fn(*args, **kwargs))
        except gr.Error:
            raise
        except USER_ERRORS as error:
            raise gr.Error(str(error), print_exception=False) from error
        except torch.cuda.OutOfMemoryError as error:
            torch.cuda.empty_cache()
            raise gr.Error("The GPU ran out of memory; try a smaller image or a builtin pair.") from error
        except Exception as error:
            if out_of_space(error):
                log.error("out of disk space in %s: %s", fn.__name__, error)
                raise gr.Error("The server is out of disk space, so nothing could be written; nothing was kept. "
                               "Please try again later.", print_exception=False) from error
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"Something went wrong ({type(error).__name__}). The app is still running; "
                           f"please try another input.") from error
        finally:
            release_memory()

    return wrapper


def on_gpu(fn: Callable) -> Callable:
    """Run under ``spaces.GPU`` when the ``spaces`` package is present (a ZeroGPU Space); unchanged elsewhere."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)
