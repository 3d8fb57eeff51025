"""Log-likelihood evaluation: importance sampling with the guide.

The importance estimate of ``log p(x)`` is the IWAE bound with many particles,

.. math:: \\hat{\\ell}_K(x) = \\log \\frac{1}{K} \\sum_{k=1}^K
          \\frac{p_\\theta(x, z_k)}{q_\\phi(z_k | x)}, \\qquad z_k \\sim q_\\phi(\\cdot | x),

a stochastic lower bound that tightens as ``K`` grows (Burda et al. 2016). Particles
are drawn in chunks and combined with a running log-sum-exp, so memory does not
grow with ``K``. (Exact enumeration of small Helmholtz machines is in
:mod:`wakesleep.exact`, fed by :meth:`~numpyro_wakesleep.helmholtz.HelmholtzMachine.generative_weights`.)

Each chunk is one jitted call of :func:`numpyro_wakesleep.traces.importance_traces`.
The compiled chunk is cached across calls: model, guide, the chunk size and every
non-array argument (e.g. ``num_data``) are static, the parameters and array arguments
are traced, so evaluating many batches of the same shape compiles once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array, random
from jax.scipy.special import logsumexp

from .traces import (
    importance_traces,
    join_arguments,
    run_guide_and_model,
    split_arguments,
    subsample_indices,
)

__all__ = ["importance_log_likelihood", "importance_log_weights"]


def _chunk_log_weights(
    rng_key: Array,
    params: dict[str, Array],
    arrays: list,
    *,
    model: Callable,
    guide: Callable,
    structure: tuple,
    num_particles: int,
    max_plate_nesting: float,
) -> Array:
    """Log-weights ``(num_particles, *datapoints)`` of one chunk of particles."""
    args, kwargs = join_arguments(structure, arrays)
    wake = importance_traces(
        model,
        guide,
        args,
        kwargs,
        rng_key=rng_key,
        params=params,
        num_particles=num_particles,
        max_plate_nesting=max_plate_nesting,
        vectorize=True,
    )
    log_weights = jax.lax.stop_gradient(wake.log_weights)
    return log_weights.reshape((len(log_weights), *wake.per_datapoint(log_weights[0]).shape))


_STATIC = ("model", "guide", "structure", "num_particles", "max_plate_nesting")
#: Compiled once per (model, guide, static arguments, chunk size, input shapes).
_jitted_chunk_log_weights = jax.jit(_chunk_log_weights, static_argnames=_STATIC)


def _chunk_function(model: Callable, guide: Callable, structure: tuple) -> Callable:
    """The cached jitted chunk function; a fresh one when something static is unhashable."""
    try:
        hash((model, guide, structure))
    except TypeError:
        return jax.jit(
            partial(_chunk_log_weights, model=model, guide=guide, structure=structure),
            static_argnames=("num_particles", "max_plate_nesting"),
        )
    return partial(_jitted_chunk_log_weights, model=model, guide=guide, structure=structure)


def _log_weight_chunks(
    model: Callable,
    guide: Callable,
    params: dict[str, Array],
    args: tuple,
    kwargs: dict,
    rng_key: Array,
    num_particles: int,
    chunk_size: int,
    max_plate_nesting: float,
) -> Iterator[Array]:
    """Per-datapoint log-weights ``(chunk, *datapoints)``, ``chunk_size`` particles at a time."""
    if num_particles < 1 or chunk_size < 1:
        raise ValueError(
            f"num_particles and chunk_size must be >= 1, got {num_particles} and {chunk_size}."
        )
    if max_plate_nesting != math.inf:
        max_plate_nesting = int(max_plate_nesting)
    # One mini-batch for every chunk: its plate indices, drawn once, are substituted like
    # parameters (each chunk's own probe pass would otherwise draw a mini-batch of its own).
    probe_key, rng_key = random.split(rng_key)
    model_trace, guide_trace = run_guide_and_model(model, guide, args, kwargs, params, probe_key)
    params = {**params, **subsample_indices(guide_trace, model_trace)}
    structure, arrays = split_arguments((args, kwargs))
    chunk = _chunk_function(model, guide, structure)
    starts = range(0, num_particles, chunk_size)
    keys = random.split(rng_key, len(starts))
    for key, start in zip(keys, starts, strict=True):
        yield chunk(
            key,
            params,
            arrays,
            num_particles=min(chunk_size, num_particles - start),
            max_plate_nesting=max_plate_nesting,
        )


def importance_log_likelihood(
    model: Callable,
    guide: Callable,
    params: dict[str, Array],
    *args: Any,
    rng_key: Array,
    num_particles: int = 5000,
    chunk_size: int = 500,
    max_plate_nesting: float = math.inf,
    **kwargs: Any,
) -> Array:
    """Importance estimate of ``log p(x)`` per datapoint (nats), the guide as proposal.

    Weights are per datapoint over the data plates, exactly as in the objectives; with a
    global latent the estimate is of the joint ``log p(x_1..x_N)`` (a 0-d array).

    :param params: constrained parameter values by name, e.g. ``svi.get_params(state)``.
    :param rng_key: the random key of the guide's draws.
    :param num_particles: ``K``, guide samples per datapoint.
    :param chunk_size: particles drawn at once; bounds the memory used.
    :param max_plate_nesting: the model's plates (guessed when ``inf``).
    """
    total = None
    for chunk in _log_weight_chunks(
        model, guide, params, args, kwargs, rng_key, num_particles, chunk_size, max_plate_nesting
    ):
        chunk = logsumexp(chunk, axis=0)
        total = chunk if total is None else jnp.logaddexp(total, chunk)
    return total - math.log(num_particles)


def importance_log_weights(
    model: Callable,
    guide: Callable,
    params: dict[str, Array],
    *args: Any,
    rng_key: Array,
    num_particles: int = 1000,
    chunk_size: int = 500,
    max_plate_nesting: float = math.inf,
    **kwargs: Any,
) -> Array:
    """``log p(x, z_k) − log q(z_k | x)`` for ``z_k ~ q``: shape ``(num_particles, *datapoints)``."""
    return jnp.concatenate(
        list(
            _log_weight_chunks(
                model,
                guide,
                params,
                args,
                kwargs,
                rng_key,
                num_particles,
                chunk_size,
                max_plate_nesting,
            )
        )
    )
