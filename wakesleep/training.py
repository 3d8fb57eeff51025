"""The training loop's policies, shared by both trainers (``python -m {backend} train``).

- :func:`learning_rate`: Adam's step size falls exponentially from ``--lr`` to
  ``--lr × --lr-decay`` over the run.
- :func:`selection_steps` and :func:`best_restart`: ``--restarts R`` trains ``R`` machines
  from different random starts for the first tenth of the run and continues the one whose
  training loss is lowest. Wake-sleep on small, symmetric problems (the bars of Hinton et al.
  1995) often settles in a local optimum that depends on the start, and the training loss
  tells the runs apart early (benchmarks/results/training.md). Only training data are used,
  as with scikit-learn's ``n_init``.
- :func:`is_checkpoint_step`: when the checkpoint is written.
- :class:`CtrlC` and :class:`Interrupted`: Ctrl-C stops a run where it can stop cleanly,
  with a checkpoint to resume from.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import numpy as np

__all__ = [
    "IMPORTANCE_TRAIN_IMAGES",
    "MIN_CHECKPOINT_INTERVAL",
    "CtrlC",
    "Interrupted",
    "best_restart",
    "is_checkpoint_step",
    "learning_rate",
    "selection_steps",
    "train_nll_images",
]

#: Importance estimates of the training NLL (``nll_method`` ``"importance-5000"``) score the
#: first this many training images: 5,000 particles per image make the estimate costly,
#: and the training NLL is a diagnostic. Exact NLLs and the test NLL use every image.
IMPORTANCE_TRAIN_IMAGES = 1_000


def train_nll_images(train_images, exact: bool):
    """The training images whose NLL a trainer reports: all when ``exact``, else the first
    :data:`IMPORTANCE_TRAIN_IMAGES` (any array that slices: NumPy, torch, JAX)."""
    return train_images if exact else train_images[:IMPORTANCE_TRAIN_IMAGES]


#: A trainer writes its checkpoint every ``max(MIN_CHECKPOINT_INTERVAL, steps // 10)`` steps
#: and after the last one (not during the selection of ``--restarts``).
MIN_CHECKPOINT_INTERVAL = 100


def learning_rate(lr: float, lr_decay: float, steps: int, step):
    """``lr * lr_decay ** (step / steps)``: the learning rate of step ``step`` (from 0).

    ``step`` may be a Python number or an array (Optax passes its step count); the same
    schedule drives both backends.
    """
    return lr * lr_decay ** (step / steps)


def is_checkpoint_step(done: int, steps: int) -> bool:
    """Whether a trainer writes its checkpoint once ``done`` of its ``steps`` steps are done."""
    return done % max(MIN_CHECKPOINT_INTERVAL, steps // 10) == 0 or done == steps


def selection_steps(steps: int, restarts: int) -> int:
    """Steps every one of ``restarts`` candidates trains before the best is kept (0: none)."""
    return 0 if restarts <= 1 else max(1, steps // 10)


def best_restart(curves: np.ndarray) -> int:
    """The candidate whose mean training loss over the last fifth of its curve is lowest.

    :param curves: ``(restarts, selection_steps)`` training losses per datapoint.
    """
    curves = np.asarray(curves, dtype=np.float64)
    if curves.ndim != 2 or curves.shape[1] == 0:
        raise ValueError(f"curves must have shape (restarts, steps >= 1), got {curves.shape}.")
    last = max(1, curves.shape[1] // 5)
    return int(np.argmin(curves[:, -last:].mean(axis=1)))


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C that a trainer acted on where its run could stop cleanly.

    :param step: the step of the checkpoint written on the way out; ``None`` when none was
        (the ``--restarts`` candidates were training) or in the evaluation.
    :param evaluating: the training had finished and its final checkpoint was written; the
        evaluation that follows was stopped.
    """

    def __init__(self, step: int | None = None, *, evaluating: bool = False) -> None:
        super().__init__(step, evaluating)
        self.step = step
        self.evaluating = evaluating


class CtrlC:
    """``with CtrlC() as ctrl_c:``: a Ctrl-C (SIGINT) sets ``ctrl_c.pressed`` instead of raising.

    Python raises ``KeyboardInterrupt`` between any two bytecodes: in the middle of an
    optimiser update (a checkpoint of half-updated parameters would not resume exactly),
    of a checkpoint being written, or while JAX still computes asynchronously into buffers
    that the unwinding frees (a crash was once seen). Within the block a trainer instead
    looks at ``pressed`` between steps and between the stages of its evaluation and stops
    there with :class:`Interrupted`. A second Ctrl-C raises ``KeyboardInterrupt`` at once,
    for a run that does not reach such a point soon enough.

    Outside the main thread, where signal handlers cannot be set, and where SIGINT is
    ignored (a job started with ``nohup``), nothing changes.
    """

    def __init__(self) -> None:
        self.pressed = False
        self._restore: object = None  # the handler to put back on leaving

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def check(self, step: int | None = None, *, evaluating: bool = False) -> None:
        """Raise :class:`Interrupted` with these arguments if Ctrl-C was pressed."""
        if self.pressed:
            raise Interrupted(step, evaluating=evaluating)

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN:
                signal.signal(signal.SIGINT, self._handle)
                # None: a handler set outside Python; the default is the nearest to it
                self._restore = signal.SIG_DFL if previous is None else previous
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._restore is not None:
            signal.signal(signal.SIGINT, self._restore)
            self._restore = None
