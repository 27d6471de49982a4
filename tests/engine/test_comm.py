"""The messaging the networks use: tagged point-to-point tensors, broadcast, gather (2 and 3 processes)."""

import pytest
import torch

from torchpint.run.launch import run_workers
from torchpint.engine.comm import DistComm, ReversedComm, SerialComm
from torchpint.engine.shm import make_comm


def _exchange(transport: str) -> dict:
    comm = make_comm(None, transport)
    out: dict = {}
    # Two streams between the same pair, posted in one order and received in the other: tags keep them apart.
    if comm.rank == 0:
        a = torch.arange(6, dtype=torch.float64).reshape(2, 3)
        comm.isend(a, 1, tag=7)
        comm.isend(a * 10, 1, tag=8)
        a.zero_()  # changing the tensor after posting must not change what arrives
        comm.wait_sends()
    elif comm.rank == 1:
        out["tag8"] = comm.recv_tensor((2, 3), torch.float64, 0, tag=8).tolist()
        out["tag7"] = comm.recv_tensor((2, 3), torch.float64, 0, tag=7).tolist()
    value = torch.full((2, 1, 4), 3.5, dtype=torch.float32) if comm.rank == comm.size - 1 else None
    b = comm.broadcast(value, root=comm.size - 1)
    out["broadcast"] = (list(b.shape), str(b.dtype), float(b.sum()))
    rev = ReversedComm(comm)
    rb = rev.broadcast(torch.ones(3, dtype=torch.int64) * 5 if rev.rank == 0 else None, root=0)
    out["reversed_broadcast"] = rb.tolist()
    out["gather"] = comm.gather_object({"rank": comm.rank}, dst=0)
    out["reversed_gather"] = rev.gather_object(rev.rank, dst=0)
    return out


@pytest.mark.parametrize("transport", ["gloo", "shm"])
def test_tagged_messages_broadcast_and_gather_on_three_processes(transport: str):
    ranks = run_workers(_gather_all, 3, (transport,))
    r0, r1, r2 = ranks[0]
    assert r1["tag7"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert r1["tag8"] == [[0.0, 10.0, 20.0], [30.0, 40.0, 50.0]]
    for r in (r0, r1, r2):
        assert r["broadcast"] == ([2, 1, 4], "torch.float32", 28.0)
        assert r["reversed_broadcast"] == [5, 5, 5]
    assert r0["gather"] == [{"rank": 0}, {"rank": 1}, {"rank": 2}]
    assert r1["gather"] is None
    # ReversedComm's rank 0 is the last process; it receives the gather in its own numbering.
    assert r2["reversed_gather"] == [0, 1, 2]


def _gather_all(transport: str) -> list:
    mine = _exchange(transport)
    return DistComm().gather_object(mine, dst=0)


def test_serial_comm_is_the_identity():
    comm = SerialComm()
    x = torch.ones(2)
    assert comm.broadcast(x) is x
    assert comm.gather_object(3) == [3]
