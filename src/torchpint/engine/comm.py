"""Communication between the ranks that share a time grid.

MGRIT needs only three kinds of exchange, so that is all this module offers:

* the *halo*: a rank needs the value at the point just before its first point, which the
  previous non-empty rank owns (point-to-point, always forward in time, so no cycle of
  waits can form);
* a *sum* over ranks (the space-time residual norm);
* a *gather* of the local trajectories (to hand the whole solution to the caller).

``SerialComm`` is the one-process case; ``DistComm`` runs over a ``torch.distributed``
process group (gloo on CPU, nccl on GPU).  Messages between a pair of ranks are matched in
the order they were posted, so no hand-coded tags are needed: both sides derive from the
same global layout which messages exist, in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist

from torchpint.engine.state import State, flatten, unflatten


class Comm(Protocol):
    rank: int
    size: int

    def send(self, state: State, dst: int) -> None: ...

    def recv(self, template: State, src: int) -> State: ...

    def irecv(self, template: State, src: int) -> PendingRecv: ...

    def wait_sends(self) -> None: ...

    def sum(self, value: torch.Tensor) -> torch.Tensor: ...

    def all_gather_sizes(self, local: torch.Tensor) -> list[torch.Tensor]: ...


@dataclass
class PendingRecv:
    """A receive posted with ``irecv``: ``wait()`` gives the state once it has arrived."""

    work: dist.Work | None
    buffer: torch.Tensor
    template: State

    def wait(self) -> State:
        if self.work is not None:
            self.work.wait()
        return unflatten(self.buffer.to(flatten(self.template).device), self.template)


class SerialComm:
    """One rank: every exchange is a no-op (there is no other rank to talk to)."""

    rank = 0
    size = 1

    def send(self, state: State, dst: int) -> None:  # pragma: no cover - never called
        raise RuntimeError("SerialComm has no other rank to send to")

    def recv(self, template: State, src: int) -> State:  # pragma: no cover - never called
        raise RuntimeError("SerialComm has no other rank to receive from")

    def irecv(self, template: State, src: int) -> PendingRecv:  # pragma: no cover - never called
        raise RuntimeError("SerialComm has no other rank to receive from")

    def wait_sends(self) -> None:
        return None

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def all_gather_sizes(self, local: torch.Tensor) -> list[torch.Tensor]:
        return [local]


class DistComm:
    """Exchanges over a ``torch.distributed`` process group."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "DistComm needs torch.distributed to be initialised (torchrun, or torchpint --nproc)"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self._pending: list[dist.Work] = []
        # Buffers of messages in flight must stay alive until their send completes.
        self._in_flight: list[torch.Tensor] = []
        backend = dist.get_backend(group)
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def _global(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def send(self, state: State, dst: int) -> None:
        # A private copy: the caller goes on updating the trajectory while the send is in flight.
        buffer = flatten(state).to(self.device, copy=True).contiguous()
        self._in_flight.append(buffer)
        work = dist.isend(buffer, self._global(dst), group=self.group)
        if work is not None:
            self._pending.append(work)

    def recv(self, template: State, src: int) -> State:
        flat = flatten(template)
        buffer = torch.empty(flat.numel(), dtype=flat.dtype, device=self.device)
        dist.recv(buffer, self._global(src), group=self.group)
        return unflatten(buffer.to(flat.device), template)

    def irecv(self, template: State, src: int) -> PendingRecv:
        """Post a receive and return at once (matched in posting order, as ``recv``)."""
        flat = flatten(template)
        buffer = torch.empty(flat.numel(), dtype=flat.dtype, device=self.device)
        return PendingRecv(dist.irecv(buffer, self._global(src), group=self.group), buffer, template)

    def wait_sends(self) -> None:
        for work in self._pending:
            work.wait()
        self._pending.clear()
        self._in_flight.clear()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        buffer = value.detach().to(self.device, torch.float64).clone()
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=self.group)
        return buffer.to(value.device)

    def all_gather_sizes(self, local: torch.Tensor) -> list[torch.Tensor]:
        """All ranks' 1-D tensors (of possibly different lengths), in rank order."""
        size = torch.tensor([local.numel()], dtype=torch.int64, device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(self.size)]
        dist.all_gather(sizes, size, group=self.group)
        longest = int(max(int(s) for s in sizes))
        padded = torch.zeros(longest, dtype=local.dtype, device=self.device)
        padded[: local.numel()] = local.to(self.device)
        chunks = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(chunks, padded, group=self.group)
        return [c[: int(s)].to(local.device) for c, s in zip(chunks, sizes)]


class ReversedComm:
    """The same ranks numbered backwards (rank ``r`` is ``size - 1 - r`` of ``inner``).

    An adjoint (backward-in-time) solve runs its "time" from the last layer to the first; with
    the ranks numbered backwards each rank keeps the points it owned in the forward solve and
    the halo still flows forward in the solve's own time.
    """

    def __init__(self, inner: Comm) -> None:
        self.inner = inner
        self.size = inner.size
        self.rank = inner.size - 1 - inner.rank

    def _map(self, rank: int) -> int:
        return self.size - 1 - rank

    def send(self, state: State, dst: int) -> None:
        self.inner.send(state, self._map(dst))

    def recv(self, template: State, src: int) -> State:
        return self.inner.recv(template, self._map(src))

    def irecv(self, template: State, src: int) -> PendingRecv:
        return self.inner.irecv(template, self._map(src))

    def wait_sends(self) -> None:
        self.inner.wait_sends()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return self.inner.sum(value)

    def all_gather_sizes(self, local: torch.Tensor) -> list[torch.Tensor]:
        return list(reversed(self.inner.all_gather_sizes(local)))


def default_comm() -> Comm:
    """DistComm when torch.distributed is initialised with more than one rank, else serial."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return DistComm()
    return SerialComm()
