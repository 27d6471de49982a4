"""`torchpint demo` on tiny settings: every section runs, and the report and results.json hold the summary."""

import json
from pathlib import Path

import pytest

from torchpint.cli import demo
from torchpint.cli.main import main


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_writes_the_summary_table_and_results(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(demo, "ENGINE_DEMO", demo.replace(demo.ENGINE_DEMO, nt=65, nx=33, levels=3))
    monkeypatch.setattr(demo, "PARANET_DEMO", {**demo.PARANET_DEMO, "model": "resnet11-small", "image_size": 8,
                                               "max_train": 64, "max_test": 32})
    monkeypatch.setattr(demo, "MGRIT_TRAIN_DEMO", {**demo.MGRIT_TRAIN_DEMO, "steps": 32})
    monkeypatch.setattr(demo, "LAYER_PARALLEL_DEMO", {**demo.LAYER_PARALLEL_DEMO, "layers": 8, "epochs": 1})
    monkeypatch.setattr(demo, "LAYER_PARALLEL_CHECKS", [demo.LAYER_PARALLEL_CHECKS[0], {
        **demo.LAYER_PARALLEL_CHECKS[1], "layers": 16, "levels": 2}])
    monkeypatch.setattr(demo, "LAYER_PARALLEL_TIMING", {**demo.LAYER_PARALLEL_TIMING, "layers": 16, "width": 8,
                                                        "batch": 8, "levels": 2, "repeat": 1})
    assert main(["demo", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {r["capability"]: r for r in results["summary"]}
    assert list(rows) == ["engine", "paranet", "mgrit-train", "layer-parallel"]
    for row in rows.values():
        assert row["measured_speedup"] > 0 and row["checked"]
    assert results["total_seconds"] > 0
    # exactness, as the report states it
    assert results["engine"]["max_rel_diff"] < 1e-12 and results["engine"]["same_iterations"]
    assert max(results["mgrit-train"]["max_weight_diff_vs_serial"].values()) < 1e-7
    assert results["layer-parallel"]["worst_gradient_difference"] < 1e-9
    report = (tmp_path / "report.md").read_text()
    assert report.splitlines()[2].startswith("| capability | what was checked | measured speed-up here | projection |")
    for png in ("engine_residuals.png", "mgrit_train_cost.png", "layer_parallel_cost.png", "paranet/curves.png"):
        assert (tmp_path / png).stat().st_size > 1000, png
    assert "total demo time" in capsys.readouterr().out
