"""What a backend gives the shared trainer (:mod:`wakesleep.trainer.loop`).

The trainer's policy (data, schedule, restarts, checkpoints, resume, Ctrl-C, evaluation,
outputs) is written once against :class:`TrainerBackend`; ``pyro_wakesleep.train`` and
``numpyro_wakesleep.train`` each implement it for their library. A backend holds one
Helmholtz machine with its optimiser and objective, and every random-number generator the
run draws from. Arrays cross the interface as NumPy arrays.

Randomness: NumPyro draws from explicit keys, Pyro from global generators. The evaluation
asks for keys (:meth:`TrainerBackend.evaluation_key`, :meth:`TrainerBackend.split_key`) and
hands one to every random computation; a backend with global generators returns ``None``
for every key, and the order of the computations keeps its draws reproducible.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .datasets import Dataset

__all__ = ["GenerativeWeights", "Key", "TrainerBackend"]

#: A random key (NumPyro), or ``None`` where the backend draws from global generators (Pyro).
Key = Any
#: ``(top_logits, [(weight, bias), ...])`` in float64, the format of :mod:`wakesleep.trainer.exact`.
GenerativeWeights = tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]


class TrainerBackend(Protocol):
    """One backend's side of ``python -m {name} train``."""

    #: the module name, ``"pyro_wakesleep"`` or ``"numpyro_wakesleep"``
    name: str
    #: the checkpoint's file name in ``--out``
    checkpoint: str
    #: checkpoint file names of earlier releases, refused (never unpickled)
    legacy_checkpoints: tuple[str, ...]
    #: data-parallel workers (``docs/design.md`` §11): torch.distributed ranks (Pyro),
    #: devices × processes (NumPyro); 1 for one process on one device
    world_size: int
    #: processes that train together (each runs the whole trainer, in lock step)
    processes: int
    #: whether this process writes the outputs and the checkpoint (rank or process 0)
    is_main: bool

    def any_process(self, flag: bool) -> bool:
        """Whether ``flag`` holds in any of the :attr:`processes`: a collective, which every
        process calls at the same step; ``flag`` itself in one process."""
        ...

    def on_device(self, device: str) -> AbstractContextManager[None]:
        """The block in which the run computes on ``--device``; ``SystemExit`` with a line
        that says what to do when that device is absent."""
        ...

    # -- training ---------------------------------------------------------------------------
    def build(self, args: argparse.Namespace, data: Dataset) -> None:
        """A machine, optimiser and objective for ``args``, generators seeded by ``--seed``;
        the machine's parameters are drawn by :meth:`start` or set by :meth:`restore`."""
        ...

    def start(self) -> None:
        """Draw the parameters of the machine (a run with one start)."""
        ...

    def train_candidates(
        self, restarts: int, steps: int, after_step: Callable[[int], None]
    ) -> np.ndarray:
        """Train ``restarts`` machines from their own starts for ``steps`` steps each.

        :param after_step: called after every step with the number of candidate steps it
            did; it may raise to stop the run (after :meth:`wait`).
        :returns: the losses per datapoint, float64 of shape ``(restarts, steps)``.
        """
        ...

    def keep_candidate(self, index: int) -> None:
        """Continue candidate ``index`` of :meth:`train_candidates`, with its generators."""
        ...

    def step(self) -> None:
        """One optimiser step on a mini-batch drawn from the training images."""
        ...

    def take_losses(self) -> list[float]:
        """The losses per datapoint of the steps since the last call; waits for them."""
        ...

    def wait(self) -> None:
        """Return once nothing is left computing (asynchronous devices)."""
        ...

    # -- checkpoints ------------------------------------------------------------------------
    def write_checkpoint(self, path: Path, meta: Mapping[str, Any]) -> None:
        """Write ``meta`` (JSON values) and the training state to ``path`` atomically.

        Called in every process at the same step (the state may be gathered from all); only
        the :attr:`is_main` one writes."""
        ...

    def read_checkpoint(self, path: Path) -> tuple[dict[str, Any], Any]:
        """``(meta, state)`` of :meth:`write_checkpoint`, loaded without running code from
        the file; :class:`~wakesleep.trainer.runs.UnreadableCheckpoint` otherwise."""
        ...

    def restore(self, state: Any) -> None:
        """Continue from the ``state`` of :meth:`read_checkpoint` (after :meth:`build`)."""
        ...

    # -- the trained machine ----------------------------------------------------------------
    def generative_weights(self) -> GenerativeWeights:
        """The generative net, for exact enumeration."""
        ...

    def evaluation_key(self) -> Key:
        """The key of the evaluation, drawn in :meth:`build`."""
        ...

    def split_key(self, key: Key, num: int) -> list[Key]:
        """``num`` independent keys from ``key``."""
        ...

    def log_likelihood_sum(
        self, images: np.ndarray, key: Key, *, num_particles: int, chunk_size: int
    ) -> float:
        """``Σ_i log p(x_i)``, each an importance estimate with the guide as proposal."""
        ...

    def log_weights(
        self, images: np.ndarray, key: Key, *, num_particles: int, chunk_size: int
    ) -> np.ndarray:
        """The guide's importance log-weights, float64 of shape ``(num_particles, len(images))``."""
        ...

    def visible_scale(self) -> np.ndarray | None:
        """The Gaussian visible units' standard deviations (float64, ``(D,)``) for
        :func:`~wakesleep.trainer.exact.helmholtz_log_marginal`; ``None`` for Bernoulli ones."""
        ...

    def features(self, images: np.ndarray) -> np.ndarray:
        """The machine's ``features(images)`` (``docs/design.md`` §9): the recognition net's
        probabilities that the hidden units are on, every layer, bottom first, float64
        ``(N, sum(layers))``."""
        ...

    def sample(self, num_samples: int, key: Key) -> np.ndarray:
        """``num_samples`` datapoints from the generative model, shape ``(S, D)``: 0/1 images
        for Bernoulli visible units, floats for Gaussian ones."""
        ...

    def mean_activation(self, images: np.ndarray, key: Key) -> float:
        """The guide's probability that a hidden unit is on, averaged over the images and
        over the units of all hidden layers (each unit counts once); the first layer's
        probabilities are ``sigmoid`` of the recognition net on the images, each upper
        layer's those given one guide draw of the layer below. Changes no random state
        that the other outputs draw from."""
        ...

    def acceptance_rate(self, rows: np.ndarray, key: Key) -> float:
        """``--algorithm jsa`` only: one transition sweep of the independence sampler from
        the chains of the training images ``rows`` (indices), with ``--particles`` fresh
        guide proposals each, leaving the run's chains unchanged; the fraction of the
        ``len(rows) × K`` moves that were accepted."""
        ...
