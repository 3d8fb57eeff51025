"""Training discrete-latent models with the Pyro objectives, checked by exact enumeration.

- a sigmoid belief net (:class:`pyro_wakesleep.helmholtz.HelmholtzMachine`) trained with
  RWS and with classic WS on a small synthetic binary data set improves its bound;
- a mixture of Bernoullis with ``z_i ~ Categorical`` trains and improves with RWS;
- for a tiny SBN the RWS value with a huge ``K`` approaches the exact ``-log p(x)``
  obtained by enumerating all hidden states, and does not fall below it beyond MC error.

"Improves" means: the mean of ``E`` evaluations of ``loss.loss`` after training is below
the mean before by more than 4 standard errors of the difference (each standard error
measured from its ``E`` evaluations). Where the latent space is small the exact
negative log-likelihood, by enumeration, must improve too (it has no noise at all).
"""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import SVI
from torch import Tensor

from pyro_wakesleep import ReweightedWakeSleep, WakeSleep
from pyro_wakesleep.helmholtz import HelmholtzMachine

pytestmark = pytest.mark.usefixtures("one_torch_thread", "pyro_seed_0")


# ---------------------------------------------------------------------------------------------
# data and exact likelihoods
# ---------------------------------------------------------------------------------------------
def bars_3x3(num_data: int, seed: int) -> Tensor:
    """3x3 bars: vertical or horizontal with probability 1/2, each bar on with probability 0.3."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(num_data, 3, 3)
    vertical = torch.rand(num_data, generator=generator) < 0.5
    bars = (torch.rand(num_data, 3, generator=generator) < 0.3).float()
    images[vertical] = bars[vertical][:, None, :].expand(-1, 3, 3)
    images[~vertical] = bars[~vertical][:, :, None].expand(-1, 3, 3)
    return images.reshape(num_data, 9)


def all_binary_states(num_units: int) -> Tensor:
    """Every 0/1 vector of length ``num_units``: shape ``(2**num_units, num_units)``."""
    return torch.tensor(list(itertools.product((0.0, 1.0), repeat=num_units)))


def _bernoulli(logits: Tensor, value: Tensor) -> Tensor:
    return dist.Bernoulli(logits=logits).log_prob(value).sum(-1)


@torch.no_grad()
def sbn_exact_log_joint_and_guide(machine: HelmholtzMachine, x: Tensor) -> tuple[Tensor, Tensor]:
    """``log p(x_i, h)`` and ``log q(h | x_i)`` for every hidden configuration ``h``: ``(S, N)``."""
    states = all_binary_states(sum(machine.hidden))  # (S, H)
    layers = list(torch.split(states, machine.hidden, dim=-1))  # bottom to top, each (S, h_l)
    gen, rec = machine.generative, machine.recognition
    log_prior = _bernoulli(gen.top_logits, layers[-1])
    for level in range(len(layers) - 1):  # p(h_l | h_{l+1})
        log_prior = log_prior + _bernoulli(gen.layers[level + 1](layers[level + 1]), layers[level])
    log_lik = _bernoulli(gen.layers[0](layers[0])[:, None, :], x)  # (S, N)
    below = rec[0](x)  # (N, h_1)
    log_q = _bernoulli(below, layers[0][:, None, :])
    for level in range(1, len(layers)):
        log_q = log_q + _bernoulli(rec[level](layers[level - 1]), layers[level])[:, None]
    return log_prior[:, None] + log_lik, log_q


def sbn_exact_nll(machine: HelmholtzMachine, x: Tensor) -> float:
    """``-Σ_i log p(x_i)`` by enumerating every hidden state."""
    log_joint, _ = sbn_exact_log_joint_and_guide(machine, x)
    return -float(torch.logsumexp(log_joint, dim=0).sum())


def evaluations(loss, model, guide, x: Tensor, repeats: int) -> Tensor:
    return torch.tensor([loss.loss(model, guide, x) for _ in range(repeats)], dtype=torch.float64)


def assert_improved(before: Tensor, after: Tensor, what: str) -> None:
    """``after`` below ``before`` by more than 4 standard errors of the difference of means."""
    gap = float(before.mean() - after.mean())
    standard_error = math.sqrt(
        float(before.var()) / before.numel() + float(after.var()) / after.numel()
    )
    assert gap > 4 * standard_error, (
        f"{what}: mean loss {float(before.mean()):.3f} -> {float(after.mean()):.3f}, "
        f"improvement {gap:.3f} <= 4 se = {4 * standard_error:.3f}"
    )


def train(model, guide, x: Tensor, loss, steps: int, lr: float) -> None:
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), loss=loss)
    for _ in range(steps):
        value = svi.step(x)
    assert math.isfinite(value)


# ---------------------------------------------------------------------------------------------
# sigmoid belief nets
# ---------------------------------------------------------------------------------------------
EVALUATIONS = 20


@pytest.mark.slow
@pytest.mark.parametrize(
    "make_loss, make_evaluator",
    [
        (lambda: ReweightedWakeSleep(num_particles=10), lambda: ReweightedWakeSleep(50)),
        (lambda: WakeSleep(num_particles=1), lambda: WakeSleep(num_particles=50)),
    ],
    ids=["rws", "ws"],
)
def test_helmholtz_machine_training_improves_bound(make_loss, make_evaluator) -> None:
    x = bars_3x3(64, seed=3)
    machine = HelmholtzMachine(num_visible=9, hidden=(4, 2))
    evaluator = make_evaluator()  # the objective's own bound: IWAE for RWS, ELBO for WS
    before = evaluations(evaluator, machine.model, machine.guide, x, EVALUATIONS)
    nll_before = sbn_exact_nll(machine, x)

    train(machine.model, machine.guide, x, make_loss(), steps=400, lr=0.03)

    after = evaluations(evaluator, machine.model, machine.guide, x, EVALUATIONS)
    assert_improved(before, after, type(evaluator).__name__)
    # The bound is climbed through the model, so the exact likelihood must rise too.
    assert sbn_exact_nll(machine, x) < nll_before
    # And the bound stays a bound: E[loss] >= exact NLL (up to 4 se).
    assert float(after.mean()) > sbn_exact_nll(machine, x) - 4 * float(after.std()) / math.sqrt(
        EVALUATIONS
    )


@pytest.mark.slow
def test_rws_value_approaches_exact_nll_from_above() -> None:
    # E[-IWAE_K] >= -log p(x) for every K (Jensen), and the gap is
    # Var(w̃) / (2K) + O(K⁻²) per datapoint with w̃ = p(h|x)/q(h|x), Var(w̃) = E_q[w̃²] - 1
    # = Σ_h p(h|x)²/q(h|x) - 1, computed exactly by enumeration. The mean of R values must lie
    # in [exact - 4 se, exact + 2·gap + 4 se]; the factor 2 covers the O(K⁻²) remainder.
    x = bars_3x3(16, seed=4)
    machine = HelmholtzMachine(num_visible=9, hidden=(3, 2))
    with torch.no_grad():  # sharpen the generative net so that the posterior is far from flat
        for layer in machine.generative.layers:
            layer.weight.mul_(4.0)
    num_particles, repeats = 5000, 20
    loss = ReweightedWakeSleep(num_particles=num_particles)
    values = evaluations(loss, machine.model, machine.guide, x, repeats)

    log_joint, log_q = sbn_exact_log_joint_and_guide(machine, x)
    log_evidence = torch.logsumexp(log_joint, dim=0)
    exact = -float(log_evidence.sum())
    log_posterior = log_joint - log_evidence
    second_moment = torch.exp(2 * log_posterior - log_q).sum(0)  # E_q[w̃²] per datapoint
    gap = float((second_moment - 1).sum()) / (2 * num_particles)

    standard_error = float(values.std()) / math.sqrt(repeats)
    mean = float(values.mean())
    assert mean > exact - 4 * standard_error, f"value {mean:.4f} below exact NLL {exact:.4f}"
    assert mean < exact + 2 * gap + 4 * standard_error, (
        f"value {mean:.4f} vs exact NLL {exact:.4f}: gap {mean - exact:.4f} exceeds "
        f"2 x predicted {gap:.4f} + 4 se {4 * standard_error:.4f}"
    )
    # The window is narrow: much narrower than the gap of the ELBO (K = 1), Σ_i KL(q || p).
    kl = float((log_q.exp() * (log_q - log_posterior)).sum())
    assert 2 * gap + 8 * standard_error < kl


@pytest.mark.slow
def test_ws_value_is_unbiased_for_exact_elbo() -> None:
    # Classic WS reports -ELBO estimated with K guide samples; its expectation is
    # -Σ_i Σ_h q(h|x_i) (log p(x_i, h) - log q(h|x_i)), exact by enumeration.
    x = bars_3x3(16, seed=5)
    machine = HelmholtzMachine(num_visible=9, hidden=(3, 2))
    repeats = 200
    values = evaluations(WakeSleep(num_particles=4), machine.model, machine.guide, x, repeats)
    log_joint, log_q = sbn_exact_log_joint_and_guide(machine, x)
    exact_elbo = float((log_q.exp() * (log_joint - log_q)).sum())
    standard_error = float(values.std()) / math.sqrt(repeats)
    assert abs(float(values.mean()) + exact_elbo) < 4 * standard_error


@pytest.mark.parametrize("loss_class", [ReweightedWakeSleep, WakeSleep])
def test_helmholtz_minibatch_value_is_scaled_after_the_bound(loss_class: type) -> None:
    # model(x_batch, num_data=N) declares x_batch a mini-batch of a data set of N: the value
    # must be N/B times the mini-batch's own value, from the same samples (the explicit
    # sub-sample draws no random numbers, so the same seed gives the same particles). Scaling
    # inside the logsumexp instead would break the exact ratio for K > 1.
    x = bars_3x3(64, seed=6)
    batch, num_data = x[:16], 64
    machine = HelmholtzMachine(num_visible=9, hidden=(4, 2))
    loss = loss_class(num_particles=7, max_plate_nesting=1)
    pyro.set_rng_seed(21)
    scaled = loss.loss(machine.model, machine.guide, batch, num_data)
    pyro.set_rng_seed(21)
    unscaled = loss.loss(machine.model, machine.guide, batch)
    assert scaled == pytest.approx(num_data / 16 * unscaled, rel=1e-6)  # float32 round-off


# ---------------------------------------------------------------------------------------------
# a Categorical latent: mixture of Bernoullis
# ---------------------------------------------------------------------------------------------
NUM_COMPONENTS, NUM_PIXELS = 3, 8


def mixture_data(num_data: int, seed: int) -> Tensor:
    """Three binary prototypes, each pixel flipped with probability 0.1."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = (torch.rand(NUM_COMPONENTS, NUM_PIXELS, generator=generator) < 0.5).float()
    labels = torch.randint(NUM_COMPONENTS, (num_data,), generator=generator)
    flips = (torch.rand(num_data, NUM_PIXELS, generator=generator) < 0.1).float()
    return (prototypes[labels] + flips) % 2


def mixture_model(x: Tensor) -> None:
    mix_logits = pyro.param("mix_logits", torch.zeros(NUM_COMPONENTS))
    pixel_logits = pyro.param("pixel_logits", 0.5 * torch.randn(NUM_COMPONENTS, NUM_PIXELS))
    with pyro.plate("data", x.shape[-2]):
        z = pyro.sample("z", dist.Categorical(logits=mix_logits))
        pyro.sample("x", dist.Bernoulli(logits=pixel_logits[z]).to_event(1), obs=x)


def mixture_guide(x: Tensor) -> None:
    weight = pyro.param("encoder_weight", torch.zeros(NUM_PIXELS, NUM_COMPONENTS))
    bias = pyro.param("encoder_bias", torch.zeros(NUM_COMPONENTS))
    with pyro.plate("data", x.shape[-2]):
        pyro.sample("z", dist.Categorical(logits=x @ weight + bias))


@torch.no_grad()
def mixture_exact_nll(x: Tensor) -> float:
    log_mix = torch.log_softmax(pyro.param("mix_logits"), -1)  # (C,)
    log_lik = _bernoulli(pyro.param("pixel_logits")[:, None, :], x)  # (C, N)
    return -float(torch.logsumexp(log_mix[:, None] + log_lik, dim=0).sum())


@pytest.mark.slow
def test_categorical_mixture_training_improves_with_rws() -> None:
    x = mixture_data(60, seed=8)
    loss = ReweightedWakeSleep(num_particles=10)
    # Create the parameters, then record the starting point.
    before = evaluations(loss, mixture_model, mixture_guide, x, EVALUATIONS)
    nll_before = mixture_exact_nll(x)

    train(mixture_model, mixture_guide, x, loss, steps=300, lr=0.05)

    after = evaluations(loss, mixture_model, mixture_guide, x, EVALUATIONS)
    assert_improved(before, after, "RWS on a Bernoulli mixture")
    nll_after = mixture_exact_nll(x)
    assert nll_after < nll_before
    # And the value is still a bound: E[loss] >= exact NLL, up to 4 se.
    assert float(after.mean()) > nll_after - 4 * float(after.std()) / math.sqrt(EVALUATIONS)
