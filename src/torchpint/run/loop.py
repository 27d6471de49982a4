"""The one training loop: epochs, progress bars, summary lines, checkpoints, resume, the non-finite stop.

A command supplies an :class:`EpochTrainer` (what one epoch of *its* training is) and calls
:func:`train_epochs` on every process that drives training; the loop does the rest the same way
for every command:

* resume: with ``resume``, every rank loads the same newest complete checkpoint
  (:meth:`Checkpoints.agree`), the configuration is checked (:func:`check_config`: other
  settings are refused by name), each rank restores its part and its RNG states, and the history
  continues; damaged checkpoints passed over are named on rank 0;
* per epoch: a tqdm bar on the lead process (``progress=False`` drops only the bar), then
  :meth:`EpochTrainer.evaluate`, one summary line (always printed by the lead), and a checkpoint:
  each writing process its part, ``barrier``, the lead commits;
* a :class:`~torchpint.errors.NonFiniteError` from the trainer (use :func:`check_finite`) stops the
  run; the message says which checkpoint is kept (``--resume`` continues from it); the CLIs exit 1.

The records the loop keeps per epoch: ``epoch`` (1-based), what ``train_epoch`` returned
(at least ``train_loss``; accuracy as a fraction under ``train_accuracy``), what ``evaluate``
returned (``test_loss``, ``test_accuracy``), ``seconds`` (training time of the epoch) and
``eval_seconds``.  See :mod:`torchpint.run.report` for the meaning of ``seconds``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from torchpint.errors import NonFiniteError
from torchpint.run.checkpoint import CheckpointError, Checkpoints, Found, check_config, set_rng_state
from torchpint.run.report import epoch_line

__all__ = ["EpochTrainer", "LoopResult", "NonFiniteLossError", "StepHooks", "check_finite", "restore_state", "train_epochs"]


_AGREE = object()  # train_epochs(resume_from=...) not given: agree on the checkpoint here


class NonFiniteLossError(NonFiniteError):
    """The loss became NaN or infinite; training stopped and the last checkpoint was kept."""


def check_finite(value: float, *, label: str, epoch: int, step: int, lr: float | None = None) -> None:
    """Raise :class:`NonFiniteLossError` if ``value`` (a loss; ``epoch``/``step`` 0-based) is NaN or Inf."""
    if not math.isfinite(value):
        at = f" (lr {lr:.4g})" if lr is not None else ""
        raise NonFiniteLossError(f"{label}: the loss became {value} at epoch {epoch + 1}, step {step + 1}{at}; "
                                 f"training stopped")


class StepHooks(Protocol):
    """Hooks a trainer calls at each step (fault injection in tests, see :mod:`torchpint.testing`)."""

    def on_loss(self, loss: Any, epoch: int, step: int) -> Any:
        """The loss of step ``step`` of ``epoch`` (0-based), possibly replaced."""
        ...

    def on_step(self, rank: int, epoch: int, step: int) -> None:
        """Rank ``rank`` begins step ``step`` of ``epoch`` (0-based)."""
        ...


class EpochTrainer(Protocol):
    """One command's training, as the loop drives it (every method runs on every loop process)."""

    def steps_per_epoch(self) -> int:
        """Steps of one epoch (the progress bar's length)."""
        ...

    def train_epoch(self, epoch: int, advance: Callable[..., None]) -> dict[str, float]:
        """Train epoch ``epoch`` (0-based); call ``advance(loss=..., ...)`` after each step (the
        keywords are shown on the bar).  Returns at least ``train_loss``.  Raise
        :class:`NonFiniteLossError` (:func:`check_finite`) on a NaN/Inf loss."""
        ...

    def evaluate(self) -> dict[str, float]:
        """``test_loss`` and ``test_accuracy`` (a fraction) after an epoch; ``{}`` where none."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """This process's checkpoint part: tensors and plain types only (loaded with weights_only)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (from the checkpoint being resumed)."""
        ...


@dataclass
class LoopResult:
    """What :func:`train_epochs` returns on every loop process."""

    history: list[dict[str, Any]]
    start_epoch: int  # epochs already done when this run began (0: fresh)
    seconds: float  # wall-clock of this run's epochs, evaluations and checkpoints
    notes: list[str] = field(default_factory=list)  # damaged checkpoints passed over on resume


def train_epochs(
    trainer: EpochTrainer,
    *,
    epochs: int,
    checkpoints: Checkpoints,
    config: Mapping[str, Any],
    label: str,
    resume: bool = False,
    resume_keys: list[str] | tuple[str, ...] | None = None,
    part: int | None = 0,
    parts: int = 1,
    lead: bool = True,
    barrier: Callable[[], None] | None = None,
    group: Any = None,
    progress: bool = True,
    print_fn: Callable[[str], None] | None = None,
    resume_from: Any = _AGREE,
) -> LoopResult:
    """Train ``trainer`` for ``epochs`` epochs (continuing a checkpointed run with ``resume``).

    ``config``: the run's configuration (plain types), saved with every checkpoint;
    ``resume_keys``: the settings that must match to resume (default: all of ``config``).
    ``part``: this process's checkpoint part (``None``: it writes none, e.g. a data-parallel copy);
    ``parts``: how many parts a checkpoint has.  ``lead``: this process prints, and commits
    checkpoints (exactly one lead, rank 0).  ``barrier``: called around the commit so that
    every part is on disk before it (``None`` when the trainer's own protocol already orders the
    writes, as paranet's hub does).  ``group``: the process group of the processes that call
    this (for agreeing on the checkpoint to resume; ``None``: the default group).
    ``resume_from``: a checkpoint the caller already agreed on with :meth:`Checkpoints.agree`
    (or ``None``: none), for runs whose other processes do not run this loop but must take
    part in the agreement (paranet's workers).  A trainer with ``merges_parts = True`` gets
    every part's state merged (so a checkpoint resumes under another process layout).
    """
    from tqdm import tqdm  # type: ignore[import-untyped]

    say = print_fn or (lambda line: print(line, flush=True))

    history: list[dict[str, Any]] = []
    start_epoch = 0
    notes: list[str] = []
    if resume:
        found = checkpoints.agree(group) if resume_from is _AGREE else resume_from
        if found is not None:
            assert isinstance(found, Found)
            check_config(found.config, config, resume_keys, checkpoints.root.parent)
            notes = found.notes
            state, rng = restore_state(checkpoints, found, part if part is not None else 0,
                                       merge=bool(getattr(trainer, "merges_parts", False)))
            trainer.load_state_dict(state)
            if rng is not None:
                set_rng_state(rng)
            history = list(found.extra.get("history", []))
            start_epoch = found.index
            if lead:
                for note in notes:
                    say(f"[{label}] note: {note}; passed over")
                say(f"[{label}] resumed from {found.folder} (epoch {start_epoch} of {epochs})")
        elif lead:
            say(f"[{label}] --resume: no checkpoint in {checkpoints.root} yet, starting from the beginning")
    begin = time.perf_counter()
    steps = trainer.steps_per_epoch()
    for epoch in range(start_epoch, epochs):
        bar = tqdm(total=steps, desc=f"{label} epoch {epoch + 1}/{epochs}", disable=not (progress and lead),
                   leave=False, dynamic_ncols=True, mininterval=0.5)

        def advance(_bar: Any = bar, **shown: Any) -> None:
            _bar.update(1)
            if shown:
                _bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in shown.items()}, refresh=False)

        start = time.perf_counter()
        try:
            record: dict[str, Any] = {"epoch": epoch + 1, **trainer.train_epoch(epoch, advance)}
        except NonFiniteError as error:
            bar.close()
            raise type(error)(f"{error}; {_kept(checkpoints)}") from None
        record["seconds"] = time.perf_counter() - start
        bar.close()
        eval_start = time.perf_counter()
        record.update(trainer.evaluate())
        record["eval_seconds"] = time.perf_counter() - eval_start
        history.append(record)
        if lead:
            say(epoch_line(label, record, epochs))
        if part is not None:
            checkpoints.write_part(epoch + 1, part, parts, trainer.state_dict())
        if barrier is not None:
            barrier()
        if lead:
            checkpoints.commit(epoch + 1, parts, config=config, extra={"history": history})
        if barrier is not None:
            barrier()
    return LoopResult(history, start_epoch, time.perf_counter() - begin, notes)


def restore_state(checkpoints: Checkpoints, found: Found, part: int, *, merge: bool = False
                  ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(state, RNG states) of process ``part`` from ``found``; ``merge``: every part's state, merged.

    Merging is one level deep (a part's state of dicts, e.g. ``{"weights": {...}, "momentum": {...}}``,
    merges dict by dict), for states keyed by global names.  The RNG states are ``part``'s own
    (``None`` when the checkpoint has no such part).
    """
    own = checkpoints.load_part(found, part) if part < found.parts else None
    rng = own.get("rng") if own is not None else None
    if not merge:
        if own is None:
            raise CheckpointError(f"{found.folder} has {found.parts} part(s); process {part} has none to resume from")
        return dict(own["state"]), rng
    merged: dict[str, Any] = {}
    for p in range(found.parts):
        for key, value in checkpoints.load_part(found, p)["state"].items():
            if isinstance(value, dict):
                merged.setdefault(key, {}).update(value)
            else:
                merged.setdefault(key, value)
    return merged, rng


def _kept(checkpoints: Checkpoints) -> str:
    pointer = checkpoints.root / "latest"
    if pointer.is_file():
        return f"the last checkpoint ({checkpoints.root / pointer.read_text().strip()}) is kept; --resume continues from it"
    return "no checkpoint had been written yet"
