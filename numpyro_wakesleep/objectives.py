"""The wake-sleep family of estimators as pure functions of log-weights.

Every function here takes arrays whose leading axis (``axis=0``) indexes
particles and whose remaining axes index datapoints, and returns one value per
datapoint. Tracing, plates, scaling and dreaming live elsewhere
(:mod:`numpyro_wakesleep.traces`, :mod:`numpyro_wakesleep.dreams`); a caller
multiplies the returned per-datapoint terms by the mini-batch scale and sums.

Notation, per datapoint ``x`` with particles ``z_k ~ q_φ(·|x)``, ``k = 1..K``::

    log w_k = log p_θ(x, z_k) − log q_φ(z_k | x)      w̄ = softmax_k(log w)

``sg`` is :func:`jax.lax.stop_gradient`.

References:

- G. E. Hinton, P. Dayan, B. J. Frey, R. M. Neal (1995), *The wake-sleep
  algorithm for unsupervised neural networks*, Science 268.
- Y. Burda, R. Grosse, R. Salakhutdinov (2016), *Importance weighted
  autoencoders*, ICLR.
- J. Bornschein, Y. Bengio (2015), *Reweighted wake-sleep*, ICLR
  (arXiv:1406.2751).
- T. A. Le, A. R. Kosiorek, N. Siddharth, Y. W. Teh, F. Wood (2019),
  *Revisiting reweighted wake-sleep for models with stochastic control
  flow*, UAI (arXiv:1805.10469).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array
from jax.lax import stop_gradient
from jax.scipy.special import logsumexp

__all__ = [
    "effective_sample_size",
    "elbo_estimate",
    "iwae_bound",
    "normalized_weights",
    "rws_wake_theta_loss",
    "sleep_phi_loss",
    "surrogate",
    "wake_phi_loss",
    "ws_wake_theta_loss",
]


def iwae_bound(log_weights: Array) -> Array:
    r"""Importance-weighted bound (Burda et al. 2016), one value per datapoint.

    .. math:: \mathcal{L}_K = \log \frac{1}{K} \sum_{k=1}^K w_k \le \log p_\theta(x)
    """
    return logsumexp(log_weights, axis=0) - math.log(log_weights.shape[0])


def elbo_estimate(log_weights: Array) -> Array:
    r"""Monte Carlo ELBO, one value per datapoint: :math:`\frac{1}{K}\sum_k \log w_k`."""
    return jnp.mean(log_weights, axis=0)


def normalized_weights(log_weights: Array) -> Array:
    r"""Self-normalised importance weights :math:`\bar w = \mathrm{softmax}_k(\log w)`."""
    return jax.nn.softmax(log_weights, axis=0)


def effective_sample_size(log_weights: Array) -> Array:
    r"""Importance-sampling effective sample size :math:`1 / \sum_k \bar w_k^2`, in ``[1, K]``."""
    return 1.0 / jnp.sum(normalized_weights(log_weights) ** 2, axis=0)


def rws_wake_theta_loss(log_p: Array, log_q: Array) -> Array:
    r"""Reweighted wake-θ surrogate (Bornschein & Bengio 2015, eq. 6).

    .. math:: -\Big(\log \frac{1}{K}\sum_k \exp\big(\log p_\theta(x,z_k)
              - \mathrm{sg}(\log q_\phi(z_k|x))\big)\Big)

    Its gradient in θ is :math:`-\sum_k \bar w_k \nabla_\theta \log p_\theta(x, z_k)`;
    it carries no gradient to φ. Its value is the negative IWAE bound.
    """
    return -iwae_bound(log_p - stop_gradient(log_q))


def ws_wake_theta_loss(log_p: Array) -> Array:
    r"""Classic wake-θ surrogate (Hinton et al. 1995): :math:`-\frac{1}{K}\sum_k \log p_\theta(x, z_k)`.

    Its gradient in θ is the unweighted average of :math:`\nabla_\theta \log p_\theta(x, z_k)`
    over guide samples.
    """
    return -jnp.mean(log_p, axis=0)


def wake_phi_loss(log_weights: Array, log_q: Array) -> Array:
    r"""Wake-φ surrogate (Bornschein & Bengio 2015, eq. 12; Le et al. 2019).

    .. math:: -\sum_k \mathrm{sg}(\bar w_k) \log q_\phi(z_k | x)

    A self-normalised estimate of :math:`\nabla_\phi\,\mathrm{KL}(p_\theta(z|x)\,\|\,q_\phi(z|x))`
    (up to sign), which does not degrade as ``K`` grows.
    """
    return -jnp.sum(normalized_weights(stop_gradient(log_weights)) * log_q, axis=0)


def sleep_phi_loss(log_q_dreams: Array) -> Array:
    r"""Sleep-φ surrogate (Hinton et al. 1995): :math:`-\frac{1}{M}\sum_m \log q_\phi(z_m | x_m)`.

    ``(z_m, x_m) ~ p_θ`` are dreams from the model (no gradient through them).
    Its gradient is an unbiased estimate of
    :math:`\nabla_\phi\,\mathbb{E}_{p_\theta(x)}\,\mathrm{KL}(p_\theta(z|x)\,\|\,q_\phi(z|x))`
    (up to sign).
    """
    return -jnp.mean(log_q_dreams, axis=0)


def surrogate(value: Array, *terms: Array) -> Array:
    r"""An array whose value is ``value`` and whose gradient is :math:`\sum_i \nabla t_i`.

    Each term enters as :math:`t - \mathrm{sg}(t)`: zero in value, its own gradient.
    A non-finite term makes the result non-finite (``nan − nan``), so checking the
    returned value alone is enough to catch any bad term.
    """
    total = stop_gradient(value)
    for term in terms:
        total = total + (term - stop_gradient(term))
    return total
