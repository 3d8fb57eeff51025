# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Joint stochastic approximation: wake-sleep with a Markov chain per datapoint
#
# Reweighted wake-sleep (RWS) estimates the posterior expectations it needs with $K$
# self-normalised importance samples from the guide. With a small $K$ or a poor guide
# that estimate is biased, and so is the model's gradient. **Joint stochastic
# approximation** (JSA; Xu & Ou 2016, Ou & Song 2020) replaces the importance weights by a
# Markov chain. For each datapoint $x_n$ it keeps one latent sample $\bar z_n$ from step to
# step. At every visit it draws $K$ proposals $z'_1, \dots, z'_K \sim q_\phi(\cdot \mid x_n)$
# and walks through them with a Metropolis independence sampler: the chain moves from its
# current state $z$ to $z'_k$ with probability
#
# $$\min\!\left(1, \frac{w(z'_k)}{w(z)}\right), \qquad
# w(z) = \frac{p_\theta(x_n, z)}{q_\phi(z \mid x_n)} .$$
#
# This chain leaves the exact posterior $p_\theta(z \mid x_n)$ invariant, whatever the
# guide (as long as the guide puts mass wherever the posterior does). With $s_1, \dots, s_K$
# the states the chain holds after each of the $K$ moves, the updates are
#
# | | JSA | RWS |
# |---|---|---|
# | model (wake-θ) | $\frac1K \sum_k \nabla_\theta \log p_\theta(x_n, s_k)$ | $\sum_k \bar w_k \nabla_\theta \log p_\theta(x_n, z'_k)$ |
# | guide (wake-φ) | $\frac1K \sum_k \nabla_\phi \log q_\phi(s_k \mid x_n)$ | $\sum_k \bar w_k \nabla_\phi \log q_\phi(z'_k \mid x_n)$ |
#
# Once the chain has reached its stationary law the $s_k$ are posterior samples, so by
# Fisher's identity the θ-update is unbiased for $\nabla_\theta \log p_\theta(x_n)$ at any
# $K$, even $K = 1$. The guide only has to be a good *proposal*: a poor one makes the chain
# move rarely, but it does not bias where the chain ends up.
#
# `JointStochasticApproximation(num_particles=K)` exists in both backends. Its reported value
# is the negative IWAE bound of the $K$ proposals, the same number `ReweightedWakeSleep`
# reports, so the two can share a plot. This tutorial
#
# 1. shows what the chain does on a small model whose posterior can be enumerated, with a
#    deliberately bad guide that is never trained: the chains' marginals go to the exact
#    posterior, the guide stays wrong, RWS's θ-gradient is biased for small $K$ and
#    JSA's is not, and what that bias does to the learned model;
# 2. trains a Helmholtz machine on the 8×8 digits with JSA in NumPyro under `jit` (the
#    chains live in the SVI state), logging the acceptance rate and the age of the chains;
# 3. compares JSA with RWS on the digits at equal cost in particles: the same $K$, steps,
#    mini-batches and learning rate, scored by the **exact** test log-likelihood, and the
#    time of a step.
#
# You need `pip install 'wakesleep[pyro,numpyro,data]' matplotlib`.

# %%
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pyro
import pyro.distributions as pdist
import torch
from jax import lax, random

import numpyro_wakesleep
import pyro_wakesleep
from numpyro_wakesleep.chains import CHAINS
from numpyro_wakesleep.helmholtz import HelmholtzMachine
from wakesleep.trainer.datasets import load_dataset
from wakesleep.trainer.exact import helmholtz_log_marginal

# WAKESLEEP_SMOKE=1 runs every cell with tiny step and sample counts (the test suite does).
WAKESLEEP_SMOKE = os.environ.get("WAKESLEEP_SMOKE") == "1"
# section 1, the small model
REPLICAS = 200 if WAKESLEEP_SMOKE else 1000  # independent chains per datapoint value
CHAIN_STEPS = 10 if WAKESLEEP_SMOKE else 200  # steps of the chains, model and guide frozen
BURN_IN = 10 if WAKESLEEP_SMOKE else 400  # chain steps before JSA's gradient is measured
GRAD_DRAWS = 3 if WAKESLEEP_SMOKE else 40  # gradients averaged per estimator and K
JSA_RUNS = 2 if WAKESLEEP_SMOKE else 4  # independent JSA runs: their spread is the noise
TOY_STEPS = 20 if WAKESLEEP_SMOKE else 1500  # training the small model's prior
GRAD_PARTICLES = (2,) if WAKESLEEP_SMOKE else (1, 2, 5, 10, 20, 50)  # K, gradient bias
# sections 2 and 3, the digits
PARTICLE_COUNTS = (2,) if WAKESLEEP_SMOKE else (1, 2, 10)  # K
SEEDS = (0,) if WAKESLEEP_SMOKE else (0, 1, 2)
NUM_STEPS = 40 if WAKESLEEP_SMOKE else 6000  # per run
LOG_EVERY = 20 if WAKESLEEP_SMOKE else 100  # acceptance rate and chain age
EVAL_EVERY = 40 if WAKESLEEP_SMOKE else 1500  # exact test NLL
TIMED_CHUNKS = 2 if WAKESLEEP_SMOKE else 30  # chunks of LOG_EVERY steps timed per objective and K

# the digits machine of tutorial 03
HIDDEN = (16,)  # 2^16 hidden configurations: p(x) can be enumerated
BATCH = 100
LR = 3e-3

START = time.perf_counter()
print(f"smoke mode: {WAKESLEEP_SMOKE}; JAX {jax.__version__} on {jax.devices()[0].platform}")

# %% [markdown]
# ## 1. What the chain does
#
# A model small enough to enumerate: a latent $z \in \{0, \dots, 7\}$ per datapoint with a
# learnable prior, and a Gaussian observation around it,
#
# $$z_n \sim \mathrm{Categorical}(\mathrm{softmax}(\theta)), \qquad
# x_n \mid z_n \sim \mathcal N(z_n, 1) .$$
#
# The posterior $p_\theta(z \mid x_n) \propto \mathrm{softmax}(\theta)_z\,
# \mathcal N(x_n; z, 1)$ has a normaliser of eight terms. The guide is deliberately bad and has
# no parameters: whatever $x$, it proposes $q(z) \propto e^{-0.6 z}$, which favours small
# $z$. The data are three values, $x = 1$, $4$ and $6$, each repeated `REPLICAS` times.
# Every copy is its own datapoint with its own chain, so at any step the 1,000 chains
# of one value are 1,000 independent runs, and their histogram is the chain's marginal law
# at that step.

# %%
NUM_STATES = 8
STATES = jnp.arange(NUM_STATES)
GUIDE_PROBS = jax.nn.softmax(-0.6 * STATES)  # ignores x
X_VALUES = jnp.array([1.0, 4.0, 6.0])
x_toy = jnp.repeat(X_VALUES, REPLICAS)


def toy_model(x):
    theta = numpyro.param("theta", jnp.zeros(NUM_STATES))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Categorical(logits=theta))
        numpyro.sample("x", dist.Normal(z.astype(x.dtype), 1.0), obs=x)


def toy_guide(x):
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Categorical(probs=GUIDE_PROBS))


def log_joint_table(theta, x):
    """log p(x_n, z) for every datapoint and every z: (len(x), 8)."""
    return jax.nn.log_softmax(theta) + dist.Normal(STATES.astype(x.dtype), 1.0).log_prob(x[:, None])


def exact_posterior(theta, x):
    return jax.nn.softmax(log_joint_table(theta, x), axis=-1)


def exact_nll(theta, x):
    """Mean exact -log p(x_n) per datapoint."""
    return -jnp.mean(jax.nn.logsumexp(log_joint_table(theta, x), axis=-1))


theta0 = jnp.zeros(NUM_STATES)
posterior = exact_posterior(theta0, X_VALUES)  # (3, 8)


def tv(p, q):
    """Total variation distance between distributions on the last axis."""
    return 0.5 * jnp.abs(p - q).sum(-1)


print("exact posteriors (rows: x = 1, 4, 6):\n", np.round(np.asarray(posterior), 3))
print("the guide, for every x:\n", np.round(np.asarray(GUIDE_PROBS), 3))
print("TV(guide, posterior):", np.round(np.asarray(tv(GUIDE_PROBS, posterior)), 3))

# %% [markdown]
# ### The chains find the posterior; the guide stays where it is
#
# To watch the chains alone, freeze model and guide: `optax.set_to_zero()` turns every
# update into zero, so `svi.update` only advances the chains. In NumPyro the chains are
# part of the SVI state: `loss.init_state(svi, key, x)` is `svi.init` plus an empty chain per
# datapoint, under `state.mutable_state["wakesleep_chains"]` (`CHAINS`). The state value of
# datapoint $n$ is row $n$ of `values["z"]`. Here $K = 2$ proposals per step.

# %%
jsa = numpyro_wakesleep.JointStochasticApproximation(num_particles=2)
frozen = numpyro.infer.SVI(toy_model, toy_guide, optax.set_to_zero(), loss=jsa)
state = jsa.init_state(frozen, random.PRNGKey(0), x_toy)
print(jax.tree.map(jnp.shape, state.mutable_state[CHAINS]))


def chain_marginals(state):
    """Histogram of the chain states for each of the three x values: (3, 8)."""
    z = state.mutable_state[CHAINS]["values"]["z"].reshape(len(X_VALUES), REPLICAS)
    return jax.nn.one_hot(z, NUM_STATES).mean(axis=1)


advance = jax.jit(frozen.update)
distances = []
for _ in range(CHAIN_STEPS):
    state, _ = advance(state, x_toy)
    distances.append(tv(chain_marginals(state), posterior))
distances = np.asarray(distances)
final_marginals = np.asarray(chain_marginals(state))

# TV between the exact posterior and the histogram of REPLICAS exact draws from it: the
# distance the chains cannot get below, however long they run
exact_draws = random.categorical(
    random.PRNGKey(1), jnp.log(posterior)[:, None, None, :], shape=(len(X_VALUES), 200, REPLICAS)
)
noise_floor = np.asarray(tv(jax.nn.one_hot(exact_draws, NUM_STATES).mean(2), posterior[:, None]))
noise_floor = noise_floor.mean(axis=1)
print("TV(chains, posterior) after", CHAIN_STEPS, "steps:", np.round(distances[-1], 3))
print("TV of", REPLICAS, "exact draws (noise floor):  ", np.round(noise_floor, 3))

fig, axes = plt.subplots(1, 4, figsize=(15, 4))
steps = np.arange(1, CHAIN_STEPS + 1)
for i, value in enumerate(np.asarray(X_VALUES)):
    colour = f"C{i}"
    axes[0].plot(steps, distances[:, i], color=colour, label=f"chains, x = {value:g}")
    axes[0].axhline(float(tv(GUIDE_PROBS, posterior[i])), color=colour, ls="--", lw=1)
    axes[0].axhline(noise_floor[i], color=colour, ls=":", lw=1)
    ax = axes[i + 1]
    ax.bar(STATES, posterior[i], color="lightgrey", label="exact posterior")
    ax.plot(STATES, final_marginals[i], "o", color=colour, label=f"chains, step {CHAIN_STEPS}")
    ax.plot(STATES, GUIDE_PROBS, "x--", color="k", lw=1, label="guide q(z)")
    ax.set(xlabel="z", title=f"x = {value:g}", ylim=(0, 0.75))
    ax.legend(fontsize=7)
axes[0].plot([], [], "k--", lw=1, label="guide (never changes)")
axes[0].plot([], [], "k:", lw=1, label=f"{REPLICAS} exact draws")
axes[0].set(xscale="log", yscale="log", xlabel="step", ylabel="total variation distance")
axes[0].set(title="chains vs exact posterior (K = 2)")
axes[0].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
fig.tight_layout()
plt.show()

# %% [markdown]
# Left: the distance between the chains' marginal and the exact posterior, against the
# number of steps. The dashed lines are the guide's distance, which does not change: the
# guide is never trained. The dotted lines are the distance that 1,000 exact posterior
# draws have from the posterior by chance alone. Below that, nothing more can be
# measured. Right: the chains' histograms after the last step (dots) match the posterior
# (bars), not the guide (crosses).
#
# How fast a chain gets there depends on the guide. For $x = 1$ the guide proposes
# plausible values and the chains reach the noise floor within a few steps; for $x = 4$
# it takes a few dozen. For $x = 6$ the guide proposes $z \in \{5, 6, 7\}$ only about 4 %
# of the time, so a chain waits many steps for a proposal worth moving to, and reaches the
# floor only after about a hundred. After 200 steps all three are at the floor
# (the printout above). A bad guide makes JSA slow, not wrong.
#
# ### The θ-gradient: biased for RWS at small $K$, not for JSA
#
# The gradient of the exact log-likelihood with respect to the prior logits is
# $\nabla_\theta \log p_\theta(x_n) = p_\theta(z \mid x_n) - \mathrm{softmax}(\theta)$,
# so an estimator of the θ-gradient is only as good as its estimate of the posterior.
# We average each estimator over the 3,000 datapoints and over `GRAD_DRAWS` steps, at the
# same θ ($= 0$), and compare with the exact gradient:
#
# * **RWS**: `jax.grad` of `ReweightedWakeSleep(K).loss`, with a fresh key each step;
# * **JSA**: first `BURN_IN` steps to bring the chains to their stationary law, then the
#   gradient of each step. `loss.loss_with_mutable_state` is the function `SVI`
#   differentiates: it returns the loss and the chains' next state, so the gradient and
#   the chains' move come from one evaluation.
#
# Successive JSA gradients are correlated, since a chain often stays where it was, so the
# average has more Monte Carlo noise than its number of terms suggests. To tell noise from
# bias we run JSA `JSA_RUNS` times with independent chains: the spread of the runs gives the
# standard error of their mean. An unbiased estimator misses the exact gradient by about
# one standard error; a biased one by more, however many draws are averaged.

# %%
params = {"theta": theta0}
exact_grad = jax.grad(lambda p: exact_nll(p["theta"], x_toy))(params)["theta"]
NUM_TOY = len(x_toy)


def rws_gradient(num_particles):
    rws = numpyro_wakesleep.ReweightedWakeSleep(num_particles=num_particles)
    grad = jax.jit(jax.grad(lambda p, key: rws.loss(key, p, toy_model, toy_guide, x_toy)))
    draws = [grad(params, random.PRNGKey(i))["theta"] for i in range(GRAD_DRAWS)]
    return np.mean(draws, axis=0) / NUM_TOY  # the loss sums over datapoints


def jsa_gradients(num_particles, runs=JSA_RUNS):
    """One averaged gradient per independent run of the chains."""
    jsa = numpyro_wakesleep.JointStochasticApproximation(num_particles=num_particles)
    frozen = numpyro.infer.SVI(toy_model, toy_guide, optax.set_to_zero(), loss=jsa)
    empty = jsa.init_state(frozen, random.PRNGKey(0), x_toy).mutable_state  # no chain seen yet

    def loss_and_chains(p, chains, key):
        out = jsa.loss_with_mutable_state(key, {**p, **chains}, toy_model, toy_guide, x_toy)
        return out["loss"], out["mutable_state"]

    grad = jax.jit(jax.grad(loss_and_chains, has_aux=True))
    estimates = []
    for run in range(runs):
        chains, draws = empty, []
        for i in range(BURN_IN + GRAD_DRAWS):  # every call moves the chains one step
            g, chains = grad(params, chains, random.fold_in(random.PRNGKey(run), i))
            if i >= BURN_IN:
                draws.append(g["theta"])
        estimates.append(np.mean(draws, axis=0) / NUM_TOY)
    return estimates


t0 = time.perf_counter()
rws_grads = {k: rws_gradient(k) for k in GRAD_PARTICLES}
jsa_grads = {k: jsa_gradients(k) for k in GRAD_PARTICLES}
errors = {
    "RWS": [np.linalg.norm(rws_grads[k] - exact_grad) for k in GRAD_PARTICLES],
    f"JSA (mean of {JSA_RUNS} runs)": [
        np.linalg.norm(np.mean(jsa_grads[k], axis=0) - exact_grad) for k in GRAD_PARTICLES
    ],
    # the standard error of that mean, from the spread of the runs
    "JSA standard error": [
        np.linalg.norm(np.std(jsa_grads[k], axis=0, ddof=1)) / np.sqrt(JSA_RUNS)
        for k in GRAD_PARTICLES
    ],
}
print(f"gradients in {time.perf_counter() - t0:.1f} s; |exact gradient| = "
      f"{np.linalg.norm(exact_grad):.4f}")  # fmt: skip
print(f"{'K':>4s} {'|RWS - exact|':>15s} {'|JSA - exact|':>15s} {'JSA std. error':>15s}")
for i, k in enumerate(GRAD_PARTICLES):
    print(f"{k:4d}" + "".join(f"{errors[name][i]:16.4f}" for name in errors))

fig, (ax_vec, ax_bias) = plt.subplots(1, 2, figsize=(12, 3.6))
width = 0.27
ax_vec.bar(STATES - width, exact_grad, width, color="grey", label="exact")
ax_vec.bar(STATES, rws_grads[2], width, color="C3", label="RWS, K = 2 (mean)")
ax_vec.bar(STATES + width, np.mean(jsa_grads[2], 0), width, color="C0", label="JSA, K = 2 (mean)")
ax_vec.axhline(0, color="k", lw=0.5)
ax_vec.set(xlabel="component of θ (prior logit of z)", ylabel="∂ loss / ∂θ per datapoint")
ax_vec.set(title="the θ-gradient at θ = 0")
ax_vec.legend(fontsize=8)
for (name, values), style in zip(errors.items(), ["o-C3", "o-C0", ":C0"], strict=True):
    ax_bias.plot(GRAD_PARTICLES, values, style, label=name)
ax_bias.set(xscale="log", yscale="log", xlabel="K (proposals per datapoint and step)")
ax_bias.set(ylabel="|mean gradient − exact|", title="error of the averaged θ-gradient")
ax_bias.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Left: at $K = 2$ the mean RWS gradient is several times larger than the exact one and
# has the opposite sign in five of the eight components. A step along it raises the prior
# of $z = 0, 1, 2$, where the guide proposes, and lowers that of $z = 4, \dots, 7$. The mean
# JSA gradient lies on the exact one. Right: the error of the averaged gradient against
# $K$. RWS's shrinks slowly as $K$ grows: this is the bias of self-normalised importance
# sampling, and averaging more steps does not remove it. At $K = 50$ it is still two
# thirds of the size of the exact gradient. JSA's error stays within about two standard
# errors (dotted) at every $K$, two orders of magnitude below RWS's: what is left is noise.
#
# ### What the bias does to the model
#
# A biased gradient has a different fixed point. Now train θ (Adam, learning rate 0.05),
# still with the same untrained guide, with RWS and with JSA at $K = 2$, and compare with
# the maximum-likelihood prior. For this model the maximum-likelihood prior is where the
# exact gradient vanishes, $\mathrm{softmax}(\theta) = \frac1N \sum_n p_\theta(z \mid x_n)$;
# EM iterates exactly that equation.


# %%
def em_prior(x, iterations=2000):
    prior = jnp.full(NUM_STATES, 1 / NUM_STATES)
    step = lambda _, prior: exact_posterior(jnp.log(prior), x).mean(0)  # noqa: E731
    return lax.fori_loop(0, iterations, step, prior)


ml_prior = em_prior(x_toy)
ml_nll = float(exact_nll(jnp.log(ml_prior), x_toy))


def train_toy(loss):
    svi = numpyro.infer.SVI(toy_model, toy_guide, optax.adam(0.05), loss=loss)
    if isinstance(loss, numpyro_wakesleep.JointStochasticApproximation):
        state = loss.init_state(svi, random.PRNGKey(2), x_toy)
    else:
        state = svi.init(random.PRNGKey(2), x_toy)
    update = jax.jit(svi.update)
    nlls = []
    for _ in range(TOY_STEPS):
        state, _ = update(state, x_toy)
        nlls.append(float(exact_nll(svi.get_params(state)["theta"], x_toy)))
    return np.asarray(jax.nn.softmax(svi.get_params(state)["theta"])), np.array(nlls)


toy_runs = {
    "RWS, K = 2": train_toy(numpyro_wakesleep.ReweightedWakeSleep(num_particles=2)),
    "JSA, K = 2": train_toy(numpyro_wakesleep.JointStochasticApproximation(num_particles=2)),
}
print(f"maximum likelihood: exact NLL {ml_nll:.4f} nats per datapoint")
for name, (prior, nlls) in toy_runs.items():
    print(f"{name}: exact NLL {nlls[-1]:.4f}, TV(learned prior, ML prior) "
          f"{float(tv(prior, ml_prior)):.3f}")  # fmt: skip

fig, (ax_nll, ax_prior) = plt.subplots(1, 2, figsize=(12, 3.4))
for (name, (_, nlls)), colour in zip(toy_runs.items(), ["C3", "C0"], strict=True):
    ax_nll.plot(np.arange(1, TOY_STEPS + 1), nlls, color=colour, label=name)
ax_nll.axhline(ml_nll, color="k", ls="--", lw=1, label="maximum likelihood")
ax_nll.set(xlabel="step", ylabel="exact −log p(x), nats per datapoint", xscale="log")
ax_nll.set(title="training the prior with a fixed, bad guide")
ax_nll.legend(fontsize=8)
ax_prior.bar(STATES - width, ml_prior, width, color="grey", label="maximum likelihood")
for offset, (name, (prior, _)), colour in zip(
    (0, width), toy_runs.items(), ["C3", "C0"], strict=True
):
    ax_prior.bar(STATES + offset, prior, width, color=colour, label=name)
ax_prior.set(xlabel="z", ylabel="prior probability", title="the learned prior")
ax_prior.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# RWS at $K = 2$ settles at the fixed point of its biased gradient: a prior spread over
# the small $z$ where the guide proposes, at a total variation distance of 0.66 from the
# maximum-likelihood prior. Its exact NLL rises from 2.12 nats at the uniform start to
# 2.71, against 1.89 at the optimum: training made the model worse. JSA converges to the
# maximum-likelihood prior (distance 0.004, NLL within 0.001 nats of the optimum). The
# guide was the same in both runs and was never trained; JSA only needed it to *propose*.
#
# ### The same objective in Pyro
#
# `pyro_wakesleep.JointStochasticApproximation` is the same objective for `pyro.infer.SVI`.
# There the chains live on the loss object (`loss.chains`, saved with `loss.state_dict()`)
# rather than in a functional state, and `loss.last_terms` records `acceptance_rate` and
# `chain_age` after every step. The same small model, frozen with a zero learning rate,
# run for as many steps as the NumPyro chains above:


# %%
def pyro_model(x):
    theta = pyro.param("theta", torch.zeros(NUM_STATES))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", pdist.Categorical(logits=theta))
        pyro.sample("x", pdist.Normal(z.to(x.dtype), 1.0), obs=x)


PYRO_GUIDE_PROBS = torch.tensor(np.array(GUIDE_PROBS))


def pyro_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", pdist.Categorical(probs=PYRO_GUIDE_PROBS))


pyro.clear_param_store()
pyro.set_rng_seed(0)
pyro_jsa = pyro_wakesleep.JointStochasticApproximation(num_particles=2)
pyro_svi = pyro.infer.SVI(pyro_model, pyro_guide, pyro.optim.SGD({"lr": 0.0}), loss=pyro_jsa)
pyro_x = torch.tensor(np.array(x_toy))
for _ in range(CHAIN_STEPS):
    pyro_svi.step(pyro_x)
print("last_terms:", {name: round(value, 3) for name, value in pyro_jsa.last_terms.items()})
print("state_dict:", sorted(pyro_jsa.state_dict()))
z = pyro_jsa.chains.values["z"].reshape(len(X_VALUES), REPLICAS)
pyro_marginals = torch.nn.functional.one_hot(z, NUM_STATES).double().mean(1).numpy()
print("TV(Pyro chains, posterior):", np.round(np.asarray(tv(pyro_marginals, posterior)), 3))

# %% [markdown]
# After the same 200 steps the Pyro chains are as close to the exact posteriors as the
# NumPyro ones (total variation 0.01 to 0.02). `last_terms` shows the last step: with this
# guide only 28 % of the moves are accepted, and a chain has on average about 6 visits
# behind it since it last moved. (`ess` is the effective sample size of the $K$ importance
# weights, as for RWS.)
#
# ## 2. JSA on a Helmholtz machine: the digits
#
# The machine of tutorial 03: 16 binary hidden units above 64 binary pixels (scikit-learn's
# 8×8 digits, binarised; 1,500 training and 297 test images), trained on random
# mini-batches of 100 with Adam at $3 \cdot 10^{-3}$.
#
# With mini-batches, the loss must know *which* datapoints a batch holds, so that each
# image keeps its own chain. `HelmholtzMachine.model(x, num_data=None, index=None)` takes
# `index`, the batch's rows in the training set, as the sub-sample indices of its data
# plate; `num_data` (the training-set size, here an SVI static keyword) sizes the chains
# and scales the batch to the whole set. The step draws 100 distinct indices, takes those
# images and hands both to `svi.update`. `lax.scan` runs `LOG_EVERY` such steps in one
# compiled call.
#
# For logging, `loss.terms(key, {**params, **state.mutable_state}, model, guide, x, ...)`
# (jitted) evaluates one step without applying it and returns, besides the loss,
# `acceptance_rate` (the fraction of the $K$ moves that were accepted) and `chain_age`
# (for the batch's datapoints, the mean number of their visits since their chain last
# accepted a proposal). A proposal of binary units can be the very configuration the chain
# already holds, and accepting it changes nothing. So the step also records the fraction of
# visited chains whose state actually *changed*.
#
# One function trains either objective, so that section 3 can reuse it for RWS: the same
# initial parameters and the same mini-batches for a given seed.

# %%
data = load_dataset("digits", seed=0)
train_x = jnp.asarray(data.train, dtype=jnp.float32)
NUM_DATA = len(train_x)
machine = HelmholtzMachine(data.num_visible, HIDDEN)
print(data)


def exact_test_nll(params):
    """Mean exact -log p(x) of the test images (nats), by enumerating the 2^16 hidden states."""
    return float(-helmholtz_log_marginal(data.test, *machine.generative_weights(params)).mean())


def make_trainer(loss):
    """Compiled pieces for one objective: init, a chunk of LOG_EVERY steps, the terms."""
    svi = numpyro.infer.SVI(
        machine.model, machine.guide, optax.adam(LR), loss=loss, num_data=NUM_DATA
    )
    has_chains = isinstance(loss, numpyro_wakesleep.JointStochasticApproximation)

    def init(seed):
        index = jnp.arange(BATCH)
        if has_chains:
            return loss.init_state(svi, random.PRNGKey(seed), train_x[index], index=index)
        return svi.init(random.PRNGKey(seed), train_x[index], index=index)

    def step(carry, _):
        state, batch_key = carry
        batch_key, draw = random.split(batch_key)
        index = random.choice(draw, NUM_DATA, (BATCH,), replace=False)
        new_state, value = svi.update(state, train_x[index], index=index)
        changed = jnp.nan
        if has_chains:  # the fraction of the batch's (previously seen) chains that changed
            old, new = (s.mutable_state[CHAINS] for s in (state, new_state))
            seen = old["seen"][index]
            moved = jnp.any(old["values"]["h1"][index] != new["values"]["h1"][index], axis=-1)
            changed = jnp.sum(moved & seen) / jnp.maximum(jnp.sum(seen), 1)
        return (new_state, batch_key), (value, changed)

    chunk = jax.jit(lambda carry: lax.scan(step, carry, None, length=LOG_EVERY))

    @jax.jit
    def terms(state, key):
        index = random.choice(key, NUM_DATA, (BATCH,), replace=False)
        param_map = {**svi.get_params(state), **(state.mutable_state or {})}
        return loss.terms(
            key, param_map, machine.model, machine.guide, train_x[index],
            num_data=NUM_DATA, index=index,
        )  # fmt: skip

    return svi, init, chunk, terms


def train(trainer, seed):
    svi, init, chunk, terms = trainer
    carry = (init(seed), random.PRNGKey(1000 + seed))  # the same mini-batches for a seed
    log = {name: [] for name in ("step", "loss", "acceptance_rate", "chain_age", "changed")}
    nll_steps, nlls = [0], [exact_test_nll(svi.get_params(carry[0]))]
    for done in range(LOG_EVERY, NUM_STEPS + 1, LOG_EVERY):
        carry, (values, changed) = chunk(carry)
        logged = terms(carry[0], random.PRNGKey(done))
        log["step"].append(done)
        log["loss"].append(float(values.mean()) / NUM_DATA)
        log["changed"].append(float(changed.mean()))
        for name in ("acceptance_rate", "chain_age"):
            log[name].append(float(logged.get(name, np.nan)))
        if done % EVAL_EVERY == 0:
            nll_steps.append(done)
            nlls.append(exact_test_nll(svi.get_params(carry[0])))
    return {
        "log": {name: np.array(values) for name, values in log.items()},
        "nll": (np.array(nll_steps), np.array(nlls)),
    }


trainers, runs = {}, {}  # by (objective, K); by (objective, K, seed)
t0 = time.perf_counter()
for k in PARTICLE_COUNTS:
    trainers["JSA", k] = make_trainer(numpyro_wakesleep.JointStochasticApproximation(k))
    for seed in SEEDS:
        runs["JSA", k, seed] = train(trainers["JSA", k], seed)
print(f"JSA: {len(runs)} runs of {NUM_STEPS} steps in {time.perf_counter() - t0:.0f} s")
for k in PARTICLE_COUNTS:
    log = runs["JSA", k, 0]["log"]
    print(f"K = {k:2d}, seed 0, last log: acceptance {log['acceptance_rate'][-1]:.2f}, "
          f"chain age {log['chain_age'][-1]:.3f}, changed {log['changed'][-1]:.3f}")  # fmt: skip

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 3.4))
for i, k in enumerate(PARTICLE_COUNTS):
    log = runs["JSA", k, 0]["log"]
    axes[0].plot(log["step"], log["acceptance_rate"], color=f"C{i}", label=f"K = {k}")
    axes[1].plot(log["step"], log["chain_age"], color=f"C{i}", label=f"K = {k}")
    axes[2].plot(log["step"], log["changed"], color=f"C{i}", label=f"K = {k}")
axes[0].set(ylabel="fraction of moves accepted", title="acceptance rate", ylim=(0, 1))
axes[1].set(ylabel="visits since last acceptance", title="chain age (batch mean)")
axes[2].set(ylabel="fraction of visited chains", title="chain state changed in a visit")
axes[2].set(ylim=(0, 1))
for ax in axes:
    ax.set(xlabel="step")
    ax.legend(fontsize=8)
fig.suptitle("JSA on the digits, seed 0")
fig.tight_layout()
plt.show()

# %% [markdown]
# What the three panels show (seed 0, one point per `LOG_EVERY` steps):
#
# * **Acceptance rate.** About 0.7 at the start, when the model is still vague and the
#   weights of all proposals are similar, then it falls to about 0.3, for every $K$. As
#   training sharpens the model's posteriors, the guide's proposals are more often worse
#   than the state the chain holds.
# * **Chain age.** It grows during training, and grows more the fewer proposals there are:
#   in the last thousand steps a chain has on average about 6 to 9 visits behind it since
#   it last accepted a proposal with $K = 1$, 3 to 6 with $K = 2$ and about 1 with
#   $K = 10$. A chain is visited every 15 steps on average (100 of 1,500 images per step),
#   so 8 visits are about 120 steps. With an acceptance rate near 0.3, a chain at $K = 1$
#   would wait about 2 visits between accepted moves if all chains were alike. The mean is
#   larger because some chains stay put far longer than that, presumably those of images
#   for which the guide seldom proposes what the posterior prefers.
# * **State changed.** The fraction of visits after which the chain holds a *different*
#   configuration of the 16 units: about 0.24 with $K = 1$, 0.34 with $K = 2$ and 0.68
#   with $K = 10$ at the end. With $K = 1$, where a visit is a single move, it is a little
#   below the acceptance rate (0.24 against 0.29): an accepted proposal can be the very
#   configuration the chain already holds.
#
# A chain that stays is not necessarily wrong: if an image's posterior is concentrated
# on one configuration, staying there is right. But slowly moving chains give correlated
# gradients, and more proposals per step keep them moving. Section 1 showed what the chains
# converge to when given time.
#
# ## 3. JSA against RWS at the same particle budget
#
# Now the same trainer with `ReweightedWakeSleep(K)`: for each $K$ and seed, both
# objectives start from the same parameters and see the same mini-batches, with the
# same learning rate and number of steps. Both evaluate the model and guide on $K$
# proposals per datapoint and step. JSA also scores the chain's current state, one more
# evaluation per datapoint, and updates the chains in the state.

# %%
t0 = time.perf_counter()
for k in PARTICLE_COUNTS:
    trainers["RWS", k] = make_trainer(numpyro_wakesleep.ReweightedWakeSleep(k))
    for seed in SEEDS:
        runs["RWS", k, seed] = train(trainers["RWS", k], seed)
print(f"RWS: {len(PARTICLE_COUNTS) * len(SEEDS)} runs in {time.perf_counter() - t0:.0f} s")

colours = {"JSA": "C0", "RWS": "C3"}
fig, axes = plt.subplots(1, len(PARTICLE_COUNTS), figsize=(5 * len(PARTICLE_COUNTS), 3.6))
for ax, k in zip(np.atleast_1d(axes), PARTICLE_COUNTS, strict=True):
    for name, colour in colours.items():
        curves = np.array([runs[name, k, seed]["nll"][1] for seed in SEEDS])
        nll_steps = runs[name, k, 0]["nll"][0]
        for curve in curves:
            ax.plot(nll_steps, curve, color=colour, lw=0.5, alpha=0.5)
        ax.plot(
            nll_steps, curves.mean(0), "o-", ms=3, color=colour, label=f"{name} (mean of seeds)"
        )
    final = [runs[name, k, s]["nll"][1][-1] for name in colours for s in SEEDS]
    ax.set_ylim(min(final) - 0.7, max(final) + 3.5)
    ax.set(xlabel="step", ylabel="exact test NLL, nats per image", title=f"K = {k}")
    ax.legend(fontsize=8)
fig.suptitle(f"Helmholtz machine 64-16 on digits; {len(SEEDS)} seeds (thin lines)")
fig.tight_layout()
plt.show()

# %% [markdown]
# The exact test NLL (lower is better) is computed by enumerating the $2^{16}$ hidden
# configurations, so it depends only on the model and carries no estimation error. The
# table gives its value after the last step and its lowest value along the way, averaged
# over the seeds, and the difference per seed.
#
# For the time of a step, the compiled chunks of `LOG_EVERY` steps of the two objectives
# are run in turn, `TIMED_CHUNKS` of each, so that both see the same load on the CPU; the
# median chunk time divided by `LOG_EVERY` is the time of a step (compilation excluded:
# the chunks were compiled during training).


# %%
def ms_per_step(k):
    carries = {name: (trainers[name, k][1](0), random.PRNGKey(0)) for name in ("JSA", "RWS")}
    seconds = {name: [] for name in carries}
    for _ in range(TIMED_CHUNKS):
        for name in carries:
            t0 = time.perf_counter()
            carries[name], (values, _) = trainers[name, k][2](carries[name])
            values.block_until_ready()
            seconds[name].append(time.perf_counter() - t0)
    return {name: 1e3 * np.median(times) / LOG_EVERY for name, times in seconds.items()}


print(f"{len(SEEDS)} seeds, {NUM_STEPS} steps, batch {BATCH}, Adam {LR}; NLL in nats per image\n")
print("| K | JSA final | RWS final | JSA − RWS (per seed) | JSA best | RWS best "
      "| JSA ms/step | RWS ms/step |")  # fmt: skip
print("|---:|---:|---:|---|---:|---:|---:|---:|")
for k in PARTICLE_COUNTS:
    final = {n: np.array([runs[n, k, s]["nll"][1][-1] for s in SEEDS]) for n in colours}
    best = {n: np.array([runs[n, k, s]["nll"][1].min() for s in SEEDS]) for n in colours}
    diffs = ", ".join(f"{d:+.2f}" for d in final["JSA"] - final["RWS"])
    ms = ms_per_step(k)
    print(f"| {k} | {final['JSA'].mean():.2f} | {final['RWS'].mean():.2f} | {diffs} "
          f"| {best['JSA'].mean():.2f} | {best['RWS'].mean():.2f} "
          f"| {ms['JSA']:.2f} | {ms['RWS']:.2f} |")  # fmt: skip

# %% [markdown]
# Which one wins depends on $K$:
#
# * **$K = 1$: JSA, by far**: 18.80 against 23.36 nats per test image, 4.4 to 4.7 nats
#   better in each seed. This case is degenerate for RWS. With one particle the
#   self-normalised weight is 1, so RWS's guide update is the score
#   $\nabla_\phi \log q_\phi(z \mid x)$ at $z \sim q_\phi$, zero on average: the guide
#   does not learn, and the model is trained on proposals from an untrained guide. JSA's
#   guide update follows the chain states, which move towards the posterior whatever the
#   guide.
# * **$K = 2$: JSA**, 18.81 against 19.16, better by 0.27 to 0.43 nats in every seed.
# * **$K = 10$: a tie.** 18.75 against 18.79; the per-seed differences (+0.01, −0.07,
#   −0.05) are as large as the differences between seeds.
#
# JSA with a single proposal per step reaches the test NLL that RWS needs ten for
# (18.80 against 18.79). Both curves are still falling slowly at 6,000 steps. These are
# results for one small machine, one learning rate and 6,000 steps. As $K$ grows, RWS's
# bias shrinks and JSA's advantage goes with it, as at $K = 10$.
#
# A JSA step costs a little more than an RWS step with the same $K$: 5–20 % in the
# table's last two columns (milliseconds per step on the two-core CPU that ran this
# notebook; such timings move by 10–20 % from run to run). The extra work is scoring the chain's state (one more evaluation of model
# and guide per datapoint), the sampler and the update of the chains. The chains also
# take memory: one latent configuration per training image (here 1,500 × 16 values),
# carried in the SVI state.
#
# ## Summary
#
# * `JointStochasticApproximation(num_particles=K)` keeps a Markov chain per datapoint whose
#   stationary law is the exact posterior; the guide is only its proposal. Its θ-gradient
#   is then unbiased at any $K$, where RWS's is biased at small $K$ (section 1).
# * NumPyro: `state = loss.init_state(svi, key, x, ...)` adds the chains to the SVI state;
#   `svi.update` and `svi.run(..., init_state=state)` carry them under `jit`. Pass
#   `index` (the batch's rows in the data set) so that each datapoint keeps its chain, and
#   log `acceptance_rate` and `chain_age` with a jitted `loss.terms`.
# * Pyro: the same class for `pyro.infer.SVI`; the chains live on the loss
#   (`loss.state_dict()` for checkpoints), the diagnostics in `loss.last_terms`.
# * On the digits (64-16 machine, 6,000 steps, 3 seeds), JSA beats RWS clearly at $K = 1$
#   and $K = 2$ and ties at $K = 10$, for up to about 20 % more time per step.

# %%
print(f"whole notebook: {time.perf_counter() - START:.0f} s")
