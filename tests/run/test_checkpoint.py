"""The checkpoint format: completeness, damage named and passed over, configuration checks, safe loading."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

from torchpint.errors import ConfigError
from torchpint.run.checkpoint import CheckpointError, Checkpoints, check_config, rng_state, set_rng_state


def _two_epochs(root, parts: int = 2) -> Checkpoints:
    ckpt = Checkpoints(root)
    for epoch in (1, 2):
        for p in range(parts):
            ckpt.write_part(epoch, p, parts, {"w": torch.full((3,), float(10 * epoch + p))})
        ckpt.commit(epoch, parts, config={"lr": 0.1}, extra={"history": [epoch]})
    return ckpt


def _weight(ckpt: Checkpoints, found, part: int = 0) -> float:
    return float(ckpt.load_part(found, part)["state"]["w"][0])


def test_latest_complete_checkpoint_and_pruning(tmp_path) -> None:
    ckpt = _two_epochs(tmp_path)
    found = ckpt.find_latest()
    assert found.index == 2 and found.notes == [] and found.extra["history"] == [2]
    assert _weight(ckpt, found, 1) == 21.0
    ckpt.write_part(3, 0, 2, {"w": torch.zeros(3)})
    assert ckpt.find_latest().index == 2  # the pointer is the commit point
    with pytest.raises(RuntimeError, match="lacks the parts of processes \\[1\\]"):
        ckpt.commit(3, 2, config={})
    ckpt.write_part(3, 1, 2, {"w": torch.zeros(3)})
    ckpt.commit(3, 2, config={})
    assert sorted(p.name for p in tmp_path.glob("epoch_*")) == ["epoch_0002", "epoch_0003"]  # keep=2


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda f: f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2]), "part1.pt is unreadable"),
        (lambda f: f.write_bytes(b""), "part1.pt is empty (0 bytes)"),
        (lambda f: f.write_bytes(os.urandom(4096)), "part1.pt is unreadable"),
        (lambda f: f.unlink(), "part1.pt is missing"),
    ],
)
def test_damaged_part_is_named_and_the_previous_checkpoint_used(tmp_path, damage, named) -> None:
    ckpt = _two_epochs(tmp_path)
    damage(tmp_path / "epoch_0002" / "part1.pt")
    found = ckpt.find_latest()
    assert found.index == 1 and _weight(ckpt, found, 1) == 11.0
    assert any(named in note for note in found.notes), found.notes


def test_parts_of_different_epochs_are_not_mixed(tmp_path) -> None:
    ckpt = _two_epochs(tmp_path)
    (tmp_path / "epoch_0002" / "part1.pt").write_bytes((tmp_path / "epoch_0001" / "part1.pt").read_bytes())
    found = ckpt.find_latest()
    assert found.index == 1
    assert "belongs to checkpoint 1, not 2 (parts of different epochs)" in found.notes[0]


def test_garbled_pointer_uses_the_newest_complete_folder(tmp_path) -> None:
    ckpt = _two_epochs(tmp_path)
    (tmp_path / "latest").write_bytes(b"\x00\xffgarbage")
    found = ckpt.find_latest()
    assert found.index == 2 and "latest is garbled" in found.notes[0]


def test_no_complete_checkpoint_refuses_in_one_line(tmp_path) -> None:
    ckpt = _two_epochs(tmp_path)
    for epoch in (1, 2):
        (tmp_path / f"epoch_{epoch:04d}" / "meta.pt").write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        ckpt.find_latest()
    assert "no complete checkpoint" in str(info.value) and "\n" not in str(info.value)
    assert Checkpoints(tmp_path / "none").find_latest() is None


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_file_crafted_to_run_code_is_refused_and_runs_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    ckpt = _two_epochs(tmp_path / "checkpoints")
    with open(tmp_path / "checkpoints" / "epoch_0002" / "meta.pt", "wb") as handle:
        pickle.dump({"index": 2, "parts": 2, "x": _RunsCode()}, handle)
    torch.save({"format": 1, "index": 2, "part": 0, "parts": 2, "state": {"w": _RunsCode()}, "rng": None},
               tmp_path / "checkpoints" / "epoch_0002" / "part0.pt")
    found = ckpt.find_latest()
    assert found.index == 1 and "refused unread" in found.notes[0]
    assert not (tmp_path / "pwned").exists()


def test_configuration_differences_are_named() -> None:
    check_config({"lr": 0.1, "seed": 0}, {"lr": 0.1, "seed": 0}, None, "run")
    with pytest.raises(ConfigError, match=r"lr \(0.1 there, 0.2 now\), seed \(0 there, 1 now\)"):
        check_config({"lr": 0.1, "seed": 0, "T": 2}, {"lr": 0.2, "seed": 1, "T": 3}, ["lr", "seed"], "run")


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path) -> None:
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal()  # a cached Gaussian in numpy's state
    ckpt = Checkpoints(tmp_path)
    ckpt.write_part(1, 0, 1, {})
    ckpt.commit(1, 1, config={})
    expected = (torch.rand(4), np.random.standard_normal(3), random.random(), random.gauss(0, 1))
    set_rng_state(ckpt.load_part(ckpt.find_latest(), 0)["rng"])
    again = (torch.rand(4), np.random.standard_normal(3), random.random(), random.gauss(0, 1))
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2:] == again[2:]
    assert set(rng_state()) >= {"torch", "numpy_keys", "python_mt"}
