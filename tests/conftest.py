"""Shared test set-up: a clean Pyro parameter store around every test, and fixtures."""

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


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module (``pytest.mark.usefixtures``), then as before.

    Small tensors gain nothing from threads, and on a busy machine their spin-waiting slows
    the tests several-fold.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def pyro_seed_0():
    """Pyro's generators seeded with 0 before the test (the param store is always cleared)."""
    import pyro

    pyro.set_rng_seed(0)
