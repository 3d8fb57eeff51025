"""``python -m {backend} train``: the trainer, written once for both backends.

A run: parse the flags (:mod:`~wakesleep.trainer.arguments`), check the data and the
``--out`` folder (:mod:`~wakesleep.trainer.runs`), then train a Helmholtz machine through a
:class:`~wakesleep.trainer.backend.TrainerBackend`: from a checkpoint (``--resume``), from
the best of ``--restarts`` candidates, or from one start; then evaluate it and write the
outputs (:mod:`~wakesleep.trainer.evaluation`).

The checkpoint holds the step, the elapsed seconds, the curve and the run's settings,
plus the backend's parameters, optimiser state, every random-number generator and, for
``--algorithm jsa``, the per-image Markov chains, so ``--resume`` ends where an
uninterrupted run with the same seed ends. It is written every
:func:`~wakesleep.trainer.schedule.is_checkpoint_step`, and last before the evaluation, so
a Ctrl-C during the evaluation leaves a run that ``--resume`` evaluates again.

A Ctrl-C stops the run between two steps (:class:`~wakesleep.trainer.runs.CtrlC`), once
the device is idle; the run writes its checkpoint and exits with a line that says how to
resume.

Data-parallel runs (``docs/design.md`` §11) run this loop in every process, in lock step:
the backend shards each batch and averages the gradients; the main process alone prepares
``--out`` and writes the outputs; the checkpoint is written by the main process from a state
every process helps gather; a Ctrl-C takes effect at the next step where the processes
agree on it (every :data:`LOG_EVERY` steps and at checkpoints), so none waits for another
that has stopped.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import evaluation
from .arguments import parse_train_args
from .backend import TrainerBackend
from .datasets import Dataset
from .outputs import summary_line
from .runs import (
    CtrlC,
    Interrupted,
    UnreadableCheckpoint,
    check_resume,
    exit_on_interrupt,
    load_data,
    prepare_out_dir,
    run_settings,
    unreadable_checkpoint_message,
)
from .schedule import best_restart, is_checkpoint_step, selection_steps

__all__ = ["LOG_EVERY", "main", "save_checkpoint", "train"]

#: Losses are fetched from the device (and the progress bar updated) every this many steps.
LOG_EVERY = 50


def main(backend: TrainerBackend, argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """``python -m {backend.name} train ...``: train, write the outputs, print the metrics
    (the main process; the others return ``None``)."""
    args = parse_train_args(backend.name, argv)
    with exit_on_interrupt(args.out, backend.checkpoint):
        metrics = train(backend, args)
    if metrics is not None:
        print(summary_line(metrics))
    return metrics


def train(backend: TrainerBackend, args: argparse.Namespace) -> dict[str, Any] | None:
    """Run the job described by parsed, default-resolved ``args``; return the metrics (in
    the main process; ``None`` in the others of a data-parallel run, which evaluate nothing).

    A missing device and bad data exit before ``--out`` is created; a Ctrl-C raises
    :class:`~wakesleep.trainer.runs.Interrupted` where the run can stop cleanly.
    """
    with backend.on_device(args.device):
        data = load_data(args)
        with CtrlC() as ctrl_c:
            if backend.is_main:
                out = prepare_out_dir(
                    args.out, backend.checkpoint, args.resume, backend.legacy_checkpoints
                )
            else:  # the main process checks and creates it
                out = Path(args.out)
            return _train(backend, args, data, out, ctrl_c)


def _train(
    backend: TrainerBackend,
    args: argparse.Namespace,
    data: Dataset,
    out: Path,
    ctrl_c: CtrlC,
) -> dict[str, Any] | None:
    """The body of :func:`train`: start or resume, train, evaluate (the main process)."""
    backend.build(args, data)
    start_step, seconds, curve = 0, 0.0, []
    began = time.perf_counter()
    if args.resume:
        meta = _resume(backend, out, args)
        start_step, seconds, curve = meta["step"], meta["seconds"], list(meta["curve"])
    elif args.restarts > 1:
        curve = _select_start(backend, args, ctrl_c)
        start_step = selection_steps(args.steps, args.restarts)
    else:
        backend.start()
    _train_steps(backend, args, out, ctrl_c, start_step, curve, seconds, began)
    seconds += time.perf_counter() - began
    if not backend.is_main:
        return None
    return evaluation.evaluate(backend, args, data, out, seconds, curve, ctrl_c)


def _resume(backend: TrainerBackend, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Restore the checkpoint in ``out`` into ``backend``; its meta (step, seconds, curve)."""
    path = out / backend.checkpoint
    try:
        meta, state = backend.read_checkpoint(path)
    except UnreadableCheckpoint:
        raise SystemExit(unreadable_checkpoint_message(path)) from None
    check_resume(meta["run"], args)
    saved = meta["run"].get("world_size", 1)
    if saved != backend.world_size:
        raise SystemExit(
            f"error: --resume: the checkpoint was trained by {saved} data-parallel worker(s), "
            f"this run has {backend.world_size}. Resume with as many (torchrun "
            "--nproc_per_node, or --devices × processes), or start a new run."
        )
    backend.restore(state)
    return meta


def _select_start(backend: TrainerBackend, args: argparse.Namespace, ctrl_c: CtrlC) -> list[float]:
    """``--restarts``: train every candidate from its own start; the best one's curve.

    :func:`~wakesleep.trainer.schedule.best_restart` picks the candidate that the backend
    continues. No checkpoint is written meanwhile, so a Ctrl-C leaves nothing to resume.
    """
    steps = selection_steps(args.steps, args.restarts)
    with tqdm(total=steps * args.restarts, unit="step",
              desc=f"{backend.name} {args.algorithm} {args.dataset}, {args.restarts} starts",
              disable=not backend.is_main) as progress:  # fmt: skip

        def after_step(done: int) -> None:
            progress.update(done)
            if ctrl_c.pressed and backend.processes == 1:  # several: agreed on after selection
                backend.wait()  # nothing left computing as the run unwinds
                ctrl_c.check()

        curves = backend.train_candidates(args.restarts, steps, after_step)
    best = best_restart(curves)
    backend.keep_candidate(best)
    return [float(value) for value in curves[best]]


def _train_steps(
    backend: TrainerBackend,
    args: argparse.Namespace,
    out: Path,
    ctrl_c: CtrlC,
    start_step: int,
    curve: list[float],
    seconds: float,
    began: float,
) -> None:
    """Steps ``start_step`` to ``--steps``, their losses appended to ``curve``; checkpoints
    on schedule and on Ctrl-C. The run had trained ``seconds`` before ``began``."""
    # closed on the way out, so that a Ctrl-C's message is the last line on the terminal
    with tqdm(range(start_step, args.steps), initial=start_step, total=args.steps,
              desc=f"{backend.name} {args.algorithm} {args.dataset}", unit="step",
              disable=not backend.is_main) as progress:  # fmt: skip
        for step in progress:
            backend.step()
            if (step + 1) % LOG_EVERY == 0:
                curve.extend(backend.take_losses())
                progress.set_postfix(loss=f"{np.mean(curve[-LOG_EVERY:]):.3f}")
            stop = ctrl_c.pressed  # read once: a Ctrl-C from now on waits for the next step
            checkpoint = is_checkpoint_step(step + 1, args.steps)
            if backend.processes > 1:  # all stop at the same step, or none
                agreed = checkpoint or (step + 1) % LOG_EVERY == 0
                stop = backend.any_process(stop) if agreed else False
            if stop or checkpoint:
                curve.extend(backend.take_losses())  # the device is idle once it is saved
                meta = {
                    "step": step + 1,
                    "seconds": seconds + time.perf_counter() - began,
                    "curve": curve,
                    "run": {**run_settings(args), "world_size": backend.world_size},
                }
                save_checkpoint(backend, out, meta)
            if stop:
                raise Interrupted(step + 1)
    curve.extend(backend.take_losses())


def save_checkpoint(backend: TrainerBackend, out: Path, meta: dict[str, Any]) -> None:
    """Write the checkpoint of ``backend`` with ``meta`` into ``out``."""
    backend.write_checkpoint(out / backend.checkpoint, meta)
