"""A tab opens with a result: its default example, already computed.

When a page loads, each tab fills its inputs with its default example and runs the same chain of events as its run
button (:func:`first_sight`), with the model step taken from a cache shared by every page (:func:`remembered`): the
example is computed once per process, in the background at start-up (:func:`warm_up`, from ``app.main``) or by the
first page that needs it, and every later page gets the stored result in the time it takes to draw it. Nothing
here runs at import, and the server starts serving at once.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

_WARM_UPS: list[Callable[[], Any]] = []  # the registered examples, computed in the background by warm_up()
REMEMBERED = 4  # results kept per function (its default examples; a changed default adds one)


def _key_part(value: Any) -> Any:
    """A hashable stand-in for one argument: a file by its content (Gradio serves an example from a copy of its
    own), an array by its bytes, a request not at all (the result is the same for every caller)."""
    if isinstance(value, str) and len(value) < 4096 and Path(value).is_file():
        return "file", hashlib.sha256(Path(value).read_bytes()).hexdigest()
    if isinstance(value, np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
        return "array", value.shape, str(value.dtype), digest
    if type(value).__name__ in ("Request", "Progress"):  # who asked and how they are told, not what
        return None
    if isinstance(value, (list, tuple)):
        return tuple(_key_part(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _key_part(v)) for k, v in value.items()))
    return repr(value)


def remembered(fn: Callable, still_valid: Callable[[Any], bool] | None = None) -> Callable:
    """``fn`` with its results stored by argument value (at most :data:`REMEMBERED`), shared by every page: for a
    tab's first sight only, never for a user's run. One call computes at a time; others asking for the same result
    wait for it. A failure is not stored (the next page tries again), nor kept a result that ``still_valid`` says is
    no longer (e.g. its files were cleaned away)."""
    results: dict[tuple, Any] = {}
    lock = threading.Lock()
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # the key: each parameter's value, however it was passed
        key = tuple((name, _key_part(value)) for name, value in signature.bind(*args, **kwargs).arguments.items())
        with lock:
            if key in results and still_valid is not None and not still_valid(results[key]):
                del results[key]
            if key not in results:
                if len(results) >= REMEMBERED:
                    results.pop(next(iter(results)))
                results[key] = fn(*args, **kwargs)
            return results[key]

    return wrapper


def on_load(inputs: list, values: list) -> Callable:
    """Set ``inputs`` to ``values`` (a callable among them is called then) when a page loads; returns the trigger to
    chain the tab's run after (use it as a run button's ``click``)."""
    from gradio.context import get_blocks_context

    def filled():
        now = [v() if callable(v) else v for v in values]
        return tuple(now) if len(now) > 1 else now[0] if now else None

    root = get_blocks_context().root_block
    return root.load(filled, None, inputs or None, queue=False, api_visibility="private").then


def warm_up() -> threading.Thread:
    """Compute every registered first sight in one background thread (a failure is logged, and that tab computes
    at its first page instead); returns the thread."""

    def work():
        from compare.latency import ACTIVITY

        for call in list(_WARM_UPS):
            try:
                with ACTIVITY.running():  # a call like any other: latencies timed meanwhile are timed again later
                    call()
            except Exception:  # noqa: BLE001 (a first sight that cannot be computed must not stop the others)
                logging.getLogger(__name__).warning("a first sight could not be computed", exc_info=True)

    thread = threading.Thread(target=work, name="first-sight", daemon=True)
    thread.start()
    return thread


def first_sight(wire: Callable, fn: Callable, inputs: list, examples: dict, still_valid: Callable | None = None,
                ) -> Any:
    """Give a tab its first sight: when a page loads, the ``examples`` inputs (component -> value, or a callable
    giving it) get their example and the tab's chain runs as its run button's does, with ``fn`` (the model step)
    :func:`remembered`, and warmed up at start-up with the inputs' defaults.

    Args:
        wire: ``wire(trigger, fn, api)`` builds the tab's chain from a trigger (as for its run button) and returns
            its model event; ``api`` holds the model event's API keywords (here: private).
        fn: the chain's model step; ``inputs`` its input components.
        still_valid: see :func:`remembered`.
    """
    shared = remembered(fn, still_valid)

    def warm() -> Any:
        values = {id(c): v() if callable(v) else v for c, v in examples.items()}
        asks = "request" in inspect.signature(fn).parameters  # no page asked: no request (nor a Stop button)
        return shared(*[values.get(id(c), c.value) for c in inputs], **({"request": None} if asks else {}))

    _WARM_UPS.append(warm)
    return wire(on_load(list(examples), list(examples.values())), shared, {"api_visibility": "private"})
