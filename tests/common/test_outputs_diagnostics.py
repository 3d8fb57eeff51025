"""``diagnostics.json`` and ``khat.png`` of the trainers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wakesleep.trainer.outputs import save_diagnostics


def test_fractions_and_quantiles_follow_the_khats(tmp_path):
    k = np.array([0.1, 0.2, 0.3, 0.6, 0.65, 0.8, np.inf, 0.4])
    summary = save_diagnostics(tmp_path, k, num_samples=1000)
    on_disk = json.loads((tmp_path / "diagnostics.json").read_text())
    assert on_disk == summary
    assert summary["num_datapoints"] == 8 and summary["num_samples"] == 1000
    assert summary["fraction_khat_above_0.5"] == pytest.approx(4 / 8)
    assert summary["fraction_khat_above_0.7"] == pytest.approx(2 / 8)
    assert summary["khat_quantiles"]["0.5"] == pytest.approx(np.quantile(k, 0.5))
    assert summary["khat_quantiles"]["0.95"] is None  # falls on the infinite k-hat
    assert (tmp_path / "khat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("bad", [np.array([]), np.array([0.2, np.nan])])
def test_rejects_missing_or_nan_khats(tmp_path, bad):
    with pytest.raises(ValueError, match="k-hat"):
        save_diagnostics(tmp_path, bad, num_samples=10)
    assert not (tmp_path / "diagnostics.json").exists()
