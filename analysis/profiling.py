"""Parameters, FLOPs and latency of a model's forward pass, measured the same way for teacher and student."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
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
    while len(times) < repeats and (not times or sum(times) < budget_s * 1000):  # times in ms
        with Stopwatch(device) as watch:
            result = fn()
        times.append(watch.seconds * 1000)
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return result, Timing(statistics.median(times), quartiles[2] - quartiles[0], len(times))


_SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive",
             "equal", "is_nonzero", "allclose"}


class DispatchCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside ``with DispatchCounter() as counter:`` and the host syncs among them.

    A host sync is an op whose result the host must wait for on an asynchronous device: reading a scalar
    (``aten._local_scalar_dense``: ``.item()``, ``float(t)``, ``bool(t)``), an op with a data-dependent output
    shape (``nonzero``, boolean-mask indexing, ``unique``), a copy from another device to the CPU, or a blocking copy
    from the CPU to another device (PyTorch waits for the stream after a pageable upload). The same
    code is counted the same way on every device, so a CPU run predicts the syncs of a CUDA run. (On the CPU a
    ``.cpu()`` of a CPU tensor is no op at all, so a CPU run can only miss read-backs, never invent them.)

    Attributes:
        ops: aten ops dispatched.
        syncs: host syncs among them; ``sync_ops`` names them with their counts.
    """

    def __init__(self):
        super().__init__()
        self.ops, self.syncs, self.sync_ops = 0, 0, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        name = func.overloadpacket.__name__
        if name in _SYNC_OPS or self._bool_index(name, args) or self._to_host(args, kwargs, out):
            self.syncs += 1
            self.sync_ops[name] = self.sync_ops.get(name, 0) + 1
        return out

    @staticmethod
    def _bool_index(name: str, args: tuple) -> bool:
        if name not in ("index", "index_put", "index_put_") or len(args) < 2:
            return False
        return any(torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8) for i in args[1] if i is not None)

    @staticmethod
    def _to_host(args: tuple, kwargs: dict, out: object) -> bool:
        inputs = [t for t in tree_flatten((args, kwargs))[0] if torch.is_tensor(t)]
        outputs = [t for t in tree_flatten(out)[0] if torch.is_tensor(t)]
        to_host = (any(t.device.type not in ("cpu", "meta") for t in inputs)
                   and any(t.device.type == "cpu" for t in outputs))
        blocking_upload = (not kwargs.get("non_blocking", False)
                           and any(t.device.type == "cpu" and t.dim() for t in inputs)
                           and any(t.device.type not in ("cpu", "meta") for t in outputs))
        return to_host or blocking_upload
