"""Log-likelihood evaluation: importance sampling with the guide.

The importance estimate of ``log p(x)`` is the IWAE bound with many particles,

.. math:: \\hat{\\ell}_K(x) = \\log \\frac{1}{K} \\sum_{k=1}^K
          \\frac{p_\\theta(x, z_k)}{q_\\phi(z_k | x)}, \\qquad z_k \\sim q_\\phi(\\cdot | x),

a stochastic lower bound that tightens as ``K`` grows (Burda et al. 2016). Particles
are drawn in chunks and combined with a running log-sum-exp, so memory does not
grow with ``K``. (Exact enumeration of small Helmholtz machines is in
:mod:`wakesleep.trainer.exact`, fed by :meth:`~numpyro_wakesleep.helmholtz.HelmholtzMachine.generative_weights`.)

Chunks are those of :func:`numpyro_wakesleep.traces.importance_chunks`: one compiled
call each, cached across calls (model, guide, the chunk size and every non-array
argument, e.g. ``num_data``, are static; the parameters and array arguments traced), so
evaluating many batches of the same shape compiles once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import jax.numpy as jnp
from jax import Array
from jax.scipy.special import logsumexp

from .traces import importance_chunks

__all__ = ["importance_log_likelihood", "importance_log_weights"]


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
    for chunk in importance_chunks(
        model,
        guide,
        args,
        kwargs,
        rng_key=rng_key,
        params=params,
        num_particles=num_particles,
        chunk_size=chunk_size,
        max_plate_nesting=max_plate_nesting,
    ):
        yield chunk.log_weights


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
