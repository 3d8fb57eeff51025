"""NumPyro's sparse wake-sleep (``sparsity=Sparsity(...)``) and RWS-DReG (``wake_phi="dreg"``).

The checks mirror ``tests/pyro/test_pyro_sparsity_dreg.py``, in float32 (so values agree to
``1e-5`` relative rather than to float64 round-off):

**Sparsity** (:mod:`helpers.sparsity_dreg_cases`). With a one-layer Helmholtz guide
``ρ̂_j = mean_b sigmoid(V x_b + c)_j`` is deterministic: ``loss.terms`` must report
``weight · N · Σ_j KL(Bern(target) ‖ Bern(ρ̂_j))`` and the mean of ``ρ̂`` as computed by hand,
and at the same key the recognition gradient of ``loss`` with sparsity minus the one without
must be ``jax.grad`` of the hand penalty, the generative gradient unchanged. Two layers: the
upper layer's ``ρ̂`` averages over the particles' draws of ``h1`` (read from the same
evaluation). ``sites=`` restricts the penalty; ``num_data=N`` scales it by ``N``; a model
phase carries no penalty gradient, a guide phase does.

**RWS-DReG** on the linear-Gaussian model with one guide parameter triple per datapoint
(4 observed values × 1000 replicas): score and DReG means match the exact ``K = 5``
expectation (a 1-D integral) within 4 standard errors, ``Var(score) / Var(DReG)`` exceeds 2
at 4 standard errors (measured 3 to 17), DReG is zero at the exact guide (to float32
round-off), and the expectations hold mixed with sleep and under plate sub-sampling —
vectorised (``vmap``) and sequential (``lax.map``) particles, all four configurations of one
kind compiled together (:func:`~helpers.sparsity_dreg_cases.numpyro_runs`).

**Digits** (slow): 1000 jitted RWS steps (``K = 5``, batches of 50, 64-16 machine); a sparse
run (target 0.05, weight 10) ends with mean activation within 0.01 of its target and every
unit below 1.5 × target (measured 0.054, units 0.043 to 0.068; seeds 1-4: means 0.052 to
0.055, largest unit 0.065); an unconstrained run ends above 0.4 (measured 0.66).

Every evaluation is jitted: NumPyro's eager execution of these programs costs seconds per
call, a compilation one to three; the slow marks sit on the checks that would compile
evaluations of their own beyond the core ones (the two-layer check with sequential particles,
``WakeSleep`` and JSA with sparsity, the guide phase, ``K = 1000``, the digits).
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
from helpers import sparsity_dreg_cases as cases
from jax import lax, random
from numpyro.infer import SVI

import numpyro_wakesleep.losses as losses_module
from numpyro_wakesleep import (
    JointStochasticApproximation,
    ReweightedWakeSleep,
    Sparsity,
    WakeSleep,
)
from numpyro_wakesleep.chains import CHAINS
from numpyro_wakesleep.helmholtz import HelmholtzMachine

Z_MAX = cases.Z_MAX
K = cases.NUM_PARTICLES
TARGET, WEIGHT = cases.TARGET, cases.WEIGHT
RTOL = 1e-5  # float32
OBJECTIVES = {
    "rws": lambda **kw: ReweightedWakeSleep(num_particles=3, **kw),
    "ws": lambda **kw: WakeSleep(num_particles=2, **kw),
    "jsa": lambda **kw: JointStochasticApproximation(num_particles=3, **kw),
}
VECTORIZE = pytest.mark.parametrize("vectorize", [True, False], ids=["vectorised", "sequential"])
#: Sequential particles compile another evaluation (2 to 3 s): slow.
VECTORIZE_SEQUENTIAL_SLOW = pytest.mark.parametrize(
    "vectorize",
    [True, pytest.param(False, marks=pytest.mark.slow)],
    ids=["vectorised", "sequential"],
)


# ---------------------------------------------------------------------------------------------
# sparsity: helpers
# ---------------------------------------------------------------------------------------------
def machine(hidden: tuple[int, ...]) -> tuple[HelmholtzMachine, dict]:
    """A machine and its parameters, the recognition weights from :func:`cases.layer_weights`."""
    return cases.numpyro_machine(hidden)


def batch() -> jnp.ndarray:
    return jnp.asarray(cases.binary_data(), jnp.float32)


def recognition(params: dict, layer: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    return (
        params[f"helmholtz_recognition.{layer}.weight"],
        params[f"helmholtz_recognition.{layer}.bias"],
    )


def kl(target: float, rho):
    return target * jnp.log(target / rho) + (1 - target) * jnp.log((1 - target) / (1 - rho))


def evaluate(
    with_penalty, without, helmholtz, params, x, *args, phase="both", seed=3, capture=None
):
    """At one key, jitted together: the terms with sparsity (and ``capture()`` called right
    after them, to read the evaluation's traces), and the gradients of
    ``loss_for_phase(phase)`` with and without sparsity (JSA's empty chains in
    ``param_map``)."""
    key = random.PRNGKey(seed)
    state = {}
    if isinstance(with_penalty, JointStochasticApproximation):
        state = {CHAINS: with_penalty.init_chains(key, params, helmholtz.model, helmholtz.guide, x)}

    def grad(loss, p):
        def value(q):
            out = loss.loss_for_phase(
                phase, key, {**q, **state}, helmholtz.model, helmholtz.guide, x, *args
            )
            return out["loss"]

        return jax.grad(value)(p)

    @jax.jit
    def run(p):
        terms = with_penalty.terms(key, {**p, **state}, helmholtz.model, helmholtz.guide, x, *args)
        captured = capture() if capture is not None else None
        return terms, captured, grad(with_penalty, p), grad(without, p)

    terms, captured, grads, plain = run(params)
    terms = {name: float(v) for name, v in terms.items()}
    return (terms, grads, plain) if capture is None else (terms, captured, grads, plain)


@pytest.fixture
def h1_draws(monkeypatch):
    """A function that returns the ``h1`` draws of the last wake pass (every wake pass is
    asked to keep its draws)."""
    wakes = []
    real = losses_module.importance_traces

    def spy(*args, **kwargs):
        wakes.append(real(*args, **{**kwargs, "keep_draws": True}))
        return wakes[-1]

    monkeypatch.setattr(losses_module, "importance_traces", spy)
    return lambda: wakes[-1].particle_values["h1"]


def assert_penalty_gradient(grads, plain, hand, what: str) -> None:
    """``grads − plain`` equals ``hand`` on the parameters ``hand`` names, to float32."""
    for name, expected in hand.items():
        difference = grads[name] - plain[name]
        scale = float(jnp.abs(grads[name]).max() + jnp.abs(plain[name]).max()) + 1.0
        assert jnp.allclose(difference, expected, rtol=0.0, atol=RTOL * scale), (what, name)


def assert_unchanged(grads, plain, names, what: str) -> None:
    for name in names:
        scale = float(jnp.abs(plain[name]).max()) + 1.0
        assert jnp.allclose(grads[name], plain[name], rtol=0.0, atol=1e-6 * scale), (what, name)


GENERATIVE = lambda params: [n for n in params if "generative" in n]  # noqa: E731


# ---------------------------------------------------------------------------------------------
# sparsity: value and gradient against the hand computation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "objective, vectorize",
    [
        ("rws", True),
        ("rws", False),
        pytest.param("ws", True, marks=pytest.mark.slow),
        pytest.param("jsa", True, marks=pytest.mark.slow),
    ],
)
def test_one_layer_penalty_value_and_gradient_match_the_hand_computation(objective, vectorize):
    helmholtz, params = machine((6,))
    x = batch()
    terms, grads, plain = evaluate(
        OBJECTIVES[objective](sparsity=Sparsity(TARGET, WEIGHT), vectorize_particles=vectorize),
        OBJECTIVES[objective](vectorize_particles=vectorize),
        helmholtz,
        params,
        x,
    )
    rho_np = cases.one_layer_activation(
        np.asarray(x), *cases.layer_weights((cases.NUM_VISIBLE, 6))[0]
    )
    expected = WEIGHT * len(x) * cases.kl_bernoulli(TARGET, rho_np).sum()
    assert np.abs(rho_np - TARGET).min() > 0.04 and np.ptp(rho_np) > 0.3, rho_np
    assert terms["sparsity"] == pytest.approx(expected, rel=RTOL)
    assert terms["mean_activation"] == pytest.approx(rho_np.mean(), rel=RTOL)

    def penalty(p):
        weight, bias = recognition(p, 0)
        return WEIGHT * len(x) * kl(TARGET, jax.nn.sigmoid(x @ weight.T + bias).mean(0)).sum()

    assert float(penalty(params)) == pytest.approx(expected, rel=RTOL)
    hand = {name: g for name, g in jax.grad(penalty)(params).items() if "recognition" in name}
    assert float(jnp.abs(hand["helmholtz_recognition.0.weight"]).max()) > 10.0
    assert_penalty_gradient(grads, plain, hand, "one-layer penalty gradient")
    assert_unchanged(grads, plain, GENERATIVE(params), "generative gradient")


@VECTORIZE_SEQUENTIAL_SLOW
def test_two_layer_activation_averages_the_particles_draws(h1_draws, vectorize):
    """``ρ̂`` of ``h2`` is ``mean_{k,b} sigmoid(V₂ h₁[k, b] + c₂)`` over the step's own draws."""
    helmholtz, params = machine(cases.HIDDEN)
    x = batch()
    num_particles = 4
    terms, h1, grads, plain = evaluate(
        ReweightedWakeSleep(
            num_particles, sparsity=Sparsity(TARGET, WEIGHT), vectorize_particles=vectorize
        ),
        ReweightedWakeSleep(num_particles, vectorize_particles=vectorize),
        helmholtz,
        params,
        x,
        capture=h1_draws,
    )
    assert h1.shape == (num_particles, len(x), cases.HIDDEN[0])
    assert not jnp.array_equal(h1[0], h1[1])

    def penalty(p):
        (w1, c1), (w2, c2) = recognition(p, 0), recognition(p, 1)
        rho1 = jax.nn.sigmoid(x @ w1.T + c1).mean(0)
        rho2 = jax.nn.sigmoid(h1 @ w2.T + c2).mean((0, 1))
        return WEIGHT * len(x) * (kl(TARGET, rho1).sum() + kl(TARGET, rho2).sum()), (rho1, rho2)

    (value, (rho1, rho2)), hand = jax.value_and_grad(penalty, has_aux=True)(params)
    assert terms["sparsity"] == pytest.approx(float(value), rel=RTOL)
    assert terms["mean_activation"] == pytest.approx(
        float(jnp.concatenate([rho1, rho2]).mean()), rel=RTOL
    )
    w2, c2 = recognition(params, 1)
    alone = jax.nn.sigmoid(h1[0] @ w2.T + c2).mean(0)  # one particle's draws: another value
    assert float(jnp.abs((kl(TARGET, alone) - kl(TARGET, rho2)).sum())) * WEIGHT * len(x) > 1.0
    hand = {name: g for name, g in hand.items() if "recognition" in name}
    assert_penalty_gradient(grads, plain, hand, "two-layer penalty gradient")


def test_sites_selects_one_layer(h1_draws):
    """``sites="h2"``: the upper layer only (its ``ρ̂`` depends on the particles), so the
    first layer's recognition weights get no penalty gradient."""
    helmholtz, params = machine(cases.HIDDEN)
    x = batch()
    # grads: h2's penalty; plain: h1's
    terms, h1, grads, plain = evaluate(
        ReweightedWakeSleep(3, sparsity=Sparsity(TARGET, WEIGHT, sites="h2")),
        ReweightedWakeSleep(3, sparsity=Sparsity(TARGET, WEIGHT, sites=("h1",))),
        helmholtz,
        params,
        x,
        capture=h1_draws,
    )
    w2, c2 = recognition(params, 1)
    rho2 = jax.nn.sigmoid(h1 @ w2.T + c2).mean((0, 1))
    assert terms["sparsity"] == pytest.approx(
        WEIGHT * len(x) * float(kl(TARGET, rho2).sum()), rel=RTOL
    )
    assert terms["mean_activation"] == pytest.approx(float(rho2.mean()), rel=RTOL)

    def h1_penalty(p):
        weight, bias = recognition(p, 0)
        return WEIGHT * len(x) * kl(TARGET, jax.nn.sigmoid(x @ weight.T + bias).mean(0)).sum()

    # layer 0: grads has no penalty gradient, plain h1's; layer 1: h2's penalty gradient
    hand = jax.grad(h1_penalty)(params)
    minus_h1 = {name: -hand[name] for name in hand if "recognition.0" in name}
    assert_penalty_gradient(grads, plain, minus_h1, "sites='h2' leaves layer 0 alone")
    assert not jnp.allclose(
        grads["helmholtz_recognition.1.weight"], plain["helmholtz_recognition.1.weight"]
    )


def test_a_mini_batch_scales_the_penalty_to_the_data_set():
    """``model(x, num_data=N)``: the batch stands for ``N`` datapoints, so the penalty is
    ``weight · N · Σ KL``."""
    helmholtz, params = machine((6,))
    x = batch()
    terms, grads, plain = evaluate(
        ReweightedWakeSleep(3, sparsity=Sparsity(TARGET, WEIGHT)),
        ReweightedWakeSleep(3),
        helmholtz,
        params,
        x,
        cases.NUM_DATA,
    )

    def penalty(p):
        weight, bias = recognition(p, 0)
        rho = jax.nn.sigmoid(x @ weight.T + bias).mean(0)
        return WEIGHT * cases.NUM_DATA * kl(TARGET, rho).sum()

    assert terms["sparsity"] == pytest.approx(float(penalty(params)), rel=RTOL)
    hand = {n: g for n, g in jax.grad(penalty)(params).items() if "recognition" in n}
    assert_penalty_gradient(grads, plain, hand, "sub-sampled penalty gradient")


def test_a_model_phase_carries_no_penalty_gradient():
    """``loss_for_phase("model")`` (what :class:`~numpyro_wakesleep.AlternatingSVI`'s model
    steps differentiate) reports the penalty but gives the guide no gradient."""
    helmholtz, params = machine((6,))
    x = batch()
    loss = ReweightedWakeSleep(3, sparsity=Sparsity(TARGET, WEIGHT))
    key = random.PRNGKey(3)

    @jax.jit
    def model_phase(p):
        def value(q):
            return loss.loss_for_phase("model", key, q, helmholtz.model, helmholtz.guide, x)["loss"]

        return jax.grad(value)(p)

    grads = model_phase(params)
    for name in params:
        if "recognition" in name:
            assert float(jnp.abs(grads[name]).max()) == 0.0, name
        else:
            assert float(jnp.abs(grads[name]).max()) > 0.0, name


@pytest.mark.slow
def test_a_guide_phase_carries_the_penalty_gradient():
    helmholtz, params = machine((6,))
    x = batch()
    _, grads, plain = evaluate(
        ReweightedWakeSleep(3, sparsity=Sparsity(TARGET, WEIGHT)),
        ReweightedWakeSleep(3),
        helmholtz,
        params,
        x,
        phase="guide",
    )

    def penalty(p):
        weight, bias = recognition(p, 0)
        return WEIGHT * len(x) * kl(TARGET, jax.nn.sigmoid(x @ weight.T + bias).mean(0)).sum()

    hand = {n: g for n, g in jax.grad(penalty)(params).items() if "recognition" in n}
    assert_penalty_gradient(grads, plain, hand, "guide-phase penalty gradient")
    for name in params:
        if "generative" in name:
            assert float(jnp.abs(grads[name]).max()) == 0.0, name


# ---------------------------------------------------------------------------------------------
# errors (raised while tracing, before anything is compiled)
# ---------------------------------------------------------------------------------------------
def mixed_programs():
    """A model and guide with a Bernoulli latent ``h`` and a Normal latent ``u``."""

    def model(x):
        with numpyro.plate("data", len(x)):
            h = numpyro.sample("h", dist.Bernoulli(0.3))
            u = numpyro.sample("u", dist.Normal(0.0, 1.0))
            numpyro.sample("x", dist.Normal(u + h, 1.0), obs=x)

    def guide(x):
        logit = numpyro.param("logit", 0.0)
        with numpyro.plate("data", len(x)):
            numpyro.sample("h", dist.Bernoulli(logits=logit))
            numpyro.sample("u", dist.Normal(x / 2, 1.0))

    return model, guide, jnp.array([0.5, -1.0, 2.0]), {"logit": jnp.asarray(0.0)}


def traced_loss(loss, model, guide, x, params):
    """``loss.loss`` traced under ``jit`` (errors surface while tracing)."""
    return jax.jit(lambda p: loss.loss(random.PRNGKey(0), p, model, guide, x)).lower(params)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target": 0.0}, "target"),
        ({"target": 1.0}, "target"),
        ({"target": -0.2}, "target"),
        ({"target": 1.5}, "target"),
        ({"target": math.nan}, "target"),
        ({"target": "0.05"}, "target"),
        ({"weight": -1.0}, "weight"),
        ({"weight": math.inf}, "weight"),
        ({"sites": ()}, "sites"),
        ({"sites": ("h1", 2)}, "sites"),
    ],
)
def test_invalid_sparsity_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sparsity(**kwargs)


@pytest.mark.parametrize(
    "objective", [ReweightedWakeSleep, WakeSleep, JointStochasticApproximation]
)
@pytest.mark.parametrize("value", [0.05, {"target": 0.05}, "sparse"])
def test_sparsity_must_be_a_sparsity(objective, value):
    with pytest.raises(ValueError, match=r"sparsity must be None or Sparsity\("):
        objective(sparsity=value)


@pytest.mark.parametrize(
    "sites, match",
    [
        (("u",), r"'u' \(not Bernoulli\)"),
        (("nope",), r"'nope' \(not a guide site\)"),
        (("x",), r"'x' \(not a guide site\)"),
        (("h", "u"), r"'u' \(not Bernoulli\)"),
    ],
)
def test_named_sites_must_be_bernoulli_latents_of_the_guide(sites, match):
    model, guide, x, params = mixed_programs()
    loss = ReweightedWakeSleep(2, sparsity=Sparsity(sites=sites))
    with pytest.raises(ValueError, match=match) as error:
        traced_loss(loss, model, guide, x, params)
    assert "['h']" in str(error.value)
    traced_loss(ReweightedWakeSleep(2, sparsity=Sparsity(sites="h")), model, guide, x, params)


def test_a_guide_without_bernoulli_latents_is_refused():
    model, guide, x, params = cases.numpyro_programs(replicas=2)
    with pytest.raises(ValueError, match=r"has none \(its latent sites: \['z'\]\)"):
        traced_loss(ReweightedWakeSleep(2, sparsity=Sparsity()), model, guide, x, params)


@pytest.mark.parametrize("value", ["reinforce", "DReG", None, 1])
def test_wake_phi_must_be_score_or_dreg(value):
    with pytest.raises(ValueError, match="wake_phi must be 'score'"):
        ReweightedWakeSleep(wake_phi=value)


def test_dreg_names_the_sites_it_cannot_reparameterise():
    helmholtz, params = machine(cases.HIDDEN)
    loss = ReweightedWakeSleep(3, wake_phi="dreg")
    with pytest.raises(ValueError, match=r"\['h1', 'h2'\] cannot be reparameterised"):
        traced_loss(loss, helmholtz.model, helmholtz.guide, batch(), params)
    model, guide, y, mixed = mixed_programs()
    with pytest.raises(ValueError, match=r"\['h'\] cannot be reparameterised") as error:
        traced_loss(ReweightedWakeSleep(2, wake_phi="dreg"), model, guide, y, mixed)
    assert "'u'" not in str(error.value)
    traced_loss(ReweightedWakeSleep(2), model, guide, y, mixed)


# ---------------------------------------------------------------------------------------------
# RWS-DReG against the exact finite-K expectation
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    return cases.expected_grads(K)


@VECTORIZE
def test_score_and_dreg_have_the_exact_finite_k_mean(expected, vectorize):
    runs = cases.numpyro_runs(vectorize)  # shared with the cross-backend test
    for estimator in ("score", "dreg"):
        z = cases.z_scores(runs[estimator], expected[estimator])
        assert np.all(np.abs(z) < Z_MAX), (estimator, z)
    z = cases.two_sample_z(runs["score"], runs["dreg"])
    assert np.all(np.abs(z) < Z_MAX), z
    # the check tells K = 5 from K = ∞: the closed-form limit is many standard errors away
    _, se = cases.mean_and_se(runs["dreg"])
    assert np.max(np.abs(cases.limit_wake_phi_grad() - expected["dreg"]) / se) > 10 * Z_MAX


@VECTORIZE
def test_dreg_has_a_smaller_variance(vectorize):
    runs = cases.numpyro_runs(vectorize)
    log_ratio, se = cases.log_variance_ratio(runs["score"], runs["dreg"])
    # Var(score) / Var(DReG) > 2 at 4 standard errors, for every parameter and observed value
    # (measured: 3 to 17)
    assert np.all(log_ratio - Z_MAX * se > np.log(2.0)), (np.exp(log_ratio), se)


def test_dreg_is_exactly_zero_at_the_exact_guide():
    """With ``q = p(z|x)`` every ``log w`` is ``log p(x)``: ``∂log w/∂z = 0`` for every sample.
    The score estimator's mean is zero too, but not its draws."""
    runs = cases.numpyro_runs(True, "exact")  # float32: ∂log w/∂z is 0 up to round-off
    assert np.abs(runs["dreg"]).max() < 1e-4
    assert np.abs(runs["subsampled"]).max() < 1e-4
    assert np.all(runs["score"].reshape(-1, 3).std(0) > 0.2)


@VECTORIZE
def test_dreg_mixed_with_sleep(expected, vectorize):
    """``insomnia = 1/2``: the guide follows ``½ wake-φ (DReG) + ½ sleep-φ``."""
    draws = cases.numpyro_runs(vectorize)["mixed"]
    z = cases.z_scores(draws, expected["mixed"])
    assert np.all(np.abs(z) < Z_MAX), z
    assert np.max(np.abs(cases.z_scores(draws, expected["dreg"]))) > 2 * Z_MAX  # sleep is in it


@VECTORIZE
def test_dreg_under_subsampling(expected, vectorize):
    """With ``subsample_size = N/4`` a datapoint is in the batch with probability 1/4 and its
    gradient then scaled by 4, so each datapoint's expected gradient is unchanged."""
    draws = cases.numpyro_runs(vectorize)["subsampled"]
    assert (draws[..., 1] != 0).sum() == cases.REPEATS * cases.SUBSAMPLE
    z = cases.z_scores(draws, expected["subsampled"])
    assert np.all(np.abs(z) < Z_MAX), z
    # without the N/B scale the mean would be a quarter of it
    assert np.max(np.abs(cases.z_scores(draws, expected["subsampled"] / 4))) > 2 * Z_MAX


@pytest.mark.slow
def test_both_estimators_approach_the_closed_form_limit_at_large_k():
    exact_large = cases.exact_wake_phi_grad(cases.LARGE_K)
    limit = cases.limit_wake_phi_grad()
    bias = np.abs(exact_large - limit)
    assert bias.max() < 0.01
    model, guide, x, params = cases.numpyro_programs(replicas=100)
    losses = {e: (ReweightedWakeSleep(cases.LARGE_K, wake_phi=e), ()) for e in ("score", "dreg")}
    grads = cases.numpyro_guide_grad_function(losses, model, guide, x)
    runs = [grads(params, key) for key in random.split(random.PRNGKey(5), 10)]
    for estimator in losses:
        draws = cases.per_type(np.stack([np.asarray(run[estimator]) for run in runs]))
        mean, se = cases.mean_and_se(draws)
        assert np.all(np.abs(mean - limit) < Z_MAX * se + bias), (estimator, mean, limit, se)


# ---------------------------------------------------------------------------------------------
# training on the digits
# ---------------------------------------------------------------------------------------------
DIGITS_STEPS, DIGITS_BATCH, DIGITS_HIDDEN = 1000, 50, 16
DIGITS_TARGET, DIGITS_WEIGHT = 0.05, 10.0


@pytest.mark.slow
def test_sparse_training_on_digits_reaches_its_target():
    pytest.importorskip("sklearn")
    from wakesleep.trainer.datasets import load_dataset

    images = jnp.asarray(load_dataset("digits").train, jnp.float32)
    num_data = len(images)
    helmholtz = HelmholtzMachine(images.shape[1], (DIGITS_HIDDEN,))
    activation = {}
    for name, sparsity in (
        ("sparse", Sparsity(DIGITS_TARGET, DIGITS_WEIGHT)),
        ("unconstrained", None),
    ):
        loss = ReweightedWakeSleep(5, sparsity=sparsity)
        svi = SVI(helmholtz.model, helmholtz.guide, optax.adam(0.01), loss=loss)
        state = svi.init(random.PRNGKey(0), images[:DIGITS_BATCH], num_data=num_data)

        def step(carry, _, svi=svi):
            state, key = carry
            key, draw = random.split(key)
            index = random.randint(draw, (DIGITS_BATCH,), 0, num_data)
            state, value = svi.update(state, images[index], num_data=num_data)
            return (state, key), value

        run = jax.jit(lambda carry, step=step: lax.scan(step, carry, None, length=DIGITS_STEPS))
        (state, _), _ = run((state, random.PRNGKey(1)))
        params = svi.get_params(state)
        weight, bias = recognition(params, 0)
        rho = jax.nn.sigmoid(images @ weight.T + bias).mean(0)
        activation[name] = rho
        # the loss reports that activation, on the full data
        report = ReweightedWakeSleep(2, sparsity=Sparsity())
        terms = jax.jit(
            lambda p, report=report: report.terms(
                random.PRNGKey(2), p, helmholtz.model, helmholtz.guide, images
            )
        )(params)
        assert float(terms["mean_activation"]) == pytest.approx(float(rho.mean()), rel=1e-5)
    sparse, free = activation["sparse"], activation["unconstrained"]
    assert abs(float(sparse.mean()) - DIGITS_TARGET) < 0.01, sparse
    assert float(sparse.max()) < 1.5 * DIGITS_TARGET, sparse
    assert float(free.mean()) > 0.4, free
