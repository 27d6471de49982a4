"""``ParaNet``: a deep network torn into parallel fine sub-networks joined by coarse networks.

Given ``D = Q o B_L o ... o B_1 o P`` (stem ``P``, blocks ``B_l``, head ``Q``),
the blocks are cut into ``N`` contiguous groups, the fine sub-networks
``F_1..F_N``, and each gets a small trainable coarse network ``C_j`` with
the same input and output shapes.  The forward pass emulates ``K`` parareal
iterations (methods.md, section 4)::

    U^0_0 = P(x);   U^0_j = C_j(U^0_{j-1})                      j = 1..N-1   (coarse sweep)
    for k = 0..K-1:
        y_j = F_j(U^k_{j-1})                                    j = 1..N     (parallel)
        U^{k+1}_0 = U^0_0
        U^{k+1}_j = y_j + C_j(U^{k+1}_{j-1}) - C_j(U^k_{j-1})    j = 1..N     (correction sweep)
    output = Q(U^K_N)

``C_j(U^k_{j-1})`` is kept from the sweep that computed it, so a forward pass
evaluates coarse networks ``K + 1`` times per interface, as parareal does;
``C_1`` cancels in every correction (``U^k_0`` never changes), so
``U^{k+1}_1 = y_1`` is used directly.  With ``K = N`` the output equals the
torn network ``Q o F_N o ... o F_1 o P`` (the original) up to rounding.

Execution: the fine sub-networks of one iteration are independent, so they
run one per device here (threads, and CUDA streams on GPUs), or one per
process with :mod:`torchpint.paranet.distributed`.  Every mode evaluates the
same sweep, :meth:`ParaNet.parareal`, with a different *runner* for the
fine sub-networks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from torchpint.models.base import StemBlocksHead
from torchpint.models.counting import count_flops, count_parameters
from torchpint.paranet.coarse import CoarseFactory, coarse_factory
from torchpint.paranet.split import (
    BALANCE_MEASURES,
    Balance,
    PhaseCost,
    StepModel,
    balanced_split,
    block_costs,
    chain_phase_times,
    check_split_points,
    detect_stem_head,
    group_costs,
    makespan_split,
    model_step,
    module_placement,
)

__all__ = ["FineRunner", "ParaNet", "active_iterations", "format_info", "ideal_speedup", "parareal_sweep"]


def ideal_speedup(subnets: int, iterations: int, coarse_ratio: float) -> float:
    """Parareal's ideal speedup ``N / ((1 + K) N c + K)`` (methods.md, section 2)."""
    return subnets / ((1 + iterations) * subnets * coarse_ratio + iterations)


class FineRunner(Protocol):
    """How the fine sub-networks of one parareal iteration are evaluated.

    ``submit(k, j, u)`` hands over the input of sub-network ``j`` (0-based)
    for iteration ``k`` as soon as it is known; ``local(k)`` runs whatever
    this process computes itself; ``get(k, j)`` returns ``F_j``'s output.
    """

    def submit(self, k: int, j: int, u: Tensor) -> None: ...

    def local(self, k: int) -> None: ...

    def get(self, k: int, j: int) -> Tensor: ...


def parareal_sweep(
    coarse: nn.ModuleList | Sequence[nn.Module], n: int, iters: int, u0: Tensor, runner: FineRunner
) -> Tensor:
    """``U^K_N`` from ``u0 = P(x)``: coarse sweep, then ``iters`` fine + correction sweeps.

    Every execution mode calls this one function, so they compute the same
    values in the same order; only ``runner`` (where ``F_j`` runs) differs.
    Each interface value is submitted to its sub-network as soon as it is
    computed, and each fine output is fetched only when the correction
    sweep needs it, so communication overlaps with the coarse work.
    """
    m = n - iters
    # Only what reaches U^K_N is computed: U^k_j is needed iff j <= m + k (m = N - K), so
    # F_{r+1} runs in iteration k iff r <= m + k and C_j(U^k_{j-1}) is needed iff j <= m + k + 1.
    # With K = 1 that is everything; larger K drops the values parareal has already made exact.
    u = [u0]
    if m >= 0:
        runner.submit(0, 0, u0)
    old_c: dict[int, Tensor] = {}  # old_c[j] = C_j(U^k_{j-1})
    for j in range(1, min(n - 1, m + 1) + 1):  # coarse sweep U^0_j = C_j(U^0_{j-1})
        c = coarse[j - 1](u[j - 1])
        old_c[j] = c
        if j > m:
            break
        u.append(c)
        if j <= m:
            runner.submit(0, j, c)
    if 1 < n <= m + 1:  # K = 1: C_N(U^0_{N-1}), while the inputs are on their way to the sub-networks
        old_c[n] = coarse[n - 1](u[n - 1])
    runner.local(0)
    for k in range(iters):
        last = k == iters - 1
        top = min(n, m + k + 1)  # U^{k+1}_j is computed for j <= top
        new = [u0]
        new_c: dict[int, Tensor] = {}
        if top >= 1:
            new.append(runner.get(k, 0))  # U^{k+1}_1 = y_1 (C_1 cancels: U_0 never changes)
        if not last:
            if 0 <= m + k + 1:
                runner.submit(k + 1, 0, u0)
            if top >= 1 and n > 1 and 1 <= m + k + 1:
                runner.submit(k + 1, 1, new[1])
        for j in range(2, min(n, m + k + 2) + 1):
            c = coarse[j - 1](new[j - 1])
            new_c[j] = c
            if j > top:
                break
            new.append(runner.get(k, j - 1) + c - old_c[j])
            if not last and j < n and j <= m + k + 1:
                runner.submit(k + 1, j, new[j])
        if not last:
            runner.local(k + 1)
        u, old_c = new, new_c
    return u[n]


def active_iterations(r: int, n: int, iters: int) -> list[int]:
    """Iterations in which sub-network ``r`` (0-based) runs: ``r <= N - K + k``."""
    return [k for k in range(iters) if r <= n - iters + k]


class SerialRunner:
    """Every sub-network in this thread, one after another (the reference)."""

    def __init__(self, fine: nn.ModuleList | Sequence[nn.Module]) -> None:
        self.fine = fine
        self.inputs: dict[tuple[int, int], Tensor] = {}
        self.outputs: dict[tuple[int, int], Tensor] = {}

    def submit(self, k: int, j: int, u: Tensor) -> None:
        self.inputs[k, j] = u

    def local(self, k: int) -> None:
        for j, f in enumerate(self.fine):
            if (k, j) in self.inputs:
                self.outputs[k, j] = f(self.inputs.pop((k, j)))

    def get(self, k: int, j: int) -> Tensor:
        return self.outputs.pop((k, j))


class DeviceRunner:
    """One thread per sub-network, each on its own device (and CUDA stream).

    The input is copied to the sub-network's device on that sub-network's
    stream after an event recorded on the hub's stream, so the copy waits
    only for what produced it; the output comes back on the hub stream.
    Autograd records the streams, so the backward pass of each sub-network
    runs on the stream its forward used (and, for several GPUs, in the
    engine's per-device threads), overlapping as the forward did.
    """

    def __init__(self, net: ParaNet, pool: ThreadPoolExecutor) -> None:
        self.net = net
        self.pool = pool
        self.hub = net.devices[0]
        self.futures: dict[tuple[int, int], Future[tuple[Tensor, Any]]] = {}
        self.grad = torch.is_grad_enabled()

    def submit(self, k: int, j: int, u: Tensor) -> None:
        event = None
        if self.hub.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.hub))
        self.futures[k, j] = self.pool.submit(self._run, j, u, event)

    def _run(self, j: int, u: Tensor, event: Any) -> tuple[Tensor, Any]:
        net = self.net
        device = net.subnet_device(j)
        with torch.set_grad_enabled(self.grad):
            if device.type != "cuda":
                return net.fine_subnets[j](u.to(device)), None
            stream = net._streams[j]
            with torch.cuda.device(device), torch.cuda.stream(stream):
                if event is not None:
                    stream.wait_event(event)
                x = u.to(device, non_blocking=True)
                if x is u:
                    u.record_stream(stream)
                y = net.fine_subnets[j](x)
                done = torch.cuda.Event()
                done.record(stream)
            return y, done

    def local(self, k: int) -> None:
        pass

    def get(self, k: int, j: int) -> Tensor:
        y, done = self.futures.pop((k, j)).result()
        if done is None:
            out: Tensor = y.to(self.hub)
            return out
        hub_stream = torch.cuda.current_stream(self.hub)
        hub_stream.wait_event(done)
        out = y.to(self.hub, non_blocking=True)
        if out is y:
            y.record_stream(hub_stream)
        return out


def _shape_of(t: Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape[1:])


def chain_shapes(modules: Sequence[nn.Module], input_shape: tuple[int, ...], unit: str) -> list[tuple[int, ...]]:
    """Sample shapes entering each module of the chain and leaving the last (dry run on 2 zeros, eval mode).

    The zeros have the modules' device and dtype, so a float64 model is probed in float64.  A
    module that fails is named by ``unit`` (``"block"``: "block 3"; ``"layer"``: "layer 3
    (Linear)"; anything else as it is) with the shape it was given.
    """
    device, dtype = module_placement(nn.ModuleList(modules))
    modes = [m.training for m in modules]
    shapes = [tuple(input_shape)]
    try:
        for m in modules:
            m.eval()
        with torch.no_grad():
            x = torch.zeros((2, *input_shape), device=device, dtype=dtype)
            for i, m in enumerate(modules):
                try:
                    x = m(x)
                except Exception as err:
                    what = {"block": f"block {i}", "layer": f"layer {i} ({type(m).__name__})"}.get(unit, unit)
                    raise ValueError(f"{what} cannot take input of shape {_shape_of(x)}: {err}") from err
                shapes.append(_shape_of(x))
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    return shapes


#: point-to-point message between two processes: latency and bandwidth measured for gloo over the
#: loopback of a 2-core machine (a 4-byte message 0.09 ms, 8 MB 3 ms); only decides near-ties of the split
LINK_LATENCY_S = 1e-4
LINK_BYTES_PER_S = 3e9


def _link_cost(block_shapes: Sequence[tuple[int, ...]], batch: int) -> Callable[[int], float]:
    """Seconds to send the float32 batch entering block ``i`` to another process."""
    return lambda i: LINK_LATENCY_S + 4 * batch * math.prod(block_shapes[i]) / LINK_BYTES_PER_S


def _coarse_cost(
    coarse: str | CoarseFactory | Sequence[nn.Module],
    width: int | None,
    block_shapes: Sequence[tuple[int, ...]],
    blocks: Sequence[nn.Module],
    batch: int,
) -> Callable[[int, int], PhaseCost]:
    """Measured cost of the coarse network of blocks ``a..b-1``, one measurement per pair of shapes.

    Ready-made coarse modules fit one split only: they count as free.  The
    probes are built under a forked RNG so that measuring never changes the
    weights the real coarse networks get afterwards (every rank must build
    the same network, and the workers get the split without measuring).
    """
    if isinstance(coarse, Sequence) and not isinstance(coarse, str):
        return lambda a, b: PhaseCost(0.0, 0.0)
    factory = coarse_factory(coarse, width)
    cache: dict[tuple[tuple[int, ...], tuple[int, ...]], PhaseCost] = {}

    def cost(a: int, b: int) -> PhaseCost:
        key = (tuple(block_shapes[a]), tuple(block_shapes[b]))
        if key not in cache:
            with torch.random.fork_rng(devices=[]):
                probe = factory(*key).to(*module_placement(blocks[a]))
            fwd, bwd = chain_phase_times([probe], key[0], batch=batch)
            cache[key] = PhaseCost(fwd[0], bwd[0])
        return cache[key]

    return cost


class ParaNet(nn.Module):
    """Parareal network built from a stem/blocks/head model or an ``nn.Sequential``.

    Args:
        model: a :class:`~torchpint.models.StemBlocksHead` (its modules are
            taken over, not copied), or an ``nn.Sequential``: its first
            ``stem`` layers are the stem, its last ``head`` layers the head,
            the layers between them the blocks.  Parameters and buffers may be
            float32 or float64 (inputs must then be float64 too).
        subnets: ``N``, the number of fine sub-networks (1..number of blocks).
        input_shape: shape of one input sample (no batch dimension), for the
            dry run that checks shapes and sizes the coarse networks.
        iterations: ``K``, parareal iterations emulated (>= 1; ``K = N`` is exact).
        split_points: where sub-networks 2..N begin (``N - 1`` increasing
            values): block indices, or for an ``nn.Sequential`` layer indices
            of the Sequential; chosen by ``balance`` if omitted.
        balance: ``flops`` (default), ``params``, ``time`` or ``blocks``.  ``time``
            measures every block's forward and backward (at ``balance_batch``)
            and the coarse networks, and splits where the modelled
            distributed step is shortest (:func:`~torchpint.paranet.split.model_step`,
            reported by :meth:`info` as ``step_model``).
        coarse: ``auto`` (conv for feature maps, linear for vectors),
            ``conv``, ``linear``, a factory ``(in_shape, out_shape) -> Module``,
            or a sequence of ``N`` ready modules.
        coarse_width: hidden width of the shipped coarse families (default:
            the smaller channel count / 8, at least 4).
        devices: optional list of devices: stem, coarse networks and head go
            to ``devices[0]``, sub-network ``j`` to ``devices[j % len]``;
            with several, the sub-networks run concurrently.
        stem, head: ``nn.Sequential`` only: how many leading / trailing
            layers are the stem / head (0: none).  ``None`` (default) detects
            them from the layers' output shapes
            (:func:`~torchpint.paranet.split.detect_stem_head`: the layers up to
            the first shape change, and the pooling / flattening / classifier
            at the end), so that a stem convolution and a Linear head are not
            torn as blocks; :meth:`info` says what was chosen.
    """

    def __init__(
        self,
        model: nn.Module,
        subnets: int = 2,
        *,
        input_shape: Sequence[int],
        iterations: int = 1,
        split_points: Sequence[int] | None = None,
        balance: str = "flops",
        coarse: str | CoarseFactory | Sequence[nn.Module] = "auto",
        coarse_width: int | None = None,
        devices: Sequence[torch.device | str] | None = None,
        balance_batch: int = 16,
        stem: int | None = None,
        head: int | None = None,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        layer_offset = 0  # split points of an nn.Sequential are its layer indices: blocks start at layer `stem`
        if isinstance(model, StemBlocksHead) and not isinstance(model, nn.Sequential):
            if stem is not None or head is not None:
                raise ValueError(f"stem= and head= are for an nn.Sequential; this {type(model).__name__} "
                                 f"has its own stem and head")
            stem_module, head_module = model.stem, model.head
            blocks = list(model.blocks)
            self.parts: dict[str, Any] = {"source": type(model).__name__}
        elif isinstance(model, nn.Sequential):
            layers = list(model)
            n_stem, n_head, self.parts = self._sequential_parts(layers, stem, head)
            layer_offset = n_stem
            stem_module = nn.Sequential(*layers[:n_stem])
            head_module = nn.Sequential(*layers[len(layers) - n_head:])
            blocks = layers[n_stem:len(layers) - n_head]
        else:
            raise TypeError(
                f"ParaNet needs a model with stem, blocks and head, or an nn.Sequential; got {type(model).__name__}"
            )
        subnets = int(subnets)
        iterations = int(iterations)
        if subnets < 1:
            raise ValueError(f"number of sub-networks N must be >= 1, got {subnets}")
        if subnets > len(blocks):
            what = "" if "layers" not in self.parts else (
                f" (layers {self.parts['blocks'][0]}..{self.parts['blocks'][1]} of the nn.Sequential; "
                f"stem: {self.parts['stem']['count']} layer(s), head: {self.parts['head']['count']})")
            raise ValueError(
                f"number of sub-networks N={subnets} is larger than the model's {len(blocks)} blocks{what}"
            )
        if iterations < 1:
            raise ValueError(f"number of parareal iterations K must be >= 1, got {iterations}")
        if balance not in BALANCE_MEASURES:
            raise ValueError(f"unknown balance measure {balance!r}; use one of {', '.join(BALANCE_MEASURES)}")
        self.subnets = subnets
        self.iterations = iterations
        self.balance_measure = balance if split_points is None else "flops"
        self.split_given = split_points is not None
        self.stem = stem_module
        self.head = head_module
        self.num_blocks = len(blocks)

        # Dry run of the original chain: every block's input shape, on the model's device.
        block_shapes = self._dry_run_blocks(blocks)
        self.block_in_shapes = block_shapes[:-1]
        self.step_model: StepModel | None = None
        if split_points is None:
            if balance == "time":
                # split where the modelled distributed step is shortest: the hub's stem, head and coarse
                # networks are part of the schedule, and forward and backward each wait for the slowest rank
                fwd, bwd = chain_phase_times([self.stem, *blocks, self.head], self.input_shape, batch=balance_batch)
                stem_cost, head_cost = PhaseCost(fwd[0], bwd[0]), PhaseCost(fwd[-1], bwd[-1])
                fwd, bwd = fwd[1:-1], bwd[1:-1]
                cost = _coarse_cost(coarse, coarse_width, block_shapes, blocks, balance_batch)
                link = _link_cost(block_shapes, balance_batch)
                bounds = makespan_split(fwd, bwd, subnets, stem_cost, head_cost, cost, link)
                self.step_model = model_step(bounds, fwd, bwd, stem_cost, head_cost, cost, link)
                costs = [f + b for f, b in zip(fwd, bwd)]
            else:
                costs = block_costs(blocks, self.block_in_shapes, balance, batch=balance_batch)
                ends = [m for m in (self.stem, self.head) if any(True for _ in m.parameters())]
                ends_shapes = [self.input_shape if m is self.stem else block_shapes[-1] for m in ends]
                # the hub (sub-network 1's process) also runs stem and head: their cost goes to its group
                offset = sum(block_costs(ends, ends_shapes, balance)) if balance != "blocks" else 0.0
                bounds = balanced_split(costs, subnets, first_offset=offset)
        else:
            if len(split_points) != subnets - 1:
                raise ValueError(f"{subnets} sub-networks need {subnets - 1} split points, got {len(split_points)}")
            unit = "layer" if "layers" in self.parts else "block"
            bounds = check_split_points(split_points, len(blocks), offset=layer_offset, unit=unit)
            costs = block_costs(blocks, self.block_in_shapes, "flops")
        self.block_costs_used = costs
        self.bounds = bounds
        self.fine_subnets = nn.ModuleList(nn.Sequential(*blocks[a:b]) for a, b in itertools.pairwise(bounds))
        self.interface_shapes = [block_shapes[b] for b in bounds]  # [in of F_1, out of F_1, ..., out of F_N]

        # Coarse networks C_1..C_N (none when N = 1: nothing to approximate).
        if subnets == 1:
            coarse_modules: list[nn.Module] = []
        elif isinstance(coarse, Sequence) and not isinstance(coarse, str):
            coarse_modules = list(coarse)
            if len(coarse_modules) != subnets:
                raise ValueError(f"{subnets} sub-networks need {subnets} coarse networks, got {len(coarse_modules)}")
        else:
            factory = coarse_factory(coarse, coarse_width)
            coarse_modules = [
                factory(self.interface_shapes[j], self.interface_shapes[j + 1]) for j in range(subnets)
            ]
        self.coarse_nets = nn.ModuleList(coarse_modules)
        # the shipped coarse networks are built in the default dtype: give them the model's (float64 models work)
        self.coarse_nets.to(*module_placement(self.fine_subnets[0]))
        self._check_coarse_shapes()

        self.devices: list[torch.device] = []
        self._pool: ThreadPoolExecutor | None = None
        self._streams: list[Any] = []
        if devices is not None:
            self.to_devices(devices)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_sequential(
        cls,
        seq: nn.Sequential,
        split_points: Sequence[int],
        *,
        input_shape: Sequence[int],
        stem: int | None = None,
        head: int | None = None,
        **kw: Any,
    ) -> ParaNet:
        """Build from an ``nn.Sequential`` with given split points: ``ParaNet(seq, len(split_points) + 1, ...)``.

        ``seq[:stem]`` is the stem and ``seq[len-head:]`` the head (detected when ``None``, see
        :class:`ParaNet`); ``split_points`` are indices into ``seq`` where sub-networks 2..N begin
        (sub-network 1 begins at ``stem``).
        """
        points = [int(p) for p in split_points]
        return cls(seq, len(points) + 1, input_shape=input_shape, split_points=points, stem=stem, head=head, **kw)

    def _sequential_parts(
        self, layers: list[nn.Module], stem: int | None, head: int | None
    ) -> tuple[int, int, dict[str, Any]]:
        """Stem and head layer counts of an ``nn.Sequential``, given or detected, and how they were chosen."""
        n = len(layers)
        for name, value in (("stem", stem), ("head", head)):
            if value is not None and not 0 <= int(value) <= n:
                raise ValueError(f"{name}={value} must be a number of layers in 0..{n} (the nn.Sequential has {n})")
        detected = (0, 0)
        if stem is None or head is None:
            shapes = chain_shapes(layers, self.input_shape, "layer")
            detected = detect_stem_head(layers, shapes)
        n_stem = detected[0] if stem is None else int(stem)
        n_head = detected[1] if head is None else int(head)
        if n_stem + n_head >= n:
            raise ValueError(
                f"stem ({n_stem} layer(s), {'detected' if stem is None else 'given'}) and head ({n_head}, "
                f"{'detected' if head is None else 'given'}) leave no blocks of the nn.Sequential's {n} layers; "
                f"pass stem= and head= (numbers of leading and trailing layers)")

        def part(a: int, b: int, given: int | None) -> dict[str, Any]:
            return {"layers": [a, b - 1] if b > a else [], "count": b - a,
                    "types": [type(m).__name__ for m in layers[a:b]], "chosen": "detected" if given is None else "given"}

        parts = {"source": "nn.Sequential", "layers": n, "stem": part(0, n_stem, stem),
                 "head": part(n - n_head, n, head), "blocks": [n_stem, n - n_head - 1]}
        return n_stem, n_head, parts

    @staticmethod
    def _param_device(module: nn.Module) -> torch.device:
        p: Tensor | None = next(module.parameters(), None)
        if p is None:
            p = next(module.buffers(), None)
        return p.device if p is not None else torch.device("cpu")

    def _dry_run_blocks(self, blocks: list[nn.Module]) -> list[tuple[int, ...]]:
        """Shapes of the stem output and of every block's output."""
        stem_shape = chain_shapes([self.stem], self.input_shape, "the stem")[1]
        return [stem_shape, *chain_shapes(blocks, stem_shape, "block")[1:]]

    def _check_coarse_shapes(self) -> None:
        """Dry run of every sub-network and coarse network; a mismatch names both shapes."""
        modules = [*self.fine_subnets, *self.coarse_nets, self.head]
        modes = [m.training for m in modules]
        try:
            for m in modules:
                m.eval()
            with torch.no_grad():
                for j, fine in enumerate(self.fine_subnets):
                    a, b = self.bounds[j], self.bounds[j + 1]
                    in_shape, out_shape = self.interface_shapes[j], self.interface_shapes[j + 1]
                    x = torch.zeros((2, *in_shape)).to(*module_placement(fine))
                    y_shape = _shape_of(fine(x))
                    if y_shape != out_shape:  # cannot happen for a chain, kept as a guard
                        raise ValueError(f"sub-network {j + 1} (blocks {a}..{b - 1}) gives {y_shape}, expected {out_shape}")
                    if not self.coarse_nets:
                        continue
                    coarse = self.coarse_nets[j]
                    try:
                        c_shape = _shape_of(coarse(x.to(self._param_device(coarse))))
                    except Exception as err:
                        raise ValueError(
                            f"coarse network {j + 1} cannot take the input of sub-network {j + 1} "
                            f"(blocks {a}..{b - 1}), shape {in_shape}: {err}"
                        ) from err
                    if c_shape != out_shape:
                        raise ValueError(
                            f"shape mismatch at sub-network {j + 1} (blocks {a}..{b - 1}): it maps {in_shape} "
                            f"to {out_shape}, but coarse network {j + 1} maps {in_shape} to {c_shape}"
                        )
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)

    # ------------------------------------------------------------------ devices
    def to_devices(self, devices: Sequence[torch.device | str]) -> ParaNet:
        """Place stem, coarse networks and head on ``devices[0]`` and sub-network j on ``devices[j % len]``."""
        devs = [torch.device(d) for d in devices]
        if not devs:
            raise ValueError("devices must not be empty")
        self.devices = devs
        self.stem.to(devs[0])
        self.head.to(devs[0])
        self.coarse_nets.to(devs[0])
        for j, f in enumerate(self.fine_subnets):
            f.to(devs[j % len(devs)])
        self._streams = []
        for j in range(self.subnets):
            d = self.subnet_device(j)
            self._streams.append(torch.cuda.Stream(device=d) if d.type == "cuda" else None)
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        concurrent = len(devs) > 1 or any(d.type == "cuda" for d in devs)
        self._pool = ThreadPoolExecutor(max_workers=self.subnets, thread_name_prefix="paranet") if concurrent else None
        return self

    def subnet_device(self, j: int) -> torch.device:
        """Device of fine sub-network ``j`` (0-based)."""
        if self.devices:
            return self.devices[j % len(self.devices)]
        return self._param_device(self.fine_subnets[j])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"] = None
        return state

    # ------------------------------------------------------------------ forward
    @property
    def K(self) -> int:
        """Number of parareal iterations."""
        return self.iterations

    def parareal(self, u0: Tensor, runner: FineRunner) -> Tensor:
        """The parareal sweep from ``u0 = P(x)`` to ``U^K_N`` (see the module docstring)."""
        return parareal_sweep(self.coarse_nets, self.subnets, self.iterations, u0, runner)

    def _runner(self) -> FineRunner:
        if self._pool is not None and self.devices:
            return DeviceRunner(self, self._pool)
        return SerialRunner(self.fine_subnets)

    def forward(self, x: Tensor) -> Tensor:
        """The parareal network's output ``Q(U^K_N)``."""
        if self.devices:
            x = x.to(self.devices[0])
        out: Tensor = self.head(self.parareal(self.stem(x), self._runner()))
        return out

    def forward_torn(self, x: Tensor) -> Tensor:
        """The torn (original) network ``Q(F_N(...F_1(P(x))))``, serially."""
        if self.devices:
            x = x.to(self.devices[0])
        h = self.stem(x)
        for j, f in enumerate(self.fine_subnets):
            h = f(h.to(self.subnet_device(j)))
        if self.devices:
            h = h.to(self.devices[0])
        out: Tensor = self.head(h)
        return out

    # ------------------------------------------------------------------ reporting
    def owned_names(self, part: int) -> list[str]:
        """Names (parameters and buffers) held by process ``part`` in distributed mode.

        Part 0 (the hub) holds the stem, the coarse networks, the head and
        sub-network 1; part ``j`` holds sub-network ``j + 1`` only.
        """
        names = [n for n, _ in self.named_parameters()] + [n for n, _ in self.named_buffers()]
        if part == 0:
            return [n for n in names if not n.startswith("fine_subnets.") or n.startswith("fine_subnets.0.")]
        return [n for n in names if n.startswith(f"fine_subnets.{part}.")]

    def balance(self, measure: str | None = None) -> Balance:
        """Per-sub-network cost under ``measure`` (default: the one used to split)."""
        m = measure or self.balance_measure
        if m == self.balance_measure:
            costs = self.block_costs_used
        else:
            costs = block_costs(self._all_blocks(), self.block_in_shapes, m)
        return Balance(m, group_costs(costs, self.bounds))

    def _all_blocks(self) -> list[nn.Module]:
        return [b for f in self.fine_subnets for b in cast(nn.Sequential, f)]

    def info(self) -> dict[str, Any]:
        """Split, shapes, parameter and FLOP counts (multiply-accumulates per sample)."""
        n = self.subnets
        subs = []
        for j, f in enumerate(self.fine_subnets):
            in_shape, out_shape = self.interface_shapes[j], self.interface_shapes[j + 1]
            flops = count_flops(f, in_shape)
            entry: dict[str, Any] = {
                "index": j + 1,
                "blocks": [self.bounds[j], self.bounds[j + 1] - 1],
                "num_blocks": self.bounds[j + 1] - self.bounds[j],
                "in_shape": list(in_shape),
                "out_shape": list(out_shape),
                "params": count_parameters(f),
                "flops": flops,
            }
            if self.coarse_nets:
                c = self.coarse_nets[j]
                cf = count_flops(c, in_shape)
                entry.update(
                    coarse_params=count_parameters(c),
                    coarse_flops=cf,
                    coarse_flop_fraction=cf / flops if flops else math.inf,
                )
            subs.append(entry)
        stem_flops = count_flops(self.stem, self.input_shape) if any(True for _ in self.stem.parameters()) else 0
        head_flops = count_flops(self.head, self.interface_shapes[-1]) if any(True for _ in self.head.parameters()) else 0
        fine_flops = [s["flops"] for s in subs]
        coarse_flops = [s.get("coarse_flops", 0) for s in subs]
        original_params = count_parameters(self.stem) + count_parameters(self.head) + sum(s["params"] for s in subs)
        coarse_params = count_parameters(self.coarse_nets)
        # evaluations per forward pass, as parareal_sweep makes them
        m, iters = n - self.iterations, self.iterations
        coarse_evals = 0
        if n > 1:
            sweep = list(range(1, min(n - 1, m + 1) + 1)) + ([n] if n <= m + 1 else [])
            corrections = [j for k in range(iters) for j in range(2, min(n, m + k + 2) + 1)]
            coarse_evals = sum(coarse_flops[j - 1] for j in sweep + corrections)
        runs = [[r for r in range(n) if r <= m + k] for k in range(iters)]
        parareal_flops = stem_flops + head_flops + sum(fine_flops[r] for act in runs for r in act) + coarse_evals
        critical = stem_flops + head_flops + sum(max(fine_flops[r] for r in act) for act in runs if act) + coarse_evals
        ratio = max(s.get("coarse_flop_fraction", 0.0) for s in subs)
        bal = self.balance()
        return {
            "subnets": n,
            "iterations": self.iterations,
            "input_shape": list(self.input_shape),
            "num_blocks": self.num_blocks,
            "split_points": self.bounds[1:-1],
            "bounds": list(self.bounds),
            "balance": bal.as_dict(),
            "flop_balance": Balance("flops", tuple(float(f) for f in fine_flops)).as_dict(),
            "interface_shapes": [list(s) for s in self.interface_shapes],
            "subnetworks": subs,
            "stem": {"params": count_parameters(self.stem), "flops": stem_flops},
            "head": {"params": count_parameters(self.head), "flops": head_flops},
            "original_params": original_params,
            "coarse_params": coarse_params,
            "total_params": original_params + coarse_params,
            "coarse_param_fraction": coarse_params / original_params if original_params else 0.0,
            "original_flops": stem_flops + head_flops + sum(fine_flops),
            "parareal_flops": parareal_flops,
            "coarse_flops_per_forward": coarse_evals,
            "critical_path_flops": critical,
            "ideal_speedup_flops": (stem_flops + head_flops + sum(fine_flops)) / critical if critical else 1.0,
            "max_coarse_flop_fraction": ratio,
            "parareal_ideal_speedup": ideal_speedup(n, self.iterations, ratio) if n > 1 else 1.0,
            "step_model": self.step_model.as_dict() if self.step_model is not None else None,
            "parts": self.parts,
            "layer_split_points": [b + self.parts["stem"]["count"] for b in self.bounds[1:-1]]
            if "layers" in self.parts else None,
        }

    def format_info(self) -> str:
        """``info()`` as a text table."""
        return format_info(self.info())


def _fmt_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _format_parts(info: dict[str, Any]) -> list[str]:
    """For an ``nn.Sequential``: which layers became stem, blocks and head, and whether detected or given."""
    parts = info.get("parts") or {}
    if "layers" not in parts:
        return []

    def describe(name: str) -> str:
        part = parts[name]
        if not part["count"]:
            return f"{name}: none ({part['chosen']})"
        return (f"{name}: layers {part['layers'][0]}..{part['layers'][1]} ({', '.join(part['types'])}), "
                f"{part['chosen']}")

    return [
        f"nn.Sequential of {parts['layers']} layers: {describe('stem')}; blocks: layers "
        f"{parts['blocks'][0]}..{parts['blocks'][1]}; {describe('head')} (stem=/head= choose them)",
        f"split points as layer indices of the nn.Sequential: {info['layer_split_points']}",
    ]


def format_info(info: dict[str, Any]) -> str:
    """Text table of a :meth:`ParaNet.info` dict."""
    lines = [
        (f"parareal network: N={info['subnets']} sub-networks, K={info['iterations']} iteration(s), "
        f"{info['num_blocks']} blocks, input {tuple(info['input_shape'])}"),
        f"split points (first block of sub-networks 2..N): {info['split_points']}",
        *_format_parts(info),
        "",
        (f"{'sub':>4} {'blocks':>9} {'in shape':>16} {'out shape':>16} {'params':>9} {'MACs':>9} "
        f"{'coarse params':>13} {'coarse MACs':>11} {'coarse/sub':>10}"),
    ]
    for s in info["subnetworks"]:
        frac = s.get("coarse_flop_fraction")
        lines.append(
            f"{s['index']:>4} {s['blocks'][0]:>4}-{s['blocks'][1]:<4} {tuple(s['in_shape'])!s:>16} "
            f"{tuple(s['out_shape'])!s:>16} {_fmt_count(s['params']):>9} {_fmt_count(s['flops']):>9} "
            f"{_fmt_count(s.get('coarse_params', 0)):>13} {_fmt_count(s.get('coarse_flops', 0)):>11} "
            f"{'-' if frac is None else f'{100 * frac:.1f}%':>10}"
        )
    bal = info["balance"]
    lines += [
        "",
        (f"balance by {bal['measure']}: shares {', '.join(f'{100 * s:.1f}%' for s in bal['shares'])} "
        f"(max/mean {bal['imbalance']:.3f}); by FLOPs: max/mean {info['flop_balance']['imbalance']:.3f}"),
        (f"parameters: original {_fmt_count(info['original_params'])}, coarse {_fmt_count(info['coarse_params'])} "
        f"(+{100 * info['coarse_param_fraction']:.2f}%), parareal total {_fmt_count(info['total_params'])}"),
        (f"MACs per sample: original {_fmt_count(info['original_flops'])}, parareal {_fmt_count(info['parareal_flops'])}"
        f", critical path {_fmt_count(info['critical_path_flops'])} "
        f"(ideal speedup by FLOPs {info['ideal_speedup_flops']:.2f}x; parareal formula "
        f"N/((1+K)Nc+K) = {info['parareal_ideal_speedup']:.2f}x with c = {info['max_coarse_flop_fraction']:.3f})"),
    ]
    model = info.get("step_model")
    if model:
        lines.append(
            f"modelled step on {info['subnets']} workers (K=1, measured times): {1e3 * model['step_s']:.1f} ms "
            f"(forward {1e3 * model['forward_s']:.1f}, backward {1e3 * model['backward_s']:.1f}), busy per rank "
            f"{', '.join(f'{1e3 * b:.1f}' for b in model['busy_s'])} ms; one worker, original: "
            f"{1e3 * model['original_s']:.1f} ms ({model['speedup']:.2f}x)"
        )
    return "\n".join(lines)

