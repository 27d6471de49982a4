"""What ``torchpint mgrit-train`` runs on every rank: MGRIT over the training steps, then (rank 0)
serial training from the same weights, the comparison, the trained network's loss and accuracy,
and the speedup models; or a whole paper table.

Every function here takes the ranks' ``comm`` and starts no process; the command (or a test)
starts them.  Rank 0 returns the results and prints the progress; the other ranks return None.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import Tensor

from torchpint.engine.comm import Comm, default_comm
from torchpint.run import Checkpoints, check_config, write_json
from torchpint.run.checkpoint import save_atomic
from torchpint.training.memory import check_limit
from torchpint.training.paper import PAPER_TABLES
from torchpint.training.problem import level_learning_rate
from torchpint.training.serial import serial_train, torch_optim_train
from torchpint.training.solver import (
    SolveSnapshot,
    max_difference,
    memory_estimate,
    plan_levels,
    relative_difference,
    train_mgrit,
)
from torchpint.training.speedup import calibrate, level_steps, potential_speedup, predict_seconds
from torchpint.training.tasks import TaskSpec, build_task, evaluate

Say = Callable[..., None]

# Everything in a TaskSpec but these determines the solve: a resumed solve must use the same
# (verbose only prints; max_iter may grow; max_memory only guards).
NOT_RESUME_KEYS = ("verbose", "max_iter", "max_memory")


class SolveCheckpoints:
    """mgrit-train's checkpoints in ``<run>/checkpoints``: checkpoint ``iter_<k>`` holds, as part
    ``r``, rank ``r``'s :class:`SolveSnapshot` after MGRIT iteration ``k`` (torchpint's one
    checkpoint format, :class:`torchpint.run.Checkpoints`).  Collective: every rank calls
    :meth:`save` and :meth:`load`."""

    def __init__(self, run_dir: str | Path, spec: TaskSpec, comm: Comm) -> None:
        self.store = Checkpoints(Path(run_dir) / "checkpoints", label="iter")
        self.comm = comm
        self.config = {**asdict(spec), "world_size": comm.size}
        self.keys = [k for k in self.config if k not in NOT_RESUME_KEYS]
        self.distributed = comm.size > 1 and dist.is_available() and dist.is_initialized()

    def save(self, snapshot: SolveSnapshot) -> None:
        state = {"iteration": snapshot.iteration, "residuals": list(snapshot.residuals),
                 "initial_residual": snapshot.initial_residual, "lo": snapshot.lo, "hi": snapshot.hi,
                 "block": snapshot.block}
        self.store.save(snapshot.iteration, state, config=self.config, rank=self.comm.rank, parts=self.comm.size,
                        barrier=dist.barrier if self.distributed else None)

    def load(self, say: Say) -> SolveSnapshot | None:
        """This rank's snapshot of the newest complete checkpoint (``None``: none written yet)."""
        found = self.store.agree()
        if found is None:
            say(f"--resume: no checkpoint in {self.store.root} yet, solving from the start")
            return None
        check_config(found.config, self.config, self.keys, self.store.root.parent)
        for note in found.notes:
            say(f"note: {note}; passed over")
        part = self.store.load_part(found, self.comm.rank)["state"]
        return SolveSnapshot(int(part["iteration"]), [float(r) for r in part["residuals"]],
                             float(part["initial_residual"]), int(part["lo"]), int(part["hi"]), part["block"])


def _say(comm: Comm, quiet: bool) -> Say:
    if quiet or comm.rank != 0:
        return lambda *a: None
    return lambda *a: print(*a, flush=True)


def solve_case(
    spec: TaskSpec,
    comm: Comm | None = None,
    *,
    predict: bool = True,
    quiet: bool = False,
    run_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
) -> dict[str, Any] | None:
    """MGRIT on every rank of ``comm``; on rank 0 also serial training, the comparison and the models.

    With ``run_dir``: a checkpoint every ``checkpoint_every`` iterations (:class:`SolveCheckpoints`),
    and with ``resume`` the solve continues from the newest complete one.
    """
    comm = comm if comm is not None else default_comm()
    task, options = build_task(spec)
    say = _say(comm, quiet)
    checkpoints = SolveCheckpoints(run_dir, spec, comm) if run_dir is not None else None
    snapshot = checkpoints.load(say) if checkpoints is not None and resume else None
    nproc = comm.size
    mem = memory_estimate(task, options, nproc)
    check_limit(mem, options.max_memory)
    levels = plan_levels(task.steps, options)
    lrs = [level_learning_rate(task.update.lr, lvl, options.growth, options.lr_max) for lvl in range(levels)]
    say(f"torchpint mgrit-train {spec.task}: N={task.steps} steps, solver {spec.solver}, {options.cycle} "
        f"({levels} levels, steps per level {level_steps(task.steps, levels, options.m)}), alpha_l = "
        f"{[round(a, 6) for a in lrs]}, {task.update.name}, FCF, m={options.m}, coarse data '{options.coarse_data}', "
        f"tol={1e-9 * math.sqrt(task.steps) if options.tol is None else options.tol:.3g}, nproc={nproc}")
    say(f"memory: {mem.describe()}")
    if snapshot is not None:
        say(f"resumed from {checkpoints.store.root} after MGRIT iteration {snapshot.iteration} "
            f"(residual {snapshot.residuals[-1]:.4e})")
    options.verbose = not quiet
    result = train_mgrit(task, replace(options), comm=comm, resume=snapshot,
                         checkpoint_every=checkpoint_every if checkpoints is not None else 0,
                         on_checkpoint=checkpoints.save if checkpoints is not None else None)
    if comm.rank != 0:
        return None

    serial = serial_train(task, keep="all" if options.store == "all" else "last")
    optim = torch_optim_train(task, keep="last")
    final_diff = max_difference(result.weights, serial.weights)
    if serial.trajectory is not None and result.trajectory is not None:
        traj_diff = max_difference(task.update.weights(result.trajectory), task.update.weights(serial.trajectory))
    else:
        traj_diff = final_diff
    mgrit_eval, serial_eval = evaluate(spec, task, result.weights), evaluate(spec, task, serial.weights)
    out: dict[str, Any] = {
        "task": spec.task,
        "spec": asdict(spec),
        "world_size": nproc,
        "nproc": nproc,
        **result.summary(),
        **mgrit_eval,
        "final_loss_serial": serial_eval["final_loss"],
        "test_accuracy_serial": serial_eval["test_accuracy"],
        "max_weight_diff_vs_serial": traj_diff,
        "final_weight_diff_vs_serial": final_diff,
        "final_weight_rel_diff_vs_serial": relative_difference(result.weights, serial.weights),
        "final_weight_diff_vs_torch_optim": max_difference(result.weights, optim.weights),
        "serial_seconds": serial.seconds,
        "torch_optim_seconds": optim.seconds,
        "num_weights": task.num_weights,
        "resumed_from_iteration": snapshot.iteration if snapshot is not None else None,
    }
    out["seconds_ratio_serial_over_mgrit"] = optim.seconds / result.seconds if result.seconds > 0 else math.nan
    if predict:
        largest = max((max(v) for v in result.calls.values() if v), default=1)
        cost = calibrate(task, largest, repeats=2, chunk=None)
        out["predicted_seconds"] = predict_seconds(result.calls, cost, 1)
        out["predicted_serial_seconds"] = task.steps * cost.single
        out["step_cost"] = cost.as_dict()
    for line in describe(out):
        say(line)
    if run_dir is not None:
        out["files"] = write_outputs(out, task, result.weights, Path(run_dir))
    return out


def write_outputs(out: dict[str, Any], task: Any, weights: Tensor, run_dir: Path) -> dict[str, str]:
    """``metrics.json`` (the result) and ``model.pt`` (the trained network's ``state_dict``: load it
    into the task's model, e.g. ``SigmoidNet`` or the digits MLP, with ``weights_only=True``)."""
    write_json(run_dir / "metrics.json", out)
    save_atomic({k: v.clone() for k, v in task.unflatten(weights).items()}, run_dir / "model.pt")
    return {"metrics.json": str(run_dir / "metrics.json"), "model.pt": str(run_dir / "model.pt")}


def describe(out: dict[str, Any]) -> list[str]:
    """The result of :func:`solve_case` in words."""
    status = "converged" if out["converged"] else "NOT converged"
    lines = [
        f"result: {status} after {out['iterations']} iterations, rho = {out['rho']:.3f} "
        f"((||r_k||/||r_0||)^(1/k), ||r_0|| = {out['initial_residual']:.3e})",
        f"  max |w - w_serial| over the trajectory {out['max_weight_diff_vs_serial']:.2e}, final weights "
        f"{out['final_weight_diff_vs_serial']:.2e} (relative {out['final_weight_rel_diff_vs_serial']:.1e}; "
        f"vs torch.optim: {out['final_weight_diff_vs_torch_optim']:.2e})",
        f"  trained network: training loss {out['final_loss']:.6g} (serial {out['final_loss_serial']:.6g}), "
        f"test accuracy {out['test_accuracy']:.4f} (serial {out['test_accuracy_serial']:.4f})",
        f"  potential speedup (paper model, {out['sequential_phi']} sequential Phi for N={out['level_steps'][0]}): "
        f"{out['potential_speedup']:.2f}",
        f"  seconds: MGRIT {out['seconds']:.3f} on {out['world_size']} process(es); serial training "
        f"{out['torch_optim_seconds']:.3f} (torch.optim), {out['serial_seconds']:.3f} (same Phi); "
        f"serial/MGRIT = {out['seconds_ratio_serial_over_mgrit']:.2f}",
    ]
    if "predicted_seconds" in out:
        lines.append(f"  model (calibrated batched-step cost, no communication): MGRIT {out['predicted_seconds']:.3f} s "
                     f"on {out['world_size']} process(es), serial {out['predicted_serial_seconds']:.3f} s")
    return lines


def paper_table(number: int, max_n: int = 6400, comm: Comm | None = None, *, quiet: bool = False,
                base: TaskSpec | None = None) -> dict[str, Any] | None:
    """Rerun paper table ``number`` for N <= max_n; paper vs measured, side by side (rank 0 returns it)."""
    comm = comm if comm is not None else default_comm()
    table = PAPER_TABLES[number]
    say = _say(comm, quiet)
    base = base or TaskSpec()
    rows: list[dict[str, Any]] = []
    say(f"paper table {number}: {table.title}")
    header = (f"{'N':>6} | {'paper it/rho':>12} | {'ours it/rho':>11} | {'d it':>4} | {'max |w-w_ser|':>13} | "
              f"{'final rel':>9} | "
              f"{'levels':>6} | {'pot. speedup':>12} | {'MGRIT s':>8} | {'serial s':>8}")
    say(header)
    say("-" * len(header))
    for n, it_paper, rho_paper in table.rows(max_n):
        spec = replace(base, task="xor", steps=n, solver=table.solver, cycle=table.cycle, alpha_b=table.alpha_b,
                       alpha_max=table.alpha_max, verbose=False)
        task, options = build_task(spec)
        options.verbose = False
        result = train_mgrit(task, options, comm=comm)
        if comm.rank != 0:
            continue
        serial = serial_train(task, keep="all")
        optim = torch_optim_train(task, keep="last")
        diff = max_difference(task.update.weights(result.trajectory), task.update.weights(serial.trajectory))
        row = {
            "N": n, "paper_iterations": it_paper, "paper_rho": rho_paper, "iterations": result.iterations,
            "rho": result.rho, "converged": result.converged, "max_weight_diff_vs_serial": diff,
            "final_weight_diff_vs_serial": max_difference(result.weights, serial.weights),
            "final_weight_rel_diff_vs_serial": relative_difference(result.weights, serial.weights),
            "levels": result.levels, "potential_speedup": result.potential_speedup,
            "paper_potential_speedup": potential_speedup(n, it_paper, table.cycle, result.levels),
            "seconds": result.seconds, "serial_seconds": serial.seconds, "torch_optim_seconds": optim.seconds,
            "residuals": result.residuals, "initial_residual": result.initial_residual,
            **evaluate(spec, task, result.weights),
        }
        rows.append(row)
        say(f"{n:>6} | {it_paper:>5} / {rho_paper:4.2f} | {result.iterations:>4} / {result.rho:4.2f} | "
            f"{result.iterations - it_paper:>+4d} | {diff:13.2e} | {row['final_weight_rel_diff_vs_serial']:9.1e} | "
            f"{result.levels:>6} | {result.potential_speedup:12.2f} | "
            f"{result.seconds:8.2f} | {optim.seconds:8.2f}")
    if comm.rank != 0:
        return None
    worst = max(abs(r["iterations"] - r["paper_iterations"]) for r in rows)
    say(f"largest difference from the paper's iteration counts: {worst} (N <= {max_n}); "
        f"rho here is (||r_k||/||r_0||)^(1/k) with r_0 the initial guess's residual")
    last = rows[-1]
    return {"table": number, "title": table.title, "rows": rows, "max_iteration_difference": worst,
            "world_size": comm.size, "nproc": comm.size, "seconds": sum(r["seconds"] for r in rows),
            "iterations": last["iterations"], "final_loss": last["final_loss"],
            "test_accuracy": last["test_accuracy"], "max_weight_diff_vs_serial": max(r["max_weight_diff_vs_serial"] for r in rows)}
