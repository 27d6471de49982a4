"""Communication between the ranks that share a time grid.

MGRIT needs only three kinds of exchange:

* the *halo*: a rank needs the value at the point just before its first point, which the
  previous non-empty rank owns (point-to-point, always forward in time, so no cycle of
  waits can form);
* a *sum* over ranks (the space-time residual norm), blocking or started now and completed
  later (``isum``: a rank that need not wait for the result goes on meanwhile);
* a *gather* of the local trajectories (to hand the whole solution to the caller).

The networks built on the engine (parareal networks, layer-parallel ResNets) need three more,
and this module is the one place that does messaging for them too:

* *tagged* point-to-point tensors (``isend`` / ``recv_tensor``): several message streams
  between the same pair of ranks, told apart by their tag;
* ``broadcast`` of a tensor whose shape only the root knows;
* ``gather_object`` of small picklable results on one rank.

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

    def wait_sends(self, block: bool = True) -> None: ...

    def sum(self, value: torch.Tensor) -> torch.Tensor: ...

    def isum(self, value: torch.Tensor) -> PendingSum: ...

    def all_gather_sizes(self, local: torch.Tensor) -> list[torch.Tensor]: ...

    def isend(self, tensor: torch.Tensor, dst: int, tag: int = 0) -> None: ...

    def recv_tensor(self, shape: tuple[int, ...], dtype: torch.dtype, src: int, tag: int = 0) -> torch.Tensor: ...

    def broadcast(self, value: torch.Tensor | None, root: int = 0) -> torch.Tensor: ...

    def gather_object(self, obj: object, dst: int = 0) -> list[object] | None: ...


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


class PendingSum(Protocol):
    """A sum started with ``isum``: ``done()`` says without waiting whether it is complete, ``wait()`` gives it.

    Sums complete in the order they were started: only the oldest one still open may be asked.
    """

    def done(self) -> bool: ...

    def wait(self) -> torch.Tensor: ...


@dataclass
class CompletedSum:
    """The ``isum`` of a comm whose sum is blocking (or of one rank): complete from the start."""

    total: torch.Tensor

    def done(self) -> bool:
        return True

    def wait(self) -> torch.Tensor:
        return self.total


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

    def wait_sends(self, block: bool = True) -> None:
        return None

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def isum(self, value: torch.Tensor) -> PendingSum:
        return CompletedSum(value)

    def all_gather_sizes(self, local: torch.Tensor) -> list[torch.Tensor]:
        return [local]

    def isend(self, tensor: torch.Tensor, dst: int, tag: int = 0) -> None:  # pragma: no cover - never called
        raise RuntimeError("SerialComm has no other rank to send to")

    def recv_tensor(self, shape: tuple[int, ...], dtype: torch.dtype, src: int, tag: int = 0) -> torch.Tensor:  # pragma: no cover
        raise RuntimeError("SerialComm has no other rank to receive from")

    def broadcast(self, value: torch.Tensor | None, root: int = 0) -> torch.Tensor:
        if value is None:
            raise ValueError("broadcast on one rank needs the value")
        return value

    def gather_object(self, obj: object, dst: int = 0) -> list[object] | None:
        return [obj]


# how messages travel between ranks (torchpint.engine.shm.make_comm)
TRANSPORTS = ("auto", "shm", "gloo")

# broadcast's header: ndim, dtype index, then the shape
_MAX_DIMS = 12
_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8, torch.bool]


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
        self._post(flatten(state).to(self.device, copy=True).contiguous(), dst, 0)

    def isend(self, tensor: torch.Tensor, dst: int, tag: int = 0) -> None:
        """Post ``tensor`` to ``dst`` with ``tag``; the buffer is kept alive until :meth:`wait_sends`."""
        buffer = tensor.detach().to(self.device).contiguous()
        if buffer.data_ptr() == tensor.data_ptr():
            buffer = buffer.clone()  # the caller may change its tensor while the send is in flight
        self._post(buffer, dst, tag)

    def _post(self, buffer: torch.Tensor, dst: int, tag: int) -> None:
        self._in_flight.append(buffer)
        work = dist.isend(buffer, self._global(dst), group=self.group, tag=tag)
        if work is not None:
            self._pending.append(work)

    def recv_tensor(self, shape: tuple[int, ...], dtype: torch.dtype, src: int, tag: int = 0) -> torch.Tensor:
        """A tensor of ``shape`` and ``dtype`` sent by ``src`` with ``tag`` (on the comm device)."""
        buffer = torch.empty(tuple(shape), dtype=dtype, device=self.device)
        dist.recv(buffer, self._global(src), group=self.group, tag=tag)
        return buffer

    def broadcast(self, value: torch.Tensor | None, root: int = 0) -> torch.Tensor:
        """``value`` (given on ``root`` only) on every rank; the receivers learn its shape and dtype.

        Collective over the group: every rank calls it.  The root gets ``value`` itself back.
        """
        header = torch.zeros(_MAX_DIMS + 2, dtype=torch.int64, device=self.device)
        if self.rank == root:
            if value is None:
                raise ValueError("broadcast: the root must give the value")
            if value.dim() > _MAX_DIMS:
                raise ValueError(f"broadcast: tensors of more than {_MAX_DIMS} dimensions are not supported")
            header[0] = value.dim()
            header[1] = _DTYPES.index(value.dtype)
            header[2 : 2 + value.dim()] = torch.tensor(value.shape, dtype=torch.int64)
        dist.broadcast(header, self._global(root), group=self.group)
        if self.rank == root:
            assert value is not None
            dist.broadcast(value.detach().to(self.device).contiguous(), self._global(root), group=self.group)
            return value
        ndim = int(header[0])
        buffer = torch.empty([int(d) for d in header[2 : 2 + ndim]], dtype=_DTYPES[int(header[1])], device=self.device)
        dist.broadcast(buffer, self._global(root), group=self.group)
        return buffer

    def gather_object(self, obj: object, dst: int = 0) -> list[object] | None:
        """Every rank's ``obj`` (small and picklable), in rank order, on ``dst``; ``None`` elsewhere."""
        out: list[object] | None = [None] * self.size if self.rank == dst else None
        dist.gather_object(obj, out, dst=self._global(dst), group=self.group)
        return out

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

    def wait_sends(self, block: bool = True) -> None:
        """Wait until every message posted so far has been sent; ``block=False``: not now (they stay tracked)."""
        if not block:
            return
        for work in self._pending:
            work.wait()
        self._pending.clear()
        self._in_flight.clear()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        buffer = value.detach().to(self.device, torch.float64).clone()
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=self.group)
        return buffer.to(value.device)

    def isum(self, value: torch.Tensor) -> PendingSum:
        # Blocking here: an all-reduce left in flight beside the point-to-point messages of the
        # next iteration is not something every backend orders safely.
        return CompletedSum(self.sum(value))

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

    def wait_sends(self, block: bool = True) -> None:
        self.inner.wait_sends(block)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return self.inner.sum(value)

    def isum(self, value: torch.Tensor) -> PendingSum:
        return self.inner.isum(value)

    def all_gather_sizes(self, local: torch.Tensor) -> list[torch.Tensor]:
        return list(reversed(self.inner.all_gather_sizes(local)))

    def isend(self, tensor: torch.Tensor, dst: int, tag: int = 0) -> None:
        self.inner.isend(tensor, self._map(dst), tag)

    def recv_tensor(self, shape: tuple[int, ...], dtype: torch.dtype, src: int, tag: int = 0) -> torch.Tensor:
        return self.inner.recv_tensor(shape, dtype, self._map(src), tag)

    def broadcast(self, value: torch.Tensor | None, root: int = 0) -> torch.Tensor:
        return self.inner.broadcast(value, self._map(root))

    def gather_object(self, obj: object, dst: int = 0) -> list[object] | None:
        out = self.inner.gather_object(obj, self._map(dst))
        return None if out is None else list(reversed(out))


def default_comm(transport: str = "auto") -> Comm:
    """The comm of the default process group when it has more than one rank, else serial.

    With several ranks this is collective (every rank calls it): ``transport`` is as in
    :func:`torchpint.engine.shm.make_comm` (``"auto"``: shared-memory messages when every rank
    is on this machine, else gloo's).
    """
    if transport not in TRANSPORTS:
        from torchpint.errors import ConfigError

        raise ConfigError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torchpint.engine.shm import make_comm  # shm builds on this module

        return make_comm(None, transport)
    return SerialComm()
