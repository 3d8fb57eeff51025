"""Cases with exact answers for sparse wake-sleep and RWS-DReG (``docs/design.md`` §7).

**Sparsity.** Small binary data and recognition weights drawn from fixed NumPy generators
(:func:`binary_data`, :func:`layer_weights`), so that both backends can be given the same
parameters; :func:`kl_bernoulli` and :func:`one_layer_activation` are the hand computation
in float64: for a one-layer guide ``ρ̂_j = mean_b sigmoid(V x_b + c)_j`` does not depend on
the particles, so the penalty ``weight · N · Σ_j KL(Bern(target) ‖ Bern(ρ̂_j))`` is a
deterministic function of the parameters.

**RWS-DReG.** The linear-Gaussian model of the closed-form tests, per datapoint::

    z ~ Normal(MU, 1),   x | z ~ Normal(z, 1),   p(z | x) = Normal((MU + x)/2, sqrt(1/2))

with the guide ``q(z | x) = Normal(a x + b, exp(log_s))``, ``a, b, log_s`` *one per
datapoint* (vectors of the data plate's size, all starting at :data:`GUIDE`). The data are
:data:`X_TYPES` replicated, ``tile(X_TYPES, replicas)``, so that one evaluation gives, for
each type, ``replicas`` independent draws of one datapoint's wake-φ gradient: their spread
gives honest standard errors and variances.

The exact expectation of the wake-φ gradient with ``K`` particles is not the closed-form
``∇_φ KL(p(z|x) ‖ q)`` (the self-normalised weights are biased for finite ``K``), but it is
a one-dimensional integral. Writing ``w̃ = p(z|x) / q(z|x)`` and ``g = ∇_φ log q(z|x)``,

    E[Σ_k w̄_k g(z_k)] = K E[g(z_1) w̃_1 / (w̃_1 + S)],   S = Σ_{k≥2} w̃_k,

and ``1/(w̃_1 + S) = ∫_0^∞ e^{−t(w̃_1 + S)} dt`` with independent particles give

    K ∫_0^∞ E_q[g w̃ e^{−t w̃}] · E_q[e^{−t w̃}]^{K−1} dt

(:func:`exact_wake_phi_grad`: trapezoid rules in ``z`` over ±14 sd and in ``log t`` over
``[−30, 40]``; grids twice as fine change it by less than 1e-9, and it matches Monte Carlo
with 200,000 draws). Score and DReG estimators have this same expectation at every ``K``
(Tucker et al. 2019); as ``K → ∞`` it tends to :func:`limit_wake_phi_grad`, ``−E_p[g]`` in
closed form.

:func:`pyro_runs` and :func:`numpyro_runs` evaluate every configuration of :data:`CONFIGS`
(score, DReG, DReG mixed with sleep, DReG under sub-sampling) once per process, for the
backends' own tests and the cross-backend test alike.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy.special import expit

# ---------------------------------------------------------------------------------------------
# sparsity
# ---------------------------------------------------------------------------------------------
#: Visible units, hidden layers (bottom first), batch size and data-set size of the cases.
NUM_VISIBLE = 12
HIDDEN = (6, 3)
BATCH = 20
NUM_DATA = 500  # what a sub-sampled batch of BATCH stands for: the scale is NUM_DATA / BATCH
TARGET = 0.05
WEIGHT = 2.5


def binary_data(batch: int = BATCH, seed: int = 0) -> np.ndarray:
    """``batch`` binary images of :data:`NUM_VISIBLE` pixels, ``(batch, D)`` float64."""
    rng = np.random.default_rng(seed)
    return (rng.random((batch, NUM_VISIBLE)) < 0.35).astype(np.float64)


def layer_weights(sizes: tuple[int, ...], seed: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """Weights ``(out, in)`` and biases for layers ``sizes[i] -> sizes[i + 1]``, spread enough
    that the units' mean activations differ (from about 0.1 to 0.9)."""
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(0.0, 1.2, (fan_out, fan_in)), rng.normal(-0.3, 1.0, fan_out))
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True)
    ]


def kl_bernoulli(target: float, rho: np.ndarray) -> np.ndarray:
    """``KL(Bern(target) ‖ Bern(rho))`` elementwise, float64."""
    rho = np.asarray(rho, np.float64)
    return target * np.log(target / rho) + (1 - target) * np.log((1 - target) / (1 - rho))


def one_layer_activation(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``ρ̂_j = mean over the batch of sigmoid(V x + c)_j``, float64."""
    return expit(np.asarray(x, np.float64) @ weight.T + bias).mean(0)


def pyro_machine(hidden: tuple[int, ...]):
    """A float64 Pyro Helmholtz machine whose recognition weights are :func:`layer_weights`
    (the generative ones drawn with seed 0)."""
    import pyro
    import torch

    from pyro_wakesleep.helmholtz import HelmholtzMachine

    pyro.set_rng_seed(0)
    machine = HelmholtzMachine(NUM_VISIBLE, hidden).double()
    with torch.no_grad():
        for net, (weight, bias) in zip(
            machine.recognition, layer_weights((NUM_VISIBLE, *hidden)), strict=True
        ):
            net.weight.copy_(torch.from_numpy(weight))
            net.bias.copy_(torch.from_numpy(bias))
    return machine


def numpyro_machine(hidden: tuple[int, ...]):
    """A NumPyro Helmholtz machine and its parameters (float32), the recognition weights
    from :func:`layer_weights` (the generative ones drawn with key 0)."""
    import jax.numpy as jnp
    from numpyro import handlers

    from numpyro_wakesleep.helmholtz import HelmholtzMachine

    machine = HelmholtzMachine(NUM_VISIBLE, hidden)
    x = jnp.asarray(binary_data(), jnp.float32)
    params = {}
    for program in (machine.model, machine.guide):
        trace = handlers.trace(handlers.seed(program, 0)).get_trace(x)
        params |= {name: site["value"] for name, site in trace.items() if site["type"] == "param"}
    for i, (weight, bias) in enumerate(layer_weights((NUM_VISIBLE, *hidden))):
        params[f"helmholtz_recognition.{i}.weight"] = jnp.asarray(weight, jnp.float32)
        params[f"helmholtz_recognition.{i}.bias"] = jnp.asarray(bias, jnp.float32)
    return machine, params


# ---------------------------------------------------------------------------------------------
# RWS-DReG on the linear-Gaussian model
# ---------------------------------------------------------------------------------------------
MU = 0.4
POST_SD = math.sqrt(0.5)
X_TYPES = np.array([-1.0, 0.3, 1.5, 2.5])
NUM_TYPES = len(X_TYPES)
#: A guide that is not the posterior (too wide, shifted), as in the closed-form tests; its
#: scale exceeds POST_SD / sqrt 2, so the importance weights have a finite second moment.
GUIDE = {"a": 0.3, "b": -0.5, "log_s": math.log(0.9)}
#: The exact posterior as a guide: every log-weight is log p(x), whatever z.
EXACT_GUIDE = {"a": 0.5, "b": MU / 2, "log_s": math.log(POST_SD)}
GUIDE_PARAMS = ("a", "b", "log_s")
#: Particles of the estimator comparisons, and of the large-K (slow) check.
NUM_PARTICLES = 5
LARGE_K = 1000
#: Replicas of each type per evaluation, and evaluations per estimator: 4000 draws per type.
REPLICAS = 1000
REPEATS = 4
Z_MAX = 4.0


def data(replicas: int = REPLICAS) -> np.ndarray:
    """The observations, ``tile(X_TYPES, replicas)``: datapoint ``n`` has type ``n % 4``."""
    return np.tile(X_TYPES, replicas)


def guide_scores(z: np.ndarray, x: float, a: float, b: float, log_s: float) -> np.ndarray:
    """``∂ log q(z | x) / ∂(a, b, log_s)``, stacked on a leading axis of 3."""
    s = math.exp(log_s)
    residual = z - (a * x + b)
    return np.stack([residual * x / s**2, residual / s**2, -1.0 + residual**2 / s**2])


def _normal_log_density(z: np.ndarray, mean: float, sd: float) -> np.ndarray:
    return -0.5 * ((z - mean) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)


@functools.cache
def _exact_wake_phi_grad(num_particles: int, a: float, b: float, log_s: float) -> np.ndarray:
    s = math.exp(log_s)
    log_t = np.linspace(-30.0, 40.0, 351)
    t = np.exp(log_t)
    out = []
    for x in X_TYPES:
        q_mean, p_mean = a * x + b, (MU + x) / 2
        low = min(q_mean - 14 * s, p_mean - 14 * POST_SD)
        high = max(q_mean + 14 * s, p_mean + 14 * POST_SD)
        z = np.linspace(low, high, 3001)
        log_q = _normal_log_density(z, q_mean, s)
        q_mass = np.exp(log_q) * (z[1] - z[0])  # E_q[f] ≈ Σ f q_mass
        w = np.exp(_normal_log_density(z, p_mean, POST_SD) - log_q)  # w̃, E_q[w̃] = 1
        decay = np.exp(-t[:, None] * w[None, :])  # e^{-t w̃}, (t, z)
        laplace = decay @ q_mass  # E_q[e^{-t w̃}]
        first = (decay * (w * q_mass)) @ guide_scores(z, x, a, b, log_s).T  # E_q[g w̃ e^{-t w̃}]
        integrand = first * (laplace ** (num_particles - 1) * t)[:, None]  # dt = t dlog t
        out.append(-num_particles * np.trapezoid(integrand, log_t, axis=0))
    return np.array(out)


def exact_wake_phi_grad(num_particles: int, guide: dict[str, float] = GUIDE) -> np.ndarray:
    """The exact expectation of one datapoint's wake-φ loss gradient
    ``−Σ_k w̄_k ∇_φ log q(z_k | x)`` with ``K`` particles, ``(NUM_TYPES, 3)`` for
    ``(a, b, log_s)`` (the Laplace-transform integral of the module docstring)."""
    return _exact_wake_phi_grad(num_particles, guide["a"], guide["b"], guide["log_s"]).copy()


def limit_wake_phi_grad(guide: dict[str, float] = GUIDE) -> np.ndarray:
    """``−E_{p(z|x)}[∇_φ log q(z|x)] = ∇_φ KL(p(z|x) ‖ q)``, the ``K → ∞`` limit, closed form."""
    a, b, s = guide["a"], guide["b"], math.exp(guide["log_s"])
    shift = (MU + X_TYPES) / 2 - (a * X_TYPES + b)  # E_p[z − m]
    second = shift**2 + POST_SD**2  # E_p[(z − m)²]
    return -np.stack([shift * X_TYPES / s**2, shift / s**2, -1.0 + second / s**2], axis=-1)


def sleep_phi_grad(guide: dict[str, float] = GUIDE) -> np.ndarray:
    """``−E_{(z, x) ~ p}[∇_φ log q(z|x)]`` per datapoint, ``(3,)``: the sleep-φ gradient's
    expectation (E[z] = E[x] = MU, E[xz] = E[z²] = 1 + MU², E[x²] = 2 + MU²)."""
    a, b, s = guide["a"], guide["b"], math.exp(guide["log_s"])
    ez, ex, exz, exx, ezz = MU, MU, 1 + MU**2, 2 + MU**2, 1 + MU**2
    e_res = ez - a * ex - b
    e_res_x = exz - a * exx - b * ex
    e_res2 = ezz - 2 * a * exz - 2 * b * ez + a**2 * exx + 2 * a * b * ex + b**2
    return -np.array([e_res_x / s**2, e_res / s**2, -1.0 + e_res2 / s**2])


def path_estimator_draws(
    num_particles: int, weights: str, num_draws: int, seed: int = 0
) -> np.ndarray:
    """NumPy draws of ``−Σ_k c_k ∂log w_k/∂z_k ∂z_k/∂φ`` with ``c = w̄ − w̄²`` (DReG),
    ``w̄`` or ``w̄²`` (wrong weightings, for the power checks), ``(num_draws, NUM_TYPES, 3)``."""
    rng = np.random.default_rng(seed)
    a, b, log_s = GUIDE["a"], GUIDE["b"], GUIDE["log_s"]
    s = math.exp(log_s)
    out = np.empty((num_draws, NUM_TYPES, 3))
    for t, x in enumerate(X_TYPES):
        eps = rng.standard_normal((num_draws, num_particles))
        q_mean, p_mean = a * x + b, (MU + x) / 2
        z = q_mean + s * eps
        log_w = _normal_log_density(z, p_mean, POST_SD) - _normal_log_density(z, q_mean, s)
        w_bar = np.exp(log_w - log_w.max(1, keepdims=True))
        w_bar /= w_bar.sum(1, keepdims=True)
        c = {"dreg": w_bar - w_bar**2, "w": w_bar, "w2": w_bar**2}[weights]
        dlogw_dz = -(z - p_mean) / POST_SD**2 + (z - q_mean) / s**2
        dz = np.stack([np.full_like(z, x), np.ones_like(z), s * eps])  # ∂z/∂(a, b, log_s)
        out[:, t] = -(c * dlogw_dz * dz).sum(-1).T
    return out


def per_type(grads: np.ndarray) -> np.ndarray:
    """Per-datapoint gradients ``(..., N, 3)`` (``N = replicas · NUM_TYPES`` in the layout of
    :func:`data`) as draws per type, ``(draws, NUM_TYPES, 3)``."""
    return np.asarray(grads, np.float64).reshape(-1, NUM_TYPES, 3)


def mean_and_se(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over independent draws ``(n, ...)`` and its standard error."""
    return draws.mean(0), draws.std(0, ddof=1) / math.sqrt(len(draws))


def log_variance_ratio(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``log(Var first / Var second)`` of two independent samples ``(n, ...)`` and its standard
    error: ``Var(log σ̂²) ≈ (κ − 1)/n`` with ``κ`` the sample kurtosis (delta method)."""

    def log_var(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        centred = draws - draws.mean(0)
        m2 = (centred**2).mean(0)
        kurtosis = (centred**4).mean(0) / m2**2
        return np.log(draws.var(0, ddof=1)), (kurtosis - 1) / len(draws)

    (lv1, v1), (lv2, v2) = log_var(first), log_var(second)
    return lv1 - lv2, np.sqrt(v1 + v2)


def z_scores(draws: np.ndarray, expected: np.ndarray) -> np.ndarray:
    mean, se = mean_and_se(draws)
    return (mean - expected) / se


def two_sample_z(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    (m1, se1), (m2, se2) = mean_and_se(first), mean_and_se(second)
    return (m1 - m2) / np.sqrt(se1**2 + se2**2)


# -- the programs and the runs shared by the backends' tests and the cross-backend test -------
#: The estimator configurations run on the case, by name: ``ReweightedWakeSleep`` arguments
#: (besides ``K`` and ``vectorize_particles``) and whether the plate is sub-sampled (a
#: quarter of the datapoints per evaluation, scaled by 4).
CONFIGS = {
    "score": ({"wake_phi": "score"}, False),
    "dreg": ({"wake_phi": "dreg"}, False),
    "mixed": ({"wake_phi": "dreg", "insomnia": 0.5, "num_sleep_particles": 5}, False),
    "subsampled": ({"wake_phi": "dreg"}, True),
}
GUIDES = {"poor": GUIDE, "exact": EXACT_GUIDE}
SUBSAMPLE = (REPLICAS * NUM_TYPES) // 4


def expected_grads(num_particles: int = NUM_PARTICLES) -> dict[str, np.ndarray]:
    """The exact expectation of each configuration's per-datapoint guide gradient."""
    wake = exact_wake_phi_grad(num_particles)
    return {"score": wake, "dreg": wake, "mixed": 0.5 * wake + 0.5 * sleep_phi_grad(),
            "subsampled": wake}  # fmt: skip


def pyro_programs(replicas: int = REPLICAS, guide_values: dict[str, float] = GUIDE):
    """Pyro's model, guide and data (float64). The guide's ``a``, ``b``, ``log_s`` are
    ``(N,)`` parameters; with ``subsample_size`` both programs read the mini-batch's rows."""
    import pyro
    import pyro.distributions as dist
    import torch

    x = torch.tensor(data(replicas), dtype=torch.float64)
    size = len(x)

    def model(x, subsample_size=None):
        mu = pyro.param("mu", lambda: torch.tensor(MU, dtype=torch.float64))
        with pyro.plate("data", x.shape[-1], subsample_size=subsample_size) as idx:
            # without sub-sampling the observation *is* the argument, so dreams replace it
            obs = x if subsample_size is None else x[idx]
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=obs)

    def guide(x, subsample_size=None):
        a, b, log_s = (
            pyro.param(
                name,
                lambda name=name: torch.full((size,), guide_values[name], dtype=torch.float64),
            )
            for name in GUIDE_PARAMS
        )
        with pyro.plate("data", x.shape[-1], subsample_size=subsample_size) as idx:
            x_batch = x if subsample_size is None else x[idx]
            pyro.sample("z", dist.Normal(a[idx] * x_batch + b[idx], log_s[idx].exp()))

    return model, guide, x


def pyro_guide_grads(loss, model, guide, x, repeats: int, *args) -> np.ndarray:
    """``repeats`` evaluations of ``loss.differentiable_loss``: the gradients of the guide's
    per-datapoint parameters, ``(repeats, N, 3)``."""
    import pyro
    import torch

    out = []
    for _ in range(repeats):
        value = loss.differentiable_loss(model, guide, x, *args)
        grads = torch.autograd.grad(value, [pyro.param(n).unconstrained() for n in GUIDE_PARAMS])
        out.append(torch.stack(grads, -1).numpy())
    return np.stack(out)


@functools.cache
def pyro_runs(vectorize: bool = True, guide: str = "poor") -> dict[str, np.ndarray]:
    """Pyro's guide gradients for every configuration of :data:`CONFIGS` (``K = 5``,
    ``REPEATS`` evaluations each, seed 0 or 1 for sequential particles), as draws per type
    ``(REPEATS · REPLICAS, NUM_TYPES, 3)``: computed once per process, with one torch thread
    and the parameter store cleared around it."""
    import pyro
    import torch

    from pyro_wakesleep import ReweightedWakeSleep

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pyro.clear_param_store()
        pyro.set_rng_seed(0 if vectorize else 1)
        model, guide_program, x = pyro_programs(guide_values=GUIDES[guide])
        out = {}
        for name, (kwargs, subsampled) in CONFIGS.items():
            loss = ReweightedWakeSleep(
                NUM_PARTICLES, vectorize_particles=vectorize, max_plate_nesting=1, **kwargs
            )
            args = (SUBSAMPLE,) if subsampled else ()
            out[name] = per_type(pyro_guide_grads(loss, model, guide_program, x, REPEATS, *args))
    finally:
        pyro.clear_param_store()
        torch.set_num_threads(threads)
    return out


def numpyro_programs(replicas: int = REPLICAS, guide_values: dict[str, float] = GUIDE):
    """NumPyro's model, guide, data (float32) and parameters, as in :func:`pyro_programs`."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    x = jnp.asarray(data(replicas), jnp.float32)
    size = len(x)
    params = {"mu": jnp.asarray(MU, jnp.float32)} | {
        name: jnp.full(size, guide_values[name], jnp.float32) for name in GUIDE_PARAMS
    }

    def model(x, subsample_size=None):
        mu = numpyro.param("mu", params["mu"])
        with numpyro.plate("data", x.shape[-1], subsample_size=subsample_size) as idx:
            obs = x if subsample_size is None else x[idx]
            z = numpyro.sample("z", dist.Normal(mu, 1.0))
            numpyro.sample("x", dist.Normal(z, 1.0), obs=obs)

    def guide(x, subsample_size=None):
        a, b, log_s = (numpyro.param(name, params[name]) for name in GUIDE_PARAMS)
        with numpyro.plate("data", x.shape[-1], subsample_size=subsample_size) as idx:
            x_batch = x if subsample_size is None else x[idx]
            numpyro.sample("z", dist.Normal(a[idx] * x_batch + b[idx], jnp.exp(log_s[idx])))

    return model, guide, x, params


def numpyro_guide_grad_function(losses: dict, model, guide, x):
    """A jitted ``(params, key) -> {name: (N, 3)}``: for each ``name: (loss, args)`` the
    gradient of ``loss.loss`` with respect to the guide's per-datapoint parameters, each loss
    with its own key split from ``key`` (one compilation for all of them)."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def grads(params, key):
        out = {}
        for sub, (name, (loss, args)) in zip(
            jax.random.split(key, len(losses)), losses.items(), strict=True
        ):
            g = jax.grad(
                lambda p, loss=loss, sub=sub, args=args: loss.loss(sub, p, model, guide, x, *args)
            )(params)
            out[name] = jnp.stack([g[n] for n in GUIDE_PARAMS], -1)
        return out

    return grads


@functools.cache
def _numpyro_config_function(vectorize: bool):
    from numpyro_wakesleep import ReweightedWakeSleep

    model, guide, x, _ = numpyro_programs()
    losses = {
        name: (
            ReweightedWakeSleep(NUM_PARTICLES, vectorize_particles=vectorize, **kwargs),
            (SUBSAMPLE,) if subsampled else (),
        )
        for name, (kwargs, subsampled) in CONFIGS.items()
    }
    return numpyro_guide_grad_function(losses, model, guide, x)


@functools.cache
def numpyro_runs(vectorize: bool = True, guide: str = "poor") -> dict[str, np.ndarray]:
    """NumPyro's guide gradients for every configuration of :data:`CONFIGS`, as
    :func:`pyro_runs` (keys split from 0, or 1 for sequential particles; one compilation per
    ``vectorize``, shared by both guides; computed once per process)."""
    import jax

    grads = _numpyro_config_function(vectorize)
    _, _, _, params = numpyro_programs(guide_values=GUIDES[guide])
    keys = jax.random.split(jax.random.PRNGKey(0 if vectorize else 1), REPEATS)
    runs = [grads(params, key) for key in keys]
    return {name: per_type(np.stack([np.asarray(run[name]) for run in runs])) for name in CONFIGS}
