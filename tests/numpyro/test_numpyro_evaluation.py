"""Log-likelihood evaluation (NumPyro): importance estimate against a closed form, two-sided.

(The Helmholtz machine against exact enumeration is in ``test_numpyro_train.py``.)
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from helpers.evaluation import (
    CHUNK_SIZE,
    DATA,
    NUM_PARTICLES,
    assert_two_sided_agreement,
    linear_gaussian,
)
from jax import random

from numpyro_wakesleep.evaluation import importance_log_likelihood, importance_log_weights


def test_importance_estimate_is_close_to_the_closed_form_on_both_sides():
    # A guide that is not the posterior: the mean of the log-weights (an ELBO) is >= 0.41
    # nats too low, the log-mean-exp within a few standard errors of log p(x) on either side.
    linear_gaussian_model, imperfect_guide = linear_gaussian(numpyro, dist)
    x = jnp.asarray(DATA, jnp.float32)
    log_w = importance_log_weights(
        linear_gaussian_model, imperfect_guide, {}, x,
        rng_key=random.PRNGKey(0), num_particles=NUM_PARTICLES, chunk_size=CHUNK_SIZE,
    )  # fmt: skip
    # the estimate from draws independent of those of its error bar
    estimate = importance_log_likelihood(
        linear_gaussian_model, imperfect_guide, {}, x,
        rng_key=random.PRNGKey(1), num_particles=NUM_PARTICLES, chunk_size=CHUNK_SIZE,
    )  # fmt: skip
    assert_two_sided_agreement(log_w, estimate)
