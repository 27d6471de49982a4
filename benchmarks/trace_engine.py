"""Where a solve spends its time, per rank: every phase's exclusive wall and CPU time, and the messages.

Case 1 or 2 of bench_engine.py (Heat1D, FCF V-cycles, cf 4, tol 1e-9) on 1 or more processes;
the fastest of 3 solves after a warm-up.  Each phase of the engine's PhaseTimer and each
DistComm call (posting a receive, waiting for it, a send, the all-reduce) is recorded with its
wall and thread-CPU time; a phase's *exclusive* time leaves out the phases and calls inside it.
Wall time well above CPU time in a message call is waiting for the other rank.  The solves run
the cycle every iteration (``replay=False``): replayed iterations do the same work without
entering the phases one by one, so they could not be broken down here (``bench_engine.py``
times the solve as it runs by default).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trace_engine.py --case 1 --nproc 2 [--transport gloo]

``--kernels`` also records Heat1D's compiled kernels ("kernel"), so that the "step" phase shows
only the Python around them; ``--no-kernels`` replaces the kernels by no-ops and runs exactly 10
iterations (tol 0): what is left is the engine's fixed cost per iteration (Python, array passes,
messages), which does not divide by the number of processes.

``--timeline K`` (implies ``--kernels``) also prints iteration K of every rank on one clock: each
kernel call and message call with its start and length, and per rank the iteration's span, the
time in kernels and outside them.  It shows who waits for whom, and what a sweep leaves behind:
the Python and torch calls just after a kernel that has streamed megabytes through the shared L3
find their code and data evicted (``bench_engine.py --cold``), and a message sent or received
there takes 60-100 us instead of 10.
"""

from __future__ import annotations

import argparse
import dataclasses
import collections
import time
from typing import Any

CASES = {"1": (2049, 1025, 5), "2": (257, 4097, 4)}


def traced_solve(case: str, transport_name: str = "auto", kernels: str = "") -> dict[str, Any]:
    import torch

    import torchpint.engine.comm as comm
    import torchpint.engine.timing as timing
    from torchpint.cli.solve import SolveConfig, build_solver

    events: list[tuple[str, float, float, float]] = []

    class Phase:
        def __init__(self, name: str, seconds: dict[str, float]) -> None:
            self.name, self.seconds, self.starts = name, seconds, []

        def __enter__(self) -> None:
            self.starts.append((time.perf_counter(), time.thread_time()))

        def __exit__(self, *exc: object) -> None:
            w0, c0 = self.starts.pop()
            w1 = time.perf_counter()
            self.seconds[self.name] += w1 - w0
            events.append((self.name, w0, w1, time.thread_time() - c0))

    timing.PhaseTimer.phase = lambda self, name: Phase(name, self.seconds)

    def wrap(name: str, fn: Any) -> Any:
        def inner(*args: Any, **kwargs: Any) -> Any:
            w0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                events.append((name, w0, time.perf_counter(), time.thread_time() - c0))
        return inner

    comm.DistComm.irecv = wrap("msg: post receive", comm.DistComm.irecv)
    comm.DistComm.recv = wrap("msg: blocking receive", comm.DistComm.recv)
    comm.DistComm.send = wrap("msg: send", comm.DistComm.send)
    comm.DistComm.sum = wrap("msg: all-reduce", comm.DistComm.sum)
    comm.PendingRecv.wait = wrap("msg: wait for receive", comm.PendingRecv.wait)
    try:  # the shared-memory transport (revisions that have it)
        import torchpint.engine.shm as shm

        shm.SharedMemoryComm.irecv = wrap("msg: post receive", shm.SharedMemoryComm.irecv)
        shm.SharedMemoryComm.send = wrap("msg: send", shm.SharedMemoryComm.send)
        shm.SharedMemoryComm.sum = wrap("msg: all-reduce", shm.SharedMemoryComm.sum)
        if hasattr(shm, "SharedMemorySum"):  # the residual's sum started now, completed later
            shm.SharedMemoryComm.isum = wrap("msg: all-reduce", shm.SharedMemoryComm.isum)
            shm.SharedMemorySum.wait = wrap("msg: all-reduce", shm.SharedMemorySum.wait)
        # recv is what wait calls: wrapped for the blocking receives only
        plain_recv = shm.SharedMemoryComm.recv
        shm.SharedMemoryComm.recv = wrap("msg: blocking receive", plain_recv)
        shm.SharedMemoryPendingRecv.wait = wrap("msg: wait for receive", lambda self: plain_recv(self.comm, self.template, self.src))
        transport = {"transport": transport_name}
    except ImportError:
        transport = {}

    stop = {"tol": 1e-9, "max_iter": 100}
    if kernels:
        import torchpint.problems.tridiagonal as tridiagonal

        # the kernels called from Python (_solve_one is called by _solve_rows inside compiled
        # code, where a wrapper cannot go)
        for name in ("_solve_rows", "_solve_chain", "_solve_intervals"):
            if hasattr(tridiagonal, name):  # (older revisions lack some)
                kernel = (lambda *args: None) if kernels == "none" else getattr(tridiagonal, name)
                setattr(tridiagonal, name, wrap("kernel", kernel))
        if kernels == "none":  # garbage states: a fixed number of iterations
            stop = {"tol": 0.0, "max_iter": 10}
    torch.set_num_threads(1)
    nx, nt, levels = CASES[case]
    no_replay = {"replay": False} if "replay" in {f.name for f in dataclasses.fields(SolveConfig)} else {}
    config = SolveConfig(problem="heat1d", nx=nx, nt=nt, levels=levels, cf=[4], relax="FCF", cycle="V",
                         nested=False, verbose=False, **stop, **transport, **no_replay)
    build_solver(config).solve()  # warm-up (numba's cache, allocator)
    best: dict[str, Any] | None = None
    for _ in range(3):
        events.clear()
        solver = build_solver(config)
        process, thread = time.process_time(), time.thread_time()
        result = solver.solve()
        record = {"seconds": result.solve_seconds, "process_cpu": time.process_time() - process,
                  "thread_cpu": time.thread_time() - thread, "iterations": result.iterations,
                  "events": list(events)}
        if best is None or record["seconds"] < best["seconds"]:
            best = record
    assert best is not None
    return best


def exclusive(events: list[tuple[str, float, float, float]]) -> dict[str, list[float]]:
    """name -> [count, exclusive wall, exclusive CPU] (time in nested phases/calls left out)."""
    out: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
    enclosing: list[tuple[str, float, float]] = []
    for name, w0, w1, cpu in sorted(events, key=lambda e: (e[1], -e[2])):
        out[name][0] += 1
        out[name][1] += w1 - w0
        out[name][2] += cpu
        while enclosing and enclosing[-1][2] <= w0:
            enclosing.pop()
        if enclosing:
            out[enclosing[-1][0]][1] -= w1 - w0
            out[enclosing[-1][0]][2] -= cpu
        enclosing.append((name, w0, w1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), default="1")
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--transport", choices=("auto", "shm", "gloo"), default="auto")
    kernel_choice = parser.add_mutually_exclusive_group()
    kernel_choice.add_argument("--kernels", action="store_const", const="timed", dest="kernels", default="",
                               help="record the compiled kernels' time apart from the Python around them")
    kernel_choice.add_argument("--no-kernels", action="store_const", const="none", dest="kernels",
                               help="kernels as no-ops, 10 iterations: the fixed cost per iteration")
    parser.add_argument("--timeline", type=int, metavar="K", default=0,
                        help="print iteration K (from 2) of every rank on one clock: kernels and messages")
    args = parser.parse_args()
    if args.nproc < 1:
        parser.error("--nproc must be >= 1")
    if args.timeline == 1 or args.timeline < 0:
        parser.error("--timeline needs an iteration K >= 2 (iteration K runs from the end of residual check K-1)")
    if args.timeline and args.kernels == "none":
        parser.error("--timeline shows the kernels: not with --no-kernels")
    if args.timeline:
        args.kernels = "timed"
    if args.nproc == 1:
        records = [traced_solve(args.case, args.transport, args.kernels)]
    else:
        from torchpint.run import run_workers

        records = run_workers(traced_solve, args.nproc, (args.case, args.transport, args.kernels), timeout_s=600)
    print(f"case {args.case} on {args.nproc} process(es), transport {args.transport}; load average {open('/proc/loadavg').read().split()[:3]}")
    for rank, record in enumerate(records):
        its = record["iterations"]
        print(f"rank {rank}: solve {record['seconds']:.3f} s, {its} iterations; CPU: main thread"
              f" {record['thread_cpu']:.3f} s, other threads (gloo) {record['process_cpu'] - record['thread_cpu']:.3f} s")
        table = exclusive(record["events"])
        for name in sorted(table, key=lambda k: -table[k][1]):
            count, wall, cpu = table[name]
            print(f"   {name:24s} {int(count):5d} calls  wall {1e3 * wall:7.1f} ms ({1e3 * wall / its:5.2f} /iter)"
                  f"  CPU {1e3 * cpu:7.1f} ms")

    if args.timeline:
        timeline(records, args.timeline)


SHOWN = ("kernel", "msg: send", "msg: wait for receive", "msg: blocking receive", "msg: all-reduce")


def timeline(records: list[dict[str, Any]], iteration: int) -> None:
    """Iteration ``iteration`` of every rank on one clock (perf_counter is the machine's monotonic clock)."""
    spans = []
    for record in records:
        checks = sorted((e for e in record["events"] if e[0] == "residual"), key=lambda e: e[1])
        if iteration > len(checks):
            raise SystemExit(f"--timeline {iteration}: the solve ran {len(checks)} iterations")
        spans.append((checks[iteration - 2][2], checks[iteration - 1][2]))
    origin = min(start for start, _ in spans)
    print(f"\niteration {iteration}, ms from its start (the end of the previous residual check):")
    rows = []
    for rank, (record, (start, stop)) in enumerate(zip(records, spans)):
        inside = [e for e in record["events"] if e[1] >= start and e[2] <= stop]
        kernels = sum(e[2] - e[1] for e in inside if e[0] == "kernel")
        waits = sum(e[2] - e[1] for e in inside if e[0].startswith("msg:"))
        print(f"  rank {rank}: {1e3 * (start - origin):6.3f} .. {1e3 * (stop - origin):6.3f}, kernels"
              f" {1e3 * kernels:.2f} ms, messages {1e3 * waits:.2f} ms, the rest {1e3 * (stop - start - kernels - waits):.2f} ms")
        rows += [(e[1], rank, e[0], e[2] - e[1]) for e in inside if e[0] in SHOWN]
    for begin, rank, name, length in sorted(rows):
        print(f"  {1e3 * (begin - origin):8.3f} {' ' * 36 * rank}r{rank} {name:22s} {1e3 * length:6.3f}")


if __name__ == "__main__":
    main()
