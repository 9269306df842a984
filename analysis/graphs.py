"""Replay a whole analysis as one captured CUDA graph.

An analysis of one image is hundreds of small kernels; on a GPU their launch overhead costs more than the
arithmetic. Because the analysis never syncs with the host and its control flow depends only on shapes, it can be
captured once per input shape and replayed with a single launch. Captures are kept in a small LRU cache; a lock
per capture keeps concurrent callers from overwriting each other's static buffers between replay and read-back.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch


class _Captured:
    def __init__(self, fn: Callable[..., object], inputs: list[torch.Tensor]):
        self.inputs = [x.clone() for x in inputs]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up outside the graph: lazy initialisation, cached uploads
            for _ in range(2):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = fn(*self.inputs)
        self.lock = threading.Lock()


class GraphCache:
    """Captured CUDA graphs of a function, one per key (e.g. the input shapes), least recently used dropped.

    A key is captured the second time it is seen: a one-off input size runs eagerly rather than paying for a
    capture it would never replay.
    """

    def __init__(self, max_graphs: int = 8):
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[Hashable, _Captured] = OrderedDict()
        self._seen: OrderedDict[Hashable, None] = OrderedDict()
        self._lock = threading.Lock()

    def run(self, key: Hashable, fn: Callable[..., object], inputs: list[torch.Tensor],
            finish: Callable[[object], object]) -> object:
        """``finish(fn(*inputs))``, with ``fn`` replayed from its graph for ``key`` once the key repeats.

        Args:
            key: identifies the capture; calls with the same key must pass inputs of the same shapes and dtypes,
                and ``fn`` must compute the same thing (everything it closes over belongs in the key).
            fn: CUDA tensors -> tensors (or a tuple holding them); no host syncs, control flow by shapes only.
            inputs: the call's tensors, copied into the capture's static inputs.
            finish: reads the output (e.g. copies it to the host) while the capture is still held.
        """
        with self._lock:
            captured = self._graphs.get(key)
            if captured is None and key not in self._seen:
                self._seen[key] = None
                while len(self._seen) > 16 * self.max_graphs:
                    self._seen.popitem(last=False)
            elif captured is None:
                captured = self._graphs[key] = _Captured(fn, inputs)
                while len(self._graphs) > self.max_graphs:
                    self._graphs.popitem(last=False)
            if captured is not None:
                self._graphs.move_to_end(key)
        if captured is None:
            return finish(fn(*inputs))
        with captured.lock:
            for static, x in zip(captured.inputs, inputs, strict=True):
                static.copy_(x)
            captured.graph.replay()
            return finish(captured.output)
