"""Shared-memory messages between ranks on one machine: order, tags, full rings, sums, dead peers."""

import dataclasses
import os
import subprocess
import time

import pytest
import torch

from torchpint.cli.solve import solve_many
from torchpint.engine.comm import SerialComm, default_comm
from torchpint.engine.shm import SharedMemoryComm, make_comm
from torchpint.errors import ConfigError
from torchpint.run.launch import run_workers

from tests.engine.test_distributed import CONFIGS, with_solution

RING = 8192  # bytes: 7 records of 1 KB, so a burst of sends must wait in the sender's queue


def _burst() -> dict:
    """Rank 0 posts 90 messages on 3 tags and a large one before rank 1 reads any; rank 1 reads by tag."""
    comm = SharedMemoryComm(ring_bytes=RING)
    out: dict = {}
    if comm.rank == 0:
        for i in range(90):
            x = torch.full((250,), float(i))  # 1000 bytes
            comm.isend(x, 1, tag=i % 3)
            x.zero_()  # changing the tensor after posting must not change what arrives
        comm.isend(torch.arange(5000, dtype=torch.float64), 1, tag=9)  # 40 KB: through gloo, in its place
        comm.wait_sends()
    else:
        time.sleep(0.2)  # let the sender's queue fill up
        got = {}
        for tag in (2, 9, 0, 1):
            if tag == 9:
                got[9] = comm.recv_tensor((5000,), torch.float64, 0, tag=9).tolist()
                continue
            got[tag] = [comm.recv_tensor((250,), torch.float32, 0, tag=tag)[0].item() for _ in range(30)]
        out["got"] = got
    # both directions at once, neither side reading until it has sent everything (no cycle of waits)
    peer = 1 - comm.rank
    for i in range(40):
        comm.isend(torch.full((250,), float(100 * comm.rank + i)), peer, tag=4)
    out["crossed"] = [comm.recv_tensor((250,), torch.float32, peer, tag=4)[7].item() for _ in range(40)]
    comm.wait_sends()
    return out


def test_order_tags_full_rings_and_large_messages() -> None:
    r0, r1 = run_workers(_burst, 2)
    assert r1["got"][2] == [float(i) for i in range(2, 90, 3)]
    assert r1["got"][0] == [float(i) for i in range(0, 90, 3)]
    assert r1["got"][1] == [float(i) for i in range(1, 90, 3)]
    assert r1["got"][9] == [float(i) for i in range(5000)]
    assert r0["crossed"] == [100.0 + i for i in range(40)]
    assert r1["crossed"] == [float(i) for i in range(40)]


def _kinds() -> dict:
    """Rank 0 sends states that numpy cannot view directly; rank 1 receives them."""
    comm = SharedMemoryComm()
    base = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    states = {
        "strided": base[:, ::2],  # not contiguous: copied, not viewed
        "requires_grad": torch.linspace(0, 1, 5, dtype=torch.float64, requires_grad=True),
        "bfloat16": torch.tensor([1.5, -2.25, 3.0], dtype=torch.bfloat16),  # a dtype numpy lacks
        "empty": torch.empty(0, dtype=torch.float32),
        "dict": {"a": torch.ones(2, dtype=torch.float32), "b": torch.full((3,), 7, dtype=torch.float32)},
    }
    if comm.rank == 0:
        for state in states.values():
            comm.send(state, 1)
        comm.wait_sends()
        return {}
    got = {}
    for name, state in states.items():
        template = {k: torch.empty_like(v) for k, v in state.items()} if isinstance(state, dict) else torch.empty_like(state.detach())
        value = comm.recv(template, 0)
        got[name] = {k: (v.dtype, v.tolist()) for k, v in value.items()} if isinstance(value, dict) else (value.dtype, value.tolist())
    return got


def test_every_kind_of_state_arrives_intact() -> None:
    got = run_workers(_kinds, 2)[1]
    assert got["strided"] == (torch.float64, [[0.0, 2.0], [4.0, 6.0], [8.0, 10.0]])
    assert got["requires_grad"] == (torch.float64, torch.linspace(0, 1, 5, dtype=torch.float64).tolist())
    assert got["bfloat16"] == (torch.bfloat16, [1.5, -2.25, 3.0])
    assert got["empty"] == (torch.float32, [])
    assert got["dict"] == {"a": (torch.float32, [1.0, 1.0]), "b": (torch.float32, [7.0, 7.0, 7.0])}


def _sums() -> dict:
    comm = default_comm()
    # Addition in rank order gives (1e16 + 1) - 1e16 = 0 on every rank: the same bits everywhere.
    value = torch.tensor([[1e16, 3.0], [1.0, 0.25], [-1e16, 0.5]][comm.rank], dtype=torch.float64)
    total = comm.sum(value)
    return {"kind": type(comm).__name__, "sum": total.tolist(), "repeat": [comm.sum(value).tolist() for _ in range(50)]}


def test_sum_is_the_same_on_every_rank_added_in_rank_order() -> None:
    ranks = run_workers(_sums, 3)
    for r in ranks:
        assert r["kind"] == "SharedMemoryComm"  # auto picks shared memory on one machine
        assert r["sum"] == [0.0, 3.75]
        assert all(s == r["sum"] for s in r["repeat"])


def _waits_for_a_dead_peer(dead_pid: int) -> str | None:
    comm = SharedMemoryComm()
    if comm.rank == 1:
        return None
    comm._pids[1] = dead_pid  # as if rank 1 had died after the rings were set up
    start = time.monotonic()
    try:
        comm.recv_tensor((1,), torch.float64, 1)
    except RuntimeError as error:
        return f"{time.monotonic() - start:.2f} {error}"
    return "received"


def test_a_receive_from_a_dead_peer_fails_naming_it() -> None:
    child = subprocess.Popen(["true"])
    child.wait()  # a pid that is no longer in use
    message = run_workers(_waits_for_a_dead_peer, 2, (child.pid,))[0]
    seconds, text = message.split(" ", 1)
    assert "rank 0 waited for a message from rank 1, but rank 1" in text and "is gone" in text
    assert float(seconds) < 3.0 * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))  # a check every second


def _both_transports(configs) -> dict:
    gloo = [dataclasses.replace(c, transport="gloo") for c in configs]
    shm = [dataclasses.replace(c, transport="shm") for c in configs]
    kinds = [type(make_comm(None, t)).__name__ for t in ("gloo", "shm", "auto")]
    return {"gloo": solve_many(gloo), "shm": solve_many(shm), "kinds": kinds}


def test_shared_memory_and_gloo_give_the_same_bits() -> None:
    """Two ranks: the halos are copies and a + b = b + a, so the transports agree to the last bit."""
    for rank in run_workers(_both_transports, 2, (with_solution(CONFIGS),), timeout_s=240):
        assert rank["kinds"] == ["DistComm", "SharedMemoryComm", "SharedMemoryComm"]
        for config, a, b in zip(CONFIGS, rank["gloo"], rank["shm"]):
            assert a["iterations"] == b["iterations"], config
            assert a["residuals"] == b["residuals"], config
            assert a["u"] == b["u"], config


def _unknown_transport() -> str:
    try:
        make_comm(None, "carrier pigeon")
    except ConfigError as error:
        return str(error)
    return "accepted"


def test_an_unknown_transport_is_a_config_error() -> None:
    assert isinstance(default_comm("gloo"), SerialComm)  # one process: nothing to send
    with pytest.raises(ConfigError, match="transport must be one of"):
        default_comm("carrier pigeon")
    for message in run_workers(_unknown_transport, 2):
        assert message == "transport must be one of auto, shm, gloo, got 'carrier pigeon'"


def _without_space(transport: str) -> str:
    """Rank 1's /dev/shm is full: every rank must learn it and fall back (or refuse) alike."""
    import os

    import torch.distributed as dist

    real = os.posix_fallocate
    if dist.get_rank() == 1:
        def full(fd: int, offset: int, length: int) -> None:
            raise OSError(28, "No space left on device")

        os.posix_fallocate = full
    try:
        return type(make_comm(None, transport)).__name__
    except ConfigError as error:
        return str(error)
    finally:
        os.posix_fallocate = real


def test_a_full_dev_shm_falls_back_to_gloo_on_every_rank() -> None:
    assert run_workers(_without_space, 2, ("auto",)) == ["DistComm", "DistComm"]
    for message in run_workers(_without_space, 2, ("shm",)):
        assert message.startswith("transport 'shm' is not possible: the rings could not be made in /dev/shm")
        assert "rank 1: [Errno 28] No space left on device" in message
