"""Shared test set-up: a clean Pyro parameter store around every test; trainer helpers."""

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


def ctrl_c_after_first_checkpoint(monkeypatch: pytest.MonkeyPatch, train_module) -> None:
    """Make a trainer's run stop like a Ctrl-C just after its checkpoint at step 5.

    Checkpoints fall every 5 steps (``wakesleep.training.MIN_CHECKPOINT_INTERVAL``); the
    first one is written, then ``KeyboardInterrupt`` is raised. ``monkeypatch.undo()``
    restores the trainer.
    """
    import wakesleep.training as training

    monkeypatch.setattr(training, "MIN_CHECKPOINT_INTERVAL", 5)
    save = train_module._save_checkpoint

    def save_then_ctrl_c(*args):
        save(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_save_checkpoint", save_then_ctrl_c)
