"""Layer x data parallelism: P = P_layers x D processes give the serial network's whole-batch gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchpint.engine import ConfigError
from torchpint.engine.comm import SerialComm
from torchpint.layerpar.layout import batch_shard, layer_data_ranks
from torchpint.run.launch import run_workers
from torchpint.testing.layer_parallel import (
    CheckCase,
    layer_data_gradients,
    max_relative_difference,
    serial_gradients,
)

CASES = [
    CheckCase(layers=6, levels=1, batch=5),  # exact pass; 5 examples: unequal shards (3 + 2)
    CheckCase(layers=16, levels=3, cf=2, T=2.0, batch=4),  # converged multilevel, coarse layers borrowed
]


def test_process_grid() -> None:
    layer_groups, data_groups = layer_data_ranks(6, 2)
    assert layer_groups == [[0, 1, 2], [3, 4, 5]]  # each a whole network, consecutive ranks
    assert data_groups == [[0, 3], [1, 4], [2, 5]]  # the copies of one block of layers
    assert layer_data_ranks(4, 4) == ([[0], [1], [2], [3]], [[0, 1, 2, 3]])


@pytest.mark.parametrize(
    "world, groups, message",
    [(4, 3, "3 data-parallel groups do not divide the 4 processes"), (4, 0, "must be >= 1")],
)
def test_groups_must_divide_the_world(world, groups, message) -> None:
    with pytest.raises(ConfigError, match=message):
        layer_data_ranks(world, groups)


class DataRank(SerialComm):
    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size


def test_batch_shards() -> None:
    batch = torch.arange(5)
    shards = [batch_shard(batch, DataRank(d, 2)) for d in range(2)]
    assert [s.tolist() for s, _ in shards] == [[0, 1, 2], [3, 4]] and [w for _, w in shards] == [0.6, 0.4]
    with pytest.raises(ConfigError, match="a batch of 2 examples cannot be split over 3 data-parallel groups"):
        batch_shard(torch.zeros(2, 3), DataRank(0, 3))


@pytest.mark.slow
def test_layers_x_data_equals_the_serial_whole_batch() -> None:
    ranks = run_workers(layer_data_gradients, 4, (CASES, 2), timeout_s=240)
    for c, case in enumerate(CASES):
        ref = serial_gradients(case)
        bound = 1e-12 if case.levels == 1 else 1e-6
        by_group: dict[int, list[dict]] = {}
        for rank in ranks:
            by_group.setdefault(rank[c]["data_group"], []).append(rank[c])
        assert sorted(by_group) == [0, 1]
        leads = [next(r for r in by_group[d] if r["rank"] == 0) for d in (0, 1)]
        out = np.concatenate([lead["out"] for lead in leads])
        x_grad = np.concatenate([lead["x_grad"] for lead in leads])
        assert max_relative_difference(out, ref["out"]) <= bound
        assert max_relative_difference(x_grad, ref["x_grad"]) <= bound
        for d, members in by_group.items():  # every data group's copy holds the whole batch's gradient
            merged = {n: g for r in members for n, g in r["grads"].items()}
            assert sorted(merged) == sorted(ref["grads"]), (case, d)
            assert not any(r["foreign_grads"] for r in members)
            worst = max(max_relative_difference(merged[n], ref["grads"][n]) for n in merged)
            assert worst <= bound, (case, d, worst)
        for n in by_group[0][0]["grads"]:  # the copies are bit-identical, so they stay in step
            assert np.array_equal(by_group[0][0]["grads"][n], by_group[1][0]["grads"][n])
