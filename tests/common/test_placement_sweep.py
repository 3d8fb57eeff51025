"""Every placement of latent and observed sites against a data plate, in both backends.

The latent inside or outside the plate (scalar or event), the observation inside or
outside it (scalar or event, or undeclared batch dimensions), the plate sub-sampled or
not, particles vectorised or not, ``K = 1`` and ``K = 5``: with the guide that makes every
importance weight equal (``tests/helpers/placement_cases.py``) the reported value is a closed form
at any ``K``. A backend that mixes particles (the value then grows with ``K``), scales a
sub-sampled site in the wrong place, or weights the batch jointly where it should not,
misses it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers.placement_cases import B, D, N, Placement, blocks, observations, placements, posterior

CASES = placements()
PARTICLES = (1, 5)


def _check(case: Placement, x: np.ndarray, values: dict, indices: dict) -> None:
    for label, value in values.items():
        expected = case.exact_value(x, indices[label])
        assert value == pytest.approx(expected, rel=1e-4, abs=2e-3), (
            f"{label}: value {value:.5f}, exact {expected:.5f}"
        )


class Backend:
    """What the programs need of a backend: its sample and plate statements, distributions,
    array namespace and Cholesky factor."""

    def __init__(self, name: str) -> None:
        if name == "pyro":
            import pyro
            import pyro.distributions as dist
            import torch

            self.sample, self.plate, self.dist, self.xp = pyro.sample, pyro.plate, dist, torch
            self.eye = torch.eye
        else:
            import jax.numpy as jnp
            import numpyro
            import numpyro.distributions as dist

            self.sample, self.plate, self.dist, self.xp = numpyro.sample, numpyro.plate, dist, jnp
            self.eye = lambda n: jnp.eye(n, dtype=jnp.float32)


def programs(case: Placement, x: np.ndarray, backend: Backend):
    """Model and guide of a placement; the model appends its plate's indices to ``record``."""
    sample, dist, xp = backend.sample, backend.dist, backend.xp
    design = xp.asarray(case.design(), dtype=xp.float32)
    x_flat = xp.asarray(x).reshape(-1)
    record: list = []

    def plate():
        return backend.plate("data", N, subsample_size=B if case.subsampled else None)

    def prior():
        if case.latent == "in-event":
            return dist.Normal(xp.zeros(D), 1.0).to_event(1)
        if case.latent == "out-event":
            return dist.Normal(xp.zeros(N), 1.0).to_event(1)
        return dist.Normal(0.0, 1.0)

    def likelihood(mean):
        if case.observed == "in-event":
            return dist.Normal(mean, 1.0).to_event(1)
        if case.observed == "out-event":
            return dist.Normal(mean, 1.0).to_event(len(case.observed_shape()))
        return dist.Normal(mean, 1.0)

    def observe(x, z, idx):
        obs = x[idx] if case.subsampled else x
        sample("x", likelihood(case.mean(z, xp.ones, idx)), obs=obs)

    def model(x):
        z = None if case.latent_inside else sample("z", prior())
        idx = xp.arange(N)
        if case.uses_plate:
            with plate() as idx:
                if case.latent_inside:
                    z = sample("z", prior())
                if case.observed_inside:
                    observe(x, z, idx)
        if not case.observed_inside:
            observe(x, z, idx)
        record.append(idx)

    def guide(x):
        idx = xp.arange(N)
        if case.latent_inside:
            with plate() as idx:
                mean, cov = posterior(case, design, x_flat, idx, xp, backend.eye)
                if case.latent == "in-scalar":
                    sample("z", dist.Normal(mean, xp.sqrt(cov.diagonal())))
                else:
                    tril = xp.linalg.cholesky(blocks(cov, len(idx), D, xp))
                    sample("z", dist.MultivariateNormal(mean.reshape(-1, D), scale_tril=tril))
            return
        if case.uses_plate:  # the plate's indices, which the model's plate then shares
            with plate() as idx:
                pass
        mean, cov = posterior(case, design, x_flat, idx, xp, backend.eye)
        if case.latent == "out-scalar":
            sample("z", dist.Normal(mean[0], xp.sqrt(cov[0, 0])))
        else:
            sample("z", dist.MultivariateNormal(mean, scale_tril=xp.linalg.cholesky(cov)))

    return model, guide, record


# -- Pyro -------------------------------------------------------------------------------
@pytest.mark.parametrize("vectorize", [True, False], ids=["vectorised", "sequential"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_pyro_value_is_exact_for_every_placement(case: Placement, vectorize: bool) -> None:
    import pyro
    import torch

    from pyro_wakesleep import ReweightedWakeSleep, WakeSleep

    pyro.set_rng_seed(0)
    x = observations(case)
    model, guide, record = programs(case, x, Backend("pyro"))
    values, indices = {}, {}
    objectives = [
        (f"RWS K={k}", ReweightedWakeSleep(k, vectorize_particles=vectorize)) for k in PARTICLES
    ]
    objectives.append(("WS K=3", WakeSleep(3, vectorize_particles=vectorize)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a fall-back to one particle at a time
        for label, loss in objectives:
            values[label] = loss.loss(model, guide, torch.tensor(x))
            indices[label] = np.asarray(record[-1])
    _check(case, x, values, indices)


# -- NumPyro ----------------------------------------------------------------------------
@pytest.mark.slow  # a compilation per case; the Pyro half above is the fast guard
@pytest.mark.parametrize("vectorize", [True, False], ids=["vectorised", "sequential"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_numpyro_value_is_exact_for_every_placement(case: Placement, vectorize: bool) -> None:
    import jax
    import jax.numpy as jnp

    from numpyro_wakesleep import ReweightedWakeSleep, WakeSleep

    x = observations(case)
    model, guide, record = programs(case, x, Backend("numpyro"))
    objectives = [
        (f"RWS K={k}", ReweightedWakeSleep(k, vectorize_particles=vectorize)) for k in PARTICLES
    ]
    objectives.append(("WS K=3", WakeSleep(3, vectorize_particles=vectorize)))

    def values_and_indices(key, x):  # one compilation for every objective
        found = {}
        for label, loss in objectives:
            record.clear()
            value = loss.loss(jax.random.fold_in(key, len(found)), {}, model, guide, x)
            found[label] = (value, record[0])  # the probe pass's indices, shared by particles
        return found

    found = jax.jit(values_and_indices)(jax.random.PRNGKey(0), jnp.asarray(x))
    values = {label: float(value) for label, (value, _) in found.items()}
    indices = {label: np.asarray(idx) for label, (_, idx) in found.items()}
    _check(case, x, values, indices)
