"""Parameters, FLOPs and latency of a model's forward pass, measured the same way for teacher and student."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode


class PeakMemory:
    """Peak memory of the code inside ``with PeakMemory(device) as peak:``, in MiB (``peak.mb``).

    CUDA: the peak of tensors allocated on the device. CPU (Linux): the process's peak resident set size, reset
    on entry through ``/proc/self/clear_refs``; None where neither is available.
    """

    def __init__(self, device: torch.device):
        self.device, self.mb = device, None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mb = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
            return
        try:
            with open("/proc/self/status") as f:
                peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
            self.mb = round(peak_kb / 1024, 1)
        except (OSError, StopIteration):
            self.mb = None


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gflops(fn: Callable[[], object]) -> float:
    """GFLOPs of one call of ``fn`` as ``torch.utils.flop_counter`` counts them (matmuls and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def _synchronise(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Latency of repeated calls: the median and the interquartile range of the timed runs, in milliseconds."""

    median_ms: float
    iqr_ms: float
    runs: int

    def as_dict(self) -> dict:
        return {"latency_ms": round(self.median_ms, 3), "latency_iqr_ms": round(self.iqr_ms, 3), "runs": self.runs}


class Stopwatch:
    """Wall-clock time of the code inside ``with Stopwatch(device) as watch:`` (``watch.seconds``), with the
    device synchronised on entry and exit so that queued CUDA work is counted where it was issued."""

    def __init__(self, device: torch.device | None = None):
        self.device, self.seconds = device, None

    def __enter__(self) -> Stopwatch:
        _synchronise(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        _synchronise(self.device)
        self.seconds = time.perf_counter() - self._start


def time_call(fn: Callable[[], object], device: torch.device | None = None, repeats: int = 5, warmup: int = 1,
              budget_s: float = 1.0) -> tuple[object, Timing]:
    """The one timer of Distill Lens: tabs, benchmarks and recipes all time calls through it.

    Args:
        fn: the call to time (e.g. a model's forward on prepared inputs).
        device: the device to synchronise around each timed call (CUDA runs asynchronously).
        repeats: timed calls at most; fewer when they would exceed ``budget_s`` (at least one).
        warmup: untimed calls first (first-call allocations, cuDNN autotuning, lazy initialisation).
        budget_s: stop repeating once this much time has been spent timing, so a slow model on a CPU still
            answers promptly.

    Returns:
        ``(result, timing)``: the last call's result and a :class:`Timing` of the timed calls.
    """
    result = None
    for _ in range(warmup):
        result = fn()
    times: list[float] = []
    while len(times) < repeats and (not times or sum(times) < budget_s):
        with Stopwatch(device) as watch:
            result = fn()
        times.append(watch.seconds * 1000)
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return result, Timing(statistics.median(times), quartiles[2] - quartiles[0], len(times))
