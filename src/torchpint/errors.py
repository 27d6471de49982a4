"""The exceptions torchpint raises on purpose.

Every deliberate failure is a :class:`TorchPintError`, so a caller (and each CLI) can tell
"torchpint refused or stopped, and says why" from a bug.  Two kinds matter to the CLIs:

* :class:`ConfigError` (also a ``ValueError``): the input cannot work; nothing ran, or the run
  refused to continue. CLIs print one line and exit with code 2.
* :class:`NonFiniteError` (also an ``ArithmeticError``): the computation produced NaN or Inf
  (or diverged); the run stopped and says where. CLIs print one line and exit with code 1.

Each package subclasses these for its own cases (``GridError``, ``TrainingConfigError``,
``NonFiniteActivationError``, ...); ``WorkerError`` (a worker process failed or died) is a
plain :class:`TorchPintError`.
"""

from __future__ import annotations

__all__ = ["ConfigError", "NonFiniteError", "TorchPintError"]


class TorchPintError(Exception):
    """Base class of every error torchpint raises on purpose."""


class ConfigError(TorchPintError, ValueError):
    """Options or input that cannot work; the message says which and why."""


class NonFiniteError(TorchPintError, ArithmeticError):
    """NaN or Inf (or divergence) stopped the computation; the message says where."""
