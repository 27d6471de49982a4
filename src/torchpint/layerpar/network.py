"""``LayerParallel``: a residual network whose forward and backward passes are MGRIT solves.

    net = LayerParallel(lambda: nn.Sequential(nn.Linear(32, 32), nn.Tanh()), layers=64, T=2.0,
                        opening=nn.Linear(64, 32), closing=nn.Linear(32, 10), levels=3, cf=4)
    loss = F.cross_entropy(net(x), y)
    loss.backward()            # adjoint MGRIT; gradients land in each owned layer's .grad

The network is ``closing(x_L)`` with ``x_0 = opening(input)`` and ``x_{k+1} = x_k + h f_k(x_k)``
(``h = T / layers``), i.e. exactly ``to_sequential()``.  The forward pass solves the chain of
layers with MGRIT (:mod:`torchpint.engine`); the backward pass is the adjoint chain
``lambda_k = lambda_{k+1} + h J_{f_k}(x_k)^T lambda_{k+1}`` solved with MGRIT in reversed
"time", linearised at the forward solution; then every rank computes the parameter gradients
``h (d f_k / d theta_k)^T lambda_{k+1}`` of its own layers in one batched call.  Converged, both
are the serial network's values to the tolerance; with one level they are the serial values.

Distribution (``torch.distributed`` initialised, or an explicit ``comm``): every rank builds the
whole module (same seed, same weights) and calls it with the same arguments, but computes with
and updates only the layers it owns (:mod:`torchpint.layerpar.layout`); the opening and the
closing layer live on rank 0.  Rank 0's output is sent to every rank, so each rank can compute
the loss and call ``loss.backward()`` (the gradient is that of rank 0's loss); gradients appear
only on the owners.  Give the optimizer :meth:`LayerParallel.local_parameters`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from torchpint import errors
from torchpint.engine import (
    MGRIT,
    NonFiniteError,
    ReversedComm,
    SerialComm,
    default_comm,
    time_grid,
)
from torchpint.engine.comm import Comm
from torchpint.engine.grid import layouts
from torchpint.engine.level import Level
from torchpint.engine.mgrit import ConfigError, parse_relax
from torchpint.engine.relax import sequential_solve
from torchpint.engine.state import all_finite, expand, flatten, put, tree_map, unflatten
from torchpint.engine.timing import PhaseTimer
from torchpint.layerpar.layout import LayerLayout, plan_layout
from torchpint.layerpar.problems import (
    STEP_MODES,
    AdjointProblem,
    FiniteTracker,
    ForwardProblem,
    LayerBank,
)

__all__ = ["LayerParallel", "NonFiniteActivationError", "ResidualStep"]


class NonFiniteActivationError(errors.NonFiniteError):
    """NaN or Inf in the forward or the adjoint solve; the message names the layer."""

    def __init__(self, message: str, layer: int | None = None, phase: str = "forward") -> None:
        super().__init__(message)
        self.layer = layer
        self.phase = phase


class ResidualStep(nn.Module):
    """``x + h * layer(x)``: one layer of the serial network (shares ``layer``'s weights)."""

    def __init__(self, layer: nn.Module, h: float) -> None:
        super().__init__()
        self.layer = layer
        self.h = h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.h * self.layer(x)

    def extra_repr(self) -> str:
        return f"h={self.h:g}"


_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool]
_MAX_DIMS = 12


class LayerParallel(nn.Module):
    """A residual network solved layer-parallel with MGRIT (forward) and adjoint MGRIT (backward).

    Args:
        step_factory: builds one step layer ``f_k`` (called ``layers`` times; same architecture,
            output shape = input shape, no buffers, deterministic).
        layers: number of residual layers ``L`` (a multiple of ``cf^(levels-1)``).
        T: final "time"; the step is ``h = T / layers``.
        opening, closing: the layers before and after the residual chain (default: identity).
        levels, cf, relax, cycle, nested: the MGRIT hierarchy (``levels=1``: the exact serial
            pass, pipelined over the ranks).  Coarse level ``l`` steps with every ``cf^l``-th
            layer's weights and the step ``cf^l h``.
        fwd_max_iter, fwd_tol, fwd_rtol: forward solve: at most this many iterations, stop when the
            space-time residual's 2-norm is below ``fwd_tol`` (or ``fwd_rtol`` times the first one).
        bwd_max_iter, bwd_tol, bwd_rtol: the same for the adjoint solve.
        step_mode: how a batch of steps through different layers is evaluated: ``"vmap"`` (one
            ``torch.func.vmap`` call over stacked weights), ``"loop"`` (a call per layer) or
            ``"auto"`` (vmap on CUDA, loop on CPU, where vmapped convolutions are slower).
        comm: how the ranks of this network talk (default: torch.distributed if initialised with
            > 1 rank, else serial).
        data_comm: layer x data parallelism: the copies of this rank's layers in the other data
            groups (:func:`~torchpint.layerpar.layout.layer_data_comms`); after
            ``loss.backward()`` call :meth:`average_gradients`.  Default: no data parallelism.
    """

    def __init__(
        self,
        step_factory: Callable[[], nn.Module],
        layers: int,
        T: float = 1.0,
        *,
        opening: nn.Module | None = None,
        closing: nn.Module | None = None,
        levels: int = 2,
        cf: int | list[int] = 4,
        relax: str = "FCF",
        cycle: str = "V",
        nested: bool = True,
        fwd_max_iter: int = 10,
        fwd_tol: float = 1e-9,
        fwd_rtol: float = 0.0,
        bwd_max_iter: int = 10,
        bwd_tol: float = 1e-9,
        bwd_rtol: float = 0.0,
        step_mode: str = "auto",
        comm: Comm | None = None,
        data_comm: Comm | None = None,
    ) -> None:
        super().__init__()
        if step_mode not in STEP_MODES:
            raise ConfigError(f"step_mode must be one of {', '.join(STEP_MODES)}, got {step_mode!r}")
        self.step_mode = step_mode
        if not (isinstance(T, (int, float)) and math.isfinite(T) and T > 0):
            raise ConfigError(f"the final time T must be a finite number > 0, got {T!r}")
        for name, value in (("fwd_max_iter", fwd_max_iter), ("bwd_max_iter", bwd_max_iter)):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        tolerances = {"fwd_tol": fwd_tol, "bwd_tol": bwd_tol, "fwd_rtol": fwd_rtol, "bwd_rtol": bwd_rtol}
        for name, tol in tolerances.items():
            if not (tol >= 0 and math.isfinite(tol)):
                raise ConfigError(f"{name} must be a finite number >= 0, got {tol}")
        if cycle.upper() not in ("V", "F"):
            raise ConfigError(f"cycle must be 'V' or 'F', got {cycle!r}")
        parse_relax(relax)
        self.comm: Comm = comm if comm is not None else default_comm()
        self.data_comm: Comm = data_comm if data_comm is not None else SerialComm()
        self.layout: LayerLayout = plan_layout(layers, levels, cf, self.comm.size)
        self.num_layers = layers
        self.T = float(T)
        self.h = self.T / layers
        self.levels = levels
        self.cf = list(self.layout.cf)
        self.relax = relax
        self.cycle = cycle.upper()
        self.nested = nested
        self.fwd: dict[str, float] = {"max_iter": int(fwd_max_iter), "tol": float(fwd_tol), "rtol": float(fwd_rtol)}
        self.bwd: dict[str, float] = {"max_iter": int(bwd_max_iter), "tol": float(bwd_tol), "rtol": float(bwd_rtol)}
        self.opening = opening if opening is not None else nn.Identity()
        self.closing = closing if closing is not None else nn.Identity()
        self.layers = nn.ModuleList(step_factory() for _ in range(layers))
        self._check_architecture()
        self.param_names = [name for name, _ in self.layers[0].named_parameters()]
        self.last_stats: dict[str, Any] = {}

    # ------------------------------------------------------------------ ownership
    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def owned_layers(self) -> range:
        """The indices of the layers this rank owns (computes with and updates)."""
        return self.layout.owned_layers(self.comm.rank)

    def local_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters this rank owns (its layers; opening and closing on rank 0): for the optimizer."""
        if self.comm.rank == 0:
            yield from self.opening.parameters()
        for k in self.owned_layers:
            yield from self.layers[k].parameters()
        if self.comm.rank == 0:
            yield from self.closing.parameters()

    @torch.no_grad()
    def average_gradients(self, weight: float | None = None, extra: torch.Tensor | None = None) -> torch.Tensor | None:
        """Layer x data parallelism: every copy of a layer gets ``sum over data groups of weight * grad``.

        One flattened all-reduce over ``data_comm`` of this rank's parameter gradients, and of
        ``extra`` (not weighted: e.g. the shard's loss sum and hit count for the log), which is
        returned summed over the data groups.  ``weight``: this data group's share:
        ``len(shard) / len(batch)`` for a mean loss (the default ``1 / D`` is that for equal
        shards), ``1.0`` for a sum loss; then the gradients are the whole batch's.  Collective
        over the data group (call it on every rank, also without a data group: then only the
        weight is applied).
        """
        share = 1.0 / self.data_comm.size if weight is None else float(weight)
        params = [p for p in self.local_parameters() if p.grad is not None]
        parts = [p.grad * share for p in params] + ([extra.detach()] if extra is not None else [])
        if not parts:
            return None
        # Summed in float64; every copy receives the same bits, so the copies stay identical.
        wide = [t.to(torch.float64) for t in parts]
        total = self.data_comm.sum(flatten(wide)) if self.data_comm.size > 1 else flatten(wide)
        values = unflatten(total, wide)
        for p, value in zip(params, values):
            p.grad.copy_(value)
        return values[-1].to(extra.dtype) if extra is not None else None

    def _check_architecture(self) -> None:
        first = [(n, tuple(p.shape), p.dtype) for n, p in self.layers[0].named_parameters()]
        if not first:
            raise ConfigError("the step layer has no parameters: nothing to train layer-parallel")
        for k, layer in enumerate(self.layers):
            buffers = [n for n, _ in layer.named_buffers()]
            if buffers:
                raise ConfigError(
                    f"step layer {k} has buffers ({', '.join(buffers)}): layer-parallel steps must be pure "
                    f"functions of (parameters, input); use no batch norm (e.g. GroupNorm/LayerNorm instead)"
                )
            random = [type(m).__name__ for m in layer.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
            if random:
                raise ConfigError(
                    f"step layer {k} contains {random[0]}: MGRIT applies every step many times, so a step "
                    f"must be deterministic; put dropout in the opening or closing layer"
                )
            here = [(n, tuple(p.shape), p.dtype) for n, p in layer.named_parameters()]
            if here != first:
                raise ConfigError(f"step layer {k} has a different architecture than layer 0: {here} vs {first}")

    # ------------------------------------------------------------------ serial equivalent
    def to_sequential(self) -> nn.Sequential:
        """The same network as a plain ``nn.Sequential`` sharing this module's layers.

        With several ranks it first copies every layer's parameters from its owner to all ranks
        (collective: call it on every rank).
        """
        if self.comm.size > 1:
            self.gather_parameters()
        steps = [ResidualStep(layer, self.h) for layer in self.layers]
        return nn.Sequential(self.opening, *steps, self.closing)

    @torch.no_grad()
    def gather_parameters(self) -> None:
        """Give every rank the owners' current parameters of every layer (collective)."""
        if self.comm.size == 1:
            return
        mine = [p.detach() for p in self.local_parameters()]
        local = flatten(mine) if mine else torch.zeros(0, dtype=torch.float64)
        chunks = self.comm.all_gather_sizes(local)
        for rank, chunk in enumerate(chunks):
            params = self._parameters_of_rank(rank)
            if params:
                for p, value in zip(params, unflatten(chunk, [p.detach() for p in params])):
                    p.copy_(value)

    def _parameters_of_rank(self, rank: int) -> list[nn.Parameter]:
        out: list[nn.Parameter] = []
        if rank == 0:
            out += list(self.opening.parameters())
        for k in self.layout.owned_layers(rank):
            out += list(self.layers[k].parameters())
        if rank == 0:
            out += list(self.closing.parameters())
        return out

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor | None) -> torch.Tensor:
        """The network's output (on every rank).  Only rank 0's ``x`` is used."""
        comm = self.comm
        reference = next(self.layers[0].parameters())
        if comm.rank == 0:
            if x is None:
                raise ValueError("rank 0 needs the input batch")
            x0 = self.opening(x)
        else:
            x0 = torch.empty(0, dtype=reference.dtype, device=reference.device)
        anchor = torch.zeros((), device=reference.device, requires_grad=torch.is_grad_enabled())
        owned = [p for k in self.owned_layers for p in self.layers[k].parameters()]
        x_last = _LayerChain.apply(self, x0, anchor, *owned)
        if comm.size == 1:
            return self.closing(x_last)
        out = self.closing(x_last) if comm.rank == 0 else x_last
        return _ShareOutput.apply(self, out)

    @torch.no_grad()
    def _exchange_replicas(self) -> list[int]:
        """Refresh this rank's copies of the layers it steps with but does not own, from their owners."""
        comm, layout = self.comm, self.layout
        if comm.size == 1:
            return []
        for rank in range(comm.size):  # post every send first, then receive: no cycle of waits
            if rank == comm.rank:
                continue
            for k in layout.replicas(rank):
                if layout.owner(k) == comm.rank:
                    comm.send([p.detach() for p in self.layers[k].parameters()], rank)
        replicas = layout.replicas(comm.rank)
        for k in replicas:
            params = [p.detach() for p in self.layers[k].parameters()]
            for p, value in zip(params, comm.recv(params, layout.owner(k))):
                p.copy_(value)  # a layer this rank does not own (nor update): its copy is refreshed
        comm.wait_sends()
        return replicas

    def _solve(self, problem: Any, u0: torch.Tensor, adjoint: bool, serial: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
        """The forward or adjoint chain on this rank's block: MGRIT, or (``serial`` or one level) the
        exact pass, pipelined over the ranks.  Returns the states and the statistics."""
        comm = ReversedComm(self.comm) if adjoint else self.comm
        partition = self.layout.adjoint_partition() if adjoint else list(self.layout.ranges)
        grid = time_grid(0.0, self.T, self.num_layers + 1)
        start = time.perf_counter()
        if serial or self.levels == 1:
            # The engine's sequential solve (what its coarsest level does), without a residual
            # evaluation, which would cost a second pass: one level is exact after one pass.
            (layout,) = layouts([grid], [], comm.rank, comm.size, partition)
            level = Level(0, layout, problem, comm, PhaseTimer(), template=u0)
            level.u = tree_map(torch.zeros_like, expand(u0, layout.n_local))
            if layout.lo == 0:
                put(level.u, 0, u0)
            sequential_solve(level)
            comm.wait_sends()
            bad = torch.tensor([0.0 if all_finite(level.u) else 1.0], dtype=torch.float64)
            if float(comm.sum(bad)) > 0:  # every rank learns it, and stops the same way
                raise NonFiniteError(1, "the exact (one-level) pass")
            stats = {"iterations": 1, "residuals": [], "converged": True, "steps_per_level": [level.steps_taken]}
            states = level.u
        else:
            options = self.bwd if adjoint else self.fwd
            result = MGRIT(
                problem, grid, levels=self.levels, cf=self.cf, relax=self.relax, cycle=self.cycle,
                nested=self.nested, tol=options["tol"], rtol=options["rtol"], max_iter=int(options["max_iter"]),
                comm=comm, gather=False, partition=partition,
            ).solve(u0)
            stats = {"iterations": result.iterations, "residuals": result.residuals, "converged": result.converged,
                     "steps_per_level": result.steps_per_level}
            states = result.u
        stats["seconds"] = time.perf_counter() - start
        assert isinstance(states, torch.Tensor)
        return states, stats

    def _share_template(self, x0: torch.Tensor) -> torch.Tensor:
        """A zero state shaped like ``x_0`` on every rank (rank 0 sends the shape)."""
        device = next(self.layers[0].parameters()).device
        return _broadcast_tensor(self.comm, x0 if self.comm.rank == 0 else None, data=False, device=device)

    def _forward_solve(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, LayerBank]:
        """MGRIT over the layers: this rank's block of states, ``x_L`` on rank 0, the layer bank."""
        comm, layout = self.comm, self.layout
        rank, last = comm.rank, comm.size - 1
        template = self._share_template(x0)
        u0 = x0.detach() if rank == 0 else template
        replicas = self._exchange_replicas()
        lo, hi = layout.ranges[rank]
        stepping = sorted(set(range(lo, min(hi, self.num_layers))) | set(replicas))
        bank = LayerBank({k: self.layers[k] for k in stepping}, self.num_layers, self.step_mode)
        tracker = FiniteTracker()
        try:
            states, self.last_stats["forward"] = self._solve(ForwardProblem(bank, self.h, tracker), u0, adjoint=False)
        except NonFiniteError as error:
            bad_input = rank == 0 and not bool(torch.isfinite(u0).all())

            def serial_pass(fine: FiniteTracker) -> None:
                self._solve(ForwardProblem(bank, self.h, fine), u0, adjoint=False, serial=True)

            raise self._diagnose("forward", tracker, bad_input, error, serial_pass) from None
        if rank == last and last != 0:
            comm.send(states[-1], 0)
        x_last = states[-1] if last == 0 else (_recv_tensor(comm, template, last) if rank == 0 else template[:0])
        comm.wait_sends()
        return states, x_last, bank

    def _backward_solve(
        self, states: torch.Tensor, bank: LayerBank, grad_last: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """Adjoint MGRIT, then the parameter gradients of the owned layers; ``lambda_0`` on rank 0."""
        comm, layout = self.comm, self.layout
        rank, last = comm.rank, comm.size - 1
        template = torch.zeros_like(states[0])
        if rank == 0 and last != 0:
            assert grad_last is not None
            comm.send(grad_last, last)
        if rank == last:
            lam_last = grad_last if last == 0 else _recv_tensor(comm, template, 0)
            assert lam_last is not None
        else:
            lam_last = template
        comm.wait_sends()
        lo, hi = layout.ranges[rank]
        tracker = FiniteTracker()
        problem = AdjointProblem(bank, states, lo, self.num_layers, self.h, tracker)
        start = time.perf_counter()
        try:
            lam, stats = self._solve(problem, lam_last.detach(), adjoint=True)
        except NonFiniteError as error:
            bad_input = rank == last and not bool(torch.isfinite(lam_last).all())

            def serial_pass(fine: FiniteTracker) -> None:
                exact = AdjointProblem(bank, states, lo, self.num_layers, self.h, fine)
                self._solve(exact, lam_last.detach(), adjoint=True, serial=True)

            raise self._diagnose("backward", tracker, bad_input, error, serial_pass) from None
        lam = lam.flip(0)  # lambda_k for k = lo .. hi-1
        # lambda at hi (the next rank's first point) for the gradient of layer hi - 1.
        if rank > 0:
            comm.send(lam[0], rank - 1)
        lam_next = lam[1:]
        if rank < last:
            lam_next = torch.cat([lam_next, _recv_tensor(comm, template, rank + 1).unsqueeze(0)])
        comm.wait_sends()
        owned = list(range(lo, min(hi, self.num_layers)))
        idx = torch.tensor(owned, dtype=torch.long)
        n = len(owned)
        grads = bank.vjp_params(idx, states[:n], self.h * lam_next[:n])
        stats["solve_seconds"] = stats["seconds"]
        stats["seconds"] = time.perf_counter() - start  # with the parameter gradients
        self.last_stats["backward"] = stats
        flat = [grads[name][i] for i in range(n) for name in self.param_names]
        return (lam[0] if rank == 0 else None), flat

    def _diagnose(
        self, phase: str, tracker: FiniteTracker, bad_input: bool, error: NonFiniteError,
        serial_pass: Callable[[FiniteTracker], None],
    ) -> NonFiniteActivationError:
        """One message, the same on every rank, after an MGRIT solve went non-finite.

        The input first; then the exact (one-level, pipelined) pass tells whether the network
        itself turns finite values into NaN/Inf, and at which layer; if it does not, a coarse
        level is to blame (its larger steps are unstable), and the first coarse step that went
        non-finite is named.
        """
        flag = torch.tensor([float(bad_input)], dtype=torch.float64)
        if float(self.comm.sum(flag)) > 0:
            what = (
                "the input of the residual layers (the output of the opening layer) is not finite"
                if phase == "forward"
                else "the gradient of the loss with respect to the last layer's output is not finite"
            )
            return NonFiniteActivationError(f"{phase} pass: {what}", None, phase)
        fine_tracker = FiniteTracker()
        failed = 0.0
        if self.levels > 1:
            try:
                serial_pass(fine_tracker)
            except NonFiniteError:
                failed = 1.0
        else:
            fine_tracker, failed = tracker, 1.0
        fine, _, _ = fine_tracker.first()
        _, coarse, span = tracker.first()
        local = torch.tensor([failed, fine, coarse, span], dtype=torch.float64)
        rows = [r.tolist() for r in self.comm.all_gather_sizes(local)]
        fines = [int(r[1]) for r in rows if r[1] >= 0]
        if any(r[0] > 0 for r in rows) and fines:
            k = min(fines)
            what = "activations" if phase == "forward" else "gradients (adjoint states)"
            return NonFiniteActivationError(
                f"{phase} pass: layer {k} (of {self.num_layers}) produced non-finite {what} (NaN/Inf) "
                f"from finite inputs",
                k,
                phase,
            )
        coarse_rows = [(int(r[2]), int(r[3])) for r in rows if r[2] >= 0]
        if not any(r[0] > 0 for r in rows) and coarse_rows:
            k, s = min(coarse_rows)
            return NonFiniteActivationError(
                f"{phase} pass: the network is finite, but the coarse-level step with layer {k}'s weights over "
                f"{s} layers (step {s * self.h:g}) produced NaN/Inf: the coarse levels are unstable for this "
                f"network; use fewer levels, a smaller cf or a smaller T",
                k,
                phase,
            )
        return NonFiniteActivationError(f"{phase} pass: {error}", None, phase)


def _broadcast_tensor(
    comm: Comm, value: torch.Tensor | None, *, data: bool, device: torch.device | None = None, root: int = 0
) -> torch.Tensor:
    """``value`` from ``root`` to every rank (point-to-point): the tensor, or zeros of its shape."""
    if comm.size == 1:
        assert value is not None
        return value if data else torch.zeros_like(value)
    header_template = torch.zeros(_MAX_DIMS + 2, dtype=torch.int64)
    if comm.rank == root:
        assert value is not None
        if value.dim() > _MAX_DIMS:
            raise ValueError(f"activations with more than {_MAX_DIMS} dimensions are not supported")
        header = header_template.clone()
        header[0] = value.dim()
        header[1] = _DTYPES.index(value.dtype)
        header[2 : 2 + value.dim()] = torch.tensor(value.shape, dtype=torch.int64)
        for rank in range(comm.size):
            if rank != root:
                comm.send(header, rank)
                if data:
                    comm.send(value.detach(), rank)
        comm.wait_sends()
        return value if data else torch.zeros_like(value)
    header = _recv_tensor(comm, header_template, root)
    ndim = int(header[0])
    shape = [int(d) for d in header[2 : 2 + ndim]]
    dtype = _DTYPES[int(header[1])]
    zeros = torch.zeros(shape, dtype=dtype, device=device)
    if not data:
        return zeros
    return _recv_tensor(comm, zeros, root)


def _recv_tensor(comm: Comm, template: torch.Tensor, src: int) -> torch.Tensor:
    value = comm.recv(template, src)
    assert isinstance(value, torch.Tensor)
    return value


class _LayerChain(torch.autograd.Function):
    """``x_L`` from ``x_0`` by forward MGRIT; the backward pass by adjoint MGRIT."""

    @staticmethod
    def forward(ctx: Any, net: LayerParallel, x0: torch.Tensor, anchor: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        states, x_last, bank = net._forward_solve(x0)
        ctx.net, ctx.states, ctx.bank = net, states, bank
        ctx.x0_shape = x0.shape
        return x_last.clone() if net.comm.rank == 0 else x_last

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor | None) -> tuple[Any, ...]:
        net: LayerParallel = ctx.net
        grad_last = grad_output
        if net.comm.rank != 0:
            grad_last = None  # the gradient of the loss comes from rank 0
        elif grad_last is None:  # pragma: no cover - autograd passes zeros for unused outputs
            grad_last = torch.zeros_like(ctx.states[0])
        grad_x0, grads = net._backward_solve(ctx.states, ctx.bank, grad_last)
        ctx.states = ctx.bank = None
        if not ctx.needs_input_grad[1]:
            grad_x0 = None
        return (None, grad_x0, None, *grads)


class _ShareOutput(torch.autograd.Function):
    """Rank 0's output on every rank; the gradient is taken from rank 0's loss only."""

    @staticmethod
    def forward(ctx: Any, net: LayerParallel, out: torch.Tensor) -> torch.Tensor:
        ctx.rank = net.comm.rank
        ctx.in_shape, ctx.in_dtype, ctx.in_device = out.shape, out.dtype, out.device
        value = out.detach() if net.comm.rank == 0 else None
        shared = _broadcast_tensor(net.comm, value, data=True, device=out.device)
        return shared.clone() if net.comm.rank == 0 else shared

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        if ctx.rank == 0:
            return None, grad
        return None, torch.zeros(ctx.in_shape, dtype=ctx.in_dtype, device=ctx.in_device)
