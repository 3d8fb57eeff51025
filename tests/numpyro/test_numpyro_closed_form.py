"""NumPyro objectives against closed forms on a linear-Gaussian model with local latents.

Model, per datapoint ``i = 1..N``: ``z_i ~ N(mu, 1)``, ``x_i | z_i ~ N(z_i, 1)``, so
``p(x_i) = N(mu, 2)`` and ``p(z_i | x_i) = N((x_i + mu)/2, 1/2)``. Guide:
``q(z_i | x_i) = N(a x_i + b, s)``, exact at ``a = 1/2, b = mu/2, s = sqrt(1/2)``.

Each statistical test averages ``R`` independent estimates and requires
``|mean − truth| < 4·sd/√R`` (``sd`` the estimator's standard deviation). Where
self-normalised weights with finite ``K`` bias the estimator, the truth is shifted by
the first-order bias ``b1 = −(1/K) E_q[(π/q)² (g − E_π g)]`` (computed by quadrature)
and ``|b1|`` is added to the tolerance for the ``O(1/K²)`` remainder. Most tests also
check that the tolerance is tight enough to reject what a wrong implementation
(unweighted particles, say) would give.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from helpers.numpyro_linear_gaussian import guide, model
from scipy.stats import norm

from numpyro_wakesleep import ReweightedWakeSleep, WakeSleep

N = 50
K = 10
MU = 0.7
V_POST = 0.5  # posterior variance of z_i given x_i
X = np.asarray(2.0 + math.sqrt(2.0) * np.random.default_rng(0).standard_normal(N), np.float32)
EXACT = {"mu": MU, "a": 0.5, "b": MU / 2, "log_s": math.log(math.sqrt(V_POST))}
OFF = {"mu": MU, "a": 0.45, "b": MU / 2 + 0.3, "log_s": math.log(0.8)}
GUIDE_PARAMS = ("a", "b", "log_s")


B = 10  # mini-batch size of the sub-sampled variant


def sub_model(x):
    mu = numpyro.param("mu", 0.0)
    with numpyro.plate("data", x.shape[-1], subsample_size=B):
        batch = numpyro.subsample(x, event_dim=0)
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=batch)


def sub_guide(x, observations=None):
    a = numpyro.param("a", 0.0)
    b = numpyro.param("b", 0.0)
    log_s = numpyro.param("log_s", 0.0)
    with numpyro.plate("data", x.shape[-1], subsample_size=B):
        batch = numpyro.subsample(x, event_dim=0) if observations is None else observations["x"]
        numpyro.sample("z", dist.Normal(a * batch + b, jnp.exp(log_s)))


def estimator(loss, mdl=model, gd=guide, num: int = 300):
    """A function ``(params, seed) -> (values, gradients)`` of ``num`` independent evaluations
    of ``loss`` (compiled once, as numpy arrays)."""

    def one(p, key):
        return loss.loss(key, p, mdl, gd, jnp.asarray(X))

    run = jax.jit(jax.vmap(jax.value_and_grad(one), in_axes=(None, 0)))

    def estimate(params: dict, seed: int):
        params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
        values, grads = run(params, jax.random.split(jax.random.PRNGKey(seed), num))
        return np.asarray(values, np.float64), {
            k: np.asarray(v, np.float64) for k, v in grads.items()
        }

    return estimate


def within(samples: np.ndarray, truth: float, sd: float | None = None, bias: float = 0.0):
    """``|mean − (truth + bias)| < 4·sd/√R + |bias|`` (``sd`` empirical unless given).

    ``bias`` is the estimator's first-order bias; the remainder, ``O(1/K²)``, is allowed
    to be as large as the first-order term itself. Returns the tolerance.
    """
    sd = float(np.std(samples, ddof=1)) if sd is None else sd
    tolerance = 4.0 * sd / math.sqrt(len(samples)) + abs(bias)
    assert abs(samples.mean() - truth - bias) < tolerance, (samples.mean(), truth, bias, tolerance)
    return tolerance


def log_marginal(mu: float) -> float:
    return float(norm.logpdf(X.astype(np.float64), mu, math.sqrt(2.0)).sum())


def guide_moments(params: dict) -> tuple[np.ndarray, float]:
    x = X.astype(np.float64)
    return params["a"] * x + params["b"], math.exp(params["log_s"])


def posterior_expectation_and_bias(g, params: dict, num_particles: int):
    """``Σ_i E_π[g_i]`` and the first-order self-normalisation bias ``Σ_i b1_i``, by quadrature."""
    x = X.astype(np.float64)
    m_post = (x + params["mu"]) / 2
    m_q, s = guide_moments(params)
    z = m_post[:, None] + np.linspace(-12.0, 12.0, 24001)[None, :]
    dz = z[0, 1] - z[0, 0]
    pi = norm.pdf(z, m_post[:, None], math.sqrt(V_POST))
    q = norm.pdf(z, m_q[:, None], s)
    values = g(z, x[:, None], m_q[:, None], s)
    expectation = (pi * values).sum(1) * dz
    bias = -((pi**2 / q) * (values - expectation[:, None])).sum(1) * dz / num_particles
    return float(expectation.sum()), float(bias.sum())


# score of log q(z|x) = log N(z; a x + b, s) with respect to the guide's parameters
SCORES = {
    "a": lambda z, x, m, s: x * (z - m) / s**2,
    "b": lambda z, x, m, s: (z - m) / s**2,
    "log_s": lambda z, x, m, s: (z - m) ** 2 / s**2 - 1.0,
}


@pytest.fixture(scope="module")
def rws():
    return estimator(ReweightedWakeSleep(num_particles=K))


@pytest.fixture(scope="module")
def rws_exact(rws):
    return rws(EXACT, seed=1)


@pytest.fixture(scope="module")
def rws_off(rws):
    return rws(OFF, seed=2)


@pytest.fixture(scope="module")
def ws():
    return estimator(WakeSleep(num_particles=5, num_sleep_particles=20))


@pytest.mark.slow
def test_exact_guide_value_is_minus_log_marginal(rws_exact, ws):
    values, _ = rws_exact
    np.testing.assert_allclose(values, -log_marginal(MU), rtol=2e-5)
    # classic wake-sleep reports -ELBO, which is also exact for the exact posterior
    values, _ = ws(EXACT, seed=4)
    np.testing.assert_allclose(values, -log_marginal(MU), rtol=2e-5)


@pytest.mark.slow
def test_rws_wake_theta_gradient_with_exact_guide_is_unbiased(rws_exact):
    _, grads = rws_exact
    truth = -float(((X - MU) / 2).sum())  # d/dmu of -Σ log p(x_i)
    sd = math.sqrt(N * V_POST / K)  # uniform weights: Σ_i mean_k (z_ik - mu)
    within(grads["mu"], truth, sd=sd)
    np.testing.assert_allclose(np.std(grads["mu"]), sd, rtol=0.25)
    for name in GUIDE_PARAMS:  # at the exact posterior the wake-phi gradient has mean 0
        within(grads[name], 0.0)


@pytest.mark.slow
def test_rws_wake_theta_gradient_self_normalised(rws_off):
    _, grads = rws_off
    expectation, bias = posterior_expectation_and_bias(
        lambda z, x, m, s: z - OFF["mu"], OFF, num_particles=K
    )
    tolerance = within(grads["mu"], -expectation, bias=-bias)  # the loss gradient is -Σ w̄ f
    # unweighted particles would estimate E_q[z - mu] instead: the test tells them apart
    m_q, _ = guide_moments(OFF)
    assert abs(-(m_q - OFF["mu"]).sum() + expectation) > 2 * tolerance


@pytest.mark.slow
def test_rws_wake_phi_gradient_self_normalised(rws_off):
    _, grads = rws_off
    for name, score in SCORES.items():
        expectation, bias = posterior_expectation_and_bias(score, OFF, num_particles=K)
        tolerance = within(grads[name], -expectation, bias=-bias)
        # unweighted particles would give E_q[score] = 0
        assert abs(expectation) > 2 * tolerance, name


def test_per_datapoint_weights_keep_a_large_effective_sample_size():
    loss = ReweightedWakeSleep(num_particles=K)
    terms = jax.jit(lambda key: loss.terms(key, OFF, model, guide, jnp.asarray(X)))
    ess = terms(jax.random.PRNGKey(5))["ess"]
    # per datapoint E_q[(π/q)²] ≈ 1.1 here, so ESS ≈ K / 1.1; joint weights over 50
    # datapoints would collapse it to about 1
    assert float(ess) > 0.7 * K


@pytest.mark.slow
def test_ws_wake_theta_gradient(ws):
    _, grads = ws(OFF, seed=3)
    m_q, _ = guide_moments(OFF)
    within(grads["mu"], -float((m_q - OFF["mu"]).sum()))  # -Σ_i E_q[z_i - mu]


@pytest.mark.slow
def test_sleep_phi_gradient(ws):
    _, grads = ws(OFF, seed=3)
    a, b, s, mu = OFF["a"], OFF["b"], math.exp(OFF["log_s"]), OFF["mu"]
    mean = (1 - a) * mu - b  # E_p[z - a x - b] with x = z + e
    expected_score = {  # E_p[score], per datapoint
        "a": (1 - 2 * a + mean * mu) / s**2,
        "b": mean / s**2,
        "log_s": ((1 - a) ** 2 + a**2 + mean**2) / s**2 - 1.0,
    }
    for name, value in expected_score.items():
        tolerance = within(grads[name], -N * value)
        assert abs(N * value) > 2 * tolerance, name  # the gradient is far from 0


@pytest.mark.slow
def test_subsampling_is_unbiased_for_the_full_data_set():
    estimate = estimator(
        ReweightedWakeSleep(num_particles=K, insomnia=0.0), sub_model, sub_guide, num=400
    )
    values, grads = estimate(EXACT, seed=6)
    # -(N/B) Σ_{i in batch} log p(x_i) is unbiased for -Σ_i log p(x_i)
    within(values, -log_marginal(MU))
    # wake-theta: the full-data gradient of -Σ_i log p(x_i)
    within(grads["mu"], -float(((X - MU) / 2).sum()))
    # sleep-phi: a dream of B datapoints scaled by N/B stands for N of them
    _, sleep_grads = estimate(OFF, seed=7)
    a, b, s, mu = OFF["a"], OFF["b"], math.exp(OFF["log_s"]), OFF["mu"]
    within(sleep_grads["b"], -N * ((1 - a) * mu - b) / s**2)


def test_all_particles_of_a_step_see_the_same_mini_batch():
    loss = ReweightedWakeSleep(num_particles=K)
    terms = jax.jit(lambda key: loss.terms(key, EXACT, sub_model, sub_guide, jnp.asarray(X)))
    for seed in range(3):
        # exact guide: every particle of a datapoint has weight p(x_i); a particle that saw
        # another datapoint would have another weight and lower the ESS below K
        np.testing.assert_allclose(float(terms(jax.random.PRNGKey(seed))["ess"]), K, rtol=1e-4)
