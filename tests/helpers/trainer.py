"""Helpers of both trainers' tests: a real Ctrl-C at a chosen point, and the line it leaves."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest


def press_ctrl_c_after_first_call(
    monkeypatch: pytest.MonkeyPatch, module: ModuleType, name: str
) -> None:
    """Press Ctrl-C (a real SIGINT) once, as the function ``name`` of the trainer's ``module``
    (e.g. :mod:`wakesleep.trainer.loop`) first returns."""
    function = getattr(module, name)
    calls = []

    def then_ctrl_c(*args, **kwargs):
        result = function(*args, **kwargs)
        if not calls:
            signal.raise_signal(signal.SIGINT)
        calls.append(args)
        return result

    monkeypatch.setattr(module, name, then_ctrl_c)


def interrupted(capsys: pytest.CaptureFixture, run: Callable, out: Path, *extra: str) -> str:
    """Run ``run(out, *extra)`` until a Ctrl-C; the one line it printed."""
    with pytest.raises(SystemExit) as info:
        run(out, *extra)
    assert info.value.code == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.splitlines()[-1]


def ctrl_c_after_first_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a trainer's run stop like a Ctrl-C just after its checkpoint at step 5.

    Checkpoints fall every 5 steps (``wakesleep.trainer.schedule.MIN_CHECKPOINT_INTERVAL``);
    the first one is written, then ``KeyboardInterrupt`` is raised. ``monkeypatch.undo()``
    restores the trainer.
    """
    from wakesleep.trainer import loop, schedule

    monkeypatch.setattr(schedule, "MIN_CHECKPOINT_INTERVAL", 5)
    save = loop.save_checkpoint

    def save_then_ctrl_c(*args):
        save(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_ctrl_c)
