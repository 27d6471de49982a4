"""States: a torch tensor, or a dict / tuple / list of tensors (a "pytree").

The engine never looks inside a state beyond these few operations, so any problem whose
state is a tensor or a nested container of tensors works unchanged.  Trajectories are
stored *stacked*: every leaf gets a leading time axis, so that a set of time points is
one state whose leaves are ``(n, *leaf_shape)`` tensors.  That is what lets a problem
step many independent states in one call (``step_batch``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import torch

State: TypeAlias = torch.Tensor | Mapping[str, Any] | Sequence[Any]


def tree_map(fn: Callable[..., torch.Tensor], first: State, *rest: State) -> State:
    """Apply ``fn`` leaf by leaf to states of the same structure."""
    if isinstance(first, torch.Tensor):
        return fn(first, *rest)
    others: tuple[Any, ...] = rest  # same structure as ``first`` (not checked, for speed)
    if isinstance(first, Mapping):
        return {k: tree_map(fn, first[k], *(r[k] for r in others)) for k in first}
    if isinstance(first, (tuple, list)):
        items = [tree_map(fn, x, *(r[i] for r in others)) for i, x in enumerate(first)]
        return type(first)(items) if isinstance(first, tuple) else items
    raise TypeError(
        f"a state must be a torch.Tensor or a dict/tuple/list of tensors, got {type(first).__name__}"
    )


def leaves(state: State) -> list[torch.Tensor]:
    """The tensors of a state, in a fixed order."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, Mapping):
        return [leaf for k in state for leaf in leaves(state[k])]
    if isinstance(state, (tuple, list)):
        return [leaf for x in state for leaf in leaves(x)]
    raise TypeError(
        f"a state must be a torch.Tensor or a dict/tuple/list of tensors, got {type(state).__name__}"
    )


def clone(state: State) -> State:
    return tree_map(lambda x: x.clone(), state)


def add(a: State, b: State) -> State:
    return tree_map(torch.add, a, b)


def sub(a: State, b: State) -> State:
    return tree_map(torch.sub, a, b)


def axpby(alpha: float, a: State, beta: float, b: State) -> State:
    """``alpha * a + beta * b``."""
    return tree_map(lambda x, y: alpha * x + beta * y, a, b)


def stack(states: Sequence[State]) -> State:
    """Stack single states along a new leading (time) axis."""
    return tree_map(lambda *xs: torch.stack(xs), *states)


def single(state: State) -> State:
    """``state`` as a stacked state of one point: a view of it, where ``stack([state])`` copies."""
    return tree_map(lambda x: x.unsqueeze(0), state)


def cat(parts: Sequence[State]) -> State:
    """Concatenate stacked states along the time axis."""
    return tree_map(lambda *xs: torch.cat(xs), *parts)


def take(stacked: State, index: torch.Tensor | int | slice) -> State:
    """Select points from a stacked state (an int drops the time axis)."""
    return tree_map(lambda x: x[index], stacked)


def put(stacked: State, index: torch.Tensor | int | slice, values: State) -> None:
    """Write ``values`` into the points ``index`` of a stacked state, in place."""

    def _put(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        x[index] = v
        return x

    tree_map(_put, stacked, values)


def expand(state: State, n: int) -> State:
    """A stacked state of ``n`` copies of ``state`` (new memory)."""
    return tree_map(lambda x: x.unsqueeze(0).repeat(n, *([1] * x.dim())), state)


def empty_stack(state: State, n: int) -> State:
    """Uninitialised storage for ``n`` points shaped like ``state`` (to be written into)."""
    return tree_map(lambda x: x.new_empty((n, *x.shape)), state)


def length(stacked: State) -> int:
    """Number of points in a stacked state."""
    return int(leaves(stacked)[0].shape[0])


def batch_sq_norms(stacked: State, overwrite: bool = False) -> torch.Tensor:
    """Squared 2-norm of each point of a stacked state (float64, shape ``(n,)``).

    ``overwrite``: the caller's state is scratch: float64 leaves are squared in place (bitwise
    the same, without a temporary the size of the state).
    """
    total: torch.Tensor | None = None
    for leaf in leaves(stacked):
        flat = leaf.reshape(leaf.shape[0], -1)
        if overwrite and flat.dtype == torch.float64 and flat.is_contiguous():
            sq = flat.mul_(flat).sum(dim=1)
        else:
            sq = flat.to(torch.float64).pow(2).sum(dim=1)
        total = sq if total is None else total + sq
    assert total is not None
    return total


def flatten(state: State) -> torch.Tensor:
    """All leaves of a state in one contiguous 1-D buffer (for communication)."""
    parts = leaves(state)
    if len(parts) == 1:
        return parts[0].reshape(-1).contiguous()
    return torch.cat([p.reshape(-1) for p in parts])


def unflatten(buffer: torch.Tensor, template: State) -> State:
    """Inverse of :func:`flatten` for a state shaped like ``template``."""
    offset = 0

    def _take(x: torch.Tensor) -> torch.Tensor:
        nonlocal offset
        n = x.numel()
        out = buffer[offset : offset + n].view_as(x).clone()
        offset += n
        return out

    return tree_map(_take, template)


def all_finite(state: State) -> bool:
    return all(bool(torch.isfinite(leaf).all()) for leaf in leaves(state))
