"""Pyro's sparse wake-sleep (``sparsity=Sparsity(...)``) and RWS-DReG (``wake_phi="dreg"``).

**Sparsity** (:mod:`helpers.sparsity_dreg_cases`, float64). With a one-layer Helmholtz guide
``ρ̂_j = mean_b sigmoid(V x_b + c)_j`` is a deterministic function of the recognition weights,
so the reported penalty must equal ``weight · N · Σ_j KL(Bern(target) ‖ Bern(ρ̂_j))`` computed
by hand, and ``mean_activation`` the mean of ``ρ̂``, to float64 round-off. The penalty enters
the guide update only: at the same seed, the recognition gradient with sparsity minus the one
without is ``torch.autograd.grad`` of the hand penalty, and the generative gradient is
unchanged — for ``ReweightedWakeSleep``, ``WakeSleep`` and ``JointStochasticApproximation``,
vectorised and sequential particles. With two layers ``ρ̂`` of the upper layer averages
``sigmoid(V₂ h₁ + c₂)`` over the particles' draws of ``h₁``: checked against the same traces'
draws. ``sites=`` restricts the penalty to a layer; a mini-batch that stands for ``N``
datapoints scales it by ``N``.

**RWS-DReG** on the linear-Gaussian model with one guide parameter triple per datapoint
(4 observed values × 1000 replicas, so one evaluation gives 1000 independent gradients per
value; 4 evaluations per configuration, shared with the cross-backend test). The exact
expectation of the wake-φ gradient with ``K = 5`` particles is a 1-D integral
(:func:`~helpers.sparsity_dreg_cases.exact_wake_phi_grad`): score and DReG means must both
match it within 4 standard errors (and each other), while it differs from the ``K → ∞``
closed form by up to ~150 of those standard errors (so the check sees finite-K bias).
``Var(score) / Var(DReG)`` must exceed 2 at 4 standard errors for every parameter and value
(measured 3 to 17). At the exact guide DReG's gradient is exactly zero. Mixed with sleep
(``insomnia = 1/2``: ``½ exact wake + ½ closed-form sleep``) and with plate sub-sampling
(``N/4`` per evaluation, scaled by 4) the expectations follow; at ``K = 1000`` both
estimators approach the closed-form ``∇_φ KL(p(z|x) ‖ q)`` (slow). Vectorised and sequential
particles throughout.

**Digits** (slow): 300 RWS steps (``K = 5``, batches of 50, 64-16 machine); a sparse run
(target 0.05, weight 10) ends with mean activation within 0.01 of its target and every unit
below 1.5 × target (measured 0.055, units 0.053 to 0.059); an unconstrained run ends above
0.4 (measured 0.61).
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import sparsity_dreg_cases as cases
from pyro.infer import SVI

import pyro_wakesleep.losses as losses_module
from pyro_wakesleep import JointStochasticApproximation, ReweightedWakeSleep, Sparsity, WakeSleep
from pyro_wakesleep.helmholtz import HelmholtzMachine

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Z_MAX = cases.Z_MAX
K = cases.NUM_PARTICLES
TARGET, WEIGHT = cases.TARGET, cases.WEIGHT
OBJECTIVES = {
    "rws": lambda **kw: ReweightedWakeSleep(num_particles=3, max_plate_nesting=1, **kw),
    "ws": lambda **kw: WakeSleep(num_particles=2, max_plate_nesting=1, **kw),
    "jsa": lambda **kw: JointStochasticApproximation(num_particles=3, max_plate_nesting=1, **kw),
}
VECTORIZE = pytest.mark.parametrize("vectorize", [True, False], ids=["vectorised", "sequential"])


# ---------------------------------------------------------------------------------------------
# sparsity: helpers
# ---------------------------------------------------------------------------------------------
def machine(hidden: tuple[int, ...]) -> HelmholtzMachine:
    """A float64 machine whose recognition weights are :func:`cases.layer_weights`."""
    return cases.pyro_machine(hidden)


def batch() -> torch.Tensor:
    return torch.from_numpy(cases.binary_data())


def kl(target: float, rho: torch.Tensor) -> torch.Tensor:
    return target * torch.log(target / rho) + (1 - target) * torch.log((1 - target) / (1 - rho))


def gradients(loss, helmholtz: HelmholtzMachine, x: torch.Tensor, *args, seed: int = 3, **kw):
    """``(value, {"recognition": [...], "generative": [...]})`` of ``differentiable_loss`` at
    ``seed``: the same seed draws the same particles and dreams with or without sparsity."""
    pyro.set_rng_seed(seed)
    value = loss.differentiable_loss(helmholtz.model, helmholtz.guide, x, *args, **kw)
    parts = {"recognition": helmholtz.recognition, "generative": helmholtz.generative}
    params = {side: list(module.parameters()) for side, module in parts.items()}
    flat = torch.autograd.grad(value, params["recognition"] + params["generative"])
    count = len(params["recognition"])
    return value, {"recognition": flat[:count], "generative": flat[count:]}


def assert_close(actual, expected, what: str, rtol: float = 1e-9) -> None:
    for a, e in zip(actual, expected, strict=True):
        scale = float(e.abs().max()) + 1.0
        assert torch.allclose(a, e, rtol=0.0, atol=rtol * scale), (what, a, e)


# ---------------------------------------------------------------------------------------------
# sparsity: value and gradient against the hand computation
# ---------------------------------------------------------------------------------------------
@VECTORIZE
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_one_layer_penalty_value_and_gradient_match_the_hand_computation(objective, vectorize):
    helmholtz, x = machine((6,)), batch()
    sparsity = Sparsity(target=TARGET, weight=WEIGHT)
    with_penalty = OBJECTIVES[objective](sparsity=sparsity, vectorize_particles=vectorize)
    without = OBJECTIVES[objective](vectorize_particles=vectorize)
    value, grads = gradients(with_penalty, helmholtz, x)
    terms = with_penalty.last_terms
    plain_value, plain = gradients(without, helmholtz, x)

    net = helmholtz.recognition[0]
    rho = torch.sigmoid(x @ net.weight.T + net.bias).mean(0)
    penalty = WEIGHT * len(x) * kl(TARGET, rho).sum()
    rho_np = cases.one_layer_activation(x.numpy(), *cases.layer_weights((cases.NUM_VISIBLE, 6))[0])
    expected = WEIGHT * len(x) * cases.kl_bernoulli(TARGET, rho_np).sum()
    assert penalty.item() == pytest.approx(expected, rel=1e-12)  # the two hand computations
    assert terms["sparsity"] == pytest.approx(expected, rel=1e-12)
    assert terms["mean_activation"] == pytest.approx(rho_np.mean(), rel=1e-12)
    # units away from the target, and unequal: each term of the sum is tested
    assert np.abs(rho_np - TARGET).min() > 0.04 and np.ptp(rho_np) > 0.3, rho_np
    # the value reported is the bound's: guide terms add gradient, not value
    assert value.item() == pytest.approx(plain_value.item(), rel=1e-12)
    # the penalty's gradient reaches the guide only
    hand = torch.autograd.grad(penalty, [net.weight, net.bias])
    difference = [g - p for g, p in zip(grads["recognition"], plain["recognition"], strict=True)]
    assert_close(difference, hand, "recognition gradient of the penalty")
    assert float(hand[0].abs().max()) > 10.0  # a gradient that matters
    assert_close(grads["generative"], plain["generative"], "generative gradient", rtol=1e-12)


@VECTORIZE
def test_two_layer_activation_averages_the_particles_draws(monkeypatch, vectorize):
    """``ρ̂`` of ``h2`` is ``mean_{k,b} sigmoid(V₂ h₁[k, b] + c₂)`` over the step's own draws."""
    wakes = []
    real = losses_module.importance_traces

    def spy(*args, **kwargs):
        wakes.append(real(*args, **kwargs))
        return wakes[-1]

    monkeypatch.setattr(losses_module, "importance_traces", spy)
    helmholtz, x = machine(cases.HIDDEN), batch()
    num_particles = 4
    loss = ReweightedWakeSleep(
        num_particles,
        sparsity=Sparsity(TARGET, WEIGHT),
        vectorize_particles=vectorize,
        max_plate_nesting=1,
    )
    _, grads = gradients(loss, helmholtz, x)
    h1 = wakes[-1].particle_values["h1"]
    assert h1.shape == (num_particles, len(x), cases.HIDDEN[0])
    assert not torch.equal(h1[0], h1[1])  # the particles differ, so the average matters
    _, plain = gradients(
        ReweightedWakeSleep(num_particles, vectorize_particles=vectorize, max_plate_nesting=1),
        helmholtz,
        x,
    )

    low, high = helmholtz.recognition
    rho1 = torch.sigmoid(x @ low.weight.T + low.bias).mean(0)
    rho2 = torch.sigmoid(h1 @ high.weight.T + high.bias).mean((0, 1))
    penalty = WEIGHT * len(x) * (kl(TARGET, rho1).sum() + kl(TARGET, rho2).sum())
    terms = loss.last_terms
    assert terms["sparsity"] == pytest.approx(penalty.item(), rel=1e-12)
    assert terms["mean_activation"] == pytest.approx(torch.cat([rho1, rho2]).mean().item(), 1e-12)
    # one particle's draws alone would give another value
    alone = torch.sigmoid(h1[0] @ high.weight.T + high.bias).mean(0)
    assert (kl(TARGET, alone) - kl(TARGET, rho2)).sum().abs().item() * WEIGHT * len(x) > 1.0
    params = [p for net in helmholtz.recognition for p in (net.weight, net.bias)]
    hand = torch.autograd.grad(penalty, params)
    difference = [g - p for g, p in zip(grads["recognition"], plain["recognition"], strict=True)]
    assert_close(difference, hand, "two-layer penalty gradient")


@pytest.mark.parametrize("site", ["h1", "h2"])
def test_sites_selects_one_layer(site):
    helmholtz, x = machine(cases.HIDDEN), batch()
    other = {"h1": 1, "h2": 0}[site]  # the index of the layer left alone
    loss = ReweightedWakeSleep(
        3, sparsity=Sparsity(TARGET, WEIGHT, sites=site), max_plate_nesting=1
    )
    _, grads = gradients(loss, helmholtz, x)
    terms = loss.last_terms
    _, plain = gradients(ReweightedWakeSleep(3, max_plate_nesting=1), helmholtz, x)
    both = ReweightedWakeSleep(3, sparsity=Sparsity(TARGET, WEIGHT), max_plate_nesting=1)
    gradients(both, helmholtz, x)

    if site == "h1":  # deterministic: the hand value is exact
        net = helmholtz.recognition[0]
        rho = torch.sigmoid(x @ net.weight.T + net.bias).mean(0)
        assert terms["sparsity"] == pytest.approx(
            (WEIGHT * len(x) * kl(TARGET, rho).sum()).item(), 1e-12
        )
        assert terms["mean_activation"] == pytest.approx(rho.mean().item(), rel=1e-12)
    assert 0 < terms["sparsity"] < both.last_terms["sparsity"]
    # the other layer's recognition weights get no penalty gradient
    left_alone = grads["recognition"][2 * other : 2 * other + 2]
    assert_close(left_alone, plain["recognition"][2 * other : 2 * other + 2], "other layer", 1e-12)
    moved = grads["recognition"][2 * (1 - other) : 2 * (1 - other) + 2]
    assert not torch.allclose(moved[0], plain["recognition"][2 * (1 - other)])


@VECTORIZE
def test_a_mini_batch_scales_the_penalty_to_the_data_set(vectorize):
    """``model(x, num_data=N)``: the batch stands for ``N`` datapoints, so the penalty is
    ``weight · N · Σ KL`` (the other guide terms are scaled by ``N/B`` alike)."""
    helmholtz, x = machine((6,)), batch()
    loss = ReweightedWakeSleep(
        3, sparsity=Sparsity(TARGET, WEIGHT), vectorize_particles=vectorize, max_plate_nesting=1
    )
    _, grads = gradients(loss, helmholtz, x, cases.NUM_DATA)
    terms = loss.last_terms
    _, plain = gradients(
        ReweightedWakeSleep(3, vectorize_particles=vectorize, max_plate_nesting=1),
        helmholtz,
        x,
        cases.NUM_DATA,
    )
    net = helmholtz.recognition[0]
    rho = torch.sigmoid(x @ net.weight.T + net.bias).mean(0)
    penalty = WEIGHT * cases.NUM_DATA * kl(TARGET, rho).sum()
    assert terms["sparsity"] == pytest.approx(penalty.item(), rel=1e-12)
    hand = torch.autograd.grad(penalty, [net.weight, net.bias])
    difference = [g - p for g, p in zip(grads["recognition"], plain["recognition"], strict=True)]
    assert_close(difference, hand, "sub-sampled penalty gradient")


def test_penalty_follows_the_phases_of_an_alternating_schedule():
    """Model steps leave the guide alone (penalty reported, no gradient); guide steps add the
    penalty's gradient to the guide's."""
    helmholtz, x = machine((6,)), batch()
    net = helmholtz.recognition[0]
    rho = torch.sigmoid(x @ net.weight.T + net.bias).mean(0)
    hand = torch.autograd.grad(WEIGHT * len(x) * kl(TARGET, rho).sum(), [net.weight, net.bias])
    grads = {}
    for name, sparsity in (("with", Sparsity(TARGET, WEIGHT)), ("without", None)):
        loss = ReweightedWakeSleep(
            3, alternate="model_first", sparsity=sparsity, max_plate_nesting=1
        )
        pyro.set_rng_seed(5)
        loss.loss_and_grads(helmholtz.model, helmholtz.guide, x)  # model phase
        assert net.weight.grad is None
        if sparsity is not None:
            assert loss.last_terms["sparsity"] > 0
        for p in helmholtz.parameters():
            p.grad = None
        loss.loss_and_grads(helmholtz.model, helmholtz.guide, x)  # guide phase
        grads[name] = [net.weight.grad.clone(), net.bias.grad.clone()]
        for p in helmholtz.parameters():
            p.grad = None
    difference = [g - p for g, p in zip(grads["with"], grads["without"], strict=True)]
    assert_close(difference, hand, "guide-phase penalty gradient")


def test_zero_weight_reports_the_activation_and_changes_nothing():
    helmholtz, x = machine((6,)), batch()
    loss = ReweightedWakeSleep(3, sparsity=Sparsity(TARGET, 0.0), max_plate_nesting=1)
    _, grads = gradients(loss, helmholtz, x)
    _, plain = gradients(ReweightedWakeSleep(3, max_plate_nesting=1), helmholtz, x)
    rho = cases.one_layer_activation(x.numpy(), *cases.layer_weights((cases.NUM_VISIBLE, 6))[0])
    assert loss.last_terms["sparsity"] == 0.0
    assert loss.last_terms["mean_activation"] == pytest.approx(rho.mean(), rel=1e-12)
    assert_close(grads["recognition"], plain["recognition"], "zero weight", 1e-12)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def mixed_programs():
    """A model and guide with a Bernoulli latent ``h`` and a Normal latent ``u``."""

    def model(x):
        with pyro.plate("data", len(x)):
            h = pyro.sample("h", dist.Bernoulli(0.3))
            u = pyro.sample("u", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(u + h, 1.0), obs=x)

    def guide(x):
        logit = pyro.param("logit", torch.tensor(0.0))
        with pyro.plate("data", len(x)):
            pyro.sample("h", dist.Bernoulli(logits=logit))
            pyro.sample("u", dist.Normal(x / 2, 1.0))

    return model, guide, torch.tensor([0.5, -1.0, 2.0])


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
    model, guide, x = mixed_programs()
    loss = ReweightedWakeSleep(2, sparsity=Sparsity(sites=sites))
    with pytest.raises(ValueError, match=match) as error:
        loss.differentiable_loss(model, guide, x)
    assert "['h']" in str(error.value)  # says which sites would do
    # the Bernoulli site alone is accepted
    ReweightedWakeSleep(2, sparsity=Sparsity(sites="h")).differentiable_loss(model, guide, x)


def test_a_guide_without_bernoulli_latents_is_refused():
    model, guide, x = cases.pyro_programs(replicas=2)
    loss = ReweightedWakeSleep(2, sparsity=Sparsity())
    with pytest.raises(ValueError, match=r"has none \(its latent sites: \['z'\]\)"):
        loss.differentiable_loss(model, guide, x)


@pytest.mark.parametrize("value", ["reinforce", "DReG", None, 1])
def test_wake_phi_must_be_score_or_dreg(value):
    with pytest.raises(ValueError, match="wake_phi must be 'score'"):
        ReweightedWakeSleep(wake_phi=value)


def test_dreg_names_the_sites_it_cannot_reparameterise():
    helmholtz, x = machine(cases.HIDDEN), batch()
    loss = ReweightedWakeSleep(3, wake_phi="dreg")
    with pytest.raises(ValueError, match=r"\['h1', 'h2'\] cannot be reparameterised"):
        loss.differentiable_loss(helmholtz.model, helmholtz.guide, x)
    model, guide, y = mixed_programs()
    with pytest.raises(ValueError, match=r"\['h'\] cannot be reparameterised") as error:
        ReweightedWakeSleep(2, wake_phi="dreg").differentiable_loss(model, guide, y)
    assert "'u'" not in str(error.value)
    # the score estimator takes the same guide
    ReweightedWakeSleep(2).differentiable_loss(model, guide, y)


# ---------------------------------------------------------------------------------------------
# RWS-DReG against the exact finite-K expectation
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    return cases.expected_grads(K)


@VECTORIZE
def test_score_and_dreg_have_the_exact_finite_k_mean(expected, vectorize):
    runs = cases.pyro_runs(vectorize)  # shared with the cross-backend test
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
    runs = cases.pyro_runs(vectorize)
    log_ratio, se = cases.log_variance_ratio(runs["score"], runs["dreg"])
    # Var(score) / Var(DReG) > 2 at 4 standard errors, for every parameter and observed value
    # (measured: 3 to 17)
    assert np.all(log_ratio - Z_MAX * se > np.log(2.0)), (np.exp(log_ratio), se)


def test_dreg_is_exactly_zero_at_the_exact_guide():
    """With ``q = p(z|x)`` every ``log w`` is ``log p(x)``: ``∂log w/∂z = 0`` for every sample.
    The score estimator's mean is zero too, but not its draws."""
    runs = cases.pyro_runs(True, "exact")
    assert np.abs(runs["dreg"]).max() < 1e-12
    assert np.abs(runs["subsampled"]).max() < 1e-12
    assert np.all(runs["score"].reshape(-1, 3).std(0) > 0.2)


@VECTORIZE
def test_dreg_mixed_with_sleep(expected, vectorize):
    """``insomnia = 1/2``: the guide follows ``½ wake-φ (DReG) + ½ sleep-φ``."""
    draws = cases.pyro_runs(vectorize)["mixed"]
    z = cases.z_scores(draws, expected["mixed"])
    assert np.all(np.abs(z) < Z_MAX), z
    assert np.max(np.abs(cases.z_scores(draws, expected["dreg"]))) > 2 * Z_MAX  # sleep is in it


@VECTORIZE
def test_dreg_under_subsampling(expected, vectorize):
    """With ``subsample_size = N/4`` a datapoint is in the batch with probability 1/4 and its
    gradient then scaled by 4, so each datapoint's expected gradient is unchanged."""
    draws = cases.pyro_runs(vectorize)["subsampled"]
    assert (draws[..., 1] != 0).sum() == cases.REPEATS * cases.SUBSAMPLE
    z = cases.z_scores(draws, expected["subsampled"])
    assert np.all(np.abs(z) < Z_MAX), z
    # without the N/B scale the mean would be a quarter of it
    assert np.max(np.abs(cases.z_scores(draws, expected["subsampled"] / 4))) > 2 * Z_MAX


@pytest.mark.slow
def test_both_estimators_approach_the_closed_form_limit_at_large_k():
    """At ``K = 1000`` score and DReG means are within 4 SE of ``∇_φ KL(p(z|x) ‖ q)`` plus the
    remaining finite-K bias (computed: below 0.01)."""
    exact_large = cases.exact_wake_phi_grad(cases.LARGE_K)
    limit = cases.limit_wake_phi_grad()
    bias = np.abs(exact_large - limit)
    assert bias.max() < 0.01
    model, guide, x = cases.pyro_programs(replicas=100)
    pyro.set_rng_seed(5)
    for estimator in ("score", "dreg"):
        loss = ReweightedWakeSleep(cases.LARGE_K, wake_phi=estimator, max_plate_nesting=1)
        draws = cases.per_type(cases.pyro_guide_grads(loss, model, guide, x, 10))
        mean, se = cases.mean_and_se(draws)
        assert np.all(np.abs(mean - limit) < Z_MAX * se + bias), (estimator, mean, limit, se)


# ---------------------------------------------------------------------------------------------
# training on the digits
# ---------------------------------------------------------------------------------------------
DIGITS_STEPS, DIGITS_BATCH, DIGITS_HIDDEN = 300, 50, 16
DIGITS_TARGET, DIGITS_WEIGHT = 0.05, 10.0


@pytest.mark.slow
def test_sparse_training_on_digits_reaches_its_target():
    pytest.importorskip("sklearn")
    from wakesleep.trainer.datasets import load_dataset

    images = torch.tensor(load_dataset("digits").train, dtype=torch.float32)
    num_data = len(images)
    activation = {}
    for name, sparsity in (
        ("sparse", Sparsity(DIGITS_TARGET, DIGITS_WEIGHT)),
        ("unconstrained", None),
    ):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        helmholtz = HelmholtzMachine(images.shape[1], (DIGITS_HIDDEN,))
        loss = ReweightedWakeSleep(5, sparsity=sparsity, max_plate_nesting=1)
        svi = SVI(helmholtz.model, helmholtz.guide, pyro.optim.Adam({"lr": 0.01}), loss=loss)
        generator = torch.Generator().manual_seed(0)
        for _ in range(DIGITS_STEPS):
            svi.step(
                images[torch.randint(0, num_data, (DIGITS_BATCH,), generator=generator)], num_data
            )
        with torch.no_grad():
            rho = torch.sigmoid(helmholtz.recognition[0](images)).mean(0)
        activation[name] = rho
        # the loss reports that activation, on the full data
        report = ReweightedWakeSleep(2, sparsity=Sparsity(), max_plate_nesting=1)
        report.differentiable_loss(helmholtz.model, helmholtz.guide, images)
        assert report.last_terms["mean_activation"] == pytest.approx(float(rho.mean()), rel=1e-5)
    sparse, free = activation["sparse"], activation["unconstrained"]
    assert abs(float(sparse.mean()) - DIGITS_TARGET) < 0.01, sparse
    assert float(sparse.max()) < 1.5 * DIGITS_TARGET, sparse
    assert float(free.mean()) > 0.4, free
