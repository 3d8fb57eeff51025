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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from jax import Array, random

from wakesleep.contract import check_draw_arguments
from wakesleep.inference_data import (
    build_inference_data,
    draw_axes,
    importance_resample,
    observed_axes,
)

from .traces import (
    Trace,
    importance_chunks,
    observed_values,
    sample_sites,
    subsample_indices,
)

__all__ = ["importance_resample", "to_inference_data"]


def _check_params(params: Any) -> None:
    if not isinstance(params, Mapping):
        raise ValueError(
            "params must be a dict of parameter values, name -> constrained value (e.g. "
            f"svi.get_params(state) or svi_result.params), got {type(params).__name__}. The "
            "model's arguments follow it: to_inference_data(model, guide, params, x, ...)."
        )


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


def _to_numpy(value: Array, site: dict) -> np.ndarray:
    """Draws as NumPy; those of a discrete site as ``int64``, as the Pyro backend stores them."""
    array = np.asarray(value)
    if site["fn"].support.is_discrete:
        return array.astype(np.int64)  # JAX draws int32 (or floats, for some distributions)
    return array


def _latent_draws(
    name: str, site: dict, value: np.ndarray, plate_nesting: int
) -> tuple[np.ndarray, list[str]]:
    """A guide site's draws ``(S, *site shape)`` indexed and named by :func:`draw_axes`, the
    site's batch dimensions left-padded to the model's ``plate_nesting`` plates."""
    event_ndim = len(site["fn"].event_shape)
    shape = value.shape[1:]
    batch_shape = shape[: len(shape) - event_ndim]
    batch_shape = (1,) * (plate_nesting - len(batch_shape)) + batch_shape
    value = value.reshape((value.shape[0], *batch_shape, *shape[len(shape) - event_ndim :]))
    plates = {frame.dim: frame.name for frame in site["cond_indep_stack"]}
    index, dims = draw_axes(name, batch_shape, event_ndim, plates)
    return _to_numpy(value[index], site), dims


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

    The particles are those of :func:`numpyro_wakesleep.traces.importance_chunks`: one
    probe pass fixes the plates' sub-sampling indices, so every particle and every chunk
    sees the same mini-batch, and each chunk is one compiled call, cached across calls
    (repeated diagnostics of the same shapes compile once). The draws depend on ``rng_key``
    only: the same key gives the same draws whatever ``chunk_size`` and ``vectorize`` are.

    Args:
        model, guide: the NumPyro programs given to the objective.
        params: parameter values, name -> *constrained* value, as
            ``svi.get_params(state)`` or ``svi_result.params`` return them. A
            ``numpyro.param`` site missing from it takes its initial value (drawn once, for
            all particles, when the initialiser is random).
        *args: the programs' positional arguments (the data). Array arguments are passed
            to the compiled particle function as arguments; other values (a data-set size,
            say) are static.
        **kwargs: their keyword arguments, treated like ``*args``.
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
    _check_params(params)
    check_draw_arguments(
        num_samples=num_samples,
        chunk_size=chunk_size,
        max_plate_nesting=max_plate_nesting,
        vectorize=vectorize,
    )
    log_weights: list[np.ndarray] = []
    draws: dict[str, list[np.ndarray]] = {}
    for chunk in importance_chunks(
        model,
        guide,
        args,
        kwargs,
        rng_key=_as_key(rng_key),
        params=dict(params),
        num_particles=num_samples,
        chunk_size=chunk_size or num_samples,
        max_plate_nesting=max_plate_nesting,
        vectorize=vectorize,
        keep_draws=True,
    ):
        log_weights.append(np.asarray(chunk.log_weights, dtype=np.float64))
        for name, value in chunk.draws.items():
            draws.setdefault(name, []).append(np.asarray(value))

    shared = chunk.probe
    model_trace, guide_trace = shared.model_trace, shared.guide_trace
    traces = (guide_trace, model_trace)
    weight_dims = [frame.name for frame in sorted(shared.data_plates.values(), key=lambda f: f.dim)]
    posterior: dict[str, np.ndarray] = {}
    dims: dict[str, list[str]] = {}
    for name, values in draws.items():
        posterior[name], dims[name] = _latent_draws(
            name, guide_trace[name], np.concatenate(values, axis=0), shared.plate_nesting
        )
    observed = {}
    for name, value in observed_values(model_trace).items():
        site = model_trace[name]
        observed[name] = np.asarray(value)
        dims[name] = observed_axes(
            name,
            observed[name].shape,
            len(site["fn"].event_shape),
            {frame.dim: (frame.name, frame.size) for frame in site["cond_indep_stack"]},
        )
    coords = _plate_coords(traces)
    return build_inference_data(
        posterior=posterior,
        log_weight=np.concatenate(log_weights, axis=0),
        observed=observed,
        dims=dims,
        weight_dims=weight_dims,
        coords=coords,
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
