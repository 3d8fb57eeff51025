"""The documentation site builds without a warning and holds what it promises.

Runs Sphinx exactly as ``scripts/docs.sh`` does (``-W --keep-going``, offline, notebooks not
executed), but into a temporary folder, then checks the API pages of both backends and the
shared package, and one page per ``tutorials/*.ipynb`` (zero notebooks is fine).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    html = out / "html"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-E",  # read every source again: docstrings may have changed
            "-b",
            "html",
            "-d",
            str(out / "doctrees"),
            str(ROOT / "docs"),
            str(html),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = build.stdout + build.stderr
    problems = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]
    assert build.returncode == 0 and not problems, "Sphinx build failed:\n" + "\n".join(
        problems or log.splitlines()[-40:]
    )
    return html


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["pyro_wakesleep", "numpyro_wakesleep"])
def test_api_pages_of_both_backends(site: Path, backend: str) -> None:
    page = (site / "api" / f"{backend}.html").read_text(encoding="utf-8")
    for name in (
        "ReweightedWakeSleep",
        "WakeSleep",
        "diagnostics.to_inference_data",
        "evaluation.importance_log_likelihood",
        "helmholtz.HelmholtzMachine",
    ):
        assert f'id="{backend}.{name}"' in page, f"{backend}.{name} is not documented"
    for error in ("DreamRoutingError", "NonFiniteDataError", "NonFiniteLossWarning"):
        assert error in page
    if backend == "numpyro_wakesleep":
        assert 'id="numpyro_wakesleep.svi.AlternatingSVI"' in page


@pytest.mark.slow
def test_shared_code_and_design_pages(site: Path) -> None:
    page = (site / "api" / "wakesleep.html").read_text(encoding="utf-8")
    for name in (
        "wakesleep.contract.check_objective_arguments",
        "wakesleep.inference_data.build_inference_data",
        "wakesleep.trainer.backend.TrainerBackend",
    ):
        assert f'id="{name}"' in page, f"{name} is not documented"
    assert (site / "design.html").is_file()
    index = (site / "index.html").read_text(encoding="utf-8")
    for link in ("design.html", "tutorials.html", "api/index.html"):
        assert link in index


@pytest.mark.slow
def test_one_page_per_tutorial_notebook(site: Path) -> None:
    notebooks = sorted(path.stem for path in (ROOT / "tutorials").glob("*.ipynb"))
    pages = site / "_generated" / "tutorials"
    built = sorted(path.stem for path in pages.glob("*.html")) if pages.is_dir() else []
    assert built == notebooks  # no page for a tutorials/*.py source or a checkpoint
    contents = (site / "tutorials.html").read_text(encoding="utf-8")
    for stem in notebooks:
        assert f"_generated/tutorials/{stem}.html" in contents, f"{stem} not in the toctree"
