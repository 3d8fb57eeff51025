"""The wake-sleep family of estimators as pure functions of log-weights.

Every function here takes tensors whose leading dimension (``dim=0``) indexes
particles and whose remaining dimensions index datapoints, and returns one
value per datapoint. Tracing, plates, scaling and dreaming live elsewhere
(:mod:`pyro_wakesleep.traces`, :mod:`pyro_wakesleep.dreams`); a caller
multiplies the returned per-datapoint terms by the mini-batch scale and sums.

Notation, per datapoint ``x`` with particles ``z_k ~ q_φ(·|x)``, ``k = 1..K``::

    log w_k = log p_θ(x, z_k) − log q_φ(z_k | x)      w̄ = softmax_k(log w)

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

import torch
from torch import Tensor

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


def iwae_bound(log_weights: Tensor) -> Tensor:
    r"""Importance-weighted bound (Burda et al. 2016), one value per datapoint.

    .. math:: \mathcal{L}_K = \log \frac{1}{K} \sum_{k=1}^K w_k \le \log p_\theta(x)
    """
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


def elbo_estimate(log_weights: Tensor) -> Tensor:
    r"""Monte Carlo ELBO, one value per datapoint: :math:`\frac{1}{K}\sum_k \log w_k`."""
    return log_weights.mean(dim=0)


def normalized_weights(log_weights: Tensor) -> Tensor:
    r"""Self-normalised importance weights :math:`\bar w = \mathrm{softmax}_k(\log w)`."""
    return torch.softmax(log_weights, dim=0)


def effective_sample_size(log_weights: Tensor) -> Tensor:
    r"""Importance-sampling effective sample size :math:`1 / \sum_k \bar w_k^2`, in ``[1, K]``."""
    return 1.0 / (normalized_weights(log_weights) ** 2).sum(0)


def rws_wake_theta_loss(log_p: Tensor, log_q: Tensor) -> Tensor:
    r"""Reweighted wake-θ surrogate (Bornschein & Bengio 2015, eq. 6).

    .. math:: -\Big(\log \frac{1}{K}\sum_k \exp\big(\log p_\theta(x,z_k)
              - \mathrm{sg}(\log q_\phi(z_k|x))\big)\Big)

    Its gradient in θ is :math:`-\sum_k \bar w_k \nabla_\theta \log p_\theta(x, z_k)`;
    it carries no gradient to φ. Its value is the negative IWAE bound.
    """
    return -iwae_bound(log_p - log_q.detach())


def ws_wake_theta_loss(log_p: Tensor) -> Tensor:
    r"""Classic wake-θ surrogate (Hinton et al. 1995): :math:`-\frac{1}{K}\sum_k \log p_\theta(x, z_k)`.

    Its gradient in θ is the unweighted average of :math:`\nabla_\theta \log p_\theta(x, z_k)`
    over guide samples.
    """
    return -log_p.mean(dim=0)


def wake_phi_loss(log_weights: Tensor, log_q: Tensor) -> Tensor:
    r"""Wake-φ surrogate (Bornschein & Bengio 2015, eq. 12; Le et al. 2019).

    .. math:: -\sum_k \mathrm{sg}(\bar w_k) \log q_\phi(z_k | x)

    A self-normalised estimate of :math:`\nabla_\phi\,\mathrm{KL}(p_\theta(z|x)\,\|\,q_\phi(z|x))`
    (up to sign), which does not degrade as ``K`` grows.
    """
    return -(normalized_weights(log_weights.detach()) * log_q).sum(dim=0)


def sleep_phi_loss(log_q_dreams: Tensor) -> Tensor:
    r"""Sleep-φ surrogate (Hinton et al. 1995): :math:`-\frac{1}{M}\sum_m \log q_\phi(z_m | x_m)`.

    ``(z_m, x_m) ~ p_θ`` are dreams from the model (no gradient through them).
    Its gradient is an unbiased estimate of
    :math:`\nabla_\phi\,\mathbb{E}_{p_\theta(x)}\,\mathrm{KL}(p_\theta(z|x)\,\|\,q_\phi(z|x))`
    (up to sign).
    """
    return -log_q_dreams.mean(dim=0)


def surrogate(value: Tensor, *terms: Tensor) -> Tensor:
    r"""A tensor whose value is ``value`` and whose gradient is :math:`\sum_i \nabla t_i`.

    Each term enters as :math:`t - \mathrm{sg}(t)`: zero in value, its own gradient.
    A non-finite term makes the result non-finite (``nan − nan``), so checking the
    returned value alone is enough to catch any bad term.
    """
    total = value.detach()
    for term in terms:
        total = total + (term - term.detach())
    return total
