"""Shared test set-up: a clean Pyro parameter store around every test."""

from __future__ import annotations

import importlib.util

import pytest


@pytest.fixture(autouse=True)
def _fresh_pyro_param_store():
    if importlib.util.find_spec("pyro") is None:
        yield
        return
    import pyro

    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
