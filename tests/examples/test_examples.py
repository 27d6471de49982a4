"""Every example runs as a user runs it (a fresh interpreter, from the repository root) and shows what it says."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_example(name: str) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=240,
                          env=ENV, cwd=EXAMPLES.parent)
    assert done.returncode == 0, done.stderr
    return done.stdout


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return float(match.group(1))


def test_every_example_is_tested() -> None:
    tested = {"engine_own_problem.py", "paranet_own_model.py", "mgrit_train_own_module.py",
              "layer_parallel_own_residual.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


@pytest.mark.slow
def test_engine_own_problem() -> None:
    out = run_example("engine_own_problem.py")
    assert number(r"max difference to MGRIT (\S+)", out) < 1e-8


@pytest.mark.slow
def test_paranet_own_model() -> None:
    out = run_example("paranet_own_model.py")
    assert number(r"K = N: largest difference from the original network (\S+)", out) < 1e-5
    # the stem convolution and the Linear head were found, not torn as blocks
    assert "stem: layers 0..2 (Conv2d, BatchNorm2d, ReLU), detected" in out
    assert "head: layers 9..11 (AdaptiveAvgPool2d, Flatten, Linear), detected" in out
    assert number(r"epoch 2: .* test accuracy (\S+)", out) >= 0.9


@pytest.mark.slow
def test_mgrit_train_own_module() -> None:
    out = run_example("mgrit_train_own_module.py")
    assert "converged True" in out
    assert number(r"vs torch.optim.SGD: largest difference (\S+)", out) < 1e-7


@pytest.mark.slow
def test_layer_parallel_own_residual() -> None:
    out = run_example("layer_parallel_own_residual.py")
    assert number(r"equals autograd's on the serial network to (\S+)", out) < 1e-10
    losses = [float(v) for v in re.findall(r"loss (\S+)", out)]
    assert len(losses) == 3 and losses[-1] < losses[0]
