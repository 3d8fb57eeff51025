"""Pyro's ``JointStochasticApproximation`` (JSA) against exact answers.

**The exact case** (:mod:`helpers.jsa_cases`): ``z ~ Categorical(uniform over 3)``,
``x | z ~ Normal(mu[z], 1)``, a fixed poor guide ``Categorical(softmax(1, 0, −1))``, and four
observed values replicated ``REPLICAS = 1000`` times, so that every replica has its own
independent chains. ``mu`` is a ``(REPLICAS, 3)`` parameter whose rows all equal
``(−1, 0, 1)``: the gradient of row ``r`` is replica ``r``'s own gradient, so its mean over
the independent replicas has an honest standard error. Parameters are never updated.

- The chains' values after :func:`~helpers.jsa_cases.burn_in` steps (derived from the exact
  kernel: the residual non-centrality of the test is ≤ 0.01) pass Pearson's chi-square test
  against the exact posterior at level 1e-3; the same test rejects the posterior under
  perturbed parameters and the guide's law at p < 1e-6 (its power against them, computed,
  exceeds 0.9999), and after one step it accepts the kernel's exact one-step law and
  rejects the posterior.
- JSA's θ-gradient averaged over 20 steps after burn-in matches the exact
  ``∇ log p(x)`` within 4 standard errors (the transient left by the burn-in, computed from
  the kernel, is below 0.1 se); RWS with ``K = 2`` on the same setting misses it by 50 to
  190 standard errors and matches its own exact expectation (all ``3²`` proposal pairs
  enumerated); the JSA test would catch RWS's bias by more than 100 of its own se.
- The acceptance rate matches the kernel's exact expectation within 4 standard errors
  (variance from the kernel, the correlation along each chain included).

Vectorised and sequential particles give bit-identical values and chains at the same seed
(gradients to float32 round-off: the particles' terms are summed in another order). That
rests on torch drawing the same numbers for one ``(K, B)`` draw as for ``K`` draws of ``B``,
which holds for the categorical guide here and for small Normal draws, not for Normal
draws of 16 values or more. The other checks use a small
linear-Gaussian model, whose continuous draws make equalities sharp.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import jsa_cases as cases
from pyro.infer import SVI

from pyro_wakesleep import JointStochasticApproximation, ReweightedWakeSleep

pytestmark = pytest.mark.usefixtures("one_torch_thread")

K = cases.NUM_PARTICLES
BURN_IN = cases.burn_in(K)
GRAD_STEPS = cases.GRAD_STEPS
LEVEL = 1e-3  # false-alarm rate of each goodness-of-fit test
POWER_P = 1e-6  # what a wrong target must reach
Z_MAX = 4.0  # standard errors allowed between an estimate and its exact expectation


# ---------------------------------------------------------------------------------------------
# the exact (categorical) case
# ---------------------------------------------------------------------------------------------
categorical_model, categorical_guide, X = cases.pyro_programs()
replica_mean_and_se = cases.replica_mean_and_se


@pytest.fixture(scope="module")
def runs():
    """JSA (``K = 2``) for ``BURN_IN + GRAD_STEPS`` steps and RWS (``K = 2``) for ``GRAD_STEPS``
    steps, parameters fixed, seeds 0 and 1 (:func:`helpers.jsa_cases.pyro_runs`)."""
    return cases.pyro_runs()


def test_burn_in_is_derived_from_the_kernel():
    """The burn-in makes the chains' exact law indistinguishable from the posterior by the
    test below, and half of it would not (so it is not generous by accident)."""
    target = cases.posterior()
    after = cases.REPLICAS * cases.chi2_divergence(cases.chain_law(BURN_IN, K), target).sum()
    before = cases.REPLICAS * cases.chi2_divergence(cases.chain_law(BURN_IN // 2, K), target).sum()
    assert after <= 0.01 < before


def test_chains_match_the_exact_posterior(runs):
    """(a) Chi-square goodness of fit of 4000 independent chains after burn-in, with power."""
    values = runs[BURN_IN]
    _, p_posterior = cases.pearson(values, cases.posterior())
    _, p_perturbed = cases.pearson(values, cases.posterior(mu=cases.PERTURBED_MU))
    _, p_guide = cases.pearson(values, np.tile(cases.guide_probs(), (cases.NUM_TYPES, 1)))
    assert p_posterior > LEVEL, p_posterior
    assert p_perturbed < POWER_P, p_perturbed
    assert p_guide < POWER_P, p_guide
    # the rejections are the rule, not luck: the test's power against them at level POWER_P
    perturbed = cases.posterior(mu=cases.PERTURBED_MU)
    assert cases.pearson_power(cases.posterior(), perturbed, POWER_P) > 0.9999


def test_first_step_follows_the_exact_kernel(runs):
    """(a) After one step the chains follow ``q P^(K−1)`` (first proposal, then the kernel),
    which the test tells apart from the posterior: burn-in matters and is seen."""
    values = runs[1]
    _, p_kernel = cases.pearson(values, cases.chain_law(1, K))
    _, p_posterior = cases.pearson(values, cases.posterior())
    assert p_kernel > LEVEL, p_kernel
    assert p_posterior < POWER_P, p_posterior
    assert cases.pearson_power(cases.chain_law(1, K), cases.posterior(), POWER_P) > 0.9999


def test_theta_gradient_is_unbiased(runs):
    """(b) JSA's θ-gradient, averaged over steps after burn-in, is ``∇ log p(x)``."""
    mean, se = replica_mean_and_se(runs["grads"])
    exact = cases.marginal_grad().sum(0)
    # the transient left after burn-in is negligible against the standard error
    transient = cases.expected_chain_grad(BURN_IN + 1, GRAD_STEPS, K).sum(0) - exact
    assert np.all(np.abs(transient) < 0.1 * se), (transient, se)
    z = (mean - exact) / se
    assert np.all(np.abs(z) < Z_MAX), f"z-scores {z}, mean {mean}, exact {exact}, se {se}"
    # power: RWS's bias with K = 2 would be caught many times over
    rws_bias = cases.rws_grad(K).sum(0) - exact
    assert np.max(np.abs(rws_bias) / se) > 25 * Z_MAX


def test_rws_with_two_particles_is_biased(runs):
    """(b) RWS with ``K = 2`` on the same setting: its average is its enumerated expectation,
    many standard errors from ``∇ log p(x)``."""
    mean, se = replica_mean_and_se(runs["rws"])
    expected = cases.rws_grad(K).sum(0)
    z_expected = (mean - expected) / se
    z_exact = (mean - cases.marginal_grad().sum(0)) / se
    assert np.all(np.abs(z_expected) < Z_MAX), f"z-scores {z_expected} against enumeration"
    assert np.max(np.abs(z_exact)) > 25 * Z_MAX, f"z-scores {z_exact} against the exact gradient"


def test_acceptance_rate_matches_the_kernel(runs):
    """(d) The mean acceptance rate equals the kernel's exact expectation within 4 se; the
    tolerance tells it apart from chains left at the guide's law."""
    mean, se = cases.acceptance_moments(BURN_IN + 1, GRAD_STEPS, K)
    measured = float(np.mean(runs["acceptance"]))
    assert abs(measured - mean) < Z_MAX * se, (measured, mean, se)
    at_guide = cases.stationary_acceptance(np.tile(cases.guide_probs(), (cases.NUM_TYPES, 1)))
    assert abs(at_guide - mean) > 25 * Z_MAX * se


def test_last_terms(runs):
    terms = runs["terms"]
    assert set(terms) >= {"loss", "wake_theta", "wake_phi", "acceptance_rate", "chain_age", "ess"}
    assert 0.0 < terms["acceptance_rate"] < 1.0
    assert terms["chain_age"] >= 0.0
    assert all(math.isfinite(v) for v in terms.values())


def chain_run(vectorize: bool, steps: int, seed: int = 0, num_particles: int = 3):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    loss = JointStochasticApproximation(num_particles, vectorize_particles=vectorize)
    out = []
    for _ in range(steps):
        value = loss.differentiable_loss(categorical_model, categorical_guide, X)
        (grad,) = torch.autograd.grad(value, pyro.param("mu").unconstrained())
        out.append((value.detach(), grad, {k: v.clone() for k, v in loss.chains.values.items()}))
        out[-1][2].update(seen=loss.chains.seen.clone(), age=loss.chains.age.clone())
    return out


def test_vectorized_and_sequential_particles_are_bit_identical():
    """(c) The same seed gives bit-identical values and chains with the proposals as a plate
    or as a loop; the gradients agree to float32 round-off (the ``K`` particles' terms are
    summed in another order)."""
    vectorized = chain_run(True, steps=4)
    sequential = chain_run(False, steps=4)
    for (v1, g1, c1), (v2, g2, c2) in zip(vectorized, sequential, strict=True):
        assert torch.equal(v1, v2)
        assert c1.keys() == c2.keys()
        assert all(torch.equal(c1[k], c2[k]) for k in c1)
        torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-5)
    # and a different seed gives different chains (the comparison can fail)
    other = chain_run(True, steps=1, seed=1)
    assert not torch.equal(other[0][2]["z"], vectorized[0][2]["z"])


# ---------------------------------------------------------------------------------------------
# a small linear-Gaussian model: z ~ N(0, 1), x | z ~ N(z, 1); guide N(a x, s)
# ---------------------------------------------------------------------------------------------
N, B = 10, 4
XS = torch.linspace(-1.0, 2.0, N, dtype=torch.float64)


def gauss_model(x, subsample_size=None, record=None):
    with pyro.plate("data", N, subsample_size=subsample_size) as idx:
        z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])


def gauss_guide(x, subsample_size=None, record=None):
    a = pyro.param("a", torch.tensor(0.3, dtype=x.dtype))
    with pyro.plate("data", N, subsample_size=subsample_size) as idx:
        z = pyro.sample("z", dist.Normal(a * x[idx], 0.9))
        if record is not None:
            record.append((idx.clone(), z.detach().clone()))


def recorded_proposals(record: list, num_particles: int, vectorize: bool):
    """The step's proposals from the guide's record: ``(indices, (K, B) draws)``. The last
    guide call replays the chains' states; the proposals come just before it (one call with
    a particle plate, or ``K`` calls); earlier calls are the loss's first-step checks."""
    if vectorize:
        idx, draws = record[-2]
    else:
        idx = record[-2][0]
        draws = torch.stack([z for _, z in record[-1 - num_particles : -1]])
    return idx, draws.reshape(num_particles, len(idx))


def gauss_log_weight(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``log p(x, z) − log q(z | x)`` at ``a = 0.3``, per datapoint (any leading dims)."""
    x = XS[idx]
    return (
        dist.Normal(0.0, 1.0).log_prob(z)
        + dist.Normal(z, 1.0).log_prob(x)
        - dist.Normal(0.3 * x, 0.9).log_prob(z)
    )


@pytest.mark.parametrize("vectorize", [True, False], ids=["vectorised", "sequential"])
def test_first_seen_datapoint_starts_from_its_first_proposal(vectorize, pyro_seed_0):
    """(g) With ``K = 1`` one step leaves every chain at the guide's draw, and marks it seen
    and moved (age 0); with a mini-batch, only the batch's datapoints."""
    record = []
    loss = JointStochasticApproximation(num_particles=1, vectorize_particles=vectorize)
    loss.differentiable_loss(gauss_model, gauss_guide, XS, None, record)
    idx, draws = recorded_proposals(record, 1, vectorize)
    assert torch.equal(loss.chains.values["z"][idx], draws[0])
    assert loss.chains.seen.all() and (loss.chains.age == 0).all()

    record.clear()
    loss = JointStochasticApproximation(num_particles=1, vectorize_particles=vectorize)
    loss.differentiable_loss(gauss_model, gauss_guide, XS, B, record)
    idx, draws = recorded_proposals(record, 1, vectorize)
    assert torch.equal(loss.chains.values["z"][idx], draws[0])
    assert torch.equal(torch.nonzero(loss.chains.seen).flatten(), idx.sort().values)
    assert (loss.chains.values["z"][~loss.chains.seen] == 0).all()


@pytest.mark.parametrize("vectorize", [True, False], ids=["vectorised", "sequential"])
@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("subsample_size", [None, B], ids=["full", "mini-batch"])
def test_value_is_the_scaled_iwae_bound_of_the_proposals(num_particles, subsample_size, vectorize):
    """(f) The reported value is ``N/B`` times the sum over the batch of the proposals' −IWAE
    terms, and equals RWS's value at the same seed (the same draws)."""
    record = []
    pyro.set_rng_seed(5)
    loss = JointStochasticApproximation(num_particles, vectorize_particles=vectorize)
    value = loss.differentiable_loss(gauss_model, gauss_guide, XS, subsample_size, record)
    idx, draws = recorded_proposals(record, num_particles, vectorize)
    assert len(idx) == (subsample_size or N)
    terms = cases.iwae_terms(gauss_log_weight(draws, idx).numpy())
    expected = N / len(idx) * terms.sum()
    assert value.item() == pytest.approx(expected, rel=1e-9)
    assert loss.last_terms["loss"] == pytest.approx(expected, rel=1e-9)
    pyro.set_rng_seed(5)
    rws = ReweightedWakeSleep(num_particles, vectorize_particles=vectorize)
    rws_value = rws.differentiable_loss(gauss_model, gauss_guide, XS, subsample_size)
    assert torch.equal(value.detach(), rws_value.detach())


def gauss_steps(loss, steps: int) -> list:
    out = []
    for _ in range(steps):
        value = loss.differentiable_loss(gauss_model, gauss_guide, XS, B)
        (grad,) = torch.autograd.grad(value, pyro.param("a").unconstrained())
        out.append((value.detach(), grad, loss.chains.values["z"].clone(), loss.chains.age.clone()))
    return out


def test_state_dict_round_trip_continues_exactly(tmp_path, pyro_seed_0):
    """(f) ``state_dict`` through ``torch.save``/``torch.load(weights_only=True)`` into a fresh
    loss, with the same RNG state, continues bit for bit like the uninterrupted loss."""
    loss = JointStochasticApproximation(num_particles=2)
    gauss_steps(loss, 3)
    path = tmp_path / "chains.pt"
    torch.save(loss.state_dict(), path)
    rng = pyro.util.get_rng_state()
    uninterrupted = gauss_steps(loss, 3)

    pyro.util.set_rng_state(rng)
    fresh = JointStochasticApproximation(num_particles=2)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    resumed = gauss_steps(fresh, 3)
    for a, b in zip(uninterrupted, resumed, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    # without the chains the continuation differs (the comparison can fail)
    pyro.util.set_rng_state(rng)
    restarted = gauss_steps(JointStochasticApproximation(num_particles=2), 1)
    assert not torch.equal(restarted[0][2], uninterrupted[0][2])


def test_load_state_dict_copies(pyro_seed_0):
    """Loading another loss's ``state_dict`` in memory shares no tensor with it: stepping one
    loss leaves the other's chains (and the dict) as they were."""
    loss = JointStochasticApproximation(num_particles=2)
    gauss_steps(loss, 1)
    state = loss.state_dict()
    other = JointStochasticApproximation(num_particles=2)
    other.load_state_dict(state)
    kept = {k: v.clone() for k, v in other.state_dict()["values"].items()}
    seen, age = other.chains.seen.clone(), other.chains.age.clone()
    gauss_steps(loss, 3)
    assert not torch.equal(loss.chains.values["z"], kept["z"])  # the first loss moved on
    assert torch.equal(other.chains.values["z"], kept["z"])
    assert torch.equal(other.chains.seen, seen) and torch.equal(other.chains.age, age)
    gauss_steps(other, 1)
    assert torch.equal(state["values"]["z"], loss.chains.values["z"])  # state is loss's own


def test_state_dict_is_empty_before_the_first_step():
    loss = JointStochasticApproximation()
    assert loss.state_dict() == {}
    loss.load_state_dict({})
    assert loss.chains.size == 0
    buffer = io.BytesIO()
    torch.save(loss.state_dict(), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == {}


def test_loss_leaves_the_chains_alone(pyro_seed_0):
    loss = JointStochasticApproximation(num_particles=2)
    loss.differentiable_loss(gauss_model, gauss_guide, XS)
    before = {k: v.clone() for k, v in loss.state_dict()["values"].items()}
    age = loss.chains.age.clone()
    value = loss.loss(gauss_model, gauss_guide, XS)
    assert isinstance(value, float) and math.isfinite(value)
    assert torch.equal(loss.chains.values["z"], before["z"])
    assert torch.equal(loss.chains.age, age)


def test_trains_under_pyro_svi(pyro_seed_0):
    """Plain ``pyro.infer.SVI`` steps advance the chains and move the guide."""
    loss = JointStochasticApproximation(num_particles=2)
    svi = SVI(gauss_model, gauss_guide, pyro.optim.Adam({"lr": 0.05}), loss=loss)
    values = [svi.step(XS, B) for _ in range(5)]
    assert all(isinstance(v, float) and math.isfinite(v) for v in values)
    assert loss.chains.seen.any() and pyro.param("a").item() != 0.3


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def global_model(x):
    g = pyro.sample("g", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(g, 1.0), obs=x)


def global_guide(x):
    pyro.sample("g", dist.Normal(0.0, 1.0))


def test_global_latent_is_refused():
    """(e) No plate encloses every site: no per-datapoint chain, and the message says so."""
    with pytest.raises(ValueError, match="global latent") as info:
        JointStochasticApproximation().differentiable_loss(global_model, global_guide, XS)
    message = str(info.value)
    assert "data plate" in message and "ReweightedWakeSleep" in message


def two_plate_model(x):
    with pyro.plate("rows", 2, dim=-2), pyro.plate("cols", 5, dim=-1):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def two_plate_guide(x):
    with pyro.plate("rows", 2, dim=-2), pyro.plate("cols", 5, dim=-1):
        pyro.sample("z", dist.Normal(0.0, 1.0))


def test_two_data_plates_are_refused():
    """(e) Two plates that both enclose every site: the message names them and says how to
    merge them."""
    loss = JointStochasticApproximation(max_plate_nesting=2)
    with pytest.raises(ValueError, match=r"\['cols', 'rows'\]") as info:
        loss.differentiable_loss(two_plate_model, two_plate_guide, torch.zeros(2, 5))
    assert "Merge them into one plate" in str(info.value)


def sized_model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def sized_guide(x):
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(0.0, 1.0))


def test_data_plate_size_must_not_change(pyro_seed_0):
    """(e) The chains are keyed by the plate's indices: a changed size is refused, the message
    gives both sizes and the way to sub-sample, and the chains are kept."""
    loss = JointStochasticApproximation()
    loss.differentiable_loss(sized_model, sized_guide, torch.zeros(8))
    kept = loss.chains.values["z"].clone()
    with pytest.raises(ValueError, match="'data' has size 12") as info:
        loss.differentiable_loss(sized_model, sized_guide, torch.zeros(12))
    message = str(info.value)
    assert "chains for 8 datapoints" in message and "subsample_size" in message
    assert torch.equal(loss.chains.values["z"], kept)


def indexed_model(x, idx):
    with pyro.plate("data", N, subsample=idx):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])


def indexed_guide(x, idx):
    with pyro.plate("data", N, subsample=idx):
        pyro.sample("z", dist.Normal(0.0, 1.0))


def test_subsample_index_outside_the_plate_is_refused(pyro_seed_0):
    """(e) ``subsample=idx`` with an index ≥ N: the message gives the bad index and the range."""
    x = torch.zeros(20)
    loss = JointStochasticApproximation()
    loss.differentiable_loss(indexed_model, indexed_guide, x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"indices \[12\] outside 0\.\.9") as info:
        loss.differentiable_loss(indexed_model, indexed_guide, x, torch.tensor([1, 12]))
    assert "size 10" in str(info.value) and "'data'" in str(info.value)
    assert loss.chains.seen.sum() == 2  # nothing was written
