"""One checking path for the numbers a caller gives (sliders, API arguments, script arguments): each is read once,
with a message that names the field and its allowed range; the app's components pass values through untouched so
that these messages, not a generic one, reach the caller."""

from __future__ import annotations

import math
import numbers

from compare.inputs import InputError


def number(value, name: str, low: float, high: float, *, integer: bool = False) -> float | int:
    """``value`` as a float (or, with ``integer``, an int) in ``[low, high]``.

    Accepts ints, floats and numeric strings (``"0.5"``); a float with no fraction counts as whole.

    Raises:
        InputError: missing (None), not a number, NaN or infinite, outside the range, or not whole when ``integer``
            is asked; the message names ``name`` and the range.
    """
    kind = "a whole number" if integer else "a number"
    where = f"{kind} in [{_show(low)}, {_show(high)}]"
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{name} is missing: give {where}.")
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise InputError(f"{name} must be {where}, got {_shown(value)}.")
    try:
        read = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{name} must be {where}, got {_shown(value)}.") from None
    if not math.isfinite(read):
        raise InputError(f"{name} must be {where}, got {_shown(value)}.")
    if integer and read != int(read):
        raise InputError(f"{name} must be {where}, got {_shown(value)}.")
    if not low <= read <= high:
        raise InputError(f"{name} must lie in [{_show(low)}, {_show(high)}], got {_show(read)}.")
    return int(read) if integer else read


def _show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "…"
