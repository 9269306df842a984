"""Latency and FLOPs of a model without re-running it on every request.

A request runs each model once. What a latency figure needs (a warm-up, then repeated timed forwards) is done
once per (model, input shape, device, dtype) and kept in a small cache; later requests reuse it, and their reports
say how many timed runs the figure rests on and whether it came from the cache. FLOPs are counted during the
warm-up forward of that measurement, so they cost no forward of their own. The benchmarks keep their own repeated
timing (:func:`analysis.profiling.time_call`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from analysis.profiling import time_call

BUDGET_S = 1.0  # time spent on one measurement's timed forwards, at most (and at least one run)
REPEATS = 5


class Activity:
    """The model-running calls in flight in this process (the app's events and jobs enter :meth:`running`): a latency
    timed while another call ran measures the shared machine as much as the model, so :class:`LatencyCache` keeps it
    only until a call finds the process otherwise idle and times it again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0  # calls inside running(), all threads
        self._started = 0  # calls that have entered running() so far
        self._mine = threading.local()  # this thread's own depth of running()

    @contextmanager
    def running(self) -> Iterator[None]:
        """Count the enclosed call as running (nesting in one thread counts as one caller)."""
        with self._lock:
            self._running += 1
            self._started += 1
        self._mine.depth = getattr(self._mine, "depth", 0) + 1
        try:
            yield
        finally:
            self._mine.depth -= 1
            with self._lock:
                self._running -= 1

    def state(self) -> tuple[int, int]:
        """``(others, started)``: calls running in other threads now, and how many calls have started so far."""
        with self._lock:
            return self._running - getattr(self._mine, "depth", 0), self._started


ACTIVITY = Activity()


@dataclass(frozen=True)
class Measured:
    """One measurement: the median and interquartile range of ``runs`` warm forwards (ms), the GFLOPs of one
    forward as ``torch.utils.flop_counter`` counts them (matmuls and convolutions), and whether no other call ran in
    this process while it was timed (``alone``)."""

    latency_ms: float
    latency_iqr_ms: float
    runs: int
    gflops: float
    alone: bool = True


class LatencyCache:
    """A thread-safe, bounded cache of :class:`Measured` figures per key; the oldest entries go first."""

    def __init__(self, max_entries: int = 256, activity: Activity = ACTIVITY):
        self.max_entries = max_entries
        self.activity = activity
        self._items: OrderedDict[Hashable, Measured] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Measured | None:
        with self._lock:
            return self._items.get(key)

    def measure(self, key: Hashable, forward: Callable[[], object], device: torch.device) -> tuple[Measured, bool]:
        """The cached figures of ``key``, else measured now: one warm-up forward (FLOPs counted), then up to
        :data:`REPEATS` timed forwards within :data:`BUDGET_S`. A figure timed while another call ran in this process
        (``alone`` False) is served until a call finds no other running, which times it again; the cache keeps
        the new figure if it was timed alone or is faster.

        Returns:
            ``(measured, cached)``: ``cached`` is True when no forward ran for this call.
        """
        found = self.get(key)
        others, started = self.activity.state()
        if found is not None and (found.alone or others):
            return found, True
        with FlopCounterMode(display=False) as counter:
            forward()
        _, timing = time_call(forward, device, repeats=REPEATS, warmup=0, budget_s=BUDGET_S)
        others_after, started_after = self.activity.state()
        measured = Measured(round(timing.median_ms, 3), round(timing.iqr_ms, 3), timing.runs,
                            round(counter.get_total_flops() / 1e9, 3),
                            alone=not others and not others_after and started_after == started)
        with self._lock:
            kept = self._items.get(key)
            if kept is None or measured.alone or (not kept.alone and measured.latency_ms < kept.latency_ms):
                self._items[key] = measured
                self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
        return measured, False

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


LATENCY = LatencyCache()


def latency_key(predictor, inputs: dict[str, torch.Tensor]) -> tuple:
    """What a timing depends on: the model, the input's shape, its device and dtype."""
    pixels = inputs["pixel_values"]
    return (*predictor.key, tuple(pixels.shape), str(pixels.device), str(pixels.dtype))


def profile_of(predictor, inputs: dict[str, torch.Tensor] | None, this_run_ms: float, latency: bool = True):
    """A model's :class:`compare.results.Profile` in a request: its parameters, this request's own forward time per
    image, and (``latency``) the warm latency and FLOPs of one image of this input shape, from :data:`LATENCY` or
    measured once now."""
    from compare.results import Profile

    figures = Profile(predictor.params, this_run_ms=round(this_run_ms, 3))
    if latency and inputs is not None:
        measured, cached = LATENCY.measure(latency_key(predictor, inputs), lambda: predictor.forward(inputs),
                                           predictor.device)
        figures.latency_ms, figures.latency_iqr_ms, figures.runs = (measured.latency_ms, measured.latency_iqr_ms,
                                                                   measured.runs)
        figures.gflops, figures.latency_cached, figures.latency_alone = measured.gflops, cached, measured.alone
    return figures
