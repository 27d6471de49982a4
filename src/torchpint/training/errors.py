"""Errors of MGRIT training; each message says what went wrong and where."""

from __future__ import annotations

from torchpint.errors import ConfigError, NonFiniteError


class TrainingConfigError(ConfigError):
    """Options that cannot work (a learning rate <= 0, fewer than 2 steps, ...)."""


class MemoryLimitError(ConfigError):
    """The trajectory would not fit in the memory allowed (``--max-memory``); nothing was allocated."""


class DivergenceError(NonFiniteError):
    """The MGRIT residual grew for several iterations in a row; the iteration was stopped."""

    def __init__(self, message: str, residuals: list[float]) -> None:
        super().__init__(message)
        self.residuals = list(residuals)


class NonFiniteWeightsError(NonFiniteError):
    """A training step produced NaN or Inf weights; the message names the step."""

    def __init__(self, message: str, step: int, level: int) -> None:
        super().__init__(message)
        self.step = step
        self.level = level
