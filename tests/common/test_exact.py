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


# --------------------------------------------------------------------------- Gaussian visible


def _gaussian_machine(sizes: tuple[int, ...], seed: int, scale: float = 1.5):
    """A random machine whose visible units are Gaussian with scales in ``[0.3, 2.5]``."""
    top, layers = _random_machine(sizes, seed=seed, scale=scale)
    visible_scale = np.random.default_rng(seed + 100).uniform(0.3, 2.5, size=sizes[0])
    return top, layers, visible_scale


def _brute_force_gaussian_log_marginal(xs, top, layers, visible_scale) -> np.ndarray:
    """``log Σ_{h2, h1} p(h2) p(h1 | h2) ∏_d N(x_d; (W0 h1 + b0)_d, s_d)`` for a 2-hidden-layer
    machine, every configuration written out, with scipy's normal density."""
    from scipy.special import logsumexp
    from scipy.stats import norm

    (w0, b0), (w1, b1) = layers
    result = []
    for x in np.atleast_2d(xs):
        terms = []
        for h2 in itertools.product([0, 1], repeat=len(top)):
            log_h2 = math.log(_bernoulli_prob(h2, top))
            for h1 in itertools.product([0, 1], repeat=len(b1)):
                log_h1 = math.log(_bernoulli_prob(h1, w1 @ np.array(h2) + b1))
                mean = w0 @ np.array(h1, dtype=np.float64) + b0
                log_x = float(np.sum(norm.logpdf(x, loc=mean, scale=visible_scale)))
                terms.append(log_h2 + log_h1 + log_x)
        result.append(logsumexp(terms))
    return np.array(result)


def test_gaussian_matches_brute_force_over_every_hidden_configuration():
    top, layers, visible_scale = _gaussian_machine((5, 3, 2), seed=10)
    assert len(set(np.round(visible_scale, 6))) == 5  # non-unit, distinct scales
    rng = np.random.default_rng(11)
    # near the means and far from them: log p(x) from about -5 to about -60
    xs = np.concatenate([rng.normal(scale=1.5, size=(12, 5)), rng.normal(scale=6.0, size=(4, 5))])
    expected = _brute_force_gaussian_log_marginal(xs, top, layers, visible_scale)
    got = helmholtz_log_marginal(xs, top, layers, visible_scale=visible_scale)
    assert got.shape == (16,) and got.dtype == np.float64
    assert expected.min() < -30.0  # the far rows are in the tails
    np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-11)
    single = helmholtz_log_marginal(xs[3], top, layers, visible_scale=visible_scale)
    assert single.shape == () and single == pytest.approx(expected[3], rel=1e-11)
    repeated = helmholtz_log_marginal(xs[[2, 2, 0]], top, layers, visible_scale=visible_scale)
    np.testing.assert_allclose(repeated, expected[[2, 2, 0]], rtol=1e-11)
    # a list of scales is as good as an array
    as_list = helmholtz_log_marginal(xs, top, layers, visible_scale=list(visible_scale))
    np.testing.assert_allclose(as_list, got, rtol=1e-14)


def test_gaussian_one_hidden_layer_matches_brute_force():
    from scipy.special import logsumexp
    from scipy.stats import norm

    top, layers, visible_scale = _gaussian_machine((3, 4), seed=12)
    ((w0, b0),) = layers
    xs = np.random.default_rng(13).normal(scale=2.0, size=(7, 3))
    expected = []
    for x in xs:
        expected.append(
            logsumexp(
                [
                    math.log(_bernoulli_prob(h, top))
                    + norm.logpdf(x, w0 @ np.array(h, dtype=float) + b0, visible_scale).sum()
                    for h in itertools.product([0, 1], repeat=4)
                ]
            )
        )
    got = helmholtz_log_marginal(xs, top, layers, visible_scale=visible_scale)
    np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-11)


def test_gaussian_small_scales_stay_accurate():
    # the exponential-family rewrite adds x·a/s² − a²/2s² − x²/2s², each ~1e7 here, that
    # cancel to O(1) near a mean: float64 keeps the sum to ~1e-8
    top, layers, _ = _gaussian_machine((4, 3), seed=14)
    visible_scale = np.full(4, 1e-3)
    ((w0, b0),) = layers
    h = np.array([1.0, 0.0, 1.0])
    rng = np.random.default_rng(15)
    xs = w0 @ h + b0 + visible_scale * rng.normal(size=(5, 4))
    from scipy.special import logsumexp
    from scipy.stats import norm

    expected = [
        logsumexp(
            [
                math.log(_bernoulli_prob(c, top))
                + norm.logpdf(x, w0 @ np.array(c, dtype=float) + b0, visible_scale).sum()
                for c in itertools.product([0, 1], repeat=3)
            ]
        )
        for x in xs
    ]
    got = helmholtz_log_marginal(xs, top, layers, visible_scale=visible_scale)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_gaussian_blocks_do_not_change_the_result(monkeypatch):
    top, layers, visible_scale = _gaussian_machine((6, 4, 3), seed=16)
    xs = np.random.default_rng(17).normal(scale=2.0, size=(40, 6))
    whole = helmholtz_log_marginal(xs, top, layers, visible_scale=visible_scale)
    for block in (1, 5, 37):
        monkeypatch.setattr(exact, "BLOCK_ELEMENTS", block)
        blocked = helmholtz_log_marginal(xs, top, layers, visible_scale=visible_scale)
        np.testing.assert_allclose(blocked, whole, rtol=1e-12)


def test_gaussian_density_integrates_to_one_in_one_dimension():
    # one visible unit below hidden layers (3, 2): a mixture of 8 normals of scale 0.4. The
    # trapezoid rule on a fine grid over ±14 scales of every mean is exact far below 1e-9
    # for this smooth, fast-decaying integrand, so a wrong constant (log 2π, log s, a
    # missing factor in the exponent) fails by far more than the tolerance.
    top, layers, _ = _gaussian_machine((1, 3, 2), seed=18)
    visible_scale = np.array([0.4])
    (w0, b0), _ = layers
    means = np.array([w0 @ np.array(h, dtype=float) + b0 for h in _all_binary(3)]).ravel()
    grid = np.linspace(means.min() - 14 * 0.4, means.max() + 14 * 0.4, 40_001)
    density = np.exp(
        helmholtz_log_marginal(grid[:, None], top, layers, visible_scale=visible_scale)
    )
    total = np.trapezoid(density, grid)
    assert total == pytest.approx(1.0, abs=1e-9)
    # and its mean is the mixture's: Σ_h1 p(h1) (W0 h1 + b0)
    p_h1 = np.exp(helmholtz_log_marginal(_all_binary(3), top, [layers[1]]))
    assert np.trapezoid(grid * density, grid) == pytest.approx(p_h1 @ means, abs=1e-8)


def test_gaussian_density_integrates_to_one_in_two_dimensions():
    # two visible units of different scales (checks Σ_d log s_d and the (D/2) log 2π)
    top, layers, _ = _gaussian_machine((2, 3), seed=19)
    visible_scale = np.array([0.5, 1.3])
    ((w0, b0),) = layers
    means = np.array([w0 @ np.array(h, dtype=float) + b0 for h in _all_binary(3)])
    axes = [
        np.linspace(means[:, d].min() - 12 * s, means[:, d].max() + 12 * s, 801)
        for d, s in enumerate(visible_scale)
    ]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (801, 801, 2)
    log_p = helmholtz_log_marginal(grid.reshape(-1, 2), top, layers, visible_scale=visible_scale)
    density = np.exp(log_p).reshape(801, 801)
    total = np.trapezoid(np.trapezoid(density, axes[1], axis=1), axes[0])
    assert total == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize(
    "bad",
    [
        np.ones(4),  # one scale too few
        np.ones((5, 1)),  # right size, wrong shape
        np.ones(6),
        np.array([1.0, 1.0, 0.0, 1.0, 1.0]),  # zero
        np.array([1.0, -0.5, 1.0, 1.0, 1.0]),  # negative
        np.array([1.0, 1.0, np.nan, 1.0, 1.0]),
        np.array([1.0, 1.0, np.inf, 1.0, 1.0]),
    ],
    ids=["short", "column", "long", "zero", "negative", "nan", "inf"],
)
def test_bad_visible_scale_raises(bad):
    top, layers, _ = _gaussian_machine((5, 3, 2), seed=20)
    with pytest.raises(ValueError, match="visible_scale must hold 5 positive, finite"):
        helmholtz_log_marginal(np.zeros((2, 5)), top, layers, visible_scale=bad)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_gaussian_x_raises(value):
    top, layers, visible_scale = _gaussian_machine((5, 3, 2), seed=21)
    xs = np.zeros((3, 5))
    xs[1, 2] = value
    with pytest.raises(ValueError, match="x must be finite for Gaussian visible units"):
        helmholtz_log_marginal(xs, top, layers, visible_scale=visible_scale)


def test_visible_scale_is_keyword_only_and_bernoulli_error_points_to_it():
    top, layers, visible_scale = _gaussian_machine((5, 3, 2), seed=22)
    with pytest.raises(TypeError):
        helmholtz_log_marginal(np.zeros((1, 5)), top, layers, 22, visible_scale)
    with pytest.raises(ValueError, match="binary.*visible_scale"):
        helmholtz_log_marginal(np.full((1, 5), 0.5), top, layers)
    # wrong x shape is still reported for Gaussian units
    with pytest.raises(ValueError, match=r"shape \(N, 5\)"):
        helmholtz_log_marginal(np.zeros((1, 4)), top, layers, visible_scale=visible_scale)
    # binary x under Gaussian units is just a real vector: a density, not a probability
    binary = _all_binary(5)
    log_p = helmholtz_log_marginal(binary, top, layers, visible_scale=visible_scale)
    expected = _brute_force_gaussian_log_marginal(binary, top, layers, visible_scale)
    np.testing.assert_allclose(log_p, expected, rtol=1e-11)
    assert not np.allclose(log_p, helmholtz_log_marginal(binary, top, layers))
