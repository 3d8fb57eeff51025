"""Pyro's and NumPyro's ``JointStochasticApproximation`` on the same exact case agree.

The case is that of :mod:`helpers.jsa_cases` (three categories, a fixed poor guide, four
observed values each replicated 1000 times, ``K = 2``, parameters fixed); each backend runs
``burn_in`` steps (derived from the exact kernel) and then ``GRAD_STEPS`` steps, once per
process (:func:`~helpers.jsa_cases.pyro_runs`, :func:`~helpers.jsa_cases.numpyro_runs`,
shared with the backends' own tests).

- The mean acceptance rate over the ``GRAD_STEPS`` steps agrees between the backends within
  ``4·sqrt(2)·se``, ``se`` its exact standard error from the kernel (the correlation along
  each chain included; the backends are independent runs). The tolerance separates the
  posterior's acceptance rate from that under the perturbed parameters of the power checks.
- The chains' laws after burn-in agree: a chi-square test of homogeneity of the two
  backends' chain values (4000 chains each) at level 1e-3.
- The θ-gradient averages agree within ``4·sqrt(se_pyro² + se_numpyro²)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import jsa_cases as cases
from scipy.stats import chi2, chi2_contingency

pytest.importorskip("torch")
pytest.importorskip("pyro")
pytest.importorskip("jax")
pytest.importorskip("numpyro")

K = cases.NUM_PARTICLES
BURN_IN = cases.burn_in(K)
Z_MAX = 4.0

# Each backend's run is shared with its own tests; alone, this module runs both (~7 s).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs():
    return cases.pyro_runs(), cases.numpyro_runs()


def test_acceptance_rates_agree(runs):
    """(d) The chain's acceptance rate is the same in both backends, within standard errors."""
    expected, se = cases.acceptance_moments(BURN_IN + 1, cases.GRAD_STEPS, K)
    rates = [float(np.mean(run["acceptance"])) for run in runs]
    tolerance = Z_MAX * math.sqrt(2) * se
    assert abs(rates[0] - rates[1]) < tolerance, (rates, se)
    # the tolerance tells the posterior apart from the perturbed parameters' posterior
    _, accept = cases.transition_matrix(mu=cases.PERTURBED_MU)
    perturbed = cases.posterior(mu=cases.PERTURBED_MU)
    at_perturbed = float((perturbed * accept.sum(-1)).sum(-1).mean())
    assert abs(at_perturbed - expected) > 2 * tolerance, (at_perturbed, expected, tolerance)


def test_chain_laws_agree(runs):
    """The two backends' chain values after burn-in come from the same law (homogeneity)."""
    tables = []
    for run in runs:
        values = np.asarray(run[BURN_IN]).reshape(-1, cases.NUM_TYPES)
        tables.append(
            [[(values[:, t] == z).sum() for z in range(3)] for t in range(cases.NUM_TYPES)]
        )
    statistic = 0.0
    dof = 0
    for t in range(cases.NUM_TYPES):
        result = chi2_contingency(np.array([tables[0][t], tables[1][t]]), correction=False)
        statistic += result.statistic
        dof += result.dof
    assert chi2.sf(statistic, dof) > 1e-3, (statistic, dof)


def test_theta_gradients_agree(runs):
    """The θ-gradient averages of the two backends agree within their standard errors."""
    (mean_p, se_p), (mean_n, se_n) = (cases.replica_mean_and_se(run["grads"]) for run in runs)
    z = (mean_p - mean_n) / np.sqrt(se_p**2 + se_n**2)
    assert np.all(np.abs(z) < Z_MAX), z
