"""NumPyro's ``JointStochasticApproximation`` (JSA) against exact answers.

**The exact case** (:mod:`helpers.jsa_cases`): ``z ~ Categorical(uniform over 3)``,
``x | z ~ Normal(mu[z], 1)``, a fixed poor guide ``Categorical(softmax(1, 0, −1))``, and four
observed values replicated ``REPLICAS = 1000`` times, so that every replica has its own
independent chains. ``mu`` is a ``(REPLICAS, 3)`` parameter whose rows all equal
``(−1, 0, 1)``: the gradient of row ``r`` is replica ``r``'s own gradient, so its mean over
the independent replicas has an honest standard error. Parameters are never updated; the
chains travel in the SVI state (``loss.init_state``) through a jitted step that
differentiates the loss with ``jax.grad`` (the chains in ``param_map``, as SVI passes them).

- The chains' values after :func:`~helpers.jsa_cases.burn_in` steps (derived from the exact
  kernel: the residual non-centrality of the test is ≤ 0.01) pass Pearson's chi-square test
  against the exact posterior at level 1e-3; the same test rejects the posterior under
  perturbed parameters and the guide's law at p < 1e-6 (its power is computed to exceed
  0.9999), and after one step it accepts the kernel's exact one-step law and rejects the
  posterior.
- JSA's θ-gradient averaged over 20 steps after burn-in matches the exact ``∇ log p(x)``
  within 4 standard errors; RWS with ``K = 2`` misses it by many standard errors and matches
  its own exact expectation (all ``3²`` proposal pairs enumerated).
- The acceptance rate matches the kernel's exact expectation within 4 standard errors.

Vectorised (``vmap``) and sequential (``lax.map``) particles draw the same numbers from the
same keys, so their chains agree exactly on the categorical case and their values to float32
round-off; jitted and eager steps agree likewise. The other checks use a small
linear-Gaussian model, whose continuous draws make equalities sharp.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from helpers import jsa_cases as cases
from numpyro import handlers
from numpyro.infer import SVI

from numpyro_wakesleep import AlternatingSVI, JointStochasticApproximation, ReweightedWakeSleep
from numpyro_wakesleep.chains import CHAINS

K = cases.NUM_PARTICLES
BURN_IN = cases.burn_in(K)
GRAD_STEPS = cases.GRAD_STEPS
LEVEL = 1e-3  # false-alarm rate of each goodness-of-fit test
POWER_P = 1e-6  # what a wrong target must reach
Z_MAX = 4.0  # standard errors allowed between an estimate and its exact expectation


# ---------------------------------------------------------------------------------------------
# the exact (categorical) case
# ---------------------------------------------------------------------------------------------
replica_mean_and_se = cases.replica_mean_and_se


# The runs compile two jitted steps (~5 s together, on first use): the tests that read them
# are marked slow.
@pytest.fixture(scope="module")
def runs():
    """JSA (``K = 2``) for ``BURN_IN + GRAD_STEPS`` jitted steps and RWS (``K = 2``) for
    ``GRAD_STEPS`` steps, parameters fixed (:func:`helpers.jsa_cases.numpyro_runs`)."""
    return cases.numpyro_runs()


@pytest.mark.slow
def test_chains_match_the_exact_posterior(runs):
    """(a) Chi-square goodness of fit of 4000 independent chains after burn-in, with power."""
    values = runs[BURN_IN]
    _, p_posterior = cases.pearson(values, cases.posterior())
    _, p_perturbed = cases.pearson(values, cases.posterior(mu=cases.PERTURBED_MU))
    _, p_guide = cases.pearson(values, np.tile(cases.guide_probs(), (cases.NUM_TYPES, 1)))
    assert p_posterior > LEVEL, p_posterior
    assert p_perturbed < POWER_P, p_perturbed
    assert p_guide < POWER_P, p_guide
    perturbed = cases.posterior(mu=cases.PERTURBED_MU)
    assert cases.pearson_power(cases.posterior(), perturbed, POWER_P) > 0.9999


@pytest.mark.slow
def test_first_step_follows_the_exact_kernel(runs):
    """(a) After one step the chains follow ``q P^(K−1)`` (first proposal, then the kernel),
    which the test tells apart from the posterior."""
    values = runs[1]
    _, p_kernel = cases.pearson(values, cases.chain_law(1, K))
    _, p_posterior = cases.pearson(values, cases.posterior())
    assert p_kernel > LEVEL, p_kernel
    assert p_posterior < POWER_P, p_posterior


@pytest.mark.slow
def test_theta_gradient_is_unbiased(runs):
    """(b) JSA's θ-gradient, averaged over steps after burn-in, is ``∇ log p(x)``."""
    mean, se = replica_mean_and_se(runs["grads"])
    exact = cases.marginal_grad().sum(0)
    transient = cases.expected_chain_grad(BURN_IN + 1, GRAD_STEPS, K).sum(0) - exact
    assert np.all(np.abs(transient) < 0.1 * se), (transient, se)
    z = (mean - exact) / se
    assert np.all(np.abs(z) < Z_MAX), f"z-scores {z}, mean {mean}, exact {exact}, se {se}"
    rws_bias = cases.rws_grad(K).sum(0) - exact
    assert np.max(np.abs(rws_bias) / se) > 25 * Z_MAX


@pytest.mark.slow
def test_rws_with_two_particles_is_biased(runs):
    """(b) RWS with ``K = 2``: its average is its enumerated expectation, many standard errors
    from ``∇ log p(x)``."""
    mean, se = replica_mean_and_se(runs["rws"])
    z_expected = (mean - cases.rws_grad(K).sum(0)) / se
    z_exact = (mean - cases.marginal_grad().sum(0)) / se
    assert np.all(np.abs(z_expected) < Z_MAX), f"z-scores {z_expected} against enumeration"
    assert np.max(np.abs(z_exact)) > 25 * Z_MAX, f"z-scores {z_exact} against the exact gradient"


@pytest.mark.slow
def test_acceptance_rate_matches_the_kernel(runs):
    """(d) The mean acceptance rate equals the kernel's exact expectation within 4 se."""
    mean, se = cases.acceptance_moments(BURN_IN + 1, GRAD_STEPS, K)
    measured = float(np.mean(runs["acceptance"]))
    assert abs(measured - mean) < Z_MAX * se, (measured, mean, se)
    at_guide = cases.stationary_acceptance(np.tile(cases.guide_probs(), (cases.NUM_TYPES, 1)))
    assert abs(at_guide - mean) > 25 * Z_MAX * se


@pytest.mark.slow
def test_terms(runs):
    terms = runs["terms"]
    assert set(terms) >= {"loss", "wake_theta", "wake_phi", "acceptance_rate", "chain_age", "ess"}
    assert "valid" not in terms
    assert 0.0 < terms["acceptance_rate"] < 1.0 and terms["chain_age"] >= 0.0
    assert all(math.isfinite(v) for v in terms.values())


@pytest.mark.slow
def test_vectorized_and_sequential_particles_agree(runs):
    """(c) Sequential particles (``lax.map``) from the same key give the vectorised run's chains
    exactly, and its values and gradients to float32 round-off."""
    loss = JointStochasticApproximation(num_particles=K, vectorize_particles=False)
    svi, step = cases.numpyro_grad_stepper(loss)
    state = loss.init_state(svi, jax.random.PRNGKey(0), cases.numpyro_programs()[2])
    for grad_v, value_v, chains_v in runs["first"]:
        state, grad, terms = step(state)
        chains = jax.device_get(state.mutable_state[CHAINS])
        np.testing.assert_array_equal(chains["values"]["z"], chains_v["values"]["z"])
        np.testing.assert_array_equal(chains["age"], chains_v["age"])
        assert float(terms["loss"]) == pytest.approx(value_v, rel=1e-6)
        np.testing.assert_allclose(np.asarray(grad), grad_v, rtol=1e-5, atol=1e-5)
    # successive steps differ, so the comparison can fail
    first, second = (chains["values"]["z"] for _, _, chains in runs["first"])
    assert not np.array_equal(first, second)


# ---------------------------------------------------------------------------------------------
# a small linear-Gaussian model: z ~ N(0, 1), x | z ~ N(z, 1); guide N(a x, 0.9)
# ---------------------------------------------------------------------------------------------
# Every check below uses the same shapes (N = 10, mini-batches of B = 4, K = 2 unless said):
# eager JAX compiles each operation once per shape, so shared shapes keep the module fast.
N, B = 10, 4
XS = jnp.linspace(-1.0, 2.0, N)


def plate_indices(idx):
    """The data plate's sub-sample indices replaced by ``idx`` (none: the plate draws them)."""
    return handlers.substitute(data={} if idx is None else {"data": idx})


def gauss_model(x, subsample_size=None, idx=None):
    with plate_indices(idx), numpyro.plate("data", N, subsample_size=subsample_size) as i:
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x[i])


def gauss_guide(x, subsample_size=None, idx=None):
    a = numpyro.param("a", 0.3)
    with plate_indices(idx), numpyro.plate("data", N, subsample_size=subsample_size) as i:
        numpyro.sample("z", dist.Normal(a * x[i], 0.9))


def gauss_log_densities(z, idx) -> tuple[np.ndarray, np.ndarray]:
    """``log p(x, z)`` and ``log q(z | x)`` at ``a = 0.3``, per datapoint, in float64."""
    z = np.asarray(z, np.float64)
    x = np.asarray(XS, np.float64)[np.asarray(idx)]

    def log_normal(v, mean, sd):
        return -0.5 * ((v - mean) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)

    return log_normal(z, 0.0, 1.0) + log_normal(x, z, 1.0), log_normal(z, 0.3 * x, 0.9)


def gauss_svi(loss, subsample_size=None, optim=None):
    svi = SVI(gauss_model, gauss_guide, optim or optax.sgd(0.0), loss=loss)
    state = loss.init_state(svi, jax.random.PRNGKey(0), XS, subsample_size)
    return svi, state


@pytest.mark.parametrize("subsample_size", [None, B], ids=["full", "mini-batch"])
def test_first_proposal_and_mini_batch_scale(subsample_size):
    """(g), (f) With ``K = 1`` one step leaves each chain of the batch at its first proposal:
    the reported value, the negative IWAE bound of the proposals, is ``N/B Σ −log w`` of the
    chains' new values (continuous draws: a chain elsewhere would change the sum); only the
    batch is seen, every age is 0, and the value equals RWS's at the same key."""
    loss = JointStochasticApproximation(num_particles=1)
    svi, state = gauss_svi(loss, subsample_size)
    params = svi.get_params(state)

    @jax.jit
    def evaluate(key, pm):
        out = loss.loss_with_mutable_state(key, pm, gauss_model, gauss_guide, XS, subsample_size)
        rws = ReweightedWakeSleep(num_particles=1).loss(
            key, params, gauss_model, gauss_guide, XS, subsample_size
        )
        return out["loss"], out["mutable_state"][CHAINS], rws

    value, chains, rws = evaluate(jax.random.PRNGKey(7), {**params, **state.mutable_state})
    (idx,) = np.nonzero(np.asarray(chains["seen"]))
    assert len(idx) == (subsample_size or N)
    assert np.all(np.asarray(chains["age"]) == 0)
    assert np.all(np.asarray(chains["values"]["z"])[~np.asarray(chains["seen"])] == 0)
    log_p, log_q = gauss_log_densities(np.asarray(chains["values"]["z"])[idx], idx)
    assert float(value) == pytest.approx(-N / len(idx) * (log_p - log_q).sum(), rel=1e-5)
    assert float(value) == float(rws)


@pytest.mark.slow
def test_eager_and_jit_agree_and_indices_are_checked():
    """(c), (e), (f) One step with ``K = 2`` on a mini-batch whose plate indices are substituted:
    eagerly and under ``jit`` the same chains and value (to float32 round-off), the value
    being RWS's at the same key (the negative IWAE bound of the same proposals, scaled by
    ``N/B``). An index ≥ N raises eagerly, with the bad index and the range; under jit the
    loss is then NaN."""
    loss = JointStochasticApproximation(num_particles=2)
    svi, state = gauss_svi(loss, B)
    params = svi.get_params(state)
    pm = {**params, **state.mutable_state}
    good, bad = jnp.array([0, 3, 5, 9]), jnp.array([1, 12, 2, 3])

    def jsa(key, idx):
        out = loss.loss_with_mutable_state(key, pm, gauss_model, gauss_guide, XS, B, idx)
        return out["loss"], out["mutable_state"][CHAINS]

    @jax.jit
    def jit_evaluate(key, idx):
        rws = ReweightedWakeSleep(2).loss(key, params, gauss_model, gauss_guide, XS, B, idx)
        return (*jsa(key, idx), rws)

    key = jax.random.PRNGKey(11)
    eager_value, eager_chains = jsa(key, good)
    jit_value, jit_chains, rws = jit_evaluate(key, good)
    assert float(eager_value) == pytest.approx(float(jit_value), rel=1e-6)
    np.testing.assert_array_equal(eager_chains["age"], jit_chains["age"])
    np.testing.assert_allclose(eager_chains["values"]["z"], jit_chains["values"]["z"], rtol=1e-6)
    np.testing.assert_array_equal(np.nonzero(np.asarray(jit_chains["seen"]))[0], good)
    assert float(jit_value) == float(rws)
    other_value, _, other_rws = jit_evaluate(jax.random.PRNGKey(12), good)
    assert float(other_value) == float(other_rws) != float(rws)  # the comparison can fail

    with pytest.raises(ValueError, match=r"indices \[12\] outside 0\.\.9") as info:
        loss.loss(key, pm, gauss_model, gauss_guide, XS, B, bad)
    assert "size 10" in str(info.value) and "'data'" in str(info.value)
    assert math.isnan(float(jit_evaluate(key, bad)[0]))


@pytest.mark.slow
def test_state_continues_identically_from_a_copy():
    """(f) A copy of the SVI state (through host memory) continues exactly like the original;
    the chains are part of it (a state with fresh, unseen chains continues differently). Also
    ``svi.run(..., init_state=...)`` carries the chains."""
    loss = JointStochasticApproximation(num_particles=2)
    svi, state = gauss_svi(loss, B, optax.adam(0.05))
    update = jax.jit(svi.update, static_argnums=2)

    def steps(s, n):
        values = []
        for _ in range(n):
            s, value = update(s, XS, B)
            values.append(float(value))
        return s, values

    state, _ = steps(state, 3)
    assert int(jnp.sum(state.mutable_state[CHAINS]["seen"])) > B
    copy = jax.tree.map(lambda leaf: jnp.asarray(np.array(leaf)), state)
    fresh = state._replace(mutable_state=jax.tree.map(jnp.zeros_like, state.mutable_state))
    (end, values), (copy_end, copy_values), (_, fresh_values) = (
        steps(s, 3) for s in (state, copy, fresh)
    )
    assert values == copy_values
    leaves, copy_leaves = (jax.tree.leaves(jax.device_get(s)) for s in (end, copy_end))
    assert all(np.array_equal(a, b) for a, b in zip(leaves, copy_leaves, strict=True))
    assert fresh_values != values
    assert all(math.isfinite(v) for v in values)
    assert float(svi.get_params(end)["a"]) != pytest.approx(0.3)

    result = svi.run(jax.random.PRNGKey(1), 2, XS, B, init_state=end, progress_bar=False)
    assert np.all(np.isfinite(np.asarray(result.losses)))
    assert int(jnp.sum(result.state.mutable_state[CHAINS]["seen"])) >= int(
        jnp.sum(end.mutable_state[CHAINS]["seen"])
    )
    assert not np.array_equal(
        result.state.mutable_state[CHAINS]["values"]["z"], end.mutable_state[CHAINS]["values"]["z"]
    )


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def global_model(x):
    g = numpyro.sample("g", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", len(x)):
        numpyro.sample("x", dist.Normal(g, 1.0), obs=x)


def global_guide(x):
    numpyro.sample("g", dist.Normal(numpyro.param("m", 0.0), 1.0))


def test_global_latent_is_refused():
    """(e) No plate encloses every site: no per-datapoint chain, and the message says so."""
    loss = JointStochasticApproximation()
    svi = SVI(global_model, global_guide, optax.sgd(0.1), loss=loss)
    with pytest.raises(ValueError, match="global latent") as info:
        loss.init_state(svi, jax.random.PRNGKey(0), XS)
    message = str(info.value)
    assert "data plate" in message and "ReweightedWakeSleep" in message
    alt = AlternatingSVI(global_model, global_guide, optax.sgd(0.1), optax.sgd(0.1), loss=loss)
    with pytest.raises(ValueError, match="global latent"):
        alt.init(jax.random.PRNGKey(0), XS)


def two_plate_model(x):
    with numpyro.plate("rows", 2, dim=-2), numpyro.plate("cols", 5, dim=-1):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def two_plate_guide(x):
    with numpyro.plate("rows", 2, dim=-2), numpyro.plate("cols", 5, dim=-1):
        numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0), 1.0))


def test_two_data_plates_are_refused():
    """(e) Two plates that both enclose every site: the message names them and says how to
    merge them."""
    loss = JointStochasticApproximation(max_plate_nesting=2)
    svi = SVI(two_plate_model, two_plate_guide, optax.sgd(0.1), loss=loss)
    with pytest.raises(ValueError, match=r"\['cols', 'rows'\]") as info:
        loss.init_state(svi, jax.random.PRNGKey(0), jnp.zeros((2, 5)))
    assert "Merge them into one plate" in str(info.value)


def sized_model(x):
    with numpyro.plate("data", len(x)):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def sized_guide(x):
    with numpyro.plate("data", len(x)):
        numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0), 1.0))


def test_data_plate_size_must_not_change():
    """(e) The chains are keyed by the plate's indices: a changed size is refused (under jit
    too: shapes are static), the message giving both sizes and the way to sub-sample."""
    loss = JointStochasticApproximation()
    svi = SVI(sized_model, sized_guide, optax.sgd(0.1), loss=loss)
    state = loss.init_state(svi, jax.random.PRNGKey(0), jnp.zeros(N))
    with pytest.raises(ValueError, match="'data' has size 12") as info:
        jax.jit(svi.update)(state, jnp.zeros(12))
    message = str(info.value)
    assert f"chains for {N} datapoints" in message and "subsample_size" in message


def test_plain_svi_state_without_chains_is_refused():
    """(e) ``svi.update`` on a state from plain ``svi.init``, and ``svi.run`` without
    ``init_state``: the message says to use ``init_state``."""
    loss = JointStochasticApproximation()
    svi = SVI(gauss_model, gauss_guide, optax.sgd(0.1), loss=loss)
    state = svi.init(jax.random.PRNGKey(0), XS)
    with pytest.raises(ValueError, match=r"loss\.init_state\(svi, rng_key") as info:
        jax.jit(svi.update)(state, XS)
    assert "AlternatingSVI.init adds the chains itself" in str(info.value)
    with pytest.raises(ValueError, match=r"init_state=loss\.init_state"):
        svi.run(jax.random.PRNGKey(0), 2, XS, progress_bar=False)


def test_alternating_svi_carries_the_chains():
    """(e) ``AlternatingSVI`` with JSA: ``init`` adds the chains; a model step and then a guide
    step each advance the chains of their batch; a step with an index outside the plate is
    refused under jit (NaN, state kept)."""
    loss = JointStochasticApproximation(num_particles=2)
    alt = AlternatingSVI(gauss_model, gauss_guide, optax.adam(0.05), optax.adam(0.05), loss=loss)
    first, second, bad = jnp.array([0, 1, 2, 3]), jnp.array([4, 5, 6, 3]), jnp.array([7, 12, 8, 9])
    state = alt.init(jax.random.PRNGKey(0), XS, B, first)
    chains = state.mutable_state[CHAINS]
    assert chains["values"]["z"].shape == (N,) and not bool(jnp.any(chains["seen"]))
    update = jax.jit(alt.update, static_argnums=2)
    seen = []
    for idx in (first, second):
        phase = alt.phase(state)
        state, value = update(state, XS, B, idx)
        assert math.isfinite(float(value)), phase
        seen.append(np.nonzero(np.asarray(state.mutable_state[CHAINS]["seen"]))[0].tolist())
    assert seen == [[0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6]]
    assert float(alt.get_params(state)["a"]) != pytest.approx(0.3)  # the guide step moved it

    refused, value = update(state, XS, B, bad)
    assert math.isnan(float(value))
    kept = jax.tree.leaves((state.params, state.mutable_state))
    after = jax.tree.leaves((refused.params, refused.mutable_state))
    assert all(np.array_equal(a, b) for a, b in zip(kept, after, strict=True))
