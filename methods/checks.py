"""Argument checks of the methods' public functions: scripts call them directly, so each refuses a value outside
its domain with a message naming the argument and the range (a ``ValueError``; the app checks before calling)."""

from __future__ import annotations

import math
import numbers


def in_range(value, name: str, low: float, high: float, *, integer: bool = False, open_low: bool = False):
    """``value`` if it is a (whole, with ``integer``) finite number in ``[low, high]`` (``(low, high]`` with
    ``open_low``); else ``ValueError`` naming ``name``."""
    kind = "a whole number" if integer else "a number"
    bounds = f"{'(' if open_low else '['}{low:g}, {high:g}]"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok and integer:
        ok = float(value) == int(value)
    if ok:
        ok = (low < value if open_low else low <= value) and value <= high
    if not ok:
        raise ValueError(f"{name} must be {kind} in {bounds}, got {value!r}")
    return int(value) if integer else value
