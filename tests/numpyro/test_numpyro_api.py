"""The public contract of numpyro_wakesleep: routing of dreams, validation, errors, warnings."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from helpers.numpyro_linear_gaussian import model

from numpyro_wakesleep import (
    AlternatingSVI,
    DreamRoutingError,
    ModelGuideMismatchError,
    NonFiniteLossWarning,
    ReweightedWakeSleep,
    WakeSleep,
)
from numpyro_wakesleep.helmholtz import HelmholtzMachine
from numpyro_wakesleep.objectives import iwae_bound
from numpyro_wakesleep.traces import importance_traces

KEY = jax.random.PRNGKey(0)
#: Real data far from anything the model dreams at mu = 0.
X_FAR = jnp.full(5, 20.0)
#: q(z|x) = N(x/2 + b, s) is the exact posterior of the model below at mu = 0.
EXACT = {"mu": 0.0, "b": 0.0, "log_s": math.log(math.sqrt(0.5))}
NUM_DREAMS = 2000


def guide(x):
    b = numpyro.param("b", 0.0)
    log_s = numpyro.param("log_s", 0.0)
    with numpyro.plate("data", x.shape[-1]):
        numpyro.sample("z", dist.Normal(x / 2 + b, jnp.exp(log_s)))


def copying_model(x):
    """Observes a copy of its argument, so no argument *is* the observed value."""
    mu = numpyro.param("mu", 0.0)
    with numpyro.plate("data", x.shape[-1]):
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x * 1.0)


def sleep_gradient(mdl, gd, *args, dream_args=None, **kwargs) -> float:
    """The sleep-φ gradient in ``b`` at the exact guide: about 0 iff the guide saw the dreams.

    Had the guide seen the real data ``X_FAR`` beside dreamed latents, it would be about
    ``5 · (0 − 10) / 0.5 = −100``.
    """
    loss = ReweightedWakeSleep(
        num_particles=2, insomnia=0.0, num_sleep_particles=NUM_DREAMS, dream_args=dream_args
    )
    grads = jax.grad(lambda p: loss.loss(KEY, p, mdl, gd, *args, **kwargs))(EXACT)
    return float(grads["b"])


# per dream Σ_i (z_i − m_i)/s² has variance 5 · 0.5 / 0.25 = 10
SLEEP_TOLERANCE = 4 * math.sqrt(10 / NUM_DREAMS)


# -- routing of dreams ---------------------------------------------------------------------
@pytest.mark.filterwarnings("error::RuntimeWarning")  # and no fallback to sequential dreams
@pytest.mark.slow
def test_rule_3_replaces_the_argument_that_is_the_observed_value():
    assert abs(sleep_gradient(model, guide, X_FAR)) < SLEEP_TOLERANCE
    assert abs(sleep_gradient(model, guide, x=X_FAR)) < SLEEP_TOLERANCE  # by keyword


def test_rule_2_gives_the_dreams_to_an_observations_parameter():
    seen = []

    def observing_guide(x, observations=None):
        seen.append(observations is not None)
        xs = x if observations is None else observations["x"]
        b = numpyro.param("b", 0.0)
        log_s = numpyro.param("log_s", 0.0)
        with numpyro.plate("data", xs.shape[-1]):
            numpyro.sample("z", dist.Normal(xs / 2 + b, jnp.exp(log_s)))

    assert abs(sleep_gradient(copying_model, observing_guide, X_FAR)) < SLEEP_TOLERANCE
    seen.clear()
    # rule 2 wins over rule 3, which would also apply to `model`
    assert abs(sleep_gradient(model, observing_guide, X_FAR)) < SLEEP_TOLERANCE
    assert True in seen


def test_rule_1_dream_args_wins():
    def dict_model(data):
        model(data["x"])

    def dict_guide(data, observations=None):
        assert observations is None, "dream_args must take precedence over rule 2"
        guide(data["x"])

    def dream_args(observations, args, kwargs):
        return ({"x": observations["x"]},), kwargs

    gradient = sleep_gradient(dict_model, dict_guide, {"x": X_FAR}, dream_args=dream_args)
    assert abs(gradient) < SLEEP_TOLERANCE


def test_unroutable_dreams_raise_an_error_naming_sites_and_options():
    with pytest.raises(DreamRoutingError) as error:
        sleep_gradient(copying_model, guide, X_FAR)
    assert isinstance(error.value, ValueError)
    message = str(error.value)
    for needle in ("['x']", "dream_args", "observations", "obs=", "insomnia=1"):
        assert needle in message
    # without a sleep phase nothing needs routing
    value = ReweightedWakeSleep(num_particles=2).loss(KEY, EXACT, copying_model, guide, X_FAR)
    assert np.isfinite(float(value))


def test_dream_args_must_return_args_and_kwargs():
    with pytest.raises(DreamRoutingError, match="must return a pair"):
        sleep_gradient(model, guide, X_FAR, dream_args=lambda obs, args, kwargs: obs)


@pytest.mark.slow
def test_unbatchable_guide_falls_back_to_sequential_dreams_with_one_warning():
    def host_half(x):  # host code without a batching rule: fine on one dream, not under vmap
        def half(a):
            return (np.asarray(a) / 2).astype(np.float32)

        return jax.pure_callback(half, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    def host_guide(x):
        b = numpyro.param("b", 0.0)
        log_s = numpyro.param("log_s", 0.0)
        with numpyro.plate("data", x.shape[-1]):
            numpyro.sample("z", dist.Normal(host_half(x) + b, jnp.exp(log_s)))

    params = {"mu": 0.3, "b": 0.2, "log_s": -0.2}
    x = jnp.linspace(-1.0, 3.0, 5)
    loss = ReweightedWakeSleep(num_particles=3, insomnia=0.0, num_sleep_particles=4)

    def grad(objective):
        return jax.grad(lambda p: objective.loss(KEY, p, model, host_guide, x))

    with pytest.warns(RuntimeWarning, match="one at a time") as record:
        fallen_back = jax.jit(grad(loss))(params)
        jax.eval_shape(grad(loss), params)  # traced again: no second warning
    assert sum("one at a time" in str(w.message) for w in record) == 1
    assert loss._vectorize_dreams is False
    sequential = jax.jit(grad(ReweightedWakeSleep(3, 0.0, 4, vectorize_particles=False)))(params)
    for name in params:
        np.testing.assert_allclose(fallen_back[name], sequential[name], rtol=1e-5)


# -- validation ----------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [ReweightedWakeSleep, WakeSleep])
@pytest.mark.parametrize(
    ("kwargs", "name"), [({"num_particles": 0}, "num_particles"), ({"dream_args": 3}, "dream_args")]
)
def test_invalid_arguments_raise_at_construction(cls, kwargs, name):
    # every rule is tested once in tests/common/test_contract.py; this checks they are applied
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


def test_insomnia_outside_the_unit_interval_is_refused():
    with pytest.raises(ValueError, match="insomnia"):
        ReweightedWakeSleep(insomnia=1.1)


def test_valid_arguments_are_kept():
    loss = ReweightedWakeSleep(
        num_particles=1, insomnia=0, max_plate_nesting=2, alternate="guide_first"
    )
    assert (loss.num_particles, loss.num_sleep_particles, loss.insomnia) == (1, 1, 0.0)
    assert loss.first_phase == "guide"
    assert WakeSleep().num_particles == 1 and WakeSleep().insomnia == 0.0
    assert ReweightedWakeSleep().num_particles == 10
    assert ReweightedWakeSleep(alternate=True).first_phase == "model"


def test_alternating_svi_needs_optax_optimisers():
    with pytest.raises(TypeError, match="optax"):
        AlternatingSVI(model, guide, numpyro.optim.Adam(1e-3), optax.adam(1e-3), WakeSleep())
    with pytest.raises(TypeError, match="guide_optim"):
        AlternatingSVI(model, guide, optax.adam(1e-3), "adam", WakeSleep())


def test_alternate_under_plain_svi_warns_once():
    loss = ReweightedWakeSleep(num_particles=2, alternate=True)
    with pytest.warns(UserWarning, match="AlternatingSVI") as record:
        loss.loss(KEY, EXACT, model, guide, X_FAR)
        loss.loss(KEY, EXACT, model, guide, X_FAR)
    assert sum("AlternatingSVI" in str(w.message) for w in record) == 1


# -- model/guide mismatch ------------------------------------------------------------------
def two_latent_model(x, extra=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[-1]):
        z = numpyro.sample("z", dist.Normal(w, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def z_guide(x):
    with numpyro.plate("data", x.shape[-1]):
        numpyro.sample("z", dist.Normal(x / 2, 1.0))


def wz_guide(x, extra=None):
    numpyro.sample("w", dist.Normal(0.0, 1.0))
    if extra is not None:
        numpyro.sample(extra, dist.Normal(0.0, 1.0), infer={"is_auxiliary": extra == "aux"})
    z_guide(x)


@pytest.mark.parametrize(
    ("mdl", "gd", "kwargs", "needles"),
    [
        (two_latent_model, z_guide, {}, ["['w']", "does not sample"]),
        (two_latent_model, wz_guide, {"extra": "u"}, ["['u']", "not latent sites"]),
        (two_latent_model, wz_guide, {"extra": "x"}, ["['x']", "observes ['x']"]),
    ],
)
@pytest.mark.parametrize("insomnia", [1.0, 0.0])
def test_model_guide_mismatch_names_the_sites(mdl, gd, kwargs, needles, insomnia):
    loss = ReweightedWakeSleep(num_particles=2, insomnia=insomnia)
    with pytest.raises(ModelGuideMismatchError) as error:
        loss.loss(KEY, {}, mdl, gd, X_FAR, **kwargs)
    assert isinstance(error.value, ValueError)
    for needle in needles:
        assert needle in str(error.value)


def test_auxiliary_guide_sites_are_allowed():
    loss = ReweightedWakeSleep(num_particles=2, insomnia=0.5)
    value = loss.loss(KEY, {}, two_latent_model, wz_guide, X_FAR, extra="aux")
    assert np.isfinite(float(value))


def test_unplated_batch_dimensions_are_summed_like_an_event():
    # a batch dimension that no plate declares is part of one joint weight, as in to_event
    def program(shift, event, observe):
        def run(x=None):
            v_dist = dist.Normal(jnp.zeros(3) + shift, 1.0)
            v = numpyro.sample("v", v_dist.to_event(1) if event else v_dist)
            if observe:
                numpyro.sample("x", dist.Normal(v.sum(-1), 1.0), obs=x)

        return run

    loss = ReweightedWakeSleep(4)
    x = jnp.asarray(0.7)
    plain = loss.loss(KEY, {}, program(0.0, False, True), program(0.5, False, False), x)
    as_event = loss.loss(KEY, {}, program(0.0, True, True), program(0.5, True, False), x)
    np.testing.assert_allclose(plain, as_event, rtol=1e-6)


def test_too_small_max_plate_nesting_is_explained():
    with pytest.raises(ValueError, match="max_plate_nesting"):
        ReweightedWakeSleep(2, max_plate_nesting=0).loss(KEY, EXACT, model, guide, X_FAR)


# -- non-finite values outside jit ---------------------------------------------------------
def blind_guide(x):  # does not read x, so that only the model meets its values
    with numpyro.plate("data", x.shape[-1]):
        numpyro.sample("z", dist.Normal(0.0, 1.0))


@pytest.mark.filterwarnings("ignore:Out-of-support values")  # NumPyro's own, about the nan
def test_non_finite_site_warns_naming_terms_and_sites():
    def log_normal_model(x):
        with numpyro.plate("data", x.shape[-1]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            numpyro.sample("x", dist.LogNormal(z, 1.0), obs=x)

    loss = ReweightedWakeSleep(num_particles=2)
    finite_but_negative = jnp.array([1.0, -1.0, 2.0])  # log of -1: a NaN log-density
    with pytest.warns(NonFiniteLossWarning) as record:
        value = loss.loss(KEY, {}, log_normal_model, blind_guide, finite_but_negative)
    assert not np.isfinite(float(value))
    message = next(str(w.message) for w in record if w.category is NonFiniteLossWarning)
    assert "'loss'" in message and "model site 'x'" in message


def test_zero_weight_datapoints_are_reported():
    def point_mass():
        with numpyro.plate("data", 3):
            numpyro.sample("z", dist.Delta(0.0))

    def spread():  # proposes z != 0 almost surely, where the model has density zero
        with numpyro.plate("data", 3):
            numpyro.sample("z", dist.Normal(1.0, 1.0))

    with pytest.warns(NonFiniteLossWarning, match="3 datapoint.*zero weight") as record:
        ReweightedWakeSleep(num_particles=4).loss(KEY, {}, point_mass, spread)
    message = next(str(w.message) for w in record if w.category is NonFiniteLossWarning)
    assert "model site 'z'" in message


# -- particles, weights and terms ----------------------------------------------------------
@pytest.mark.slow
def test_sequential_particles_match_vectorised_particles():
    params = {"mu": 0.4, "b": 0.3, "log_s": -0.1}

    def value_and_grad(loss):
        return jax.value_and_grad(lambda p: loss.loss(KEY, p, model, guide, X_FAR / 10))(params)

    @jax.jit
    def both():
        vectorised = value_and_grad(ReweightedWakeSleep(4, insomnia=0.5))
        return vectorised, value_and_grad(ReweightedWakeSleep(4, 0.5, vectorize_particles=False))

    (value, grads), (seq_value, seq_grads) = both()
    np.testing.assert_allclose(value, seq_value, rtol=1e-5)
    for name in params:
        np.testing.assert_allclose(grads[name], seq_grads[name], rtol=1e-4, atol=1e-5)


def abstract_wake(mdl, gd, args, kwargs, params, num_particles=3) -> tuple[tuple, float]:
    """Shape of the log-weights and the data scale of a wake pass, traced without running it."""
    scale = []

    def log_weights(p):
        wake = importance_traces(
            mdl, gd, args, kwargs, rng_key=KEY, params=p, num_particles=num_particles,
            max_plate_nesting=math.inf, vectorize=True,
        )  # fmt: skip
        scale.append(wake.data_scale)
        per_datapoint = wake.per_datapoint(iwae_bound(wake.log_weights))
        assert per_datapoint.shape == (wake.log_weights.shape[1:] if wake.data_plates else ())
        return wake.log_weights

    return jax.eval_shape(log_weights, params).shape, scale[0]


def test_weights_are_per_datapoint_unless_a_global_latent_forces_joint_weights():
    assert abstract_wake(model, guide, (X_FAR,), {}, EXACT) == ((3, 5), 1.0)
    assert abstract_wake(two_latent_model, wz_guide, (X_FAR,), {}, {}) == ((3, 1), 1.0)


@pytest.mark.slow
def test_terms_are_exposed_eagerly_and_under_jit():
    loss = ReweightedWakeSleep(num_particles=3, insomnia=0.5)
    value = loss.loss(KEY, EXACT, model, guide, X_FAR)
    last = loss.last_terms
    assert set(last) == {"loss", "wake_theta", "wake_phi", "sleep_phi", "ess"}
    assert last["loss"] == pytest.approx(float(value))
    terms = jax.jit(lambda key: loss.terms(key, EXACT, model, guide, X_FAR))(KEY)
    assert set(terms) == set(last)
    for name in terms:
        assert float(terms[name]) == pytest.approx(last[name], rel=1e-5)
    assert float(terms["ess"]) == pytest.approx(3.0, rel=1e-4)  # the exact guide
    assert loss.last_terms == last  # evaluations under jit leave it alone
    ws_terms = jax.eval_shape(lambda key: WakeSleep(2).terms(key, EXACT, model, guide, X_FAR), KEY)
    assert set(ws_terms) == {"loss", "wake_theta", "sleep_phi", "ess"}


# -- Helmholtz machine ---------------------------------------------------------------------
def test_helmholtz_machine_scales_a_mini_batch_to_num_data():
    machine = HelmholtzMachine(6, (4, 2))
    x = jnp.asarray(np.random.default_rng(0).random((8, 6)) < 0.5, jnp.float32)
    svi = AlternatingSVI(
        machine.model, machine.guide, optax.sgd(0.1), optax.sgd(0.1), ReweightedWakeSleep()
    )
    state = jax.eval_shape(lambda key: svi.init(key, x), KEY)  # traced, not run: fast
    assert svi.shared_param_names == frozenset()
    assert svi.model_param_names == {
        "helmholtz_generative.top_logits",
        *(f"helmholtz_generative.layers.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")),
    }
    assert svi.guide_param_names == {
        f"helmholtz_recognition.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")
    }
    assert state.params["helmholtz_generative.layers.0.weight"].shape == (6, 4)
    params = {name: jnp.zeros(value.shape) for name, value in state.params.items()}
    # 8 images standing for 32: the data plate's scale 4 stays outside the log-weights
    assert abstract_wake(machine.model, machine.guide, (x,), {"num_data": 32}, params, 5) == (
        (5, 8),
        4.0,
    )
    assert abstract_wake(machine.model, machine.guide, (x,), {}, params, 5) == ((5, 8), 1.0)


def test_helmholtz_machine_needs_a_hidden_layer():
    with pytest.raises(ValueError, match="hidden layer"):
        HelmholtzMachine(16, ())


def test_the_package_imports_neither_torch_nor_pyro():
    code = (
        "import sys, numpyro_wakesleep, numpyro_wakesleep.helmholtz; "
        "bad = [m for m in ('torch', 'pyro', 'pyro_wakesleep') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_warning_for_discrete_latents_under_svi():
    machine = HelmholtzMachine(4, (2,))
    svi = numpyro.infer.SVI(
        machine.model, machine.guide, optax.adam(1e-3), loss=ReweightedWakeSleep()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        svi.init(KEY, jnp.ones((3, 4)))


def _unbatchable(error: Exception):
    """The identity, whose batching rule raises ``error``: fine one dream at a time only."""

    @jax.custom_batching.custom_vmap
    def identity(x):
        return x

    @identity.def_vmap
    def rule(axis_size, in_batched, x):
        raise error

    return identity


def _guide_through(transform):
    def through_guide(x):
        b = numpyro.param("b", 0.0)
        log_s = numpyro.param("log_s", 0.0)
        with numpyro.plate("data", x.shape[-1]):
            numpyro.sample("z", dist.Normal(transform(x) / 2 + b, jnp.exp(log_s)))

    return through_guide


@pytest.mark.parametrize(
    "error",
    [NotImplementedError("no batching rule"), TypeError("bad operand"), ValueError("bad shape")],
)
def test_a_batching_failure_falls_back_to_sequential_dreams(error):
    loss = ReweightedWakeSleep(num_particles=2, insomnia=0.0, num_sleep_particles=3)
    with pytest.warns(RuntimeWarning, match="one at a time"):
        value = loss.loss(KEY, EXACT, model, _guide_through(_unbatchable(error)), X_FAR)
    assert np.isfinite(float(value)) and loss._vectorize_dreams is False
    sequential = ReweightedWakeSleep(2, 0.0, 3, vectorize_particles=False)
    expected = sequential.loss(KEY, EXACT, model, _guide_through(lambda x: x), X_FAR)
    np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_an_error_that_is_no_batching_failure_is_raised_not_taken_for_one():
    loss = ReweightedWakeSleep(num_particles=2, insomnia=0.0, num_sleep_particles=3)
    guide_with_bug = _guide_through(_unbatchable(LookupError("a bug in the guide")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fall-back warning either
        with pytest.raises(LookupError, match="a bug in the guide"):
            loss.loss(KEY, EXACT, model, guide_with_bug, X_FAR)
    assert loss._vectorize_dreams is True
