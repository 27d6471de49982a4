"""The parallel-in-time engine: problems, MGRIT, parareal, serial or over torch.distributed."""

from torchpint.engine.comm import Comm, DistComm, ReversedComm, SerialComm, default_comm
from torchpint.engine.grid import GridError
from torchpint.engine.mgrit import MGRIT, ConfigError, NonFiniteError, parse_relax, sequential_pass, time_grid
from torchpint.engine.parareal import Parareal
from torchpint.engine.problem import BatchedProblem, Problem, step_batch
from torchpint.engine.result import SolveResult

__all__ = [
    "MGRIT",
    "BatchedProblem",
    "Comm",
    "ConfigError",
    "DistComm",
    "GridError",
    "NonFiniteError",
    "Parareal",
    "Problem",
    "ReversedComm",
    "SerialComm",
    "SolveResult",
    "default_comm",
    "parse_relax",
    "sequential_pass",
    "step_batch",
    "time_grid",
]
