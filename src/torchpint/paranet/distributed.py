"""The parareal network over torch.distributed: one fine sub-network per process.

Design (one *hub* and ``N - 1`` *workers*, world size ``N``):

* Rank 0, the hub (:class:`ParaNetHub`), holds the stem ``P``, every coarse
  network ``C_j``, the head ``Q`` and sub-network ``F_1``, with their
  optimizer state; it reads the data and computes the loss.
* Rank ``j`` (:class:`ParaNetWorker`) holds sub-network ``F_{j+1}`` and its
  optimizer state, nothing else.  It never sees data or labels.
* Only interface tensors cross processes: the hub sends ``U^k_j`` to rank
  ``j`` and receives ``y = F_{j+1}(U^k_j)``; in the backward pass it sends
  ``dL/dy`` and receives ``dL/dU^k_j``.  Two autograd Functions make this
  part of the hub's graph: ``_Send`` (forward: isend ``U``; backward:
  receive its gradient) returns an empty *token* that ``_Recv`` (forward:
  receive ``y``; backward: isend its gradient) takes as input, so autograd
  on the hub knows that ``y`` depends on ``U``.
* Every parameter has exactly one owner and each gradient is computed by
  the chain rule through the same graph as in one process, split at the
  interfaces, so no all-reduce is needed and the gradients equal the
  one-process parareal network's up to the order of floating-point sums.
* Ordering: the CPU autograd engine runs backward nodes in reverse creation
  order, so the hub sends ``dL/dy`` of the last sub-networks first (while
  it still runs ``F_1``'s backward) and blocks on ``dL/dU`` only when its
  own work is done; workers handle iterations in reverse order, which is the
  hub's order.  Tags keep iterations apart.
* Delivery before compute: the hub waits until the workers have its
  messages (their inputs before it runs ``F_1``, each ``dL/dy`` before it
  goes on with its backward pass).  A send still in flight when the hub
  starts computing is completed by gloo's background thread, which then
  competes for a core with the computation and other processes: the worker
  sat idle for milliseconds, up to the whole of ``F_1``, waiting for bytes
  the hub had "sent".  Waiting costs the hub only the transfer itself.
* Control: before each forward pass the hub sends every worker a small
  header (command, batch size, grad and train mode, learning rate, epoch,
  step); workers loop on headers (:meth:`ParaNetWorker.serve`) until STOP.
  Checkpoints and custom actions are commands too.
* Optimizer steps: a training pass's header carries the learning rate, and
  each worker steps its optimizer as soon as its own backward pass is done
  (its gradients are complete then), while the hub still finishes its
  backward pass; a separate command after the hub's backward would put the
  worker's step between the hub's step and the next forward pass.
* Data-parallel replicas (optional, world ``N x R``): replica ``r`` is
  ranks ``r*N .. r*N+N-1``, a whole parareal network in its own process
  group (:func:`replica_groups`) that sees shard ``r`` of each batch.  The
  ``R`` copies of each part (the hubs; each ``F_{j+1}``) form a second
  group and average their gradients with one flattened all-reduce right
  after their own backward pass, before their optimizer step: every
  replica then holds the gradient of the whole batch and takes the same
  step.  Messages go through :class:`torchpint.engine.comm.DistComm` on the
  replica's group (tagged ``isend``/``recv_tensor``, peers by group rank).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from torchpint.engine.comm import DistComm
from torchpint.paranet.net import ParaNet, active_iterations, parareal_sweep

__all__ = ["Command", "Header", "ParaNetHub", "ParaNetWorker", "ReplicaGroups", "average_gradients", "replica_groups"]


class Command:
    """Header command codes."""

    FORWARD = 1
    STOP = 3
    CUSTOM = 10  # and above: handled by ParaNetWorker's handlers


HEADER_TAG = 1
ACK_TAG = 2
_HEADER_LEN = 9


def _tag(kind: int, k: int) -> int:
    """kind 0: U forward, 1: y forward, 2: dL/dy, 3: dL/dU; k: parareal iteration."""
    return 16 + 4 * k + kind


@dataclass
class Header:
    """What the hub tells every worker before it acts."""

    command: int
    batch: int = 0
    grad: bool = False
    training: bool = True
    lr: float = 0.0
    epoch: int = 0
    step: int = 0
    extra: float = 0.0
    update: bool = False  # FORWARD: step the optimizer with ``lr`` right after the backward pass

    def tensor(self, device: torch.device) -> Tensor:
        values = [self.command, self.batch, int(self.grad), int(self.training), self.lr, self.epoch, self.step,
                  self.extra, int(self.update)]
        return torch.tensor(values, dtype=torch.float64, device=device)

    @classmethod
    def from_tensor(cls, t: Tensor) -> Header:
        v = t.tolist()
        return cls(int(v[0]), int(v[1]), bool(v[2]), bool(v[3]), float(v[4]), int(v[5]), int(v[6]), float(v[7]),
                   bool(v[8]))


def _comm_device(module_device: torch.device, group: Any = None) -> torch.device:
    """Tensors go over gloo from the CPU and over nccl from the current GPU."""
    if dist.get_backend(group) == "nccl":
        return module_device if module_device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@dataclass
class ReplicaGroups:
    """This process's place in a world of ``replicas`` parareal networks of ``subnets`` processes each."""

    replica: int  # which copy of the network (which data shard)
    part: int  # rank in the replica: 0 is the hub, j >= 1 holds F_{j+1}
    replicas: int
    network: Any  # process group of this replica's N processes (None: the default group, R = 1)
    copies: Any  # process group of the R copies of this part (None when R = 1)


def replica_groups(subnets: int, replicas: int) -> ReplicaGroups:
    """Create the process groups of ``replicas`` data-parallel parareal networks (call on every rank).

    With one replica no group is created: the network uses the default
    group, exactly as without replicas.  ``new_group`` is collective over
    the whole world, so every rank creates every group in the same order.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    if world != subnets * replicas:
        raise ValueError(f"{replicas} replica(s) of a parareal network with N={subnets} sub-networks need "
                         f"{subnets * replicas} processes, the world has {world}")
    replica, part = divmod(rank, subnets)
    if replicas == 1:
        return ReplicaGroups(0, rank, 1, None, None)
    networks = [dist.new_group(list(range(r * subnets, (r + 1) * subnets))) for r in range(replicas)]
    copies = [dist.new_group([r * subnets + j for r in range(replicas)]) for j in range(subnets)]
    return ReplicaGroups(replica, part, replicas, networks[replica], copies[part])


def average_gradients(params: Sequence[nn.Parameter], group: Any) -> None:
    """Average the gradients of ``params`` over ``group`` in one all-reduce of one flat buffer.

    One call instead of one per tensor: the latency of a collective, not its
    bandwidth, dominates for the many small tensors of a sub-network.
    Parameters without a gradient are left out; every copy runs the same
    graph, so the set is the same on every member of the group.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    device = _comm_device(grads[0].device, group)
    flat = torch.cat([g.reshape(-1) for g in grads]).to(device)
    flat.div_(dist.get_world_size(group))
    dist.all_reduce(flat, group=group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


class _Send(torch.autograd.Function):
    """Forward: isend ``U`` to the worker; backward: receive ``dL/dU`` from it."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, hub: ParaNetHub, j: int, k: int) -> Tensor:  # type: ignore[override]
        hub.peer.isend(u, j, _tag(0, k))
        ctx.hub, ctx.j, ctx.k = hub, j, k
        ctx.shape, ctx.device = tuple(u.shape), u.device
        return u.new_empty(0)

    @staticmethod
    def backward(ctx: Any, _token_grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        grad = ctx.hub.peer.recv_tensor(ctx.shape, ctx.hub.dtype, ctx.j, _tag(3, ctx.k))
        return grad.to(ctx.device), None, None, None


class _Recv(torch.autograd.Function):
    """Forward: receive ``y = F(U)`` from the worker; backward: isend ``dL/dy`` to it."""

    @staticmethod
    def forward(ctx: Any, token: Tensor, hub: ParaNetHub, j: int, k: int, shape: tuple[int, ...]) -> Tensor:  # type: ignore[override]
        ctx.hub, ctx.j, ctx.k = hub, j, k
        ctx.token_meta = (token.dtype, token.device)
        return hub.peer.recv_tensor(shape, hub.dtype, j, _tag(1, k)).to(hub.device)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:  # type: ignore[override]
        ctx.hub.peer.isend(grad, ctx.j, _tag(2, ctx.k))
        ctx.hub.peer.wait_sends()  # delivered before the hub's backward goes on (see the module docstring)
        dtype, device = ctx.token_meta
        return torch.zeros(0, dtype=dtype, device=device), None, None, None, None


class _HubRunner:
    """FineRunner of the hub: ``F_1`` here, ``F_j`` (j > 1) on rank ``j - 1`` through _Send/_Recv."""

    def __init__(self, hub: ParaNetHub, batch: int) -> None:
        self.hub = hub
        self.batch = batch
        self.grad = torch.is_grad_enabled()
        self.inputs: dict[int, Tensor] = {}
        self.outputs: dict[int, Tensor] = {}
        self.tokens: dict[tuple[int, int], Tensor] = {}

    def submit(self, k: int, j: int, u: Tensor) -> None:
        if j == 0:
            self.inputs[k] = u
            return
        if self.grad and not u.requires_grad:  # the worker always returns dL/dU: keep _Send in the graph
            u = u.detach().requires_grad_(True)
        self.tokens[k, j] = _Send.apply(u, self.hub, j, k)

    def local(self, k: int) -> None:
        self.hub.peer.wait_sends()  # the workers have their inputs before F_1 runs (see the module docstring)
        if k in self.inputs:
            self.outputs[k] = self.hub.fine_subnets[0](self.inputs.pop(k))

    def get(self, k: int, j: int) -> Tensor:
        if j == 0:
            return self.outputs.pop(k)
        shape = (self.batch, *self.hub.interface_shapes[j + 1])
        out: Tensor = _Recv.apply(self.tokens.pop((k, j)), self.hub, j, k, shape)
        return out


class ParaNetHub(nn.Module):
    """Rank 0's part of a parareal network: stem, coarse networks, head and ``F_1``.

    Built from a full :class:`ParaNet` (every rank builds the same one from
    the same seed); the other sub-networks are dropped here.  Use it as a
    module: ``hub(x)`` sends the FORWARD header, runs the parareal sweep with
    the workers and returns the output with autograd wired through them;
    ``loss.backward()`` drives the workers' backward passes, and with
    ``hub(x, lr=...)`` each worker then takes its optimizer step.  Parameter
    names are the full network's (``fine_subnets.0.*``, ``coarse_nets.*``...).
    ``group``: this network's processes (default: the world); ``copies``:
    the hubs of the data-parallel replicas, with which :meth:`wait` averages
    the gradients (default: no replicas).
    """

    def __init__(self, paranet: ParaNet, group: Any = None, copies: Any = None) -> None:
        super().__init__()
        world = dist.get_world_size(group)
        rank = dist.get_rank(group)
        if rank != 0:
            raise ValueError(f"ParaNetHub runs on rank 0, this is rank {rank}")
        if world != paranet.subnets:
            raise ValueError(f"a parareal network with N={paranet.subnets} sub-networks needs {paranet.subnets} "
                             f"processes, the process group has {world}")
        self.subnets = paranet.subnets
        self.iterations = paranet.iterations
        self.interface_shapes = list(paranet.interface_shapes)
        self.stem = paranet.stem
        self.coarse_nets = paranet.coarse_nets
        self.head = paranet.head
        self.fine_subnets = nn.ModuleList([paranet.fine_subnets[0], *(nn.Identity() for _ in range(self.subnets - 1))])
        p = next(self.parameters())
        self.device = p.device
        self.group = group
        self.copies = copies
        self.dtype = p.dtype
        self.peer = DistComm(group)  # tagged messages to this network's workers, by group rank
        self.stopped = False

    def command(self, header: Header) -> None:
        """Send ``header`` to every worker (after the previous sends completed)."""
        self.peer.wait_sends()
        t = header.tensor(self.peer.device)
        for dst in range(1, self.subnets):
            self.peer.isend(t, dst, HEADER_TAG)

    def forward(self, x: Tensor, *, epoch: int = 0, step: int = 0, lr: float | None = None) -> Tensor:
        """Parareal output for ``x``; the workers join in.

        With ``lr`` (a training pass: call ``backward`` on the output once)
        every worker steps its optimizer with this learning rate and clears
        its gradients right after its part of the backward pass; the hub's
        own parameters are the caller's to step.
        """
        grad = torch.is_grad_enabled()
        if lr is not None and not grad:
            raise ValueError("a pass with an optimizer step (lr given) needs gradients enabled")
        self.command(Header(Command.FORWARD, batch=x.shape[0], grad=grad, training=self.training, epoch=epoch, step=step,
                            lr=0.0 if lr is None else float(lr), update=lr is not None))
        x = x.to(self.device)
        u0 = self.stem(x)
        out: Tensor = self.head(parareal_sweep(self.coarse_nets, self.subnets, self.iterations, u0, _HubRunner(self, x.shape[0])))
        return out

    def custom(self, command: int, *, epoch: int = 0, step: int = 0, extra: float = 0.0, ack: bool = True) -> None:
        """Send a custom command (>= Command.CUSTOM); wait for every worker's acknowledgement if ``ack``."""
        if command < Command.CUSTOM:
            raise ValueError(f"custom commands are >= {Command.CUSTOM}, got {command}")
        self.command(Header(command, epoch=epoch, step=step, extra=extra))
        if ack:
            self.wait_acks()

    def wait_acks(self) -> list[float]:
        """One float from each worker, in rank order (what its handler returned)."""
        return [float(self.peer.recv_tensor((1,), torch.float64, src, ACK_TAG).item()) for src in range(1, self.subnets)]

    def wait(self) -> None:
        """Wait for every message sent so far (call once after ``backward``); with replicas, average the gradients.

        The hub's gradients are complete here; the workers average theirs
        among their own copies right after their backward passes.
        """
        self.peer.wait_sends()
        if self.copies is not None:
            average_gradients(list(self.parameters()), self.copies)

    def stop(self) -> None:
        """Tell the workers to leave :meth:`ParaNetWorker.serve`."""
        if not self.stopped:
            self.command(Header(Command.STOP))
            self.peer.wait_sends()
            self.stopped = True


class ParaNetWorker:
    """Rank ``j``'s part (j >= 1): sub-network ``F_{j+1}`` only, driven by the hub's headers.

    ``optimizer`` (optional, built on :attr:`module`'s parameters) is stepped
    right after the backward pass of a FORWARD header that asks for it
    (``update``); ``handlers`` maps custom command codes to functions of the
    header whose float result is sent back as the acknowledgement;
    ``on_header`` sees every header first (fault injection, logging);
    ``copies``: the process group of this sub-network's data-parallel
    copies, with which gradients are averaged before the step.
    """

    def __init__(
        self,
        paranet: ParaNet,
        group: Any = None,
        optimizer: torch.optim.Optimizer | None = None,
        handlers: dict[int, Callable[[Header], float]] | None = None,
        on_header: Callable[[Header], None] | None = None,
        copies: Any = None,
    ) -> None:
        self.rank = dist.get_rank(group)
        world = dist.get_world_size(group)
        if self.rank == 0:
            raise ValueError("rank 0 is the hub: use ParaNetHub there")
        if world != paranet.subnets:
            raise ValueError(f"a parareal network with N={paranet.subnets} sub-networks needs {paranet.subnets} "
                             f"processes, the process group has {world}")
        self.module: nn.Module = paranet.fine_subnets[self.rank]
        self.prefix = f"fine_subnets.{self.rank}."
        self.iterations = paranet.iterations
        # with K > 1 the sweep skips what cannot reach the output (see parareal_sweep)
        self.active_iterations = active_iterations(self.rank, paranet.subnets, self.iterations)
        self.in_shape = tuple(paranet.interface_shapes[self.rank])
        self.out_shape = tuple(paranet.interface_shapes[self.rank + 1])
        p = next(self.module.parameters(), None)
        self.device = p.device if p is not None else torch.device("cpu")
        dtype = p.dtype if p is not None else torch.float32
        self.group = group
        self.copies = copies
        self.dtype = dtype
        self.peer = DistComm(group)
        self.optimizer = optimizer
        self.handlers = dict(handlers or {})
        self.on_header = on_header
        self.forwards = 0

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """This rank's parameters under their names in the full network."""
        return [(self.prefix + n, p) for n, p in self.module.named_parameters()]

    def state_dict(self) -> dict[str, Tensor]:
        """This rank's parameters and buffers under their names in the full network."""
        return {self.prefix + n: t for n, t in self.module.state_dict().items()}

    def serve(self) -> None:
        """Obey headers until STOP."""
        while True:
            header = Header.from_tensor(self.peer.recv_tensor((_HEADER_LEN,), torch.float64, 0, HEADER_TAG))
            if self.on_header is not None:
                self.on_header(header)
            if header.command == Command.STOP:
                self.peer.wait_sends()
                return
            if header.command == Command.FORWARD:
                self._forward(header)
            elif header.command in self.handlers:
                value = self.handlers[header.command](header)
                self.peer.isend(torch.tensor([float(value)], dtype=torch.float64), 0, ACK_TAG)
            else:
                raise RuntimeError(f"worker {self.rank}: unknown command {header.command}")

    def _forward(self, header: Header) -> None:
        self.peer.wait_sends()
        if self.module.training != header.training:  # a walk over every submodule: only when the mode changes
            self.module.train(header.training)
        b = header.batch
        saved: dict[int, tuple[Tensor, Tensor]] = {}
        with torch.set_grad_enabled(header.grad):
            for k in self.active_iterations:
                u = self.peer.recv_tensor((b, *self.in_shape), self.dtype, 0, _tag(0, k)).to(self.device)
                if header.grad:
                    u.requires_grad_(True)
                y = self.module(u)
                self.peer.isend(y, 0, _tag(1, k))
                if header.grad:
                    saved[k] = (u, y)
        self.forwards += 1
        if not header.grad:
            return
        for k in reversed(self.active_iterations):
            u, y = saved[k]
            g = self.peer.recv_tensor((b, *self.out_shape), self.dtype, 0, _tag(2, k)).to(self.device)
            torch.autograd.backward(y, g)
            grad_u = u.grad if u.grad is not None else torch.zeros_like(u)
            self.peer.isend(grad_u, 0, _tag(3, k))
        saved.clear()
        if self.copies is not None:  # complete here: average with the other replicas before stepping
            # (after every pass: with accumulated micro-batches the earlier pieces' part is already equal on
            # every copy, so averaging again leaves it unchanged; one all-reduce per piece)
            average_gradients(list(self.module.parameters()), self.copies)
        if header.update:
            self._step(header.lr)

    def _step(self, lr: float) -> None:
        if self.optimizer is None:
            return
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
