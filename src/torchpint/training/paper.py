"""The paper's XOR tables (Schroder 2017, arXiv 1708.02276 v2): iterations / rho per N."""

from __future__ import annotations

from dataclasses import dataclass

PAPER_N = (100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600)


@dataclass(frozen=True)
class PaperTable:
    number: int
    title: str
    solver: str
    cycle: str
    alpha_b: float
    alpha_max: float
    iterations: tuple[int, ...]
    rho: tuple[float, ...]

    def rows(self, max_n: int | None = None) -> list[tuple[int, int, float]]:
        return [(n, it, r) for n, it, r in zip(PAPER_N, self.iterations, self.rho) if max_n is None or n <= max_n]


PAPER_TABLES: dict[int, PaperTable] = {
    1: PaperTable(1, "XOR, Solver 1, two-level, alpha_b = 1.0, alpha_max = 8", "1", "two-level", 1.0, 8.0,
                  (6, 6, 6, 6, 6, 6, 6, 6, 5), (0.10, 0.10, 0.10, 0.10, 0.09, 0.09, 0.08, 0.08, 0.07)),
    2: PaperTable(2, "XOR, Solver 1, F-cycle, alpha_b = 0.5, alpha_max = 8", "1", "F", 0.5, 8.0,
                  (5, 5, 5, 6, 6, 5, 6, 9, 12), (0.07, 0.08, 0.08, 0.06, 0.05, 0.04, 0.05, 0.07, 0.18)),
    3: PaperTable(3, "XOR, Solver 2, two-level, alpha_b = 1.0, alpha_max = 8", "2", "two-level", 1.0, 8.0,
                  (10, 12, 15, 18, 20, 20, 20, 20, 19), (0.18, 0.23, 0.28, 0.36, 0.40, 0.39, 0.39, 0.38, 0.38)),
}
