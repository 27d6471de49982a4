"""The forward and the adjoint pass of a residual network as MGRIT problems.

Both map a time ``t`` to a layer by ``round(t / h)`` and take the step length from the
integer number of layers a step spans (``H = (round(t1/h) - round(t0/h)) * h``), so the
fine level steps with exactly the ``h`` of the serial network and a coarse level with ``cf^l h``.

``step_batch`` advances every state of a stacked batch with its own layer (a
:class:`LayerBank` evaluates them: one ``torch.func.vmap`` call over the stacked weights of the
layers involved, or a loop of module calls), so an F-relaxation is one batched call over all
C-intervals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap

from torchpint.engine.problem import BatchedProblem

STEP_MODES = ("auto", "vmap", "loop")


class LayerBank:
    """The step layers one rank can step with (its own, and replicas of a few others).

    ``modules[k]`` is layer ``k`` with current weights.  ``mode`` says how a batch of steps
    through different layers is evaluated: ``"vmap"`` (the weights of the layers involved
    stacked, one ``torch.func.vmap`` call of ``functional_call``: one kernel per operation, what
    a GPU wants) or ``"loop"`` (one plain module call per layer, and autograd for the VJPs:
    faster on CPU, where a vmapped convolution becomes a slower grouped convolution);
    ``"auto"`` picks vmap on CUDA and the loop elsewhere.
    """

    def __init__(self, modules: dict[int, nn.Module], layers: int, mode: str = "auto") -> None:
        if mode not in STEP_MODES:
            raise ValueError(f"step_mode must be one of {', '.join(STEP_MODES)}, got {mode!r}")
        self.modules = modules
        self.layers = layers
        self.template = next(iter(modules.values()))  # the architecture; functional_call swaps its weights
        self.names = [name for name, _ in self.template.named_parameters()]
        device = next(self.template.parameters()).device
        self.vmap = mode == "vmap" or (mode == "auto" and device.type == "cuda")

    def _ids(self, layer: torch.Tensor) -> list[int]:
        ids = layer.tolist()
        missing = sorted({k for k in ids if k not in self.modules})
        if missing:
            raise RuntimeError(f"internal error: layers {missing} are not available on this rank")
        return ids

    def stacked(self, layer: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weights of the given layers, stacked along a new leading axis (detached)."""
        ids = self._ids(layer)
        return {
            name: torch.stack([self.modules[k].get_parameter(name).detach() for k in ids]) for name in self.names
        }

    def f(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The step layer with ``params`` on one state."""
        return functional_call(self.template, params, (x,))

    # ------------------------------------------------------------------ the three operations
    def forward(self, layer: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``f_{layer[i]}(u[i])`` for every ``i``."""
        if self.vmap:
            return vmap(self.f)(self.stacked(layer), u)
        with torch.no_grad():
            return torch.stack([self.modules[k](u[i]) for i, k in enumerate(self._ids(layer))])

    def vjp_input(self, layer: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``J_{f_k}(x_k)^T v_k`` with respect to the input, for every ``k`` of ``layer``."""
        if self.vmap:

            def one(params: dict[str, torch.Tensor], xk: torch.Tensor, vk: torch.Tensor) -> torch.Tensor:
                pull = vjp(lambda xx: self.f(params, xx), xk)[1]
                return pull(vk)[0]

            return vmap(one)(self.stacked(layer), x, v)
        ids = self._ids(layer)
        with torch.enable_grad():
            xs = x.detach().requires_grad_(True)
            outs = [self.modules[k](xs[i]) for i, k in enumerate(ids)]
            (grad,) = torch.autograd.grad(outs, [xs], [v[i] for i in range(len(ids))])
        return grad

    def vjp_params(self, layer: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(d f_k / d theta_k)^T v_k`` for every ``k`` of ``layer``, stacked by parameter name."""
        if self.vmap:

            def one(params: dict[str, torch.Tensor], xk: torch.Tensor, vk: torch.Tensor) -> dict[str, torch.Tensor]:
                pull = vjp(lambda p: self.f(p, xk), params)[1]
                return pull(vk)[0]

            return vmap(one)(self.stacked(layer), x, v)
        ids = self._ids(layer)
        params = [self.modules[k].get_parameter(name) for k in ids for name in self.names]
        wanted = [p for p in params if p.requires_grad]  # frozen weights get zeros
        with torch.enable_grad():
            outs = [self.modules[k](x[i].detach()) for i, k in enumerate(ids)]
            found = torch.autograd.grad(outs, wanted, [v[i] for i in range(len(ids))], allow_unused=True) if wanted else ()
        by_id = {id(p): g for p, g in zip(wanted, found)}
        n = len(self.names)
        return {
            name: torch.stack([
                g if (g := by_id.get(id(params[i * n + j]))) is not None else torch.zeros_like(params[i * n + j])
                for i in range(len(ids))
            ])
            for j, name in enumerate(self.names)
        }


@dataclass
class FiniteTracker:
    """Where NaN/Inf first appeared: steps whose input was finite and whose output is not."""

    # (layer, span, per-point sums of the input and of the output) of every batched step.  A sum
    # is non-finite iff an entry is (or it overflows, at ~1e308 in float64); it is inspected only
    # after a failure, so recording costs one cheap reduction and no device synchronisation.
    events: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def record(self, layer: torch.Tensor, span: torch.Tensor, u_in: torch.Tensor, u_out: torch.Tensor) -> None:
        self.events.append((layer, span, u_in.flatten(1).sum(1), u_out.flatten(1).sum(1)))

    def first(self) -> tuple[int, int, int]:
        """``(first fine layer, first coarse layer, its span)``; -1 where there is none."""
        fine, coarse, coarse_span = -1, -1, -1
        for layer, span, s_in, s_out in self.events:
            origin = (torch.isfinite(s_in) & ~torch.isfinite(s_out)).cpu()
            for k, s in zip(layer[origin].tolist(), span[origin].tolist()):
                if s == 1 and (fine < 0 or k < fine):
                    fine = k
                if s > 1 and (coarse < 0 or k < coarse):
                    coarse, coarse_span = k, s
        return fine, coarse, coarse_span


def _column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` (n,) shaped to broadcast against a stacked state ``like`` (n, ...)."""
    return values.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))


class ForwardProblem(BatchedProblem):
    """``x_{k+1} = x_k + H f_k(x_k)`` with ``k = round(t_start / h)`` (coarse: layer of the coarse point)."""

    def __init__(self, bank: LayerBank, h: float, tracker: FiniteTracker) -> None:
        self.bank = bank
        self.h = h
        self.tracker = tracker

    def step_batch(self, u: torch.Tensor, t_start: torch.Tensor, t_stop: torch.Tensor) -> torch.Tensor:
        first = torch.round(t_start / self.h).long()
        span = torch.round(t_stop / self.h).long() - first
        f = self.bank.forward(first, u)
        if f.shape != u.shape:
            raise ValueError(
                f"the step layer maps activations of shape {tuple(u.shape[1:])} to {tuple(f.shape[1:])}: "
                f"a residual step x + h f(x) needs f to keep the shape"
            )
        out = u + _column(span.to(torch.float64) * self.h, u) * f
        self.tracker.record(first, span, u, out)
        return out


class AdjointProblem(BatchedProblem):
    """``lambda_k = lambda_{k+M} + M h J_{f_k}(x_k)^T lambda_{k+M}`` in reversed time ``s = L - k``.

    ``states`` holds this rank's forward solution at the points ``first_point, first_point + 1, ...``
    (the linearisation points; a coarse level uses the injected fine states).
    """

    def __init__(
        self, bank: LayerBank, states: torch.Tensor, first_point: int, layers: int, h: float, tracker: FiniteTracker
    ) -> None:
        self.bank = bank
        self.states = states
        self.first_point = first_point
        self.layers = layers
        self.h = h
        self.tracker = tracker

    def step_batch(self, u: torch.Tensor, t_start: torch.Tensor, t_stop: torch.Tensor) -> torch.Tensor:
        s0 = torch.round(t_start / self.h).long()
        s1 = torch.round(t_stop / self.h).long()
        layer = self.layers - s1  # the forward step from point `layer` to `layer + span`
        span = s1 - s0
        local = (layer - self.first_point).to(self.states.device)
        x = self.states.index_select(0, local)
        jt = self.bank.vjp_input(layer, x, u)
        out = u + _column(span.to(torch.float64) * self.h, u) * jt
        self.tracker.record(layer, span, u, out)
        return out
