"""The NumPyro Helmholtz machine as a feature extractor, and its Gaussian visible units.

The mirror of ``tests/pyro/test_pyro_features.py``:

- ``features(params, x)``: the recognition net's mean-field probabilities, every hidden layer,
  bottom first, against a hand computation from the parameters and against the guide's own
  Bernoulli probabilities;
- ``visible="gaussian"``: the model scores ``x`` with a normal density of scale
  ``exp(visible_log_scale)``; the exact marginal of :mod:`wakesleep.trainer.exact` (with
  ``visible_scale=machine.visible_scale(params)``) equals enumeration through the model's own
  trace and the importance estimate up to its Monte Carlo error; one RWS step trains the
  scale; dreams are real-valued; ``sample`` returns floats.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")
optax = pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402
from helpers.numpyro_machines import random_params  # noqa: E402
from jax import random  # noqa: E402
from jax.scipy.special import logsumexp  # noqa: E402
from numpyro import handlers  # noqa: E402
from numpyro.infer import SVI  # noqa: E402

from numpyro_wakesleep import ReweightedWakeSleep  # noqa: E402
from numpyro_wakesleep.evaluation import (  # noqa: E402
    importance_log_likelihood,
    importance_log_weights,
)
from numpyro_wakesleep.helmholtz import HelmholtzMachine  # noqa: E402
from wakesleep.trainer.exact import helmholtz_log_marginal  # noqa: E402

GEN = "helmholtz_generative"
REC = "helmholtz_recognition"


def all_states(num_units: int) -> np.ndarray:
    return np.array(list(itertools.product((0.0, 1.0), repeat=num_units)), dtype=np.float32)


def as64(params: dict) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, dtype=np.float64) for name, value in params.items()}


def sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def trace_of(program, params, x, seed: int = 0):
    return handlers.trace(
        handlers.seed(handlers.substitute(program, data=params), random.PRNGKey(seed))
    ).get_trace(x)


# ---------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_features_are_the_mean_field_pass_bottom_first(visible):
    machine = HelmholtzMachine(6, (4, 3, 2), visible=visible)
    params = random_params(machine, 0, 1.0, 1.5)
    rng = np.random.default_rng(1)
    if visible == "bernoulli":
        x = (rng.random((2, 5, 6)) < 0.5).astype(np.float32)
    else:
        x = rng.standard_normal((2, 5, 6)).astype(np.float32)
    features = machine.features(params, jnp.asarray(x))
    assert isinstance(features, jax.Array)
    assert features.shape == (2, 5, 4 + 3 + 2) and features.dtype == jnp.float32
    assert np.all((np.asarray(features) > 0) & (np.asarray(features) < 1))

    # by hand from the parameters: p_1 = σ(V_1 x + c_1), p_l = σ(V_l p_{l-1} + c_l)
    p64, p, expected = as64(params), x.astype(np.float64), []
    for layer in range(3):
        p = sigmoid(p @ p64[f"{REC}.{layer}.weight"].T + p64[f"{REC}.{layer}.bias"])
        expected.append(p)
    np.testing.assert_allclose(np.asarray(features), np.concatenate(expected, axis=-1), atol=2e-6)
    # bottom first: the first 4 columns are layer 1, the last 2 the top layer
    np.testing.assert_allclose(np.asarray(features[..., :4]), expected[0], atol=2e-6)
    np.testing.assert_allclose(np.asarray(features[..., -2:]), expected[2], atol=2e-6)
    # a single datapoint, and a NumPy input
    assert machine.features(params, x[0, 0]).shape == (9,)


def test_features_follow_the_params_passed():
    # the parameters are an argument, not captured at the first (jitted) call
    machine = HelmholtzMachine(5, (3, 2))
    params = random_params(machine, 2, 1.0, 1.0)
    x = jnp.zeros((4, 5))
    first = machine.features(params, x)
    changed = {**params, f"{REC}.0.bias": jnp.array([30.0, -30.0, 0.0])}
    second = machine.features(changed, x)
    np.testing.assert_allclose(
        np.asarray(second[:, :3]), np.tile([1.0, 0.0, 0.5], (4, 1)), atol=1e-6
    )
    assert not np.allclose(np.asarray(first), np.asarray(second))


def test_layer_one_features_are_the_guides_probabilities():
    machine = HelmholtzMachine(7, (4, 2), visible="gaussian")
    params = random_params(machine, 3, 1.0, 1.5)
    x = jnp.asarray(np.random.default_rng(4).standard_normal((10, 7)), jnp.float32)
    guide_trace = trace_of(machine.guide, params, x)
    q_h1 = guide_trace["h1"]["fn"].base_dist.probs
    features = machine.features(params, x)
    np.testing.assert_allclose(np.asarray(features[:, :4]), np.asarray(q_h1), atol=1e-6)
    # the upper layer: the guide's q(h2 | h1) is that of the sampled h1, the feature that of p_1
    p64 = as64(params)
    w, b = p64[f"{REC}.1.weight"], p64[f"{REC}.1.bias"]
    h1 = np.asarray(guide_trace["h1"]["value"], dtype=np.float64)
    q_h2 = np.asarray(guide_trace["h2"]["fn"].base_dist.probs)
    np.testing.assert_allclose(q_h2, sigmoid(h1 @ w.T + b), atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(features[:, 4:]), sigmoid(np.asarray(q_h1, np.float64) @ w.T + b), atol=1e-6
    )


# ---------------------------------------------------------------------------------------------
# Gaussian visible units
# ---------------------------------------------------------------------------------------------
def test_gaussian_parameter_starts_at_zero_and_belongs_to_the_model_only():
    machine = HelmholtzMachine(5, (3, 2), visible="gaussian")
    assert machine.visible == "gaussian"
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 5)), jnp.float32)
    model_trace = handlers.trace(handlers.seed(machine.model, random.PRNGKey(0))).get_trace(x)
    guide_trace = handlers.trace(handlers.seed(machine.guide, random.PRNGKey(0))).get_trace(x)
    name = f"{GEN}.visible_log_scale"
    assert model_trace[name]["type"] == "param"
    np.testing.assert_array_equal(np.asarray(model_trace[name]["value"]), np.zeros(5))
    assert not any("visible_log_scale" in n for n in guide_trace)
    # SVI's initial parameters hold it; visible_scale reads it as float64 standard deviations
    svi = SVI(machine.model, machine.guide, optax.adam(0.01), loss=ReweightedWakeSleep(5))
    params = svi.get_params(svi.init(random.PRNGKey(1), x))
    np.testing.assert_array_equal(np.asarray(params[name]), np.zeros(5))
    scale = machine.visible_scale(params)
    assert isinstance(scale, np.ndarray) and scale.dtype == np.float64 and scale.shape == (5,)
    np.testing.assert_array_equal(scale, np.ones(5))
    # a Bernoulli machine has no scale
    bernoulli = HelmholtzMachine(5, (3, 2))
    assert bernoulli.visible_scale(params) is None
    bernoulli_trace = handlers.trace(handlers.seed(bernoulli.model, random.PRNGKey(0))).get_trace(
        jnp.zeros((3, 5))
    )
    assert not any("visible_log_scale" in n for n in bernoulli_trace)


def test_visible_scale_is_the_exp_of_the_log_scale():
    machine = HelmholtzMachine(4, (2,), visible="gaussian")
    params = random_params(machine, 5, 1.0, 1.0)
    params[f"{GEN}.visible_log_scale"] = jnp.log(jnp.arange(1.0, 5.0))
    np.testing.assert_allclose(machine.visible_scale(params), [1.0, 2.0, 3.0, 4.0], rtol=1e-6)
    with pytest.raises(KeyError, match="other_generative.visible_log_scale"):
        HelmholtzMachine(4, (2,), name="other", visible="gaussian").visible_scale(params)


def test_gaussian_model_scores_x_with_a_normal_density():
    machine = HelmholtzMachine(5, (3, 2), visible="gaussian")
    params = random_params(machine, 6, 1.0, 1.0)
    x = 2.0 * np.random.default_rng(7).standard_normal((8, 5)).astype(np.float32)
    model_trace = trace_of(machine.model, params, jnp.asarray(x))
    site = model_trace["x"]
    assert site["is_observed"]
    log_prob = np.asarray(site["fn"].log_prob(site["value"]))
    assert log_prob.shape == (8,)
    p64 = as64(params)
    h1 = np.asarray(model_trace["h1"]["value"], dtype=np.float64)
    mean = h1 @ p64[f"{GEN}.layers.0.weight"].T + p64[f"{GEN}.layers.0.bias"]
    log_s = p64[f"{GEN}.visible_log_scale"]
    z = (x.astype(np.float64) - mean) / np.exp(log_s)
    expected = np.sum(-0.5 * z**2 - log_s - 0.5 * math.log(2 * math.pi), axis=-1)
    np.testing.assert_allclose(log_prob, expected, rtol=1e-5)


def model_enumeration(machine: HelmholtzMachine, params, x: jnp.ndarray) -> np.ndarray:
    """``log Σ_h p(x, h)`` per row, each ``h`` conditioned into the model and scored by its trace."""
    terms = []
    for state in all_states(sum(machine.hidden)):
        layers = np.split(state, np.cumsum(machine.hidden)[:-1])
        data = {f"h{i + 1}": jnp.broadcast_to(h, (len(x), len(h))) for i, h in enumerate(layers)}
        model_trace = trace_of(handlers.condition(machine.model, data=data), params, x)
        terms.append(
            sum(
                site["fn"].log_prob(site["value"])
                for site in model_trace.values()
                if site["type"] == "sample"
            )
        )
    return np.asarray(logsumexp(jnp.stack(terms), axis=0), dtype=np.float64)


def test_exact_gaussian_marginal_equals_enumeration_through_the_model():
    machine = HelmholtzMachine(5, (3, 2), visible="gaussian")
    params = random_params(machine, 8, 1.5, 1.0)
    x = 2.0 * np.random.default_rng(9).standard_normal((9, 5)).astype(np.float32)
    exact = helmholtz_log_marginal(
        x, *machine.generative_weights(params), visible_scale=machine.visible_scale(params)
    )
    enumerated = model_enumeration(machine, params, jnp.asarray(x))
    np.testing.assert_allclose(exact, enumerated, rtol=2e-6, atol=1e-5)
    # the scale is not ignored: unit normals give another answer
    unit = helmholtz_log_marginal(x, *machine.generative_weights(params), visible_scale=np.ones(5))
    assert np.max(np.abs(unit - exact)) > 0.5


def test_importance_estimate_agrees_with_the_exact_gaussian_marginal():
    # a diffuse guide (small recognition weights) over 3 + 2 hidden units: the weights
    # p(h | x) / q(h | x) are bounded, so the Monte Carlo error is small and estimated below
    machine = HelmholtzMachine(4, (3, 2), visible="gaussian")
    params = random_params(machine, 10, 0.8, 0.3)
    x = machine.sample(params, random.PRNGKey(10), 12)
    assert x.dtype == jnp.float32
    exact = helmholtz_log_marginal(
        np.asarray(x, np.float64),
        *machine.generative_weights(params),
        visible_scale=machine.visible_scale(params),
    )
    num_particles = 100_000
    log_w = importance_log_weights(
        machine.model, machine.guide, params, x,
        rng_key=random.PRNGKey(11), num_particles=num_particles, chunk_size=25_000,
    )  # fmt: skip
    assert log_w.shape == (num_particles, 12)
    log_w = np.asarray(log_w, dtype=np.float64)
    peak = log_w.max(axis=0)
    w = np.exp(log_w - peak)
    estimate = np.log(w.mean(axis=0)) + peak
    # delta method: sd(log mean w) ≈ sd(w) / (mean(w) sqrt(K)); the bias -Var/(2K mean²) is
    # far smaller than that here
    relative_se = w.std(axis=0) / w.mean(axis=0) / math.sqrt(num_particles)
    assert np.all(relative_se < 0.03), relative_se
    np.testing.assert_array_less(np.abs(estimate - exact), 5 * relative_se + 1e-4)
    # the evaluation entry point, on fresh draws, within the same error
    running = importance_log_likelihood(
        machine.model, machine.guide, params, x,
        rng_key=random.PRNGKey(12), num_particles=num_particles, chunk_size=25_000,
    )  # fmt: skip
    assert running.shape == (12,)
    np.testing.assert_array_less(
        np.abs(np.asarray(running, np.float64) - exact), 5 * relative_se + 1e-4
    )


def standardised_data(num: int, dim: int, seed: int) -> jnp.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num, dim)) @ rng.standard_normal((dim, dim))
    return jnp.asarray((x - x.mean(0)) / x.std(0), jnp.float32)


@pytest.mark.slow
def test_one_rws_step_trains_the_visible_scale_and_dreams_real_valued_x():
    # one step (one compilation, ~10 s on a busy CPU) checks both: wake-θ moves the scale,
    # and the guide's update comes from dreams only (insomnia=0), so they must route
    machine = HelmholtzMachine(4, (3, 2), visible="gaussian")
    x = standardised_data(16, 4, seed=14)
    seen: list[np.ndarray] = []

    def guide(x, num_data=None, index=None):
        jax.debug.callback(lambda v: seen.append(np.asarray(v)), x)
        machine.guide(x, num_data, index)

    # the guide learns from dreams only; a nan in the sleep term would make the value nan
    loss = ReweightedWakeSleep(num_particles=5, insomnia=0.0)
    svi = SVI(machine.model, guide, optax.adam(0.01), loss=loss)
    state = svi.init(random.PRNGKey(0), x)
    params = svi.get_params(state)
    seen.clear()
    state, value = svi.update(state, x)
    assert math.isfinite(float(value))
    jax.effects_barrier()
    data = np.asarray(x)
    dreams = [v for v in seen if not (v.shape == data.shape and np.array_equal(v, data))]
    assert dreams, "the guide never saw a dream"
    for dream in dreams:
        assert dream.shape[-2:] == (16, 4) and np.issubdtype(dream.dtype, np.floating)
        assert np.all(np.isfinite(dream))
        assert not np.all((dream == 0) | (dream == 1))  # real numbers, not 0/1 images
    after = svi.get_params(state)
    assert np.all(np.isfinite(np.asarray(after[f"{REC}.0.weight"])))
    assert not np.array_equal(
        np.asarray(after[f"{REC}.0.weight"]), np.asarray(params[f"{REC}.0.weight"])
    )
    # Adam's first step moves every coordinate with a finite, non-zero gradient by about lr
    # (a zero gradient leaves it in place, a non-finite one makes it nan)
    before_scale, after_scale = machine.visible_scale(params), machine.visible_scale(after)
    assert np.all(np.isfinite(after_scale))
    np.testing.assert_allclose(np.abs(np.log(after_scale) - np.log(before_scale)), 0.01, rtol=0.05)


def test_samples_are_uint8_images_or_real_vectors():
    bernoulli = HelmholtzMachine(6, (3, 2))
    samples = bernoulli.sample(random_params(bernoulli, 0, 1.0, 1.0), random.PRNGKey(0), 50)
    assert samples.dtype == jnp.uint8 and samples.shape == (50, 6)
    assert set(np.unique(np.asarray(samples))) <= {0, 1}

    machine = HelmholtzMachine(3, (2,), visible="gaussian")
    params = random_params(machine, 15, 1.5, 1.0)
    num = 40_000
    samples = machine.sample(params, random.PRNGKey(1), num)
    assert samples.dtype == jnp.float32 and samples.shape == (num, 3)
    s = np.asarray(samples, dtype=np.float64)
    assert not np.all(s == np.round(s))
    # moments of the mixture Σ_h p(h) N(W h + b, s²), by enumeration of the 2 hidden units
    top, ((w, b),) = machine.generative_weights(params)
    scale = machine.visible_scale(params)
    states = all_states(2).astype(np.float64)
    p_h = np.prod(np.where(states == 1, sigmoid(top), 1 - sigmoid(top)), axis=1)
    means = states @ w.T + b
    mean = p_h @ means
    variance = p_h @ (means - mean) ** 2 + scale**2
    # sample mean: se sqrt(var / n); sample variance: se sqrt((m4 - var²) / n), estimated
    np.testing.assert_array_less(np.abs(s.mean(0) - mean), 5 * np.sqrt(variance / num))
    m4 = np.mean((s - s.mean(0)) ** 4, axis=0)
    np.testing.assert_array_less(
        np.abs(s.var(0) - variance), 5 * np.sqrt((m4 - s.var(0) ** 2) / num)
    )


def test_invalid_visible_and_sparse_gaussian_raise():
    with pytest.raises(ValueError, match="init='default'"):
        HelmholtzMachine(5, (3,), init="sparse", visible="gaussian")
    with pytest.raises(ValueError, match="visible must be one of 'bernoulli', 'gaussian'"):
        HelmholtzMachine(5, (3,), visible="poisson")
    # the sparse start is still fine for binary units
    assert HelmholtzMachine(5, (3,), init="sparse").visible == "bernoulli"
