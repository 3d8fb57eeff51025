"""A discrete model whose JSA chains, gradients and acceptance rates are known exactly.

The model, per datapoint: ``z ~ Categorical(1/3, 1/3, 1/3)``, ``x | z ~ Normal(mu[z], 1)``;
the guide is a fixed, poor ``Categorical(softmax(GUIDE_LOGITS))`` that ignores ``x``. The
data are four values :data:`X_TYPES` replicated :data:`REPLICAS` times, laid out as
``tile(X_TYPES, REPLICAS)``: datapoint ``n`` is replica ``n // 4`` of type ``n % 4``. Every
datapoint has its own chain, so the chains of one type are independent draws of one Markov
chain, and quantities averaged per replica are independent across replicas — their
standard errors are honest.

The first part is NumPy, by enumeration over the three latent values:

- :func:`posterior` ``p(z|x)`` and :func:`marginal_grad`, the exact
  ``∂ log p(x) / ∂ mu = p(z|x) (x − mu_z)`` (Fisher's identity, one component per ``z``);
- :func:`rws_grad`, the exact expectation of reweighted wake-sleep's θ-gradient
  ``Σ_k w̄_k ∇ log p(x, z_k)`` with ``K`` proposals, by enumerating all ``3^K`` tuples;
- :func:`transition_matrix`, the exact kernel of one Metropolis independence transition
  (propose ``z' ~ q``, accept with ``min(1, w(z')/w(z))``, ``w = p(x, z)/q(z)``);
  a JSA step with ``K`` proposals is ``K`` such transitions. A datapoint seen for the first
  time starts at its first proposal and its first transition re-proposes that same value,
  so after ``s`` steps the chain's law is exactly ``q P^(sK − 1)`` (:func:`chain_law`);
- :func:`burn_in`, the number of steps after which that law is so close to the posterior
  that a chi-square test on ``REPLICAS`` chains per type cannot tell them apart
  (non-centrality ``REPLICAS · χ²(law ‖ posterior)`` below a bound);
- :func:`expected_chain_grad` and :func:`acceptance_moments`, the exact expectation of
  JSA's θ-gradient and of its acceptance rate over a run of steps, and the exact variance
  of the acceptance rate, from the kernel.

The second part runs both backends on this case (:func:`pyro_runs`, :func:`numpyro_runs`,
imported lazily and cached, so that a backend's tests and the cross-backend test share one
run per process): JSA with ``K = 2`` for ``burn_in + GRAD_STEPS`` steps at fixed parameters,
and RWS with ``K = 2`` for ``GRAD_STEPS`` steps.

A proposal equal to the chain's current value is accepted (``log u < 0`` always holds for
``u ∈ [0, 1)``), as the implementations count it.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
from scipy.special import logsumexp, softmax
from scipy.stats import chi2, ncx2

MU = np.array([-1.0, 0.0, 1.0])
X_TYPES = np.array([-1.5, 0.3, 2.0, 1.0])
GUIDE_LOGITS = np.array([1.0, 0.0, -1.0])
REPLICAS = 1000
NUM_TYPES = len(X_TYPES)
NUM_DATA = NUM_TYPES * REPLICAS
#: A wrong target for the power checks: the posterior under these parameters instead.
PERTURBED_MU = MU + np.array([0.3, 0.0, -0.3])


def data() -> np.ndarray:
    """The ``NUM_DATA`` observations, ``tile(X_TYPES, REPLICAS)``."""
    return np.tile(X_TYPES, REPLICAS)


def guide_probs(logits: np.ndarray = GUIDE_LOGITS) -> np.ndarray:
    return softmax(np.asarray(logits, float))


def log_joint(x: np.ndarray = X_TYPES, mu: np.ndarray = MU) -> np.ndarray:
    """``log p(x_t, z)``, shape ``(len(x), 3)``."""
    x = np.asarray(x, float)[:, None]
    return -0.5 * (x - mu) ** 2 - 0.5 * math.log(2 * math.pi) - math.log(len(mu))


def posterior(x: np.ndarray = X_TYPES, mu: np.ndarray = MU) -> np.ndarray:
    """``p(z | x_t)``, shape ``(len(x), 3)``."""
    return softmax(log_joint(x, mu), axis=-1)


def joint_grad(x: np.ndarray = X_TYPES, mu: np.ndarray = MU) -> np.ndarray:
    """``∂ log p(x_t, z) / ∂ mu_z = x_t − mu_z`` (the other components are zero), ``(T, 3)``."""
    return np.asarray(x, float)[:, None] - mu


def marginal_grad(x: np.ndarray = X_TYPES, mu: np.ndarray = MU) -> np.ndarray:
    """``∂ log p(x_t) / ∂ mu``, shape ``(T, 3)``: the target of JSA's θ-gradient."""
    return posterior(x, mu) * joint_grad(x, mu)


def law_grad(law: np.ndarray, x: np.ndarray = X_TYPES, mu: np.ndarray = MU) -> np.ndarray:
    """``E_{z ~ law_t} ∂ log p(x_t, z) / ∂ mu``, shape ``(T, 3)``."""
    return law * joint_grad(x, mu)


def rws_grad(
    num_particles: int,
    x: np.ndarray = X_TYPES,
    mu: np.ndarray = MU,
    logits: np.ndarray = GUIDE_LOGITS,
) -> np.ndarray:
    """The exact expectation of RWS's θ-gradient ``Σ_k w̄_k ∂ log p(x, z_k) / ∂ mu`` with
    ``K = num_particles`` proposals from the guide, by enumerating the ``3^K`` tuples."""
    q = guide_probs(logits)
    log_w = log_joint(x, mu) - np.log(q)
    grad = joint_grad(x, mu)
    out = np.zeros_like(grad)
    for zs in itertools.product(range(len(q)), repeat=num_particles):
        zs = list(zs)
        prob = np.prod(q[zs])
        w_bar = softmax(log_w[:, zs], axis=-1)  # (T, K)
        for k, z in enumerate(zs):
            out[:, z] += prob * w_bar[:, k] * grad[:, z]
    return out


def transition_matrix(
    x: np.ndarray = X_TYPES, mu: np.ndarray = MU, logits: np.ndarray = GUIDE_LOGITS
) -> tuple[np.ndarray, np.ndarray]:
    """One independence-sampler transition per type: ``(P, A)``, both ``(T, 3, 3)``.

    ``P[t, i, j]`` is the probability of moving from ``i`` to ``j``; ``A[t, i, j]`` that of
    *accepting* a proposal ``j`` from ``i`` (``A`` has row sums = acceptance probabilities;
    its diagonal, a proposal equal to the state, is ``q_i``).
    """
    q = guide_probs(logits)
    log_w = log_joint(x, mu) - np.log(q)
    ratio = np.exp(np.minimum(0.0, log_w[:, None, :] - log_w[:, :, None]))  # min(1, w_j/w_i)
    accept = q[None, None, :] * ratio
    move = accept.copy()
    idx = np.arange(len(q))
    move[:, idx, idx] = 0.0
    move[:, idx, idx] = 1.0 - move.sum(-1)
    return move, accept


def _power(matrix: np.ndarray, n: int) -> np.ndarray:
    return np.stack([np.linalg.matrix_power(m, n) for m in matrix])


def chain_law(
    steps: int,
    num_particles: int,
    transitions_done: int = 0,
    x: np.ndarray = X_TYPES,
    mu: np.ndarray = MU,
    logits: np.ndarray = GUIDE_LOGITS,
) -> np.ndarray:
    """The exact law of a chain after ``steps`` JSA steps (``steps ≥ 1``) with ``K``
    proposals, plus ``transitions_done`` further transitions: ``q P^(sK − 1 + extra)``."""
    move, _ = transition_matrix(x, mu, logits)
    q = guide_probs(logits)
    return np.einsum("j,tjk->tk", q, _power(move, steps * num_particles - 1 + transitions_done))


def chi2_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``χ²(p ‖ q) = Σ (p − q)² / q`` per row."""
    return ((p - q) ** 2 / q).sum(-1)


def burn_in(num_particles: int, replicas: int = REPLICAS, noncentrality: float = 0.01) -> int:
    """The fewest steps after which a chi-square test on ``replicas`` chains per type has
    non-centrality ``replicas · Σ_t χ²(law_t ‖ posterior_t)`` at most ``noncentrality``: the
    test's rejection rate then exceeds its level by a negligible amount (at level 1e-3 and
    8 degrees of freedom, by less than 1e-4 for 0.01)."""
    target = posterior()
    for steps in range(1, 10_000):
        law = chain_law(steps, num_particles)
        if replicas * chi2_divergence(law, target).sum() <= noncentrality:
            return steps
    raise AssertionError("the chain does not mix")


def pearson(values: np.ndarray, expected_law: np.ndarray) -> tuple[float, float]:
    """Pearson's chi-square goodness-of-fit test of the chains' values (``NUM_DATA`` in the
    layout of :func:`data`) against ``expected_law`` ``(T, 3)``, pooled over the types:
    ``(statistic, p-value)`` with ``T · 2`` degrees of freedom."""
    values = np.asarray(values).reshape(-1, NUM_TYPES)
    replicas = len(values)
    counts = np.stack([(values == z).sum(0) for z in range(expected_law.shape[-1])], -1)
    expected = replicas * expected_law
    statistic = float(((counts - expected) ** 2 / expected).sum())
    dof = expected_law.shape[0] * (expected_law.shape[1] - 1)
    return statistic, float(chi2.sf(statistic, dof))


def pearson_power(law: np.ndarray, expected_law: np.ndarray, level: float) -> float:
    """The probability that :func:`pearson` against ``expected_law`` rejects at ``level`` when
    the chains follow ``law`` (non-central chi-square, non-centrality
    ``REPLICAS · Σ_t χ²(law_t ‖ expected_law_t)``)."""
    dof = expected_law.shape[0] * (expected_law.shape[1] - 1)
    noncentrality = REPLICAS * chi2_divergence(law, expected_law).sum()
    return float(ncx2.sf(chi2.isf(level, dof), dof, noncentrality))


def expected_chain_grad(first_step: int, num_steps: int, num_particles: int) -> np.ndarray:
    """The exact expectation of JSA's per-datapoint θ-gradient ``(1/K) Σ_k ∂ log p(x, s_k)``
    averaged over steps ``first_step .. first_step + num_steps − 1`` (1-based), ``(T, 3)``.

    ``s_k`` of step ``s`` follows ``q P^((s − 1)K + k − 1)``.
    """
    total = np.zeros((NUM_TYPES, len(MU)))
    for step in range(first_step, first_step + num_steps):
        for k in range(num_particles):
            law = chain_law(1, 1, (step - 1) * num_particles + k)
            total += law_grad(law)
    return total / (num_steps * num_particles)


def acceptance_moments(first_step: int, num_steps: int, num_particles: int) -> tuple[float, float]:
    """The exact mean of the acceptance rate averaged over steps ``first_step ..`` (``≥ 2``)
    of a run on the :func:`data`, and its standard error.

    The acceptance rate of a step is the fraction of the ``K · NUM_DATA`` transitions that
    accepted. The mean follows the chains' exact laws; the variance is that of the chains at
    stationarity (the runs start after :func:`burn_in`), with the correlation between
    transitions of one chain from the kernel:
    ``Cov(A_m, A_{m+h}) = π A P^(h−1) a − a²``, ``a`` the acceptance probability by state.
    """
    assert first_step >= 2, "the first step's first transition re-proposes the state"
    move, accept = transition_matrix()
    a_state = accept.sum(-1)  # (T, 3)
    mean = 0.0
    for step in range(first_step, first_step + num_steps):
        for k in range(num_particles):
            law = chain_law(1, 1, (step - 1) * num_particles + k - 1)  # before the transition
            mean += (law * a_state).sum(-1).mean()
    length = num_steps * num_particles
    mean /= length
    pi = posterior()
    variance = 0.0  # of the sum over all chains and transitions
    for t in range(NUM_TYPES):
        a = pi[t] @ a_state[t]
        var_sum = length * a * (1 - a)
        carry = pi[t] @ accept[t]  # π A
        for lag in range(1, length):
            var_sum += 2 * (length - lag) * (carry @ a_state[t] - a * a)
            carry = carry @ move[t]
        variance += REPLICAS * var_sum
    return float(mean), math.sqrt(variance) / (NUM_DATA * length)


def stationary_acceptance(law: np.ndarray | None = None) -> float:
    """The acceptance probability of one transition from a chain distributed as ``law``
    (default: the posterior), averaged over the types."""
    _, accept = transition_matrix()
    law = posterior() if law is None else law
    return float((law * accept.sum(-1)).sum(-1).mean())


def iwae_terms(log_weights: np.ndarray) -> np.ndarray:
    """``−(logsumexp_k log w_k − log K)`` per datapoint of ``(K, B)`` log-weights."""
    return -(logsumexp(log_weights, axis=0) - math.log(log_weights.shape[0]))


# ---------------------------------------------------------------------------------------------
# runs of both backends on this case, shared by their tests and the cross-backend test
# ---------------------------------------------------------------------------------------------
#: JSA's proposals per step in the runs (also RWS's, whose bias they show).
NUM_PARTICLES = 2
#: Steps averaged after the burn-in.
GRAD_STEPS = 20
#: Steps whose chains are kept: the first (the kernel's transient) and the last of burn-in.
KEPT_STEPS = (1, 2, burn_in(NUM_PARTICLES))


def pyro_programs():
    """Pyro's model, guide and data for this case. ``mu`` is a ``(REPLICAS, 3)`` parameter
    whose rows all equal :data:`MU`: the gradient of row ``r`` is replica ``r``'s own."""
    import pyro
    import pyro.distributions as dist
    import torch

    x = torch.tensor(data(), dtype=torch.float32)
    mu0 = torch.tensor(MU, dtype=torch.float32).expand(REPLICAS, len(MU))
    logits = torch.tensor(GUIDE_LOGITS, dtype=torch.float32)

    def model(x, subsample_size=None):
        mu = pyro.param("mu", lambda: mu0.clone())
        with pyro.plate("data", len(x), subsample_size=subsample_size) as idx:
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(len(MU))))
            pyro.sample("x", dist.Normal(mu[idx // NUM_TYPES, z], 1.0), obs=x[idx])

    def guide(x, subsample_size=None):
        with pyro.plate("data", len(x), subsample_size=subsample_size):
            pyro.sample("z", dist.Categorical(logits=logits))

    return model, guide, x


def pyro_replica_grads(loss, model, guide, x) -> tuple[np.ndarray, float]:
    """One step of ``loss.differentiable_loss``: the ``∇ log p`` estimate per replica
    ``(REPLICAS, 3)`` (minus the loss's gradient) and the value."""
    import pyro
    import torch

    value = loss.differentiable_loss(model, guide, x)
    (grad,) = torch.autograd.grad(value, pyro.param("mu").unconstrained())
    return -grad.double().numpy(), value.item()


@functools.cache
def pyro_runs() -> dict:
    """Pyro's JSA (``K = 2``, seed 0) for ``burn_in + GRAD_STEPS`` steps and RWS (``K = 2``,
    seed 1) for ``GRAD_STEPS`` steps, parameters fixed (computed once per process, with one
    torch thread; the parameter store is cleared before and after)."""
    import pyro
    import torch

    from pyro_wakesleep import JointStochasticApproximation, ReweightedWakeSleep

    model, guide, x = pyro_programs()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        loss = JointStochasticApproximation(num_particles=NUM_PARTICLES)
        out = {"grads": [], "acceptance": []}
        for step in range(1, burn_in(NUM_PARTICLES) + GRAD_STEPS + 1):
            grads, _ = pyro_replica_grads(loss, model, guide, x)
            if step > burn_in(NUM_PARTICLES):
                out["grads"].append(grads)
                out["acceptance"].append(loss.last_terms["acceptance_rate"])
            if step in KEPT_STEPS:
                out[step] = loss.chains.values["z"].numpy().copy()
        out["terms"] = dict(loss.last_terms)
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        rws = ReweightedWakeSleep(num_particles=NUM_PARTICLES)
        out["rws"] = [pyro_replica_grads(rws, model, guide, x)[0] for _ in range(GRAD_STEPS)]
    finally:
        pyro.clear_param_store()
        torch.set_num_threads(threads)
    return out


def numpyro_programs():
    """NumPyro's model, guide and data for this case (``mu`` as in :func:`pyro_programs`)."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    x = jnp.asarray(data(), jnp.float32)
    mu0 = jnp.broadcast_to(jnp.asarray(MU, jnp.float32), (REPLICAS, len(MU)))
    logits = jnp.asarray(GUIDE_LOGITS, jnp.float32)

    def model(x, subsample_size=None):
        mu = numpyro.param("mu", mu0)
        with numpyro.plate("data", len(x), subsample_size=subsample_size) as idx:
            z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(len(MU))))
            numpyro.sample("x", dist.Normal(mu[idx // NUM_TYPES, z], 1.0), obs=x[idx])

    def guide(x, subsample_size=None):
        with numpyro.plate("data", len(x), subsample_size=subsample_size):
            numpyro.sample("z", dist.Categorical(logits=logits))

    return model, guide, x


def numpyro_grad_stepper(loss):
    """``(svi, step)`` with ``step: state -> (state, grads, terms)`` one jitted JSA step at fixed
    parameters: ``grads`` the ``∇ log p`` estimate per replica (``jax.grad`` of
    ``loss_with_mutable_state`` with the chains in ``param_map``, as SVI differentiates it),
    ``terms`` those of the same step (the same key)."""
    import jax
    import optax
    from numpyro.infer import SVI

    model, guide, x = numpyro_programs()
    svi = SVI(model, guide, optax.sgd(0.0), loss=loss)

    @jax.jit
    def step(state):
        params = svi.get_params(state)
        key, sub = jax.random.split(state.rng_key)

        def loss_of(mu):
            out = loss.loss_with_mutable_state(
                sub, {**params, "mu": mu, **state.mutable_state}, model, guide, x
            )
            return out["loss"], out["mutable_state"]

        (_, mutable), grad = jax.value_and_grad(loss_of, has_aux=True)(params["mu"])
        terms = loss.terms(sub, {**params, **state.mutable_state}, model, guide, x)
        return state._replace(mutable_state=mutable, rng_key=key), -grad, terms

    return svi, step


@functools.cache
def numpyro_runs() -> dict:
    """NumPyro's JSA (``K = 2``, key 0) for ``burn_in + GRAD_STEPS`` jitted steps and RWS
    (``K = 2``, keys split from 1) for ``GRAD_STEPS`` steps, parameters fixed (computed once
    per process). ``first`` keeps the first steps' gradients, values and chains."""
    import jax

    from numpyro_wakesleep import JointStochasticApproximation, ReweightedWakeSleep
    from numpyro_wakesleep.chains import CHAINS

    model, guide, x = numpyro_programs()
    loss = JointStochasticApproximation(num_particles=NUM_PARTICLES)
    svi, step = numpyro_grad_stepper(loss)
    state = loss.init_state(svi, jax.random.PRNGKey(0), x)
    out = {"grads": [], "acceptance": [], "first": []}
    for t in range(1, burn_in(NUM_PARTICLES) + GRAD_STEPS + 1):
        state, grad, terms = step(state)
        chains = jax.device_get(state.mutable_state[CHAINS])
        if t <= 2:
            out["first"].append((np.asarray(grad), float(terms["loss"]), chains))
        if t > burn_in(NUM_PARTICLES):
            out["grads"].append(np.asarray(grad, np.float64))
            out["acceptance"].append(float(terms["acceptance_rate"]))
        if t in KEPT_STEPS:
            out[t] = np.asarray(chains["values"]["z"])
    out["terms"] = {name: float(v) for name, v in terms.items()}

    rws = ReweightedWakeSleep(num_particles=NUM_PARTICLES)
    mu = svi.get_params(state)["mu"]

    @jax.jit
    def rws_grads(key):
        return -jax.grad(lambda m: rws.loss(key, {"mu": m}, model, guide, x))(mu)

    keys = jax.random.split(jax.random.PRNGKey(1), GRAD_STEPS)
    out["rws"] = [np.asarray(rws_grads(key), np.float64) for key in keys]
    return out


def replica_mean_and_se(grads: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over replicas of each replica's step-averaged gradient ``(steps, REPLICAS, 3)``,
    and its standard error (replicas are independent, so the spread across them is honest)."""
    per_replica = np.mean(grads, axis=0)  # (REPLICAS, 3)
    return per_replica.mean(0), per_replica.std(0, ddof=1) / math.sqrt(len(per_replica))
