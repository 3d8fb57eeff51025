"""ArviZ diagnostics of NumPyro guides: per-datapoint weights, PSIS k̂, resampling.

The mirror of ``tests/test_pyro_diagnostics.py``. The workhorse is the linear-Gaussian model
``z_i ~ N(0, 1)``, ``x_i | z_i ~ N(z_i, 1)``, whose exact posterior is
``N(x_i / 2, sqrt(1/2))``, with the guide ``N(x_i / 2 + δ, s)``. For ``q = N(m, s)`` and
``p = N(m, σ)`` the weights ``w = p / q`` have moments
``E_q[w^n] = r^(n-1) / sqrt(n − (n−1)/r²)`` with ``r = s / σ`` (finite for
``r² > (n−1)/n``): a wide guide (``r > 1``) has bounded weights (true ``k < 0``), a narrow
one has a Pareto tail with ``k = 1 − r²``.

Vectorised particles run eagerly under ``jax.vmap``; JAX caches each primitive, so only
the first test of a shape pays for compilation.
"""

from __future__ import annotations

import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints

az = pytest.importorskip("arviz")

from numpyro_wakesleep.diagnostics import importance_resample, to_inference_data  # noqa: E402
from numpyro_wakesleep.helmholtz import HelmholtzMachine  # noqa: E402

POST_SD = math.sqrt(0.5)
KEY = jax.random.PRNGKey(0)


def model(x):
    with numpyro.plate("data", x.shape[-1]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide(x):
    loc = numpyro.param("loc", x / 2)
    scale = numpyro.param("scale", 1.0, constraint=constraints.positive)
    with numpyro.plate("data", x.shape[-1]):
        numpyro.sample("z", dist.Normal(loc, scale))


def guide_params(x: jnp.ndarray, scale: float, shift: float = 0.0) -> dict:
    """``q(z_i) = N(x_i/2 + shift, scale)`` as the (constrained) parameter dict SVI returns."""
    return {"loc": x / 2 + shift, "scale": jnp.asarray(scale)}


def data(n: int, seed: int = 0) -> jnp.ndarray:
    rng = np.random.default_rng(seed)
    return jnp.asarray(math.sqrt(2.0) * rng.standard_normal(n), jnp.float32)  # x ~ N(0, 2)


def log_normal(v: np.ndarray, loc: np.ndarray | float, scale: float) -> np.ndarray:
    return -0.5 * ((v - loc) / scale) ** 2 - math.log(scale) - 0.5 * math.log(2 * math.pi)


def weight_moment(n: int, r: float) -> float:
    """``E_q[(p/q)^n]`` for ``p = N(m, σ)``, ``q = N(m, rσ)``."""
    return r ** (n - 1) / math.sqrt(n - (n - 1) / r**2)


def posterior_values(idata, name: str) -> np.ndarray:
    """``(draw, *rest)`` values of a posterior variable of the single chain."""
    return idata.posterior[name].values[0]


# -- what is stored ------------------------------------------------------------------------


#: One run per way of drawing the particles, all with the key PRNGKey(0) (an integer seed
#: is the same key): vectorised, chunked (150 = 64 + 64 + 22, the last chunk topped up)
#: with extra plate nesting, and sequential.
RUNS = {
    "vectorized": {"vectorize": True, "rng_key": KEY},
    "chunked-extra-nesting": {"chunk_size": 64, "max_plate_nesting": 2, "rng_key": KEY},
    "sequential": {"vectorize": False, "rng_key": 0},
}
S_RUNS = 150


@pytest.fixture(scope="module")
def runs() -> dict:
    x = data(6)
    params = guide_params(x, scale=0.9, shift=0.2)
    return {
        name: to_inference_data(model, guide, params, x, num_samples=S_RUNS, **options)
        for name, options in RUNS.items()
    }


@pytest.mark.parametrize("name", list(RUNS))
def test_log_weights_are_per_datapoint_and_belong_to_their_draws(runs, name):
    # Catches weights of the wrong draws or datapoints (a transposed or re-drawn chunk), weights
    # pooled over the batch, missing or extra terms, padded plate axes left in the posterior.
    idata, x = runs[name], data(6)
    assert set(idata.groups()) == {"posterior", "sample_stats", "observed_data"}
    assert idata.posterior["z"].dims == ("chain", "draw", "data")
    assert idata.posterior.sizes == {"chain": 1, "draw": S_RUNS, "data": 6}
    assert idata.sample_stats["log_weight"].dims == ("chain", "draw", "data")
    assert idata.sample_stats["log_weight"].dtype == np.float64
    assert idata.sample_stats["pareto_k"].dims == ("data",)
    assert idata.sample_stats["ess"].dims == ("data",)
    assert idata.observed_data["x"].dims == ("data",)
    np.testing.assert_array_equal(idata.observed_data["x"].values, np.asarray(x))
    np.testing.assert_array_equal(idata.posterior["data"].values, np.arange(6))
    for group in idata.groups():
        assert getattr(idata, group).attrs["inference_library"] == "numpyro"
        assert getattr(idata, group).attrs["inference_library_version"] == numpyro.__version__

    z = posterior_values(idata, "z").astype(np.float64)
    xs = np.asarray(x, np.float64)
    expected = log_normal(z, 0.0, 1.0) + log_normal(xs, z, 1.0) - log_normal(z, xs / 2 + 0.2, 0.9)
    lw = idata.sample_stats["log_weight"].values[0]
    np.testing.assert_allclose(lw, expected, rtol=0, atol=1e-4)  # float32 log-densities
    assert np.std(z[:, 0]) > 0.5  # S different draws, not one repeated


def test_draws_depend_on_the_key_only(runs):
    # The particle keys are split once, then chunked: chunking and sequential particles give
    # the very same draws, a new key new ones. Catches chunks that reuse the same keys (every
    # chunk a copy of the first: an ESS and k̂ computed from duplicated draws), a topped-up
    # last chunk whose extra draws are kept, and a key that is ignored.
    z = posterior_values(runs["vectorized"], "z")
    lw = runs["vectorized"].sample_stats["log_weight"].values[0]
    for name in ("chunked-extra-nesting", "sequential"):
        np.testing.assert_allclose(posterior_values(runs[name], "z"), z, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(
            runs[name].sample_stats["log_weight"].values[0], lw, rtol=1e-5, atol=1e-5
        )
    assert len(np.unique(np.round(z[:, 0], 5))) == S_RUNS  # no chunk repeats another
    x = data(6)
    other = to_inference_data(
        model,
        guide,
        guide_params(x, scale=0.9, shift=0.2),
        x,
        num_samples=S_RUNS,
        rng_key=jax.random.PRNGKey(1),
    )
    assert not np.allclose(posterior_values(other, "z"), z)


def test_wide_guide_every_pareto_k_below_half_and_ess_as_predicted():
    # Bounded weights (r = 1.2 > 1) have true k < 0: a k̂ >= 0.5 means the weights were
    # mangled (wrong sign, wrong draws, pooled over datapoints). The ESS check catches ESS
    # computed from other than the raw weights, or over the wrong axis.
    S, N, r = 1000, 20, 1.2
    x = data(N)
    idata = to_inference_data(
        model, guide, guide_params(x, scale=r * POST_SD), x, num_samples=S, rng_key=KEY
    )
    k = idata.sample_stats["pareto_k"].values
    assert k.shape == (N,)
    assert np.all(k < 0.5), k

    # pareto_k is ArviZ's own PSIS over the draws of the stored log_weight
    if hasattr(az, "psislw"):
        stored = idata.sample_stats["log_weight"].transpose("chain", "draw", "data").values[0]
        np.testing.assert_array_equal(k, np.asarray(az.psislw(stored.T)[1]))

    # ESS/S -> 1 / E[w²]; the delta method on S/ESS = mean(w²)/mean(w)² gives its error
    m1, m2, m3, m4 = (weight_moment(n, r) for n in (1, 2, 3, 4))
    grad = np.array([-2 * m2 / m1**3, 1 / m1**2])
    cov = np.array([[m2 - m1**2, m3 - m1 * m2], [m3 - m1 * m2, m4 - m2**2]])
    sd_inverse_ratio = math.sqrt(grad @ cov @ grad / S)
    inverse_ratio = S / idata.sample_stats["ess"].values
    assert np.all(np.abs(inverse_ratio - m2) < 4.5 * sd_inverse_ratio), (inverse_ratio, m2)


def test_guide_too_narrow_gives_pareto_k_above_0_7():
    # r = 1/2.5: true k = 1 − r² = 0.84. As in the Pyro test, the χ²-shaped tail converges
    # slowly, so k̂ is biased low and spread (sd ≈ 0.1 per datapoint at S = 10⁴; the mean over
    # 50 datapoints has sd ≈ 0.015 and sits near 0.76, about 4 sd above 0.7): "every datapoint"
    # would fail by chance, so the mean k̂ and a majority of datapoints must exceed 0.7.
    # Catches a k̂ computed on smoothed, truncated or negated weights, or a guide scale
    # misread (a scale 2.5 times too wide would give k̂ < 0.5).
    S, N = 10_000, 50
    x = data(N)
    idata = to_inference_data(
        model, guide, guide_params(x, scale=POST_SD / 2.5), x, num_samples=S, rng_key=KEY
    )
    k = idata.sample_stats["pareto_k"].values
    assert k.mean() > 0.7, k
    assert np.mean(k > 0.7) > 0.5, k


def test_resampling_recovers_the_exact_posterior():
    # The raw guide draws are 0.3 off (> 10 standard errors): only correctly weighted,
    # per-datapoint resampling lands on the exact posterior mean and spread.
    S, M, N = 2000, 2000, 20
    x = data(N, seed=1)
    params = guide_params(x, scale=1.2 * POST_SD, shift=0.3)
    idata = to_inference_data(model, guide, params, x, num_samples=S, rng_key=KEY)
    out = importance_resample(idata, num_samples=M, seed=0)
    z = posterior_values(out, "z")
    assert z.shape == (M, N)
    ess = idata.sample_stats["ess"].values
    # weighted-estimate error ≈ σ²/ESS, plus multinomial resampling σ²/M
    se = POST_SD * np.sqrt(1 / ess + 1 / M)
    exact = np.asarray(x) / 2
    zscore = (z.mean(axis=0) - exact) / se
    assert np.all(np.abs(zscore) < 4.0), zscore  # 20 datapoints: false alarm p ~ 1e-3
    assert 0.3 / se.max() > 10  # unweighted guide draws would fail by far
    # spread: E[(z − mean)²]/σ² = 1 with sd ≈ sqrt(2(1/ESS + 1/M)) per datapoint
    ratio = ((z - exact) ** 2).mean(axis=0) / POST_SD**2
    sd_mean_ratio = np.sqrt(2 * (1 / ess + 1 / M)).mean() / math.sqrt(N)
    assert abs(ratio.mean() - 1) < 4 * sd_mean_ratio, ratio.mean()


def test_arviz_functions_run_on_the_results():
    # Catches dims or coords ArviZ cannot read (a missing chain axis, a duplicate dim name).
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = data(4)
    idata = to_inference_data(
        model, guide, guide_params(x, scale=POST_SD), x, num_samples=200, rng_key=KEY
    )
    out = importance_resample(idata)
    for result in (idata, out):
        summary = az.summary(result, var_names=["z"])
        assert list(summary.index) == [f"z[{i}]" for i in range(4)]
        ess = az.ess(result, var_names=["z"])
        assert ess["z"].dims == ("data",) and np.all(ess["z"].values > 0)
        axes = az.plot_posterior(result, var_names=["z"], coords={"data": [0, 1]})
        assert np.size(axes) == 2
        plt.close("all")


# -- discrete and global latents -----------------------------------------------------------


def bernoulli_model(x):
    with numpyro.plate("data", x.shape[-1]):
        z = numpyro.sample("z", dist.Bernoulli(0.3))
        numpyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=x)


def bernoulli_guide(x):
    probs = numpyro.param("probs", jnp.full(x.shape, 0.5), constraint=constraints.unit_interval)
    with numpyro.plate("data", x.shape[-1]):
        numpyro.sample("z", dist.Bernoulli(probs))


def test_bernoulli_latent_converts_with_integer_draws_and_right_dims():
    # Catches discrete draws stored as floats (or int32 where Pyro stores int64) and
    # Bernoulli log-weights of the wrong draws: the resampled frequencies must match the
    # exact posterior P(z_i = 1 | x_i).
    S, M, N = 2000, 4000, 10
    x = data(N, seed=2) + 1.0
    params = {"probs": jnp.full(N, 0.5)}
    idata = to_inference_data(
        bernoulli_model, bernoulli_guide, params, x, num_samples=S, rng_key=KEY
    )
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "data") and z.shape == (1, S, N)
    assert z.dtype == np.int64
    assert set(np.unique(z.values)) == {0, 1}
    assert idata.observed_data["x"].dims == ("data",)
    assert idata.sample_stats["log_weight"].dims == ("chain", "draw", "data")

    xs = np.asarray(x, np.float64)
    on, off = 0.3 * np.exp(log_normal(xs, 2.0, 1.0)), 0.7 * np.exp(log_normal(xs, 0.0, 1.0))
    exact = on / (on + off)
    out = importance_resample(idata, num_samples=M, seed=1)
    assert out.posterior["z"].dtype == np.int64
    freq = posterior_values(out, "z").mean(axis=0)
    se = np.sqrt(exact * (1 - exact) * (1 / idata.sample_stats["ess"].values + 1 / M))
    assert np.all(np.abs(freq - exact) < 4.0 * se), (freq, exact)


@pytest.mark.slow  # a first compilation of the machine's sites: about 4 s
def test_helmholtz_machine_layers_are_named_per_unit():
    # Bernoulli latents with an event dimension (one site per layer, `.to_event(1)`): the
    # units get "{site}_dim_0", the data plate its name. Catches the event axis taken for a
    # plate (or dropped), and observed images whose pixel axis is named after the plate.
    hm = HelmholtzMachine(num_visible=6, hidden=(3, 2))
    x = jnp.asarray(np.random.default_rng(3).integers(0, 2, size=(5, 6)), jnp.float32)
    # no parameters given: the machine's random initial values (drawn once) serve
    idata = to_inference_data(hm.model, hm.guide, {}, x, num_samples=100, rng_key=KEY)
    assert idata.posterior["h1"].dims == ("chain", "draw", "data", "h1_dim_0")
    assert idata.posterior["h2"].dims == ("chain", "draw", "data", "h2_dim_0")
    assert idata.posterior["h1"].shape == (1, 100, 5, 3)
    assert idata.posterior["h1"].dtype == np.int64
    assert idata.observed_data["x"].dims == ("data", "x_dim_0")
    assert idata.sample_stats["log_weight"].dims == ("chain", "draw", "data")
    np.testing.assert_array_equal(idata.observed_data["x"].values, np.asarray(x))


def random_init_guide(x):
    loc = numpyro.param("loc", lambda key: jax.random.normal(key, (x.shape[-1],)))
    with numpyro.plate("data", x.shape[-1]):
        numpyro.sample("z", dist.Normal(loc, 1e-3))


def test_missing_parameters_take_one_initial_value_for_all_draws():
    # A parameter left out of `params` is initialised once (in the probe pass), not once per
    # particle: catches draws scattered by per-particle random initial values (spread ~1
    # instead of the guide's 1e-3).
    x = data(4)
    idata = to_inference_data(model, random_init_guide, {}, x, num_samples=50, rng_key=KEY)
    z = posterior_values(idata, "z")
    assert np.all(z.std(axis=0) < 0.01), z.std(axis=0)
    assert np.all(np.abs(z[0]) > 0)  # the initial value, not zeros


def nested_model(x):
    with numpyro.plate("data", x.shape[-1]):
        with numpyro.plate("rows", x.shape[-2], dim=-2):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def nested_guide(x):
    with numpyro.plate("data", x.shape[-1]):
        with numpyro.plate("rows", x.shape[-2], dim=-2):
            numpyro.sample("z", dist.Normal(x / 2, 0.8))


def test_two_data_plates_give_weights_per_element_of_both():
    # Catches weights summed over one of two enclosing plates and plate axes named in the
    # wrong order.
    x = data(12, seed=6).reshape(3, 4)
    idata = to_inference_data(nested_model, nested_guide, {}, x, num_samples=50, rng_key=KEY)
    assert idata.posterior["z"].dims == ("chain", "draw", "rows", "data")
    assert idata.sample_stats["log_weight"].dims == ("chain", "draw", "rows", "data")
    assert idata.sample_stats["pareto_k"].dims == ("rows", "data")
    assert idata.observed_data["x"].dims == ("rows", "data")
    z = posterior_values(idata, "z").astype(np.float64)
    xs = np.asarray(x, np.float64)
    expected = log_normal(z, 0.0, 1.0) + log_normal(xs, z, 1.0) - log_normal(z, xs / 2, 0.8)
    np.testing.assert_allclose(idata.sample_stats["log_weight"].values[0], expected, atol=1e-4)


def global_model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[-1]):
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def global_guide(x):
    loc = numpyro.param("mu_loc", 0.0)
    scale = numpyro.param("mu_scale", 1.0, constraint=constraints.positive)
    numpyro.sample("mu", dist.Normal(loc, scale))


def test_global_latent_gives_joint_weights_and_resampling_finds_its_posterior():
    # Catches per-datapoint weights where a global latent demands joint ones (then mu would
    # be resampled against one datapoint's likelihood only, far from its posterior).
    S, M, N = 2000, 2000, 20
    x = data(N, seed=3) + 0.5
    post_mean, post_sd = float(jnp.sum(x)) / (N + 1), 1 / math.sqrt(N + 1)
    params = {"mu_loc": jnp.asarray(post_mean + 0.5 * post_sd), "mu_scale": 1.2 * post_sd}
    idata = to_inference_data(global_model, global_guide, params, x, num_samples=S, rng_key=KEY)
    assert idata.posterior["mu"].dims == ("chain", "draw")
    assert idata.sample_stats["log_weight"].dims == ("chain", "draw")
    assert idata.sample_stats["pareto_k"].dims == () and float(idata.sample_stats["pareto_k"]) < 0.5
    assert idata.observed_data["x"].dims == ("data",)

    mu = posterior_values(importance_resample(idata, num_samples=M, seed=2), "mu")
    se = post_sd * math.sqrt(1 / float(idata.sample_stats["ess"]) + 1 / M)
    assert abs(mu.mean() - post_mean) < 4.0 * se
    assert 0.5 * post_sd / se > 10  # the unweighted guide mean is far outside


def mixed_model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[-1]):
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def mixed_guide(x):
    numpyro.sample("mu", dist.Normal(0.0, 0.5))
    with numpyro.plate("data", x.shape[-1]):
        numpyro.sample("z", dist.Normal(x / 2, 0.8))


def test_global_and_local_latents_resample_whole_draws():
    # Catches a local latent resampled apart from the global one it was drawn with.
    x = data(5, seed=4)
    idata = to_inference_data(
        mixed_model, mixed_guide, {}, x, num_samples=300, chunk_size=128, rng_key=KEY
    )
    assert idata.posterior["mu"].dims == ("chain", "draw")
    assert idata.posterior["z"].dims == ("chain", "draw", "data")
    assert idata.sample_stats["log_weight"].dims == ("chain", "draw")
    out = importance_resample(idata, num_samples=500, seed=0)
    rows = {
        float(m): z
        for m, z in zip(posterior_values(idata, "mu"), posterior_values(idata, "z"), strict=True)
    }
    for m, z in zip(posterior_values(out, "mu"), posterior_values(out, "z"), strict=True):
        np.testing.assert_array_equal(z, rows[float(m)])


# -- sub-sampling, arguments, imports ------------------------------------------------------

N_SUB, B_SUB = 30, 8


def sub_model(x):
    with numpyro.plate("data", N_SUB, subsample_size=B_SUB) as idx:
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])


def sub_guide(x):
    loc = numpyro.param("locs", 10.0 * jnp.arange(float(N_SUB)))
    with numpyro.plate("data", N_SUB, subsample_size=B_SUB) as idx:
        numpyro.sample("z", dist.Normal(loc[idx], 1e-3))


def test_subsampled_plate_chunks_share_one_mini_batch_with_unscaled_weights():
    # Catches chunks (or particles) drawing their own mini-batches, coordinates that are not
    # the sub-sample indices, and per-datapoint log-weights multiplied by N/B.
    x = data(N_SUB, seed=5)
    params = {"locs": 10.0 * jnp.arange(float(N_SUB))}
    idata = to_inference_data(
        sub_model, sub_guide, params, x, num_samples=20, chunk_size=7, rng_key=KEY
    )
    idx = idata.posterior["data"].values
    assert idx.shape == (B_SUB,) and len(set(idx)) == B_SUB
    assert not np.array_equal(np.sort(idx), np.arange(B_SUB))  # sub-sampled from all 30
    np.testing.assert_array_equal(idata.observed_data["data"].values, idx)
    np.testing.assert_array_equal(idata.observed_data["x"].values, np.asarray(x)[idx])
    z = posterior_values(idata, "z").astype(np.float64)  # every chunk at the same datapoints
    assert z.shape == (20, B_SUB)
    np.testing.assert_allclose(z, np.broadcast_to(10.0 * idx, z.shape), atol=0.01)
    xs = np.asarray(x, np.float64)[idx]
    expected = log_normal(z, 0.0, 1.0) + log_normal(xs, z, 1.0) - log_normal(z, 10.0 * idx, 1e-3)
    np.testing.assert_allclose(idata.sample_stats["log_weight"].values[0], expected, rtol=1e-6)


def sub_global_model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", N_SUB, subsample_size=B_SUB) as idx:
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=x[idx])


def sub_global_guide(x):
    numpyro.sample("mu", dist.Normal(0.3, 0.5))


def test_joint_weights_with_subsampling_use_scaled_log_densities():
    # With a global latent the weights target the full-data posterior: the mini-batch's
    # likelihood enters multiplied by N/B (docs/design.md §1). Catches the unscaled variant.
    x = data(N_SUB, seed=7)
    idata = to_inference_data(
        sub_global_model, sub_global_guide, {}, x, num_samples=30, rng_key=KEY
    )
    idx = idata.observed_data["data"].values
    mu = posterior_values(idata, "mu").astype(np.float64)
    xs = np.asarray(x, np.float64)[idx]
    log_lik = log_normal(xs[None, :], mu[:, None], 1.0).sum(axis=1)
    expected = log_normal(mu, 0.0, 1.0) + N_SUB / B_SUB * log_lik - log_normal(mu, 0.3, 0.5)
    np.testing.assert_allclose(idata.sample_stats["log_weight"].values[0], expected, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 2.5}, "num_samples"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"max_plate_nesting": -1}, "max_plate_nesting"),
        ({"vectorize": "yes"}, "vectorize"),
    ],
)
def test_invalid_arguments_raise(kwargs, match):
    x = data(3)
    with pytest.raises(ValueError, match=match):
        to_inference_data(model, guide, guide_params(x, 1.0), x, rng_key=KEY, **kwargs)


def test_params_and_key_are_required():
    # The data passed where the params belong, and a forgotten key, say what to do.
    x = data(3)
    with pytest.raises(ValueError, match=r"svi.get_params\(state\)"):
        to_inference_data(model, guide, x, rng_key=KEY)
    with pytest.raises(TypeError, match="rng_key"):
        to_inference_data(model, guide, guide_params(x, 1.0), x)
    with pytest.raises(TypeError, match="PRNGKey"):
        to_inference_data(model, guide, guide_params(x, 1.0), x, rng_key=None)


@pytest.mark.slow  # a fresh interpreter importing jax and numpyro: about 2-4 s
def test_importing_numpyro_wakesleep_does_not_import_arviz():
    code = "import sys, numpyro_wakesleep; assert 'arviz' not in sys.modules, 'arviz imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
