"""A deterministic batch schedule, drawn up front: which examples every training step sees.

MGRIT evaluates training steps out of order and many times, so step ``i`` must always see the
same batch.  A schedule holds the whole training set once and, per step, the id of a batch
(a row of example indices):

* ``full_batch``: every step uses the whole set (the paper's Solver 1 and naive solver);
* ``serialized``: step ``i`` uses chunk ``i mod K`` of consecutive examples (the paper's
  Solver 2 with chunks of one example);
* ``from_loader``: the batches a seeded ``torch.utils.data.DataLoader`` yields, epoch after
  epoch, exactly as a serial training loop with that loader would see them;
* ``from_batches``: any explicit list of index batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from torchpint.training.errors import TrainingConfigError


@dataclass
class BatchSchedule:
    inputs: Tensor  # (K, ...) every training example
    targets: Tensor  # (K, ...)
    steps: int  # number of training steps N
    batches: Tensor | None = None  # (n_batches, B_max) example indices, padded with 0; None: full batch
    sizes: Tensor | None = None  # (n_batches,) real size of each batch
    order: Tensor | None = None  # (N,) batch id of every step
    offset: int = 0  # serialized schedules: the step from point i uses batch (i + offset) mod K

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 2:
            raise TrainingConfigError(f"training needs at least 2 steps (N >= 2), got N={self.steps}")
        if self.inputs.shape[0] != self.targets.shape[0] or self.inputs.shape[0] == 0:
            raise TrainingConfigError(
                f"inputs and targets must have the same, non-zero number of examples, "
                f"got {self.inputs.shape[0]} and {self.targets.shape[0]}"
            )
        if self.batches is not None:
            assert self.order is not None and self.sizes is not None
            if self.order.numel() != self.steps:
                raise TrainingConfigError(f"the schedule has {self.order.numel()} steps, expected {self.steps}")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def full_batch(cls, inputs: Tensor, targets: Tensor, steps: int) -> BatchSchedule:
        return cls(inputs, targets, steps)

    @classmethod
    def from_batches(cls, inputs: Tensor, targets: Tensor, batches: list[Tensor], steps: int | None = None) -> BatchSchedule:
        """Step ``i`` uses ``batches[i]`` (index tensors into ``inputs``)."""
        if not batches:
            raise TrainingConfigError("the schedule needs at least one batch")
        steps = len(batches) if steps is None else steps
        if steps > len(batches):
            raise TrainingConfigError(f"{len(batches)} batches for {steps} steps")
        batches = [torch.as_tensor(b, dtype=torch.int64).reshape(-1) for b in batches[:steps]]
        sizes = torch.tensor([b.numel() for b in batches])
        if int(sizes.min()) == 0:
            raise TrainingConfigError("empty batch in the schedule")
        table = torch.zeros(len(batches), int(sizes.max()), dtype=torch.int64)
        for k, b in enumerate(batches):
            table[k, : b.numel()] = b
        return cls(inputs, targets, steps, table, sizes, torch.arange(steps))

    @classmethod
    def serialized(cls, inputs: Tensor, targets: Tensor, steps: int, batch_size: int = 1, offset: int = 0) -> BatchSchedule:
        """The step from point ``i`` uses the ``((i + offset) mod K)``-th chunk of ``batch_size`` consecutive examples.

        ``offset=1`` indexes a step by the point it produces (the step to ``w_i`` uses chunk
        ``i mod K``), which is what a step function that sees ``t_stop`` computes.
        """
        n = inputs.shape[0]
        if batch_size < 1:
            raise TrainingConfigError(f"batch size must be >= 1, got {batch_size}")
        chunks = [torch.arange(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]
        sizes = torch.tensor([c.numel() for c in chunks])
        table = torch.zeros(len(chunks), int(sizes.max()), dtype=torch.int64)
        for k, c in enumerate(chunks):
            table[k, : c.numel()] = c
        order = (torch.arange(steps) + offset) % len(chunks)
        return cls(inputs, targets, steps, table, sizes, order, offset)

    @classmethod
    def from_loader(
        cls,
        inputs: Tensor,
        targets: Tensor,
        steps: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> BatchSchedule:
        """The index batches of ``DataLoader(range(K), batch_size, shuffle, generator=seed)``, epoch after epoch."""
        n = inputs.shape[0]
        if batch_size < 1:
            raise TrainingConfigError(f"batch size must be >= 1, got {batch_size}")
        if drop_last and batch_size > n:
            raise TrainingConfigError(f"batch size {batch_size} > {n} examples with drop_last")
        generator = torch.Generator().manual_seed(seed)
        # A range is a perfectly good map-style data set for index batches.
        loader: DataLoader[int] = DataLoader(
            range(n), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, generator=generator  # type: ignore[arg-type]
        )
        batches: list[Tensor] = []
        while len(batches) < steps:
            for idx in loader:
                batches.append(torch.as_tensor(idx, dtype=torch.int64))
                if len(batches) == steps:
                    break
        return cls.from_batches(inputs, targets, batches, steps)

    # ------------------------------------------------------------------ access
    @property
    def is_full_batch(self) -> bool:
        return self.batches is None

    @property
    def num_batches(self) -> int:
        return 1 if self.batches is None else int(self.batches.shape[0])

    @property
    def max_batch(self) -> int:
        return int(self.inputs.shape[0]) if self.batches is None else int(self.batches.shape[1])

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """The examples of fine step ``step`` (for serial training loops)."""
        if self.batches is None:
            return self.inputs, self.targets
        assert self.order is not None and self.sizes is not None
        b = int(self.order[step])
        idx = self.batches[b, : int(self.sizes[b])]
        return self.inputs[idx], self.targets[idx]

    def to(self, dtype: torch.dtype) -> BatchSchedule:
        """The schedule with floating inputs (and floating targets) cast to ``dtype``."""
        x = self.inputs.to(dtype) if self.inputs.is_floating_point() else self.inputs
        y = self.targets.to(dtype) if self.targets.is_floating_point() else self.targets
        return BatchSchedule(x, y, self.steps, self.batches, self.sizes, self.order, self.offset)
