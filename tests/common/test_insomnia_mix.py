"""The guide update ``insomnia·wake-φ + (1 − insomnia)·sleep-φ``, exactly, in both backends.

Model ``z_i ~ N(mu, 1)``, ``x_i | z_i ~ N(z_i, 1)``; guide ``q(z_i | x_i) = N(a x_i + b, s)``,
``s = exp(log_s)``. Since ``∂ log q / ∂ log_s = −1 − 2 log q − 2 log_s − log 2π``, every
guide term that is a weighted sum of ``−log q`` over ``N`` datapoints (weights summing to 1
per datapoint: ``w̄_k`` for wake-φ, ``1/M`` for sleep-φ) has the ``log_s``-gradient
``C − 2·term`` with ``C = N (1 + 2 log_s + log 2π)``. So the guide gradient of one
evaluation is known exactly from the values of its own terms::

    ∂/∂log_s = insomnia (C − 2 wake_phi) + (1 − insomnia) (C − 2 sleep_phi)

No Monte Carlo error enters: the check is one of floating-point accuracy, and a swapped mix
(``(1 − insomnia)·wake-φ + insomnia·sleep-φ``) moves the gradient, at ``insomnia = 0.25``, by
``|sleep_phi − wake_phi|`` (more than 0.1 here, against a tolerance of about 1e-4). With the
same seed, the particles and dreams of ``insomnia = 0.25`` are those of ``insomnia = 1`` and ``0``, so its whole guide
gradient is also ``0.25·g(1) + 0.75·g(0)`` and its model gradient that of either.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest

N, K, M = 5, 4, 6  # datapoints, particles, dreams
DATA = np.linspace(2.0, 6.0, N)  # far from the model's p(x) = N(mu, sqrt 2): wake ≠ sleep
INIT = {"mu": 0.3, "a": 0.2, "b": -0.1, "log_s": 0.3}  # a poor guide
GUIDE_PARAMS = ("a", "b", "log_s")


@cache
def pyro_gradient(insomnia: float, seed: int = 0) -> tuple[dict, dict]:
    """Gradient of one ``differentiable_loss`` by parameter, and the terms it logged."""
    import pyro
    import pyro.distributions as dist
    import torch

    from pyro_wakesleep import ReweightedWakeSleep

    def model(x):
        mu = pyro.param("mu", torch.tensor(INIT["mu"], dtype=torch.float64))
        with pyro.plate("data", N):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        a = pyro.param("a", torch.tensor(INIT["a"], dtype=torch.float64))
        b = pyro.param("b", torch.tensor(INIT["b"], dtype=torch.float64))
        log_s = pyro.param("log_s", torch.tensor(INIT["log_s"], dtype=torch.float64))
        with pyro.plate("data", N):
            pyro.sample("z", dist.Normal(a * x + b, log_s.exp()))

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    loss = ReweightedWakeSleep(K, insomnia=insomnia, num_sleep_particles=M)
    surrogate = loss.differentiable_loss(model, guide, torch.as_tensor(DATA))
    store = pyro.get_param_store()
    grads = torch.autograd.grad(surrogate, [store[name] for name in INIT])
    return dict(zip(INIT, (float(g) for g in grads), strict=True)), loss.last_terms


@cache
def numpyro_gradient(insomnia: float, seed: int = 0) -> tuple[dict, dict]:
    """Gradient of ``loss`` by parameter, and ``terms`` of the same key (the same draws)."""
    import jax
    import jax.numpy as jnp
    from helpers.numpyro_linear_gaussian import guide, model

    from numpyro_wakesleep import ReweightedWakeSleep

    loss = ReweightedWakeSleep(K, insomnia=insomnia, num_sleep_particles=M)
    key, params = jax.random.PRNGKey(seed), {n: jnp.float32(v) for n, v in INIT.items()}
    x = jnp.asarray(DATA, jnp.float32)

    @jax.jit  # one compilation: faster than the first evaluation outside jit
    def gradient_and_terms(p):
        gradient = jax.grad(lambda q: loss.loss(key, q, model, guide, x))(p)
        return gradient, loss.terms(key, p, model, guide, x)

    grads, terms = gradient_and_terms(params)
    return {n: float(g) for n, g in grads.items()}, {n: float(t) for n, t in terms.items()}


BACKENDS = {"pyro": pyro_gradient, "numpyro": numpyro_gradient}


@pytest.mark.parametrize("insomnia", [0.25, 1.0, 0.0])
@pytest.mark.parametrize("backend", BACKENDS)
def test_guide_gradient_is_the_insomnia_mix_of_its_terms(backend, insomnia):
    pytest.importorskip(backend)
    grads, terms = BACKENDS[backend](insomnia)
    c = N * (1 + 2 * INIT["log_s"] + math.log(2 * math.pi))
    wake = c - 2 * terms["wake_phi"] if insomnia > 0 else 0.0
    sleep = c - 2 * terms["sleep_phi"] if insomnia < 1 else 0.0
    expected = insomnia * wake + (1 - insomnia) * sleep
    assert grads["log_s"] == pytest.approx(expected, rel=1e-5, abs=1e-4)
    if 0 < insomnia < 1:  # a swapped mix lies hundreds of tolerances away
        swapped = (1 - insomnia) * wake + insomnia * sleep
        assert abs(swapped - expected) > 0.1, terms


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_draws_mix_the_pure_gradients(backend):
    pytest.importorskip(backend)
    mixed, _ = BACKENDS[backend](0.25)
    (wake, _), (sleep, _) = BACKENDS[backend](1.0), BACKENDS[backend](0.0)
    for name in GUIDE_PARAMS:
        expected = 0.25 * wake[name] + 0.75 * sleep[name]
        assert mixed[name] == pytest.approx(expected, rel=1e-5, abs=1e-4), name
        assert abs(wake[name] - sleep[name]) > 0.1, name  # a swap would show
    # the model's gradient (wake-θ) does not depend on insomnia
    assert mixed["mu"] == pytest.approx(wake["mu"], rel=1e-6)
    assert mixed["mu"] == pytest.approx(sleep["mu"], rel=1e-6)
