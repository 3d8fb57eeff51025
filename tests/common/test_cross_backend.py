"""The Pyro and NumPyro backends against each other: the same models, the same parameters.

Two models are written once per backend:

- linear-Gaussian with ``N = 50`` local latents, ``z_i ~ N(mu, 1)``,
  ``x_i | z_i ~ N(w z_i, σ)``, ``σ = exp(log_sigma)``, and the guide
  ``q(z_i | x_i) = N(a x_i + b, exp(log_s + c x_i))``. Its exact posterior is
  ``N((mu + w x_i / σ²) / P, 1/sqrt(P))`` with ``P = 1 + w²/σ²``, so the exact guide
  (``c = 0``) is known; the guide of the objectives' tests is wider than the posterior
  (bounded weights), that of the diagnostics' test narrower for some datapoints than
  for others (``c ≠ 0``), so that their ``k̂`` differ;
- the Helmholtz machine each backend ships (6 visible units, hidden layers 3 and 2), whose
  parameters are copied from the Pyro module into NumPyro's parameter dict as NumPy arrays.

Every parameter is unconstrained (scales enter as ``exp(log_…)``), so both backends
differentiate with respect to the same real numbers.

**Objectives.** For ``ReweightedWakeSleep`` with ``insomnia`` 1, 0.5, 0 and ``WakeSleep``,
each backend computes ``R`` independent (value, gradient) estimates; the means must agree
within ``4·sqrt(se_pyro² + se_numpyro²)``, component by component. The estimates are sums
over 50 datapoints of light-tailed terms (bounded weights, Gaussian or Bernoulli scores),
so their means over ``R ≥ 200`` estimates are normal to a good approximation and each
comparison has a false-alarm rate of about 6e-5 (about 2% over the ~290 comparisons of
this module; the seeds are fixed, so a pass or failure is reproducible). Each test also checks that its tolerance tells the
four objectives apart, so that a backend computing another configuration (an ignored
``insomnia``, the ELBO for the IWAE bound, ...) would fail it.

**Diagnostics.** ``to_inference_data`` of both backends gives the same per-datapoint PSIS
``k̂`` up to Monte Carlo error and the same structure (dims, coords, dtypes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pyro = pytest.importorskip("pyro")
jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")
pytest.importorskip("arviz")

import jax.numpy as jnp  # noqa: E402
import numpyro.distributions as ndist  # noqa: E402
import pyro.distributions as pdist  # noqa: E402

import numpyro_wakesleep  # noqa: E402
import pyro_wakesleep  # noqa: E402
from numpyro_wakesleep.diagnostics import to_inference_data as numpyro_to_inference_data  # noqa: E402
from numpyro_wakesleep.helmholtz import HelmholtzMachine as NumPyroHelmholtz  # noqa: E402
from pyro_wakesleep.diagnostics import to_inference_data as pyro_to_inference_data  # noqa: E402
from pyro_wakesleep.helmholtz import HelmholtzMachine as PyroHelmholtz  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

K = 10  # particles (and dreams) per step
N = 50  # datapoints
#: Independent estimates per configuration: Pyro (a Python loop) for the linear-Gaussian
#: model and the Helmholtz machine (3 times slower per step), and NumPyro (compiled).
R_PYRO_LG, R_PYRO_HM = 400, 200
R_NUMPYRO = 1000  # (NumPyro: one compiled lax.map)

#: (name, class, keyword arguments): the four objectives compared.
CONFIGS = [
    ("rws-insomnia-1", "ReweightedWakeSleep", {"insomnia": 1.0}),
    ("rws-insomnia-0.5", "ReweightedWakeSleep", {"insomnia": 0.5}),
    ("rws-insomnia-0", "ReweightedWakeSleep", {"insomnia": 0.0}),
    ("ws", "WakeSleep", {}),
]


def _objective(backend: Any, config: tuple[str, str, dict]) -> Any:
    """The objective ``config`` names, from ``backend`` (``pyro_wakesleep`` or ``numpyro_wakesleep``)."""
    _, cls, kwargs = config
    return getattr(backend, cls)(num_particles=K, **kwargs)


# -- the linear-Gaussian model in both backends ------------------------------------------

MODEL = {"mu": 0.7, "w": 1.3, "log_sigma": math.log(0.8)}
_P = 1 + MODEL["w"] ** 2 / math.exp(2 * MODEL["log_sigma"])  # posterior precision
EXACT_GUIDE = {
    "a": MODEL["w"] / math.exp(2 * MODEL["log_sigma"]) / _P,
    "b": MODEL["mu"] / _P,
    "log_s": -0.5 * math.log(_P),
    "c": 0.0,
}
POST_SD = math.exp(EXACT_GUIDE["log_s"])
#: Off the posterior (slope, offset) and 1.34 times wider: bounded weights, ESS ≈ 0.8 K.
WIDE_GUIDE = {"a": 0.45, "b": 0.4, "log_s": math.log(0.7), "c": 0.0}
LG_NAMES = ("mu", "w", "log_sigma", "a", "b", "log_s", "c")


def _lg_data() -> np.ndarray:
    rng = np.random.default_rng(0)
    z = MODEL["mu"] + rng.standard_normal(N)
    return (MODEL["w"] * z + math.exp(MODEL["log_sigma"]) * rng.standard_normal(N)).astype(
        np.float32
    )


X_LG = _lg_data()


def pyro_lg_model(x):
    mu, w, log_sigma = pyro.param("mu"), pyro.param("w"), pyro.param("log_sigma")
    with pyro.plate("data", x.shape[-1]):
        z = pyro.sample("z", pdist.Normal(mu, 1.0))
        pyro.sample("x", pdist.Normal(w * z, log_sigma.exp()), obs=x)


def pyro_lg_guide(x):
    a, b, log_s, c = (pyro.param(name) for name in ("a", "b", "log_s", "c"))
    with pyro.plate("data", x.shape[-1]):
        pyro.sample("z", pdist.Normal(a * x + b, (log_s + c * x).exp()))


def numpyro_lg_model(x):
    mu, w = numpyro.param("mu", 0.0), numpyro.param("w", 1.0)
    log_sigma = numpyro.param("log_sigma", 0.0)
    with numpyro.plate("data", x.shape[-1]):
        z = numpyro.sample("z", ndist.Normal(mu, 1.0))
        numpyro.sample("x", ndist.Normal(w * z, jnp.exp(log_sigma)), obs=x)


def numpyro_lg_guide(x):
    a, b = numpyro.param("a", 0.0), numpyro.param("b", 0.0)
    log_s, c = numpyro.param("log_s", 0.0), numpyro.param("c", 0.0)
    with numpyro.plate("data", x.shape[-1]):
        numpyro.sample("z", ndist.Normal(a * x + b, jnp.exp(log_s + c * x)))


def _set_pyro_params(values: dict[str, float | np.ndarray]) -> None:
    pyro.clear_param_store()
    for name, value in values.items():
        pyro.param(name, torch.tensor(np.asarray(value, np.float32)))


def _numpyro_params(values: dict[str, float | np.ndarray]) -> dict[str, jnp.ndarray]:
    return {name: jnp.asarray(np.asarray(value, np.float32)) for name, value in values.items()}


def _log_marginal() -> float:
    """``Σ_i log p(x_i)``, ``x_i ~ N(w mu, sqrt(w² + σ²))``, in float64."""
    loc = MODEL["w"] * MODEL["mu"]
    var = MODEL["w"] ** 2 + math.exp(2 * MODEL["log_sigma"])
    x = X_LG.astype(np.float64)
    return float(np.sum(-0.5 * (x - loc) ** 2 / var - 0.5 * math.log(2 * math.pi * var)))


# -- the Helmholtz machine in both backends ----------------------------------------------

HM_VISIBLE, HM_HIDDEN = 6, (3, 2)
X_HM = np.random.default_rng(1).integers(0, 2, size=(N, HM_VISIBLE)).astype(np.float32)


def _pyro_helmholtz(seed: int = 2) -> tuple[PyroHelmholtz, dict[str, np.ndarray]]:
    """A Pyro machine with random parameters, and the same values under NumPyro's names.

    NumPyro names a parameter ``"{name}_" + <the torch module's parameter name>``
    (``helmholtz_generative.layers.0.weight``, ``helmholtz_recognition.1.bias``, ...),
    with weights in the same ``(out, in)`` layout.
    """
    pyro.clear_param_store()
    machine = PyroHelmholtz(HM_VISIBLE, HM_HIDDEN)
    rng = np.random.default_rng(seed)
    values = {}
    with torch.no_grad():
        for name, param in machine.named_parameters():
            value = (0.8 * rng.standard_normal(tuple(param.shape))).astype(np.float32)
            param.copy_(torch.from_numpy(value))
            values[f"{machine.name}_{name}"] = value
    return machine, values


# -- estimators ------------------------------------------------------------------------------


def _pyro_estimates(
    config: tuple[str, str, dict],
    model: Callable,
    guide: Callable,
    x: np.ndarray,
    params: Callable[[], list],
    seed: int,
    num: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``num`` estimates: values ``(R,)`` and gradients ``(R, P)`` in ``params``' order.

    ``params`` returns the leaf tensors of the parameters (read after each evaluation: the
    param store may hand the programs new leaves).
    """
    pyro.set_rng_seed(seed)
    loss = _objective(pyro_wakesleep, config)
    values, grads = [], []
    for _ in range(num):
        surrogate = loss.differentiable_loss(model, guide, torch.as_tensor(x))
        leaves = params()
        grad = torch.autograd.grad(surrogate, leaves, allow_unused=True)
        values.append(surrogate.item())
        grads.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).reshape(-1)
                    for p, g in zip(leaves, grad, strict=True)
                ]
            )
        )
    return np.asarray(values, np.float64), torch.stack(grads).double().numpy()


def _numpyro_estimator(
    model: Callable, guide: Callable, x: np.ndarray, names: list[str]
) -> Callable[[dict, int], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A compiled ``(params, seed) -> {config: (values (R,), gradients (R, P))}`` over all four
    configurations at once (one compilation), gradients flattened in the order of ``names``
    (JAX rebuilds a dict with its keys sorted, so the dict's own order is lost)."""
    losses = {config[0]: _objective(numpyro_wakesleep, config) for config in CONFIGS}
    x = jnp.asarray(x)

    def one(params, key):
        keys = jax.random.split(key, len(losses))
        out = {}
        for k, (name, loss) in zip(keys, losses.items(), strict=True):
            value, grad = jax.value_and_grad(
                lambda p, k=k, loss=loss: loss.loss(k, p, model, guide, x)
            )(params)
            out[name] = (value, jnp.concatenate([grad[n].reshape(-1) for n in names]))
        return out

    run = jax.jit(lambda params, keys: jax.lax.map(lambda key: one(params, key), keys))

    def estimate(params: dict, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        keys = jax.random.split(jax.random.PRNGKey(seed), R_NUMPYRO)
        out = run(params, keys)
        return {
            name: (np.asarray(v, np.float64), np.asarray(g, np.float64))
            for name, (v, g) in out.items()
        }

    return estimate


def _mean_se(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return samples.mean(axis=0), samples.std(axis=0, ddof=1) / math.sqrt(samples.shape[0])


def _z_scores(pyro_samples: np.ndarray, numpyro_samples: np.ndarray) -> np.ndarray:
    """``(mean_pyro − mean_numpyro) / sqrt(se_pyro² + se_numpyro²)``, per component."""
    mp, sp = _mean_se(pyro_samples)
    mn, sn = _mean_se(numpyro_samples)
    return (mp - mn) / np.sqrt(sp**2 + sn**2)


def _check_agreement(pyro_results: dict, numpyro_results: dict, names: list[str]) -> None:
    """Means agree within 4 combined standard errors, and the tolerance tells the
    configurations apart (comparing one backend's configuration with another's fails)."""
    for config, *_ in CONFIGS:
        (pv, pg), (nv, ng) = pyro_results[config], numpyro_results[config]
        z_value = _z_scores(pv, nv)
        assert abs(z_value) <= 4.0, (config, "value", pv.mean(), nv.mean(), z_value)
        z_grad = _z_scores(pg, ng)
        bad = {names[i]: round(float(z_grad[i]), 2) for i in np.flatnonzero(np.abs(z_grad) > 4.0)}
        assert not bad, (config, "gradient z-scores", bad)
    for config, *_ in CONFIGS:  # power: any other configuration would be rejected
        for other, *_ in CONFIGS:
            if other == config:
                continue
            (pv, pg), (nv, ng) = pyro_results[config], numpyro_results[other]
            z = np.concatenate([[_z_scores(pv, nv)], _z_scores(pg, ng)])
            assert np.max(np.abs(z)) > 4.0, (config, other, np.max(np.abs(z)))


# -- objectives: linear-Gaussian -------------------------------------------------------------


@pytest.fixture(scope="module")
def lg_numpyro_estimator():
    return _numpyro_estimator(numpyro_lg_model, numpyro_lg_guide, X_LG, list(LG_NAMES))


def _lg_pyro_results(params: dict, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    results = {}
    for i, config in enumerate(CONFIGS):
        _set_pyro_params(params)
        leaves = lambda: [pyro.param(n).unconstrained() for n in LG_NAMES]  # noqa: E731
        results[config[0]] = _pyro_estimates(
            config, pyro_lg_model, pyro_lg_guide, X_LG, leaves, seed + i, R_PYRO_LG
        )
    return results


@pytest.mark.slow
def test_linear_gaussian_exact_guide_values_agree_to_float_precision(lg_numpyro_estimator):
    # With the exact guide every log-weight is log p(x_i): both bounds (IWAE and ELBO) equal
    # Σ log p(x) whatever the draws. Catches a missing or extra term in either backend's
    # log-weights (a prior, a Jacobian, a scale) and a wrong normalisation (log K, 1/K).
    params = {**MODEL, **EXACT_GUIDE}
    truth = -_log_marginal()
    numpyro_results = lg_numpyro_estimator(_numpyro_params(params), seed=10)
    _set_pyro_params(params)
    for config in CONFIGS:
        pyro_value = _objective(pyro_wakesleep, config).loss(
            pyro_lg_model, pyro_lg_guide, torch.as_tensor(X_LG)
        )
        numpyro_values = numpyro_results[config[0]][0]
        # float32 log-densities of 50 datapoints, ~80 nats in all: about 1e-5 relative
        np.testing.assert_allclose(pyro_value, truth, rtol=1e-5)
        np.testing.assert_allclose(numpyro_values, truth, rtol=1e-5)
        np.testing.assert_allclose(numpyro_values, pyro_value, rtol=1e-5)


@pytest.mark.slow
def test_linear_gaussian_values_and_gradients_agree(lg_numpyro_estimator):
    # A non-exact guide (weights not constant): the self-normalised wake terms, the sleep
    # term on dreams and the reported bounds must have the same expectations. Catches a
    # backend whose weights, dream routing, insomnia mix, 1/K or N/B factors differ.
    params = {**MODEL, **WIDE_GUIDE}
    numpyro_results = lg_numpyro_estimator(_numpyro_params(params), seed=11)
    pyro_results = _lg_pyro_results(params, seed=100)
    _check_agreement(pyro_results, numpyro_results, list(LG_NAMES))


# -- objectives: Helmholtz machine ----------------------------------------------------------


@pytest.mark.slow
def test_helmholtz_machine_values_and_gradients_agree():
    # Discrete latents, two layers, every weight of both networks: the machines of the two
    # backends must define the same p and q (same layouts, same layer order) and the
    # objectives the same estimators. Catches transposed weights, a layer fed the wrong
    # input, a sign or logit convention that differs, and the bugs of the test above.
    machine, values = _pyro_helmholtz()
    names = [f"{machine.name}_{n}" for n, _ in machine.named_parameters()]
    numpyro_machine = NumPyroHelmholtz(HM_VISIBLE, HM_HIDDEN)
    estimate = _numpyro_estimator(numpyro_machine.model, numpyro_machine.guide, X_HM, names)
    numpyro_params = _numpyro_params(values)
    numpyro_results = estimate(numpyro_params, seed=12)

    pyro_results = {}
    for i, config in enumerate(CONFIGS):
        pyro_results[config[0]] = _pyro_estimates(
            config,
            machine.model,
            machine.guide,
            X_HM,
            lambda: [p for _, p in machine.named_parameters()],
            seed=200 + i,
            num=R_PYRO_HM,
        )
    _check_agreement(pyro_results, numpyro_results, names)


# -- diagnostics ----------------------------------------------------------------------------

#: The guide's width relative to the posterior's is r_i = 0.7 exp(0.3 (x_i − 0.9)), from 0.37
#: to 1.9 over the data: heavy-tailed weights for some datapoints (true k = 1 − r_i² up to
#: 0.86), bounded ones for others, so the datapoints' k̂ differ (from about −1.7 to 0.9).
NARROW_GUIDE = {"a": 0.45, "b": 0.4, "log_s": math.log(0.7 * POST_SD) - 0.3 * 0.9, "c": 0.3}
S_KHAT = 2000


@pytest.fixture(scope="module")
def lg_idata():
    """``to_inference_data`` of the narrow guide: NumPyro once, Pyro twice, and Pyro once
    more with the guide 20% narrower (a discrepancy the k̂ test must detect)."""
    params = {**MODEL, **NARROW_GUIDE}
    x = torch.as_tensor(X_LG)
    pyro.set_rng_seed(0)
    pyro_runs = []
    for log_scale in (0.0, 0.0, math.log(0.8)):
        _set_pyro_params({**params, "log_s": params["log_s"] + log_scale})
        pyro_runs.append(
            pyro_to_inference_data(pyro_lg_model, pyro_lg_guide, x, num_samples=S_KHAT)
        )
    pyro.clear_param_store()
    numpyro_run = numpyro_to_inference_data(
        numpyro_lg_model,
        numpyro_lg_guide,
        _numpyro_params(params),
        jnp.asarray(X_LG),
        num_samples=S_KHAT,
        rng_key=jax.random.PRNGKey(3),
    )
    return pyro_runs, numpyro_run


@pytest.mark.slow  # shares a fixture of about 4 s
def test_pareto_k_per_datapoint_agrees_across_backends(lg_idata):
    (pyro_a, pyro_b, pyro_narrower), numpyro_run = lg_idata
    k_pyro, k_pyro_again, k_pyro_narrower = (
        idata.sample_stats["pareto_k"].values for idata in (pyro_a, pyro_b, pyro_narrower)
    )
    k_numpyro = numpyro_run.sample_stats["pareto_k"].values
    assert k_pyro.shape == k_numpyro.shape == (N,)
    assert np.all(np.isfinite(k_pyro)) and np.all(np.isfinite(k_numpyro))

    # k̂ of one datapoint is noisy (sd ≈ 0.12 at S = 2000, measured over repeated Pyro runs)
    # and its expectation differs between datapoints (far more: −1.7 to 0.9), so compare
    # paired differences d_i = k̂_pyro,i − k̂_numpyro,i. The datapoints' draws are
    # independent, so mean(d) has standard error sd(d)/√N (≈ 0.025), and a shared
    # expectation puts mean(d) within 4 of them (false alarm ~1e-4). Catches weights that
    # differ between the backends (a term left out, a scale, a smoothing step, a PSIS with
    # another r_eff), which shift the k̂ of many datapoints the same way.
    d = k_pyro - k_numpyro
    tolerance = 4.0 * d.std(ddof=1) / math.sqrt(N)
    assert abs(d.mean()) < tolerance, (d.mean(), tolerance)
    # power: the k̂ of a guide 20% narrower than NumPyro's would be rejected
    assert abs((k_pyro_narrower - k_numpyro).mean()) > tolerance

    # The spread of the differences must be that of two runs of one backend (the same
    # per-datapoint noise): a one-sided F test, F(49, 49) exceeding 2.5 with probability
    # ~1e-3. Catches k̂ attached to the wrong datapoints in one backend, which adds the
    # datapoints' heterogeneity to the spread, as the reversed order shows.
    within = k_pyro - k_pyro_again
    assert d.var(ddof=1) / within.var(ddof=1) < 2.5, (d.var(ddof=1), within.var(ddof=1))
    assert (k_pyro - k_numpyro[::-1]).var(ddof=1) / within.var(ddof=1) > 2.5


def _structure(idata) -> dict:
    """Groups, variables, dims, sizes, dtypes, coordinates and weight attrs of an idata."""
    out = {}
    for group in idata.groups():
        ds = getattr(idata, group)
        out[group] = {
            name: (var.dims, var.shape, var.dtype.kind, var.dtype.itemsize)
            for name, var in ds.data_vars.items()
        }
        out[group]["coords"] = {
            dim: tuple(ds.coords[dim].values.tolist()) for dim in ds.dims if dim != "draw"
        }
        out[group]["attrs"] = {k: ds.attrs[k] for k in ("weights", "weight_dims") if k in ds.attrs}
    return out


@pytest.mark.slow
def test_inference_data_has_the_same_structure_in_both_backends(lg_idata):
    # A user switching backends gets the same InferenceData: the same names, dims, coords,
    # dtypes (int64 for discrete draws, float64 log_weight) for local, discrete and global
    # latents. Catches a naming or dtype convention that drifts between the backends.
    (pyro_lg, *_), numpyro_lg = lg_idata
    pairs = [(pyro_lg, numpyro_lg)]

    machine, values = _pyro_helmholtz()
    x = X_HM[:5]
    pairs.append(
        (
            pyro_to_inference_data(
                machine.model, machine.guide, torch.as_tensor(x), num_samples=64
            ),
            numpyro_to_inference_data(
                NumPyroHelmholtz(HM_VISIBLE, HM_HIDDEN).model,
                NumPyroHelmholtz(HM_VISIBLE, HM_HIDDEN).guide,
                _numpyro_params(values),
                jnp.asarray(x),
                num_samples=64,
                rng_key=jax.random.PRNGKey(4),
            ),
        )
    )

    def pyro_global_model(x):
        mu = pyro.sample("mu", pdist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[-1]):
            z = pyro.sample("z", pdist.Normal(mu, 1.0))
            pyro.sample("x", pdist.Normal(z, 1.0), obs=x)

    def pyro_global_guide(x):
        pyro.sample("mu", pdist.Normal(0.0, 0.5))
        with pyro.plate("data", x.shape[-1]):
            pyro.sample("z", pdist.Normal(x / 2, 0.8))

    def numpyro_global_model(x):
        mu = numpyro.sample("mu", ndist.Normal(0.0, 1.0))
        with numpyro.plate("data", x.shape[-1]):
            z = numpyro.sample("z", ndist.Normal(mu, 1.0))
            numpyro.sample("x", ndist.Normal(z, 1.0), obs=x)

    def numpyro_global_guide(x):
        numpyro.sample("mu", ndist.Normal(0.0, 0.5))
        with numpyro.plate("data", x.shape[-1]):
            numpyro.sample("z", ndist.Normal(x / 2, 0.8))

    x = X_LG[:7]
    pairs.append(
        (
            pyro_to_inference_data(
                pyro_global_model, pyro_global_guide, torch.as_tensor(x), num_samples=64
            ),
            numpyro_to_inference_data(
                numpyro_global_model,
                numpyro_global_guide,
                {},
                jnp.asarray(x),
                num_samples=64,
                rng_key=jax.random.PRNGKey(5),
            ),
        )
    )
    for pyro_idata, numpyro_idata in pairs:
        assert _structure(pyro_idata) == _structure(numpyro_idata)
        assert pyro_idata.posterior.attrs["inference_library"] == "pyro"
        assert numpyro_idata.posterior.attrs["inference_library"] == "numpyro"
