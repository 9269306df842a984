"""Parameters, FLOPs and latency of a model's forward pass, measured the same way for teacher and student."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

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


def time_call(fn: Callable[[], object], device: torch.device | None = None, repeats: int = 5, warmup: int = 1,
              budget_s: float = 1.0) -> tuple[object, float]:
    """Run ``fn`` and return its last result and the median latency in milliseconds.

    Args:
        fn: the call to time (e.g. a model's forward on prepared inputs).
        device: the device to synchronise before reading the clock (CUDA runs asynchronously).
        repeats: timed calls at most; fewer when they would exceed ``budget_s``.
        warmup: untimed calls first.
        budget_s: stop repeating once this much time has been spent timing.
    """
    result = None
    for _ in range(warmup):
        result = fn()
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats and (not times or spent < budget_s):
        _synchronise(device)
        start = time.perf_counter()
        result = fn()
        _synchronise(device)
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return result, statistics.median(times) * 1000
