"""The trained machine's report: likelihoods, samples, diagnostics (``docs/design.md`` §3).

The negative log-likelihood per image is exact (enumeration, :mod:`wakesleep.trainer.exact`)
when the hidden layers are small enough, else an importance estimate with
:data:`IMPORTANCE_PARTICLES` guide draws per image (``nll_method`` ``"importance-5000"``),
computed :data:`EVALUATION_BATCH` images at a time so that a Ctrl-C waits for one batch at
most. The guide's PSIS ``k̂`` (``diagnostics.json``, ``khat.png``) uses
:data:`DIAGNOSTIC_SAMPLES` draws on at most :data:`DIAGNOSTIC_IMAGES` test images.

``--algorithm jsa`` adds ``acceptance_rate`` to ``metrics.json``
(:func:`chain_acceptance_rate`): the fraction of the independence sampler's moves that the
trained machine accepts, from every training image's chain with ``--particles`` fresh
proposals of the guide (the run's chains themselves stay as trained). It is near 1 when
the guide is close to the exact posterior and near 0 when chains stick.

Every run adds ``mean_activation`` (:func:`guide_mean_activation`): the trained guide's
probability that a hidden unit is on, averaged over the units of all hidden layers and
over every training image, the quantity that ``--sparsity TARGET`` pulls towards
``TARGET``. The first layer's probabilities are ``sigmoid`` of the recognition net on the
image (deterministic); an upper layer's are those given one guide draw of the layers
below. ``sparsity`` records ``--sparsity`` and ``--sparsity-weight`` (``null`` without).
``visible`` says whether the NLLs are of binary data (``"bernoulli"``: log-probabilities) or
real-valued data (``"gaussian"``: log-densities, nats per datapoint).

Labelled data sets (``digits``, ``mnist5k``, ``vowels``) also get ``features.json``
(:func:`write_features`): the linear probe of :mod:`wakesleep.probe` on the recognition
net's features (``machine.features``, a deterministic mean-field pass) against the raw data
and PCA of as many components, with each hidden layer's mean activation under that pass.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wakesleep.probe import feature_report

from .backend import Key, TrainerBackend
from .datasets import Dataset
from .exact import bars_kl_bits, helmholtz_enumerable, helmholtz_log_marginal
from .outputs import (
    run_metrics,
    save_curve,
    save_diagnostics,
    save_samples,
    save_vector_samples,
    write_json,
    write_metrics,
)
from .runs import CtrlC
from .schedule import keeps_chains

__all__ = [
    "DIAGNOSTIC_IMAGES",
    "DIAGNOSTIC_SAMPLES",
    "EVALUATION_BATCH",
    "IMPORTANCE_CHUNK_SIZE",
    "IMPORTANCE_PARTICLES",
    "IMPORTANCE_TRAIN_IMAGES",
    "chain_acceptance_rate",
    "evaluate",
    "guide_mean_activation",
    "mean_nll",
    "nll_method",
    "train_nll_images",
    "write_features",
]

#: Guide draws per image of an importance estimate of ``log p(x)``.
IMPORTANCE_PARTICLES = 5_000
#: Guide draws computed at once: bounds the memory of an estimate.
IMPORTANCE_CHUNK_SIZE = 250
#: Images per importance estimate; the evaluation acts on a Ctrl-C between batches.
EVALUATION_BATCH = 100
#: Importance estimates of the training NLL score the first this many training images:
#: 5,000 particles per image make the estimate costly, and the training NLL is a
#: diagnostic. Exact NLLs and the test NLL use every image.
IMPORTANCE_TRAIN_IMAGES = 1_000
#: The guide's k̂ diagnostics use this many draws on at most this many test images.
DIAGNOSTIC_SAMPLES, DIAGNOSTIC_IMAGES = 1_000, 500


def nll_method(exact: bool) -> str:
    """``metrics.json``'s ``nll_method``: ``"exact"`` or ``"importance-<particles>"``."""
    return "exact" if exact else f"importance-{IMPORTANCE_PARTICLES}"


def train_nll_images(train_images, exact: bool):
    """The training images whose NLL a trainer reports: all when ``exact``, else the first
    :data:`IMPORTANCE_TRAIN_IMAGES` (any array that slices: NumPy, torch, JAX)."""
    return train_images if exact else train_images[:IMPORTANCE_TRAIN_IMAGES]


def mean_nll(
    backend: TrainerBackend, images: np.ndarray, exact: bool, key: Key, ctrl_c: CtrlC
) -> float:
    """Mean negative log-likelihood per datapoint, nats (of a density for Gaussian visible
    units); a Ctrl-C stops it between batches."""
    if exact:
        log_px = helmholtz_log_marginal(
            images, *backend.generative_weights(), visible_scale=backend.visible_scale()
        )
        return float(-log_px.mean())
    starts = range(0, len(images), EVALUATION_BATCH)
    total = 0.0
    for batch_key, start in zip(backend.split_key(key, len(starts)), starts, strict=True):
        ctrl_c.check(evaluating=True)  # the previous batch is fetched: nothing computing
        total += backend.log_likelihood_sum(
            images[start : start + EVALUATION_BATCH], batch_key,
            num_particles=IMPORTANCE_PARTICLES, chunk_size=IMPORTANCE_CHUNK_SIZE,
        )  # fmt: skip
    return -total / len(images)


def chain_acceptance_rate(
    backend: TrainerBackend, num_train: int, key: Key, ctrl_c: CtrlC
) -> float:
    """``jsa``: the mean over every training image's chain of the fraction of ``K`` moves
    accepted in one transition sweep; a Ctrl-C stops it between batches."""
    starts = range(0, num_train, EVALUATION_BATCH)
    accepted = 0.0
    for batch_key, start in zip(backend.split_key(key, len(starts)), starts, strict=True):
        ctrl_c.check(evaluating=True)
        rows = np.arange(start, min(start + EVALUATION_BATCH, num_train))
        accepted += backend.acceptance_rate(rows, batch_key) * len(rows)
    return accepted / num_train


def guide_mean_activation(
    backend: TrainerBackend, images: np.ndarray, key: Key, ctrl_c: CtrlC
) -> float:
    """The guide's mean probability that a hidden unit is on, over all hidden units and
    ``images``, :data:`EVALUATION_BATCH` images at a time; a Ctrl-C stops it between batches."""
    starts = range(0, len(images), EVALUATION_BATCH)
    total = 0.0
    for batch_key, start in zip(backend.split_key(key, len(starts)), starts, strict=True):
        ctrl_c.check(evaluating=True)
        batch = images[start : start + EVALUATION_BATCH]
        total += backend.mean_activation(batch, batch_key) * len(batch)
    return total / len(images)


def write_diagnostics(backend: TrainerBackend, images: np.ndarray, out: Path, key: Key) -> None:
    """``diagnostics.json`` and ``khat.png``: PSIS k̂ of the guide on test images."""
    try:
        from wakesleep.inference_data import psis_log_weights
    except ImportError as error:  # ArviZ is an optional extra
        print(f"diagnostics skipped: {error}")
        return
    log_weights = backend.log_weights(
        images[:DIAGNOSTIC_IMAGES], key,
        num_particles=DIAGNOSTIC_SAMPLES, chunk_size=IMPORTANCE_CHUNK_SIZE,
    )  # fmt: skip
    _, pareto_k = psis_log_weights(log_weights)
    save_diagnostics(out, pareto_k, DIAGNOSTIC_SAMPLES)


def evaluate(
    backend: TrainerBackend,
    args: argparse.Namespace,
    data: Dataset,
    out: Path,
    seconds: float,
    curve: Sequence[float],
    ctrl_c: CtrlC,
) -> dict[str, Any]:
    """Score the trained machine and write every output but the checkpoint; the metrics.

    Each stage fetches its result before the next, so a Ctrl-C between stages finds the
    device idle and stops with :class:`~wakesleep.trainer.runs.Interrupted`
    (``evaluating=True``).
    """
    chains = keeps_chains(args.algorithm)
    # jsa draws a fifth key, for its acceptance rate; ws and rws the four they always drew
    keys = backend.split_key(backend.evaluation_key(), 5 if chains else 4)
    train_key, test_key, sample_key, diagnostics_key = keys[:4]
    exact = helmholtz_enumerable(args.layers)
    bars_kl = None
    if args.dataset == "bars" and exact:  # exact KL needs the hidden layers enumerated
        bars_kl = float(bars_kl_bits(*backend.generative_weights()))
    train_nll = mean_nll(backend, train_nll_images(data.train, exact), exact, train_key, ctrl_c)
    test_nll = mean_nll(backend, data.test, exact, test_key, ctrl_c)
    metrics = run_metrics(
        backend.name, args, seconds, train_nll, test_nll, nll_method(exact), bars_kl,
        world_size=backend.world_size,
    )  # fmt: skip
    # its own key, split from the diagnostics' key: the draws of the other outputs stay
    # those of earlier releases
    activation_key = backend.split_key(diagnostics_key, 1)[0]
    metrics["mean_activation"] = guide_mean_activation(backend, data.train, activation_key, ctrl_c)
    if chains:
        metrics["acceptance_rate"] = chain_acceptance_rate(
            backend, len(data.train), keys[4], ctrl_c
        )
    metrics["visible"] = data.visible
    ctrl_c.check(evaluating=True)
    write_metrics(out, metrics)
    samples = backend.sample(args.num_samples, sample_key)
    if data.image_shape is None:
        save_vector_samples(out, samples, data.train)
    else:
        save_samples(out, samples, data.image_shape)
    save_curve(out, np.arange(1, len(curve) + 1), curve, "loss (nats per datapoint)")
    ctrl_c.check(evaluating=True)
    write_diagnostics(backend, data.test, out, diagnostics_key)
    if data.labelled:
        ctrl_c.check(evaluating=True)
        write_features(backend, args, data, out)
    return metrics


def write_features(
    backend: TrainerBackend, args: argparse.Namespace, data: Dataset, out: Path
) -> dict[str, Any]:
    """``features.json`` (``docs/design.md`` §9): the linear probe's test accuracy on the
    machine's features against the raw data and PCA of the same size, the mean activation
    of each hidden layer and the number of features (:func:`wakesleep.probe.feature_report`).
    """
    report = feature_report(
        data, backend.features(data.train), backend.features(data.test), args.layers
    )
    write_json(out / "features.json", report)
    return report
