"""Log-likelihood evaluation: importance sampling with the guide, or exact enumeration.

The importance estimate of ``log p(x)`` is the IWAE bound with many particles,

.. math:: \\hat{\\ell}_K(x) = \\log \\frac{1}{K} \\sum_{k=1}^K
          \\frac{p_\\theta(x, z_k)}{q_\\phi(z_k | x)}, \\qquad z_k \\sim q_\\phi(\\cdot | x),

a stochastic lower bound that tightens as ``K`` grows (Burda et al. 2016). Particles
are drawn in chunks and combined with a running log-sum-exp, so memory does not
grow with ``K``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from .traces import importance_chunks

__all__ = ["importance_log_likelihood", "importance_log_weights"]


def _log_weight_chunks(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    chunk_size: int,
    max_plate_nesting: float,
) -> Iterator[Tensor]:
    """Per-datapoint log-weights ``(chunk, *datapoints)``, ``chunk_size`` particles at a time."""
    for wake in importance_chunks(
        model,
        guide,
        args,
        kwargs,
        num_particles=num_particles,
        chunk_size=chunk_size,
        max_plate_nesting=max_plate_nesting,
    ):
        yield wake.datapoint_log_weights


def importance_log_likelihood(
    model: Callable,
    guide: Callable,
    *args,
    num_particles: int = 5000,
    chunk_size: int = 500,
    max_plate_nesting: float = math.inf,
    **kwargs,
) -> Tensor:
    """Importance estimate of ``log p(x)`` per datapoint (nats), the guide as proposal.

    Weights are per datapoint over the data plates, exactly as in the objectives; with a
    global latent the estimate is of the joint ``log p(x_1..x_N)`` (a 0-d tensor).

    :param num_particles: ``K``, guide samples per datapoint.
    :param chunk_size: particles drawn at once; bounds the memory used.
    """
    total = None
    with torch.no_grad():
        for chunk in _log_weight_chunks(
            model, guide, args, kwargs, num_particles, chunk_size, max_plate_nesting
        ):
            chunk = torch.logsumexp(chunk, dim=0)
            total = chunk if total is None else torch.logaddexp(total, chunk)
    return total - math.log(num_particles)


def importance_log_weights(
    model: Callable,
    guide: Callable,
    *args,
    num_particles: int = 1000,
    chunk_size: int = 500,
    max_plate_nesting: float = math.inf,
    **kwargs,
) -> Tensor:
    """``log p(x, z_k) − log q(z_k | x)`` for ``z_k ~ q``: shape ``(num_particles, *datapoints)``."""
    with torch.no_grad():
        return torch.cat(
            list(
                _log_weight_chunks(
                    model, guide, args, kwargs, num_particles, chunk_size, max_plate_nesting
                )
            )
        )
