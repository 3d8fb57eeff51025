"""The tutorials run, and their executed notebooks are not stale.

Every tutorial is stored twice (``tutorials/NN_name.py``, a jupytext percent script, and
``tutorials/NN_name.ipynb``, executed): the script runs top to bottom in smoke mode
(``WAKESLEEP_SMOKE=1``), and the notebook holds the same code cells and their outputs,
including at least one plot. Adding a tutorial is dropping in the two files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = ROOT / "tutorials"
SCRIPTS = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
SMOKE_TIMEOUT_S = 600  # a smoke run takes well under a minute; the CPU may be shared


def test_there_are_tutorials():
    assert SCRIPTS, f"no tutorials/NN_*.py in {TUTORIALS}"


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_tutorial_runs_in_smoke_mode(script, tmp_path):
    env = dict(os.environ, WAKESLEEP_SMOKE="1", MPLBACKEND="Agg")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,  # a tutorial writing files leaves nothing in the checkout
        env=env,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_S,
    )
    assert result.returncode == 0, (
        f"{script.name} failed in smoke mode:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )


def _code_cells(notebook) -> list[str]:
    return [cell.source.strip() for cell in notebook.cells if cell.cell_type == "code"]


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_notebook_is_executed_and_matches_its_script(script):
    jupytext = pytest.importorskip("jupytext")
    nbformat = pytest.importorskip("nbformat")
    stored = script.with_suffix(".ipynb")
    rerun = f"python tutorials/execute.py tutorials/{script.name}"
    assert stored.exists(), f"{stored.name} is missing: run `{rerun}`"

    source = jupytext.read(script)
    notebook = nbformat.read(stored, as_version=4)
    assert _code_cells(notebook) == _code_cells(source), (
        f"{stored.name} is stale (its code cells differ from {script.name}): run `{rerun}`"
    )

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.get("execution_count") for cell in code), f"{stored.name}: not executed"
    outputs = [output for cell in code for output in cell.outputs]
    assert outputs, f"{stored.name} holds no outputs: run `{rerun}`"
    errors = [output for output in outputs if output.output_type == "error"]
    assert not errors, f"{stored.name} was stored with an error: {errors[0].get('ename')}"
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert images, f"{stored.name} holds no plot: run `{rerun}`"
