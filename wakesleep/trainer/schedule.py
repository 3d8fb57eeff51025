"""The training schedule, shared by both trainers (``python -m {backend} train``).

- :func:`objective`: ``--algorithm`` as one of a backend's losses; :func:`keeps_chains`:
  whether it keeps per-image Markov chains (``jsa``), which changes how mini-batches are
  drawn and passed.
- :func:`learning_rate`: Adam's step size falls exponentially from ``--lr`` to
  ``--lr × --lr-decay`` over the run.
- :func:`selection_steps` and :func:`best_restart`: ``--restarts R`` trains ``R`` machines
  from different random starts for the first tenth of the run and continues the one whose
  training loss is lowest. Wake-sleep on small, symmetric problems (the bars of Hinton et al.
  1995) often settles in a local optimum that depends on the start, and the training loss
  tells the runs apart early (benchmarks/results/training.md). Only training data are used,
  as with scikit-learn's ``n_init``.
- :func:`is_checkpoint_step`: when the checkpoint is written.

Ctrl-C and the checkpoint's rules are :mod:`wakesleep.trainer.runs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from wakesleep.contract import Sparsity

__all__ = [
    "MIN_CHECKPOINT_INTERVAL",
    "best_restart",
    "is_checkpoint_step",
    "keeps_chains",
    "learning_rate",
    "objective",
    "selection_steps",
]


def objective(
    algorithm: str,
    particles: int,
    losses: ModuleType,
    sparsity: Mapping[str, float] | None = None,
    compiled: bool = False,
) -> Any:
    """The loss of ``--algorithm`` from a backend's ``losses`` module (same names in both).

    ``compiled`` takes the compiled twin (``JitReweightedWakeSleep``, ...) that the Pyro
    backend has; NumPyro compiles its whole step instead.

    ``sparsity`` (``{"target": ..., "weight": ...}`` of ``--sparsity`` and
    ``--sparsity-weight``, :func:`wakesleep.trainer.arguments.sparsity_settings`) adds the
    penalty of sparse wake-sleep, :class:`wakesleep.contract.Sparsity`, on every hidden
    layer, to any of the three; ``None`` adds none.

    ``rws`` is reweighted wake-sleep with the wake-phase update of the guide only
    (``insomnia=1``, Bornschein & Bengio 2015); ``ws`` is classic wake-sleep; ``jsa`` is
    joint stochastic approximation (Xu & Ou 2016), which keeps one Markov chain per
    training image and so needs the mini-batch's rows (:func:`keeps_chains`).
    """
    penalty = None if sparsity is None else Sparsity(sparsity["target"], sparsity["weight"])
    prefix = "Jit" if compiled else ""
    if algorithm == "rws":
        return getattr(losses, prefix + "ReweightedWakeSleep")(
            num_particles=particles, insomnia=1.0, sparsity=penalty
        )
    if algorithm == "jsa":
        return getattr(losses, prefix + "JointStochasticApproximation")(
            num_particles=particles, sparsity=penalty
        )
    if algorithm == "ws":
        return getattr(losses, prefix + "WakeSleep")(num_particles=particles, sparsity=penalty)
    raise ValueError(f"--algorithm must be one of ws, rws, jsa, got {algorithm!r}.")


def keeps_chains(algorithm: str) -> bool:
    """Whether ``--algorithm`` keeps a Markov chain per training image (``jsa``).

    Its trainer then passes ``index=`` (the mini-batch's rows in the training set) to the
    machine's model and guide, and draws each mini-batch without replacement, so that no
    image appears twice in one step (two copies would advance one chain twice from the same
    state). ``ws`` and ``rws`` draw with replacement and pass no ``index``, as before.
    """
    return algorithm == "jsa"


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
