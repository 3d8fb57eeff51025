"""The backend-neutral ArviZ conversion: PSIS k̂, ESS and importance resampling."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

az = pytest.importorskip("arviz")

from wakesleep import inference_data  # noqa: E402
from wakesleep.inference_data import (  # noqa: E402
    build_inference_data,
    importance_ess,
    importance_resample,
    psis_log_weights,
)


def _arviz_psislw(log_weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``az.psislw`` over the draw axis (first), as a user would call it."""
    if not hasattr(az, "psislw"):
        pytest.skip("this ArviZ has no az.psislw (ArviZ >= 1 keeps PSIS in arviz_stats)")
    smoothed, k = az.psislw(np.moveaxis(log_weight, 0, -1))
    return np.moveaxis(np.asarray(smoothed), -1, 0), np.asarray(k)


def _pareto_log_weights(rng: np.random.Generator, shape_k: list[float], S: int) -> np.ndarray:
    """Log-weights whose weights have Pareto tails of shape ``k`` (one column per ``k``)."""
    return rng.exponential(size=(S, len(shape_k))) * np.asarray(shape_k)


def _idata(log_weight: np.ndarray, weight_dims: list[str] | None = None):
    S = log_weight.shape[0]
    draws = np.broadcast_to(
        np.arange(S).reshape((S,) + (1,) * (log_weight.ndim - 1)), log_weight.shape
    )
    return build_inference_data(
        {
            "z": draws.copy(),
            "w": 100 * draws[:, None] + np.arange(2).reshape((1, 2) + (1,) * (log_weight.ndim - 1)),
        },
        log_weight,
        {"x": np.arange(float(np.prod(log_weight.shape[1:]))).reshape(log_weight.shape[1:])},
        {
            "z": ["draw", *(weight_dims or [])],
            "w": ["draw", "w_dim_0", *(weight_dims or [])],
            "x": weight_dims or [],
        },
        weight_dims or [],
    )


# -- PSIS and ESS --------------------------------------------------------------------------


def test_pareto_k_equals_arviz_psislw_on_stored_log_weight():
    rng = np.random.default_rng(0)
    true_k = [0.2, 0.5, 0.9, 1.3]
    idata = _idata(_pareto_log_weights(rng, true_k, 4000), ["data"])
    stored = idata.sample_stats["log_weight"].transpose("chain", "draw", "data").values[0]
    smoothed, k = _arviz_psislw(stored)
    np.testing.assert_array_equal(idata.sample_stats["pareto_k"].values, k)
    assert idata.sample_stats["pareto_k"].dims == ("data",)
    ours, ours_k = psis_log_weights(stored)
    np.testing.assert_allclose(ours, smoothed, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ours_k, k)
    # over the draws, per datapoint: the estimates track the tails' true shapes in order
    assert np.all(np.diff(k) > 0) and k[0] < 0.5 < 0.7 < k[-1]


def test_joint_weights_have_scalar_pareto_k_and_ess():
    rng = np.random.default_rng(1)
    lw = _pareto_log_weights(rng, [0.4], 1000)[:, 0]
    idata = _idata(lw)
    assert idata.sample_stats["log_weight"].dims == ("chain", "draw")
    assert idata.sample_stats["pareto_k"].dims == ()
    assert idata.sample_stats["ess"].dims == ()
    assert float(idata.sample_stats["pareto_k"]) == pytest.approx(float(_arviz_psislw(lw)[1]))


def test_ess_is_that_of_the_raw_weights():
    rng = np.random.default_rng(2)
    lw = 300.0 + rng.normal(scale=1.5, size=(500, 3))  # offset: the formula must be stable
    idata = _idata(lw, ["data"])
    w = np.exp(lw - lw.max(axis=0))
    expected = w.sum(axis=0) ** 2 / (w**2).sum(axis=0)
    np.testing.assert_allclose(idata.sample_stats["ess"].values, expected, rtol=1e-10)
    np.testing.assert_allclose(importance_ess(np.zeros((50, 2))), [50.0, 50.0])
    dominant = np.zeros((50,))
    dominant[7] = 80.0
    assert importance_ess(dominant) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_log_weights_raise(bad):
    lw = np.zeros((40, 3))
    lw[5, 1] = bad
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        _idata(lw, ["data"])


def test_datapoint_with_all_weights_zero_raises():
    lw = np.zeros((40, 3))
    lw[:, 2] = -np.inf
    with pytest.raises(ValueError, match=r"weight zero .*\[\(2,\)\]"):
        psis_log_weights(lw)
    lw[:20, 2] = 0.0  # some zero weights are fine
    _, k = psis_log_weights(lw)
    assert k.shape == (3,)


# -- structure -----------------------------------------------------------------------------


def test_groups_dims_and_coords():
    rng = np.random.default_rng(3)
    lw = rng.normal(size=(100, 4))
    idata = build_inference_data(
        {"z": rng.normal(size=(100, 4)), "e": rng.normal(size=(100, 4, 3))},
        lw,
        {"x": rng.normal(size=4)},
        {"z": ["data"], "e": ["draw", "data"], "x": ["data"]},  # "draw" is prepended if left out
        ["data"],
        coords={"data": [10, 11, 12, 13]},
        attrs={"inference_library": "test"},
    )
    assert set(idata.groups()) == {"posterior", "sample_stats", "observed_data"}
    assert idata.posterior["z"].dims == ("chain", "draw", "data")
    assert idata.posterior["e"].dims == ("chain", "draw", "data", "e_dim_0")
    assert idata.posterior.sizes["chain"] == 1 and idata.posterior.sizes["draw"] == 100
    assert idata.observed_data["x"].dims == ("data",)
    assert idata.sample_stats["log_weight"].dims == ("chain", "draw", "data")
    assert list(idata.posterior["data"].values) == [10, 11, 12, 13]
    assert idata.posterior.attrs["inference_library"] == "test"
    np.testing.assert_array_equal(idata.sample_stats["log_weight"].values[0], lw)


def test_inconsistent_shapes_raise():
    lw = np.zeros((30, 4))
    with pytest.raises(ValueError, match="leading axis"):
        build_inference_data({"z": np.zeros((29, 4))}, lw, {}, {"z": ["draw", "data"]}, ["data"])
    with pytest.raises(ValueError, match="weight_dims"):
        build_inference_data({"z": np.zeros((30, 4))}, lw, {}, {"z": ["draw", "data"]}, [])
    with pytest.raises(ValueError, match="'data' has size 4 .* but 5"):
        build_inference_data(
            {"z": np.zeros((30, 4))},
            lw,
            {"x": np.zeros(5)},
            {"z": ["draw", "data"], "x": ["data"]},
            ["data"],
        )


def test_arviz_not_installed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "arviz", None)  # makes `import arviz` fail
    path = Path(inference_data.__file__)
    spec = importlib.util.spec_from_file_location("wakesleep_inference_data_probe", path)
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(ImportError, match=r"pip install 'wakesleep\[arviz\]'"):
        spec.loader.exec_module(module)


# -- importance resampling -----------------------------------------------------------------


def _multinomial_ok(counts: np.ndarray, probs: np.ndarray, alpha: float = 1e-4) -> bool:
    """Pearson's χ² goodness of fit at level ``alpha``, cells with expected count < 5 pooled."""
    from scipy import stats

    expected = probs * counts.sum()
    small = expected < 5
    observed = np.append(counts[~small], counts[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    return bool(stats.chisquare(observed, expected).pvalue > alpha)


def test_resampling_follows_smoothed_weights_per_datapoint():
    S, M = 40, 40_000
    rng = np.random.default_rng(4)
    ramp = np.linspace(0.0, 3.0, S)
    lw = np.stack([ramp, ramp[::-1], -((ramp - 1.5) ** 2) * 4 + rng.normal(0, 0.1, S)], axis=1)
    idata = _idata(lw, ["data"])
    out = importance_resample(idata, num_samples=M, seed=5)
    z = out.posterior["z"].transpose("chain", "draw", "data").values[0]
    probs = np.exp(psis_log_weights(lw)[0])
    assert z.shape == (M, 3)
    for j in range(3):  # three χ² tests at level 1e-4
        counts = np.bincount(z[:, j], minlength=S)
        assert _multinomial_ok(counts, probs[:, j]), j
    # a datapoint's variables share one index per draw; datapoints are drawn independently
    w = out.posterior["w"].transpose("chain", "draw", "w_dim_0", "data").values[0]
    np.testing.assert_array_equal(w, 100 * z[:, None, :] + np.arange(2)[None, :, None])
    assert np.mean(z[:, 0] == z[:, 1]) < 0.1


def test_joint_weights_resample_whole_draws():
    S, M = 60, 30_000
    rng = np.random.default_rng(6)
    lw = rng.normal(scale=1.0, size=S)
    draws = np.arange(S)
    idata = build_inference_data(
        {"g": draws.copy(), "z": 10 * draws[:, None] + np.arange(3)[None, :]},
        lw,
        {"x": np.zeros(3)},
        {"g": ["draw"], "z": ["draw", "data"], "x": ["data"]},
        [],
    )
    out = importance_resample(idata, num_samples=M, seed=7)
    g = out.posterior["g"].values[0]
    z = out.posterior["z"].transpose("chain", "draw", "data").values[0]
    np.testing.assert_array_equal(z, 10 * g[:, None] + np.arange(3)[None, :])
    assert _multinomial_ok(np.bincount(g, minlength=S), np.exp(psis_log_weights(lw)[0]))


def test_resample_returns_new_data_and_leaves_input_alone():
    rng = np.random.default_rng(8)
    lw = rng.normal(size=(50, 4))
    idata = _idata(lw, ["data"])
    before = {
        group: {name: var.values.copy() for name, var in getattr(idata, group).data_vars.items()}
        for group in idata.groups()
    }
    out = importance_resample(idata, num_samples=70, seed=1)
    for group, variables in before.items():
        for name, values in variables.items():
            np.testing.assert_array_equal(getattr(idata, group)[name].values, values)
    assert out is not idata
    assert out.posterior.sizes["draw"] == 70 and out.posterior.sizes["chain"] == 1
    assert out.posterior["z"].dims == ("chain", "draw", "data")
    assert out.posterior["w"].dims == ("chain", "draw", "w_dim_0", "data")
    np.testing.assert_array_equal(out.observed_data["x"].values, idata.observed_data["x"].values)
    assert "log_weight" not in out.sample_stats
    np.testing.assert_array_equal(
        out.sample_stats["pareto_k"].values, idata.sample_stats["pareto_k"].values
    )
    assert importance_resample(idata).posterior.sizes["draw"] == 50  # default: as many as stored


def test_resample_seed_is_reproducible():
    lw = np.random.default_rng(9).normal(size=(50, 4))
    idata = _idata(lw, ["data"])
    first = importance_resample(idata, seed=3).posterior["z"].values
    np.testing.assert_array_equal(first, importance_resample(idata, seed=3).posterior["z"].values)
    assert not np.array_equal(first, importance_resample(idata, seed=4).posterior["z"].values)


def test_resample_rejects_bad_input():
    idata = _idata(np.zeros((30, 2)), ["data"])
    with pytest.raises(ValueError, match="num_samples"):
        importance_resample(idata, num_samples=0)
    global_in_local = build_inference_data(
        {"g": np.zeros(30), "z": np.zeros((30, 2))},
        np.zeros((30, 2)),
        {},
        {"g": ["draw"], "z": ["draw", "data"]},
        ["data"],
    )
    with pytest.raises(ValueError, match="none of the per-datapoint weight dims"):
        importance_resample(global_in_local)
    with pytest.raises(ValueError, match="sample_stats.log_weight"):
        importance_resample(az.from_dict(posterior={"z": np.zeros((1, 30))}))


def test_draw_axes_name_plates_and_drop_size_one_axes_that_are_no_plate():
    # batch (1, 5, 3) left of an event of 2: dim -3 is no plate (size 1: dropped), dim -2 is
    # plate "data", dim -1 a batch axis no plate declares
    index, names = inference_data.draw_axes("z", (1, 5, 3), 1, {-2: "data"})
    assert index == (slice(None), 0, slice(None), slice(None))
    assert names == ["draw", "data", "z_dim_0", "z_dim_1"]
    draws = np.zeros((7, 1, 5, 3, 2))
    assert draws[index].shape == (7, 5, 3, 2) and len(names) == 4


def test_observed_axes_use_a_plate_name_only_where_its_size_fits():
    plates = {-2: ("rows", 4), -1: ("cols", 9)}
    # the value's size along "cols" is 3, not the plate's 9: a default name instead
    assert inference_data.observed_axes("x", (4, 3, 2), 1, plates) == ["rows", "x_dim_0", "x_dim_1"]
