"""``LayerParallel``: a residual network whose forward and backward passes are MGRIT solves.

    net = LayerParallel(lambda: nn.Sequential(nn.Linear(32, 32), nn.Tanh()), layers=64, T=2.0,
                        opening=nn.Linear(64, 32), closing=nn.Linear(32, 10), levels=3, cf=4)
    loss = F.cross_entropy(net(x), y)
    loss.backward()            # adjoint MGRIT; gradients land in each owned layer's .grad

The network is ``closing(x_L)`` with ``x_0 = opening(input)`` and ``x_{k+1} = x_k + h f_k(x_k)``
(``h = T / layers``), i.e. exactly ``to_sequential()``.  The forward pass solves the chain of
layers with MGRIT (:mod:`torchpint.engine`); the backward pass is the adjoint chain
``lambda_k = lambda_{k+1} + h J_{f_k}(x_k)^T lambda_{k+1}`` solved with MGRIT in reversed
"time", linearised at the forward solution (the autograd graphs of the forward solve's last
sweep); its last sweep also gives the parameter gradients ``h (d f_k / d theta_k)^T
lambda_{k+1}``.  Converged, both are the serial network's values to the tolerance; with one
level (plain autograd through each rank's block) they are the serial values.

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
from dataclasses import dataclass
from typing import Any, TypeVar

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
    sequential_pass,
    time_grid,
)
from torchpint.engine.comm import Comm
from torchpint.engine.level import Level
from torchpint.engine.mgrit import ConfigError, parse_relax
from torchpint.engine.relax import Cached, c_images, c_relax, f_relax, point_images
from torchpint.engine.state import State, flatten, length, put, take, unflatten
from torchpint.engine.timing import PhaseTimer
from torchpint.layerpar.layout import LayerLayout, plan_layout
from torchpint.layerpar.problems import (
    STEP_MODES,
    AdjointProblem,
    FiniteTracker,
    ForwardProblem,
    LayerBank,
    Linearisation,
    check_step_shape,
    finite,
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
        step_mode: how the forward solve evaluates a batch of steps through different layers:
            ``"vmap"`` (one ``torch.func.vmap`` call over stacked weights), ``"loop"`` (a call per
            layer) or ``"auto"`` (vmap on CUDA, loop on CPU, where vmapped convolutions are slower).
        final_relax: end each multilevel solve with a final relaxation (C, then F, then the last
            point from the one before it, as torchbraid's final FC relaxation): with a fixed small
            iteration count the output is closer to the serial network's, and the backward pass
            linearises at those states.  Its steps are the ones the backward pass needs anyway.
        warm_start: start each multilevel forward and adjoint solve from the previous call's
            solution when the state's shape (batch) is the same (else, and on the first call, from
            zeros).  The iterations are in ``last_stats[phase]["iterations"]`` and ``["warm"]``.
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
        final_relax: bool = True,
        warm_start: bool = False,
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
        self.final_relax = bool(final_relax)
        self.warm_start = bool(warm_start)
        # The last solution of each phase, with the (shape, dtype, device) of its state: warm starts.
        self._previous: dict[str, tuple[tuple[Any, ...], torch.Tensor]] = {}
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
        grads = [p.grad for p in self.local_parameters() if p.grad is not None]
        if self.data_comm.size == 1:
            for g in grads:
                g.mul_(share)
            return extra
        if not grads and extra is None:
            return None
        count = sum(g.numel() for g in grads)
        # Summed in float64; every copy receives the same bits, so the copies stay identical.
        flat = torch.cat([g.reshape(-1) for g in grads] + ([extra.detach().reshape(-1)] if extra is not None else []))
        flat = flat.to(torch.float64)
        flat[:count].mul_(share)
        total = self.data_comm.sum(flat)
        offset = 0
        for g in grads:
            g.copy_(total[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return total[count:].view_as(extra).to(extra.dtype) if extra is not None else None

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
        if self.levels == 1 and comm.size == 1:
            return self.closing(self._serial_pass(x0))
        anchor = torch.zeros((), device=reference.device, requires_grad=torch.is_grad_enabled())
        owned = [p for k in self.owned_layers for p in self.layers[k].parameters()]
        # A backward pass can follow (the anchor requires grad, on every rank alike): only then
        # are the steps kept for it.
        linearise = torch.is_grad_enabled()
        x_last = _LayerChain.apply(self, linearise, x0, anchor, *owned)
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

    def _solve(
        self, problem: ForwardProblem | AdjointProblem, u0: torch.Tensor, adjoint: bool, *, serial: bool = False,
        guess: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The forward or adjoint chain on this rank's block: MGRIT ending with the problem's last
        sweep (:func:`_last_sweep`), or (``serial`` or one level) the exact pass through the engine,
        pipelined over the ranks, as a whole last sweep (what a diagnosis re-runs with every step
        watched).  ``guess``: this rank's block of a previous solution (warm start).  Returns the
        states and the statistics."""
        comm = ReversedComm(self.comm) if adjoint else self.comm
        partition = self.layout.adjoint_partition() if adjoint else list(self.layout.ranges)
        grid = time_grid(0.0, self.T, self.num_layers + 1)
        start = time.perf_counter()
        if serial or self.levels == 1:
            # The engine's sequential solve (what its coarsest level does), without a residual
            # evaluation, which would cost a second pass: one level is exact after one pass.
            problem.last_sweep(True)
            try:
                exact = sequential_pass(problem, grid, u0, comm=comm, partition=partition)
            finally:
                problem.last_sweep(False)
            block = exact.u
            stats: dict[str, Any] = {"iterations": 1, "residuals": [], "converged": True,
                                     "steps_per_level": exact.steps_per_level, "phase_seconds": exact.phase_seconds}
        else:
            options = self.bwd if adjoint else self.fwd
            mgrit = _WarmMGRIT(
                problem, grid, levels=self.levels, cf=self.cf, relax=self.relax, cycle=self.cycle,
                nested=self.nested, tol=options["tol"], rtol=options["rtol"], max_iter=int(options["max_iter"]),
                comm=comm, gather=False, partition=partition,
            )
            if guess is not None and partition[comm.rank][0] == 0:
                guess = guess.clone()
                guess[0] = u0  # the previous solution, but this call's initial value
            result = mgrit.solve(u0, guess=guess)  # a guess replaces the zeros (and nested iteration)
            level = mgrit.finest
            before = level.steps_taken
            with level.timer.phase("last_sweep"):
                _last_sweep(level, problem, self.final_relax, mgrit.cached)
            comm.wait_sends()
            steps = list(result.steps_per_level)
            steps[0] += level.steps_taken - before
            stats = {"iterations": result.iterations, "residuals": result.residuals, "converged": result.converged,
                     "steps_per_level": steps, "phase_seconds": level.timer.as_dict()}
            block = level.u
        # MGRIT checks every iteration's residual; this covers the exact pass and the last sweep.
        bad = torch.tensor([0.0 if finite(block) else 1.0], dtype=torch.float64)
        if float(comm.sum(bad)) > 0:  # every rank learns it, and stops the same way
            raise NonFiniteError(stats["iterations"], "the exact pass" if serial or self.levels == 1 else "the last sweep")
        stats["warm"] = guess is not None
        stats["seconds"] = time.perf_counter() - start
        assert isinstance(block, torch.Tensor)
        return block, stats

    def _share_template(self, x0: torch.Tensor) -> torch.Tensor:
        """A zero state shaped like ``x_0`` on every rank (rank 0 sends it)."""
        if self.comm.size == 1:
            return torch.zeros_like(x0)
        device = next(self.layers[0].parameters()).device
        return torch.zeros_like(self.comm.broadcast(x0 if self.comm.rank == 0 else None)).to(device)

    def _warm_guess(self, phase: str, template: torch.Tensor) -> torch.Tensor | None:
        """The previous solution of ``phase`` if warm starts are on and it fits (else a cold start)."""
        if not self.warm_start or self.levels == 1:
            return None
        previous = self._previous.get(phase)
        key = (tuple(template.shape), template.dtype, template.device)
        if previous is None or previous[0] != key:
            return None  # the same decision on every rank: every rank knows x_0's shape
        return previous[1]

    def _remember(self, phase: str, template: torch.Tensor, states: torch.Tensor) -> None:
        if self.warm_start and self.levels > 1:
            self._previous[phase] = ((tuple(template.shape), template.dtype, template.device), states.detach())

    def _bank(self, replicas: list[int]) -> LayerBank:
        """The layers this rank steps with: its own and ``replicas``."""
        stepping = sorted(set(self.owned_layers) | set(replicas))
        return LayerBank({k: self.layers[k] for k in stepping}, self.num_layers, self.step_mode)

    def _forward_solve(
        self, x0: torch.Tensor, linearise: bool, params: list[torch.Tensor]
    ) -> tuple[torch.Tensor, _ExactPass | ForwardProblem, torch.Tensor]:
        """The forward pass: ``x_L`` on rank 0, what the backward pass needs (with ``linearise``)
        and a zero state.  ``params``: the owned layers' parameters, in order."""
        template = self._share_template(x0)
        u0 = x0.detach() if self.comm.rank == 0 else template
        if self.levels == 1:
            exact = self._exact_forward(u0, template, linearise, params)
            x_last = self._to_first_rank(exact.out.detach(), template)
            return x_last, exact, template
        problem, states = self._forward_mgrit(u0, template, linearise)
        return self._to_first_rank(states[-1], template), problem, template

    def _to_first_rank(self, value: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
        """The last rank's ``value`` (the last point) on rank 0; an empty state elsewhere."""
        comm, last = self.comm, self.comm.size - 1
        if last == 0:
            return value
        if comm.rank == last:
            comm.isend(value, 0)
            comm.wait_sends()
        return comm.recv_tensor(template.shape, template.dtype, last) if comm.rank == 0 else template[:0]

    def _serial_pass(self, x0: torch.Tensor) -> torch.Tensor:
        """One level on one process: the serial network itself, under plain autograd."""
        start = time.perf_counter()
        x = x0
        for layer in self.layers:
            f = layer(x)
            check_step_shape(x, f)
            x = x + self.h * f
        if not finite(x):
            def serial_pass(fine: FiniteTracker) -> None:
                self._solve(_tracked(ForwardProblem(self._bank([]), self.h), fine), x0.detach(), adjoint=False)

            raise self._diagnose("forward", not finite(x0), serial_pass)
        self.last_stats["forward"] = {"iterations": 1, "residuals": [], "converged": True, "warm": False,
                                      "steps_per_level": [self.num_layers], "seconds": time.perf_counter() - start}
        # The backward pass is autograd's own (its NaN/Inf are not diagnosed, as in the serial network).
        self.last_stats["backward"] = {"iterations": 1, "residuals": [], "converged": True, "warm": False,
                                       "steps_per_level": [self.num_layers]}
        return x

    def _exact_forward(self, u0: torch.Tensor, template: torch.Tensor, linearise: bool, params: list[torch.Tensor]) -> _ExactPass:
        """One level: the serial pass through this rank's block of layers with plain autograd
        (pipelined: from the previous rank's last state to the next rank)."""
        comm, rank = self.comm, self.comm.rank
        start = time.perf_counter()
        x = u0 if rank == 0 else comm.recv_tensor(template.shape, template.dtype, rank - 1)
        inputs = []
        with torch.set_grad_enabled(linearise):
            leaf = x.detach().requires_grad_(linearise)
            x = leaf
            for k in self.owned_layers:
                inputs.append(x)
                f = self.layers[k](x)
                check_step_shape(x, f)
                x = x + self.h * f
        if rank < comm.size - 1:
            comm.isend(x.detach(), rank + 1)
        comm.wait_sends()
        exact = _ExactPass(leaf, x, inputs, params)
        bad = torch.tensor([0.0 if finite(x) else 1.0], dtype=torch.float64)
        if float(comm.sum(bad)) > 0:  # every rank learns it, and stops the same way
            bank = self._bank(self._exchange_replicas())
            bad_input = rank == 0 and not finite(u0)

            def serial_pass(fine: FiniteTracker) -> None:
                self._solve(_tracked(ForwardProblem(bank, self.h), fine), u0, adjoint=False)

            raise self._diagnose("forward", bad_input, serial_pass)
        self.last_stats["forward"] = {"iterations": 1, "residuals": [], "converged": True, "warm": False,
                                      "steps_per_level": [len(inputs)], "seconds": time.perf_counter() - start}
        return exact

    def _exact_backward(self, exact: _ExactPass, lam_hi: torch.Tensor | None, template: torch.Tensor
                        ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One level: the serial backward pass through this rank's block (one autograd call), from
        ``lambda_hi`` (the next rank's); returns ``lambda_lo`` and the owned parameters' gradients."""
        comm, rank = self.comm, self.comm.rank
        start = time.perf_counter()
        if lam_hi is None:
            lam_hi = comm.recv_tensor(template.shape, template.dtype, rank + 1)
        params = exact.params
        wanted = [p for p in params if p.requires_grad]
        found = torch.autograd.grad(exact.out, [exact.leaf, *wanted], lam_hi, allow_unused=True)
        lam_lo = found[0] if found[0] is not None else torch.zeros_like(lam_hi)
        if rank > 0:
            comm.isend(lam_lo, rank - 1)
        comm.wait_sends()
        by_id = {id(p): g for p, g in zip(wanted, found[1:])}
        grads = [g if (g := by_id.get(id(p))) is not None else torch.zeros_like(p) for p in params]
        bad = torch.tensor([0.0 if finite(lam_lo) else 1.0], dtype=torch.float64)
        if float(comm.sum(bad)) > 0:
            bad_input = rank == comm.size - 1 and not finite(lam_hi)
            bank = self._bank([])
            lin = Linearisation()
            for k, x in zip(self.owned_layers, exact.inputs):
                lin.step(bank, k, x)

            def serial_pass(fine: FiniteTracker) -> None:
                problem = _tracked(AdjointProblem(bank, lin, self.num_layers, self.h), fine)
                self._solve(problem, lam_hi.detach() if rank == comm.size - 1 else template, adjoint=True)

            raise self._diagnose("backward", bad_input, serial_pass)
        self.last_stats["backward"] = {"iterations": 1, "residuals": [], "converged": True, "warm": False,
                                       "steps_per_level": [len(exact.inputs)], "seconds": time.perf_counter() - start}
        return lam_lo, grads

    def _forward_mgrit(self, u0: torch.Tensor, template: torch.Tensor, linearise: bool) -> tuple[ForwardProblem, torch.Tensor]:
        """Several levels: forward MGRIT and its last sweep; the problem (with the linearisation) and
        this rank's states."""
        rank = self.comm.rank
        lo, hi = self.layout.ranges[rank]
        bank = self._bank(self._exchange_replicas())
        problem = ForwardProblem(bank, self.h, linearise)
        guess = self._warm_guess("forward", template)
        try:
            states, self.last_stats["forward"] = self._solve(problem, u0, adjoint=False, guess=guess)
        except NonFiniteError:
            bad_input = rank == 0 and not finite(u0)

            def serial_pass(fine: FiniteTracker) -> None:
                self._solve(_tracked(ForwardProblem(bank, self.h), fine), u0, adjoint=False, serial=True)

            def rerun(tracker: FiniteTracker) -> None:
                self._solve(_tracked(ForwardProblem(bank, self.h), tracker), u0, adjoint=False, guess=guess)

            raise self._diagnose("forward", bad_input, serial_pass, rerun) from None
        self._remember("forward", template, states)
        if hi <= self.num_layers and linearise:
            # Layer hi - 1 steps into the next rank's first point, so that rank computed it; the
            # adjoint step of layer hi - 1 happens here, at the state x_{hi-1} this rank owns.
            problem.linearisation.step(bank, hi - 1, states[-1])
        return problem, states

    def _backward_solve(
        self, saved: _ExactPass | ForwardProblem, template: torch.Tensor, grad_last: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """The backward pass: ``lambda_0`` on rank 0 and the gradients of the owned parameters."""
        comm = self.comm
        rank, last = comm.rank, comm.size - 1
        if rank == 0 and last != 0:
            assert grad_last is not None
            comm.isend(grad_last, last)
            comm.wait_sends()
        lam_last = None
        if rank == last:
            lam_last = grad_last if last == 0 else comm.recv_tensor(template.shape, template.dtype, 0)
        if isinstance(saved, _ExactPass):
            lam0, grads = self._exact_backward(saved, lam_last, template)
            return (lam0 if rank == 0 else None), grads
        return self._adjoint_mgrit(saved, template, lam_last)

    def _adjoint_mgrit(
        self, forward: ForwardProblem, template: torch.Tensor, lam_last: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """Several levels: adjoint MGRIT, whose last sweep also gives the parameter gradients."""
        rank, last = self.comm.rank, self.comm.size - 1
        u0 = lam_last.detach() if lam_last is not None else template
        problem = AdjointProblem(forward.bank, forward.linearisation, self.num_layers, self.h)
        guess = self._warm_guess("adjoint", template)
        try:
            lam, self.last_stats["backward"] = self._solve(problem, u0, adjoint=True, guess=guess)
        except NonFiniteError:
            bad_input = rank == last and not finite(u0)

            def tracked(tracker: FiniteTracker) -> AdjointProblem:
                return _tracked(AdjointProblem(forward.bank, forward.linearisation, self.num_layers, self.h), tracker)

            def serial_pass(fine: FiniteTracker) -> None:
                self._solve(tracked(fine), u0, adjoint=True, serial=True)

            def rerun(tracker: FiniteTracker) -> None:
                self._solve(tracked(tracker), u0, adjoint=True, guess=guess)

            raise self._diagnose("backward", bad_input, serial_pass, rerun) from None
        self._remember("adjoint", template, lam)
        grads = [g for k in self.owned_layers for g in problem.grads[k]]
        return (lam[-1] if rank == 0 else None), grads

    def _diagnose(
        self, phase: str, bad_input: bool, serial_pass: Callable[[FiniteTracker], None],
        rerun: Callable[[FiniteTracker], None] | None = None,
    ) -> NonFiniteActivationError:
        """One message, the same on every rank (collective), after a pass went non-finite.

        The input first; then the exact pass through the engine (one level, pipelined, every step
        watched) tells whether the network itself turns finite values into NaN/Inf, and at which
        layer; if it does not, a coarse level of the MGRIT solve is to blame (its larger steps are
        unstable), and the first coarse step that went non-finite in the solve run again with every
        step watched (``rerun``) is named.
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
        try:
            serial_pass(fine_tracker)
        except NonFiniteError:
            failed = 1.0
        fine, _, _ = fine_tracker.first()
        coarse, span = -1, -1
        if rerun is not None and not failed:
            tracker = FiniteTracker()
            try:
                rerun(tracker)
            except NonFiniteError:
                pass
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
        return NonFiniteActivationError(f"{phase} pass: NaN/Inf appeared, but no single step could be blamed", None, phase)


_Watched = TypeVar("_Watched", ForwardProblem, AdjointProblem)


def _tracked(problem: _Watched, tracker: FiniteTracker) -> _Watched:
    """``problem`` with every step watched for NaN/Inf by ``tracker`` (a diagnosis)."""
    problem.tracker = tracker
    return problem


@dataclass
class _ExactPass:
    """One level: this rank's block of the serial network, run with autograd (``leaf`` -> ``out``);
    ``inputs``: the input of every owned layer (for a diagnosis)."""

    leaf: torch.Tensor
    out: torch.Tensor
    inputs: list[torch.Tensor]
    params: list[torch.Tensor]  # the owned layers', in order


class _LayerChain(torch.autograd.Function):
    """``x_L`` from ``x_0`` by forward MGRIT; the backward pass by adjoint MGRIT."""

    @staticmethod
    def forward(
        ctx: Any, net: LayerParallel, linearise: bool, x0: torch.Tensor, anchor: torch.Tensor, *params: torch.Tensor
    ) -> torch.Tensor:
        x_last, problem, template = net._forward_solve(x0, linearise, list(params))
        ctx.net, ctx.problem, ctx.template = net, problem, template
        return x_last.clone() if net.comm.rank == 0 else x_last

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor | None) -> tuple[Any, ...]:
        net: LayerParallel = ctx.net
        grad_last = grad_output
        if net.comm.rank != 0:
            grad_last = None  # the gradient of the loss comes from rank 0
        elif grad_last is None:  # pragma: no cover - autograd passes zeros for unused outputs
            grad_last = torch.zeros_like(ctx.template)
        grad_x0, grads = net._backward_solve(ctx.problem, ctx.template, grad_last)
        ctx.problem = None  # the linearisation's graphs
        if not ctx.needs_input_grad[2]:
            grad_x0 = None
        return (None, None, grad_x0, None, *grads)


class _ShareOutput(torch.autograd.Function):
    """Rank 0's output on every rank; the gradient is taken from rank 0's loss only."""

    @staticmethod
    def forward(ctx: Any, net: LayerParallel, out: torch.Tensor) -> torch.Tensor:
        ctx.rank = net.comm.rank
        ctx.in_shape, ctx.in_dtype, ctx.in_device = out.shape, out.dtype, out.device
        shared = net.comm.broadcast(out.detach() if net.comm.rank == 0 else None).to(out.device)
        return shared.clone() if net.comm.rank == 0 else shared

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        if ctx.rank == 0:
            return None, grad
        return None, torch.zeros(ctx.in_shape, dtype=ctx.in_dtype, device=ctx.in_device)


class _WarmMGRIT(MGRIT):
    """The engine's MGRIT, keeping its finest level and the C-point images of its last residual
    evaluation for the last sweep."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cached: Cached | None = None

    def _setup(self, u0: State, timer: PhaseTimer) -> list[Level]:
        levels = super()._setup(u0, timer)
        self.finest = levels[0]
        return levels

    def _residual_norm(self, finest: Level) -> tuple[float, Cached]:
        norm, self.cached = super()._residual_norm(finest)
        return norm, self.cached


def _last_sweep(level: Level, problem: ForwardProblem | AdjointProblem, final_relax: bool, cached: Cached | None) -> None:
    """The sweep after the last MGRIT iteration, during which the problem keeps what the backward
    pass needs (the forward problem its steps, as the linearisation; the adjoint problem the
    parameter gradients): every layer of this rank steps once.

    ``final_relax``: C-relaxation (from the images the last residual evaluation computed), then
    F-relaxation, then the images at the C-points once more, of which only the last point's is kept:
    every layer's input is the output of the layer before it but at the C-points, and the last
    point is the step from the one before it (the network's output, or ``lambda_0``).  Without it:
    one step out of every point of the solution as it is.
    """
    if final_relax:
        c_relax(level, cached=cached)
        problem.last_sweep(True)
        try:
            f_relax(level)
            images = c_images(level)
        finally:
            problem.last_sweep(False)
        if images is not None and level.layout.hi == level.layout.n:
            put(level.u, level.layout.n_local - 1, take(images[1], length(images[1]) - 1))
        return
    problem.last_sweep(True)
    try:
        point_images(level, level.u, every_point=True, with_g=False)
    finally:
        problem.last_sweep(False)
