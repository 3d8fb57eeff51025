"""Agreement with Pyro's own ``pyro.infer.ReweightedWakeSleep`` where the two must agree.

With one datapoint, or with a global latent only, per-datapoint weights and Pyro's
joint weights are the same thing, so both classes estimate the same gradients.
Both draw in the same order -- guide, model replayed against it, then the dreams
(model, then guide) -- and place the particle plate at the same dimension
(``-(max_plate_nesting + 1)``), so under the same ``pyro.set_rng_seed`` they draw the
very same samples and their gradients agree to float64 round-off.

With many datapoints they differ: Pyro weights the batch jointly.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import Tensor
from torch.distributions import constraints

from pyro_wakesleep import ReweightedWakeSleep

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DTYPE = torch.float64
MU = 0.4
GUIDE_INIT = {"a": 0.3, "b": -0.5, "s": 0.9}  # not the posterior
PARAM_NAMES = ("mu", "a", "b", "s")
PLATE_NESTING = 1  # the model's own plates; both classes add the particle plate themselves


def init_params() -> None:
    pyro.param("mu", torch.tensor(MU, dtype=DTYPE))
    pyro.param("a", torch.tensor(GUIDE_INIT["a"], dtype=DTYPE))
    pyro.param("b", torch.tensor(GUIDE_INIT["b"], dtype=DTYPE))
    pyro.param("s", torch.tensor(GUIDE_INIT["s"], dtype=DTYPE), constraint=constraints.positive)


# Pyro's sequential sleep phase adds "observations" to the kwargs dict it then reuses for the
# model's next dream, so the models accept (and ignore) that keyword too.
def local_model(x: Tensor, observations: dict | None = None) -> None:
    """z_i ~ N(mu, 1), x_i ~ N(z_i, 1): a local latent per datapoint."""
    mu = pyro.param("mu")
    with pyro.plate("data", x.shape[-1]):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def make_local_guide(record: list | None = None):
    def local_guide(x: Tensor, observations: dict | None = None) -> None:
        if observations is not None:  # Pyro's sleep-phase convention
            x = observations["x"]
        a, b, s = pyro.param("a"), pyro.param("b"), pyro.param("s")
        with pyro.plate("data", x.shape[-1]):
            z = pyro.sample("z", dist.Normal(a * x + b, s))
        if record is not None:
            record.append(z.detach().clone())

    return local_guide


def global_model(x: Tensor, observations: dict | None = None) -> None:
    """z ~ N(mu, 1) shared by all datapoints, x_i ~ N(z, 1): a global latent only."""
    mu = pyro.param("mu")
    z = pyro.sample("z", dist.Normal(mu, 1.0))
    with pyro.plate("data", x.shape[-1]):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def global_guide(x: Tensor, observations: dict | None = None) -> None:
    """An amortised guide: z ~ N(a mean(x) + b, s); the mean is taken from the right."""
    if observations is not None:
        x = observations["x"]
    a, b, s = pyro.param("a"), pyro.param("b"), pyro.param("s")
    pyro.sample("z", dist.Normal(a * x.mean(-1, keepdim=True) + b, s))


def take_grads() -> dict[str, Tensor | None]:
    """Gradients wrt every parameter's unconstrained tensor; resets them."""
    grads = {}
    for name in PARAM_NAMES:
        leaf = pyro.param(name).unconstrained()
        grads[name] = None if leaf.grad is None else leaf.grad.detach().clone()
        leaf.grad = None
    return grads


CASES = {
    "one-datapoint": (local_model, make_local_guide(), torch.tensor([1.3], dtype=DTYPE)),
    "global-latent": (
        global_model,
        global_guide,
        torch.tensor([1.3, -0.2, 0.8, 2.1, 0.4], dtype=DTYPE),
    ),
}


@pytest.mark.parametrize("vectorize", [True, False], ids=["vectorised", "sequential"])
@pytest.mark.parametrize("insomnia", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_match_pyro_rws(case: str, insomnia: float, vectorize: bool) -> None:
    model, guide, x = CASES[case]
    init_params()
    settings = {
        "num_particles": 5,
        "insomnia": insomnia,
        "num_sleep_particles": 4,
        "vectorize_particles": vectorize,
        "max_plate_nesting": PLATE_NESTING,
    }
    seeds = (17, 18, 19)  # three steps from three seeds, the same seeds for both classes
    results: dict[tuple[str, int], tuple[float, dict]] = {}
    for name, loss in (
        ("ours", ReweightedWakeSleep(**settings)),
        ("pyro", pyro.infer.ReweightedWakeSleep(**settings)),
    ):
        for step, seed in enumerate(seeds):
            pyro.set_rng_seed(seed)
            value = loss.loss_and_grads(model, guide, x)
            # Pyro returns (wake-theta loss, phi loss); its wake-theta loss is our value.
            results[name, step] = (value[0] if isinstance(value, tuple) else value, take_grads())
    for step in range(len(seeds)):
        ours_value, ours_grads = results[("ours", step)]
        pyro_value, pyro_grads = results[("pyro", step)]
        assert ours_value == pytest.approx(pyro_value, rel=1e-12, abs=1e-12)
        for name in PARAM_NAMES:
            assert ours_grads[name] is not None, f"no gradient for {name}"
            assert pyro_grads[name] is not None, f"Pyro gave no gradient for {name}"
            torch.testing.assert_close(ours_grads[name], pyro_grads[name], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# many datapoints: the two classes differ
# ---------------------------------------------------------------------------------------------
def second_moment_of_weights(x: Tensor) -> Tensor:
    """``E_q[w̃²] = ∫ p(z|x)² / q(z|x) dz`` per datapoint, by quadrature (``w̃ = p(z|x) / q``)."""
    post_mean, post_sd = (MU + x) / 2, math.sqrt(0.5)
    grid = post_mean + post_sd * torch.linspace(-40.0, 40.0, 40001, dtype=DTYPE)[:, None]
    log_p = dist.Normal(post_mean, post_sd).log_prob(grid)
    log_q = dist.Normal(GUIDE_INIT["a"] * x + GUIDE_INIT["b"], GUIDE_INIT["s"]).log_prob(grid)
    return torch.trapezoid((2 * log_p - log_q).exp(), grid, dim=0)


def test_many_datapoints_per_datapoint_vs_joint_weights() -> None:
    """N = 100: ours weights each datapoint, Pyro's class the whole batch (its ESS collapses).

    Both classes see the same guide draws (same seed, same sampling order), recorded by the
    guide; each gradient must equal its own formula evaluated on those draws by hand.
    """
    num_data, num_particles = 100, 100
    generator = torch.Generator().manual_seed(5)
    x = MU + math.sqrt(2.0) * torch.randn(num_data, generator=generator, dtype=DTYPE)
    init_params()
    settings = {"num_particles": num_particles, "max_plate_nesting": PLATE_NESTING}

    draws: dict[str, Tensor] = {}
    grads: dict[str, dict] = {}
    ours = ReweightedWakeSleep(**settings)
    for name, loss in (("ours", ours), ("pyro", pyro.infer.ReweightedWakeSleep(**settings))):
        record: list = []
        guide = make_local_guide(record)
        loss.loss(local_model, guide, x)  # ours checks its vectorisation at the first call
        record.clear()
        pyro.set_rng_seed(11)
        loss.loss_and_grads(local_model, guide, x)
        (draws[name],) = record
        grads[name] = take_grads()
    assert torch.equal(draws["ours"], draws["pyro"])  # the same samples
    z = draws["ours"]  # (K, N)
    a, b, s = (GUIDE_INIT[n] for n in ("a", "b", "s"))
    log_w = (
        dist.Normal(torch.tensor(MU, dtype=DTYPE), 1.0).log_prob(z)
        + dist.Normal(z, 1.0).log_prob(x)
        - dist.Normal(a * x + b, s).log_prob(z)
    )  # (K, N)
    per_datapoint = torch.softmax(log_w, dim=0)  # weights over particles, per datapoint
    joint = torch.softmax(log_w.sum(-1), dim=0)  # one weight per particle, whole batch

    # wake-theta gradient for mu: -Σ_i Σ_k w̄_ki (z_ki - mu) against -Σ_k W̄_k Σ_i (z_ki - mu)
    ours_formula = -(per_datapoint * (z - MU)).sum()
    joint_formula = -(joint[:, None] * (z - MU)).sum()
    torch.testing.assert_close(grads["ours"]["mu"], ours_formula, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grads["pyro"]["mu"], joint_formula, rtol=1e-10, atol=1e-10)

    ess_per_datapoint = (1.0 / (per_datapoint**2).sum(0)).mean()
    ess_joint = 1.0 / (joint**2).sum()
    assert ours.last_terms["ess"] == pytest.approx(float(ess_per_datapoint), rel=1e-10)
    # Theory: ESS ≈ K / E_q[w̃²]. Per datapoint E_q[w̃²] is a few units (quadrature), so the
    # ESS is a sizeable fraction of K and concentrates over 100 datapoints (its spread over
    # seeds is ~1%). Jointly the second moment is the product over the 100 datapoints, the
    # joint log-weight has variance ~100 times a datapoint's, and a handful of particles
    # carries all the weight: below a tenth of the per-datapoint value (in simulation, 99.9%
    # of draws give a joint ESS under 5 here, against ~52 per datapoint).
    expected_ess = float((num_particles / second_moment_of_weights(x)).mean())
    assert float(ess_per_datapoint) > 0.5 * expected_ess
    assert float(ess_joint) < 0.1 * expected_ess
    # And the estimates of the gradient differ by far more than their rounding.
    assert abs(float(ours_formula - joint_formula)) > 1.0
