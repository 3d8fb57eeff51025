"""Pyro and NumPyro agree on sparse wake-sleep and RWS-DReG (:mod:`helpers.sparsity_dreg_cases`).

- **Sparsity, same parameters.** Given the same recognition weights and data, a one-layer
  guide's penalty and mean activation are deterministic: both backends report the same
  numbers (Pyro in float64, NumPyro in float32: to ``1e-5`` relative), equal to the NumPy
  hand computation — also with ``num_data`` standing for a larger data set, and on a
  two-layer machine restricted to its first (deterministic) layer by ``sites=``.
- **RWS-DReG, same case.** Each backend's runs (shared with its own tests: ``K = 5``,
  4000 draws per observed value, score, DReG, DReG mixed with sleep, DReG under
  sub-sampling) give gradient means that agree within ``4·sqrt(se_pyro² + se_numpyro²)``,
  and variance ratios ``Var(score)/Var(DReG)`` whose logarithms agree within 4 combined
  standard errors.
- **The statistical checks have power** (NumPy only): the exact-mean check that the backends'
  DReG passes rejects, by tens of standard errors, path estimators weighted by ``w̄`` or
  ``w̄²`` instead of ``w̄ − w̄²`` (``path_estimator_draws``), and accepts the right one.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import sparsity_dreg_cases as cases

Z_MAX = cases.Z_MAX
K = cases.NUM_PARTICLES


# ---------------------------------------------------------------------------------------------
# the checks' power (NumPy only)
# ---------------------------------------------------------------------------------------------
def test_the_exact_mean_check_rejects_wrongly_weighted_path_estimators():
    exact = cases.exact_wake_phi_grad(K)
    draws = cases.REPEATS * cases.REPLICAS  # as many as each backend's runs
    right = cases.path_estimator_draws(K, "dreg", draws, seed=10)
    assert np.all(np.abs(cases.z_scores(right, exact)) < Z_MAX)
    for weights in ("w", "w2"):
        wrong = cases.path_estimator_draws(K, weights, draws, seed=11)
        assert np.max(np.abs(cases.z_scores(wrong, exact))) > 10 * Z_MAX, weights


def test_exact_expectation_is_the_closed_form_at_k_1_and_tends_to_the_limit():
    """Checks of the quadrature: at ``K = 1`` the score identity ``E_q[∇ log q] = 0``; the
    bias shrinks like ``1/K``."""
    assert np.abs(cases.exact_wake_phi_grad(1)).max() < 1e-9
    limit = cases.limit_wake_phi_grad()
    bias_100 = np.abs(cases.exact_wake_phi_grad(100) - limit).max()
    bias_1000 = np.abs(cases.exact_wake_phi_grad(1000) - limit).max()
    assert 7 < bias_100 / bias_1000 < 13


# ---------------------------------------------------------------------------------------------
# sparsity: the same numbers from the same parameters
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def numpyro_terms():
    """NumPyro's ``loss.terms`` (jitted together) on the cases' parameters: one layer, one
    layer standing for ``NUM_DATA`` datapoints, two layers with ``sites="h1"``."""
    pytest.importorskip("numpyro")
    import jax
    import jax.numpy as jnp

    from numpyro_wakesleep import ReweightedWakeSleep, Sparsity

    x = jnp.asarray(cases.binary_data(), jnp.float32)
    one, one_params = cases.numpyro_machine((6,))
    two, two_params = cases.numpyro_machine(cases.HIDDEN)
    sparsity = Sparsity(cases.TARGET, cases.WEIGHT)
    first_layer = Sparsity(cases.TARGET, cases.WEIGHT, sites="h1")
    key = jax.random.PRNGKey(0)

    @jax.jit
    def run(one_params, two_params):
        loss, only_h1 = (
            ReweightedWakeSleep(3, sparsity=sparsity),
            ReweightedWakeSleep(3, sparsity=first_layer),
        )
        return {
            "one": loss.terms(key, one_params, one.model, one.guide, x),
            "sub-sampled": loss.terms(key, one_params, one.model, one.guide, x, cases.NUM_DATA),
            "sites": only_h1.terms(key, two_params, two.model, two.guide, x),
        }

    out = run(one_params, two_params)
    return {case: {name: float(v) for name, v in terms.items()} for case, terms in out.items()}


@pytest.fixture(scope="module")
def pyro_terms():
    pytest.importorskip("pyro")
    import pyro
    import torch

    from pyro_wakesleep import ReweightedWakeSleep, Sparsity

    x = torch.from_numpy(cases.binary_data())
    sparsity = Sparsity(cases.TARGET, cases.WEIGHT)
    first_layer = Sparsity(cases.TARGET, cases.WEIGHT, sites="h1")
    out = {}
    for case, hidden, chosen, args in (
        ("one", (6,), sparsity, ()),
        ("sub-sampled", (6,), sparsity, (cases.NUM_DATA,)),
        ("sites", cases.HIDDEN, first_layer, ()),
    ):
        pyro.clear_param_store()
        machine = cases.pyro_machine(hidden)
        loss = ReweightedWakeSleep(3, sparsity=chosen, max_plate_nesting=1)
        loss.differentiable_loss(machine.model, machine.guide, x, *args)
        out[case] = loss.last_terms
    pyro.clear_param_store()
    return out


@pytest.mark.parametrize("case", ["one", "sub-sampled", "sites"])
def test_penalty_and_activation_agree_on_the_same_parameters(pyro_terms, numpyro_terms, case):
    weight, bias = cases.layer_weights((cases.NUM_VISIBLE, *cases.HIDDEN))[0]
    rho = cases.one_layer_activation(cases.binary_data(), weight, bias)
    num_data = cases.NUM_DATA if case == "sub-sampled" else cases.BATCH
    penalty = cases.WEIGHT * num_data * cases.kl_bernoulli(cases.TARGET, rho).sum()
    for terms in (pyro_terms[case], numpyro_terms[case]):
        assert terms["sparsity"] == pytest.approx(penalty, rel=1e-5)
        assert terms["mean_activation"] == pytest.approx(rho.mean(), rel=1e-5)
    pyro_case, numpyro_case = pyro_terms[case], numpyro_terms[case]
    assert pyro_case["sparsity"] == pytest.approx(numpyro_case["sparsity"], rel=1e-5)
    assert pyro_case["mean_activation"] == pytest.approx(numpyro_case["mean_activation"], 1e-5)


# ---------------------------------------------------------------------------------------------
# RWS-DReG: the same statistics from the same case
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs():
    pytest.importorskip("pyro")
    pytest.importorskip("numpyro")
    return cases.pyro_runs(), cases.numpyro_runs()


@pytest.mark.parametrize("config", list(cases.CONFIGS))
def test_gradient_means_agree(runs, config):
    pyro_run, numpyro_run = runs
    z = cases.two_sample_z(pyro_run[config], numpyro_run[config])
    assert np.all(np.abs(z) < Z_MAX), z


def test_variance_ratios_agree(runs):
    (pyro_ratio, pyro_se), (numpyro_ratio, numpyro_se) = (
        cases.log_variance_ratio(run["score"], run["dreg"]) for run in runs
    )
    z = (pyro_ratio - numpyro_ratio) / np.sqrt(pyro_se**2 + numpyro_se**2)
    assert np.all(np.abs(z) < Z_MAX), (np.exp(pyro_ratio), np.exp(numpyro_ratio), z)
    # and each backend's is well above 1 (DReG's gain is real in both)
    assert np.all(pyro_ratio - Z_MAX * pyro_se > 0) and np.all(
        numpyro_ratio - Z_MAX * numpyro_se > 0
    )
