"""The parallel-in-time engine: problems, MGRIT, parareal, serial or over torch.distributed."""

from torchpint.engine.comm import Comm, DistComm, ReversedComm, SerialComm, default_comm
from torchpint.engine.grid import GridError
from torchpint.engine.mgrit import MGRIT, ConfigError, NonFiniteError, parse_relax, sequential_pass, time_grid
from torchpint.engine.parareal import Parareal
from torchpint.engine.problem import BatchedProblem, Problem, step_batch
from torchpint.engine.result import SolveResult
from torchpint.engine.shm import SharedMemoryComm, make_comm

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
    "SharedMemoryComm",
    "SolveResult",
    "default_comm",
    "make_comm",
    "parse_relax",
    "sequential_pass",
    "step_batch",
    "time_grid",
]
