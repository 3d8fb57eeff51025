"""ArviZ diagnostics of a trained NumPyro guide as an importance sampler of the posterior.

::

    from numpyro_wakesleep.diagnostics import importance_resample, to_inference_data

    params = svi.get_params(state)          # or svi_result.params
    idata = to_inference_data(model, guide, params, x, num_samples=1000,
                              rng_key=jax.random.PRNGKey(1))
    idata.sample_stats["pareto_k"]          # PSIS k̂ per datapoint: < 0.7 is trustworthy
    posterior = importance_resample(idata)  # unweighted draws for az.summary, az.plot_posterior

The weights are those of the objectives (:mod:`numpyro_wakesleep.traces`): one set per
element of the data plate(s), joint where a global latent exists. This is the mirror of
:mod:`pyro_wakesleep.diagnostics`; both hand NumPy arrays to the backend-neutral
:func:`wakesleep.inference_data.build_inference_data`, so the two backends name
dimensions, coordinates and statistics alike. Importing this module imports ArviZ;
``import numpyro_wakesleep`` alone does not.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from jax import Array, random

from wakesleep.contract import check_draw_arguments
from wakesleep.inference_data import build_inference_data, importance_resample

from .traces import (
    Trace,
    check_model_guide_match,
    data_plates,
    guess_plate_nesting,
    join_arguments,
    log_density,
    observed_values,
    run_guide_and_model,
    sample_sites,
    split_arguments,
    subsample_indices,
)

__all__ = ["importance_resample", "to_inference_data"]


def _check_arguments(
    params: Any, num_samples: Any, chunk_size: Any, max_plate_nesting: Any, vectorize: Any
) -> None:
    if not isinstance(params, Mapping):
        raise ValueError(
            "params must be a dict of parameter values, name -> constrained value (e.g. "
            f"svi.get_params(state) or svi_result.params), got {type(params).__name__}. The "
            "model's arguments follow it: to_inference_data(model, guide, params, x, ...)."
        )
    check_draw_arguments(num_samples, chunk_size, max_plate_nesting, vectorize)


def _as_key(rng_key: Any) -> Array:
    """A JAX PRNG key from a key or an integer seed."""
    if isinstance(rng_key, numbers.Integral) and not isinstance(rng_key, bool):
        return random.PRNGKey(int(rng_key))
    if isinstance(rng_key, jax.Array | np.ndarray):
        return jnp.asarray(rng_key)
    raise TypeError(
        "rng_key must be a JAX PRNG key (e.g. jax.random.PRNGKey(0)) or an integer seed, "
        f"got {rng_key!r}. NumPyro has no global random state: pass a fresh key for fresh draws."
    )


def _draw_chunk(
    fixed: dict[str, Array],
    arrays: list[Array],
    keys: Array,
    *,
    model: Callable,
    guide: Callable,
    structure: tuple,
    plate_nesting: int,
    keep: frozenset[int],
    data_scale: float,
    latents: tuple[str, ...],
    vectorize: bool,
) -> tuple[Array, dict[str, Array]]:
    """Log-weights ``(len(keys), *plate dims)`` and guide draws of one chunk of particles.

    Every particle substitutes ``fixed`` (parameters and the probe's mini-batch indices);
    log-densities are reduced to the data plates ``keep`` and divided by their sub-sampling
    factor ``data_scale``, exactly as :func:`numpyro_wakesleep.traces.importance_traces` does.
    """
    args, kwargs = join_arguments(structure, arrays)

    def particle(key: Array) -> tuple[Array, dict[str, Array]]:
        model_trace, guide_trace = run_guide_and_model(model, guide, args, kwargs, fixed, key)
        log_p = log_density(model_trace, keep, plate_nesting, data_scale)
        if log_p is None:
            raise ValueError(
                "The model has no numpyro.sample statements: there is nothing to score."
            )
        log_q = log_density(guide_trace, keep, plate_nesting, data_scale)
        log_w = log_p if log_q is None else log_p - log_q
        return log_w, {name: guide_trace[name]["value"] for name in latents}

    return jax.vmap(particle)(keys) if vectorize else jax.lax.map(particle, keys)


_STATIC = (
    "model", "guide", "structure", "plate_nesting", "keep", "data_scale", "latents", "vectorize",
)  # fmt: skip
#: Compiled once per (model, guide, static arguments, chunk size, input shapes), as the
#: chunks of :mod:`numpyro_wakesleep.evaluation`: repeated diagnostics do not recompile.
_jitted_draw_chunk = jax.jit(_draw_chunk, static_argnames=_STATIC)


def _chunk_function(**static: Any) -> Callable:
    """The cached jitted chunk function; a fresh one when something static is unhashable."""
    try:
        hash(tuple(static.values()))
    except TypeError:
        return jax.jit(partial(_draw_chunk, **static))
    return partial(_jitted_draw_chunk, **static)


def _full_size(name: str, size: int, traces: tuple[Trace, ...]) -> int:
    """Full size of plate ``name`` (before sub-sampling) as its plate site records it."""
    for tr in traces:
        site = tr.get(name)
        if site is not None and site["type"] == "plate":
            return int(site["args"][0])
    return size


def _to_numpy(value: Array, site: dict) -> np.ndarray:
    """Draws as NumPy; those of a discrete site as ``int64``, as the Pyro backend stores them."""
    array = np.asarray(value)
    if site["fn"].support.is_discrete:
        return array.astype(np.int64)  # JAX draws int32 (or floats, for some distributions)
    return array


def _latent_axes(
    name: str, site: dict, value: np.ndarray, plate_nesting: int
) -> tuple[np.ndarray, list[str]]:
    """A guide site's draws ``(S, *site shape)`` with their size-1 non-plate axes dropped.

    The site's batch dimensions are left-padded to the model's ``plate_nesting`` plates.
    Plate axes are named after their plate; other batch axes of size > 1, then the event
    axes, are ``"{name}_dim_{i}"`` (as :mod:`pyro_wakesleep.diagnostics` names them).
    """
    event_ndim = len(site["fn"].event_shape)
    shape = value.shape[1:]
    batch_shape, event_shape = shape[: len(shape) - event_ndim], shape[len(shape) - event_ndim :]
    batch_shape = (1,) * (plate_nesting - len(batch_shape)) + batch_shape
    value = value.reshape((value.shape[0], *batch_shape, *event_shape))
    plates = {frame.dim: frame.name for frame in site["cond_indep_stack"]}
    names: list[str] = ["draw"]
    index: list[int | slice] = [slice(None)]
    extra = 0
    for axis, size in enumerate(batch_shape):
        dim = axis - len(batch_shape)  # the plate dim this axis stands for
        if dim in plates:
            names.append(plates[dim])
        elif size == 1:
            index.append(0)
            continue
        else:
            names.append(f"{name}_dim_{extra}")
            extra += 1
        index.append(slice(None))
    names += [f"{name}_dim_{extra + i}" for i in range(event_ndim)]
    return value[tuple(index)], names


def _observed_axes(name: str, site: dict, value: np.ndarray) -> list[str]:
    """Names of an observed value's axes: its plates where sizes agree, else defaults."""
    event_ndim = len(site["fn"].event_shape)
    batch_ndim = value.ndim - event_ndim
    plates = {frame.dim: frame for frame in site["cond_indep_stack"]}
    names, extra = [], 0
    for axis in range(value.ndim):
        frame = plates.get(axis - batch_ndim) if axis < batch_ndim else None
        if frame is not None and value.shape[axis] == frame.size:
            names.append(frame.name)
        else:
            names.append(f"{name}_dim_{extra}")
            extra += 1
    return names


def to_inference_data(
    model: Callable,
    guide: Callable,
    params: Mapping[str, Any],
    *args: Any,
    num_samples: int = 1000,
    rng_key: Array | int,
    vectorize: bool = True,
    max_plate_nesting: float = math.inf,
    chunk_size: int | None = None,
    **kwargs: Any,
) -> Any:
    """Importance-weighted guide draws as an ArviZ ``InferenceData``.

    Draws ``num_samples`` particles from ``guide(*args, **kwargs)``, scores them under
    ``model(*args, **kwargs)`` with the parameter values ``params`` substituted into both,
    and weights them by ``log p(x, z) − log q(z | x)``, per element of the data plate(s) —
    the plates enclosing every sample site — exactly as the objectives do, or jointly when
    a global latent exists (then, with a sub-sampled plate, the scaled log-densities enter
    the weights, see :mod:`numpyro_wakesleep.traces`).

    A probe pass (one run of guide and model) fixes the plates' sub-sampling indices and
    the plate structure; the particles then run compiled (``jax.jit``), ``jax.vmap``-ed over
    their keys or in a ``jax.lax.map``, with those indices substituted, so every particle
    and every chunk sees the same mini-batch. The compiled chunk is cached across calls
    (model, guide and non-array arguments are static, parameters and arrays traced), so
    repeated diagnostics of the same shapes compile once. The draws depend on ``rng_key`` only: the
    same key gives the same draws whatever ``chunk_size`` and ``vectorize`` are.

    Args:
        model, guide: the NumPyro programs given to the objective.
        params: parameter values, name -> *constrained* value, as
            ``svi.get_params(state)`` or ``svi_result.params`` return them. A
            ``numpyro.param`` site missing from it takes its initial value (drawn once, for
            all particles, when the initialiser is random).
        *args, **kwargs: the programs' arguments (the data). Array arguments are passed
            to the compiled particle function as arguments; other values (a data-set size,
            say) are static.
        num_samples: number of draws ``S`` from the guide.
        rng_key: a JAX PRNG key (or an integer seed). Required, keyword-only: NumPyro
            has no global random state, and a silent default key would give the same draws
            on every call (repeating a call to gauge the spread of ``k̂`` would then show
            none). Pass a fresh key for fresh draws.
        vectorize: ``jax.vmap`` the particles (``True``) or run them one at a time with
            ``jax.lax.map`` (a guide that cannot be batched).
        max_plate_nesting: the model's own nested plates; ``inf`` reads it off the probe
            pass.
        chunk_size: run at most this many particles at a time, so memory stays bounded.

    Returns:
        ``InferenceData`` (see :func:`wakesleep.inference_data.build_inference_data`):
        ``posterior`` holds every latent site of the guide with dims ``(chain=1, draw=S,
        *plates, *"{site}_dim_{i}")`` — plate dimensions are named after the plate, e.g.
        ``"data"``, and carry the sub-sample indices as coordinates; size-1 axes that are
        not plates are dropped; discrete sites are ``int64``. ``sample_stats`` holds
        ``log_weight`` ``(chain, draw, *data plates)`` (``float64``; computed in JAX's
        default precision, float32 unless ``jax_enable_x64``), ``pareto_k`` and ``ess`` per
        datapoint; ``observed_data`` the observed sites. Every group's attrs carry
        ``inference_library="numpyro"`` and its version.

    Raises:
        ImportError: when ArviZ is not installed (``pip install 'wakesleep[arviz]'``).
        TypeError: when ``rng_key`` is neither a key nor an integer.
        ValueError: on invalid arguments, a model/guide mismatch, or a datapoint whose
            draws all have weight zero.
    """
    _check_arguments(params, num_samples, chunk_size, max_plate_nesting, vectorize)
    probe_key, particles_key = random.split(_as_key(rng_key))
    params = dict(params)
    model_trace, guide_trace = run_guide_and_model(model, guide, args, kwargs, params, probe_key)
    check_model_guide_match(model_trace, guide_trace)
    traces = (guide_trace, model_trace)
    # Parameters missing from ``params`` took their initial value in the probe pass; every
    # particle gets that value (a random initialiser must not draw one per particle).
    initial = {
        n: site["value"] for tr in traces for n, site in tr.items() if site["type"] == "param"
    }
    fixed = {**initial, **params, **subsample_indices(*traces)}
    plate_nesting = (
        guess_plate_nesting(model_trace, guide_trace)
        if max_plate_nesting == math.inf
        else int(max_plate_nesting)
    )
    plates = data_plates(model_trace, guide_trace)
    data_scale = math.prod(_full_size(n, f.size, traces) / f.size for n, f in plates.items())
    keep = frozenset(frame.dim for frame in plates.values())
    # (S, *plate dims), of size 1 except for data plates: keep only the latter
    weight_index = (slice(None),) + tuple(
        slice(None) if dim in keep else 0 for dim in range(-plate_nesting, 0)
    )
    weight_dims = [frame.name for frame in sorted(plates.values(), key=lambda f: f.dim)]
    latent_sites = {
        name: site for name, site in sample_sites(guide_trace) if not site["is_observed"]
    }

    structure, arrays = split_arguments((args, kwargs))
    run = _chunk_function(
        model=model,
        guide=guide,
        structure=structure,
        plate_nesting=plate_nesting,
        keep=keep,
        data_scale=data_scale,
        latents=tuple(latent_sites),
        vectorize=vectorize,
    )
    keys = random.split(particles_key, num_samples)
    step = min(chunk_size or num_samples, num_samples)
    pad = -num_samples % step
    if pad:  # the last chunk is topped up with repeated keys (one compilation), then cut
        keys = jnp.concatenate([keys, keys[:pad]])
    log_weights: list[np.ndarray] = []
    draws: dict[str, list[np.ndarray]] = {name: [] for name in latent_sites}
    for start in range(0, num_samples, step):
        log_w, values = run(fixed, arrays, keys[start : start + step])
        kept = min(step, num_samples - start)
        log_weights.append(np.asarray(log_w, dtype=np.float64)[:kept][weight_index])
        for name, value in values.items():
            draws[name].append(np.asarray(value)[:kept])

    posterior: dict[str, np.ndarray] = {}
    dims: dict[str, list[str]] = {}
    for name, site in latent_sites.items():
        value = _to_numpy(np.concatenate(draws[name], axis=0), site)
        posterior[name], dims[name] = _latent_axes(name, site, value, plate_nesting)
    observed = {}
    for name, value in observed_values(model_trace).items():
        observed[name] = np.asarray(value)
        dims[name] = _observed_axes(name, model_trace[name], observed[name])
    coords = _plate_coords(traces)
    return build_inference_data(
        posterior,
        np.concatenate(log_weights, axis=0),
        observed,
        dims,
        weight_dims,
        coords,
        attrs={"inference_library": "numpyro", "inference_library_version": numpyro.__version__},
    )


def _plate_coords(traces: tuple[Trace, ...]) -> dict[str, np.ndarray]:
    """Coordinates of every plate dimension: its sub-sample indices (``0..size-1`` unless
    sub-sampled, as NumPyro records them)."""
    indices = subsample_indices(*traces)
    coords: dict[str, np.ndarray] = {}
    for tr in traces:
        for _, site in sample_sites(tr):
            for frame in site["cond_indep_stack"]:
                if frame.name not in coords:
                    value = indices.get(frame.name)
                    coords[frame.name] = (
                        np.arange(frame.size)
                        if value is None
                        else np.asarray(value, dtype=np.int64)  # int32 in JAX, int64 in Pyro
                    )
    return coords
