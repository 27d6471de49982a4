"""``torchpint.run.fit``: the CLI's loop and checkpoints for a user's model and DataLoader."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchpint.errors import ConfigError
from torchpint.run import NonFiniteLossError, fit


def _data() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 5, generator=g)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True), DataLoader(TensorDataset(x, y), batch_size=48)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))


class _NanAt(nn.Module):
    """The wrapped model's output turns NaN at one call (a loss that diverges mid-run)."""

    def __init__(self, inner: nn.Module, call: int) -> None:
        super().__init__()
        self.inner, self.call, self.calls = inner, call, 0

    def forward(self, x):
        self.calls += 1
        out = self.inner(x)
        return out * float("nan") if self.calls == self.call else out


def test_fit_resumed_after_a_stop_equals_the_uninterrupted_run(tmp_path) -> None:
    train, test = _data()
    straight = _model()
    whole = fit(straight, train, test_loader=test, epochs=3, out=tmp_path / "a", progress=False)
    assert len(whole["history"]) == 3 and 0.0 <= whole["test_accuracy"] <= 1.0
    assert {"metrics.json", "metrics.csv", "curves.png", "model.pt", "run.json"} <= {p.name for p in (tmp_path / "a").iterdir()}
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["version"]

    stopped = _NanAt(_model(), call=8 * 2 + 3)  # epoch 3, step 3 (6 steps and 2 test batches an epoch)
    with pytest.raises(NonFiniteLossError, match="epoch 3, step 3.*epoch_0002.*--resume"):
        fit(stopped, train, test_loader=test, epochs=3, out=tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(_model(), train, epochs=3, out=tmp_path / "b", progress=False)
    resumed = _NanAt(_model(), call=0)  # the same class as the stopped run's (the configuration says so)
    again = fit(resumed, train, test_loader=test, epochs=3, out=tmp_path / "b", resume=True, progress=False)
    assert again["resumed_from_epoch"] == 2
    for a, b in zip(straight.state_dict().values(), resumed.inner.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    loaded = _NanAt(_model(), call=0)
    loaded.load_state_dict(torch.load(tmp_path / "b" / "model.pt", weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), resumed.state_dict().values()))


def test_fit_resume_with_other_settings_is_refused(tmp_path) -> None:
    train, _ = _data()
    fit(_model(), train, epochs=1, out=tmp_path / "a", progress=False, config={"lr": 0.1})
    with pytest.raises(ConfigError, match=r"lr \(0.1 there, 0.2 now\)"):
        fit(_model(), train, epochs=2, out=tmp_path / "a", progress=False, config={"lr": 0.2}, resume=True)
