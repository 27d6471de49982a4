"""The forward and the adjoint pass of a residual network as MGRIT problems.

Both map a time ``t`` to a layer by ``round(t / h)`` and take the step length from the
integer number of layers a step spans (``H = (round(t1/h) - round(t0/h)) * h``), so the
fine level steps with exactly the ``h`` of the serial network and a coarse level with ``cf^l h``.

``step_batch`` advances every state of a stacked batch with its own layer (a
:class:`LayerBank` evaluates them: one ``torch.func.vmap`` call over the stacked weights of the
layers involved, or a loop of module calls), so an F-relaxation is one batched call over all
C-intervals.

The forward pass's last sweep keeps its steps with their autograd graphs (a
:class:`Linearisation`); every adjoint step is a backward pass through them (no forward
recomputation), and the adjoint's last sweep takes the parameter gradients from the same
backward passes as its steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, vmap

from torchpint.engine.problem import BatchedProblem

STEP_MODES = ("auto", "vmap", "loop")


class LayerBank:
    """The step layers one rank can step with (its own, and replicas of a few others).

    ``modules[k]`` is layer ``k`` with current weights.  ``mode`` says how the forward solve's
    batch of steps through different layers is evaluated: ``"vmap"`` (the weights of the layers
    involved stacked, one ``torch.func.vmap`` call of ``functional_call``: one kernel per
    operation, what a GPU wants) or ``"loop"`` (one plain module call per layer: faster on CPU,
    where a vmapped convolution becomes a slower grouped convolution); ``"auto"`` picks vmap on
    CUDA and the loop elsewhere.  Recorded steps (:class:`Linearisation`) are module calls.
    """

    def __init__(self, modules: dict[int, nn.Module], layers: int, mode: str = "auto") -> None:
        if mode not in STEP_MODES:
            raise ValueError(f"step_mode must be one of {', '.join(STEP_MODES)}, got {mode!r}")
        self.modules = modules
        self.layers = layers
        self.template = next(iter(modules.values()))  # the architecture; functional_call swaps its weights
        self.names = [name for name, _ in self.template.named_parameters()]
        self._trainable: dict[int, list[nn.Parameter]] = {}
        device = next(self.template.parameters()).device
        self.vmap = mode == "vmap" or (mode == "auto" and device.type == "cuda")

    def stacked(self, ids: list[int]) -> dict[str, torch.Tensor]:
        """The weights of the given layers, stacked along a new leading axis (detached)."""
        return {
            name: torch.stack([self.modules[k].get_parameter(name).detach() for k in ids]) for name in self.names
        }

    def f(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The step layer with ``params`` on one state."""
        return functional_call(self.template, params, (x,))

    def step(
        self, ids: list[int], u: torch.Tensor, scale: list[float], out: torch.Tensor, record: Linearisation | None = None
    ) -> None:
        """``out[i] = u[i] + scale[i] f_{ids[i]}(u[i])`` for every ``i``; with ``record``, each ``f`` is
        kept with its graph."""
        missing = sorted({k for k in ids if k not in self.modules})
        if missing:
            raise RuntimeError(f"internal error: layers {missing} are not available on this rank")
        if record is None and self.vmap:
            f = vmap(self.f)(self.stacked(ids), u)
            check_step_shape(u[0], f[0])
            torch.addcmul(u, torch.tensor(scale, dtype=u.dtype, device=u.device).view(-1, *([1] * (u.dim() - 1))), f,
                          out=out)
            return
        with torch.no_grad():
            for k, x, s, y in zip(ids, u.unbind(0), scale, out.unbind(0)):  # unbind: one call for all views
                f = record.step(self, k, x) if record is not None else self.modules[k](x)
                check_step_shape(x, f)
                torch.add(x, f, alpha=s, out=y)  # one pass, straight into the result

    def trainable(self, k: int) -> list[nn.Parameter]:
        """Layer ``k``'s parameters that want gradients (frozen ones get zeros)."""
        if k not in self._trainable:  # a bank lives for one pass: the flags cannot change meanwhile
            self._trainable[k] = [p for p in self.modules[k].parameters() if p.requires_grad]
        return self._trainable[k]

    def param_grads(self, k: int, found: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """``found`` (the gradients of :meth:`trainable`, ``None`` where unused) for every parameter, by name."""
        given = dict(zip((id(p) for p in self.trainable(k)), found))
        out = []
        for p in self.modules[k].parameters():
            g = given.get(id(p))
            out.append(g if g is not None else torch.zeros_like(p))
        return out


class Linearisation:
    """The steps ``f_k(x_k)`` of the forward pass's last sweep, kept with their autograd graphs.

    Every adjoint step of layer ``k``, on every level (a coarse step of layer ``k`` linearises at
    the same state ``x_k``), is ``J_{f_k}(x_k)^T v``: a backward pass through the kept graph, with no
    forward recomputation; the adjoint's last sweep also takes the parameter gradient from it.
    Each ``x_k`` is its own leaf (a copy: the solver overwrites its trajectory in place).
    """

    def __init__(self) -> None:
        self.inputs: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    def step(self, bank: LayerBank, k: int, x: torch.Tensor) -> torch.Tensor:
        """``f_k(x)``, kept with its graph (returned detached)."""
        with torch.enable_grad():
            leaf = x.detach().clone().requires_grad_(True)
            f = bank.modules[k](leaf)
        self.inputs[k], self.outputs[k] = leaf, f
        return f.detach()

    def vjp(
        self, bank: LayerBank, ids: list[int], v: list[torch.Tensor], *, inputs: bool = True, params: bool = False
    ) -> tuple[list[torch.Tensor] | None, list[list[torch.Tensor]] | None]:
        """``J_{f_k}(x_k)^T v_k`` for every ``k`` of ``ids`` (``inputs``), and the parameter
        vector-Jacobian products ``(d f_k / d theta_k)^T v_k`` (``params``; per layer, by name),
        from one backward pass through the kept graphs (kept for the next use)."""
        missing = [k for k in ids if k not in self.outputs]
        if missing:
            raise RuntimeError(f"internal error: no recorded forward step for layers {missing}")
        leaves = [self.inputs[k] for k in ids] if inputs else []
        wanted = [p for k in ids for p in bank.trainable(k)] if params else []
        found = torch.autograd.grad(
            [self.outputs[k] for k in ids], leaves + wanted, v, retain_graph=True, allow_unused=True
        )
        jt = None
        if inputs:
            jt = [g if g is not None else torch.zeros_like(x) for g, x in zip(found, leaves)]
        if not params:
            return jt, None
        rest = list(found[len(leaves):])
        grads = []
        for k in ids:
            n = len(bank.trainable(k))
            grads.append(bank.param_grads(k, rest[:n]))
            rest = rest[n:]
        return jt, grads


@dataclass
class FiniteTracker:
    """Where NaN/Inf first appeared: steps whose input was finite and whose output is not."""

    # (layer, span, per-point sums of the input and of the output) of every batched step.  A sum
    # is non-finite iff an entry is (or it overflows, at ~1e308 in float64); it is inspected only
    # after a failure, so recording costs one cheap reduction and no device synchronisation.
    events: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def record(self, layer: list[int], span: list[int], u_in: torch.Tensor, u_out: torch.Tensor) -> None:
        self.events.append((torch.tensor(layer), torch.tensor(span), u_in.flatten(1).sum(1), u_out.flatten(1).sum(1)))

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


def finite(t: torch.Tensor) -> bool:
    """No NaN/Inf in ``t``.  A finite sum proves it (NaN and Inf propagate through a sum), and a sum
    is ~30x faster than ``isfinite().all()`` on CPU; only a non-finite sum (which may be an overflow)
    is checked entry by entry."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def check_step_shape(x: torch.Tensor, f: torch.Tensor) -> None:
    """A residual step ``x + h f(x)`` needs ``f`` to keep the shape of ``x``."""
    if f.shape != x.shape:
        raise ValueError(
            f"the step layer maps activations of shape {tuple(x.shape)} to {tuple(f.shape)}: "
            f"a residual step x + h f(x) needs f to keep the shape"
        )


def _steps(h: float, t_start: torch.Tensor, t_stop: torch.Tensor) -> tuple[list[int], list[int]]:
    """The grid index of every step's start and how many layers it spans (the grid is ``k h``)."""
    first = [round(t / h) for t in t_start.tolist()]
    return first, [round(t / h) - k for t, k in zip(t_stop.tolist(), first)]


class ForwardProblem(BatchedProblem):
    """``x_{k+1} = x_k + H f_k(x_k)`` with ``k = round(t_start / h)`` (coarse: layer of the coarse point).

    ``tracker``: when set, every step is watched for NaN/Inf (a diagnosis re-runs a failed solve
    with one; the normal run pays nothing for it).
    """

    def __init__(self, bank: LayerBank, h: float, linearise: bool = False) -> None:
        self.bank = bank
        self.h = h
        self.tracker: FiniteTracker | None = None
        self.linearise = linearise  # a backward pass will follow
        self.linearisation = Linearisation()
        self.record: Linearisation | None = None  # set during the last sweep (see last_sweep)

    def last_sweep(self, on: bool) -> None:
        """While on (and ``linearise``), the steps are kept with their graphs: the backward pass's linearisation."""
        self.record = self.linearisation if on and self.linearise else None

    def step_batch(self, u: torch.Tensor, t_start: torch.Tensor, t_stop: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(u)
        self.step_batch_into(u, t_start, t_stop, out)
        return out

    def step_batch_into(self, u: torch.Tensor, t_start: torch.Tensor, t_stop: torch.Tensor, out: torch.Tensor) -> None:
        """The steps written straight into ``out`` (the engine's trajectory): no copy."""
        first, span = _steps(self.h, t_start, t_stop)
        self.bank.step(first, u, [n * self.h for n in span], out, self.record)
        if self.tracker is not None:
            self.tracker.record(first, span, u, out)


class AdjointProblem(BatchedProblem):
    """``lambda_k = lambda_{k+M} + M h J_{f_k}(x_k)^T lambda_{k+M}`` in reversed time ``s = L - k``.

    The Jacobians are those of the forward pass's :class:`Linearisation` (a coarse step of layer
    ``k`` linearises at the same ``x_k``).  During the last sweep (:meth:`last_sweep`), whose inputs
    ``lambda_{k+1}`` are final, every fine step also stores layer ``k``'s parameter gradient
    ``h (d f_k / d theta_k)^T lambda_{k+1}`` in ``grads``: from the same backward pass as its
    adjoint step.  ``tracker``: as for :class:`ForwardProblem`.
    """

    def __init__(self, bank: LayerBank, linearisation: Linearisation, layers: int, h: float) -> None:
        self.bank = bank
        self.linearisation = linearisation
        self.layers = layers
        self.h = h
        self.tracker: FiniteTracker | None = None
        self.collect = False
        self.grads: dict[int, list[torch.Tensor]] = {}

    def last_sweep(self, on: bool) -> None:
        self.collect = on

    def step_batch(self, u: torch.Tensor, t_start: torch.Tensor, t_stop: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(u)
        self.step_batch_into(u, t_start, t_stop, out)
        return out

    def step_batch_into(self, u: torch.Tensor, t_start: torch.Tensor, t_stop: torch.Tensor, out: torch.Tensor) -> None:
        """The steps written straight into ``out`` (the engine's trajectory): no copy."""
        s0, span = _steps(self.h, t_start, t_stop)
        ids = [self.layers - s - n for s, n in zip(s0, span)]  # the forward step from point k to k + span
        states, results = u.unbind(0), out.unbind(0)
        # The adjoint is linear: a zero state steps to zero (and gives zero parameter gradients).
        # From a cold start most states of the first iteration are exactly zero; one reduction
        # finds them, much cheaper than the steps it saves (on CPU: it needs the flags on the host).
        if u.device.type == "cpu":
            live = u.flatten(1).ne(0).any(1).tolist()
        else:
            live = [True] * len(ids)
        work = [i for i, flag in enumerate(live) if flag]
        for i, flag in enumerate(live):
            if not flag:
                results[i].zero_()
                if self.collect:
                    self.grads[ids[i]] = self.bank.param_grads(ids[i], [None] * len(self.bank.trainable(ids[i])))
        if work:
            layers = [ids[i] for i in work]
            jt, grads = self.linearisation.vjp(self.bank, layers, [states[i] for i in work], params=self.collect)
            assert jt is not None
            for i, g in zip(work, jt):
                torch.add(states[i], g, alpha=span[i] * self.h, out=results[i])
            if grads is not None:
                for k, g in zip(layers, grads):
                    self.grads[k] = [self.h * x for x in g]
        if self.tracker is not None:
            self.tracker.record(ids, span, u, out)
