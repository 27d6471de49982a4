"""``torchpint mgrit-train``: progress lines, the result, --json, --paper-table, --plot, errors."""

import json

import pytest
import torch

from torchpint.cli.main import main


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_json_summary(capsys, tmp_path) -> None:
    plot = tmp_path / "res.png"
    assert main(["mgrit-train", "xor", "--steps", "64", "--solver", "2", "--json", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "iter   1 | residual" in out and "potential speedup" in out
    summary = last_json(out)
    for key in ("iterations", "rho", "residuals", "max_weight_diff_vs_serial", "potential_speedup", "seconds",
                "predicted_seconds", "serial_seconds", "final_loss", "test_accuracy"):
        assert key in summary
    assert summary["converged"] and summary["max_weight_diff_vs_serial"] <= 1e-8 and summary["world_size"] == 1
    # the trained network, judged on the four XOR inputs, as serial training's
    assert summary["final_loss"] == pytest.approx(summary["final_loss_serial"], rel=1e-8)
    assert summary["test_accuracy"] == summary["test_accuracy_serial"]
    assert len(summary["residuals"]) == summary["iterations"]
    assert plot.stat().st_size > 0


def test_paper_table(capsys, tmp_path) -> None:
    plot = tmp_path / "speedup.png"
    assert main(["mgrit-train", "xor", "--paper-table", "2", "--max-n", "200", "--json", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "paper it/rho" in out
    table = last_json(out)
    assert [r["N"] for r in table["rows"]] == [100, 200]
    assert table["max_iteration_difference"] <= 2
    assert plot.exists()


@pytest.mark.slow
def test_two_processes(capsys) -> None:
    args = ["mgrit-train", "xor", "--steps", "64", "--cycle", "F", "--nproc", "2", "--no-predict", "--json"]
    assert main(args) == 0
    summary = last_json(capsys.readouterr().out)
    assert summary["world_size"] == 2 and summary["converged"] and summary["max_weight_diff_vs_serial"] <= 1e-8


def test_digits_accuracy_of_both(capsys) -> None:
    args = ["mgrit-train", "digits", "--steps", "32", "--cycle", "V", "--optimizer", "momentum", "--alpha-b", "0.01",
            "--coarse-update", "frozen", "--no-predict", "--json"]
    assert main(args) == 0
    summary = last_json(capsys.readouterr().out)
    assert summary["converged"] and summary["final_weight_diff_vs_torch_optim"] <= 1e-8
    assert summary["test_accuracy"] == summary["test_accuracy_serial"] > 0.1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--alpha-b", "0"], "alpha_b must be > 0"),
        (["--alpha-b", "-1"], "alpha_b must be > 0"),
        (["--steps", "1"], "at least 2 steps"),
        (["--max-memory", "1K"], "more than the 1.0 KiB allowed"),
        (["--nproc", "0"], "--nproc must be >= 1"),
        (["--steps", "8", "--nproc", "10"], "--nproc 10 cannot be used: more processes than the 9 time points"),
        (["--checkpoint-every", "0"], "--checkpoint-every must be >= 1"),
        (["--resume"], "--resume and --overwrite need the run folder: --out"),
        (["--alpha-max", "nan"], "alpha_max must be > 0"),
        (["--growth", "0.5"], "growth factor must be >= 1"),
        (["--batch", "0"], "batch must be >= 1"),
        (["--levels", "0"], "levels must be >= 1"),
        (["--train-size", "0"], "train-size must be >= 1"),
        (["--max-iter", "0"], "max-iter must be >= 1"),
        (["--divergence-iters", "0"], "divergence-iters must be >= 1"),
        (["--tol", "-1"], "tol must be a finite number >= 0"),
        (["--seed", "-1"], "seed must be in [0, 2**32)"),
        (["--paper-table", "2", "--max-n", "10"], "--max-n must be >= 100"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, args, message) -> None:
    assert main(["mgrit-train", "xor", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_divergence_is_reported_not_looped(capsys) -> None:
    code = main(["mgrit-train", "xor", "--steps", "128", "--solver", "2", "--cycle", "V", "--alpha-b", "10",
                 "--alpha-max", "1000", "--json"])
    captured = capsys.readouterr()
    assert code == 1
    assert "MGRIT diverges" in captured.err
    assert last_json(captured.out)["kind"] == "DivergenceError"


RUN = ["mgrit-train", "xor", "--steps", "64", "--solver", "2", "--cycle", "V", "--no-predict", "--json",
       "--checkpoint-every", "3"]


def test_an_interrupted_solve_resumes_to_the_uninterrupted_result(capsys, tmp_path) -> None:
    """Stopped after 6 iterations (checkpoints at 3 and 6), resumed: the same residuals and weights, bitwise."""
    assert main([*RUN, "--out", str(tmp_path / "whole")]) == 0
    whole = last_json(capsys.readouterr().out)
    assert main([*RUN, "--out", str(tmp_path / "cut"), "--max-iter", "6"]) == 0
    assert last_json(capsys.readouterr().out)["iterations"] == 6
    assert main([*RUN, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "after MGRIT iteration 6" in out
    resumed = last_json(out)
    assert resumed["resumed_from_iteration"] == 6 and resumed["world_size"] == 1
    assert resumed["residuals"] == whole["residuals"] and resumed["iterations"] == whole["iterations"]
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert list(a) == ["weights.0", "weights.1"] and all(torch.equal(a[k], b[k]) for k in a)


def test_run_folder_refusals(capsys, tmp_path) -> None:
    run = tmp_path / "run"
    assert main([*RUN, "--out", str(run), "--max-iter", "3"]) == 0
    capsys.readouterr()
    assert main([*RUN, "--out", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main([*RUN, "--out", str(run), "--resume", "--alpha-b", "0.5", "--seed", "2"]) == 2
    err = capsys.readouterr().err
    assert "different settings: alpha_b (None there, 0.5 now), seed (0 there, 2 now)" in err and "Traceback" not in err
