"""Argument checks shared by every constructor: each failure is a ``ValueError`` that names the
argument and the value it got (DESIGN.md: validate at construction, name the argument)."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

__all__ = ["check_choice", "check_int", "check_number"]


def check_choice(name: str, value: Any, choices: Collection[Any]) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    """``value`` must be an int (not a bool) >= ``minimum``, or None when ``allow_none``."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_number(
    name: str,
    value: Any,
    *,
    above: float | None = None,
    below: float | None = None,
) -> float:
    """``value`` must be a finite real number (not a bool), strictly inside (above, below) where
    those are given; returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if above is not None and not value > above:
        raise ValueError(f"{name} must be a number > {above:g}, got {value!r}")
    if below is not None and not value < below:
        raise ValueError(f"{name} must be a number < {below:g}, got {value!r}")
    return float(value)
