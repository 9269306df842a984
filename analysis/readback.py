"""One transfer to the host for everything an analysis computed on the device.

Each ``.cpu()`` on CUDA waits for the device; reading back ten tensors costs ten waits. :func:`pack` writes any
number of tensors into one byte buffer on the device, :func:`unpack` splits the host copy into numpy arrays, and
:func:`read_back` does both around a single transfer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Layout:
    """Where each tensor sits in a packed buffer: (name, dtype, shape, bytes, was bool), in order."""

    entries: tuple[tuple[str, torch.dtype, tuple[int, ...], int, bool], ...]


def pack(tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Layout]:
    """One uint8 buffer on the tensors' device holding every tensor's bytes (half and bfloat16 as float32, bool as
    uint8), and the :class:`Layout` to split it again. No host sync."""
    flats, entries = [], []
    for name, tensor in tensors.items():
        tensor, was_bool = tensor.detach(), tensor.dtype == torch.bool
        if was_bool:
            tensor = tensor.to(torch.uint8)
        elif tensor.is_floating_point() and tensor.dtype != torch.float64:
            tensor = tensor.float()  # numpy has no bfloat16
        flat = tensor.contiguous().reshape(-1).view(torch.uint8)
        flats.append(flat)
        entries.append((name, tensor.dtype, tuple(tensor.shape), flat.numel(), was_bool))
    return torch.cat(flats), Layout(tuple(entries))


def unpack(buffer: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    """Split a host copy of a packed buffer into numpy arrays of the original shapes."""
    out, offset = {}, 0
    for name, dtype, shape, size, was_bool in layout.entries:
        numpy_dtype = torch.empty((), dtype=dtype).numpy().dtype
        array = buffer[offset: offset + size].view(numpy_dtype).reshape(shape).copy()
        out[name] = array.astype(bool) if was_bool else array
        offset += size
    return out


def read_back(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Numpy copies of ``tensors`` (all on one device), made with a single device-to-host transfer.

    Args:
        tensors: name -> tensor of any shape and dtype (bool, integer or float).

    Returns:
        name -> numpy array of the same shape (float16 and bfloat16 as float32).
    """
    buffer, layout = pack(tensors)
    return unpack(buffer.cpu().numpy(), layout)
