"""Functional update rules that reproduce ``torch.optim`` step for step.

A training step is ``state_{i+1} = update(state_i, grad L(w_i; batch_i))``.  The state is the
flat weight vector, plus the optimizer's own state where it has one:

* plain SGD: the weight tensor itself;
* SGD with momentum: ``{"w": weights, "buf": momentum buffer}``;
* Adam / AdamW: ``{"w", "m" (first moment), "v" (second moment), "step" (step count)}``.

All leaves share one dtype (the engine sends a state as one flat buffer); the step count is
kept as a float tensor of shape ``(1,)``.  Every rule works on *stacked* states (leading batch
axis of independent trajectories) so that one call advances many time points at once.

``fine_steps`` is how many fine training steps one application stands for (1 on the finest
level, ``m**l`` on level ``l``): Adam advances its step count by it, so the bias correction at
a coarse point is the one of the fine point it approximates.  ``first`` marks applications
that start at training step 0, where torch's SGD initialises the momentum buffer with the
gradient itself (which differs from a zero buffer when ``dampening != 0``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from torchpint.training.errors import TrainingConfigError


def _check_lr(lr: float) -> None:
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise TrainingConfigError(f"the learning rate must be a finite number > 0, got {lr}")


@dataclass(frozen=True)
class SGD:
    """``torch.optim.SGD`` (momentum, dampening, Nesterov, L2 weight decay)."""

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _check_lr(self.lr)
        if not 0.0 <= self.momentum < 1.0:
            raise TrainingConfigError(f"SGD momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise TrainingConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise TrainingConfigError("Nesterov momentum needs momentum > 0 and dampening = 0 (as torch.optim.SGD)")

    @property
    def name(self) -> str:
        return "sgd-momentum" if self.momentum else "sgd"

    @property
    def stateful(self) -> bool:
        return self.momentum != 0.0

    def state_factor(self) -> int:
        """Flat vectors per state (for memory estimates)."""
        return 2 if self.stateful else 1

    def init_state(self, w: Tensor) -> Any:
        if not self.stateful:
            return w.clone()
        return {"w": w.clone(), "buf": torch.zeros_like(w)}

    def weights(self, state: Any) -> Tensor:
        return state if isinstance(state, Tensor) else state["w"]

    def apply(self, state: Any, grad: Tensor, lr: float, fine_steps: int, first: Tensor) -> Any:
        w = self.weights(state)
        g = grad if self.weight_decay == 0 else grad + self.weight_decay * w
        if not self.stateful:
            return w - lr * g
        buf = self.momentum * state["buf"] + (1.0 - self.dampening) * g
        if self.dampening != 0 and bool(first.any()):
            buf = torch.where(first.unsqueeze(-1), g, buf)
        step = g + self.momentum * buf if self.nesterov else buf
        return {"w": w - lr * step, "buf": buf}

    def apply_frozen(self, state: Any, grad: Tensor, lr: float, k: int, first: Tensor) -> Any:
        """``k`` updates with the loss gradient frozen at ``grad`` (a coarse step standing for ``k`` fine ones).

        Plain SGD: ``w - k lr g``; heavy-ball momentum without dampening / Nesterov / weight decay:
        the closed form of ``k`` steps of ``b <- mu b + g, w <- w - lr b``; otherwise a loop.
        """
        if self.weight_decay == 0 and not self.nesterov:
            w = self.weights(state)
            if not self.stateful:
                return w - (k * lr) * grad
            if self.dampening == 0:
                mu = self.momentum
                geo = (1.0 - mu**k) / (1.0 - mu)  # sum_{j=0}^{k-1} mu^j
                b = state["buf"]
                new_b = mu**k * b + geo * grad
                w_new = w - lr * (mu * geo * b + (k - mu * geo) / (1.0 - mu) * grad)
                return {"w": w_new, "buf": new_b}
        return _frozen_loop(self, state, grad, lr, k, first)

    def to_torch(self, params: Any, lr: float | None = None) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            params,
            lr=self.lr if lr is None else lr,
            momentum=self.momentum,
            dampening=self.dampening,
            nesterov=self.nesterov,
            weight_decay=self.weight_decay,
        )


@dataclass(frozen=True)
class Adam:
    """``torch.optim.Adam`` (L2 weight decay) or, with ``decoupled=True``, ``torch.optim.AdamW``."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False

    def __post_init__(self) -> None:
        _check_lr(self.lr)
        b1, b2 = self.betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise TrainingConfigError(f"Adam betas must be in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise TrainingConfigError(f"Adam eps must be > 0, got {self.eps}")
        if self.weight_decay < 0:
            raise TrainingConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")

    @property
    def name(self) -> str:
        return "adamw" if self.decoupled else "adam"

    stateful = True

    def state_factor(self) -> int:
        return 3

    def init_state(self, w: Tensor) -> Any:
        return {
            "w": w.clone(),
            "m": torch.zeros_like(w),
            "v": torch.zeros_like(w),
            "step": torch.zeros(1, dtype=w.dtype, device=w.device),
        }

    def weights(self, state: Any) -> Tensor:
        return state["w"]

    def apply(self, state: Any, grad: Tensor, lr: float, fine_steps: int, first: Tensor) -> Any:
        b1, b2 = self.betas
        w = state["w"]
        g = grad
        if self.weight_decay != 0:
            if self.decoupled:
                w = w * (1.0 - lr * self.weight_decay)
            else:
                g = g + self.weight_decay * w
        step = state["step"] + float(fine_steps)
        m = state["m"] + (1.0 - b1) * (g - state["m"])  # torch: exp_avg.lerp_(grad, 1 - beta1)
        v = b2 * state["v"] + (1.0 - b2) * g * g
        bc1 = 1.0 - torch.pow(torch.full_like(step, b1), step)
        bc2 = 1.0 - torch.pow(torch.full_like(step, b2), step)
        # v >= 0 on every real trajectory; FAS coarse-level iterates need not be, and sqrt must
        # not turn them into NaN (the clamp never changes a trajectory torch.optim could produce).
        denom = v.clamp(min=0).sqrt() / bc2.sqrt() + self.eps
        w = w - (lr / bc1) * (m / denom)
        return {"w": w, "m": m, "v": v, "step": step}

    def apply_frozen(self, state: Any, grad: Tensor, lr: float, k: int, first: Tensor) -> Any:
        """``k`` Adam updates with the loss gradient frozen at ``grad`` (a loop of elementwise updates)."""
        return _frozen_loop(self, state, grad, lr, k, first)

    def to_torch(self, params: Any, lr: float | None = None) -> torch.optim.Optimizer:
        cls = torch.optim.AdamW if self.decoupled else torch.optim.Adam
        return cls(params, lr=self.lr if lr is None else lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay)


UpdateRule = SGD | Adam


def _frozen_loop(rule: Any, state: Any, grad: Tensor, lr: float, k: int, first: Tensor) -> Any:
    out = state
    for j in range(k):
        out = rule.apply(out, grad, lr, 1, first if j == 0 else torch.zeros_like(first))
    return out


def from_torch(optimizer: torch.optim.Optimizer) -> UpdateRule:
    """The update rule of a ``torch.optim`` SGD, Adam or AdamW instance (one parameter group)."""
    groups = optimizer.param_groups
    if len(groups) != 1:
        raise TrainingConfigError("only optimizers with one parameter group are supported")
    g = groups[0]
    if isinstance(optimizer, torch.optim.SGD):
        if g.get("maximize"):
            raise TrainingConfigError("maximize=True is not supported")
        return SGD(lr=float(g["lr"]), momentum=g["momentum"], dampening=g["dampening"],
                   nesterov=g["nesterov"], weight_decay=g["weight_decay"])
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        if g.get("amsgrad") or g.get("maximize"):
            raise TrainingConfigError("amsgrad / maximize are not supported")
        return Adam(lr=float(g["lr"]), betas=tuple(g["betas"]), eps=g["eps"], weight_decay=g["weight_decay"],
                    decoupled=isinstance(optimizer, torch.optim.AdamW) or bool(g.get("decoupled_weight_decay")))
    raise TrainingConfigError(f"unsupported optimizer {type(optimizer).__name__}: use SGD, Adam or AdamW")
