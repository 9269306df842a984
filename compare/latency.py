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
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from analysis.profiling import time_call

BUDGET_S = 1.0  # time spent on one measurement's timed forwards, at most (and at least one run)
REPEATS = 5


@dataclass(frozen=True)
class Measured:
    """One measurement: the median and interquartile range of ``runs`` warm forwards (ms), and the GFLOPs of one
    forward as ``torch.utils.flop_counter`` counts them (matmuls and convolutions)."""

    latency_ms: float
    latency_iqr_ms: float
    runs: int
    gflops: float


class LatencyCache:
    """A thread-safe, bounded cache of :class:`Measured` figures per key; the oldest entries go first."""

    def __init__(self, max_entries: int = 256):
        self.max_entries = max_entries
        self._items: OrderedDict[Hashable, Measured] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Measured | None:
        with self._lock:
            return self._items.get(key)

    def measure(self, key: Hashable, forward: Callable[[], object], device: torch.device) -> tuple[Measured, bool]:
        """The cached figures of ``key``, else measured now: one warm-up forward (FLOPs counted), then up to
        :data:`REPEATS` timed forwards within :data:`BUDGET_S`.

        Returns:
            ``(measured, cached)``: ``cached`` is True when no forward ran for this call.
        """
        found = self.get(key)
        if found is not None:
            return found, True
        with FlopCounterMode(display=False) as counter:
            forward()
        _, timing = time_call(forward, device, repeats=REPEATS, warmup=0, budget_s=BUDGET_S)
        measured = Measured(round(timing.median_ms, 3), round(timing.iqr_ms, 3), timing.runs,
                            round(counter.get_total_flops() / 1e9, 3))
        with self._lock:
            self._items[key] = measured
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
        figures.gflops, figures.latency_cached = measured.gflops, cached
    return figures
