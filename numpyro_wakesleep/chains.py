"""The persistent per-datapoint Markov chains of joint stochastic approximation (JSA).

:class:`~numpyro_wakesleep.JointStochasticApproximation` keeps, for every datapoint ``n``
of the data plate, a latent sample ``z̄_n`` whose law tends to the exact posterior
``p_θ(z | x_n)``. This module builds that state (:func:`empty_chains`), reads the rows of
a step's mini-batch, scores them under the current model and guide, and returns the
chains' new states (:func:`advance_chains`). The sampler itself is the pure function
:func:`numpyro_wakesleep.objectives.independence_chain`.

The chains are a pytree carried functionally, as SVI carries ``numpyro.mutable`` state:
under the key :data:`CHAINS` of the SVI state's ``mutable_state``::

    {"values": {site: (N, *other plate dims, *event)}, "seen": (N,) bool, "age": (N,) int32}

Datapoints are identified by the data plate's sub-sample indices (``0..N−1`` without
sub-sampling); ``seen[n]`` says whether datapoint ``n`` has a state yet (a datapoint met
for the first time starts from its first proposal) and ``age[n]`` counts the steps since
its chain last moved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, random
from numpyro.primitives import CondIndepStackFrame

from wakesleep.contract import chain_index_error, chain_plate_error, chain_size_error

from . import objectives
from .traces import ImportanceTraces, Probe, _full_size, _score_particles, sample_sites

__all__ = ["CHAINS", "ChainStep", "advance_chains", "chain_plate", "empty_chains"]

#: How a user starts chains afresh, for the messages.
_RESTART = "create a new SVI state with loss.init_state(svi, rng_key, *args)"

#: Where the chains live in the SVI state's ``mutable_state``.
CHAINS = "wakesleep_chains"


def chain_plate(data_plates: dict[str, CondIndepStackFrame]) -> CondIndepStackFrame:
    """The one data plate that keys the chains; an error when there is none or several."""
    if len(data_plates) != 1:
        raise chain_plate_error(list(data_plates))
    return next(iter(data_plates.values()))


def _data_axis(value: Array, event_dim: int, frame: CondIndepStackFrame) -> int:
    """The data plate's axis in one particle's value of a site."""
    return jnp.ndim(value) - event_dim + frame.dim


def empty_chains(shared: Probe | ImportanceTraces) -> dict:
    """Chains for every datapoint of the data plate, none of them seen yet, shaped after the
    guide sites of a :func:`~numpyro_wakesleep.traces.probe` pass (or of its traces)."""
    frame = chain_plate(shared.data_plates)
    size = _full_size(frame.name, frame, (shared.guide_trace, shared.model_trace))
    values = {}
    for name, site in sample_sites(shared.guide_trace):
        value = jnp.asarray(site["value"])
        rows = jnp.moveaxis(value, _data_axis(value, site["fn"].event_dim, frame), 0)
        values[name] = jnp.zeros((size, *rows.shape[1:]), rows.dtype)
    return {
        "values": values,
        "seen": jnp.zeros(size, bool),
        "age": jnp.zeros(size, jnp.int32),
    }


@dataclass
class ChainStep:
    """One JSA step's candidates: the chains' states (candidate 0) then the ``K`` proposals.

    ``log_p``, ``log_q`` and ``weights`` have shape ``(K + 1, *plate dims)``; ``weights`` is
    how often the chain held each candidate (:func:`~numpyro_wakesleep.objectives.chain_weights`).
    ``valid`` is false when a sub-sample index lay outside the data plate (under ``jit``,
    where it cannot raise).
    """

    log_p: Array
    log_q: Array
    weights: Array
    acceptance_rate: Array
    mean_age: Array
    valid: Array


def _check(chains: dict, frame: CondIndepStackFrame, size: int, proposals: dict) -> None:
    if len(chains["seen"]) != size:
        raise chain_size_error(frame.name, len(chains["seen"]), size, restart=_RESTART)
    for name, rows in proposals.items():
        kept = chains["values"].get(name)
        if kept is None or kept.shape[1:] != rows.shape[2:]:
            raise ValueError(
                f"Guide site '{name}' has per-datapoint shape {tuple(rows.shape[2:])}, but the "
                f"chains hold {None if kept is None else tuple(kept.shape[1:])}: the latent "
                "sites of model and guide must keep their names and shapes from step to step."
            )


def _indices(wake: ImportanceTraces, frame: CondIndepStackFrame, size: int) -> tuple[Array, Array]:
    """The mini-batch's datapoint indices into the chains, and whether all are in range
    (checked now when the indices are concrete)."""
    indices = jnp.asarray(wake.fixed.get(frame.name, jnp.arange(frame.size)))
    in_range = jnp.all((indices >= 0) & (indices < size))
    if not isinstance(indices, jax.core.Tracer):
        concrete = np.asarray(indices)
        bad = concrete[(concrete < 0) | (concrete >= size)]
        if bad.size:
            raise chain_index_error(frame.name, size, bad.tolist())
    return indices, in_range


def advance_chains(
    chains: dict,
    wake: ImportanceTraces,
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    rng_key: Array,
) -> tuple[ChainStep, dict]:
    """Score the chains of the mini-batch's datapoints, run the independence sampler through
    the step's proposals and return the step and the chains' new state (pure; jit-able).

    ``wake`` holds the ``K`` proposals and their values (``draws`` = every guide site). The
    chains' states are substituted into guide and model at the current parameters (one
    particle, the same mini-batch), so that both ``log p`` and ``log q`` of the states
    carry this step's gradients.
    """
    frame = chain_plate(wake.data_plates)
    size = _full_size(frame.name, frame, (wake.guide_trace, wake.model_trace))
    num_particles = len(wake.log_p)
    axes = {
        name: _data_axis(site["value"], site["fn"].event_dim, frame)
        for name, site in sample_sites(wake.guide_trace)
    }
    proposals = {
        name: jnp.moveaxis(jax.lax.stop_gradient(wake.particle_values[name]), 1 + axis, 1)
        for name, axis in axes.items()
    }  # (K, B, *other plate dims, *event)
    _check(chains, frame, size, proposals)
    indices, in_range = _indices(wake, frame, size)
    seen = chains["seen"][indices]

    # the chains' states; a datapoint met for the first time starts at its first proposal
    states = {}
    for name, rows in proposals.items():
        kept = chains["values"][name][indices]
        states[name] = jnp.where(seen.reshape((-1,) + (1,) * (kept.ndim - 1)), kept, rows[0])
    state_key, sampler_key = random.split(rng_key)
    fixed = {
        **wake.fixed,
        **{name: jnp.moveaxis(states[name], 0, axis) for name, axis in axes.items()},
    }
    state = _score_particles(
        model, guide, args, kwargs, fixed, state_key[None],
        plate_nesting=wake.plate_nesting, keep_dims=frozenset({frame.dim}),
        data_scale=wake.data_scale, vectorize=wake.vectorized,
    )  # fmt: skip
    log_p = jnp.concatenate([jnp.broadcast_to(state.log_p, (1, *wake.log_p.shape[1:])), wake.log_p])
    log_q = jnp.concatenate([jnp.broadcast_to(state.log_q, (1, *wake.log_q.shape[1:])), wake.log_q])

    # the sampler, per datapoint: (K + 1, B) log-weights
    log_weights = jax.lax.stop_gradient(log_p - log_q).reshape(num_particles + 1, -1)
    log_uniforms = jnp.log(random.uniform(sampler_key, log_weights[1:].shape))
    chain, accepted = objectives.independence_chain(log_weights[0], log_weights[1:], log_uniforms)
    weights = objectives.chain_weights(chain).reshape(log_p.shape)

    last = chain[-1]
    batch = jnp.arange(len(last))
    values = {
        name: chains["values"][name]
        .at[indices]
        .set(jnp.concatenate([states[name][None], rows])[last, batch])
        for name, rows in proposals.items()
    }
    moved = jnp.any(accepted, axis=0) | ~seen
    age = jnp.where(moved, 0, chains["age"][indices] + 1)
    new_chains = {
        "values": values,
        "seen": chains["seen"].at[indices].set(True),
        "age": chains["age"].at[indices].set(age),
    }
    # out-of-range indices read and write clamped rows under jit: keep the chains as they were
    new_chains = jax.tree.map(lambda new, old: jnp.where(in_range, new, old), new_chains, chains)
    step = ChainStep(
        log_p=log_p,
        log_q=log_q,
        weights=weights,
        acceptance_rate=jnp.mean(accepted),
        mean_age=jnp.mean(age),
        valid=in_range,
    )
    return step, new_chains
