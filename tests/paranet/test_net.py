"""ParaNet construction, the parareal forward pass, shapes, splitting and bad input."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from torchpint.models import mlp, preact_resnet, resnet1d, vgg16
from torchpint.paranet import ParaNet, balanced_split
from torchpint.paranet.net import active_iterations
from torchpint.paranet.split import PhaseCost, makespan_split, model_step

CASES = [
    ("resnet", lambda: preact_resnet(20, base_width=4), (3, 8, 8)),
    ("vgg", lambda: vgg16(width=8), (3, 32, 32)),
    ("resnet1d", lambda: resnet1d(num_blocks=5, channels=8), (1, 40)),
    ("mlp", lambda: mlp(12, hidden=8, depth=5), (12,)),
]


def _randomize_coarse(net: ParaNet) -> None:
    """New coarse networks start as their shortcut; perturb them so that they really differ from F."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.coarse_nets.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize(("name", "make", "shape"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_k_equal_n_reproduces_the_torn_network(name, make, shape, n) -> None:
    torch.manual_seed(0)
    original = make()
    x = torch.randn(4, *shape)
    original.eval()
    with torch.no_grad():
        expected = original(x)
    net = ParaNet(original, n, input_shape=shape, iterations=n)
    _randomize_coarse(net)
    for training in (False, True):  # eval first: train mode moves the batch-norm statistics
        net.train(training)
        with torch.no_grad():
            torn = net.forward_torn(x)
            out = net(x)
        if not training:
            torch.testing.assert_close(torn, expected, rtol=0, atol=0)  # the torn network is the original
        torch.testing.assert_close(out, torn, rtol=1e-5, atol=1e-5 * float(torn.abs().max()))


def test_k1_is_the_formula_of_methods_section_4() -> None:
    """u_j = C_j(u_{j-1}); y_j = F_j(u_{j-1}); lam_j = y_j + C_j(lam_{j-1}) - C_j(u_{j-1}); Q(lam_N)."""
    torch.manual_seed(0)
    net = ParaNet(preact_resnet(20, base_width=4), 3, input_shape=(3, 8, 8)).eval()
    _randomize_coarse(net)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        f, c = net.fine_subnets, net.coarse_nets
        u = [net.stem(x)]
        for j in range(1, 3):
            u.append(c[j - 1](u[j - 1]))
        y = [f[j](u[j]) for j in range(3)]
        lam = [u[0]]
        for j in range(1, 4):
            lam.append(y[j - 1] + c[j - 1](lam[j - 1]) - c[j - 1](u[j - 1]))
        expected = net.head(lam[3])
        torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-6)


def test_k_iterations_converge_to_the_torn_network() -> None:
    torch.manual_seed(0)
    net = ParaNet(mlp(12, hidden=8, depth=6), 4, input_shape=(12,))
    _randomize_coarse(net)
    x = torch.randn(8, 12)
    errors = []
    with torch.no_grad():
        torn = net.forward_torn(x)
        for k in range(1, 5):
            net.iterations = k
            errors.append(float((net(x) - torn).abs().max()))
    assert errors[-1] < 1e-5 * float(torn.abs().max())
    assert errors[0] > 1e-3  # K = 1 really is an approximation


def test_only_needed_sub_networks_run() -> None:
    assert active_iterations(0, 4, 1) == [0] and active_iterations(3, 4, 1) == [0]
    assert active_iterations(3, 4, 3) == [2] and active_iterations(0, 3, 3) == [0, 1, 2]
    assert active_iterations(2, 3, 3) == [2]


def test_several_devices_in_one_process_give_the_same_values() -> None:
    torch.manual_seed(0)
    net = ParaNet(preact_resnet(20, base_width=4), 3, input_shape=(3, 8, 8))
    _randomize_coarse(net)
    x = torch.randn(4, 3, 8, 8)
    ref = net(x)
    ref.sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad()
    net.to_devices(["cpu", "cpu", "cpu"])  # one thread per sub-network
    assert net._pool is not None
    out = net(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for n, g in ref_grads.items():
        torch.testing.assert_close(dict(net.named_parameters())[n].grad, g, rtol=1e-5, atol=1e-5 * float(g.abs().max()))


def test_from_sequential_with_split_points() -> None:
    torch.manual_seed(0)
    seq = nn.Sequential(
        nn.Linear(6, 8), *(nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(5)), nn.Linear(8, 3)
    )
    net = ParaNet.from_sequential(seq, [3, 5], input_shape=(6,), stem=1, head=1, iterations=3)
    assert net.bounds == [0, 2, 4, 5]
    assert [len(f) for f in net.fine_subnets] == [2, 2, 1]
    x = torch.randn(5, 6)
    with torch.no_grad():
        torch.testing.assert_close(net(x), seq(x), rtol=1e-5, atol=1e-6)


def test_plain_sequential_is_all_blocks() -> None:
    seq = nn.Sequential(*(nn.Linear(4, 4) for _ in range(4)))
    net = ParaNet(seq, 2, input_shape=(4,), balance="blocks")
    assert net.bounds == [0, 2, 4]


def test_shape_mismatch_names_the_sub_network_and_both_shapes() -> None:
    from torchpint.paranet import ConvCoarse

    def wrong(in_shape, out_shape):  # right for sub-network 1, keeps the input shape elsewhere
        return ConvCoarse(in_shape, out_shape) if in_shape[0] == 4 else nn.Identity()

    with pytest.raises(ValueError) as err:
        ParaNet(preact_resnet(20, base_width=4), 3, input_shape=(3, 8, 8), split_points=[2, 4], coarse=wrong)
    msg = str(err.value)
    assert "sub-network 2 (blocks 2..3)" in msg and "to (32, 4, 4)" in msg and "to (16, 8, 8)" in msg, msg
    seq = nn.Sequential(nn.Linear(4, 4), nn.Linear(5, 4))
    with pytest.raises(ValueError, match=r"layer 1 \(Linear\) cannot take input of shape \(4,\)"):
        ParaNet(seq, 2, input_shape=(4,))


@pytest.mark.parametrize(
    ("n", "k", "match"),
    [(0, 1, "N must be >= 1"), (-2, 1, "N must be >= 1"), (7, 1, "larger than the model's 6 blocks"), (2, 0, "K must be >= 1")],
)
def test_bad_n_and_k(n, k, match) -> None:
    with pytest.raises(ValueError, match=match):
        ParaNet(preact_resnet(20, base_width=4), n, input_shape=(3, 8, 8), iterations=k)


def test_bad_split_points_and_balance() -> None:
    make = lambda: preact_resnet(20, base_width=4)
    with pytest.raises(ValueError, match="strictly increasing"):
        ParaNet(make(), 3, input_shape=(3, 8, 8), split_points=[3, 3])
    with pytest.raises(ValueError, match="need 2 split points"):
        ParaNet(make(), 3, input_shape=(3, 8, 8), split_points=[3])
    with pytest.raises(ValueError, match="unknown balance"):
        ParaNet(make(), 3, input_shape=(3, 8, 8), balance="magic")


def test_balanced_split_is_optimal() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        n = int(torch.randint(1, 9, (1,), generator=gen))
        g = int(torch.randint(1, n + 1, (1,), generator=gen))
        costs = torch.rand(n, generator=gen).tolist()
        bounds = balanced_split(costs, g)
        assert len(bounds) == g + 1 and bounds[0] == 0 and bounds[-1] == n
        assert all(a < b for a, b in itertools.pairwise(bounds))
        got = max(sum(costs[a:b]) for a, b in itertools.pairwise(bounds))
        best = min(
            max(sum(costs[a:b]) for a, b in zip((0, *cuts), (*cuts, n)))
            for cuts in itertools.combinations(range(1, n), g - 1)
        )
        assert got == pytest.approx(best)
    assert balanced_split([1] * 7, 3) == [0, 2, 4, 7]  # ties leave the hub's first group lighter


def test_balance_by_flops_params_and_time_and_the_report() -> None:
    shape = (3, 32, 32)
    by_flops = ParaNet(vgg16(width=8), 3, input_shape=shape, balance="flops")
    by_params = ParaNet(vgg16(width=8), 3, input_shape=shape, balance="params")
    # VGG's parameters sit at the end, its FLOPs at the start: the splits differ
    assert by_flops.bounds != by_params.bounds
    assert by_params.balance().measure == "params"
    assert by_flops.balance().imbalance <= ParaNet(vgg16(width=8), 3, input_shape=shape, balance="blocks").balance(
        "flops").imbalance + 1e-9
    by_time = ParaNet(preact_resnet(20, base_width=4), 2, input_shape=(3, 8, 8), balance="time")
    assert by_time.balance().measure == "time" and by_time.balance().imbalance >= 1.0
    info = by_flops.info()
    assert info["split_points"] == by_flops.bounds[1:-1]
    assert info["balance"]["measure"] == "flops" and len(info["balance"]["shares"]) == 3
    assert [s["in_shape"] for s in info["subnetworks"]] == [list(s) for s in by_flops.interface_shapes[:-1]]
    assert all(0 < s["coarse_flop_fraction"] < 0.2 for s in info["subnetworks"])
    assert info["total_params"] == sum(p.numel() for p in by_flops.parameters())
    text = by_flops.format_info()
    assert "split points" in text and "balance by flops" in text and "coarse/sub" in text


def test_model_step_follows_the_schedule() -> None:
    """Forward and backward each wait for the slowest rank; the hub also runs stem, head and coarse networks."""
    fwd, bwd = [1.0] * 4, [2.0] * 4
    stem, head, c = PhaseCost(0.5, 0.25), PhaseCost(0.5, 0.25), PhaseCost(0.1, 0.2)
    m = model_step([0, 2, 4], fwd, bwd, stem, head, lambda a, b: c)
    # forward: stem, C_1, then F_1 + C_2(U^0_1) + C_2(y_1) on the hub against F_2 on rank 1, head
    assert m.forward == pytest.approx(0.5 + 0.1 + max(2 + 0.1 + 0.1, 2) + 0.5)
    # backward: head, C_2 twice and F_1 on the hub against F_2 on rank 1 (it starts after the head), C_1, stem
    assert m.backward == pytest.approx(0.25 + max(0.2 + 0.2 + 4, 4) + 0.2 + 0.25)
    assert m.busy == pytest.approx((0.75 + 0.75 + 6 + 3 * 0.3, 6))
    assert m.original == pytest.approx(13.5) and m.speedup == pytest.approx(13.5 / m.step)
    # a link delays rank 1's start, its output, its gradient and the hub's gradient
    slow = model_step([0, 2, 4], fwd, bwd, stem, head, lambda a, b: c, link=lambda i: 1.0)
    assert slow.forward == pytest.approx(0.5 + 0.1 + max(2.2, 1 + 2 + 1) + 0.5)
    assert slow.backward == pytest.approx(0.25 + max(4.4, 1 + 4 + 1) + 0.2 + 0.25)


def test_makespan_split_minimizes_the_modelled_step() -> None:
    gen = torch.Generator().manual_seed(0)
    stem, head = PhaseCost(0.05, 0.05), PhaseCost(0.02, 0.03)

    def coarse(a: int, b: int) -> PhaseCost:
        return PhaseCost(0.02 * (b - a), 0.01 * a)

    for _ in range(20):
        n = int(torch.randint(3, 10, (1,), generator=gen))
        fwd, bwd = torch.rand(n, generator=gen).tolist(), torch.rand(n, generator=gen).tolist()

        def step(bs: list[int], fwd: list[float] = fwd, bwd: list[float] = bwd) -> float:
            return model_step(bs, fwd, bwd, stem, head, coarse).step

        two = makespan_split(fwd, bwd, 2, stem, head, coarse)
        assert step(two) == pytest.approx(min(step([0, p, n]) for p in range(1, n)))  # exact for N = 2
        three = makespan_split(fwd, bwd, 3, stem, head, coarse)
        assert len(three) == 4 and all(a < b for a, b in itertools.pairwise(three))
        assert step(three) <= step(balanced_split([f + b for f, b in zip(fwd, bwd)], 3)) + 1e-12


def test_time_balance_reports_the_modelled_step_and_leaves_the_weights_alone() -> None:
    torch.manual_seed(0)
    by_time = ParaNet(preact_resnet(20, base_width=4), 2, input_shape=(3, 8, 8), balance="time")
    torch.manual_seed(0)
    given = ParaNet(preact_resnet(20, base_width=4), 2, input_shape=(3, 8, 8), split_points=by_time.bounds[1:-1])
    # measuring the coarse networks draws no random numbers: every rank builds the same weights
    for (name, a), (_, b) in zip(by_time.state_dict().items(), given.state_dict().items()):
        assert torch.equal(a, b), name
    model = by_time.info()["step_model"]  # rounded to microseconds
    assert model["step_s"] == pytest.approx(model["forward_s"] + model["backward_s"], abs=2e-6)
    assert len(model["busy_s"]) == 2 and max(model["busy_s"]) <= model["step_s"] + 1e-6
    assert model["speedup"] > 0 and "modelled step on 2 workers" in by_time.format_info()
    assert given.info()["step_model"] is None


def test_coarse_resampling_by_average_pooling_equals_adaptive_pooling() -> None:
    """An exact size ratio takes plain average pooling (faster); the values are adaptive pooling's, bitwise."""
    from torchpint.paranet.coarse import ConvCoarse

    torch.manual_seed(0)
    for in_shape, out_shape in [((4, 16, 16), (8, 8, 8)), ((4, 12), (8, 4)), ((4, 9, 9), (4, 4, 4))]:
        coarse = ConvCoarse(in_shape, out_shape)
        x = torch.randn(3, *in_shape)
        fast = coarse(x)
        kernel, coarse.pool_kernel = coarse.pool_kernel, None
        assert (kernel is None) == (in_shape[1] % out_shape[1] != 0)
        assert torch.equal(fast, coarse(x))


# ---------------------------------------------------------------- a user's own nn.Sequential
class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.Tanh())

    def forward(self, x):
        return x + self.body(x)


def _user_cnn(blocks: int = 6) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         *(_Residual(8) for _ in range(blocks)), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def test_stem_conv_and_linear_head_of_a_sequential_are_detected_not_torn() -> None:
    torch.manual_seed(0)
    net = ParaNet(_user_cnn(), 2, input_shape=(1, 8, 8))
    info = net.info()
    assert info["parts"]["stem"] == {"layers": [0, 2], "count": 3, "types": ["Conv2d", "BatchNorm2d", "ReLU"],
                                     "chosen": "detected"}
    assert info["parts"]["head"]["types"] == ["AdaptiveAvgPool2d", "Flatten", "Linear"]
    assert info["num_blocks"] == 6 and info["interface_shapes"] == [[8, 8, 8]] * 3
    assert "stem: layers 0..2 (Conv2d, BatchNorm2d, ReLU), detected" in net.format_info()
    # torn as blocks (the old behaviour, still there with stem=0, head=0) the coarse networks bridge
    # the image and the logits: many times the parameters of the detected split's
    torn = ParaNet(_user_cnn(), 2, input_shape=(1, 8, 8), stem=0, head=0)
    assert torn.info()["parts"]["stem"]["chosen"] == "given"
    assert torn.info()["coarse_param_fraction"] > 5 * info["coarse_param_fraction"]
    # K = N is the original network, stem and head included
    x = torch.randn(4, 1, 8, 8)
    seq = _user_cnn().eval()
    exact = ParaNet(seq, 3, input_shape=(1, 8, 8), iterations=3).eval()
    with torch.no_grad():
        torch.testing.assert_close(exact(x), nn.Sequential(*seq)(x), rtol=1e-5, atol=1e-6)


def test_mlp_sequential_keeps_its_first_and_last_linear() -> None:
    seq = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), *(nn.Linear(8, 8) for _ in range(4)), nn.ReLU(), nn.Linear(8, 3))
    parts = ParaNet(seq, 2, input_shape=(12,)).info()["parts"]
    assert parts["stem"]["count"] == 2 and parts["head"]["types"] == ["ReLU", "Linear"]


def test_split_point_errors_quote_the_users_indices() -> None:
    seq = _user_cnn()  # blocks are layers 3..8
    with pytest.raises(ValueError) as err:
        ParaNet(seq, 3, input_shape=(1, 8, 8), split_points=[2, 9])
    msg = str(err.value)
    assert "got [2, 9]" in msg and "inside 4..8" in msg and "layers 3..8" in msg, msg
    with pytest.raises(ValueError, match=r"got \[5, 5\]"):
        ParaNet.from_sequential(seq, [5, 5], input_shape=(1, 8, 8))
    net = ParaNet(seq, 3, input_shape=(1, 8, 8), split_points=[5, 7])
    assert net.bounds == [0, 2, 4, 6] and net.info()["layer_split_points"] == [5, 7]
    with pytest.raises(ValueError, match="leave no blocks"):
        ParaNet(seq, 2, input_shape=(1, 8, 8), stem=6, head=6)
    with pytest.raises(ValueError, match="for an nn.Sequential"):
        ParaNet(preact_resnet(20, base_width=4), 2, input_shape=(3, 8, 8), stem=1)


@pytest.mark.parametrize("balance", ["flops", "time"])
def test_float64_model_works(balance: str) -> None:
    torch.manual_seed(0)
    seq = _user_cnn().double().eval()
    net = ParaNet(seq, 2, input_shape=(1, 8, 8), iterations=2, balance=balance).eval()
    assert all(p.dtype == torch.float64 for p in net.parameters())  # the coarse networks too
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    out = net(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, nn.Sequential(*seq)(x), rtol=1e-12, atol=1e-12)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float64 for p in net.fine_subnets.parameters())
