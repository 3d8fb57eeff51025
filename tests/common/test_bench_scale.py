"""Smoke test of ``benchmarks/bench_scale.py``: every code path at tiny sizes, and its table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_scale.py"


@pytest.mark.slow
def test_bench_scale_smoke_writes_the_table(tmp_path: Path) -> None:
    pytest.importorskip("pyro")
    pytest.importorskip("numpyro")
    pytest.importorskip("optax")
    out = tmp_path / "scale.md"
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--smoke", "--device", "cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    text = out.read_text()
    assert "sigmoid belief net 16-8-8, K=3, batch 8" in text

    number = r"-?\d+\.\d+"
    for name in ("pyro ours (eager)", "pyro ours (jit)", "numpyro ours (jit)"):
        # median, quartiles, ratio of medians, paired ratio, value, memory
        row = re.search(
            rf"^\| {re.escape(name)} \| ({number}) \| {number}–{number} \| ({number}) "
            rf"\| ({number}) \| {number} \| (.+) \|$",
            text,
            re.MULTILINE,
        )
        assert row is not None, f"no row for {name!r}:\n{text}"
        assert float(row.group(1)) > 0 and float(row.group(2)) > 0 and float(row.group(3)) > 0
        assert "MiB" in row.group(4)
    for name in ("pyro hand-written", "numpyro hand-written (jit)"):
        assert re.search(rf"^\| {re.escape(name)} \| {number} \|", text, re.MULTILINE)

    # the same-maths checks ran and agree
    for name in ("Pyro eager", "Pyro jit (replayed graph)", "NumPyro"):
        row = re.search(rf"^\| {re.escape(name)} \| (\S+) \| \S+ \| (\S+) \|", text, re.MULTILINE)
        assert row is not None, name
        assert float(row.group(1)) < 1e-5 and float(row.group(2)) < 1e-4
    assert "WARNING" not in text

    # the two-point sweep and its fits
    assert "### Sweep" in text
    for name in ("pyro ours (jit)", "numpyro ours (jit)"):
        assert re.search(
            rf"^\| {re.escape(name)} \| {number} \| {number} \| {number} \| {number} \|$",
            text,
            re.MULTILINE,
        ), name
    assert "load average" in text
