"""Training parallel across training steps: MGRIT over the weight trajectory.

Treat training as an evolution ``w_{i+1} = Phi_i(w_i)`` (one deterministic update per step)
and solve the whole trajectory with FAS-MGRIT, parallel over the steps; the answer equals the
weights serial training produces, to the tolerance (J. B. Schroder, "Parallelizing over
artificial neural network training runs with multigrid", arXiv 1708.02276).

    task = TrainingTask(model, loss_fn, BatchSchedule.from_loader(x, y, steps, 64, seed=0), SGD(lr=0.05))
    result = train_mgrit(task, MGRITOptions(cycle="V", lr_max=0.4))   # this process, or comm=...
    serial = serial_train(task)            # or torch_optim_train(task): plain torch.optim
    max_difference(result.weights, serial.weights)   # ~ the tolerance

On several processes call ``train_mgrit(task, options, comm=DistComm())`` on every rank of a
``torch.distributed`` group (e.g. ``torchpint.run.launch(fn, nproc=4)`` or torchrun); it never
starts processes itself.  ``checkpoint_every`` / ``on_checkpoint`` / ``resume`` make a long solve
resumable (:class:`SolveSnapshot`, what ``mgrit-train --out`` writes and ``--resume`` reads).
"""

from torchpint.training.errors import DivergenceError, MemoryLimitError, NonFiniteWeightsError, TrainingConfigError
from torchpint.training.memory import MemoryEstimate, parse_memory
from torchpint.training.optim import SGD, Adam, UpdateRule, from_torch
from torchpint.training.problem import LevelProblem, Monitor, TrainingTask, level_learning_rate
from torchpint.training.schedule import BatchSchedule
from torchpint.training.serial import SerialResult, serial_train, torch_optim_train
from torchpint.training.solver import (
    CYCLES,
    ConvergenceCallback,
    MGRITOptions,
    SolveSnapshot,
    TrainingResult,
    max_difference,
    memory_estimate,
    plan_levels,
    relative_difference,
    train_mgrit,
)
from torchpint.training.speedup import (
    StepCost,
    calibrate,
    count_levels,
    potential_speedup,
    predict_seconds,
    sequential_cost,
)
from torchpint.training.tasks import TaskSpec, build_task

__all__ = [
    "CYCLES",
    "ConvergenceCallback",
    "SGD",
    "Adam",
    "BatchSchedule",
    "DivergenceError",
    "LevelProblem",
    "MGRITOptions",
    "MemoryEstimate",
    "MemoryLimitError",
    "Monitor",
    "NonFiniteWeightsError",
    "SerialResult",
    "SolveSnapshot",
    "StepCost",
    "TaskSpec",
    "TrainingConfigError",
    "TrainingResult",
    "TrainingTask",
    "UpdateRule",
    "build_task",
    "calibrate",
    "count_levels",
    "from_torch",
    "level_learning_rate",
    "max_difference",
    "memory_estimate",
    "relative_difference",
    "parse_memory",
    "plan_levels",
    "potential_speedup",
    "predict_seconds",
    "sequential_cost",
    "serial_train",
    "torch_optim_train",
    "train_mgrit",
]
