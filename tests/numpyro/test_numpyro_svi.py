"""Training with the NumPyro objectives: numpyro.infer.SVI under jit, and AlternatingSVI."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from helpers.numpyro_linear_gaussian import guide, model
from numpyro.infer import SVI
from optax.tree_utils import tree_set

from numpyro_wakesleep import (
    AlternatingSVI,
    NonFiniteLossWarning,
    ReweightedWakeSleep,
    WakeSleep,
)
from numpyro_wakesleep.helmholtz import HelmholtzMachine

N = 100
X = jnp.asarray(2.0 + math.sqrt(2.0) * np.random.default_rng(0).standard_normal(N), jnp.float32)


def shared_model(x):
    """As ``model``, with an offset ``c`` that the guide reads too."""
    mu = numpyro.param("mu", 0.0)
    c = numpyro.param("c", 0.5)
    with numpyro.plate("data", x.shape[-1]):
        z = numpyro.sample("z", dist.Normal(mu + c, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def shared_guide(x):
    a = numpyro.param("a", 0.0)
    b = numpyro.param("b", 0.0)
    c = numpyro.param("c", 0.5)
    with numpyro.plate("data", x.shape[-1]):
        numpyro.sample("z", dist.Normal(a * x + b + c, 1.0))


def bars(num: int, seed: int = 0) -> np.ndarray:
    """Hinton et al.'s 4×4 bars: vertical with probability 2/3, each bar on with probability 0.2."""
    rng = np.random.default_rng(seed)
    images = np.zeros((num, 4, 4), np.float32)
    for image in images:
        on = rng.random(4) < 0.2
        if rng.random() < 2 / 3:
            image[:, on] = 1.0
        else:
            image[on, :] = 1.0
    return images.reshape(num, 16)


@pytest.mark.slow
@pytest.mark.parametrize("loss", [ReweightedWakeSleep(num_particles=10), WakeSleep()])
def test_svi_run_under_jit_learns_the_prior_mean(loss):
    svi = SVI(model, guide, optax.adam(0.05), loss=loss)
    result = svi.run(jax.random.PRNGKey(0), 600, X, progress_bar=False)
    # p(x_i) = N(mu, 2): the maximum-likelihood mu is the sample mean, 2 away from the start
    assert abs(float(result.params["mu"]) - float(X.mean())) < 0.15
    # and the guide approaches the exact posterior N((x + mu)/2, 1/2)
    assert abs(float(result.params["a"]) - 0.5) < 0.1
    assert abs(float(result.params["log_s"]) - math.log(math.sqrt(0.5))) < 0.15
    losses = np.asarray(result.losses)
    assert np.all(np.isfinite(losses)) and losses[-50:].mean() < losses[0] - 50


@pytest.fixture(scope="module")
def bars_setup():
    """100 bars images, a 16-8-1 Helmholtz machine and its -IWAE (K=20) in nats per image."""
    images = jnp.asarray(bars(100))
    machine = HelmholtzMachine(16, (8, 1))
    bound = ReweightedWakeSleep(num_particles=20)
    key = jax.random.PRNGKey(1)
    nats = jax.jit(lambda p: bound.loss(key, p, machine.model, machine.guide, images) / 100)
    return images, machine, lambda params: float(nats(params))


@pytest.mark.slow
def test_svi_trains_a_sigmoid_belief_net(bars_setup):
    images, machine, nats = bars_setup
    svi = SVI(machine.model, machine.guide, optax.adam(0.03), loss=ReweightedWakeSleep(10))
    before = nats(svi.get_params(svi.init(jax.random.PRNGKey(0), images)))
    result = svi.run(jax.random.PRNGKey(0), 200, images, progress_bar=False)
    after = nats(result.params)
    # 16 fair coins cost 11.1 nats; the bars' entropy is 2.4 nats per image
    assert before > 9.0
    assert after < before - 4.0, (before, after)


def _changed(old: dict, new: dict) -> set[str]:
    return {
        name for name in old if not np.array_equal(np.asarray(old[name]), np.asarray(new[name]))
    }


def _same_tree(a, b) -> bool:
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _assert_refused(refused, state) -> None:
    """``refused`` keeps every part of ``state`` but the key, which moves on (so that the
    next step draws fresh particles)."""
    assert _same_tree(refused.params, state.params)
    assert _same_tree(refused.model_optim_state, state.model_optim_state)
    assert _same_tree(refused.guide_optim_state, state.guide_optim_state)
    assert int(refused.phase) == int(state.phase)
    assert not np.array_equal(np.asarray(refused.rng_key), np.asarray(state.rng_key))


@pytest.fixture(scope="module")
def alternating():
    svi = AlternatingSVI(
        shared_model, shared_guide, optax.adam(0.01), optax.adam(0.01), ReweightedWakeSleep(5)
    )
    state = svi.init(jax.random.PRNGKey(0), X)
    return svi, state, jax.jit(svi.update)


def test_alternating_svi_splits_parameters_by_program(alternating):
    svi, state, _ = alternating
    assert svi.model_param_names == {"mu", "c"}
    assert svi.guide_param_names == {"a", "b", "c"}
    assert svi.shared_param_names == {"c"}
    assert set(state.model_optim_state[0].mu) == {"mu", "c"}
    assert set(state.guide_optim_state[0].mu) == {"a", "b", "c"}
    assert svi.phase(state) == "model" and int(state.phase) == 0


@pytest.mark.slow
def test_alternating_svi_updates_one_side_per_step(alternating):
    svi, state, update = alternating
    first, value = update(state, X)  # model step
    # evaluate uses the key the step would use: the same particles, the same value
    assert float(jax.jit(svi.evaluate)(state, X)) == pytest.approx(float(value), rel=1e-5)
    assert svi.phase(first) == "guide"
    assert _changed(state.params, first.params) == {"mu", "c"}
    assert _same_tree(first.guide_optim_state, state.guide_optim_state)
    assert int(first.model_optim_state[0].count) == 1
    second, _ = update(first, X)  # guide step
    assert svi.phase(second) == "model"
    assert _changed(first.params, second.params) == {"a", "b", "c"}
    assert _same_tree(second.model_optim_state, first.model_optim_state)
    assert int(second.guide_optim_state[0].count) == 1
    # the shared parameter has one moment estimate per side, each from its own phase
    assert float(first.model_optim_state[0].mu["c"]) != 0.0
    assert float(first.guide_optim_state[0].mu["c"]) == 0.0
    assert float(second.guide_optim_state[0].mu["c"]) != 0.0


@pytest.mark.slow
def test_shared_parameter_gets_each_phase_gradient(alternating):
    svi, state, update = alternating

    def gradient_of_c(phase: str, svi_state) -> float:
        _, step_key = jax.random.split(svi_state.rng_key)  # the key of the state's next step

        def loss(p):
            if phase == "full":
                return svi.loss.loss(step_key, p, shared_model, shared_guide, X)
            return svi.loss.loss_for_phase(phase, step_key, p, shared_model, shared_guide, X)[
                "loss"
            ]

        return float(jax.grad(loss)(svi.get_params(svi_state))["c"])

    model_part, guide_part = gradient_of_c("model", state), gradient_of_c("guide", state)
    np.testing.assert_allclose(model_part + guide_part, gradient_of_c("full", state), rtol=1e-4)
    assert abs(guide_part) > 0.1 * abs(model_part)  # the two parts differ measurably
    # a model step moves c by the model part only: Adam's first moment is 0.1 · gradient
    first, _ = update(state, X)
    np.testing.assert_allclose(first.model_optim_state[0].mu["c"], 0.1 * model_part, rtol=1e-4)
    # a guide step by the guide part, in the guide optimiser's own moments
    guide_part = gradient_of_c("guide", first)
    second, _ = update(first, X)
    np.testing.assert_allclose(second.guide_optim_state[0].mu["c"], 0.1 * guide_part, rtol=1e-4)
    assert second.model_optim_state[0].mu["c"] == first.model_optim_state[0].mu["c"]


@pytest.mark.parametrize("frozen", ["model", "guide"])
def test_freezing_one_optimiser_freezes_exactly_its_side(frozen):
    model_optim = optax.set_to_zero() if frozen == "model" else optax.adam(0.05)
    guide_optim = optax.set_to_zero() if frozen == "guide" else optax.adam(0.05)
    svi = AlternatingSVI(shared_model, shared_guide, model_optim, guide_optim, WakeSleep(2))
    state = svi.init(jax.random.PRNGKey(0), X)
    update = jax.jit(svi.update)
    start, c_path = state.params, [float(state.params["c"])]
    for _ in range(6):
        phase = int(state.phase)
        state, value = update(state, X)
        assert np.isfinite(float(value))
        c_path.append(float(state.params["c"]))
        moved_in = "model" if phase == 0 else "guide"
        assert (c_path[-1] != c_path[-2]) == (moved_in != frozen)
    own = {"model": {"mu"}, "guide": {"a", "b"}}
    changed = _changed(start, state.params)
    assert changed == own["guide" if frozen == "model" else "model"] | {"c"}


def test_non_finite_loss_is_refused(alternating):
    svi, state, update = alternating
    bad = X.at[3].set(jnp.nan)
    for phase in (0, 1):
        assert int(state.phase) == phase
        refused, value = update(state, bad)
        assert not np.isfinite(float(value))
        _assert_refused(refused, state)
        state, value = update(refused, X)  # the next finite step goes through
        assert np.isfinite(float(value)) and _changed(refused.params, state.params)


@pytest.fixture(scope="module")
def scaled_alternating():
    """As ``alternating``, each side's Adam step then multiplied by a scale kept in its state."""
    scaled_adam = optax.chain(optax.adam(0.01), optax.inject_hyperparams(optax.scale)(1.0))
    svi = AlternatingSVI(
        shared_model, shared_guide, scaled_adam, scaled_adam, ReweightedWakeSleep(3)
    )
    return svi, svi.init(jax.random.PRNGKey(0), X), jax.jit(svi.update)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
@pytest.mark.parametrize("bad_side", ["model", "guide"])
def test_step_to_non_finite_parameters_is_refused(scaled_alternating, bad_side, jit):
    # The loss is finite, the optimiser's update is not (Adam's step times +inf): the step
    # must be refused like one with a non-finite loss, in the phase of either side.
    svi, good, jitted = scaled_alternating
    update = jitted if jit else svi.update
    phase = 0 if bad_side == "model" else 1
    side_state = f"{bad_side}_optim_state"
    inf = jnp.array(jnp.inf, jnp.float32)  # of the scale's dtype: no second compilation
    good = good._replace(phase=jnp.asarray(phase, jnp.int32))
    state = good._replace(**{side_state: tree_set(getattr(good, side_state), step_size=inf)})
    refused, value = update(state, X)
    assert np.isnan(float(value)), "a refused step reports NaN, so that run() counts it"
    _assert_refused(refused, state)
    if jit:  # the control (compiled already; an eager step takes a second): scale 1 passes
        accepted, _ = update(good, X)
        assert _changed(good.params, accepted.params) and int(accepted.phase) == 1 - phase


def test_run_counts_steps_refused_for_non_finite_parameters(scaled_alternating):
    svi, good, _ = scaled_alternating
    inf = jnp.array(jnp.inf, jnp.float32)
    state = good._replace(model_optim_state=tree_set(good.model_optim_state, step_size=inf))
    with pytest.warns(NonFiniteLossWarning, match="4 of 4 steps"):
        result = svi.run(jax.random.PRNGKey(1), 4, X, progress_bar=False, init_state=state)
    assert not _changed(svi.get_params(state), result.params)


def test_run_warns_about_refused_steps_and_keeps_the_parameters():
    svi = AlternatingSVI(model, guide, optax.adam(0.1), optax.adam(0.1), ReweightedWakeSleep(3))
    bad = X.at[0].set(jnp.inf)
    state = svi.init(jax.random.PRNGKey(0), X)  # eagerly, NumPyro would reject the inf
    with pytest.warns(NonFiniteLossWarning, match="3 of 3 steps"):
        result = svi.run(jax.random.PRNGKey(0), 3, bad, progress_bar=False, init_state=state)
    assert not _changed(svi.get_params(state), result.params)
    assert int(result.state.phase) == 0


@pytest.mark.slow
def test_alternating_wake_sleep_trains_a_sigmoid_belief_net_on_a_scaled_mini_batch(bars_setup):
    images, machine, nats = bars_setup
    loss = WakeSleep(num_particles=1, num_sleep_particles=10, alternate="guide_first")
    svi = AlternatingSVI(machine.model, machine.guide, optax.adam(0.03), optax.adam(0.03), loss)
    state = svi.init(jax.random.PRNGKey(0), images[:50], num_data=100)
    assert int(state.phase) == 1  # guide first
    before = nats(svi.get_params(state))
    # a mini-batch of 50 of the 100 images: the plate scales it by 2
    result = svi.run(
        jax.random.PRNGKey(0), 300, images[:50], num_data=100, progress_bar=True, init_state=state
    )
    assert result.losses.shape == (300,)
    after = nats(result.params)
    assert after < before - 3.0, (before, after)
