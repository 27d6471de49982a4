"""torchpint: parallel-in-time methods (parareal, MGRIT) for PyTorch."""

from torchpint.engine import MGRIT, Parareal, SolveResult, time_grid

__all__ = ["MGRIT", "Parareal", "SolveResult", "time_grid"]
__version__ = "0.1.0"
