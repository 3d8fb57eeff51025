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

import jax
import jax.numpy as jnp
from jax import Array
from jax.lax import stop_gradient
from jax.scipy.special import logsumexp

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


def dreg_wake_phi_loss(log_weights: Array, path_log_weights: Array) -> Array:
    r"""Doubly-reparameterised wake-φ surrogate, RWS-DReG (Tucker et al. 2019, §3).

    .. math:: -\sum_k \mathrm{sg}\big(\bar w_k - \bar w_k^2\big)\,\log \tilde w_k,
              \qquad \nabla_\phi = -\sum_k (\bar w_k - \bar w_k^2)
              \frac{\partial \log w_k}{\partial z_k} \frac{\partial z_k}{\partial \phi}

    ``path_log_weights`` is :math:`\log w_k` with a gradient only along the reparameterised
    samples :math:`z_k = g_\phi(\epsilon_k)` (none through θ or through φ in
    :math:`q_\phi`'s density). Its φ-gradient has the expectation of :func:`wake_phi_loss`'s,
    with a lower variance for continuous latents.
    """
    weights = normalized_weights(stop_gradient(log_weights))
    return -jnp.sum((weights - weights**2) * path_log_weights, axis=0)


def sparsity_penalty(mean_activation: Array, target: float) -> Array:
    r"""Sparsity penalty (Lee, Ekanadham & Ng 2008): :math:`\sum_j \mathrm{KL}(\mathrm{Bern}(\rho)
    \,\|\,\mathrm{Bern}(\hat\rho_j))`.

    .. math:: \sum_j \rho \log\frac{\rho}{\hat\rho_j}
              + (1-\rho) \log\frac{1-\rho}{1-\hat\rho_j}

    ``mean_activation`` holds :math:`\hat\rho_j`, the guide's mean probability that unit
    ``j`` is on over a batch; ``target`` is :math:`\rho \in (0, 1)`.
    """
    rho = mean_activation
    return jnp.sum(
        target * (math.log(target) - jnp.log(rho))
        + (1.0 - target) * (math.log1p(-target) - jnp.log1p(-rho))
    )


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


def independence_chain(
    log_weight_state: Array, log_weight_proposals: Array, log_uniforms: Array
) -> tuple[Array, Array]:
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

    def transition(carry: tuple[Array, Array], step: tuple) -> tuple[tuple, tuple]:
        current, current_log_weight = carry
        k, log_weight, log_uniform = step
        # NaN (two impossible candidates) compares false: the chain stays
        accept = log_uniform < log_weight - current_log_weight
        current = jnp.where(accept, k + 1, current)
        current_log_weight = jnp.where(accept, log_weight, current_log_weight)
        return (current, current_log_weight), (current, accept)

    start = (jnp.zeros(jnp.shape(log_weight_state), jnp.int32), log_weight_state)
    steps = (jnp.arange(log_weight_proposals.shape[0]), log_weight_proposals, log_uniforms)
    _, (states, accepted) = jax.lax.scan(transition, start, steps)
    return states, accepted


def chain_weights(states: Array) -> Array:
    r"""How often the chain held each candidate: ``(K + 1, *batch)``, each column summing to 1.

    :math:`c_j = \frac1K \#\{k : s_k = j\}` for the states :math:`s_1..s_K` of
    :func:`independence_chain`; candidate 0 is the chain's state before the step.
    """
    return jnp.mean(jax.nn.one_hot(states, states.shape[0] + 1, axis=0), axis=1)


def chain_average_loss(log_density: Array, weights: Array) -> Array:
    r"""Joint stochastic approximation surrogate (Ou & Song 2020): the chain-state average.

    .. math:: -\sum_j \mathrm{sg}(c_j) \log f(z_j) = -\frac1K \sum_{k=1}^K \log f(s_k)

    with :math:`f = p_\theta(x, \cdot)` for the model (wake-θ) and
    :math:`f = q_\phi(\cdot|x)` for the guide (wake-φ), ``weights`` from
    :func:`chain_weights`. At stationarity the chain states are draws from
    :math:`p_\theta(z|x)`, so the θ-gradient is unbiased for :math:`\nabla_\theta \log p_\theta(x)`
    (Fisher's identity) and the φ-gradient for :math:`-\nabla_\phi \mathrm{KL}(p_\theta(z|x)\,\|\,q_\phi(z|x))`.
    """
    return -jnp.sum(stop_gradient(weights) * log_density, axis=0)
