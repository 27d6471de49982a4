"""``mgrit-train`` under two torchrun agents (two "machines" on 127.0.0.1, c10d rendezvous) is the
``--nproc 2`` run on one machine: the same iterations and weights (to 1e-12), world_size 2."""

import json

import pytest
import torch

from torchpint.cli.main import main
from torchpint.testing.torchrun import torchrun_agents

ARGS = ["mgrit-train", "xor", "--steps", "40", "--cycle", "V", "--no-predict", "--json"]


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_two_agents_give_the_two_process_result(capsys, tmp_path) -> None:
    assert main([*ARGS, "--nproc", "2", "--out", str(tmp_path / "local")]) == 0
    local = last_json(capsys.readouterr().out)
    agents = torchrun_agents([*ARGS, "--out", str(tmp_path / "agents")], nnodes=2)
    for agent in agents:
        assert agent.returncode == 0, agent.stderr[-2000:]
    remote = last_json(agents[0].stdout)
    assert "MGRIT" not in agents[1].stdout  # rank 0 reports, once
    assert remote["world_size"] == local["world_size"] == 2
    assert remote["iterations"] == local["iterations"]
    assert remote["residuals"] == pytest.approx(local["residuals"], rel=1e-12)
    ours = torch.load(tmp_path / "agents" / "model.pt", weights_only=True)
    theirs = torch.load(tmp_path / "local" / "model.pt", weights_only=True)
    assert max(float((ours[k] - theirs[k]).abs().max()) for k in ours) <= 1e-12
