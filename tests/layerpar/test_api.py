"""The module's API: serial equivalent, ownership, replicas, bad input, non-finite values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchpint.engine import ConfigError
from torchpint.layerpar import (
    LayerParallel,
    NonFiniteActivationError,
    ResidualStep,
    plan_layout,
)
from torchpint.testing.layer_parallel import CheckCase, build_check_network, check_data


def mlp(width: int = 4):
    return lambda: nn.Sequential(nn.Linear(width, width), nn.Tanh())


class FakeComm:
    """Only what construction looks at: a rank in a bigger world."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size


def test_to_sequential_shares_weights_and_computes_the_same() -> None:
    torch.manual_seed(0)
    net = LayerParallel(mlp(), 8, T=2.0, opening=nn.Linear(3, 4), closing=nn.Linear(4, 2), levels=2, cf=2).double()
    seq = net.to_sequential()
    assert isinstance(seq[1], ResidualStep) and seq[1].layer is net.layers[0] and seq[1].h == 0.25
    assert len(seq) == 10 and seq[0] is net.opening and seq[-1] is net.closing
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(net(x), seq(x), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        net.layers[3][0].weight.add_(1.0)  # shared: the serial network sees the change
    torch.testing.assert_close(net(x), seq(x), rtol=1e-12, atol=1e-12)


def test_layout_ownership_and_replicas() -> None:
    layout = plan_layout(12, 3, 2, 3)  # blocks of layers [0,4) [4,8) [8,12], rank 2 also owns point 12
    assert layout.ranges == ((0, 4), (4, 8), (8, 13))
    assert [list(layout.owned_layers(r)) for r in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    # Forward steps into a rank's first point on every level use the previous coarse point's layer.
    assert layout.replicas(0) == [] and layout.replicas(1) == [0, 2, 3] and layout.replicas(2) == [4, 6, 7]
    assert layout.adjoint_partition() == [(0, 5), (5, 9), (9, 13)]
    # A rank with no point on a coarse level needs nothing there.
    assert plan_layout(8, 2, 4, 3).replicas(1) == [0, 1]  # points [2, 5): coarse point 4 <- layer 0


def test_local_parameters_are_the_owned_ones() -> None:
    net = LayerParallel(mlp(), 8, opening=nn.Linear(3, 4), closing=nn.Linear(4, 2), comm=FakeComm(1, 2))
    assert list(net.owned_layers) == [4, 5, 6, 7]
    mine = {id(p) for p in net.local_parameters()}
    assert mine == {id(p) for k in range(4, 8) for p in net.layers[k].parameters()}
    first = LayerParallel(mlp(), 8, opening=nn.Linear(3, 4), closing=nn.Linear(4, 2), comm=FakeComm(0, 2))
    assert {id(p) for p in first.opening.parameters()} <= {id(p) for p in first.local_parameters()}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layers": 30, "levels": 3, "cf": 4}, r"layers=30 is not divisible as the coarsening needs.*multiple of 16"),
        ({"layers": 10, "levels": 2, "cf": 4}, r"multiple of 4 \(e.g. 8 or 12\)"),
        ({"layers": 0}, "layers must be a positive integer"),
        ({"layers": 8, "cf": 1}, "cf must be >= 2"),
        ({"layers": 8, "T": 0.0}, "T must be a finite number > 0"),
        ({"layers": 8, "relax": "X"}, "unknown relaxation"),
        ({"layers": 8, "fwd_max_iter": 0}, "fwd_max_iter must be >= 1"),
        ({"layers": 8, "bwd_tol": -1.0}, "bwd_tol must be a finite number >= 0"),
        ({"layers": 8, "step_mode": "fast"}, "step_mode must be one of"),
    ],
)
def test_bad_configuration(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        LayerParallel(mlp(), **kwargs)


def test_more_ranks_than_layers() -> None:
    with pytest.raises(ValueError, match=r"more processes \(5\) than layers \(4\)"):
        LayerParallel(mlp(), 4, levels=1, comm=FakeComm(0, 5))
    LayerParallel(mlp(), 4, levels=1, comm=FakeComm(3, 4))  # one layer each is fine


def test_step_layers_must_be_pure_and_alike() -> None:
    with pytest.raises(ConfigError, match="buffers.*running_mean"):
        LayerParallel(lambda: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), 4, levels=1)
    with pytest.raises(ConfigError, match="contains Dropout: MGRIT applies every step many times"):
        LayerParallel(lambda: nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1)), 4, levels=1)
    sizes = iter([4, 4, 5, 4])
    with pytest.raises(ConfigError, match="step layer 2 has a different architecture"):
        LayerParallel(lambda: nn.Linear(4, next(sizes)), 4, levels=1)
    net = LayerParallel(lambda: nn.Linear(4, 3), 4, levels=1)
    with pytest.raises(ValueError, match="needs f to keep the shape"):
        net(torch.randn(2, 4))


@pytest.mark.parametrize("levels", [1, 2])
def test_non_finite_activation_names_the_layer(levels) -> None:
    case = CheckCase(layers=8, levels=levels, cf=4)
    net = build_check_network(case)
    with torch.no_grad():
        net.layers[6][0].bias[1] = float("nan")
    x, _ = check_data(case)
    with pytest.raises(NonFiniteActivationError, match=r"forward pass: layer 6 \(of 8\) produced non-finite") as info:
        net(x)
    assert info.value.layer == 6


def test_non_finite_input_and_gradient() -> None:
    case = CheckCase(layers=8, levels=2, cf=2)
    net = build_check_network(case)
    x, _ = check_data(case)
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(NonFiniteActivationError, match="input of the residual layers"):
        net(bad)
    out = net(x)
    with pytest.raises(NonFiniteActivationError, match="backward pass: the gradient of the loss"):
        (out * float("nan")).sum().backward()


def test_unstable_coarse_level_is_named() -> None:
    """x' = -x^3 with h = 0.25 decays, but coarse steps of 8 h from x = 1.5 overflow: the message says so."""

    class Cubic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

        def forward(self, x):
            return -self.a * x**3

    net = LayerParallel(Cubic, 64, T=16.0, levels=2, cf=8, fwd_max_iter=3)
    x = torch.full((2, 1), 1.5, dtype=torch.float64)
    assert torch.isfinite(net.to_sequential()(x)).all()
    with pytest.raises(NonFiniteActivationError, match=r"the network is finite, but the coarse-level step with "
                                                       r"layer \d+'s weights over 8 layers \(step 2\)"):
        net(x)


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_frozen_step_parameters(mode) -> None:
    case = CheckCase(layers=4, levels=2, cf=2)
    net = build_check_network(case)
    net.step_mode = mode
    for layer in net.layers:
        layer[0].bias.requires_grad_(False)
    seq = net.to_sequential()
    x, y = check_data(case)
    ((net(x) - y) ** 2).sum().backward()
    grads = [p.grad.clone() for p in net.parameters() if p.requires_grad]
    net.zero_grad()
    ((seq(x) - y) ** 2).sum().backward()
    for a, b in zip(grads, [p.grad for p in net.parameters() if p.requires_grad]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)
    assert all(layer[0].bias.grad is None for layer in net.layers)


def test_final_relaxation_brings_a_fixed_iteration_count_closer_to_serial() -> None:
    """3 levels, 2 iterations (the setting torchbraid trains with): ending the forward solve with the
    final relaxation gives an output at least as close to the serial network's as without it."""
    errors = {}
    for final in (False, True):
        case = CheckCase(layers=64, levels=3, cf=4, width=8, T=4.0, nested=False, tol=0.0, max_iter=2, seed=3)
        net = build_check_network(case)
        net.final_relax = final
        x, _ = check_data(case)
        serial = net.to_sequential()(x)
        out = net(x)
        assert net.last_stats["forward"]["iterations"] == 2
        errors[final] = float((out - serial).detach().abs().max())
    assert 0 < errors[True] <= errors[False], errors


def test_warm_start_falls_back_to_a_cold_start_when_the_batch_changes() -> None:
    case = CheckCase(layers=16, levels=2, cf=4, T=2.0, warm_start=True, tol=1e-10)
    net = build_check_network(case)
    seq = net.to_sequential()
    for batch, warm in ((4, False), (4, True), (6, False), (4, False), (4, True)):
        x, _ = check_data(case, batch, seed=batch)
        out = net(x)
        out.sum().backward()
        assert net.last_stats["forward"]["warm"] is warm and net.last_stats["backward"]["warm"] is warm
        torch.testing.assert_close(out, seq(x), rtol=1e-8, atol=1e-10)
    with torch.no_grad():  # inference warm-starts too (and does not keep the linearisation)
        x, _ = check_data(case, 4, seed=9)
        torch.testing.assert_close(net(x), seq(x), rtol=1e-8, atol=1e-10)
        assert net.last_stats["forward"]["warm"]
