"""The persistent per-datapoint Markov chains of joint stochastic approximation (JSA).

:class:`~pyro_wakesleep.JointStochasticApproximation` keeps, for every datapoint ``n``
of the data plate, a latent sample ``z̄_n`` whose law tends to the exact posterior
``p_θ(z | x_n)``. This module stores those samples (:class:`Chains`), reads the rows of
a step's mini-batch, scores them under the current model and guide, and writes the
chains' new states back (:func:`advance_chains`). The sampler itself is the pure
function :func:`pyro_wakesleep.objectives.independence_chain`.

Datapoints are identified by the data plate's sub-sample indices (``0..N−1`` without
sub-sampling), so a datapoint keeps its chain across epochs and mini-batches. Each guide
site is stored as one row per datapoint: its value with the data plate's dimension
first, ``(N, *other plate dims, *event)``, on the device where the guide drew it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from wakesleep.contract import chain_index_error, chain_plate_error, chain_size_error

from . import objectives
from .traces import (
    PARTICLE_PLATE,
    ImportanceTraces,
    _reduce,
    mini_batch,
    particle_plate,
    run_guide_and_model,
    sample_sites,
)

__all__ = ["ChainStep", "Chains", "advance_chains", "chain_plate"]

#: How a user starts chains afresh, for the messages.
_RESTART = "start a new JointStochasticApproximation (or call its load_state_dict({}))"


class Chains:
    """One latent state per datapoint of the data plate: the chains of JSA.

    Empty until the first step, which learns the data plate's name and size and each guide
    site's shape. ``seen[n]`` says whether datapoint ``n`` has a state yet (a datapoint met
    for the first time starts from its first proposal); ``age[n]`` counts the steps since
    its chain last moved.
    """

    def __init__(self) -> None:
        self.plate: str | None = None
        self.values: dict[str, Tensor] = {}
        self.seen: Tensor | None = None
        self.age: Tensor | None = None

    @property
    def size(self) -> int:
        """Number of datapoints with a chain slot (0 before the first step)."""
        return 0 if self.seen is None else len(self.seen)

    def state_dict(self) -> dict:
        """Everything needed to continue the chains, as tensors (``torch.save``-able with
        ``weights_only`` loading)."""
        if self.seen is None:
            return {}
        return {
            "plate": self.plate,
            "values": dict(self.values),
            "seen": self.seen,
            "age": self.age,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (an empty dict empties the chains). The tensors are
        copied: steps update the chains in place, which must not change ``state`` (nor the
        chains of another loss whose :meth:`state_dict` it is)."""
        if not state:
            self.__init__()
            return
        missing = {"plate", "values", "seen", "age"} - set(state)
        if missing:
            raise ValueError(f"Not a chain state: keys {sorted(missing)} are missing.")
        self.plate = state["plate"]
        self.values = {name: value.clone() for name, value in state["values"].items()}
        self.seen = state["seen"].clone()
        self.age = state["age"].clone()

    def _allocate(self, plate: str, size: int, rows: dict[str, Tensor]) -> None:
        """Empty slots for ``size`` datapoints, shaped like one row of each site."""
        device = next(iter(rows.values())).device if rows else None
        self.plate = plate
        self.values = {
            name: torch.zeros((size, *r.shape[2:]), dtype=r.dtype, device=r.device)
            for name, r in rows.items()
        }
        self.seen = torch.zeros(size, dtype=torch.bool, device=device)
        self.age = torch.zeros(size, dtype=torch.long, device=device)

    def _check(self, plate: str, size: int, rows: dict[str, Tensor]) -> None:
        if self.plate != plate or self.size != size:
            raise chain_size_error(plate, self.size, size, restart=_RESTART)
        for name, r in rows.items():
            kept = self.values.get(name)
            if kept is None or kept.shape[1:] != r.shape[2:]:
                raise ValueError(
                    f"Guide site '{name}' has per-datapoint shape {tuple(r.shape[2:])}, but "
                    f"the chains hold {None if kept is None else tuple(kept.shape[1:])}: the "
                    "latent sites of model and guide must keep their names and shapes from "
                    "step to step."
                )


@dataclass
class ChainStep:
    """One JSA step's candidates: the chains' states (candidate 0) then the ``K`` proposals.

    ``log_p``, ``log_q`` and ``weights`` have shape ``(K + 1, *plate dims)``; ``weights`` is
    how often the chain held each candidate (:func:`~pyro_wakesleep.objectives.chain_weights`).
    """

    log_p: Tensor
    log_q: Tensor
    weights: Tensor
    acceptance_rate: Tensor
    mean_age: Tensor


def chain_plate(data_plates: dict[str, CondIndepStackFrame]) -> CondIndepStackFrame:
    """The one data plate that keys the chains; an error when there is none or several."""
    if len(data_plates) != 1:
        raise chain_plate_error(list(data_plates))
    return next(iter(data_plates.values()))


def _indices(wake: ImportanceTraces, frame: CondIndepStackFrame, validate: bool) -> Tensor:
    """The mini-batch's datapoint indices into the chains."""
    size = frame.full_size or frame.size
    site = wake.model_trace.nodes.get(frame.name) or wake.guide_trace.nodes.get(frame.name)
    if site is None:
        indices = torch.arange(frame.size)
    else:
        indices = site["value"]
    if validate and len(indices) and (indices.min() < 0 or indices.max() >= size):
        bad = indices[(indices < 0) | (indices >= size)]
        raise chain_index_error(frame.name, size, bad.tolist())
    return indices


def _restore(rows: Tensor, axis: int, like: Tensor, vectorized: bool) -> Tensor:
    """Rows ``(B, *other, *event)`` back into a value shaped as the guide trace holds it."""
    value = rows.movedim(0, axis)
    if vectorized:
        value = value.unsqueeze(0)  # a particle plate of size one
    return value.reshape(value.shape[value.dim() - like.dim() :])


def advance_chains(
    chains: Chains,
    wake: ImportanceTraces,
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    validate: bool = True,
) -> ChainStep:
    """Score the chains of the mini-batch's datapoints, run the independence sampler through
    the step's proposals and write the chains' new states back.

    ``wake`` holds the ``K`` proposals. The chains' states are replayed through guide and
    model at the current parameters (one particle, the same mini-batch), so that both
    ``log p`` and ``log q`` of the states carry this step's gradients. ``validate`` checks
    the sub-sample indices (a host synchronisation).
    """
    frame = chain_plate(wake.data_plates)
    plate_nesting = wake.plate_nesting
    axis = plate_nesting + frame.dim  # the data plate's position among the plate dims
    num_particles = len(wake.log_p)
    indices = _indices(wake, frame, validate)
    sites = [name for name, _ in sample_sites(wake.guide_trace)]
    proposals = {
        name: wake.particle_values[name].movedim(1 + axis, 1).detach() for name in sites
    }  # (K, B, *other plate dims, *event)
    size = frame.full_size or frame.size
    if chains.seen is None:
        chains._allocate(frame.name, size, proposals)
    chains._check(frame.name, size, proposals)
    indices = indices.to(chains.seen.device)
    seen = chains.seen[indices]

    # the chains' states; a datapoint met for the first time starts at its first proposal
    states = {}
    for name, rows in proposals.items():
        kept = chains.values[name][indices]
        states[name] = torch.where(seen.reshape((-1,) + (1,) * (kept.dim() - 1)), kept, rows[0])
    replay_trace = Trace()
    for name in sites:
        site = wake.guide_trace.nodes[name]
        value = _restore(states[name], axis, site["value"], wake.vectorized)
        replay_trace.add_node(name, **{**site, "value": value})
    for name, site in mini_batch(wake.guide_trace, wake.model_trace).nodes.items():
        replay_trace.add_node(name, **site)
    if not wake.vectorized:
        model_trace, guide_trace = run_guide_and_model(
            model, guide, args, kwargs, mini_batch=replay_trace
        )
        keep = frozenset({frame.dim})
        ndim = plate_nesting
    else:
        single = particle_plate(PARTICLE_PLATE, 1, plate_nesting)
        model_trace, guide_trace = run_guide_and_model(
            single(model), single(guide), args, kwargs, mini_batch=replay_trace
        )
        keep = frozenset({frame.dim, -(plate_nesting + 1)})
        ndim = plate_nesting + 1
    log_p_state, log_q_state = _reduce(model_trace, guide_trace, keep, ndim, wake.data_scale)
    if wake.vectorized:
        log_p_state, log_q_state = log_p_state.squeeze(0), log_q_state.squeeze(0)
    log_p = torch.cat([log_p_state.expand(wake.log_p.shape[1:]).unsqueeze(0), wake.log_p])
    log_q = torch.cat([log_q_state.expand(wake.log_q.shape[1:]).unsqueeze(0), wake.log_q])

    # the sampler, per datapoint: (K + 1, B) log-weights
    log_weights = (log_p - log_q).detach().reshape(num_particles + 1, -1)
    log_uniforms = torch.rand_like(log_weights[1:]).log()
    chain, accepted = objectives.independence_chain(log_weights[0], log_weights[1:], log_uniforms)
    weights = objectives.chain_weights(chain).reshape(log_p.shape)

    with torch.no_grad():
        last = chain[-1]
        batch = torch.arange(len(last), device=last.device)
        for name, rows in proposals.items():
            candidates = torch.cat([states[name].unsqueeze(0), rows])
            chains.values[name][indices] = candidates[last, batch]
        moved = accepted.any(0) | ~seen
        age = torch.where(moved, torch.zeros_like(chains.age[indices]), chains.age[indices] + 1)
        chains.age[indices] = age
        chains.seen[indices] = True
    return ChainStep(
        log_p=log_p,
        log_q=log_q,
        weights=weights,
        acceptance_rate=accepted.to(log_weights.dtype).mean(),
        mean_age=age.to(log_weights.dtype).mean(),
    )
