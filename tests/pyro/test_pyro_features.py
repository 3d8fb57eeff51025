"""The Pyro Helmholtz machine as a feature extractor, and its Gaussian visible units.

- ``features(x)``: the recognition net's mean-field probabilities, every hidden layer, bottom
  first, against a hand computation from the parameters and against the guide's own
  Bernoulli probabilities;
- ``visible="gaussian"``: the model scores ``x`` with a normal density of scale
  ``exp(visible_log_scale)``; the exact marginal of :mod:`wakesleep.trainer.exact` (with
  ``visible_scale=machine.visible_scale()``) equals enumeration through the model's own trace
  and the importance estimate up to its Monte Carlo error; one RWS step trains the scale;
  dreams are real-valued; ``sample`` returns floats.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pyro = pytest.importorskip("pyro")

import pyro.poutine as poutine  # noqa: E402
from helpers.pyro_machines import randomise  # noqa: E402
from pyro.infer import SVI  # noqa: E402
from pyro.optim import Adam  # noqa: E402

from pyro_wakesleep import ReweightedWakeSleep  # noqa: E402
from pyro_wakesleep.evaluation import (  # noqa: E402
    importance_log_likelihood,
    importance_log_weights,
)
from pyro_wakesleep.helmholtz import HelmholtzMachine  # noqa: E402
from wakesleep.trainer.exact import helmholtz_log_marginal  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread", "pyro_seed_0")

GEN = "helmholtz_generative"


def all_states(num_units: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product((0.0, 1.0), repeat=num_units)))


def numpy_params(machine: HelmholtzMachine) -> dict[str, np.ndarray]:
    return {name: p.detach().double().numpy() for name, p in machine.named_parameters()}


def sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


# ---------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_features_are_the_mean_field_pass_bottom_first(visible):
    machine = randomise(HelmholtzMachine(6, (4, 3, 2), visible=visible), 0, 1.0, 1.5)
    generator = torch.Generator().manual_seed(1)
    if visible == "bernoulli":
        x = (torch.rand(2, 5, 6, generator=generator) < 0.5).float()
    else:
        x = torch.randn(2, 5, 6, generator=generator)
    features = machine.features(x)
    assert isinstance(features, torch.Tensor)
    assert features.shape == (2, 5, 4 + 3 + 2) and features.dtype == torch.float32
    assert torch.all((features > 0) & (features < 1))

    # by hand from the parameters: p_1 = σ(V_1 x + c_1), p_l = σ(V_l p_{l-1} + c_l)
    params = numpy_params(machine)
    p, expected = x.double().numpy(), []
    for layer in range(3):
        p = sigmoid(
            p @ params[f"recognition.{layer}.weight"].T + params[f"recognition.{layer}.bias"]
        )
        expected.append(p)
    np.testing.assert_allclose(
        features.detach().double().numpy(), np.concatenate(expected, axis=-1), atol=2e-6
    )
    # bottom first: the first 4 columns are layer 1, the last 2 the top layer
    np.testing.assert_allclose(features[..., :4].detach().numpy(), expected[0], atol=2e-6)
    np.testing.assert_allclose(features[..., -2:].detach().numpy(), expected[2], atol=2e-6)
    # a single datapoint
    assert machine.features(x[0, 0]).shape == (9,)


def test_features_read_the_param_store():
    # the feature extractor is the guide's recognition net: a value set in the param store
    # (what SVI trains) is the one it uses
    machine = randomise(HelmholtzMachine(5, (3, 2)), 2, 1.0, 1.0)
    x = torch.ones(4, 5)
    machine.guide(x)  # registers the recognition net in the param store
    store = pyro.get_param_store()
    name = "helmholtz_recognition$$$0.bias"
    assert name in store.keys()
    with torch.no_grad():
        store[name].copy_(torch.tensor([30.0, -30.0, 0.0]))
    features = machine.features(torch.zeros(4, 5))
    np.testing.assert_allclose(
        features[:, :3].detach().numpy(), np.tile([1.0, 0.0, 0.5], (4, 1)), atol=1e-6
    )


def test_layer_one_features_are_the_guides_probabilities():
    machine = randomise(HelmholtzMachine(7, (4, 2), visible="gaussian"), 3, 1.0, 1.5)
    x = torch.randn(10, 7, generator=torch.Generator().manual_seed(4))
    guide_trace = poutine.trace(machine.guide).get_trace(x)
    q_h1 = guide_trace.nodes["h1"]["fn"].base_dist.probs
    features = machine.features(x)
    torch.testing.assert_close(features[:, :4], q_h1, rtol=0, atol=1e-6)
    # the upper layer's features use probabilities in place of the guide's binary draws: the
    # guide's q(h2 | h1) is that of the sampled h1, the feature that of p_1
    h1 = guide_trace.nodes["h1"]["value"]
    q_h2 = guide_trace.nodes["h2"]["fn"].base_dist.probs
    rec = machine.recognition[1]
    torch.testing.assert_close(q_h2, torch.sigmoid(rec(h1)), rtol=0, atol=1e-6)
    torch.testing.assert_close(features[:, 4:], torch.sigmoid(rec(q_h1)), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Gaussian visible units
# ---------------------------------------------------------------------------------------------
def test_gaussian_parameter_starts_at_zero_and_belongs_to_the_model_only():
    machine = HelmholtzMachine(5, (3, 2), visible="gaussian")
    assert machine.visible == "gaussian"
    torch.testing.assert_close(machine.generative.visible_log_scale.data, torch.zeros(5))
    x = torch.randn(3, 5)
    machine.guide(x)
    assert not any("visible_log_scale" in name for name in pyro.get_param_store().keys())
    guide_params = poutine.trace(machine.guide).get_trace(x).param_nodes
    model_params = poutine.trace(machine.model).get_trace(x).param_nodes
    assert f"{GEN}$$$visible_log_scale" in model_params
    assert not any("visible_log_scale" in name for name in guide_params)
    assert f"{GEN}$$$visible_log_scale" in pyro.get_param_store().keys()
    np.testing.assert_array_equal(machine.visible_scale(), np.ones(5))
    # a Bernoulli machine has no scale
    bernoulli = HelmholtzMachine(5, (3, 2))
    assert bernoulli.visible_scale() is None
    assert not hasattr(bernoulli.generative, "visible_log_scale")


def test_visible_scale_is_float64_and_follows_the_param_store():
    machine = randomise(HelmholtzMachine(4, (2,), visible="gaussian"), 5, 1.0, 1.0)
    expected = machine.generative.visible_log_scale.detach().double().exp().numpy()
    scale = machine.visible_scale()
    assert isinstance(scale, np.ndarray) and scale.dtype == np.float64 and scale.shape == (4,)
    np.testing.assert_allclose(scale, expected, rtol=1e-6)
    with torch.no_grad():
        pyro.get_param_store()[f"{GEN}$$$visible_log_scale"].copy_(
            torch.log(torch.arange(1.0, 5.0))
        )
    np.testing.assert_allclose(machine.visible_scale(), [1.0, 2.0, 3.0, 4.0], rtol=1e-6)


def test_gaussian_model_scores_x_with_a_normal_density():
    machine = randomise(HelmholtzMachine(5, (3, 2), visible="gaussian"), 6, 1.0, 1.0)
    x = 2.0 * torch.randn(8, 5, generator=torch.Generator().manual_seed(7))
    trace = poutine.trace(machine.model).get_trace(x)
    trace.compute_log_prob()
    site = trace.nodes["x"]
    assert site["is_observed"] and site["log_prob"].shape == (8,)
    params = numpy_params(machine)
    h1 = trace.nodes["h1"]["value"].double().numpy()
    mean = h1 @ params["generative.layers.0.weight"].T + params["generative.layers.0.bias"]
    log_s = params["generative.visible_log_scale"]
    z = (x.double().numpy() - mean) / np.exp(log_s)
    expected = np.sum(-0.5 * z**2 - log_s - 0.5 * math.log(2 * math.pi), axis=-1)
    np.testing.assert_allclose(site["log_prob"].detach().double().numpy(), expected, rtol=1e-5)


def model_enumeration(machine: HelmholtzMachine, x: torch.Tensor) -> np.ndarray:
    """``log Σ_h p(x, h)`` per row, each ``h`` conditioned into the model and scored by its trace."""
    terms = []
    with torch.no_grad():
        for state in all_states(sum(machine.hidden)).to(x.dtype):
            layers = torch.split(state, machine.hidden)
            data = {f"h{i + 1}": h.expand(len(x), -1) for i, h in enumerate(layers)}
            trace = poutine.trace(poutine.condition(machine.model, data=data)).get_trace(x)
            trace.compute_log_prob()
            terms.append(
                sum(site["log_prob"] for site in trace.nodes.values() if "log_prob" in site)
            )
    return torch.logsumexp(torch.stack(terms), dim=0).double().numpy()


def test_exact_gaussian_marginal_equals_enumeration_through_the_model():
    machine = randomise(HelmholtzMachine(5, (3, 2), visible="gaussian"), 8, 1.5, 1.0).double()
    x = 2.0 * torch.randn(9, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    exact = helmholtz_log_marginal(
        x.numpy(), *machine.generative_weights(), visible_scale=machine.visible_scale()
    )
    np.testing.assert_allclose(exact, model_enumeration(machine, x), rtol=1e-10)
    # without the scale (unit normals) the answer differs: the scale is not ignored
    unit = helmholtz_log_marginal(
        x.numpy(), *machine.generative_weights(), visible_scale=np.ones(5)
    )
    assert np.max(np.abs(unit - exact)) > 0.5


def test_importance_estimate_agrees_with_the_exact_gaussian_marginal():
    # a diffuse guide (small recognition weights) over 3 + 2 hidden units: the weights
    # p(h | x) / q(h | x) are bounded, so the Monte Carlo error is small and estimated below
    machine = randomise(HelmholtzMachine(4, (3, 2), visible="gaussian"), 10, 0.8, 0.3)
    x = machine.sample(12)
    assert x.dtype == torch.float32
    exact = helmholtz_log_marginal(
        x.double().numpy(), *machine.generative_weights(), visible_scale=machine.visible_scale()
    )
    num_particles = 100_000
    pyro.set_rng_seed(11)
    log_w = importance_log_weights(
        machine.model, machine.guide, x, num_particles=num_particles, chunk_size=25_000
    )
    assert log_w.shape == (num_particles, 12)
    log_w = log_w.double().numpy()
    peak = log_w.max(axis=0)
    w = np.exp(log_w - peak)
    estimate = np.log(w.mean(axis=0)) + peak
    # delta method: sd(log mean w) ≈ sd(w) / (mean(w) sqrt(K)); the bias -Var/(2K mean²) is
    # far smaller than that here
    relative_se = w.std(axis=0) / w.mean(axis=0) / math.sqrt(num_particles)
    assert np.all(relative_se < 0.03), relative_se
    np.testing.assert_array_less(np.abs(estimate - exact), 5 * relative_se + 1e-4)
    # the evaluation entry point, on fresh draws, within the same error
    pyro.set_rng_seed(12)
    running = importance_log_likelihood(
        machine.model, machine.guide, x, num_particles=num_particles, chunk_size=25_000
    )
    assert running.shape == (12,)
    np.testing.assert_array_less(np.abs(running.double().numpy() - exact), 5 * relative_se + 1e-4)


def standardised_data(num: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num, dim, generator=generator) @ torch.randn(dim, dim, generator=generator)
    return (x - x.mean(0)) / x.std(0)


def test_one_rws_step_trains_the_visible_scale():
    machine = HelmholtzMachine(4, (3, 2), visible="gaussian")
    x = standardised_data(16, 4, seed=13)
    loss = ReweightedWakeSleep(num_particles=5)
    # the surrogate's gradient reaches the scale, finite and non-zero
    surrogate = loss.differentiable_loss(machine.model, machine.guide, x)
    assert torch.isfinite(surrogate)
    surrogate.backward()
    grad = pyro.get_param_store()[f"{GEN}$$$visible_log_scale"].grad
    assert grad is not None and torch.all(torch.isfinite(grad)) and torch.any(grad != 0)
    pyro.get_param_store()[f"{GEN}$$$visible_log_scale"].grad = None

    before = machine.visible_scale().copy()
    svi = SVI(machine.model, machine.guide, Adam({"lr": 0.01}), loss=loss)
    value = svi.step(x)
    assert math.isfinite(value)
    after = machine.visible_scale()
    assert np.all(np.isfinite(after))
    # Adam's first step moves every coordinate with a non-zero gradient by about lr
    assert np.all(np.abs(np.log(after) - np.log(before)) > 1e-3), (before, after)


def test_sleep_phase_dreams_real_valued_x():
    machine = HelmholtzMachine(4, (3, 2), visible="gaussian")
    x = standardised_data(16, 4, seed=14)
    seen = []

    def guide(x, num_data=None, index=None):
        seen.append(x)
        machine.guide(x, num_data, index)

    loss = ReweightedWakeSleep(num_particles=5, insomnia=0.0)  # the guide learns from dreams
    svi = SVI(machine.model, guide, Adam({"lr": 0.01}), loss=loss)
    before = machine.recognition[0].weight.detach().clone()
    value = svi.step(x)
    assert math.isfinite(value)
    assert math.isfinite(loss.last_terms["sleep_phi"])
    dreams = [s for s in seen if s is not x]
    assert dreams, "the guide never saw a dream"
    for dream in dreams:
        assert dream.shape[-2:] == (16, 4) and dream.is_floating_point()
        assert torch.all(torch.isfinite(dream))
        # real numbers, not 0/1 images
        assert not torch.all((dream == 0) | (dream == 1))
    assert not torch.equal(machine.recognition[0].weight.detach(), before)


def test_samples_are_uint8_images_or_real_vectors():
    bernoulli = HelmholtzMachine(6, (3, 2))
    samples = bernoulli.sample(50)
    assert samples.dtype == torch.uint8 and samples.shape == (50, 6)
    assert set(samples.unique().tolist()) <= {0, 1}

    pyro.clear_param_store()
    machine = randomise(HelmholtzMachine(3, (2,), visible="gaussian"), 15, 1.5, 1.0)
    num = 40_000
    samples = machine.sample(num)
    assert samples.dtype == torch.float32 and samples.shape == (num, 3)
    assert not torch.all(samples == samples.round())
    # moments of the mixture Σ_h p(h) N(W h + b, s²), by enumeration of the 2 hidden units
    top, ((w, b),) = machine.generative_weights()
    scale = machine.visible_scale()
    states = all_states(2).double().numpy()
    p_h = np.prod(np.where(states == 1, sigmoid(top), 1 - sigmoid(top)), axis=1)
    means = states @ w.T + b
    mean = p_h @ means
    variance = p_h @ (means - mean) ** 2 + scale**2
    s = samples.double().numpy()
    # sample mean: se sqrt(var / n); sample variance: se sqrt((m4 - var²) / n), estimated
    np.testing.assert_array_less(np.abs(s.mean(0) - mean), 5 * np.sqrt(variance / num))
    m4 = np.mean((s - s.mean(0)) ** 4, axis=0)
    np.testing.assert_array_less(
        np.abs(s.var(0) - variance), 5 * np.sqrt((m4 - s.var(0) ** 2) / num)
    )


def test_invalid_visible_and_sparse_gaussian_raise():
    with pytest.raises(ValueError, match="init='default'"):
        HelmholtzMachine(5, (3,), init="sparse", visible="gaussian")
    with pytest.raises(ValueError, match="visible must be one of 'bernoulli', 'gaussian'"):
        HelmholtzMachine(5, (3,), visible="poisson")
    # the sparse start is still fine for binary units
    assert HelmholtzMachine(5, (3,), init="sparse").visible == "bernoulli"
