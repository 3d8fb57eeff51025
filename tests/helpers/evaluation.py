"""A linear-Gaussian model with a closed-form ``log p(x)`` and an imperfect guide, and the
two-sided check of an importance estimate of ``log p(x)`` against it (both backends).

Per datapoint: ``z ~ N(MU, 1)``, ``x | z ~ N(W z, SIGMA)``, so ``p(x) = N(W MU, sqrt(W² + SIGMA²))``
and the posterior is ``N((MU + W x / SIGMA²) / P, 1 / sqrt(P))``, ``P = 1 + W² / SIGMA²``
(sd 0.47 here). The guide ``q(z | x) = N(GUIDE_SLOPE x + GUIDE_SHIFT, GUIDE_SCALE)`` is wider
than the posterior, so the importance weights are bounded, and off its mean, so that
``KL(q || p(z | x)) >= 0.41`` nats: the mean of the log-weights (an ELBO) lies measurably
below ``log p(x)``, and only their log-mean-exp comes close to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType

import numpy as np
from scipy import stats

MU, W, SIGMA = 0.7, 1.5, 0.8
GUIDE_SLOPE, GUIDE_SHIFT, GUIDE_SCALE = 0.4, 0.3, 0.8
#: eight datapoints, from 1.8 sd below to 1.2 sd above the mean of p(x) = N(1.05, 1.7)
DATA = np.linspace(-2.0, 3.0, 8)
NUM_PARTICLES, CHUNK_SIZE = 20_000, 5_000  # four chunks: the running log-sum-exp is exercised


def linear_gaussian(ppl: ModuleType, dist: ModuleType) -> tuple[Callable, Callable]:
    """The model and the imperfect guide, written with ``ppl`` (``pyro`` or ``numpyro``) and
    its ``distributions``."""

    def model(x):
        with ppl.plate("data", len(x)):
            z = ppl.sample("z", dist.Normal(MU, 1.0))
            ppl.sample("x", dist.Normal(W * z, SIGMA), obs=x)

    def guide(x):
        with ppl.plate("data", len(x)):
            ppl.sample("z", dist.Normal(GUIDE_SLOPE * x + GUIDE_SHIFT, GUIDE_SCALE))

    return model, guide


def exact_log_marginal(x: np.ndarray) -> np.ndarray:
    """``log p(x)`` per datapoint, float64."""
    return stats.norm.logpdf(x, W * MU, math.sqrt(W**2 + SIGMA**2))


def assert_two_sided_agreement(log_w: np.ndarray, estimate: np.ndarray, z: float = 5.0) -> None:
    """``estimate`` (``K`` particles per datapoint) lies within ``z`` standard errors of
    the exact ``log p(DATA)``, on either side.

    ``log_w`` are ``K`` log-weights per datapoint drawn independently of ``estimate``; they
    give its delta-method standard error ``se = sd(w) / (mean(w) sqrt(K))`` and its bias
    ``−se² / 2`` (``E[log mean w] ≈ log p(x) − Var(w) / (2 K p(x)²)``). Before the check, the
    test shows that it can fail: the mean of the same log-weights (the ELBO, what a
    mean-instead-of-log-mean-exp estimator returns) lies more than ``4 z`` standard errors
    below ``log p(x)``.
    """
    exact = exact_log_marginal(DATA)
    log_w = np.asarray(log_w, dtype=np.float64)
    assert log_w.shape == (NUM_PARTICLES, len(DATA))
    w = np.exp(log_w - log_w.max(axis=0))
    se = w.std(axis=0, ddof=1) / w.mean(axis=0) / math.sqrt(NUM_PARTICLES)
    assert np.all(se < 0.02), se  # the weights are light-tailed: a sharp check
    elbo = log_w.mean(axis=0)
    assert np.all(exact - elbo > 4 * z * se), (exact - elbo, se)
    estimate = np.asarray(estimate, dtype=np.float64)
    assert estimate.shape == exact.shape
    error = estimate - (exact - se**2 / 2)
    assert np.all(np.abs(error) < z * se), (error / se, estimate, exact)
