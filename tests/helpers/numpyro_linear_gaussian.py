"""The linear-Gaussian model and affine guide that the NumPyro tests train and check.

Per datapoint ``i``: ``z_i ~ N(mu, 1)``, ``x_i | z_i ~ N(z_i, 1)``; the guide
``q(z_i | x_i) = N(a x_i + b, exp(log_s))`` is exact at ``a = 1/2, b = mu/2,
log_s = log sqrt(1/2)``. Parameters start at 0.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist


def model(x):
    mu = numpyro.param("mu", 0.0)
    with numpyro.plate("data", x.shape[-1]):
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide(x):
    a = numpyro.param("a", 0.0)
    b = numpyro.param("b", 0.0)
    log_s = numpyro.param("log_s", 0.0)
    with numpyro.plate("data", x.shape[-1]):
        numpyro.sample("z", dist.Normal(a * x + b, jnp.exp(log_s)))
