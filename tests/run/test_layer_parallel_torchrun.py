"""``layer-parallel train`` under two torchrun agents (two "machines" on 127.0.0.1, c10d rendezvous)
is the ``--nproc 2`` run on one machine: the same losses after one small epoch, world_size 2."""

import json

import pytest

from torchpint.cli.main import main
from torchpint.testing.torchrun import torchrun_agents

ARGS = ["layer-parallel", "train", "--arch", "mlp", "--width", "6", "--layers", "8", "--levels", "2", "--cf", "2",
        "--batch", "256", "--epochs", "1", "--no-progress", "--no-serial", "--json"]


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_two_agents_give_the_two_process_result(capsys, tmp_path) -> None:
    assert main([*ARGS, "--nproc", "2", "--out", str(tmp_path / "local")]) == 0
    local = last_json(capsys.readouterr().out)
    agents = torchrun_agents([*ARGS, "--out", str(tmp_path / "agents")], nnodes=2)
    for agent in agents:
        assert agent.returncode == 0, agent.stderr[-2000:]
    remote = last_json(agents[0].stdout)
    assert remote["world_size"] == local["world_size"] == 2
    assert remote["final_loss"] == pytest.approx(local["final_loss"], rel=1e-6)
    ours = json.loads((tmp_path / "agents" / "metrics.json").read_text())["batch_losses"]
    theirs = json.loads((tmp_path / "local" / "metrics.json").read_text())["batch_losses"]
    assert len(ours) == 6 and ours == pytest.approx(theirs, rel=1e-6)
    # the second agent's rank was refused nothing and reported nothing: rank 0 reports once
    assert "[layer-parallel] epoch" not in agents[1].stdout
