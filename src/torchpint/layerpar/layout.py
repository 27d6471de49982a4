"""Who owns which layer, and which layers a rank must borrow, in a layer-parallel network.

The network ``x_{k+1} = x_k + h f_k(x_k)``, ``k = 0..L-1``, is a chain on the points
``0..L``.  Rank ``r`` owns a contiguous block ``[lo_r, hi_r)`` of points and the layers whose
*input* point it owns (layer ``k`` for ``lo_r <= k < min(hi_r, L)``): the balanced blocks
of the ``L`` layers, the last rank also owning the output point ``L``.  Every rank owns at
least one layer.

MGRIT computes a point on the rank that owns it, from the point before it:

* forward, level ``l`` (stride ``M_l = cf^l`` fine points): the step into the coarse point
  at fine index ``J`` uses the layer of the previous coarse point, ``J - M_l``, with the step
  ``M_l h``.  For every point but the first one a rank owns on a level that layer is its own;
  for the first it belongs to an earlier rank.  Those (at most one per level: ``lo - 1`` on
  the finest) are the *replicas* a rank copies from their owners before every forward solve.
* adjoint (reversed time ``s = L - k``, ranks numbered backwards, the mirrored partition):
  the step into adjoint point ``s`` is the transposed step of layer ``L - s`` at the forward
  state ``x_{L-s}``: both belong to the rank that owns ``s``.  No replica is needed.

Layer x data parallelism (:func:`layer_data_comms`): ``P = P_layers x D`` processes form ``D``
layer groups (each one whole layer-parallel network, on its shard of the batch) and
``P_layers`` data groups (the ``D`` copies of one block of layers, which average their
gradients: :meth:`~torchpint.layerpar.LayerParallel.average_gradients`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from torchpint.engine.comm import Comm, SerialComm
from torchpint.engine.shm import make_comm
from torchpint.engine.mgrit import ConfigError


def _product(values: list[int]) -> int:
    return math.prod(values) if values else 1


@dataclass(frozen=True)
class LayerLayout:
    """The layer/point ownership of a layer-parallel network over ``size`` ranks."""

    layers: int
    size: int
    cf: tuple[int, ...]  # one coarsening factor per coarse level (len = levels - 1)
    ranges: tuple[tuple[int, int], ...]  # forward points [lo, hi) of every rank, in rank order

    @property
    def levels(self) -> int:
        return len(self.cf) + 1

    def strides(self) -> list[int]:
        """Fine points between neighbouring points of every level (1 on the finest)."""
        out = [1]
        for m in self.cf:
            out.append(out[-1] * m)
        return out

    def owner(self, point: int) -> int:
        """The rank owning a point (and the layer whose input it is)."""
        for rank, (lo, hi) in enumerate(self.ranges):
            if lo <= point < hi:
                return rank
        raise IndexError(f"point {point} is outside 0..{self.layers}")

    def owned_layers(self, rank: int) -> range:
        lo, hi = self.ranges[rank]
        return range(lo, min(hi, self.layers))

    def replicas(self, rank: int) -> list[int]:
        """Layers owned elsewhere that the forward solve on ``rank`` steps with."""
        lo, hi = self.ranges[rank]
        need: set[int] = set()
        for stride in self.strides():
            first = -(-lo // stride) * stride  # the rank's first point on this level
            if first < hi and first > 0:
                need.add(first - stride)
        return sorted(k for k in need if not lo <= k < hi)

    def adjoint_partition(self) -> list[tuple[int, int]]:
        """The adjoint solve's blocks in its own (reversed) rank order: rank ``r`` keeps its points."""
        n = self.layers + 1
        return [(n - hi, n - lo) for lo, hi in reversed(self.ranges)]


def plan_layout(layers: int, levels: int, cf: int | list[int], size: int) -> LayerLayout:
    """Validate the sizes and lay the layers out over ``size`` ranks (balanced blocks)."""
    if not isinstance(layers, int) or layers < 1:
        raise ConfigError(f"layers must be a positive integer, got {layers!r}")
    if levels < 1:
        raise ConfigError(f"levels must be >= 1, got {levels}")
    cfs = [cf] * (levels - 1) if isinstance(cf, int) else list(cf)[: levels - 1]
    if len(cfs) < levels - 1:
        raise ConfigError(f"{levels} levels need {levels - 1} coarsening factors, got {len(cfs)}")
    for m in cfs:
        if m < 2:
            raise ConfigError(f"the coarsening factor cf must be >= 2, got {m}")
    stride = _product(cfs)
    if layers % stride != 0:
        product = " * ".join(str(m) for m in cfs)
        raise ConfigError(
            f"layers={layers} is not divisible as the coarsening needs: {levels} levels with cf={cfs} "
            f"coarsen by {product} = {stride}, so the number of layers must be a multiple of {stride} "
            f"(e.g. {max(stride, layers // stride * stride)} or {(layers // stride + 1) * stride}); "
            f"or use fewer levels or a smaller cf"
        )
    if size < 1:
        raise ConfigError(f"the number of processes must be >= 1, got {size}")
    if size > layers:
        raise ConfigError(
            f"more processes ({size}) than layers ({layers}): every process must own at least one layer"
        )
    blocks = [(r * layers // size, (r + 1) * layers // size) for r in range(size)]
    lo, _ = blocks[-1]
    blocks[-1] = (lo, layers + 1)  # the last rank also owns the output point
    return LayerLayout(layers=layers, size=size, cf=tuple(cfs), ranges=tuple(blocks))


def layer_data_ranks(world_size: int, data_parallel: int) -> tuple[list[list[int]], list[list[int]]]:
    """The process grid of layer x data parallelism: ``(layer groups, data groups)`` as world ranks.

    World rank ``w`` is layer rank ``w % P_layers`` of data group ``w // P_layers``
    (``P_layers = world_size / data_parallel``): each layer group is one whole layer-parallel
    network (consecutive ranks, so its point-to-point messages stay between neighbours), and each
    data group holds the ``data_parallel`` copies of one block of layers, which average their
    gradients.
    """
    if data_parallel < 1:
        raise ConfigError(f"the number of data-parallel groups must be >= 1, got {data_parallel}")
    if world_size % data_parallel != 0:
        raise ConfigError(
            f"{data_parallel} data-parallel groups do not divide the {world_size} processes: the processes are "
            f"layer ranks x data groups, so their number must be a multiple of {data_parallel}"
        )
    per_network = world_size // data_parallel
    layer_groups = [list(range(d * per_network, (d + 1) * per_network)) for d in range(data_parallel)]
    data_groups = [list(range(r, world_size, per_network)) for r in range(per_network)]
    return layer_groups, data_groups


def layer_data_comms(data_parallel: int = 1, transport: str = "auto") -> tuple[Comm, Comm]:
    """``(layer comm, data comm)`` of this process in the grid of :func:`layer_data_ranks` (collective).

    ``transport``: how the layer comm's messages travel (:func:`torchpint.engine.shm.make_comm`).

    Every process of ``torch.distributed``'s world must call it (process groups are created
    collectively); without an initialised world (one process) ``data_parallel`` must be 1.
    Give the layer comm to ``LayerParallel(comm=...)`` and the data comm to ``data_comm=...``.
    """
    if not (dist.is_available() and dist.is_initialized()):
        layer_data_ranks(1, data_parallel)  # validates: only 1 divides one process
        return SerialComm(), SerialComm()
    world, rank = dist.get_world_size(), dist.get_rank()
    layer_groups, data_groups = layer_data_ranks(world, data_parallel)
    per_network = world // data_parallel

    def mine(groups: list[list[int]], transport: str) -> Comm:
        own: Comm = SerialComm()
        for ranks in groups:  # every process creates every group, in the same order
            if len(ranks) == 1:
                continue  # a group of one process talks to nobody
            group = None if len(ranks) == world else dist.new_group(ranks)
            if rank in ranks:
                own = make_comm(group, transport)
        return own

    # The layer groups carry MGRIT's many small halo messages: shared memory where the ranks
    # share a machine.  The data groups only average gradients (large all-reduces): gloo.
    layer, data = mine(layer_groups, transport), mine(data_groups, "gloo")
    assert layer.size == per_network and data.size == data_parallel
    return layer, data


def batch_shard(batch: torch.Tensor, data_comm: Comm) -> tuple[torch.Tensor, float]:
    """This data group's contiguous shard of ``batch`` (balanced) and its share ``len(shard) / len(batch)``.

    The share is the ``weight`` of :meth:`~torchpint.layerpar.LayerParallel.average_gradients`
    for a mean loss.  A batch with fewer examples than data groups is an error (a group would
    have nothing to compute with).
    """
    groups = data_comm.size
    if len(batch) < groups:
        raise ConfigError(
            f"a batch of {len(batch)} examples cannot be split over {groups} data-parallel groups: "
            f"use batches of at least {groups} examples, or fewer data groups"
        )
    shard = torch.tensor_split(batch, groups)[data_comm.rank]
    return shard, len(shard) / len(batch)
