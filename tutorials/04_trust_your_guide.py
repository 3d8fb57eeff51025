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
# # Can you trust your guide? ArviZ diagnostics of a trained guide
#
# Wake-sleep trains two things: a model $p_\theta(x, z)$ and a *guide* (recognition
# network) $q_\phi(z \mid x)$. Once training stops, the guide is what you use to say
# anything about the latents of a datapoint — but a guide is only an approximation. How
# do you know whether it is a good one?
#
# The answer this tutorial teaches: treat the guide as an **importance sampler** of the
# posterior. Draw $z_s \sim q(z \mid x)$ and weight every draw by
#
# $$\log w_s = \log p(x, z_s) - \log q(z_s \mid x).$$
#
# If $q$ were the exact posterior, every weight would be the same. The worse $q$ covers the
# posterior, the more a few huge weights dominate. Pareto-smoothed importance sampling
# (PSIS; Vehtari, Simpson, Gelman, Yao & Gabry, *JMLR* 2024) fits a generalised Pareto
# distribution to the largest weights; its shape $\hat k$ says how heavy their tail is:
#
# | $\hat k$ | meaning |
# |---|---|
# | $< 0.5$ | weights of finite variance: the guide is a good proposal |
# | $0.5$ – $0.7$ | finite mean, infinite variance: estimates usable, but converge slowly |
# | $> 0.7$ | unreliable: the guide misses posterior mass (typically it is too narrow) |
#
# `pyro_wakesleep.diagnostics` (and its NumPyro mirror) turns a trained guide into an ArviZ
# `InferenceData` with these weights, one $\hat k$ and one effective sample size **per
# datapoint**, and resamples it into ordinary posterior draws for any ArviZ function.
#
# To see that the diagnostics tell the truth we use a model whose posterior we know in
# closed form, and compare two guides: one trained with reweighted wake-sleep, and the same
# guide made 2.5× too narrow.
#
# You need `pip install 'wakesleep[pyro,numpyro,arviz]' matplotlib`.

# %%
import math
import os
import time

import arviz as az
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import numpyro
import numpyro.distributions as ndist
import optax
import pyro
import pyro.distributions as dist
import torch

import numpyro_wakesleep
import numpyro_wakesleep.diagnostics
import pyro_wakesleep
from pyro_wakesleep.diagnostics import importance_resample, to_inference_data

# WAKESLEEP_SMOKE=1 runs every cell with tiny step and sample counts (the test suite does).
WAKESLEEP_SMOKE = os.environ.get("WAKESLEEP_SMOKE") == "1"
NUM_STEPS = 100 if WAKESLEEP_SMOKE else 3000  # training steps (each backend)
NUM_DRAWS = 200 if WAKESLEEP_SMOKE else 2000  # guide draws per datapoint for the diagnostics
NUM_DATA = 40  # datapoints
TRUE_MU = 1.5
NARROW = 2.5  # how much too narrow the bad guide is

START = time.perf_counter()
pyro.set_rng_seed(0)
np.random.seed(0)
print(f"smoke mode: {WAKESLEEP_SMOKE}; {NUM_STEPS} steps, {NUM_DRAWS} draws per datapoint")

# %% [markdown]
# ## 1. A model with a known posterior
#
# Every datapoint $x_i$ has its own latent $z_i$:
#
# $$z_i \sim \mathcal N(\mu, 1), \qquad x_i \mid z_i \sim \mathcal N(z_i, 1).$$
#
# The model has one parameter, $\mu$. Conjugacy gives the posterior of each latent exactly:
#
# $$p(z_i \mid x_i) = \mathcal N\!\left(\tfrac{x_i + \mu}{2},\ \sqrt{1/2}\right).$$
#
# The guide is *amortised*: one affine map from $x_i$ to the mean, and one scale shared by
# all datapoints, $q(z_i \mid x_i) = \mathcal N(a\,x_i + b,\ s)$. It is exact at
# $a = 1/2$, $b = \mu/2$, $s = \sqrt{1/2} \approx 0.707$. The latent and the observation
# sit in the plate `"data"`, so the objectives (and the diagnostics) weight every datapoint
# separately.


# %%
def model(x):
    mu = pyro.param("mu", torch.tensor(0.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide(x):
    a = pyro.param("a", torch.tensor(0.0))
    b = pyro.param("b", torch.tensor(0.0))
    log_s = pyro.param("log_s", torch.tensor(0.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(a * x + b, log_s.exp()))


# the data: z_i ~ N(1.5, 1), x_i ~ N(z_i, 1)
z_true = TRUE_MU + torch.randn(NUM_DATA)
x = z_true + torch.randn(NUM_DATA)

# %% [markdown]
# ## 2. Train briefly with reweighted wake-sleep
#
# `ReweightedWakeSleep` is an ordinary Pyro loss: hand it to `pyro.infer.SVI`. With
# $K = 10$ particles it learns $\mu$ (reweighted wake-θ) and the guide (wake-φ) together.

# %%
pyro.clear_param_store()
svi = pyro.infer.SVI(
    model,
    guide,
    pyro.optim.Adam({"lr": 0.01}),
    loss=pyro_wakesleep.ReweightedWakeSleep(num_particles=10),
)
t0 = time.perf_counter()
losses = [svi.step(x) for _ in range(NUM_STEPS)]
print(f"trained {NUM_STEPS} steps in {time.perf_counter() - t0:.1f} s")

mu_hat = pyro.param("mu").item()
a_hat, b_hat = pyro.param("a").item(), pyro.param("b").item()
s_hat = pyro.param("log_s").exp().item()
print(f"model: mu = {mu_hat:.3f}   (data made with mu = {TRUE_MU})")
print(
    f"guide: a = {a_hat:.3f} (exact 0.5), b = {b_hat:.3f} (exact mu/2 = {mu_hat / 2:.3f}), "
    f"s = {s_hat:.3f} (exact {math.sqrt(0.5):.3f})"
)

fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(losses, lw=0.5)
ax.set(xlabel="step", ylabel="negative IWAE bound (nats)", title="RWS training")
plt.show()

# %% [markdown]
# The exact posterior is the one of the *fitted* model (with the learned $\mu$), since that
# is the posterior the guide is trained to approximate:

# %%
x_np = x.numpy().astype(np.float64)
exact_mean = (x_np + mu_hat) / 2
exact_sd = math.sqrt(0.5)

# %% [markdown]
# ## 3. The good guide and the too-narrow guide
#
# The trained guide is our "good" guide. For the "bad" one we keep its means but divide
# its scale by 2.5 — the kind of over-confident guide that a mode-seeking objective can
# produce. It reads the same parameters from Pyro's param store.


# %%
def narrow_guide(x):
    a, b, log_s = pyro.param("a"), pyro.param("b"), pyro.param("log_s")
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(a * x + b, log_s.exp() / NARROW))


print(f"guide scale: good {s_hat:.3f}, narrow {s_hat / NARROW:.3f}, posterior {exact_sd:.3f}")

# %% [markdown]
# ## 4. `to_inference_data`: weighted draws, $\hat k$ and ESS per datapoint
#
# One call per guide. The model's and guide's parameters come from the param store; the
# arguments after the guide are the data, exactly as given to `svi.step`.

# %%
t0 = time.perf_counter()
idata_good = to_inference_data(model, guide, x, num_samples=NUM_DRAWS)
idata_narrow = to_inference_data(model, narrow_guide, x, num_samples=NUM_DRAWS)
print(f"two diagnostics in {time.perf_counter() - t0:.1f} s")
idata_good  # noqa: B018 (a notebook shows the last value of a cell)

# %% [markdown]
# `posterior.z` holds the raw guide draws with dims `(chain=1, draw, data)` — the plate
# name becomes the dimension name. `sample_stats` holds the raw `log_weight` of every draw
# and, per datapoint, `pareto_k` and `ess` $= (\sum_s w_s)^2 / \sum_s w_s^2$, the number
# of equally weighted draws the weighted ones are worth.

# %%
print(idata_good.sample_stats)

# %% [markdown]
# ### Reading $\hat k$
#
# One $\hat k$ per datapoint, for each guide, with the two thresholds:

# %%
k_good = idata_good.sample_stats["pareto_k"].values
k_narrow = idata_narrow.sample_stats["pareto_k"].values
ess_good = idata_good.sample_stats["ess"].values
ess_narrow = idata_narrow.sample_stats["ess"].values

fig, (ax_k, ax_ess) = plt.subplots(1, 2, figsize=(11, 3.6))
idx = np.arange(NUM_DATA)
ax_k.plot(idx, k_good, "o", label=f"trained guide (s = {s_hat:.2f})")
ax_k.plot(idx, k_narrow, "s", label=f"{NARROW}x too narrow (s = {s_hat / NARROW:.2f})")
ax_k.axhline(0.5, color="grey", ls="--", lw=1, label=r"$\hat k$ = 0.5: good below")
ax_k.axhline(0.7, color="red", ls="--", lw=1, label=r"$\hat k$ = 0.7: unreliable above")
ax_k.set(xlabel="datapoint i", ylabel=r"Pareto $\hat k$", title=r"PSIS $\hat k$ per datapoint")
ax_k.legend(loc="center left", fontsize=8)
ax_ess.plot(idx, ess_good / NUM_DRAWS, "o", label="trained guide")
ax_ess.plot(idx, ess_narrow / NUM_DRAWS, "s", label=f"{NARROW}x too narrow")
ax_ess.set(
    xlabel="datapoint i", ylabel="ESS / draws", ylim=(0, 1.05), title="importance ESS per datapoint"
)
ax_ess.legend(fontsize=8)
fig.tight_layout()
plt.show()

for name, k, ess in [("trained", k_good, ess_good), ("narrow", k_narrow, ess_narrow)]:
    print(
        f"{name:8s} guide: mean k = {k.mean():.2f}, max k = {k.max():.2f}, "
        f"k > 0.7 for {np.mean(k > 0.7):.0%} of datapoints, k < 0.5 for {np.mean(k < 0.5):.0%}; "
        f"mean ESS = {ess.mean():.0f} of {NUM_DRAWS}"
    )

# %% [markdown]
# How to read this:
#
# * **Trained guide.** Every $\hat k$ is below 0.5 — here even negative. A negative
#   $\hat k$ means the weights have a *bounded* tail: the trained scale is as wide as the
#   posterior's or a hair wider, so no draw can get an outsized weight. The ESS is
#   practically all the draws: the weights are nearly flat, the guide covers the
#   posterior, and anything computed from its (weighted or resampled) draws is trustworthy.
# * **Too-narrow guide.** Its mean $\hat k$ is about 0.75: above 0.7 for most datapoints,
#   below 0.5 for hardly any, and its ESS collapses to about a tenth of the draws. The
#   guide never proposes the posterior's tails, so the rare draws that land there get
#   enormous weights. Theory agrees: for a Gaussian guide with the right mean and a scale
#   $r$ times the posterior's, the weights have a Pareto tail with $k = 1 - r^2$, and
#   $r = 1/2.5$ gives $k = 0.84$.
#
# $\hat k$ is itself an estimate from finitely many draws. It scatters from one datapoint
# to the next, and for a heavy tail it tends to fall a little below the true $k$ (the
# extreme weights that reveal the tail are exactly the ones a finite sample rarely sees).
# So read the pattern — the mean, the fraction above 0.7 — not a single datapoint. A guide
# that is *wider* than the posterior is harmless: its weights are bounded; it only wastes
# draws.

# %%
r = 1 / NARROW * s_hat / exact_sd
print(
    f"narrow guide: r = {r:.2f}, theoretical k = 1 - r^2 = {1 - r**2:.2f}, "
    f"estimated mean k = {k_narrow.mean():.2f}"
)

# %% [markdown]
# ## 5. `importance_resample`: ordinary posterior draws
#
# Most ArviZ functions expect unweighted draws. `importance_resample` draws with
# replacement according to the PSIS-smoothed weights, independently for every datapoint,
# and keeps `pareto_k` and `ess` alongside. The resampled draws contain duplicates: they
# carry no more information than the importance ESS, so check $\hat k$ first.

# %%
post_good = importance_resample(idata_good)
post_narrow = importance_resample(idata_narrow)
az.summary(post_good, var_names=["z"], coords={"data": [0, 1, 2, 3, 4]}, kind="stats")

# %% [markdown]
# `az.summary` works as on MCMC output (`kind="stats"` leaves out the MCMC convergence
# columns, which say nothing about independent resampled draws). Now the proof: compare
# the resampled posterior mean and standard deviation of every datapoint with the exact
# ones, for both guides — and also the raw guide draws before any reweighting.


# %%
def moments(idata):
    z = idata.posterior["z"].transpose("chain", "draw", "data").values[0]
    return z.mean(axis=0), z.std(axis=0)


rows = [
    ("trained guide, raw draws", idata_good),
    ("trained guide, resampled", post_good),
    ("narrow guide,  raw draws", idata_narrow),
    ("narrow guide,  resampled", post_narrow),
]
print(f"exact posterior sd = {exact_sd:.3f}\n")
print(f"{'':26s} {'RMS error of mean':>18s} {'mean sd':>8s} {'sd / exact':>11s}")
for label, data in rows:
    mean, sd = moments(data)
    rms = np.sqrt(np.mean((mean - exact_mean) ** 2))
    print(f"{label:26s} {rms:18.3f} {sd.mean():8.3f} {sd.mean() / exact_sd:11.2f}")

# %% [markdown]
# The trained guide's resampled means sit on the exact ones and its standard deviation is
# the exact $\sqrt{1/2}$. The narrow guide's raw draws are 2.5× too concentrated;
# reweighting repairs part of that, but because the guide almost never proposes the tails
# the resampled standard deviation is still too small and the means are noisier. The
# $\hat k > 0.7$ warned about exactly this: **with a guide like that, do not trust
# posterior summaries computed from it — not even after importance weighting.**
#
# ## 6. `az.plot_posterior` against the exact posterior
#
# The same picture for one datapoint: the resampled posterior of $z_0$ under each guide,
# with the exact posterior density (dashed) and the guide's own density $q(z_0 \mid x_0)$
# (dotted, the proposal) drawn on top.

# %%
i = 0


def normal_pdf(v, loc, scale):
    return np.exp(-0.5 * ((v - loc) / scale) ** 2) / (scale * math.sqrt(2 * math.pi))


grid = np.linspace(exact_mean[i] - 4 * exact_sd, exact_mean[i] + 4 * exact_sd, 200)
guide_mean = a_hat * x_np[i] + b_hat

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharex=True)
for ax, post, k, scale, title in [
    (axes[0], post_good, k_good, s_hat, "trained guide"),
    (axes[1], post_narrow, k_narrow, s_hat / NARROW, f"{NARROW}x too narrow guide"),
]:
    az.plot_posterior(
        post,
        var_names=["z"],
        coords={"data": i},
        ax=ax,
        hdi_prob=0.9,
        point_estimate="mean",
        textsize=9,
    )
    ax.plot(grid, normal_pdf(grid, exact_mean[i], exact_sd), "k--", lw=1.5, label="exact posterior")
    ax.plot(grid, normal_pdf(grid, guide_mean, scale), ":", color="grey", lw=1.5, label="guide q")
    ax.set_title(rf"{title}: $z_{i}$, $\hat k$ = {k[i]:.2f}")
    ax.legend(loc="upper right", fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The trained guide's resampled draws fill the exact density (its guide density lies on top
# of it). The narrow guide proposes only the middle of the posterior; resampling can only
# pick among those proposals, so its resampled draws stop where the guide stops, the tails
# stay empty and the 90% interval is too short. That is the "missing mass" that
# $\hat k > 0.7$ reports, and the jagged curve shows how few distinct draws survive the
# reweighting (the ESS above).
#
# ## 7. The same in NumPyro
#
# The NumPyro mirror takes the same steps. NumPyro keeps parameters outside any global
# store and has no global random state, so `to_inference_data` takes the trained
# **params** right after the guide and a keyword **`rng_key`**. The names of dims and
# statistics are the same as in Pyro.


# %%
def np_model(x):
    mu = numpyro.param("mu", 0.0)
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", ndist.Normal(mu, 1.0))
        numpyro.sample("x", ndist.Normal(z, 1.0), obs=x)


def np_guide(x):
    a = numpyro.param("a", 0.0)
    b = numpyro.param("b", 0.0)
    log_s = numpyro.param("log_s", 0.0)
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", ndist.Normal(a * x + b, jnp.exp(log_s)))


x_jax = jnp.asarray(x_np, dtype=jnp.float32)
np_svi = numpyro.infer.SVI(
    np_model,
    np_guide,
    optax.adam(0.01),
    loss=numpyro_wakesleep.ReweightedWakeSleep(num_particles=10),
)
t0 = time.perf_counter()
result = np_svi.run(jax.random.PRNGKey(0), NUM_STEPS, x_jax, progress_bar=False)
params = result.params
print(f"trained {NUM_STEPS} steps in {time.perf_counter() - t0:.1f} s (including compilation)")
print({name: round(float(value), 3) for name, value in params.items()})

# the narrow guide: the same trained guide with its scale divided by 2.5
np_idata_good = numpyro_wakesleep.diagnostics.to_inference_data(
    np_model, np_guide, params, x_jax, num_samples=NUM_DRAWS, rng_key=jax.random.PRNGKey(1)
)
np_params_narrow = dict(params, log_s=params["log_s"] - math.log(NARROW))
np_idata_narrow = numpyro_wakesleep.diagnostics.to_inference_data(
    np_model,
    np_guide,
    np_params_narrow,
    x_jax,
    num_samples=NUM_DRAWS,
    rng_key=jax.random.PRNGKey(2),
)
np_exact_mean = (x_np + float(params["mu"])) / 2
for name, idata in [("trained", np_idata_good), ("narrow", np_idata_narrow)]:
    k = idata.sample_stats["pareto_k"].values
    mean, sd = moments(numpyro_wakesleep.diagnostics.importance_resample(idata))
    rms = np.sqrt(np.mean((mean - np_exact_mean) ** 2))
    print(
        f"NumPyro {name:8s} guide: mean k = {k.mean():.2f}, k > 0.7 for {np.mean(k > 0.7):.0%}; "
        f"resampled: RMS error of mean {rms:.3f}, sd / exact {sd.mean() / exact_sd:.2f}"
    )

# %% [markdown]
# The NumPyro numbers tell the same story as the Pyro ones.
#
# ## Summary
#
# * `to_inference_data(model, guide, x, num_samples=S)` (Pyro) or
#   `to_inference_data(model, guide, params, x, num_samples=S, rng_key=key)` (NumPyro)
#   turns a trained guide into weighted posterior draws with a PSIS $\hat k$ and an ESS
#   **per datapoint**.
# * Read $\hat k$ first: below 0.5 the guide is a good proposal; 0.5–0.7 usable but slow;
#   above 0.7 the guide misses posterior mass, and no summary computed from it — raw or
#   reweighted — should be trusted.
# * `importance_resample(idata)` gives unweighted draws for `az.summary`,
#   `az.plot_posterior` and the rest of ArviZ.
#
# On a model whose posterior we know, a trained RWS guide passes and a 2.5× too narrow
# one fails, and the resampled means and standard deviations show the diagnosis was right.

# %%
print(f"whole notebook: {time.perf_counter() - START:.0f} s")
