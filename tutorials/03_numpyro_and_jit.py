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
# # Wake-sleep in NumPyro, compiled with `jit`
#
# The objectives of this package exist twice, once for Pyro (`pyro_wakesleep`) and once
# for NumPyro (`numpyro_wakesleep`), with the same names, the same arguments and the same
# mathematics. This tutorial is about the NumPyro side and what it buys you: a whole
# training step — drawing the particles, weighting them, the gradients of model and guide,
# the Adam update — compiles with `jax.jit` into one fused function.
#
# You will see
#
# 1. `ReweightedWakeSleep` handed to `numpyro.infer.SVI`, trained with `svi.run` (which
#    jit-compiles), and how to log the separate terms of the objective when every step
#    runs inside `jit`;
# 2. `AlternatingSVI`: model-only and guide-only steps, one Optax state per side, also
#    under `jit`;
# 3. a Helmholtz machine trained on 8×8 binarised digits with reweighted wake-sleep (RWS)
#    and with classic wake-sleep (WS): training curves, samples from the model and the
#    **exact** test log-likelihood;
# 4. how fast a step is in each backend, with compilation counted separately.
#
# You need `pip install 'wakesleep[pyro,numpyro,data]' matplotlib` (`data` brings
# scikit-learn, the source of the digits).

# %%
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import numpyro
import optax
import pyro
import torch
from jax import lax, random

import numpyro_wakesleep
import pyro_wakesleep
import pyro_wakesleep.helmholtz
from numpyro_wakesleep.evaluation import importance_log_likelihood
from numpyro_wakesleep.helmholtz import HelmholtzMachine
from wakesleep.trainer.datasets import load_dataset
from wakesleep.trainer.exact import helmholtz_log_marginal

# WAKESLEEP_SMOKE=1 runs every cell with tiny step and sample counts (the test suite does).
WAKESLEEP_SMOKE = os.environ.get("WAKESLEEP_SMOKE") == "1"
INTRO_STEPS = 20 if WAKESLEEP_SMOKE else 1000  # sections 1 and 2 (one batch of 100 images)
NUM_STEPS = 40 if WAKESLEEP_SMOKE else 4000  # section 3, the digits machine (each algorithm)
EVAL_EVERY = 20 if WAKESLEEP_SMOKE else 500  # exact test NLL every this many steps
TIMED_STEPS = 10 if WAKESLEEP_SMOKE else 300  # section 4, steps timed in each backend
IS_PARTICLES = 20 if WAKESLEEP_SMOKE else 1000  # importance-sampling estimate of log p(x)

# the digits defaults of `python -m numpyro_wakesleep train --dataset digits`
HIDDEN = (16,)  # one layer of 16 binary hidden units: 2^16 configurations, enumerable
PARTICLES = 10  # K
BATCH = 100  # datapoints per step
LR = 3e-3  # Adam

START = time.perf_counter()
pyro.set_rng_seed(0)
print(f"smoke mode: {WAKESLEEP_SMOKE}; JAX {jax.__version__} on {jax.devices()[0].platform}")

# %% [markdown]
# ## The data and the machine
#
# `load_dataset("digits", seed=0)` gives scikit-learn's 1,797 handwritten digits,
# 8×8 pixels each, binarised, split into 1,500 training and 297 test images. Each image
# is one row of 64 zeros and ones.
#
# `HelmholtzMachine(64, (16,))` is a sigmoid belief net with one layer of 16 binary
# hidden units $h$ above the 64 pixels $x$,
#
# $$h_j \sim \mathrm{Bern}(\sigma(b_j)), \qquad x \mid h \sim \textstyle\prod_i
# \mathrm{Bern}(\sigma(W h + c)_i),$$
#
# and a recognition network $q(h \mid x) = \prod_j \mathrm{Bern}(\sigma(V x + d)_j)$.
# `machine.model` and `machine.guide` are ordinary NumPyro programs over a `(batch, 64)`
# array; the machine object holds only the sizes. The parameter *values* live where NumPyro
# keeps them, in the SVI state.

# %%
data = load_dataset("digits", seed=0)
train_x = jnp.asarray(data.train, dtype=jnp.float32)
test_x = jnp.asarray(data.test, dtype=jnp.float32)
NUM_DATA = len(train_x)
machine = HelmholtzMachine(data.num_visible, HIDDEN)
x = train_x[:BATCH]  # sections 1 and 2 train on this one batch
print(data)

fig, axes = plt.subplots(2, 10, figsize=(8, 1.8))
for ax, image in zip(axes.flat, data.train[:20], strict=True):
    ax.imshow(image.reshape(data.image_shape), cmap="gray_r", vmin=0, vmax=1)
    ax.axis("off")
fig.suptitle("training images (binarised 8×8 digits)")
plt.show()

# %% [markdown]
# ## 1. The objectives are NumPyro losses
#
# `numpyro_wakesleep.ReweightedWakeSleep(num_particles=K)` goes where NumPyro expects an
# ELBO. Its value is the reported value — the negative importance-weighted bound
# $-\sum_x \log \frac1K \sum_k w_k$ in nats, summed over the batch — and its gradient is
# the whole update: reweighted wake-θ for the model, wake-φ for the guide (and, with
# `insomnia < 1`, sleep-φ from dreams). `svi.run` with `progress_bar=False` runs all steps
# in one `lax.scan` under `jit`: one compilation, then no Python between steps.

# %%
rws = numpyro_wakesleep.ReweightedWakeSleep(num_particles=PARTICLES)
svi = numpyro.infer.SVI(machine.model, machine.guide, optax.adam(LR), loss=rws)

t0 = time.perf_counter()
result = svi.run(random.PRNGKey(0), INTRO_STEPS, x, progress_bar=False)
result.losses.block_until_ready()
print(f"svi.run: {INTRO_STEPS} steps in {time.perf_counter() - t0:.1f} s, compilation included")
print(
    f"loss per image: first step {result.losses[0] / BATCH:.1f}, last {result.losses[-1] / BATCH:.1f}"
)
print(f"parameters: {sorted(result.params)}")

# %% [markdown]
# ### Logging the separate terms under `jit`
#
# Pyro's loss records the terms of every step as a side effect. Inside `jit` there are no
# side effects: the traced step runs once, at compilation, on abstract values. So the
# NumPyro loss's `last_terms` — the terms of the last evaluation made *outside* any JAX
# transformation — stays empty after `svi.run`, however many steps it made:

# %%
print("rws.last_terms after svi.run:", rws.last_terms)

# %% [markdown]
# Instead, `loss.terms(rng_key, params, model, guide, *args)` is a pure function that
# returns them: `loss` (the reported value), `wake_theta` and `wake_phi` (the surrogate
# values, nats, summed over the batch) and `ess`, the mean effective sample size of the
# $K$ importance weights, $1 / \sum_k \bar w_k^2$ (between 1 and $K$). Being pure, it can
# be jitted like the step. To watch the terms during training, step with the jitted
# `svi.update` yourself and call the jitted `terms` every few steps:

# %%
terms = jax.jit(lambda key, params, x: rws.terms(key, params, machine.model, machine.guide, x))
update = jax.jit(svi.update)

state = svi.init(random.PRNGKey(0), x)
log_every = max(INTRO_STEPS // 50, 1)
logged_steps, logged = [], []
for step in range(INTRO_STEPS + 1):
    if step % log_every == 0:
        logged_steps.append(step)
        logged.append(terms(random.PRNGKey(step), svi.get_params(state), x))
    if step < INTRO_STEPS:
        state, _ = update(state, x)
logged = {name: np.array([float(t[name]) for t in logged]) for name in logged[0]}
print({name: round(float(values[-1]), 2) for name, values in logged.items()})
print("rws.last_terms is still", rws.last_terms)

fig, (ax_nats, ax_ess) = plt.subplots(1, 2, figsize=(11, 3.4))
ax_nats.plot(logged_steps, logged["loss"] / BATCH, label="loss = −IWAE bound (K = 10)")
ax_nats.plot(logged_steps, logged["wake_theta"] / BATCH, "--", label="wake_theta surrogate")
ax_nats.plot(logged_steps, logged["wake_phi"] / BATCH, label=r"wake_phi: $-\sum_k \bar w_k \log q$")
ax_nats.set(xlabel="step", ylabel="nats per image", title="terms of the RWS objective")
ax_nats.legend(fontsize=8)
ax_ess.plot(logged_steps, logged["ess"])
ax_ess.axhline(PARTICLES, color="grey", ls="--", lw=1, label=f"K = {PARTICLES}")
ax_ess.set(xlabel="step", ylabel="mean ESS", ylim=(0, PARTICLES + 0.5))
ax_ess.set(title="effective sample size of the K weights")
ax_ess.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The left panel shows the wake-θ surrogate lying on the reported loss: for reweighted
# wake-sleep the model's surrogate *is* the negative IWAE bound. Both fall as the model
# learns the batch. `wake_phi` is the cross-entropy the guide minimises: the
# weighted negative log-density of its own draws. It falls as the guide becomes confident
# about which hidden units explain each image. The right panel shows the ESS, how many of
# the 10 particles effectively count. It rises in the first steps, while the guide learns
# to propose what the still-vague model finds likely, then drifts down: as the model
# sharpens, its posteriors become more concentrated and correlated than a guide of
# independent Bernoulli units can match, so the weights grow uneven again. That is what
# the reweighting is for — and a reason to log the ESS when you choose $K$.
#
# `terms` costs one extra forward pass (no gradient) per call, so call it every few steps,
# not every step.
#
# ## 2. `AlternatingSVI`: model steps and guide steps, under `jit`
#
# `numpyro.infer.SVI` updates model and guide together in every step. The original
# wake-sleep algorithm alternates: a wake step changes only the model, a sleep step only
# the guide. `numpyro_wakesleep.AlternatingSVI` does that, with **one Optax optimiser per
# side**. At `init` it traces both programs once to learn which parameters each reads, and
# keeps the phase (which side the next step updates) in its state, so that `update` is a
# pure function — jit it, scan it.
#
# Here with classic `WakeSleep` (wake-θ for the model, sleep-φ from dreamed data for the
# guide); its reported value is the negative ELBO.

# %%
ws = numpyro_wakesleep.WakeSleep(num_particles=PARTICLES)
alt = numpyro_wakesleep.AlternatingSVI(
    machine.model, machine.guide, optax.adam(LR), optax.adam(LR), loss=ws
)
alt_state = alt.init(random.PRNGKey(1), x)
print("model's parameters:", sorted(alt.model_param_names))
print("guide's parameters:", sorted(alt.guide_param_names))
# an Adam state per side: its moment estimates cover that side's parameters only
print("model Adam state holds moments of:", sorted(alt_state.model_optim_state[0].mu))
print("guide Adam state holds moments of:", sorted(alt_state.guide_optim_state[0].mu))

alt_update = jax.jit(alt.update)
for _ in range(4):
    phase = alt.phase(alt_state)
    new_state, value = alt_update(alt_state, x)
    changed = [
        name
        for name in alt_state.params
        if not jnp.array_equal(alt_state.params[name], new_state.params[name])
    ]
    print(f"{phase:5s} step: loss {float(value) / BATCH:6.2f} per image; changed {changed}")
    alt_state = new_state

# %% [markdown]
# Model steps change only `helmholtz_generative.*`, guide steps only
# `helmholtz_recognition.*`, and they take turns. (In a guide step of `WakeSleep` the model
# draws the dreams, but only the guide's gradient is taken.) `alt.run` runs many steps in one
# jitted `lax.scan`, as `svi.run` does; a pair of steps (one model, one guide) is the
# alternating counterpart of one joint `SVI` step.

# %%
t0 = time.perf_counter()
alt_result = alt.run(random.PRNGKey(1), 2 * INTRO_STEPS, x, progress_bar=False)
alt_result.losses.block_until_ready()
print(f"alt.run: {2 * INTRO_STEPS} steps in {time.perf_counter() - t0:.1f} s, compilation included")

alt_losses = np.asarray(alt_result.losses) / BATCH
fig, ax = plt.subplots(figsize=(6, 3.2))
steps = np.arange(len(alt_losses))
ax.plot(steps[0::2], alt_losses[0::2], lw=0.6, label="before a model step")
ax.plot(steps[1::2], alt_losses[1::2], lw=0.6, label="before a guide step")
ax.set(xlabel="step", ylabel="−ELBO estimate, nats per image", title="AlternatingSVI + WakeSleep")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The reported value (evaluated before each step, whichever side it updates) falls as the
# two sides take turns. Its two interleaved halves lie on one curve: each step moves
# one side a little, and the bound responds to both.
#
# ## 3. A Helmholtz machine on the digits: RWS against WS
#
# Now a real training run, as `python -m numpyro_wakesleep train --dataset digits` does it:
# mini-batches of 100 images drawn at random from the 1,500, $K = 10$ particles, Adam at
# $3\cdot10^{-3}$, joint `SVI` steps. The step draws its own mini-batch indices from a key,
# so drawing and updating are one jitted function, and `lax.scan` chains `EVAL_EVERY` of
# them into one compiled call.
#
# `num_data=NUM_DATA` tells the machine's data plate that the batch is a sample of 1,500
# images: the objective scales the batch's terms by $1500/100$, so the reported value
# estimates the bound of the whole training set. Dividing by 1,500 gives nats per image.
#
# Between chunks we compute the **exact** negative log-likelihood of the test images.
# With 16 hidden units, $p(x) = \sum_h p(h)\,p(x \mid h)$ is a sum over $2^{16} = 65{,}536$
# configurations, which `wakesleep.trainer.exact.helmholtz_log_marginal` enumerates
# (NumPy, float64, under a second for the test set). The trainer reports this number as
# `test_nll` whenever the hidden layers are small enough to enumerate.


# %%
def exact_nll(params, images):
    """Mean exact −log p(x) per image (nats), by enumerating the hidden units."""
    return float(-helmholtz_log_marginal(images, *machine.generative_weights(params)).mean())


def train(loss, seed):
    """Train the machine with `loss`; the per-image loss of every step and the exact test NLLs."""
    svi = numpyro.infer.SVI(machine.model, machine.guide, optax.adam(LR), loss=loss)
    init_key, batch_key = random.split(random.PRNGKey(seed))
    state = svi.init(init_key, train_x[:BATCH], num_data=NUM_DATA)

    def step(carry, _):
        state, batch_key = carry
        batch_key, draw = random.split(batch_key)
        index = random.randint(draw, (BATCH,), 0, NUM_DATA)
        state, value = svi.update(state, train_x[index], num_data=NUM_DATA)
        return (state, batch_key), value

    chunk = jax.jit(lambda carry: lax.scan(step, carry, None, length=EVAL_EVERY))
    carry, losses = (state, batch_key), []
    nll_steps, nlls = [0], [exact_nll(svi.get_params(state), data.test)]
    seconds = 0.0
    for done in range(EVAL_EVERY, NUM_STEPS + 1, EVAL_EVERY):
        t0 = time.perf_counter()
        carry, values = chunk(carry)
        values.block_until_ready()
        seconds += time.perf_counter() - t0
        losses.append(np.asarray(values) / NUM_DATA)
        nll_steps.append(done)
        nlls.append(exact_nll(svi.get_params(carry[0]), data.test))
    return svi.get_params(carry[0]), np.concatenate(losses), (nll_steps, nlls), seconds


runs = {}
for name, loss in [
    ("RWS", numpyro_wakesleep.ReweightedWakeSleep(num_particles=PARTICLES)),
    ("WS", numpyro_wakesleep.WakeSleep(num_particles=PARTICLES)),
]:
    runs[name] = train(loss, seed=0)  # the same start and the same mini-batches for both
    print(f"{name}: {NUM_STEPS} steps in {runs[name][3]:.1f} s (compilation included)")

# %% [markdown]
# ### The training curves
#
# Each objective reports its own bound: RWS the negative IWAE bound with $K = 10$, WS the
# negative ELBO. These are different quantities — the IWAE bound is the tighter of the two
# for the same model — so the two reported curves cannot be compared with each other.
# The exact test NLL (dots) can: it is the same number for any training method.


# %%
def smooth(values, width=50):
    width = max(min(width, len(values) // 5), 1)
    return np.convolve(values, np.ones(width) / width, mode="valid")


colours = {"RWS": "C0", "WS": "C1"}
fig, ax = plt.subplots(figsize=(8, 4))
for name, (_, losses, (nll_steps, nlls), _) in runs.items():
    reported = "−IWAE bound, K = 10" if name == "RWS" else "−ELBO"
    curve = smooth(losses)
    ax.plot(np.arange(len(curve)) + 1, curve, color=colours[name], lw=1, alpha=0.6)
    ax.plot([], [], color=colours[name], lw=1, label=f"{name}: reported {reported} (train)")
    ax.plot(nll_steps, nlls, "o-", color=colours[name], ms=4, label=f"{name}: exact test NLL")
ax.set(xlabel="step", ylabel="nats per image", title="Helmholtz machine 64-16 on digits")
lows = [min(runs[n][2][1]) for n in runs] + [smooth(runs[n][1]).min() for n in runs]
ax.set_ylim(min(lows) - 1, min(lows) + 15)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Both machines start from the same parameters and see the same mini-batches. The thin
# curves are measured on training mini-batches, which the machines fit a little better
# than the test images (compare the exact train and test NLLs in the table below), so
# they may run below the dots. On the exact test NLL, the quantity that matters, RWS is
# ahead from the first evaluation on and stays ahead: the reweighted wake-θ gradient
# follows an importance-weighted estimate of $\nabla_\theta \log p(x)$, while classic
# wake-θ follows the gradient of the ELBO, and the WS guide learns only from dreams.
#
# ### Test log-likelihood: exact and estimated
#
# The exact NLL needs enumeration, which stops being possible beyond about 20 hidden
# units. The general tool is an importance-sampling estimate with the guide as proposal,
# `numpyro_wakesleep.evaluation.importance_log_likelihood` (the IWAE bound with many
# particles; the trainer uses 5,000 when it cannot enumerate). It is a lower bound on
# $\log p(x)$, so its NLL lies *above* the exact one; the gap says how good a proposal the
# guide is.

# %%
header = ["exact test", "exact train", "IS test, K=10", f"IS test, K={IS_PARTICLES}"]
print(f"{'NLL, nats per image':20s}", "".join(f"{h:>17s}" for h in header))
for name, (params, _, _, _) in runs.items():
    test_nll = exact_nll(params, data.test)
    train_nll = exact_nll(params, data.train)
    is_nlls = []
    for particles in (PARTICLES, IS_PARTICLES):
        log_px = importance_log_likelihood(
            machine.model, machine.guide, params, test_x,
            rng_key=random.PRNGKey(3), num_particles=particles, chunk_size=250,
        )  # fmt: skip
        is_nlls.append(-float(log_px.mean()))
    row = [test_nll, train_nll, *is_nlls]
    print(f"{name:20s}", "".join(f"{value:17.2f}" for value in row))

# %% [markdown]
# (Nats per image; lower is better.) With 1,000 particles the estimate is as good as
# exact for both guides here: 16 hidden units leave few plausible explanations of an
# image, and 1,000 draws find them. With the $K = 10$ particles of training the gap is
# visible, and it is the guide's report card: the smaller it is, the better the guide
# proposes the explanations the model finds likely. Here the WS guide has the smaller
# gap: its sleep phase fits it to the model's own posteriors, on dreams, in the
# mass-covering direction. So RWS's lead in exact NLL is a better *model*, not a better
# guide — the exact NLL depends on the model alone. For larger machines, where enumeration
# is impossible, the estimate with thousands of particles is the number to report.
#
# ### Samples from the models
#
# `machine.sample(params, key, n)` runs the model with `x` released (jitted) and returns
# 0/1 images: what each trained machine has learnt digits look like.

# %%
fig, axes = plt.subplots(1, 3, figsize=(11, 4))
panels = [("training images", data.train[:64])] + [
    (f"{name} model samples", np.asarray(machine.sample(run[0], random.PRNGKey(4), 64)))
    for name, run in runs.items()
]
for ax, (title, images) in zip(axes, panels, strict=True):
    tiles = images.reshape(8, 8, 8, 8).transpose(0, 2, 1, 3)  # 8x8 grid of 8x8 images
    grid = np.ones((8 * 9 - 1, 8 * 9 - 1)) * 0.5
    for row in range(8):
        for col in range(8):
            grid[row * 9 : row * 9 + 8, col * 9 : col * 9 + 8] = tiles[row, :, col, :]
    ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis("off")
fig.tight_layout()
plt.show()

# %% [markdown]
# Sixteen binary units are a small model of digits: the samples show strokes and loops
# in the right places, some recognisable digits and many ambiguous shapes — a model with
# NLL around 20 nats per 64-pixel image. Pixel noise is part of $p(x \mid h)$: each pixel
# is drawn independently given $h$.
#
# ## 4. Speed: NumPyro under `jit` against Pyro
#
# The same network (64-16, $K = 10$, batches of 100, Adam, RWS) in both backends:
#
# * **NumPyro**: the jitted step of section 3 — draw a mini-batch, `svi.update` — called
#   once per step from Python;
# * **Pyro**: `pyro.infer.SVI(...).step` with `pyro_wakesleep.ReweightedWakeSleep`, on
#   `pyro_wakesleep.helmholtz.HelmholtzMachine`, the same machine written with PyTorch
#   modules.
#
# Every step is timed on its own (waiting for JAX's asynchronous result), and we report the
# median, robust to the odd slow step of a shared CPU. The first step is timed separately:
# in NumPyro it includes the tracing and XLA compilation of the step; in Pyro it includes
# the one-off check that the particle plate is safe to vectorise (`docs/design.md` §1).
#
# One setting matters for Pyro: PyTorch runs each operation on as many threads as there
# are cores. For matrices this small the hand-off between threads costs more than it
# saves, and on a CPU that is busy with other work a thread waiting for its core can stall
# a step for a whole scheduler tick (on the shared two-core machine that ran this notebook,
# most steps took 200 ms with two threads and under 2 ms with one). So we give PyTorch one
# thread, its fastest setting here; JAX keeps its defaults.

# %%
np_svi = numpyro.infer.SVI(
    machine.model,
    machine.guide,
    optax.adam(LR),
    loss=numpyro_wakesleep.ReweightedWakeSleep(num_particles=PARTICLES),
)


def np_step(state, batch_key):
    batch_key, draw = random.split(batch_key)
    index = random.randint(draw, (BATCH,), 0, NUM_DATA)
    state, value = np_svi.update(state, train_x[index], num_data=NUM_DATA)
    return state, batch_key, value


np_step = jax.jit(np_step)
np_state = np_svi.init(random.PRNGKey(5), train_x[:BATCH], num_data=NUM_DATA)
batch_key = random.PRNGKey(6)


def time_numpyro():
    global np_state, batch_key
    t0 = time.perf_counter()
    np_state, batch_key, value = np_step(np_state, batch_key)
    value.block_until_ready()
    return time.perf_counter() - t0


np_first = time_numpyro()
np_times = np.array([time_numpyro() for _ in range(TIMED_STEPS)])

torch.set_num_threads(1)
pyro.clear_param_store()
pt_machine = pyro_wakesleep.helmholtz.HelmholtzMachine(data.num_visible, HIDDEN)
pt_svi = pyro.infer.SVI(
    pt_machine.model,
    pt_machine.guide,
    pyro.optim.Adam({"lr": LR}),
    loss=pyro_wakesleep.ReweightedWakeSleep(num_particles=PARTICLES),
)
pt_train_x = torch.as_tensor(data.train, dtype=torch.float32)
batches = torch.Generator().manual_seed(0)


def time_pyro():
    index = torch.randint(NUM_DATA, (BATCH,), generator=batches)
    t0 = time.perf_counter()
    pt_svi.step(pt_train_x[index], num_data=NUM_DATA)
    return time.perf_counter() - t0


pt_first = time_pyro()
pt_times = np.array([time_pyro() for _ in range(TIMED_STEPS)])

np_ms, pt_ms = 1e3 * np.median(np_times), 1e3 * np.median(pt_times)
print(
    f"{TIMED_STEPS} steps each, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}\n"
)
print("| backend | first step (ms) | median ms / step | steps / s |")
print("|---|---:|---:|---:|")
print(f"| NumPyro, jitted SVI.update | {1e3 * np_first:.0f} | {np_ms:.2f} | {1e3 / np_ms:.0f} |")
print(f"| Pyro, SVI.step | {1e3 * pt_first:.0f} | {pt_ms:.2f} | {1e3 / pt_ms:.0f} |")
print(f"\nNumPyro is {pt_ms / np_ms:.1f}x faster per step; compiling its step took "
      f"{np_first - np.median(np_times):.2f} s, repaid after "
      f"{(np_first - np.median(np_times)) / ((pt_ms - np_ms) / 1e3):.0f} steps")  # fmt: skip

fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(1e3 * pt_times, ".", ms=3, label="Pyro SVI.step")
ax.plot(1e3 * np_times, ".", ms=3, label="NumPyro jitted SVI.update")
ax.set(yscale="log", xlabel="timed step (first step excluded)", ylabel="ms")
ax.set(title="time of each RWS step, 64-16 machine, batch 100, K = 10")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# What this means:
#
# * **Per step**, the compiled NumPyro step is several times faster than Pyro's on this
#   small network. Pyro runs the model and guide as Python programs at every step: the
#   trace, the handlers, each small PyTorch operation dispatched one by one. At this size
#   that bookkeeping, not arithmetic, is most of the time. JAX traces the programs once and
#   XLA fuses the whole step into a few kernels, so the Python overhead is paid once.
# * **Compilation** is the price: the first NumPyro call took far longer than a step (the
#   "first step" column), and it is paid again for every new shape of the arguments (a
#   different batch size, $K$ or network). For a run of thousands of steps it is repaid
#   many times over; for a handful of steps, or for a model whose shapes change from step
#   to step, Pyro's eager execution may be the better choice. The break-even line above
#   says after how many steps compilation paid for itself here.
# * The gap narrows as the network grows: with wide layers both backends spend their time
#   in the same matrix products. These numbers are for a small machine on a shared CPU;
#   measure your own model before deciding.
#
# ## Summary
#
# * `numpyro.infer.SVI(model, guide, optax.adam(lr), loss=numpyro_wakesleep.ReweightedWakeSleep(K))`
#   (or `WakeSleep`) trains with NumPyro's own SVI; `svi.run` and a jitted `svi.update`
#   compile the whole step.
# * Under `jit`, `loss.last_terms` stays empty; jit `loss.terms(key, params, model, guide,
#   *args)` and call it every few steps to log `loss`, `wake_theta`, `wake_phi` and `ess`.
# * `AlternatingSVI(model, guide, model_optim, guide_optim, loss=...)` alternates
#   model-only and guide-only steps with one Optax state per side; its `update` is pure and
#   jits and scans like SVI's.
# * On the digits, a 64-16 Helmholtz machine trained with RWS reaches a lower exact test
#   NLL than the same machine trained with classic WS, and its reported bound is the
#   tighter one.

# %%
print(f"whole notebook: {time.perf_counter() - START:.0f} s")
