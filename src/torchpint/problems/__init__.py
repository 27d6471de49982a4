"""Problems shipped with torchpint (each implements ``step`` and a batched ``step_batch``)."""

from torchpint.problems.brusselator import Brusselator
from torchpint.problems.dahlquist import Dahlquist
from torchpint.problems.heat1d import Heat1D, default_rhs

__all__ = ["Brusselator", "Dahlquist", "Heat1D", "default_rhs"]
