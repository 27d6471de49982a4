"""Time grids of the MGRIT hierarchy and which rank owns which points.

Level ``l+1`` consists of the C-points of level ``l``: every ``m_l``-th point, starting with
the first.  By default we require ``(n_l - 1) % m_l == 0`` so that the last point of every
level is a C-point and every C-interval is full; a grid that does not fit is refused with a
message that says which level breaks and which sizes would work.  ``allow_partial=True``
accepts a last interval that ends in F-points instead (PyMGRIT's behaviour).

Ownership: rank ``r`` owns a contiguous block of the finest level; on a coarse level it owns
the coarse points whose fine counterparts it owns.  Injection and the coarse-grid correction
are therefore local, and the only communication is the halo (the point before a rank's first
point).  A rank may own no point at all on a coarse level (e.g. 3 ranks, 2 coarse points):
it then sits the level out, and its neighbours exchange halos past it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from torchpint.errors import ConfigError


class GridError(ConfigError):
    """A time grid that the requested coarsening cannot use."""


def coarsen(t: torch.Tensor, cf: list[int], levels: int, allow_partial: bool = False) -> list[torch.Tensor]:
    """The time points of every level, finest first; validates the coarsening.

    With ``allow_partial`` a level may end with F-points (a partial last C-interval, as PyMGRIT
    and XBraid allow): those points are relaxed but, not being C-points, not in the residual.
    """
    if levels < 1:
        raise GridError(f"levels must be >= 1, got {levels}")
    if t.dim() != 1 or t.numel() < 2:
        raise GridError(f"the time grid needs at least 2 points, got {t.numel()}")
    if not bool((t[1:] > t[:-1]).all()):
        raise GridError("time points must be strictly increasing")
    if len(cf) < levels - 1:
        raise GridError(f"{levels} levels need {levels - 1} coarsening factors, got {len(cf)}")
    grids = [t]
    for lvl in range(levels - 1):
        m = cf[lvl]
        n = grids[-1].numel()
        if m < 2:
            raise GridError(f"coarsening factor must be >= 2, got cf={m} on level {lvl}")
        if n - 1 < m:
            raise GridError(
                f"more levels than the grid allows: level {lvl} has {n} points, too few to "
                f"coarsen by cf={m} (at most {max_levels(t.numel(), cf)} levels fit nt={t.numel()})"
            )
        if (n - 1) % m != 0 and not allow_partial:
            raise GridError(
                f"nt={t.numel()} is not compatible with the coarsening: level {lvl} has {n} points "
                f"and {n - 1} intervals, not divisible by cf={m}; use nt = k*{_product(cf[: levels - 1])} + 1 "
                f"(or allow a partial last interval)"
            )
        grids.append(grids[-1][::m].clone())
    return grids


def _product(values: list[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def max_levels(nt: int, cf: list[int]) -> int:
    """The largest number of levels whose coarsening the grid of ``nt`` points allows."""
    levels, n = 1, nt
    for m in cf:
        if m < 2 or n - 1 < m or (n - 1) % m != 0:
            break
        n = (n - 1) // m + 1
        levels += 1
    return levels


def block_ranges(n: int, size: int) -> list[tuple[int, int]]:
    """Contiguous, balanced blocks ``[lo, hi)`` of ``n`` points over ``size`` ranks."""
    return [(r * n // size, (r + 1) * n // size) for r in range(size)]


@dataclass(frozen=True)
class Layout:
    """One level as seen by one rank: the global grid and the block each rank owns."""

    t: torch.Tensor  # global time points of this level (float64)
    m: int | None  # coarsening factor to the next level, None on the coarsest
    ranges: tuple[tuple[int, int], ...]  # every rank's [lo, hi)
    rank: int

    @property
    def n(self) -> int:
        return int(self.t.numel())

    @property
    def lo(self) -> int:
        return self.ranges[self.rank][0]

    @property
    def hi(self) -> int:
        return self.ranges[self.rank][1]

    @property
    def n_local(self) -> int:
        return self.hi - self.lo

    def is_c_point(self, i: int) -> bool:
        return self.m is None or i % self.m == 0

    def prev_owner(self) -> int | None:
        """The rank owning point ``lo - 1`` (None if this rank is empty or starts at 0)."""
        if self.n_local == 0 or self.lo == 0:
            return None
        for r in range(self.rank - 1, -1, -1):
            lo, hi = self.ranges[r]
            if hi > lo:
                return r
        return None

    def next_owner(self) -> int | None:
        """The next non-empty rank, which needs this rank's last point as its halo."""
        if self.n_local == 0:
            return None
        for r in range(self.rank + 1, len(self.ranges)):
            lo, hi = self.ranges[r]
            if hi > lo:
                return r
        return None

    def local_c_points(self) -> torch.Tensor:
        """Global indices of the C-points this rank owns."""
        if self.m is None:
            return torch.arange(self.lo, self.hi)
        first = -(-self.lo // self.m) * self.m
        return torch.arange(first, self.hi, self.m)


def check_partition(partition: list[tuple[int, int]], n: int, size: int) -> None:
    """A partition must give every rank a non-empty contiguous block, in rank order, covering 0..n-1."""
    if len(partition) != size:
        raise GridError(f"the partition has {len(partition)} blocks for {size} processes")
    expected_lo = 0
    for rank, (lo, hi) in enumerate(partition):
        if lo != expected_lo or hi <= lo:
            raise GridError(
                f"partition block {rank} is [{lo}, {hi}): blocks must be non-empty, contiguous and in rank order"
            )
        expected_lo = hi
    if expected_lo != n:
        raise GridError(f"the partition covers {expected_lo} points, the grid has {n}")


def layouts(
    grids: list[torch.Tensor],
    cf: list[int],
    rank: int,
    size: int,
    partition: list[tuple[int, int]] | None = None,
) -> list[Layout]:
    """The per-rank layout of every level: blocks on the finest, inherited on coarse ones.

    ``partition`` gives each rank's block ``[lo, hi)`` of the finest level explicitly (e.g. to
    keep the owner of a layer the same in a forward and an adjoint solve); default: balanced.
    """
    if size > grids[0].numel():
        raise GridError(
            f"more processes ({size}) than time points ({grids[0].numel()}): every rank must own a point"
        )
    if partition is None:
        ranges = block_ranges(grids[0].numel(), size)
    else:
        check_partition(partition, grids[0].numel(), size)
        ranges = list(partition)
    out: list[Layout] = []
    for lvl, t in enumerate(grids):
        m = cf[lvl] if lvl < len(grids) - 1 else None
        out.append(Layout(t=t, m=m, ranges=tuple(ranges), rank=rank))
        if m is not None:
            # Coarse point i belongs to whoever owns fine point i*m: [ceil(lo/m), ceil(hi/m)).
            ranges = [(-(-lo // m), -(-hi // m)) for lo, hi in ranges]
    return out
