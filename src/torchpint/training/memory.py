"""How much memory MGRIT training needs, estimated before anything is allocated."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from torchpint.training.errors import MemoryLimitError

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40}


def parse_memory(text: str | float) -> int:
    """``"512M"``, ``"2GB"``, ``"1.5GiB"``, or a number of bytes."""
    if isinstance(text, (int, float)):
        value = int(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
        if not match or match.group(2).upper() not in _UNITS:
            raise MemoryLimitError(f"cannot read the memory size {text!r}: use e.g. 512M, 2G, 1.5GiB or bytes")
        value = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if value <= 0:
        raise MemoryLimitError(f"the memory limit must be > 0, got {text!r}")
    return value


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


@dataclass
class MemoryEstimate:
    state_bytes: int  # one time point (weights + optimizer state)
    finest_bytes: int  # the N+1 states of the finest level
    coarse_bytes: int  # u and g on every coarse level (u at C-points only with coarse_storage="c")
    work_bytes: int  # temporaries of the largest batched step (gradients, activations)
    result_bytes: int  # the gathered solution handed back
    reference_bytes: int  # the serial reference trajectory (for the comparison)
    per_process_bytes: int
    nproc: int

    def describe(self) -> str:
        return (
            f"{human(self.per_process_bytes)} per process ({self.nproc} process(es)): trajectory "
            f"{human(self.finest_bytes)} (N+1 states of {human(self.state_bytes)}), coarse levels "
            f"{human(self.coarse_bytes)}, work {human(self.work_bytes)}, result {human(self.result_bytes)}, "
            f"serial reference {human(self.reference_bytes)}"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(
    state_bytes: int,
    level_points: list[int],
    *,
    activation_bytes: int,
    chunk: int,
    store: str = "all",
    coarse_storage: str = "all",
    nproc: int = 1,
    m: int = 2,
    reference: bool = True,
) -> MemoryEstimate:
    """Bytes per process; the trajectory is split over ranks, the gathered result is not."""
    n_points = level_points[0]
    finest = n_points * state_bytes
    # Level l >= 1 holds g at its n_l points and u at n_l points, or, on an intermediate level
    # keeping only C-points, at its C-points (the next level's n_{l+1} points).
    coarse = 0
    for lvl in range(1, len(level_points)):
        n_u = level_points[lvl + 1] if coarse_storage == "c" and lvl < len(level_points) - 1 else level_points[lvl]
        coarse += (level_points[lvl] + n_u) * state_bytes
    largest = -(-n_points // (m * nproc))
    work = 4 * largest * state_bytes + min(largest, chunk) * activation_bytes
    stored = n_points if store == "all" else -(-n_points // m)
    result = stored * state_bytes
    ref = n_points * state_bytes if reference and store == "all" else state_bytes
    per_process = (finest + coarse) // nproc + work + result + ref
    return MemoryEstimate(state_bytes, finest, coarse, work, result, ref, per_process, nproc)


def check_limit(est: MemoryEstimate, limit: int | None) -> None:
    if limit is None:
        return
    if est.per_process_bytes > limit:
        raise MemoryLimitError(
            f"MGRIT training needs about {est.describe()}; that is more than the {human(limit)} allowed "
            f"(--max-memory). Use fewer steps, more processes, --store c or --coarse-storage c; nothing was allocated"
        )
