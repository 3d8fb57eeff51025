"""Exact marginal likelihood of small Helmholtz machines, and the bars KL in bits."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import wakesleep.trainer.exact as exact
from wakesleep.trainer.datasets import bars_distribution
from wakesleep.trainer.exact import (
    bars_kl_bits,
    entropy_bits,
    helmholtz_enumerable,
    helmholtz_log_marginal,
)


def _random_machine(sizes: tuple[int, ...], seed: int, scale: float = 1.5):
    """``sizes = (D, n_1, ..., n_L)``; layers[i] maps layer i+1 to layer i as nn.Linear does."""
    rng = np.random.default_rng(seed)
    top = rng.normal(scale=scale, size=sizes[-1])
    layers = [
        (
            rng.normal(scale=scale, size=(sizes[i], sizes[i + 1])),
            rng.normal(scale=scale, size=sizes[i]),
        )
        for i in range(len(sizes) - 1)
    ]
    return top, layers


def _all_binary(n: int) -> np.ndarray:
    return np.array(list(itertools.product([0, 1], repeat=n)), dtype=np.uint8)


def _bernoulli_prob(values, logits) -> float:
    """∏_j σ(a_j)^{v_j} (1 − σ(a_j))^{1 − v_j}, term by term in plain Python."""
    prob = 1.0
    for v, a in zip(values, logits, strict=True):
        on = 1.0 / (1.0 + math.exp(-a))
        prob *= on if v == 1 else 1.0 - on
    return prob


def test_matches_brute_force_double_loop():
    top, layers = _random_machine((5, 3, 2), seed=0)
    (w0, b0), (w1, b1) = layers
    xs = _all_binary(5)
    expected = []
    for x in xs:
        total = 0.0
        for h2 in itertools.product([0, 1], repeat=2):
            p_h2 = _bernoulli_prob(h2, top)
            for h1 in itertools.product([0, 1], repeat=3):
                p_h1 = _bernoulli_prob(h1, w1 @ np.array(h2) + b1)
                total += p_h2 * p_h1 * _bernoulli_prob(x, w0 @ np.array(h1) + b0)
        expected.append(math.log(total))
    got = helmholtz_log_marginal(xs, top, layers)
    assert got.shape == (32,) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("sizes", "scale"), [((6, 3), 2.0), ((5, 3, 2, 2), 2.0), ((4, 2, 3), 60.0)]
)
def test_visible_probabilities_sum_to_one(sizes, scale):
    top, layers = _random_machine(sizes, seed=1, scale=scale)
    log_p = helmholtz_log_marginal(_all_binary(sizes[0]), top, layers)
    assert np.all(np.isfinite(log_p) | (log_p == -np.inf))
    assert np.exp(log_p).sum() == pytest.approx(1.0, abs=1e-10)


def test_extreme_logits_stay_finite_and_exact():
    # one hidden unit h ~ Bern(1/2); pixel logits +1000 when h = 1, -1000 when h = 0, so
    # p(x) = ½ σ(±1000)… : log p(111) = log(½ + ½e^-3000) = -log 2 and
    # log p(101) = log(½e^-1000 + ½e^-2000) = -log 2 - 1000 (to far below 1e-9)
    top = np.zeros(1)
    layers = [(np.full((3, 1), 2000.0), np.full(3, -1000.0))]
    xs = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 0]])
    log_p = helmholtz_log_marginal(xs, top, layers)
    np.testing.assert_allclose(log_p, [-math.log(2), -math.log(2) - 1000, -math.log(2)], atol=1e-9)


def test_blocks_do_not_change_the_result(monkeypatch):
    top, layers = _random_machine((6, 4, 3), seed=2)
    xs = np.random.default_rng(2).integers(0, 2, size=(40, 6))
    whole = helmholtz_log_marginal(xs, top, layers)
    monkeypatch.setattr(exact, "BLOCK_ELEMENTS", 5)
    np.testing.assert_allclose(helmholtz_log_marginal(xs, top, layers), whole, rtol=1e-12)


def test_shapes_repeated_rows_and_single_row():
    top, layers = _random_machine((4, 2), seed=3)
    xs = _all_binary(4)
    log_p = helmholtz_log_marginal(xs, top, layers)
    repeated = helmholtz_log_marginal(xs[[3, 3, 0, 3]], top, layers)
    np.testing.assert_allclose(repeated, log_p[[3, 3, 0, 3]])
    single = helmholtz_log_marginal(xs[5], top, layers)
    assert single.shape == () and single == pytest.approx(log_p[5])


def test_too_many_hidden_bits_and_bad_inputs_raise():
    top, layers = _random_machine((3, 2, 2), seed=4)
    with pytest.raises(ValueError, match="4 hidden units.*max_hidden_bits=3"):
        helmholtz_log_marginal(np.zeros((1, 3)), top, layers, max_hidden_bits=3)
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        helmholtz_log_marginal(np.zeros((1, 4)), top, layers)
    with pytest.raises(ValueError, match="binary"):
        helmholtz_log_marginal(np.full((1, 3), 0.5), top, layers)
    with pytest.raises(ValueError, match="layers\\[0\\].weight"):
        helmholtz_log_marginal(np.zeros((1, 3)), top, [layers[0], (np.zeros((3, 2)), np.zeros(3))])
    with pytest.raises(ValueError, match="torch.nn.Linear"):
        helmholtz_log_marginal(np.zeros((1, 3)), top, [(np.zeros((3, 2)), np.zeros(2))])


def test_helmholtz_enumerable():
    assert helmholtz_enumerable((8, 1))
    assert helmholtz_enumerable((16,))
    assert helmholtz_enumerable((22,)) and not helmholtz_enumerable((23,))
    assert not helmholtz_enumerable((200, 200))
    assert helmholtz_enumerable((4, 4), max_hidden_bits=8)
    assert not helmholtz_enumerable((4, 5), max_hidden_bits=8)
    with pytest.raises(ValueError):
        helmholtz_enumerable((4, 0))


def test_entropy_bits():
    assert entropy_bits(np.full(8, 1 / 8)) == pytest.approx(3.0)
    assert entropy_bits([1.0, 0.0]) == 0.0
    assert entropy_bits([0.5, 0.25, 0.25]) == pytest.approx(1.5)
    _, probs = bars_distribution()
    assert round(entropy_bits(probs), 2) == 3.43
    with pytest.raises(ValueError):
        entropy_bits([0.5, 0.6])
    with pytest.raises(ValueError):
        entropy_bits([1.5, -0.5])


# --------------------------------------------------------------------------- bars KL


def _bars_machine(gain: float = 40.0, top_logit: float = math.log(2.0)):
    """A 16-8-1 machine built by hand to generate the bars (Hinton et al. 1995).

    Top unit t = 1 means vertical: p(t = 1) = σ(log 2) = 2/3. Hidden units 0..3 are the
    columns, 4..7 the rows; each has logit log(0.2/0.8) = log(1/4) when t selects its
    orientation and −gain otherwise:
      column unit: logit = (gain + log 1/4) t − gain
      row unit:    logit = (−gain − log 1/4) t + log 1/4
    Pixel (r, c) has logit gain (h_c + h_{4+r}) − gain/2, i.e. ±gain/2 for one bar or
    none, so each pixel is the OR of its column and its row up to σ(−gain/2).
    """
    quarter = math.log(0.25)
    w1 = np.array([[gain + quarter]] * 4 + [[-gain - quarter]] * 4)
    b1 = np.array([-gain] * 4 + [quarter] * 4)
    w0 = np.zeros((16, 8))
    for r in range(4):
        for c in range(4):
            w0[4 * r + c, c] = gain
            w0[4 * r + c, 4 + r] = gain
    b0 = np.full(16, -gain / 2)
    return np.array([top_logit]), [(w0, b0), (w1, b1)]


def test_hand_built_bars_machine_reproduces_the_distribution():
    top, layers = _bars_machine()
    images, probs = bars_distribution()
    model = np.exp(helmholtz_log_marginal(images, top, layers))
    np.testing.assert_allclose(model, probs, rtol=1e-6)
    kl = bars_kl_bits(top, layers)
    assert 0.0 <= kl < 1e-6


def test_kl_of_a_wrong_orientation_prior_is_analytic():
    # p(vertical) = 1/2 instead of 2/3: images of one orientation only are off by a factor
    # (1/2)/(2/3) or (1/2)/(1/3); all-off and all-on keep their probability.
    top, layers = _bars_machine(top_logit=0.0)
    one_orientation = 1 - 0.8**4 - 0.2**4
    expected = 2 / 3 * one_orientation * math.log2(4 / 3) + 1 / 3 * one_orientation * math.log2(
        2 / 3
    )
    assert bars_kl_bits(top, layers) == pytest.approx(expected, abs=1e-6)


def test_kl_of_a_uniform_machine_is_16_bits_minus_the_entropy():
    # zero weights and biases: every 16-pixel image has probability 2^-16
    top = np.zeros(1)
    layers = [(np.zeros((16, 8)), np.zeros(16)), (np.zeros((8, 1)), np.zeros(8))]
    _, probs = bars_distribution()
    entropy = -np.sum(probs * np.log2(probs))
    assert bars_kl_bits(top, layers) == pytest.approx(16.0 - entropy, abs=1e-9)


def test_kl_is_non_negative_for_random_machines():
    for seed in range(5):
        top, layers = _random_machine((16, 8, 1), seed=seed)
        assert bars_kl_bits(top, layers) > 0.0
