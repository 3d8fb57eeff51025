"""ArviZ diagnostics of Pyro guides: per-datapoint weights, PSIS k̂, resampling.

The workhorse is the linear-Gaussian model ``z_i ~ N(0, 1)``, ``x_i | z_i ~ N(z_i, 1)``,
whose exact posterior is ``N(x_i / 2, sqrt(1/2))``, with the guide ``N(x_i / 2 + δ, s)``.
For ``q = N(m, s)`` and ``p = N(m, σ)`` the weights ``w = p / q`` have moments
``E_q[w^n] = r^(n-1) / sqrt(n − (n−1)/r²)`` with ``r = s / σ`` (finite for
``r² > (n−1)/n``): a wide guide (``r > 1``) has bounded weights (true ``k < 0``), a narrow
one has a Pareto tail with ``k = 1 − r²``.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

az = pytest.importorskip("arviz")

from pyro_wakesleep.diagnostics import importance_resample, to_inference_data  # noqa: E402

POST_SD = math.sqrt(0.5)


def model(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide(x: torch.Tensor) -> None:
    loc = pyro.param("loc", lambda: x / 2)
    scale = pyro.param("scale", lambda: torch.tensor(1.0), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, scale))


def set_guide(x: torch.Tensor, scale: float, shift: float = 0.0) -> None:
    """Put the guide's parameters in the param store: ``q(z_i) = N(x_i/2 + shift, scale)``."""
    pyro.param("loc", x / 2 + shift)
    pyro.param("scale", torch.tensor(scale), constraint=constraints.positive)


def data(n: int, seed: int = 0) -> torch.Tensor:
    pyro.set_rng_seed(seed)
    return math.sqrt(2.0) * torch.randn(n)  # the marginal of x is N(0, 2)


def log_normal(v: np.ndarray, loc: np.ndarray | float, scale: float) -> np.ndarray:
    return -0.5 * ((v - loc) / scale) ** 2 - math.log(scale) - 0.5 * math.log(2 * math.pi)


def weight_moment(n: int, r: float) -> float:
    """``E_q[(p/q)^n]`` for ``p = N(m, σ)``, ``q = N(m, rσ)``."""
    return r ** (n - 1) / math.sqrt(n - (n - 1) / r**2)


def posterior_values(idata, name: str) -> np.ndarray:
    """``(draw, *rest)`` values of a posterior variable of the single chain."""
    return idata.posterior[name].values[0]


# -- what is stored ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"vectorize": True},
        {"vectorize": True, "chunk_size": 64, "max_plate_nesting": 2},
        {"vectorize": False},
    ],
    ids=["vectorized", "chunked-extra-nesting", "sequential"],
)
def test_log_weights_are_per_datapoint_and_belong_to_their_draws(options):
    x = data(6)
    set_guide(x, scale=0.9, shift=0.2)
    S = 150
    idata = to_inference_data(model, guide, x, num_samples=S, **options)

    assert set(idata.groups()) == {"posterior", "sample_stats", "observed_data"}
    assert idata.posterior["z"].dims == ("chain", "draw", "data")
    assert idata.posterior.sizes == {"chain": 1, "draw": S, "data": 6}
    assert idata.sample_stats["log_weight"].dims == ("chain", "draw", "data")
    assert idata.sample_stats["pareto_k"].dims == ("data",)
    assert idata.sample_stats["ess"].dims == ("data",)
    assert idata.observed_data["x"].dims == ("data",)
    np.testing.assert_array_equal(idata.observed_data["x"].values, x.numpy())
    np.testing.assert_array_equal(idata.posterior["data"].values, np.arange(6))
    assert idata.posterior.attrs["inference_library"] == "pyro"

    z = posterior_values(idata, "z").astype(np.float64)
    xs = x.numpy().astype(np.float64)
    expected = log_normal(z, 0.0, 1.0) + log_normal(xs, z, 1.0) - log_normal(z, xs / 2 + 0.2, 0.9)
    lw = idata.sample_stats["log_weight"].values[0]
    np.testing.assert_allclose(lw, expected, rtol=0, atol=1e-4)  # float32 log-densities
    assert np.std(z[:, 0]) > 0.5  # S different draws, not one repeated


def test_wide_guide_every_pareto_k_below_half_and_ess_as_predicted():
    S, N, r = 1000, 20, 1.2
    x = data(N)
    set_guide(x, scale=r * POST_SD)
    idata = to_inference_data(model, guide, x, num_samples=S)
    k = idata.sample_stats["pareto_k"].values
    assert k.shape == (N,)
    assert np.all(k < 0.5), k  # bounded weights: true k < 0

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
    # r = 1/2.5: true k = 1 − r² = 0.84. The χ²-shaped tail converges slowly, so k̂ is biased
    # low and spread (sd ≈ 0.1 per datapoint at S = 10⁴; over 10 seeds × 20 datapoints the
    # mean was 0.76 and 75% exceeded 0.7): "every datapoint" would fail by chance, so the
    # mean k̂ and a majority of datapoints must exceed 0.7 (each about 4 sd from failing).
    S, N = 10_000, 50
    x = data(N)
    set_guide(x, scale=POST_SD / 2.5)
    k = to_inference_data(model, guide, x, num_samples=S).sample_stats["pareto_k"].values
    assert k.mean() > 0.7, k
    assert np.mean(k > 0.7) > 0.5, k


def test_resampling_recovers_the_exact_posterior():
    S, M, N = 2000, 2000, 20
    x = data(N, seed=1)
    set_guide(x, scale=1.2 * POST_SD, shift=0.3)  # the raw guide draws are 0.3 off
    idata = to_inference_data(model, guide, x, num_samples=S)
    out = importance_resample(idata, num_samples=M, seed=0)
    z = posterior_values(out, "z")
    assert z.shape == (M, N)
    ess = idata.sample_stats["ess"].values
    # weighted-estimate error ≈ σ²/ESS, plus multinomial resampling σ²/M
    se = POST_SD * np.sqrt(1 / ess + 1 / M)
    zscore = (z.mean(axis=0) - x.numpy() / 2) / se
    assert np.all(np.abs(zscore) < 4.0), zscore  # 20 datapoints: false alarm p ~ 1e-3
    assert 0.3 / se.max() > 10  # unweighted guide draws would fail by far
    # spread: E[(z − mean)²]/σ² = 1 with sd ≈ sqrt(2(1/ESS + 1/M)) per datapoint
    ratio = ((z - x.numpy() / 2) ** 2).mean(axis=0) / POST_SD**2
    sd_mean_ratio = np.sqrt(2 * (1 / ess + 1 / M)).mean() / math.sqrt(N)
    assert abs(ratio.mean() - 1) < 4 * sd_mean_ratio, ratio.mean()


def test_arviz_functions_run_on_the_results():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = data(4)
    set_guide(x, scale=POST_SD)
    idata = to_inference_data(model, guide, x, num_samples=200)
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


def bernoulli_model(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=x)


def bernoulli_guide(x: torch.Tensor) -> None:
    probs = pyro.param(
        "probs", lambda: torch.full(x.shape, 0.5), constraint=constraints.unit_interval
    )
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Bernoulli(probs))


def test_bernoulli_latent_converts_with_integer_draws_and_right_dims():
    S, M, N = 2000, 4000, 10
    x = data(N, seed=2) + 1.0
    idata = to_inference_data(bernoulli_model, bernoulli_guide, x, num_samples=S)
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "data") and z.shape == (1, S, N)
    assert np.issubdtype(z.dtype, np.integer)
    assert set(np.unique(z.values)) == {0, 1}
    assert idata.observed_data["x"].dims == ("data",)
    assert idata.sample_stats["log_weight"].dims == ("chain", "draw", "data")

    xs = x.numpy().astype(np.float64)
    on, off = 0.3 * np.exp(log_normal(xs, 2.0, 1.0)), 0.7 * np.exp(log_normal(xs, 0.0, 1.0))
    exact = on / (on + off)
    out = importance_resample(idata, num_samples=M, seed=1)
    assert np.issubdtype(out.posterior["z"].dtype, np.integer)
    freq = posterior_values(out, "z").mean(axis=0)
    se = np.sqrt(exact * (1 - exact) * (1 / idata.sample_stats["ess"].values + 1 / M))
    assert np.all(np.abs(freq - exact) < 4.0 * se), (freq, exact)


def global_model(x: torch.Tensor) -> None:
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def global_guide(x: torch.Tensor) -> None:
    loc = pyro.param("mu_loc", lambda: torch.tensor(0.0))
    scale = pyro.param("mu_scale", lambda: torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def test_global_latent_gives_joint_weights_and_resampling_finds_its_posterior():
    S, M, N = 2000, 2000, 20
    x = data(N, seed=3) + 0.5
    post_mean, post_sd = float(x.sum()) / (N + 1), 1 / math.sqrt(N + 1)
    pyro.param("mu_loc", torch.tensor(post_mean + 0.5 * post_sd))
    pyro.param("mu_scale", torch.tensor(1.2 * post_sd), constraint=constraints.positive)
    idata = to_inference_data(global_model, global_guide, x, num_samples=S)
    assert idata.posterior["mu"].dims == ("chain", "draw")
    assert idata.sample_stats["log_weight"].dims == ("chain", "draw")
    assert idata.sample_stats["pareto_k"].dims == () and float(idata.sample_stats["pareto_k"]) < 0.5
    assert idata.observed_data["x"].dims == ("data",)

    mu = posterior_values(importance_resample(idata, num_samples=M, seed=2), "mu")
    se = post_sd * math.sqrt(1 / float(idata.sample_stats["ess"]) + 1 / M)
    assert abs(mu.mean() - post_mean) < 4.0 * se
    assert 0.5 * post_sd / se > 10  # the unweighted guide mean is far outside


def mixed_model(x: torch.Tensor) -> None:
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def mixed_guide(x: torch.Tensor) -> None:
    pyro.sample("mu", dist.Normal(0.0, 0.5))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2, 0.8))


def test_global_and_local_latents_resample_whole_draws():
    x = data(5, seed=4)
    idata = to_inference_data(mixed_model, mixed_guide, x, num_samples=300, chunk_size=128)
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


def test_subsampled_plate_chunks_share_one_mini_batch():
    N, B = 30, 8
    x = data(N, seed=5)

    def sub_model(x):
        with pyro.plate("data", N, subsample_size=B) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])

    def sub_guide(x):
        loc = pyro.param("locs", lambda: 10.0 * torch.arange(float(N)))
        with pyro.plate("data", N, subsample_size=B) as idx:
            pyro.sample("z", dist.Normal(loc[idx], 1e-3))

    idata = to_inference_data(sub_model, sub_guide, x, num_samples=20, chunk_size=7)
    idx = idata.posterior["data"].values
    assert idx.shape == (B,) and len(set(idx)) == B
    np.testing.assert_array_equal(idata.observed_data["data"].values, idx)
    np.testing.assert_array_equal(idata.observed_data["x"].values, x.numpy()[idx])
    z = posterior_values(idata, "z")  # every chunk's draws sit at the same datapoints
    assert z.shape == (20, B)
    np.testing.assert_allclose(z, np.broadcast_to(10.0 * idx, z.shape), atol=0.01)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 2.5}, "num_samples"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"max_plate_nesting": -1}, "max_plate_nesting"),
    ],
)
def test_invalid_arguments_raise(kwargs, match):
    x = data(3)
    with pytest.raises(ValueError, match=match):
        to_inference_data(model, guide, x, **kwargs)


@pytest.mark.slow  # a fresh interpreter importing torch and pyro: about 2-3 s
def test_importing_pyro_wakesleep_does_not_import_arviz():
    code = "import sys, pyro_wakesleep; assert 'arviz' not in sys.modules, 'arviz imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
