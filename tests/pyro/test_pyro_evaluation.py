"""Log-likelihood evaluation (Pyro): importance estimate against exact enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers.evaluation import (
    CHUNK_SIZE,
    DATA,
    NUM_PARTICLES,
    assert_two_sided_agreement,
    linear_gaussian,
)

from pyro_wakesleep.evaluation import importance_log_likelihood, importance_log_weights
from pyro_wakesleep.helmholtz import HelmholtzMachine
from wakesleep.trainer.exact import helmholtz_log_marginal


def test_importance_estimate_agrees_with_exact_enumeration():
    # 3-2 hidden units above 6 pixels with large generative weights: a wrong layer order or
    # weight layout in generative_weights would move log p(x) far beyond the MC error.
    pyro.set_rng_seed(0)
    machine = HelmholtzMachine(6, (3, 2))
    with torch.no_grad():
        for layer in machine.generative.layers:
            layer.weight.normal_(0.0, 1.5)
            layer.bias.normal_(0.0, 0.5)
    images = np.array(list(itertools.product([0, 1], repeat=6)), dtype=np.float64)[::5]
    exact = helmholtz_log_marginal(images, *machine.generative_weights())
    x = torch.as_tensor(images, dtype=torch.float32)
    num_particles = 40_000
    log_w = importance_log_weights(
        machine.model, machine.guide, x, num_particles=num_particles, chunk_size=10_000
    ).double()
    assert log_w.shape == (num_particles, len(images))
    w = torch.exp(log_w - log_w.max(0).values)
    estimate = (torch.log(w.mean(0)) + log_w.max(0).values).numpy()
    relative_se = (w.std(0) / w.mean(0) / math.sqrt(num_particles)).numpy()
    assert np.all(relative_se < 0.05), relative_se
    # log of a mean of weights: within 5 relative standard errors of the exact value, and
    # never above it by more (it is a stochastic lower bound: E[estimate] <= log p(x))
    assert np.all(np.abs(estimate - exact) < 5 * relative_se + 1e-4)
    pyro.set_rng_seed(1)
    running = importance_log_likelihood(
        machine.model, machine.guide, x, num_particles=num_particles, chunk_size=10_000
    ).double()
    assert running.shape == (len(images),)
    assert np.all(running.numpy() - exact < 5 * relative_se + 1e-4)


@pytest.mark.usefixtures("one_torch_thread")
def test_importance_estimate_is_close_to_the_closed_form_on_both_sides():
    # A guide that is not the posterior: the mean of the log-weights (an ELBO) is >= 0.41
    # nats too low, the log-mean-exp within a few standard errors of log p(x) on either side.
    linear_gaussian_model, imperfect_guide = linear_gaussian(pyro, dist)
    x = torch.as_tensor(DATA, dtype=torch.float64)
    pyro.set_rng_seed(0)
    log_w = importance_log_weights(
        linear_gaussian_model, imperfect_guide, x,
        num_particles=NUM_PARTICLES, chunk_size=CHUNK_SIZE,
    )  # fmt: skip
    pyro.set_rng_seed(1)  # the estimate from draws independent of those of its error bar
    estimate = importance_log_likelihood(
        linear_gaussian_model, imperfect_guide, x,
        num_particles=NUM_PARTICLES, chunk_size=CHUNK_SIZE,
    )  # fmt: skip
    assert_two_sided_agreement(log_w.numpy(), estimate.numpy())


def test_every_chunk_scores_the_same_mini_batch():
    # Exact posterior as guide: every weight equals p(x_i), so the estimate is exact for the
    # mini-batch the first chunk drew; a chunk on another mini-batch would mix datapoints.
    data = torch.linspace(-2.0, 2.0, 40)
    seen: list[torch.Tensor] = []

    def model():
        with pyro.plate("data", 40, subsample_size=5) as index:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=data[index])

    def guide():
        with pyro.plate("data", 40, subsample_size=5) as index:
            seen.append(index.clone())
            pyro.sample("z", dist.Normal(data[index] / 2, math.sqrt(0.5)))

    pyro.set_rng_seed(3)
    estimate = importance_log_likelihood(model, guide, num_particles=12, chunk_size=4)
    assert len(seen) >= 3 and all(torch.equal(seen[0], s) for s in seen)  # 3 chunks (+ guess)
    exact = dist.Normal(0.0, math.sqrt(2.0)).log_prob(data[seen[0]])
    assert torch.allclose(estimate, exact, atol=1e-5)


def test_counts_are_validated():
    machine = HelmholtzMachine(4, (2,))
    with pytest.raises(ValueError, match="chunk_size"):
        importance_log_likelihood(machine.model, machine.guide, torch.zeros(3, 4), chunk_size=0)
