"""The 1-D heat equation exactly as PyMGRIT's ``Heat1D`` discretises it.

``u_t = a u_xx + f(x, t)`` on ``[x_start, x_end]`` with homogeneous Dirichlet boundaries;
``nx`` grid points including the two boundary points (the state holds the ``nx - 2``
interior values); second-order central differences in space; backward Euler in time:

    (I + dt * K) u_{n+1} = u_n + dt * f(x, t_{n+1}),   K = a / dx^2 * tridiag(-1, 2, -1).

Speed: the tridiagonal matrix ``I + dt K`` depends only on ``dt``, so its LDL^T factorisation
is computed once per distinct ``dt`` and a batched step solves all right-hand sides with
one LAPACK ``pttrs`` call (CPU, float64).  Other devices and dtypes use a cached dense LU
(``torch.linalg.lu_factor``), which is what a GPU is good at.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.linalg import lapack

from torchpint.engine.problem import BatchedProblem

Source = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
InitialCondition = Callable[[torch.Tensor], torch.Tensor]


def default_rhs(a: float = 1.0) -> Source:
    """``f(x, t) = -sin(pi x) (sin t - a pi^2 cos t)``: exact solution ``sin(pi x) cos t``."""

    def rhs(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -torch.sin(math.pi * x) * (torch.sin(t) - a * math.pi**2 * torch.cos(t))

    return rhs


class Heat1D(BatchedProblem):
    """Backward-Euler heat equation; see the module docstring.

    Args:
        x_start, x_end: the spatial interval.
        nx: number of grid points, both boundary points included (>= 3).
        a: thermal conductivity.
        init_cond: ``u(x, t_start)`` from the interior points ``x`` (default 0).
        rhs: ``f(x, t)``; called with ``x`` of shape ``(1, nx-2)`` and ``t`` of shape
            ``(batch, 1)`` and must broadcast to ``(batch, nx-2)`` (default 0).
    """

    def __init__(
        self,
        x_start: float = 0.0,
        x_end: float = 2.0,
        nx: int = 1025,
        a: float = 1.0,
        init_cond: InitialCondition | None = None,
        rhs: Source | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if nx < 3:
            raise ValueError(f"nx must be >= 3 (it counts both boundary points), got {nx}")
        if not x_end > x_start:
            raise ValueError(f"x_end ({x_end}) must be greater than x_start ({x_start})")
        if not a > 0:
            raise ValueError(f"the thermal conductivity a must be > 0, got {a}")
        grid = np.linspace(x_start, x_end, nx)[1:-1]
        self.device = torch.device(device)
        self.dtype = dtype
        self.x = torch.from_numpy(grid).to(self.device, dtype)
        self.n = nx - 2
        self.dx = float(grid[1] - grid[0]) if self.n > 1 else float((x_end - x_start) / 2)
        self.a = float(a)
        self.fac = self.a / self.dx**2
        self.init_cond = init_cond
        self.rhs = rhs
        self._lapack = self.device.type == "cpu" and dtype == torch.float64
        self._factors: dict[float, tuple] = {}

    def initial_value(self) -> torch.Tensor:
        if self.init_cond is None:
            return torch.zeros(self.n, dtype=self.dtype, device=self.device)
        return self.init_cond(self.x).to(self.device, self.dtype).reshape(self.n)

    # ---------------------------------------------------------------- the linear solve
    def _factor(self, dt: float) -> tuple:
        """LU factors of ``I + dt K`` (cached per distinct dt)."""
        cached = self._factors.get(dt)
        if cached is not None:
            return cached
        diag = np.full(self.n, dt * (2 * self.fac) + 1.0)
        off = np.full(self.n - 1, dt * -self.fac)
        if self._lapack:
            # I + dt K is symmetric positive definite: LDL^T (pttrf) solves twice as fast as LU.
            d, e, info = lapack.dpttrf(diag, off)
            if info != 0:
                raise ArithmeticError(f"the heat-equation matrix is not positive definite for dt={dt}")
            cached = ("lapack", d, e)
        else:
            dense = torch.diag(torch.from_numpy(diag))
            dense += torch.diag(torch.from_numpy(off), 1) + torch.diag(torch.from_numpy(off), -1)
            lu, piv = torch.linalg.lu_factor(dense.to(self.device, self.dtype))
            cached = ("torch", lu, piv)
        self._factors[dt] = cached
        return cached

    def _solve(self, dt: float, b: torch.Tensor) -> torch.Tensor:
        """Solve ``(I + dt K) x = b`` for every row of ``b`` (shape ``(batch, n)``)."""
        factor = self._factor(dt)
        if factor[0] == "lapack":
            # A C-contiguous (batch, n) array is an F-contiguous (n, batch) one: no copy.
            rhs = b.contiguous().numpy().T
            x, info = lapack.dpttrs(*factor[1:], rhs, overwrite_b=1)
            if info != 0:
                raise ArithmeticError(f"LAPACK pttrs failed (info={info})")
            return torch.from_numpy(np.ascontiguousarray(x.T))
        _, lu, piv = factor
        return torch.linalg.lu_solve(lu, piv, b.T).T

    def _source(self, t: torch.Tensor) -> torch.Tensor | None:
        if self.rhs is None:
            return None
        return self.rhs(self.x.unsqueeze(0), t.to(self.device, self.dtype).unsqueeze(1))

    # ---------------------------------------------------------------- the contract
    def step_batch(self, u: torch.Tensor, t_start: torch.Tensor, t_stop: torch.Tensor) -> torch.Tensor:
        dt = t_stop - t_start
        source = self._source(t_stop)
        b = u.clone() if source is None else u + source * dt.to(u.dtype).unsqueeze(1)
        dts = dt.tolist()
        first = dts[0]
        if all(d == first for d in dts):
            return self._solve(first, b)
        # Rounded grids give a few distinct dt: solve each group with its own exact matrix.
        out = torch.empty_like(b)
        values = torch.tensor(dts, dtype=torch.float64)
        for d in sorted(set(dts)):
            rows = torch.nonzero(values == d).squeeze(1)
            out[rows] = self._solve(d, b[rows])
        return out
