"""Exact computations on small Helmholtz machines, by enumeration (NumPy, float64).

A Helmholtz machine's generative model (Hinton, Dayan, Frey & Neal 1995, *Science*
268, 1158-1161) is a layered sigmoid belief net with binary units,

.. math::

    p(h_L) = \\prod_j \\mathrm{Bern}(h_{L,j}; \\sigma(b_{L,j})),\\qquad
    p(h_l \\mid h_{l+1}) = \\prod_j \\mathrm{Bern}(h_{l,j}; \\sigma(W_l h_{l+1} + b_l)_j),

for ``l = L-1, ..., 0`` with ``h_0 = x`` (or, for Gaussian visible units,
``p(x | h_1) = ∏_d N(x_d; (W_0 h_1 + b_0)_d, s_d²)``). With ``a = W_l h_{l+1} + b_l`` and
``log σ(a) − log σ(−a) = a``, one layer's log-probability is

.. math::

    \\log p(h_l \\mid h_{l+1}) = h_l^\\top a - \\sum_j \\operatorname{softplus}(a_j),

a matrix product over all pairs of configurations. The marginal
``p(x) = Σ_{h_1..h_L} p(h_L) ∏_l p(h_l | h_{l+1})`` is then computed top-down, one layer
at a time: ``log p(h_l) = logsumexp_{h_{l+1}} [log p(h_{l+1}) + log p(h_l | h_{l+1})]``
over all ``2^{n_l} × 2^{n_{l+1}}`` pairs, and finally over the data rows and the
``2^{n_1}`` configurations of the bottom layer. Every sum is a stable log-sum-exp,
processed in blocks of at most :data:`BLOCK_ELEMENTS` numbers so memory stays bounded
whatever the layer sizes. The cost is ``O(Σ_l 2^{n_l + n_{l+1}} n_l + N 2^{n_1} D)``.

Parameters follow ``torch.nn.Linear``: a layer is ``(weight, bias)`` with ``weight`` of
shape ``(out, in)`` and ``bias`` of shape ``(out,)``, mapping ``h_{l+1}`` (size ``in``) to
the logits of ``h_l`` (size ``out``). Pass NumPy arrays, e.g.
``layer.weight.detach().cpu().numpy()`` in PyTorch or ``np.asarray(params[...])`` in JAX.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .datasets import bars_distribution

__all__ = [
    "BLOCK_ELEMENTS",
    "MAX_HIDDEN_BITS",
    "bars_kl_bits",
    "entropy_bits",
    "helmholtz_enumerable",
    "helmholtz_log_marginal",
]

#: Default limit on the total number of hidden units for exact enumeration.
MAX_HIDDEN_BITS = 22
#: The largest intermediate block (number of float64 values) built at once (32 MiB).
BLOCK_ELEMENTS = 2**22

_Layer = tuple[np.ndarray, np.ndarray]


def _softplus(a: np.ndarray) -> np.ndarray:
    """``log(1 + exp(a))``, stable for any ``a``."""
    return np.logaddexp(0.0, a)


def _logsumexp_rows_(values: np.ndarray) -> np.ndarray:
    """Stable ``log Σ_j exp(values[:, j])``; ``-inf`` where a row is all ``-inf``. Overwrites ``values``."""
    peak = np.max(values, axis=1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    values -= peak
    np.exp(values, out=values)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(values, axis=1)) + peak[:, 0]


def _configurations(num_bits: int) -> np.ndarray:
    """All ``2^num_bits`` binary vectors as rows, float64; unit ``j`` is bit ``j`` of the row index."""
    index = np.arange(2**num_bits, dtype=np.int64)
    return ((index[:, None] >> np.arange(num_bits)) & 1).astype(np.float64)


def _log_bernoulli_top(top_logits: np.ndarray) -> np.ndarray:
    """``log p(h_L)`` for every configuration of the top layer: ``h·b − Σ softplus(b)``."""
    return _configurations(len(top_logits)) @ top_logits - _softplus(top_logits).sum()


def _log_marginal_below(
    upper_configs: np.ndarray,
    upper_log_prob: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    targets: np.ndarray,
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """``log Σ_u p(u) p(target | u)`` for every row of ``targets``.

    ``upper_configs`` (U, in) are all configurations ``u`` of the layer above with
    log-probabilities ``upper_log_prob`` (U,); ``targets`` (R, out) are rows of the layer
    below. Both kinds of units are exponential families in ``target``,
    ``log p(t | u) = t·η(u) − A(u) + log h(t)``, so every pair ``(row, u)`` is one matrix
    product plus offsets: Bernoulli units (``scale=None``) have ``η = a`` (the logits
    ``a = W u + b``), ``A = Σ softplus(a)``, ``h = 1``; Gaussian units of standard deviation
    ``scale`` have ``η = a / s²``, ``A = Σ a² / 2s²`` and
    ``log h(t) = −Σ t² / 2s² − Σ log s − (D/2) log 2π``. Blocks keep every intermediate
    under :data:`BLOCK_ELEMENTS` values.
    """
    num_upper, num_out = len(upper_configs), weight.shape[0]
    # a column of ones folds the per-configuration offset into the matrix product
    targets_1 = np.concatenate([targets, np.ones((len(targets), 1))], axis=1)
    result = np.full(len(targets), -np.inf)
    upper_block = max(1, min(num_upper, BLOCK_ELEMENTS // (num_out + 1)))
    for u0 in range(0, num_upper, upper_block):
        logits = upper_configs[u0 : u0 + upper_block] @ weight.T + bias  # (u, out)
        if scale is None:
            natural, log_partition = logits, _softplus(logits).sum(axis=1)
        else:
            natural = logits / scale**2
            log_partition = 0.5 * (logits * natural).sum(axis=1)
        offset = upper_log_prob[u0 : u0 + upper_block] - log_partition  # (u,)
        natural_1 = np.concatenate([natural, offset[:, None]], axis=1)  # (u, out + 1)
        row_block = max(1, BLOCK_ELEMENTS // len(natural_1))
        for r0 in range(0, len(targets), row_block):
            joint = targets_1[r0 : r0 + row_block] @ natural_1.T  # (r, u): log p(u) p(row | u) − log h
            rows = slice(r0, r0 + row_block)
            result[rows] = np.logaddexp(result[rows], _logsumexp_rows_(joint))
    if scale is not None:
        result += (
            -0.5 * (targets**2 / scale**2).sum(axis=1)
            - np.log(scale).sum()
            - 0.5 * num_out * np.log(2.0 * np.pi)
        )
    return result


def _as_layers(top_logits: np.ndarray, layers: Sequence[_Layer]) -> tuple[np.ndarray, list[_Layer]]:
    """Convert to float64 arrays and check that the layer shapes chain together."""
    top = np.asarray(top_logits, dtype=np.float64)
    if top.ndim != 1 or top.size == 0:
        raise ValueError(f"top_logits must be a non-empty 1-D array, got shape {top.shape}.")
    if len(layers) == 0:
        raise ValueError("A Helmholtz machine needs at least one layer (weight, bias).")
    checked: list[_Layer] = []
    for i, layer in enumerate(layers):
        if len(layer) != 2:
            raise ValueError(f"layers[{i}] must be a pair (weight, bias), got {len(layer)} items.")
        weight = np.asarray(layer[0], dtype=np.float64)
        bias = np.asarray(layer[1], dtype=np.float64)
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise ValueError(
                f"layers[{i}] must be (weight (out, in), bias (out,)) as in torch.nn.Linear, "
                f"got weight {weight.shape} and bias {bias.shape}."
            )
        checked.append((weight, bias))
    for i in range(len(checked)):
        above = checked[i + 1][0].shape[0] if i + 1 < len(checked) else top.size
        if checked[i][0].shape[1] != above:
            what = (
                f"layers[{i + 1}] has {above} outputs"
                if i + 1 < len(checked)
                else (f"top_logits has {above} units")
            )
            raise ValueError(
                f"layers[{i}].weight has shape {checked[i][0].shape}, so it expects {checked[i][0].shape[1]} "
                f"units above it, but {what}."
            )
    return top, checked


def helmholtz_enumerable(hidden: Sequence[int], max_hidden_bits: int = MAX_HIDDEN_BITS) -> bool:
    """Whether :func:`helmholtz_log_marginal` accepts a machine with these hidden sizes.

    True when the total number of hidden units ``Σ_l n_l`` is at most ``max_hidden_bits``
    (every configuration of every hidden layer is then enumerable).
    """
    sizes = [int(n) for n in hidden]
    if not sizes or any(n < 1 for n in sizes):
        raise ValueError(f"hidden must be a non-empty sequence of positive sizes, got {hidden!r}.")
    return sum(sizes) <= max_hidden_bits


def helmholtz_log_marginal(
    x: np.ndarray,
    top_logits: np.ndarray,
    layers: Sequence[_Layer],
    max_hidden_bits: int = MAX_HIDDEN_BITS,
    *,
    visible_scale: np.ndarray | None = None,
) -> np.ndarray:
    """Exact ``log p(x)`` in nats of a Helmholtz machine's generative model, per row of ``x``.

    .. math::

        \\log p(x) = \\log \\sum_{h_1, \\dots, h_L} p(h_L) \\prod_{l=1}^{L-1}
        p(h_l \\mid h_{l+1}) \\, p(x \\mid h_1)

    by enumerating every configuration of every hidden layer (see the module docstring
    for the layer-by-layer scheme and its cost).

    :param x: the data, shape ``(N, D)`` (or ``(D,)`` for one row): 0/1 for Bernoulli visible
        units, real numbers for Gaussian ones.
    :param top_logits: logits of the top layer's prior, shape ``(n_L,)``.
    :param layers: ``layers[i] = (weight, bias)`` mapping ``h_{i+1}`` to the logits of
        ``h_i``, with ``h_0 = x``; ``weight`` has shape ``(n_i, n_{i+1})`` as in
        ``torch.nn.Linear`` and ``layers[-1]`` reads the top layer.
    :param max_hidden_bits: refuse machines with more hidden units than this in total.
    :param visible_scale: ``None`` for Bernoulli visible units (``layers[0]`` gives their
        logits); for Gaussian visible units (``visible="gaussian"``) the standard deviation
        of each unit, shape ``(D,)``, and ``layers[0]`` gives their means. ``log p(x)`` is
        then a log-density: nats per datapoint, not a log-probability.
    :returns: float64 array of shape ``x.shape[:-1]``.
    :raises ValueError: when ``Σ_l n_l > max_hidden_bits``, for shapes that do not chain,
        for Bernoulli ``x`` that is not 0/1, Gaussian ``x`` that is not finite, or a
        ``visible_scale`` that is not positive and of shape ``(D,)``.
    """
    top, checked = _as_layers(top_logits, layers)
    hidden = [w.shape[1] for w, _ in checked]
    if sum(hidden) > max_hidden_bits:
        raise ValueError(
            f"Exact enumeration over {sum(hidden)} hidden units (layers {tuple(hidden)}) means "
            f"2^{sum(hidden)} configurations, more than max_hidden_bits={max_hidden_bits} "
            f"allows; use an importance-sampling estimate instead, or raise max_hidden_bits."
        )
    data = np.asarray(x, dtype=np.float64)
    batch_shape = data.shape[:-1]
    num_visible = checked[0][0].shape[0]
    if data.ndim not in (1, 2) or data.shape[-1] != num_visible:
        raise ValueError(
            f"x must have shape (N, {num_visible}) or ({num_visible},) for this machine, got "
            f"{data.shape}."
        )
    if visible_scale is None:
        if not np.all((data == 0) | (data == 1)):
            raise ValueError(
                "x must be binary (0/1) for the exact marginal of a sigmoid belief net with "
                "Bernoulli visible units; pass visible_scale for Gaussian ones."
            )
        scale = None
    else:
        scale = np.asarray(visible_scale, dtype=np.float64)
        if scale.shape != (num_visible,) or not np.all(np.isfinite(scale) & (scale > 0)):
            raise ValueError(
                f"visible_scale must hold {num_visible} positive, finite standard deviations, "
                f"got shape {scale.shape}."
            )
        if not np.all(np.isfinite(data)):
            raise ValueError("x must be finite for Gaussian visible units.")
    # repeated rows (bars has 30 distinct images) are computed once
    data, inverse = np.unique(data.reshape(-1, num_visible), axis=0, return_inverse=True)

    # top-down: configurations and marginal log-probabilities of each hidden layer
    configs = _configurations(top.size)
    log_prob = _log_bernoulli_top(top)
    for weight, bias in reversed(checked[1:]):
        below = _configurations(weight.shape[0])
        log_prob = _log_marginal_below(configs, log_prob, weight, bias, below)
        configs = below
    weight, bias = checked[0]
    log_marginal = _log_marginal_below(configs, log_prob, weight, bias, data, scale)
    return log_marginal[inverse.reshape(-1)].reshape(batch_shape)


def entropy_bits(probs: np.ndarray) -> float:
    """Shannon entropy ``H(p) = −Σ_i p_i log₂ p_i`` in bits, with ``0 log 0 = 0``.

    :raises ValueError: for negative entries or entries that do not sum to 1 (to 1e-9).
    """
    p = np.asarray(probs, dtype=np.float64).ravel()
    if np.any(~np.isfinite(p)) or np.any(p < 0) or abs(p.sum() - 1.0) > 1e-9:
        raise ValueError(f"probs must be a probability vector (>= 0, sum 1), sum is {p.sum()}.")
    positive = p[p > 0]
    return float(-np.sum(positive * np.log2(positive)))


def bars_kl_bits(top_logits: np.ndarray, layers: Sequence[_Layer]) -> float:
    """Exact ``KL(p_bars ‖ p_model)`` in bits for a machine with 16 visible units.

    .. math::

        \\mathrm{KL} = \\sum_{x \\in \\text{bars}} p_\\text{bars}(x) \\,
        \\big(\\log_2 p_\\text{bars}(x) - \\log_2 p_\\text{model}(x)\\big)

    over the 30 images of :func:`wakesleep.trainer.datasets.bars_distribution` (the true
    distribution puts no mass elsewhere), with ``p_model(x)`` from
    :func:`helmholtz_log_marginal`. Hinton et al. (1995) report 0.10 bits for their
    16-8-1 network trained by wake-sleep. The value is ``≥ 0`` and ``+inf`` when the
    model gives a bars image probability zero.

    :param top_logits: as in :func:`helmholtz_log_marginal`.
    :param layers: as in :func:`helmholtz_log_marginal`; ``layers[0]`` has 16 outputs.
    :raises ValueError: when the machine is not enumerable (check
        :func:`helmholtz_enumerable` first) or does not have 16 visible units.
    """
    images, probs = bars_distribution()
    log_model = helmholtz_log_marginal(images, top_logits, layers)
    kl_nats = np.sum(probs * (np.log(probs) - log_model))
    return float(kl_nats / np.log(2.0))
