"""``benchmarks/bench_paranet_gpu.py`` (the ResNet-1001-on-CUDA-streams measurement) runs end to end.

No GPU here: the script runs on CPU, where the sub-networks' streams are
threads, on a small ResNet; the property checked is that the stream
execution computes what the serial one does and that the JSON holds every
ratio.  Without CUDA, asking for it exits 2 with a message.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_paranet_gpu.py"


def _script():
    spec = importlib.util.spec_from_file_location("bench_paranet_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runs_on_cpu_threads_and_writes_every_ratio(tmp_path) -> None:
    out = tmp_path / "gpu.json"
    rc = _script().main(["--device", "cpu", "--model", "resnet20-small", "--subnets", "3", "--batch", "4",
                         "--steps", "1", "--warmup", "1", "--balance", "flops", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["streams_vs_serial_rel_diff"] < 1e-6
    assert set(data["results"]) == {"original", "parareal serial", "parareal streams"}
    assert {"step_speedup_parareal_streams", "forward_speedup_parareal_streams", "stream_overlap_gain_step"} <= set(
        data["ratios"])
    assert len(data["split_points"]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script would run")
def test_asking_for_cuda_without_one_exits_2(capsys) -> None:
    assert _script().main(["--out", "/nonexistent/never-written.json"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
