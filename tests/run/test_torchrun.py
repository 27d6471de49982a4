"""Commands under torchrun: two agents on 127.0.0.1 (c10d rendezvous) as two machines would run them.

Each agent's workers are real processes with one thread; the results must equal ``--nproc N`` on
one machine, an elastic restart must end where the uninterrupted run does, and a dead rank must
take every process down within seconds, named, with no orphans.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch

from torchpint.cli.main import main
from torchpint.testing.processes import agents, alive, descendants, finish, json_result

# Seeded random images (the synthetic set): what these tests check does not depend on the data, and each
# torchrun worker is a fresh interpreter, which would spend ~2 s of CPU importing scikit-learn for the
# digits (tests/paranet trains on the digits, on local processes and under the CLI).
TINY = ["--model", "resnet11-small", "--dataset", "synthetic", "--image-size", "8", "--max-train", "96",
        "--max-test", "64", "--batch-size", "32", "--balance", "flops", "--no-progress"]  # fmt: skip

pytestmark = pytest.mark.slow


def _limit(seconds: float) -> float:
    """``seconds`` on an idle machine, stretched by how oversubscribed this one is (other jobs' load)."""
    return seconds * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def _local_json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _agents_and_local(capsys, command: list[str], local_argv: list[str], **options) -> tuple[list, dict]:
    """The torchrun agents of ``command`` and, while they run, ``local_argv`` in this process: both results."""
    started = agents(command, **options)
    try:
        local = _local_json(capsys, local_argv)
    finally:
        run = finish(started)
    return run, local


def test_solve_on_two_agents_equals_two_local_processes(capsys) -> None:
    command = ["solve", "heat1d", "--levels", "3", "--json"]
    run, local = _agents_and_local(capsys, command, [*command, "--nproc", "2"])
    assert [a.proc.returncode for a in run] == [0, 0], run[0].stderr[-2000:]
    remote = json_result(run)
    assert remote["world_size"] == local["world_size"] == 2
    assert remote["iterations"] == local["iterations"]
    assert remote["residuals"] == pytest.approx(local["residuals"], rel=1e-12, abs=0)


def test_mgrit_train_on_two_agents_equals_two_local_processes(tmp_path, capsys) -> None:
    command = ["mgrit-train", "xor", "--steps", "40", "--cycle", "V", "--no-predict", "--json"]
    run, local = _agents_and_local(capsys, [*command, "--out", str(tmp_path / "agents")],
                                   [*command, "--nproc", "2", "--out", str(tmp_path / "local")])
    assert [a.proc.returncode for a in run] == [0, 0], run[0].stderr[-2000:] + run[1].stderr[-2000:]
    assert "MGRIT" not in run[1].stdout  # rank 0 reports, once
    remote = json_result(run)
    assert remote["world_size"] == local["world_size"] == 2
    assert remote["iterations"] == local["iterations"]
    assert remote["residuals"] == pytest.approx(local["residuals"], rel=1e-12)
    ours = torch.load(tmp_path / "agents" / "model.pt", weights_only=True)
    theirs = torch.load(tmp_path / "local" / "model.pt", weights_only=True)
    assert max(float((ours[k] - theirs[k]).abs().max()) for k in ours) <= 1e-12


def test_layer_parallel_train_on_two_agents_equals_two_local_processes(tmp_path, capsys) -> None:
    command = ["layer-parallel", "train", "--arch", "mlp", "--width", "6", "--layers", "8", "--levels", "2", "--cf",
               "2", "--batch", "256", "--epochs", "1", "--no-progress", "--no-serial", "--json"]
    run, local = _agents_and_local(capsys, [*command, "--out", str(tmp_path / "agents")],
                                   [*command, "--nproc", "2", "--out", str(tmp_path / "local")])
    assert [a.proc.returncode for a in run] == [0, 0], run[0].stderr[-2000:] + run[1].stderr[-2000:]
    assert "[layer-parallel] epoch" not in run[1].stdout  # rank 0 reports, once
    remote = json_result(run)
    assert remote["world_size"] == local["world_size"] == 2
    assert remote["final_loss"] == pytest.approx(local["final_loss"], rel=1e-6)
    ours, theirs = (json.loads((tmp_path / name / "metrics.json").read_text())["batch_losses"]
                    for name in ("agents", "local"))
    assert len(ours) == 6 and ours == pytest.approx(theirs, rel=1e-6)


def test_paranet_on_two_agents_with_an_elastic_restart_ends_as_the_uninterrupted_run(tmp_path, capsys) -> None:
    """Rank 1 is SIGKILLed in epoch 2; torchrun restarts both agents' workers, which resume from epoch 1."""
    run, local = _agents_and_local(capsys, ["paranet", "train", *TINY, "--epochs", "2", "--out", str(tmp_path / "agents"),
                                            "--json", "--inject-fault", "kill:2:2:1"],
                                   ["paranet", "train", *TINY, "--epochs", "2", "--nproc", "2", "--json",
                                    "--out", str(tmp_path / "local")], max_restarts=1)
    assert [a.proc.returncode for a in run] == [0, 0], run[0].stderr[-3000:] + run[1].stderr[-3000:]
    out = "".join(a.stdout for a in run)
    assert "resumed from" in out and "epoch_0001 (epoch 1 of 2)" in out, out
    remote = json_result(run)
    assert remote["world_size"] == local["world_size"] == 2
    history = [json.loads((tmp_path / name / "metrics.json").read_text())["runs"]["paranet"]["history"]
               for name in ("agents", "local")]
    for key in ("train_loss", "test_loss"):
        assert history[0][0][key] == pytest.approx(history[1][0][key], rel=1e-6)
    a = torch.load(tmp_path / "agents" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "local" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # deterministic: bitwise


def test_paranet_replicas_on_two_agents_of_two_processes(tmp_path, capsys) -> None:
    command = ["paranet", "train", *TINY, "--epochs", "1", "--json"]
    run, local = _agents_and_local(capsys, [*command, "--replicas", "2", "--out", str(tmp_path / "agents")],
                                   [*command, "--replicas", "2", "--out", str(tmp_path / "local")], nproc_per_node=2)
    assert [a.proc.returncode for a in run] == [0, 0], run[0].stderr[-3000:]
    remote = json_result(run)
    assert remote["world_size"] == local["world_size"] == 4
    assert remote["final_loss"] == pytest.approx(local["final_loss"], rel=1e-6)
    assert remote["test_accuracy"] == local["test_accuracy"]


def _wait_for_workers(run, count: int, timeout: float = 120) -> list[int]:
    """The agents' worker processes, once ``count`` of them run."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        workers = [p for a in run for p in descendants(a.proc.pid)]
        if len(workers) >= count:
            return workers
        time.sleep(0.2)
    raise AssertionError("the workers did not start")


def _everything_gone(run, workers: list[int], within: float) -> float:
    pids = [a.proc.pid for a in run] + workers
    start = time.monotonic()
    while any(alive(p) for p in pids) and time.monotonic() - start < within + 5:
        time.sleep(0.05)
    left = [p for p in pids if alive(p)]
    assert not left, f"still running (orphans): {left}"
    return time.monotonic() - start


def test_a_dead_rank_without_restarts_stops_every_process_within_5_s_and_is_named(tmp_path) -> None:
    run = agents(["paranet", "train", *TINY, "--epochs", "20", "--out", str(tmp_path / "run"),
                  "--inject-fault", "kill:3:1:1"])
    workers = _wait_for_workers(run, 2)
    start = time.monotonic()
    while all(alive(p) for p in workers):  # until the fault kills rank 1
        if time.monotonic() - start > 180:
            for agent in run:
                agent.proc.kill()
            finish(run)
            raise AssertionError(f"the fault never fired: {workers} {[a.stdout[-500:] + a.stderr[-1500:] for a in run]}")
        time.sleep(0.02)
    limit = _limit(5.0)
    assert _everything_gone(run, workers, within=limit) < limit
    finish(run)
    err = "".join(a.stderr for a in run)
    ours = [line for line in err.splitlines() if "torchpint" in line or "rank" in line.lower()]  # (for a failure)
    assert "torchpint: error: rank 0 stopped: rank 1 on node" in err and "failed or died" in err, "\n".join(ours[-40:])
    assert all(a.proc.returncode != 0 for a in run)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signal_to_an_agent_stops_every_process_within_5_s(tmp_path, sig) -> None:
    """SIGTERM: torchrun stops its worker; SIGKILL: the worker sees its agent die and goes too. The
    other machine's rank then stops as for any dead rank."""
    run = agents(["paranet", "train", *TINY, "--epochs", "50", "--out", str(tmp_path / "run")])
    workers = _wait_for_workers(run, 2)
    while not (tmp_path / "run" / "paranet" / "checkpoints" / "latest").exists():  # training is under way
        time.sleep(0.1)
    run[1].proc.send_signal(sig)
    limit = _limit(5.0)
    assert _everything_gone(run, workers, within=limit) < limit
    finish(run)


def test_a_disagreeing_nproc_is_one_line_and_exit_2_on_every_rank() -> None:
    """Each rank of a torchrun world of 2 (its environment; torchrun's own parser takes ``--nproc`` for
    its ``--nproc-per-node``) refuses ``--nproc 3`` alike, before any process group forms."""
    import os
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-m", "torchpint", "solve", "dahlquist", "--nproc", "3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1", "TORCHELASTIC_RUN_ID": "t"})
             for r in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2
        assert err == "torchpint: error: --nproc 3 disagrees with torchrun's world size 2 (under torchrun the world size " \
                      "comes from --nnodes x --nproc-per-node; drop --nproc)\n", err
