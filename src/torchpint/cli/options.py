"""Checks of numeric command-line options: one clear line (a ConfigError, exit 2) per bad value."""

from __future__ import annotations

import math

from torchpint.errors import ConfigError

__all__ = ["at_least", "in_range", "positive"]


def at_least(option: str, value: float, minimum: float, why: str = "") -> None:
    """``value >= minimum`` (and finite), else ``"--option must be >= minimum (why), got value"``."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= minimum):
        raise ConfigError(f"{option} must be >= {minimum}{f' ({why})' if why else ''}, got {value}")


def positive(option: str, value: float) -> None:
    """``value > 0`` and finite."""
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{option} must be > 0, got {value}")


def in_range(option: str, value: float, low: float, high: float, *, high_open: bool = False) -> None:
    """``low <= value <= high`` (``< high`` with ``high_open``)."""
    ok = math.isfinite(value) and low <= value and (value < high if high_open else value <= high)
    if not ok:
        raise ConfigError(f"{option} must be in [{low}, {high}{')' if high_open else ']'}, got {value}")
