"""Test support that ships with torchpint but is no part of its methods: fault injection and the
harnesses the tests and the demo use (multi-process checks, torchrun agents).

Library modules know nothing of it: they offer generic hooks (a training loop's
:class:`~torchpint.run.loop.StepHooks`), and the CLIs' hidden ``--inject-fault`` options build a
fault from here and pass it in.
"""

from torchpint.testing.faults import FaultyProblem, TrainingFault, parse_training_fault

__all__ = ["FaultyProblem", "TrainingFault", "parse_training_fault"]
