"""Execute tutorials: ``NN_name.py`` (jupytext percent script) -> ``NN_name.ipynb`` with outputs.

::

    .venv/bin/python tutorials/execute.py                       # every tutorials/NN_*.py
    .venv/bin/python tutorials/execute.py tutorials/04_trust_your_guide.py

Runs in full mode (``WAKESLEEP_SMOKE`` is removed from the kernel's environment; pass
``--smoke`` to keep tiny step counts, for a quick look only — never commit that). Plots
are embedded by the inline backend (``MPLBACKEND`` is removed as well). Volatile metadata
(execution timestamps) is not recorded, so re-executing an unchanged tutorial changes
little besides the numbers drawn at random and the timings it prints.

Needs ``pip install -e '.[dev]'`` (jupytext, nbclient, nbformat, ipykernel); the kernel is
``python3``, i.e. the interpreter that runs this script when its ipykernel is installed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parent


def execute(script: Path, smoke: bool = False, timeout: int = 1200) -> Path:
    """Convert ``script`` to a notebook, execute it in its own folder, write ``.ipynb``."""
    notebook = jupytext.read(script)
    env_backup = {name: os.environ.pop(name, None) for name in ("WAKESLEEP_SMOKE", "MPLBACKEND")}
    if smoke:
        os.environ["WAKESLEEP_SMOKE"] = "1"
    try:
        client = NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(script.parent)}},
            record_timing=False,
        )
        client.execute()
    finally:
        os.environ.pop("WAKESLEEP_SMOKE", None)
        for name, value in env_backup.items():
            if value is not None:
                os.environ[name] = value
    for cell in notebook.cells:  # tqdm's notice that ipywidgets is missing is noise
        if cell.cell_type == "code":
            cell.outputs = [
                output
                for output in cell.outputs
                if not (output.get("name") == "stderr" and "IProgress not found" in output.text)
            ]
    # the kernel's Python version and paths are not part of the tutorial
    notebook.metadata["kernelspec"] = {
        "display_name": "Python 3",
        "language": "python",
        "name": "python3",
    }
    notebook.metadata["language_info"] = {"name": "python"}
    notebook.metadata.get("jupytext", {}).pop("text_representation", None)
    target = script.with_suffix(".ipynb")
    nbformat.write(notebook, target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scripts", nargs="*", type=Path, help="default: every tutorials/NN_*.py")
    parser.add_argument("--smoke", action="store_true", help="WAKESLEEP_SMOKE=1 (tiny runs)")
    args = parser.parse_args()
    scripts = args.scripts or sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
    for script in scripts:
        start = time.perf_counter()
        target = execute(script.resolve(), smoke=args.smoke)
        print(f"{target}: executed in {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
