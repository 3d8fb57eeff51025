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
- H. Xu, Z. Ou (2016), *Joint stochastic approximation learning of Helmholtz
  machines*, ICLR workshop; Z. Ou, Y. Song (2020), *Joint stochastic
  approximation and its application to learning discrete latent variable
  models*, UAI.
- G. Tucker, D. Lawson, S. Gu, C. J. Maddison (2019), *Doubly reparameterized
  gradient estimators for Monte Carlo objectives*, ICLR (arXiv:1810.04152).
- H. Lee, C. Ekanadham, A. Y. Ng (2008), *Sparse deep belief net model for visual
  area V2*, NeurIPS.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "chain_average_loss",
    "chain_weights",
    "dreg_wake_phi_loss",
    "effective_sample_size",
    "independence_chain",
    "elbo_estimate",
    "iwae_bound",
    "normalized_weights",
    "rws_wake_theta_loss",
    "sleep_phi_loss",
    "sparsity_penalty",
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


def dreg_wake_phi_loss(log_weights: Tensor, path_log_weights: Tensor) -> Tensor:
    r"""Doubly-reparameterised wake-φ surrogate, RWS-DReG (Tucker et al. 2019, §3).

    .. math:: -\sum_k \mathrm{sg}\big(\bar w_k - \bar w_k^2\big)\,\log \tilde w_k,
              \qquad \nabla_\phi = -\sum_k (\bar w_k - \bar w_k^2)
              \frac{\partial \log w_k}{\partial z_k} \frac{\partial z_k}{\partial \phi}

    ``path_log_weights`` is :math:`\log w_k` with a gradient only along the reparameterised
    samples :math:`z_k = g_\phi(\epsilon_k)` (none through θ or through φ in
    :math:`q_\phi`'s density). Its φ-gradient has the expectation of :func:`wake_phi_loss`'s,
    with a lower variance for continuous latents.
    """
    weights = normalized_weights(log_weights.detach())
    return -((weights - weights**2) * path_log_weights).sum(dim=0)


def sparsity_penalty(mean_activation: Tensor, target: float) -> Tensor:
    r"""Sparsity penalty (Lee, Ekanadham & Ng 2008): :math:`\sum_j \mathrm{KL}(\mathrm{Bern}(\rho)
    \,\|\,\mathrm{Bern}(\hat\rho_j))`.

    .. math:: \sum_j \rho \log\frac{\rho}{\hat\rho_j}
              + (1-\rho) \log\frac{1-\rho}{1-\hat\rho_j}

    ``mean_activation`` holds :math:`\hat\rho_j`, the guide's mean probability that unit
    ``j`` is on over a batch; ``target`` is :math:`\rho \in (0, 1)`.
    """
    rho = mean_activation
    return (
        target * (math.log(target) - torch.log(rho))
        + (1.0 - target) * (math.log1p(-target) - torch.log1p(-rho))
    ).sum()


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


def independence_chain(
    log_weight_state: Tensor, log_weight_proposals: Tensor, log_uniforms: Tensor
) -> tuple[Tensor, Tensor]:
    r"""Metropolis independence sampler through ``K`` proposals (Xu & Ou 2016, Ou & Song 2020).

    The chain starts at its state :math:`\bar z` (candidate 0) and visits the proposals
    :math:`z'_1, \dots, z'_K \sim q_\phi(\cdot|x)` (candidates ``1..K``) in order,
    accepting :math:`z'_k` with probability :math:`\min(1, w(z'_k) / w(z_{\text{current}}))`,
    i.e. when :math:`\log u_k < \log w_k - \log w_{\text{current}}`. Its stationary law is
    the exact posterior :math:`p_\theta(z|x)`, whatever the guide (where the guide covers it).

    :param log_weight_state: ``log w`` of the chain's state, shape ``batch``.
    :param log_weight_proposals: ``log w`` of the proposals, ``(K, *batch)``.
    :param log_uniforms: ``log u_k``, ``u_k ~ Uniform(0, 1)``, ``(K, *batch)``.
    :return: ``(states, accepted)``, both ``(K, *batch)``: the candidate the chain holds
        after each transition (an index into ``[z̄, z'_1, ..., z'_K]``) and whether that
        transition moved.
    """
    current = torch.zeros_like(log_weight_state, dtype=torch.long)
    current_log_weight = log_weight_state
    states, accepted = [], []
    for k, log_weight in enumerate(log_weight_proposals):
        # NaN (two impossible candidates) compares false: the chain stays
        accept = log_uniforms[k] < log_weight - current_log_weight
        current = torch.where(accept, k + 1, current)
        current_log_weight = torch.where(accept, log_weight, current_log_weight)
        states.append(current)
        accepted.append(accept)
    return torch.stack(states), torch.stack(accepted)


def chain_weights(states: Tensor) -> Tensor:
    r"""How often the chain held each candidate: ``(K + 1, *batch)``, each column summing to 1.

    :math:`c_j = \frac1K \#\{k : s_k = j\}` for the states :math:`s_1..s_K` of
    :func:`independence_chain`; candidate 0 is the chain's state before the step.
    """
    num_candidates = states.shape[0] + 1
    one_hot = torch.nn.functional.one_hot(states, num_candidates).to(torch.get_default_dtype())
    return one_hot.mean(0).movedim(-1, 0)


def chain_average_loss(log_density: Tensor, weights: Tensor) -> Tensor:
    r"""Joint stochastic approximation surrogate (Ou & Song 2020): the chain-state average.

    .. math:: -\sum_j \mathrm{sg}(c_j) \log f(z_j) = -\frac1K \sum_{k=1}^K \log f(s_k)

    with :math:`f = p_\theta(x, \cdot)` for the model (wake-θ) and
    :math:`f = q_\phi(\cdot|x)` for the guide (wake-φ), ``weights`` from
    :func:`chain_weights`. At stationarity the chain states are draws from
    :math:`p_\theta(z|x)`, so the θ-gradient is unbiased for :math:`\nabla_\theta \log p_\theta(x)`
    (Fisher's identity) and the φ-gradient for :math:`-\nabla_\phi \mathrm{KL}(p_\theta(z|x)\,\|\,q_\phi(z|x))`.
    """
    return -(weights.detach().to(log_density.dtype) * log_density).sum(dim=0)
