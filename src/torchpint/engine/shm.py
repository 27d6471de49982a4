"""Point-to-point messages through shared memory, for ranks on one machine.

gloo carries every message over loopback TCP: on the 2-core machines this library is measured
on, one message costs 0.14-0.3 ms one way, and posting a receive about 0.1 ms of CPU, all on the
critical path of the later rank (the halo flows forward in time).  MGRIT's exchanges are many
and small (9 per iteration for a 5-level solve on 2 ranks, states of a few KB), so time-parallel
speed-up on one machine was lost to them.  Here each ordered pair of ranks shares a byte ring
in ``/dev/shm``: a send is a copy into the ring and one counter store, a receive a copy out,
a few microseconds each (MPI's shared-memory transport, which XBraid uses, works the same way).

Protocol, per ring (one writer, one reader): the writer owns the count of bytes written, the
reader the count of bytes read, each in its own cache line.  A record is a 32-byte header
(payload size, tag, kind) and the payload, padded to 32 bytes.  The writer copies the record
in, then publishes the new count; the reader sees the count, then reads the record.  On x86-64
stores become visible in program order and loads are not reordered with other loads, so no
fence is needed; elsewhere :func:`make_comm` keeps gloo.

* Sends never block: a record that does not fit waits in the sender's queue and is pushed
  whenever this rank next waits for anything (its receive loops, :meth:`wait_sends`).
* Messages of another tag met while waiting for one are copied out and kept (per source and
  tag, in order), which also frees ring space for the sender: no cycle of waits can form.
* Payloads larger than half a ring go through gloo (a marker record keeps their place in the
  order); the gloo collectives (``broadcast``, ``gather_object``, ``all_gather_sizes``) are
  inherited from :class:`DistComm` and first push out everything queued.
* ``sum`` is all-to-all through the rings and adds in rank order, so every rank gets the same
  bits (the convergence decision must agree everywhere); ``isum`` posts this rank's part at once
  and receives the others' when asked (``done()`` without waiting), in the order started.
"""

from __future__ import annotations

import mmap
import os
import platform
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from torchpint.engine.comm import TRANSPORTS, DistComm
from torchpint.engine.state import State, flatten, leaves, unflatten
from torchpint.errors import ConfigError

_HEADER = 32  # bytes: payload size, tag, kind, unused
_INLINE, _SKIP, _VIA_GLOO = 0, 1, 2
_SUM_TAG = -1
_SHM_DIR = "/dev/shm"
# Per-channel ring size: 1 MiB (some 30 halo messages of nx 2049, which are read as they come),
# less when there are many ranks (all pairs have a ring): /dev/shm is often small (64 MiB in a
# default container), and every comm holds its rings until it is freed.
_MAX_RING = 1 << 20
_MIN_RING = 128 << 10
_RING_BUDGET = 16 << 20
# Waiting: spin this long, then yield the core, then sleep in growing steps up to the cap.
# Yielding wakes within microseconds but keeps the core busy; sleeping frees it but wakes up
# to a nap late.  With a core per rank nobody else wants the core: yield for longer (a rank
# waits about 1.5 ms per iteration at the convergence sum of a 2-rank solve, and a late wake
# there delays the next iteration's halos for the other rank too).
_SPIN_S = 50e-6
_YIELD_S = 1e-3
_YIELD_OWN_CORE_S = 20e-3
_SLEEP_CAP_S = 200e-6
_LIVENESS_EVERY_S = 1.0


def _pad(n: int) -> int:
    return (n + _HEADER - 1) // _HEADER * _HEADER


def _as_bytes(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's bytes as a 1-D numpy array: a view of its memory when it is contiguous.

    numpy, not torch, on this path: a message is a few slicing and copying calls, and each torch
    call costs 1.5-3 us of dispatch against numpy's 0.1-0.8 us (a send of one 16 KB state went
    from about 14 to 4 us).  The detour through torch covers what ``numpy()`` refuses: a tensor
    that requires grad, one on another device, a dtype numpy lacks (bfloat16).
    """
    try:
        array = tensor.numpy()
    except (RuntimeError, TypeError):
        array = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return array.reshape(-1).view(np.uint8)


class _Ring:
    """One direction between two ranks: a byte ring mapped from a file in /dev/shm."""

    def __init__(self, path: str, capacity: int, create: bool) -> None:
        size = 128 + capacity
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
                # Reserve the pages now: a full /dev/shm is then an OSError here, not a SIGBUS
                # at the first write into a page that cannot be had.
                os.posix_fallocate(fd, 0, size)
            # Populated now, at set-up: a page touched first inside a solve costs a page fault there.
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            self._map = mmap.mmap(fd, size, flags=flags)
        finally:
            os.close(fd)
        self.capacity = capacity
        # counts[0]: bytes written (the writer's); counts[8]: bytes read (the reader's): 64 bytes apart.
        self.counts = np.frombuffer(self._map, dtype=np.int64, count=16)
        self.words = np.frombuffer(self._map, dtype=np.int64, offset=128, count=capacity // 8)
        self.data = np.frombuffer(self._map, dtype=np.uint8, offset=128, count=capacity)
        self.written = int(self.counts[0])
        self.read = int(self.counts[8])

    # --- writer side
    def try_write(self, payload: np.ndarray | None, nbytes: int, tag: int, kind: int) -> bool:
        need = _HEADER + (_pad(nbytes) if kind == _INLINE else 0)
        at = self.written % self.capacity
        tail = self.capacity - at
        total = need if need <= tail else tail + need
        if total > self.capacity - (self.written - int(self.counts[8])):
            return False
        if need > tail:  # the record does not fit before the end: skip to the start
            self.words[at // 8 : at // 8 + 3] = (0, 0, _SKIP)
            self.written += tail
            at = 0
        self.words[at // 8 : at // 8 + 3] = (nbytes, tag, kind)
        if kind == _INLINE and nbytes:
            assert payload is not None
            self.data[at + _HEADER : at + _HEADER + nbytes] = payload
        self.written += need
        self.counts[0] = self.written  # publish: the record is complete
        return True

    # --- reader side
    def peek(self) -> tuple[int, int, int, int] | None:
        """(size, tag, kind, offset) of the next record, or None if there is none yet."""
        while self.read != int(self.counts[0]):
            at = self.read % self.capacity
            nbytes, tag, kind = self.words[at // 8 : at // 8 + 3].tolist()
            if kind == _SKIP:
                self.read += self.capacity - at
                self.counts[8] = self.read
                continue
            return nbytes, tag, kind, at
        return None

    def consume(self, nbytes: int, kind: int, at: int, into: np.ndarray | None) -> None:
        if kind == _INLINE and nbytes:
            assert into is not None
            into[:] = self.data[at + _HEADER : at + _HEADER + nbytes]
        self.read += _HEADER + (_pad(nbytes) if kind == _INLINE else 0)
        self.counts[8] = self.read


@dataclass
class _Queued:
    payload: np.ndarray | None
    nbytes: int
    tag: int
    kind: int


class SharedMemoryUnavailable(RuntimeError):
    """The rings could not be set up (raised on every rank alike, so all can fall back together)."""


class SharedMemoryPendingRecv:
    """A receive posted with ``irecv``: nothing to post with shared memory; ``wait()`` receives."""

    def __init__(self, comm: SharedMemoryComm, template: State, src: int) -> None:
        self.comm, self.template, self.src = comm, template, src

    def wait(self) -> State:
        return self.comm.recv(self.template, self.src)


class SharedMemorySum:
    """A sum started by :meth:`SharedMemoryComm.isum`: the other ranks' parts are read as they arrive.

    The parts of every sum travel on one tag, so the n-th part from a rank belongs to the n-th
    sum: sums must complete in the order they were started (asking a younger one is an error).
    The total adds the parts in rank order, as :meth:`SharedMemoryComm.sum`: the same bits.
    """

    def __init__(self, comm: SharedMemoryComm, mine: torch.Tensor, device: torch.device) -> None:
        self.comm, self.device = comm, device
        self.parts: list[torch.Tensor | None] = [None] * comm.size
        self.parts[comm.rank] = mine
        self.total: torch.Tensor | None = None

    def _oldest(self) -> None:
        if not self.comm._sums or self.comm._sums[0] is not self:
            raise RuntimeError("sums started with isum must complete in the order they were started")

    def done(self) -> bool:
        if self.total is not None:
            return True
        self._oldest()
        mine = self.parts[self.comm.rank]
        assert mine is not None
        for src, part in enumerate(self.parts):
            if part is None:
                buffer = torch.empty(tuple(mine.shape), dtype=torch.float64)
                if not self.comm._poll(src, _SUM_TAG, _as_bytes(buffer)):
                    return False
                self.parts[src] = buffer
        self._finish()
        return True

    def wait(self) -> torch.Tensor:
        if self.total is None:
            self._oldest()
            mine = self.parts[self.comm.rank]
            assert mine is not None
            for src, part in enumerate(self.parts):
                if part is None:
                    self.parts[src] = self.comm.recv_tensor(tuple(mine.shape), torch.float64, src, _SUM_TAG)
            self._finish()
        assert self.total is not None
        return self.total

    def _finish(self) -> None:
        total = None
        for part in self.parts:
            assert part is not None
            total = part.clone() if total is None else total + part
        assert total is not None
        self.total = total.to(self.device)
        self.comm._sums.popleft()


class SharedMemoryComm(DistComm):
    """:class:`DistComm` with point-to-point messages and ``sum`` through shared memory.

    Collective over ``group`` to construct (the rings are set up by every rank); every rank must
    be on this machine (:func:`make_comm` checks that and falls back to gloo otherwise).
    """

    def __init__(self, group: dist.ProcessGroup | None = None, ring_bytes: int | None = None) -> None:
        super().__init__(group)
        if self.device.type != "cpu":
            raise ValueError("shared-memory messages are for CPU tensors (a gloo process group)")
        size = self.size
        if ring_bytes is None:
            ring_bytes = min(_MAX_RING, max(_MIN_RING, _RING_BUDGET // max(1, size * (size - 1))))
        ring_bytes = _pad(max(ring_bytes, 4 * _HEADER))
        self.ring_bytes = ring_bytes
        token = [uuid.uuid4().hex if self.rank == 0 else None]
        dist.broadcast_object_list(token, src=self._global(0), group=group)
        self._token = str(token[0])
        # large payloads travel over gloo on a tag of this comm's own
        self._gloo_tag = (1 << 24) + int(self._token[:6], 16)
        pids: list[int | None] = [None] * size
        dist.all_gather_object(pids, os.getpid(), group=group)
        self._pids = [int(p) for p in pids]  # type: ignore[arg-type]

        def path(src: int, dst: int) -> str:
            return os.path.join(_SHM_DIR, f"torchpint-{self._token}-{src}-{dst}")

        self._inbox: dict[int, _Ring] = {}
        self._outbox: dict[int, _Ring] = {}
        try:
            problem = ""
            try:
                for src in range(size):
                    if src != self.rank:
                        self._inbox[src] = _Ring(path(src, self.rank), ring_bytes, create=True)
            except OSError as error:  # e.g. /dev/shm full: every rank learns it and gives up alike
                problem = f"rank {self.rank}: {error}"
            problems: list[object] = [None] * size
            dist.all_gather_object(problems, problem, group=group)  # also the barrier before opening
            if any(problems):
                self._inbox.clear()
                raise SharedMemoryUnavailable("; ".join(str(p) for p in problems if p))
            for dst in range(size):
                if dst != self.rank:
                    self._outbox[dst] = _Ring(path(self.rank, dst), ring_bytes, create=False)
            dist.barrier(group=group)
        finally:
            # The mappings stay; the names go at once, so a crash later leaves nothing in /dev/shm.
            for src in range(size):
                if src != self.rank:
                    try:
                        os.unlink(path(src, self.rank))
                    except FileNotFoundError:
                        pass
        self._yield_s = _YIELD_OWN_CORE_S if size <= _usable_cores() else _YIELD_S
        self._queues: dict[int, deque[_Queued]] = {dst: deque() for dst in self._outbox}
        self._stash: dict[tuple[int, int], deque[torch.Tensor]] = {}
        self._gloo_sends: list[dist.Work] = []
        self._gloo_buffers: list[torch.Tensor] = []
        self._sums: deque[SharedMemorySum] = deque()  # started, not yet complete (oldest first)

    # --- sending
    def send(self, state: State, dst: int) -> None:
        parts = leaves(state)
        self._post(_as_bytes(parts[0] if len(parts) == 1 else flatten(state)), dst, 0)

    def isend(self, tensor: torch.Tensor, dst: int, tag: int = 0) -> None:
        self._post(_as_bytes(tensor), dst, tag)

    def _post(self, payload: np.ndarray, dst: int, tag: int) -> None:  # type: ignore[override]
        """Send the bytes ``payload`` (a view of the caller's tensor: copied before this returns)."""
        nbytes = payload.size
        queue = self._queues[dst]
        if _HEADER + _pad(nbytes) > self.ring_bytes // 2:
            # Too large for the ring: the payload goes by gloo, a marker keeps its place in the order.
            buffer = torch.from_numpy(payload.copy())
            self._gloo_buffers.append(buffer)
            work = dist.isend(buffer, self._global(dst), group=self.group, tag=self._gloo_tag)
            if work is not None:
                self._gloo_sends.append(work)
            record = _Queued(None, nbytes, tag, _VIA_GLOO)
        else:
            record = _Queued(payload, nbytes, tag, _INLINE)
        if not queue and self._outbox[dst].try_write(record.payload, record.nbytes, record.tag, record.kind):
            return
        if record.payload is not None:
            record.payload = record.payload.copy()  # the caller may change its tensor meanwhile
        queue.append(record)

    def _push(self) -> bool:
        """Move queued records into their rings where there is room; True when nothing is left queued."""
        empty = True
        for dst, queue in self._queues.items():
            ring = self._outbox[dst]
            while queue and ring.try_write(queue[0].payload, queue[0].nbytes, queue[0].tag, queue[0].kind):
                queue.popleft()
            empty = empty and not queue
        return empty

    def wait_sends(self, block: bool = True) -> None:
        """Wait until every queued record is in its ring and every large payload sent.

        ``block=False``: only move into the rings what fits now (a rank running ahead of a sum
        must not wait for a peer that may have stopped; what stays queued moves at its next wait).
        """
        if not block:
            self._push()
            return
        self._flushed()
        for work in self._gloo_sends:
            work.wait()
        self._gloo_sends.clear()
        self._gloo_buffers.clear()

    # --- receiving
    def _poll(self, src: int, tag: int, into: np.ndarray) -> bool:
        """Whether the next message of ``tag`` from ``src`` has arrived (then it is in ``into``); others met are kept."""
        kept = self._stash.get((src, tag))
        if kept:
            self._fill(into, kept.popleft(), src, tag)
            return True
        while (message := self._read_one(src, tag, into)) is not None:
            got, data = message
            if got == tag:
                return True
            self._stash.setdefault((src, got), deque()).append(data)
        return False

    def _read_one(self, src: int, want: int | None = None, into: np.ndarray | None = None) -> tuple[int, np.ndarray] | None:
        """The next record from ``src``: straight into the bytes ``into`` if its tag is ``want``, else into new bytes."""
        ring = self._inbox[src]
        record = ring.peek()
        if record is None:
            return None
        nbytes, tag, kind, at = record
        if into is not None and tag == want:
            target = into
            self._check_size(target.size, nbytes, src, tag)
        else:
            target = np.empty(nbytes, dtype=np.uint8)
        ring.consume(nbytes, kind, at, target)
        if kind == _VIA_GLOO:
            dist.recv(torch.from_numpy(target), self._global(src), group=self.group, tag=self._gloo_tag)
        return tag, target

    def _relieve(self) -> None:
        """Copy out the messages of rings more than half full, so their senders' queues can move.

        Called while waiting: a rank waiting for one peer keeps the others' sends flowing.
        """
        for src, ring in self._inbox.items():
            if int(ring.counts[0]) - ring.read > ring.capacity // 2:
                while (message := self._read_one(src)) is not None:
                    self._stash.setdefault((src, message[0]), deque()).append(message[1])

    def _take(self, src: int, tag: int, into: torch.Tensor) -> None:
        """Wait for the next message of ``tag`` from ``src`` and copy it into ``into`` (a new contiguous CPU tensor)."""
        if src == self.rank or not 0 <= src < self.size:
            raise ValueError(f"rank {self.rank} cannot receive from rank {src} (of {self.size})")
        target = _as_bytes(into)  # a view: ``into`` is contiguous and on the CPU

        def arrived() -> bool:
            if self._poll(src, tag, target):
                return True
            self._push()
            return False

        self._wait(arrived, f"a message from rank {src}", src)

    def _wait(self, done, what: str, peer: int | None) -> None:
        if done():
            return
        start = time.perf_counter()
        check_at = start + _LIVENESS_EVERY_S
        nap = 1e-6
        while not done():
            now = time.perf_counter()
            if now - start < _SPIN_S:
                continue
            self._relieve()
            if now - start < self._yield_s:
                os.sched_yield()
            else:
                time.sleep(nap)  # releases the GIL: a heartbeat thread keeps running
                nap = min(nap * 2, _SLEEP_CAP_S)
            if now > check_at:
                check_at = now + _LIVENESS_EVERY_S
                self._check_alive(what, peer)

    def _check_alive(self, what: str, peer: int | None) -> None:
        for rank in [peer] if peer is not None else list(self._outbox):
            try:
                os.kill(self._pids[rank], 0)
            except ProcessLookupError:
                raise RuntimeError(
                    f"rank {self.rank} waited for {what}, but rank {rank} (pid {self._pids[rank]}) is gone"
                ) from None
            except PermissionError:
                pass

    def recv_tensor(self, shape: tuple[int, ...], dtype: torch.dtype, src: int, tag: int = 0) -> torch.Tensor:
        out = torch.empty(tuple(shape), dtype=dtype)
        self._take(src, tag, out)
        return out

    def _fill(self, out: np.ndarray, data: np.ndarray, src: int, tag: int) -> None:
        self._check_size(out.size, data.size, src, tag)
        out[:] = data

    def _check_size(self, expected: int, got: int, src: int, tag: int) -> None:
        if expected != got:
            raise RuntimeError(f"rank {self.rank} expected {expected} bytes from rank {src} (tag {tag}), got {got}")

    def recv(self, template: State, src: int) -> State:
        parts = leaves(template)
        if len(parts) == 1:
            out = torch.empty_like(parts[0], memory_format=torch.contiguous_format)
            self._take(src, 0, out)
            return out if isinstance(template, torch.Tensor) else unflatten(out.reshape(-1), template)
        flat = flatten(template)
        buffer = torch.empty(flat.numel(), dtype=flat.dtype)
        self._take(src, 0, buffer)
        return unflatten(buffer, template)

    def irecv(self, template: State, src: int) -> SharedMemoryPendingRecv:  # type: ignore[override]
        return SharedMemoryPendingRecv(self, template, src)

    # --- collectives
    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return self.isum(value).wait()

    def isum(self, value: torch.Tensor) -> SharedMemorySum:  # type: ignore[override]
        mine = value.detach().to("cpu", torch.float64).contiguous()
        for dst in range(self.size):
            if dst != self.rank:
                self._post(_as_bytes(mine), dst, _SUM_TAG)
        pending = SharedMemorySum(self, mine, value.device)
        self._sums.append(pending)
        return pending

    def _flushed(self) -> None:
        """Wait until every queued record is in its ring (the gloo collectives must not overtake them)."""
        self._wait(self._push, "its peers to read its messages", None)

    def broadcast(self, value: torch.Tensor | None, root: int = 0) -> torch.Tensor:
        self._flushed()
        return super().broadcast(value, root)

    def gather_object(self, obj: object, dst: int = 0) -> list[object] | None:
        self._flushed()
        return super().gather_object(obj, dst)

    def all_gather_sizes(self, local: torch.Tensor) -> list[torch.Tensor]:
        self._flushed()
        return super().all_gather_sizes(local)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _machine() -> tuple[str, str]:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return socket.gethostname(), boot


def _shm_usable() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64") and os.path.isdir(_SHM_DIR) and os.access(_SHM_DIR, os.W_OK)


def make_comm(group: dist.ProcessGroup | None = None, transport: str = "auto") -> DistComm:
    """The comm for ``group``: shared-memory messages when every rank is on this machine.

    ``transport``: ``"gloo"`` (every message through the process group), ``"shm"`` (shared
    memory; an error if a rank is elsewhere or the platform lacks it) or ``"auto"`` (shared
    memory when possible, else gloo).  Collective over ``group`` unless ``"gloo"``: every rank
    makes the same call, and all ranks decide alike.
    """
    if transport not in TRANSPORTS:
        raise ConfigError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    if transport == "gloo" or dist.get_world_size(group) == 1 or dist.get_backend(group) != "gloo":
        if transport == "shm" and dist.get_backend(group) != "gloo":
            raise ConfigError("transport 'shm' needs a gloo process group (CPU tensors)")
        return DistComm(group)
    facts: list[object] = [None] * dist.get_world_size(group)
    dist.all_gather_object(facts, (_machine(), _shm_usable()), group=group)
    one_machine = all(f[0] == facts[0][0] for f in facts)  # type: ignore[index]
    usable = all(f[1] for f in facts)  # type: ignore[index]
    why = "the ranks are on different machines" if not one_machine else "shared memory is not usable here (x86-64 with /dev/shm only)"
    if one_machine and usable:
        try:
            return SharedMemoryComm(group)
        except SharedMemoryUnavailable as error:
            why = f"the rings could not be made in {_SHM_DIR} ({error})"
    if transport == "shm":
        raise ConfigError(f"transport 'shm' is not possible: {why}")
    return DistComm(group)
