"""``torchpint demo``: each capability where it is at its best on this machine, measured honestly.

Four sections, one per capability, then a Markdown report (``report.md``, PNG plots and
``results.json``) that opens with a one-screen summary table:

* engine: Heat1D large enough that MGRIT on 2 processes beats 1 process, the residual histories
  shown equal, and the same problem stepped sequentially (the solution MGRIT converges to);
* parareal network: a ResNet-110 on the digits brought to 32x32, the parareal network on 2
  workers against the original on 1, epoch time and accuracy side by side;
* MGRIT training and layer-parallel: exactness (weights equal serial training, gradients equal
  autograd), then the measured cost on 1 and 2 processes next to each method's cost model
  projected to 1..1024 processes, with the break-even process count.  On 2 cores both are slower
  than serial, and the report says so.

Every process runs one intra-op thread, so that "1 process" and "2 processes" compare like with
like.  Processes are started only through :mod:`torchpint.run` (``launch``, ``run_workers``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from torchpint.cli.plots import plot_residuals, save_figure
from torchpint.cli.solve import SolveConfig, build_problem, build_solver, solve_many
from torchpint.engine import time_grid
from torchpint.run import run_workers

#: Heat1D with MGRIT.  nx = 4097 gives every C-interval's step enough work that the halo
#: messages and the all-reduce are small next to it (at nx = 1025, 2 processes lost to 1).
ENGINE_DEMO = SolveConfig(problem="heat1d", nt=1025, nx=4097, levels=5, cf=[4], relax="FCF", cycle="V",
                          nested=False, tol=1e-9, max_iter=30, verbose=False)
#: The parareal network: a deep network (36 bottleneck blocks) at 32x32, batch 16, so that each
#: sub-network's work dwarfs the hub's serial part and the messages (ResNet-56 on 16x16 images
#: lost to the original); one epoch keeps the demo within its three minutes.
PARANET_DEMO: dict[str, Any] = {"model": "resnet110", "dataset": "digits", "image_size": 32, "subnets": 2,
                                "iterations": 1, "epochs": 1, "batch_size": 16, "lr": 0.05, "nproc": 2, "seed": 0}
#: MGRIT training: the digits MLP over its SGD steps (TaskSpec fields)
MGRIT_TRAIN_DEMO: dict[str, Any] = {"task": "digits", "steps": 256, "solver": "1", "cycle": "V", "alpha_b": 0.05,
                                    "alpha_max": 8.0, "batch": 64, "seed": 0}
#: layer-parallel: the checks, the training run (LayerParallelConfig fields) and the timed network
#: (benchmarks/bench_layer_parallel.py's 2-iteration setting: few iterations, as layer-parallel
#: training is run in practice; its serial counterpart is the same network's nn.Sequential)
LAYER_PARALLEL_CHECKS: list[dict[str, Any]] = [
    {"layers": 8, "levels": 1},
    {"layers": 64, "levels": 3, "cf": 4, "T": 4.0, "width": 6, "relax": "F", "nested": False, "tol": 1e-11},
]
LAYER_PARALLEL_DEMO: dict[str, Any] = {"layers": 16, "levels": 2, "cf": 4, "epochs": 2, "width": 4}
LAYER_PARALLEL_TIMING: dict[str, Any] = {"layers": 64, "width": 128, "batch": 128, "levels": 3, "cf": 4,
                                         "max_iter": 2, "repeat": 3}
#: processes the cost models are projected to
PROJECTED = [2**k for k in range(11)]  # 1..1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="reports/demo", help="folder for the report")
    parser.add_argument("--nproc", type=int, default=2,
                        help="processes of the engine, MGRIT-training and layer-parallel runs (the parareal network "
                             "always has 2 sub-networks, one process each)")


# ------------------------------------------------------------------------------------ engine
def engine_section(out: Path, nproc: int) -> tuple[list[str], dict[str, Any]]:
    """MGRIT on ``nproc`` processes and on 1 (histories equal), and sequential time stepping."""
    config = ENGINE_DEMO
    print(f"[engine] Heat1D nt={config.nt}, nx={config.nx}, MGRIT {config.levels} levels, cf 4, FCF, V-cycle: "
          f"{nproc} processes vs 1, and sequential time stepping", flush=True)
    # Each solve twice in its process group, the faster counted: the first solve of a process
    # also pays for one-off set-up (allocations, library initialisation).
    parallel = min(run_workers(solve_many, nproc, ([config, config],))[0], key=lambda s: s["seconds"])
    serial_runs = [build_solver(config).solve() for _ in range(2)]
    serial_result = min(serial_runs, key=lambda r: r.solve_seconds)
    serial = serial_result.summary()
    worst = max(abs(a - b) / max(abs(b), 1e-300) for a, b in zip(parallel["residuals"], serial["residuals"]))
    same_length = len(parallel["residuals"]) == len(serial["residuals"])

    problem = build_problem(config)
    t = time_grid(config.t_start, config.t_stop, config.nt)
    best, u = math.inf, problem.initial_value()
    for _ in range(2):
        start = time.perf_counter()
        u = problem.initial_value()
        for i in range(config.nt - 1):
            u = problem.step(u, float(t[i]), float(t[i + 1]))
        best = min(best, time.perf_counter() - start)
    final_u = serial_result.u[-1]  # type: ignore[index]
    solution_diff = float((final_u - u).abs().max() / u.abs().max())
    speedup = serial["seconds"] / parallel["seconds"]
    work_ratio = sum(serial["steps_per_level"]) / (config.nt - 1)

    plot_residuals({f"{nproc} processes": parallel["residuals"], "1 process": serial["residuals"]},
                   out / "engine_residuals.png",
                   title=f"Heat1D nt={config.nt}, nx={config.nx}: MGRIT 5 levels, cf 4, FCF, V-cycle")
    rows = [f"| iteration | residual ({nproc} proc.) | conv. factor | residual (1 proc.) |", "|---:|---:|---:|---:|"]
    factors = [None, *parallel["convergence_factors"]]
    for k, (rp, rs, f) in enumerate(zip(parallel["residuals"], serial["residuals"], factors), start=1):
        rows.append(f"| {k} | {rp:.6e} | {'-' if f is None else f'{f:.4f}'} | {rs:.6e} |")
    print("\n".join(rows))
    print(f"[engine] solve {parallel['seconds']:.3f} s on {nproc} processes, {serial['seconds']:.3f} s on 1 "
          f"({speedup:.2f}x); histories differ by {worst:.1e} (relative); sequential stepping {best:.3f} s, "
          f"final state equal to MGRIT's to {solution_diff:.1e}", flush=True)
    lines = [
        "## Engine: the heat equation with MGRIT, time-parallel",
        "",
        (f"`Heat1D` (PyMGRIT's discretisation), nt = {config.nt}, nx = {config.nx}, 5 levels, cf 4, FCF, V-cycle, "
         f"no nested iteration, tol 1e-9; the time points split over {nproc} processes (torch.distributed, gloo, "
         f"one thread each) and on 1. Each solve ran twice in its process group; the faster is shown."),
        "",
        *rows,
        "",
        (f"- the two residual histories: {len(parallel['residuals'])} iterations each, largest relative difference "
         f"{worst:.1e}"),
        (f"- solve time: **{parallel['seconds']:.3f} s on {nproc} processes, {serial['seconds']:.3f} s on 1: "
         f"{speedup:.2f}x**"),
        (f"- the same problem stepped sequentially (`problem.step` in a loop, {config.nt - 1} steps): "
         f"{best:.3f} s; MGRIT's final state equals it to {solution_diff:.1e} (relative). **MGRIT is slower than "
         f"the loop here**: it does {work_ratio:.1f} times the loop's steps ({sum(serial['steps_per_level'])} over all "
         f"levels against {config.nt - 1}), so with ideal scaling it beats the loop from about "
         f"{math.ceil(work_ratio)} processes; what 2 processes show is that the solve scales."),
        "",
        "![residuals](engine_residuals.png)",
        "",
    ]
    result = {"config": asdict(config), "parallel": parallel, "serial": serial, "max_rel_diff": worst,
              "same_iterations": same_length, "sequential_seconds": best, "work_ratio": work_ratio, "solution_rel_diff_vs_sequential":
              solution_diff, "speedup": speedup}
    return lines, result


# ------------------------------------------------------------------------------------ paranet
def paranet_section(out: Path) -> tuple[list[str], dict[str, Any]]:
    """The parareal ResNet on 2 workers against the original on 1: epoch time and accuracy."""
    from torchpint.cli.paranet import format_table, run_training
    from torchpint.paranet.train import TrainConfig

    cfg = TrainConfig(**PARANET_DEMO, out=str(out / "paranet"), progress=True)  # type: ignore[arg-type]
    print(f"[paranet] {cfg.model} on the digits at {cfg.image_size}x{cfg.image_size}: parareal network N={cfg.subnets} "
          f"on {cfg.nproc} workers against the original on 1, {cfg.epochs} epoch, batch {cfg.batch_size}", flush=True)
    results = run_training(cfg, compare=True, overwrite=True, quiet=True)
    print(format_table(results), flush=True)
    p, o = results["runs"]["paranet"], results["runs"]["original"]
    info, comparison = results["info"], results["comparison"]
    model = info.get("step_model") or {}
    cmd = (f"torchpint paranet train --model {cfg.model} --dataset digits --image-size {cfg.image_size} "
           f"--subnets {cfg.subnets} --nproc {cfg.nproc} --epochs {cfg.epochs} --batch-size {cfg.batch_size} "
           f"--lr {cfg.lr:g} --compare")
    lines = [
        "## Parareal neural network: ResNet-110 on the digits, 2 workers against 1",
        "",
        (f"`{cmd}`: {results['data']['train']} training / {results['data']['test']} test images of the scikit-learn "
         f"digits, padded to {cfg.image_size}x{cfg.image_size}. The parareal network tears the {info['num_blocks']} "
         f"blocks into N = {cfg.subnets} sub-networks (split before block {info['split_points'][0]}, chosen by "
         f"the measured time of every block, so another run may split elsewhere and train a little differently; "
         f"`--split-points {','.join(map(str, info['split_points']))}` repeats this one), joined by coarse networks, "
         f"K = 1; each sub-network runs in its own "
         f"process (one thread each); the original runs in one process with one thread."),
        "",
        "| network | workers | test accuracy | parameters | seconds per epoch | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
        f"| original | 1 | {100 * o['test_accuracy']:.2f}% | {o['params']:,} | {o['seconds_per_epoch']:.1f} | 1.00x |",
        (f"| parareal N = {cfg.subnets} | {cfg.nproc} | {100 * p['test_accuracy']:.2f}% | {p['params']:,} | "
         f"{p['seconds_per_epoch']:.1f} | **{comparison['speedup_per_epoch']:.2f}x** |"),
        "",
        (f"The split's modelled step (measured block times, K = 1): {model.get('speedup', float('nan')):.2f}x. "
         f"Coarse networks: +{100 * results['coarse_overhead']['coarse_param_fraction']:.2f}% parameters. "
         f"Accuracy after {cfg.epochs} epoch, one seed: {100 * comparison['accuracy_difference']:+.2f} points "
         f"(parareal - original); `benchmarks/accuracy_paranet.py` averages 3 seeds over 20 epochs."),
        "",
        "![parareal vs original](paranet/curves.png)",
        "",
    ]
    return lines, results


# ------------------------------------------------------------------------------------ cost models
def break_even(procs: list[int], model_seconds: list[float], baseline: float) -> int | None:
    """The smallest process count at which the model's time is below the baseline's (None: never here)."""
    return next((p for p, s in zip(procs, model_seconds) if s < baseline), None)


def plot_cost_projection(path: Path, title: str, procs: list[int], model_seconds: list[float],
                         measured: dict[int, float], baseline: float, baseline_label: str,
                         even: int | None) -> None:
    """Measured seconds on 1 and 2 processes, the cost model over 1..1024, the serial baseline, the break-even."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.loglog(procs, model_seconds, "-", color="tab:blue", label="cost model (projected)")
    ax.loglog(list(measured), list(measured.values()), "o", color="tab:red", markersize=8, label="measured here")
    ax.axhline(baseline, color="black", linestyle="--", label=baseline_label)
    if even is not None:
        ax.axvline(even, color="tab:green", linestyle=":", label=f"break-even: {even} processes")
    ax.set_xscale("log", base=2)
    ax.set_xticks(procs, [str(p) for p in procs])
    ax.set_xlabel("processes")
    ax.set_ylabel("seconds")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def _even_text(even: int | None, limit: int) -> str:
    return f"from {even} processes" if even is not None else f"not within {limit} processes"


def best_modelled(procs: list[int], model_seconds: list[float], baseline: float) -> tuple[float, int]:
    """The model's largest speed-up over the baseline within ``procs``, and the fewest processes that reach it.

    Said next to the break-even because near the model's floor (its serial coarsest level) the
    break-even moves a lot with small timing changes; the best speed-up says how far from paying it is.
    """
    fastest = min(model_seconds)
    return baseline / fastest, procs[model_seconds.index(fastest)]


# ------------------------------------------------------------------------------------ MGRIT training
def mgrit_train_worker(spec: Any) -> dict[str, Any] | None:
    """One rank of MGRIT training over ``spec``'s steps (call on every rank); rank 0 returns what the
    section compares: the residuals, the batched calls (the cost model's input) and the weights."""
    from torchpint.engine.comm import default_comm
    from torchpint.training.solver import train_mgrit
    from torchpint.training.tasks import build_task

    task, options = build_task(spec)
    options.verbose = False
    comm = default_comm()
    result = train_mgrit(task, options, comm=comm)
    if comm.rank != 0:
        return None
    # numpy, not tensors: the result crosses a process boundary (torch would share file descriptors)
    return {"iterations": result.iterations, "residuals": result.residuals, "seconds": result.seconds,
            "calls": result.calls, "levels": result.levels, "potential_speedup": result.potential_speedup,
            "weights": result.weights.numpy(),
            "trajectory_weights": task.update.weights(result.trajectory).numpy()}


def mgrit_train_section(out: Path, nproc: int) -> tuple[list[str], dict[str, Any]]:
    """A digits MLP trained by MGRIT over its SGD steps on 1 and 2 processes, against serial SGD."""
    from torchpint.run import launch
    from torchpint.training.serial import serial_train, torch_optim_train
    from torchpint.training.solver import max_difference
    from torchpint.training.speedup import calibrate, predict_seconds
    from torchpint.training.tasks import TaskSpec, accuracy, build_task, digits_data

    spec = TaskSpec(**MGRIT_TRAIN_DEMO)
    print(f"[mgrit-train] digits MLP 64-32-10 (tanh), {spec.steps} SGD steps (lr {spec.alpha_b}, batch {spec.batch}): "
          f"MGRIT V-cycle over the training steps on 1 and {nproc} processes vs serial SGD", flush=True)
    task, _ = build_task(spec)
    runs = {p: SimpleNamespace(**launch(mgrit_train_worker, (spec,), nproc=p)) for p in (1, nproc)}
    for r in runs.values():
        r.weights, r.trajectory_weights = torch.from_numpy(r.weights), torch.from_numpy(r.trajectory_weights)
    serial = serial_train(task, keep="all")
    optim = torch_optim_train(task, keep="last")
    diffs = {p: max_difference(r.trajectory_weights, task.update.weights(serial.trajectory)) for p, r in runs.items()}
    one = runs[1]
    _, _, xt, yt = digits_data(spec.seed)
    acc_mgrit, acc_serial = accuracy(task, runs[nproc].weights, xt, yt), accuracy(task, serial.weights, xt, yt)
    # best of 5: other work on the machine only ever adds time, and the break-even is a ratio of these timings
    cost = calibrate(task, max((max(v) for v in one.calls.values() if v), default=1), repeats=5)
    model = [predict_seconds(one.calls, cost, p) for p in PROJECTED]
    model_serial = task.steps * cost.single
    even = break_even(PROJECTED, model, model_serial)
    best, best_at = best_modelled(PROJECTED, model, model_serial)
    measured = {p: r.seconds for p, r in runs.items()}
    speedup = optim.seconds / runs[nproc].seconds
    plot_cost_projection(out / "mgrit_train_cost.png",
                         f"MGRIT training, digits MLP, N = {spec.steps} SGD steps, V-cycle ({one.levels} levels)",
                         PROJECTED, model, measured, model_serial, "serial SGD (model)", even)
    plot_residuals({f"{p} process(es)": r.residuals for p, r in runs.items()}, out / "mgrit_train_residuals.png",
                   title=f"MGRIT training, digits MLP: N = {spec.steps} steps, V-cycle ({one.levels} levels)")
    print(f"[mgrit-train] {one.iterations} iterations; weights vs serial SGD {max(diffs.values()):.1e}; MGRIT "
          f"{measured[1]:.2f} s (1 proc.), {measured[nproc]:.2f} s ({nproc} proc.), serial SGD {optim.seconds:.2f} s; "
          f"model: break-even {_even_text(even, PROJECTED[-1])}", flush=True)
    lines = [
        "## Training parallel across training steps (MGRIT over the weight trajectory)",
        "",
        (f"A 64-32-10 tanh MLP on the scikit-learn digits, {spec.steps} SGD steps (lr {spec.alpha_b}, batches of "
         f"{spec.batch} in a seeded order), float64. MGRIT (FAS, FCF, m = 2, V-cycle over {one.levels} levels, "
         f"initial guess w_0 then zeros, tol 1e-9 sqrt(N)) solves all steps at once."),
        "",
        "| run | iterations | largest weight difference from serial SGD (all steps) | seconds |",
        "|---|---:|---:|---:|",
        f"| serial SGD (`torch.optim.SGD`) | - | - | {optim.seconds:.3f} |",
        *(f"| MGRIT, {p} process(es) | {r.iterations} | {diffs[p]:.1e} | {r.seconds:.3f} |" for p, r in runs.items()),
        "",
        (f"- test accuracy: MGRIT weights {acc_mgrit:.4f}, serial weights {acc_serial:.4f}; final weights vs "
         f"`torch.optim.SGD` {max_difference(runs[nproc].weights, optim.weights):.1e}"),
        (f"- **on this machine MGRIT training is slower than serial SGD** ({speedup:.3f}x on {nproc} processes): it "
         f"does about {sum(sum(v) for v in one.calls.values()) / spec.steps:.0f} times the serial work (every "
         f"iteration sweeps all steps on every level), and 2 processes cannot make up for it"),
        (f"- the cost model (every batched step a solve made, timed here, split over P processes; no "
         f"communication, so a lower bound) puts the break-even with serial SGD {_even_text(even, PROJECTED[-1])} "
         f"for this N = {spec.steps}; its best is {best:.2f}x serial SGD's speed, from {best_at} processes. The paper's coarser count (N / sigma, sigma = sequential steps per "
         f"iteration with its constants) gives {one.potential_speedup:.2f}x at this N; both grow with N "
         f"(`benchmarks/bench_mgrit_train.py`, the paper's Figs 6-7)"),
        "",
        "![cost model](mgrit_train_cost.png) ![residuals](mgrit_train_residuals.png)",
        "",
    ]
    result = {"spec": asdict(spec), "iterations": {p: r.iterations for p, r in runs.items()},
              "residuals": {p: r.residuals for p, r in runs.items()}, "max_weight_diff_vs_serial": diffs,
              "seconds": measured, "serial_sgd_seconds": optim.seconds, "test_accuracy_mgrit": acc_mgrit,
              "test_accuracy_serial": acc_serial, "model_processes": PROJECTED, "model_seconds": model,
              "model_serial_seconds": model_serial, "break_even_processes": even, "speedup": speedup,
              "model_best_speedup": best, "model_best_processes": best_at,
              "potential_speedup": one.potential_speedup}
    return lines, result


# ------------------------------------------------------------------------------------ layer-parallel
def layer_parallel_worker(cases: list[Any], config: Any, out: str, timing: list[Any]) -> dict[str, Any]:
    """One rank of the layer-parallel section, in one process group: gradient checks, training (run
    folder ``out``; rank 0 writes its files and returns their summary), timing."""
    from torchpint.layerpar.bench import time_many
    from torchpint.testing.layer_parallel import demo_worker

    return {**demo_worker(cases, config, out), "timing": time_many(timing)}


def ideal_seconds(one_process: dict[str, Any], nproc: int) -> float:
    """The cost model's time per batch on ``nproc`` processes, from a one-process timing: each solve's
    time per layer step, the steps of every level but the coarsest split over ``nproc``, the coarsest
    level serial; no communication (an ideal bound)."""
    total = 0.0
    for phase in ("forward", "backward"):
        steps = one_process[phase]["steps_per_level"]
        per_step = one_process[f"{phase}_seconds"] / max(sum(steps), 1)
        total += per_step * (sum(steps[:-1]) / nproc + steps[-1])
    return total


def mgrit_work(one_process: dict[str, Any], layers: int) -> float:
    """Layer steps of both solves over the ``2 * layers`` of a serial forward and backward pass."""
    return sum(sum(one_process[phase]["steps_per_level"]) for phase in ("forward", "backward")) / (2 * layers)


def layer_parallel_section(out: Path, nproc: int) -> tuple[list[str], dict[str, Any]]:
    """Gradients equal autograd, training equals serial, and the cost against the model."""
    from torchpint.layerpar.bench import BenchSpec, time_many
    from torchpint.layerpar.train import LayerParallelConfig
    from torchpint.run import open_run_folder
    from torchpint.testing.layer_parallel import CheckCase, compare, serial_gradients

    cases = [CheckCase(**case) for case in LAYER_PARALLEL_CHECKS]
    config = LayerParallelConfig(**LAYER_PARALLEL_DEMO, nproc=nproc, progress=False)
    config.validate()
    run_dir = out / "layer_parallel"
    timed = BenchSpec(**LAYER_PARALLEL_TIMING)
    print(f"[layer-parallel] gradient checks, a {config.layers}-layer conv ResNet trained on digits, and the "
          f"cost of a {timed.layers}-layer ResNet on 1 and {nproc} processes", flush=True)
    # every rank's gradients and timing are compared, so all ranks' results: run_workers, not launch
    with open_run_folder(run_dir, resume=False, overwrite=True,
                         record={"command": "demo (layer-parallel train)", "config": asdict(config)}):
        ranks = run_workers(layer_parallel_worker, nproc, (cases, config, str(run_dir), [timed]))
    checks = compare([r["checks"] for r in ranks], [serial_gradients(c) for c in cases])
    # 1-process MGRIT and the serial network taking turns, twice, the faster of each kept: the model's
    # break-even is their ratio, and other work on the machine only ever adds time
    turns = time_many([replace(timed), replace(timed, mode="serial")] * 2)
    one_process = min(turns[0::2], key=lambda t: t["total_seconds"])
    serial_timing = min(turns[1::2], key=lambda t: t["total_seconds"])
    two = max(r["timing"][0]["total_seconds"] for r in ranks)  # the pass ends when the slowest rank does
    summary = ranks[0]["train"]  # layer-parallel and serial training, written to run_dir by rank 0
    # one process owns at least one layer: beyond `layers` processes the model stays flat
    model = [ideal_seconds(one_process, min(p, timed.layers)) for p in PROJECTED]
    baseline = serial_timing["total_seconds"]
    even = break_even(PROJECTED, model, baseline)
    best, best_at = best_modelled(PROJECTED, model, baseline)
    measured = {1: one_process["total_seconds"], nproc: two}
    speedup = baseline / two
    plot_cost_projection(out / "layer_parallel_cost.png",
                         f"Layer-parallel, {timed.layers} layers, width {timed.width}, batch {timed.batch}: "
                         f"{timed.levels} levels, cf {timed.cf}, {timed.max_iter} iterations",
                         PROJECTED, model, measured, baseline, "serial forward + backward (measured)", even)
    rows = ["| network | MGRIT | iterations fwd / bwd | output | input gradient | parameter gradients |",
            "|---|---|---:|---:|---:|---:|"]
    stats = [ranks[0]["checks"][i]["stats"] for i in range(len(cases))]
    for case, diff, st in zip(cases, checks, stats):
        hierarchy = "1 level (serial pass)" if case.levels == 1 else (
            f"{case.levels} levels, cf {case.cf}, {case.relax}, tol {case.tol:g}")
        rows.append(f"| {case.layers} layers, width {case.width} | {hierarchy} | {st['forward']['iterations']} / "
                    f"{st['backward']['iterations']} | {diff['out']:.1e} | {diff['x_grad']:.1e} | {diff['grads']:.1e} "
                    f"({diff['count']} tensors) |")
    worst = max(max(d["out"], d["x_grad"], d["grads"]) for d in checks)
    print("\n".join(rows))
    print(f"[layer-parallel] per batch: serial {1e3 * baseline:.0f} ms, layer-parallel {1e3 * measured[1]:.0f} ms "
          f"(1 proc.), {1e3 * two:.0f} ms ({nproc} proc.); model: break-even {_even_text(even, PROJECTED[-1])}",
          flush=True)
    lines = [
        "## Layer-parallel ResNets (MGRIT across the layers, forward and adjoint)",
        "",
        ("The network `x_{k+1} = x_k + h f_k(x_k)` is kept exactly; its forward pass is an MGRIT solve across the "
         f"layers and its backward pass an adjoint MGRIT solve, the layers split over {nproc} processes; coarse levels "
         "use every cf-th layer with the larger step. Largest relative difference from the serial network's "
         "autograd (float64):"),
        "",
        *rows,
        "",
        (f"Training: {config.layers}-layer conv ResNet (width {config.width}) on the digits, {config.epochs} epochs, "
         f"MGRIT {config.levels} levels, cf {config.cf}, on {nproc} processes, and the serial `nn.Sequential` from "
         f"the same weights on the same batches: test accuracy {summary['test_accuracy']:.4f} "
         f"(layer-parallel), {summary['test_accuracy_serial']:.4f} (serial); largest parameter difference after "
         f"training {summary['max_parameter_difference']:.1e}."),
        "",
        (f"Cost: {timed.layers} layers (linear + tanh), width {timed.width}, batch {timed.batch}, {timed.levels} "
         f"levels, cf {timed.cf}, {timed.max_iter} forward and {timed.max_iter} adjoint iterations, float32; "
         f"median of {timed.repeat} passes (1 process and serial: the faster of two such medians, taking turns)."),
        "",
        "| run | forward + backward per batch |",
        "|---|---:|",
        f"| serial `nn.Sequential` (autograd) | {1e3 * baseline:.1f} ms |",
        f"| layer-parallel, 1 process | {1e3 * measured[1]:.1f} ms |",
        f"| layer-parallel, {nproc} processes | {1e3 * two:.1f} ms |",
        "",
        (f"- **on this machine layer-parallel is slower than the serial network** ({speedup:.2f}x on {nproc} "
         f"processes): MGRIT applies the layers several times per pass "
         f"({mgrit_work(one_process, timed.layers):.1f}"
         f" times the serial pass's layer steps here)"),
        (f"- the cost model (the layer steps of each level split over P processes, the coarsest level serial, no "
         f"communication: an ideal bound; at most one process per layer) puts the break-even "
         f"{_even_text(even, PROJECTED[-1])}; its best is {best:.2f}x the serial pass's speed, from {best_at} "
         f"processes (the coarsest level is solved serially: more levels or more layers lower that floor)"),
        "",
        "![cost model](layer_parallel_cost.png) ![training](layer_parallel/curves.png)",
        "",
    ]
    summary["gradient_checks"] = [{"case": asdict(c), **d} for c, d in zip(cases, checks)]
    summary.update({"worst_gradient_difference": worst, "timing_spec": asdict(timed),
                    "seconds_per_batch": {"serial": baseline, 1: measured[1], nproc: two},
                    "model_processes": PROJECTED, "model_seconds": model, "break_even_processes": even,
                    "model_best_speedup": best, "model_best_processes": best_at,
                    "speedup": speedup})
    return lines, summary


# ------------------------------------------------------------------------------------ report
def _row(capability: str, checked: str, speedup: float, speedup_of: str, projection: str) -> dict[str, Any]:
    return {"capability": capability, "checked": checked, "measured_speedup": speedup, "speedup_of": speedup_of,
            "projection": projection}


def summary_rows(results: dict[str, Any], nproc: int) -> list[dict[str, Any]]:
    """One row per capability: what was checked, the measured speed-up here, the projection."""
    e, p, m, lp = (results[k] for k in ("engine", "paranet", "mgrit-train", "layer-parallel"))
    runs = p["runs"]
    limit = PROJECTED[-1]
    return [
        _row("engine", f"residual history on {nproc} processes = 1 process (max rel. diff. {e['max_rel_diff']:.1e}); "
                       f"solution = sequential stepping ({e['solution_rel_diff_vs_sequential']:.1e})",
             e["speedup"], f"MGRIT on {nproc} processes over MGRIT on 1",
             f"MGRIT does {e['work_ratio']:.0f}x the sequential loop's steps (loop {e['sequential_seconds']:.2f} s): "
             f"with ideal scaling it beats the loop from ~{math.ceil(e['work_ratio'])} processes"),
        _row("paranet", f"test accuracy after {len(runs['paranet']['history'])} epoch: parareal "
                        f"{100 * runs['paranet']['test_accuracy']:.1f}%, original {100 * runs['original']['test_accuracy']:.1f}%",
             p["comparison"]["speedup_per_epoch"],
             f"parareal {p['config']['model']} on {p['config']['nproc']} workers over the original on 1 (epoch time)",
             f"modelled step {(p['info'].get('step_model') or {}).get('speedup', float('nan')):.2f}x on "
             f"{p['config']['nproc']} workers"),
        _row("mgrit-train", f"weights = serial SGD on 1 and {nproc} processes "
                            f"(max diff. {max(m['max_weight_diff_vs_serial'].values()):.1e})",
             m["speedup"], f"serial SGD time over MGRIT on {nproc} processes",
             f"break-even with serial SGD {_even_text(m['break_even_processes'], limit)} (N = {m['spec']['steps']}); "
             f"model's best {m['model_best_speedup']:.2f}x from {m['model_best_processes']} processes"),
        _row("layer-parallel", f"gradients = autograd (max rel. diff. {lp['worst_gradient_difference']:.1e}); "
                               f"training = serial (params {lp['max_parameter_difference']:.1e})",
             lp["speedup"], f"serial pass over layer-parallel on {nproc} processes (per batch)",
             f"break-even {_even_text(lp['break_even_processes'], limit)}; model's best "
             f"{lp['model_best_speedup']:.2f}x from {lp['model_best_processes']} processes"),
    ]


def summary_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| capability | what was checked | measured speed-up here | projection |", "|---|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r['capability']} | {r['checked']} | **{r['measured_speedup']:.2f}x** ({r['speedup_of']}) | "
                     f"{r['projection']} |")
    return lines


def run(args: argparse.Namespace) -> int:
    if args.nproc < 2:
        raise ValueError(f"--nproc must be >= 2 (the demo compares parallel runs with one process), got {args.nproc}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # every process one thread: 1 process against 2 is like for like
    start = time.perf_counter()
    results: dict[str, Any] = {}
    sections: list[str] = []
    for key, section in (("engine", lambda: engine_section(out, args.nproc)),
                         ("paranet", lambda: paranet_section(out)),
                         ("mgrit-train", lambda: mgrit_train_section(out, args.nproc)),
                         ("layer-parallel", lambda: layer_parallel_section(out, args.nproc))):
        print(f"\n[{key}]", flush=True)
        began = time.perf_counter()
        lines, results[key] = section()
        results[key]["section_seconds"] = time.perf_counter() - began
        sections += lines
    total = time.perf_counter() - start
    rows = summary_rows(results, args.nproc)
    load = os.getloadavg()
    report = [
        "# torchpint demo report",
        "",
        *summary_table(rows),
        "",
        (f"Total demo time: {total:.1f} s on {os.cpu_count()} cores (load average at the end {load[0]:.2f}); "
         f"one thread per process. Speed-ups are single runs: on a shared machine they move from run to run."),
        "",
        *sections,
    ]
    (out / "report.md").write_text("\n".join(report) + "\n")
    payload = {"summary": rows, "total_seconds": total, "load_average": load, **results}
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=_jsonable))
    print("\n" + "\n".join(summary_table(rows)))
    print(f"\ntotal demo time: {total:.1f} s")
    print(f"report: {(out / 'report.md').resolve()}")
    return 0


def _jsonable(value: Any) -> Any:
    """numpy arrays and tensors (trained weights in the results) as lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
