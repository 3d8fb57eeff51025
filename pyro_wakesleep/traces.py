"""Running guide and model over particles, and reducing traces to log-weights.

The estimators of :mod:`pyro_wakesleep.objectives` need, per particle and per
datapoint, ``log p(x, z)`` and ``log q(z | x)``. This module produces them:

- particles are a ``pyro.plate`` just outside the model's own plates
  (vectorised) or a loop whose particles share one mini-batch (sequential);
- the *data plates* are the vectorised plates that enclose every sample site
  of model and guide; log-densities keep one entry per element of them and are
  summed over every other dimension, so weights are per datapoint. With no
  such plate (a global latent) the weights are joint;
- log-densities use the site's scale *without* the data plates' sub-sampling
  factor ``N/B``; that factor is returned separately (:attr:`ImportanceTraces.data_scale`)
  and applied by the caller after the log-sum-exp over particles. Any other
  scale (a sub-sampled plate that is not a data plate, ``poutine.scale``)
  stays inside the log-weights, where it then targets the full-data posterior;
- many particles (log-likelihoods, diagnostics) come ``chunk_size`` at a time from
  :func:`importance_chunks`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from wakesleep.contract import (
    ModelGuideMismatchError,
    NonFiniteDataError,
    VectorizationWarning,
    check_site_match,
    non_finite_data_error,
)

__all__ = [
    "DetachSamples",
    "ImportanceTraces",
    "ModelGuideMismatchError",
    "VectorizationWarning",
    "check_model_guide_match",
    "bernoulli_sites",
    "data_plates",
    "guess_plate_nesting",
    "importance_chunks",
    "importance_traces",
    "is_bernoulli",
    "join_arguments",
    "log_density",
    "mean_activations",
    "mini_batch",
    "non_finite_data_of",
    "non_finite_observations",
    "observed_values",
    "one_particle",
    "particle_mismatches",
    "particle_plate",
    "path_log_weights",
    "plate_sizes",
    "resolve_plate_nesting",
    "run_guide_and_model",
    "sample_sites",
    "side_run",
    "site_log_density",
    "site_nesting",
    "split_arguments",
    "trace_params",
    "vectorization_is_safe",
    "vectorization_mismatches",
]

#: Names of the plates this package adds; they are never data plates.
PARTICLE_PLATE = "wakesleep_particles"
DREAM_PLATE = "wakesleep_dreams"
OWN_PLATES = frozenset({PARTICLE_PLATE, DREAM_PLATE})


class DetachSamples(Messenger):
    """Cuts the gradient through every sampled (unobserved) value.

    Wake-sleep estimators differentiate ``log p`` and ``log q`` at fixed
    samples; a reparameterised sample must not carry a pathwise gradient into
    the sites downstream of it. Enter it *outside* ``poutine.trace`` so that the
    trace records the detached value (post-processing runs outermost first).
    """

    def __init__(self, attached: dict[str, Tensor] | None = None) -> None:
        super().__init__()
        #: When given, receives each sampled value as drawn (still attached to its graph).
        self.attached = attached

    def _pyro_post_sample(self, msg: Message) -> None:
        if not msg["is_observed"] and isinstance(msg["value"], Tensor):
            if self.attached is not None:
                self.attached[msg["name"]] = msg["value"]
            msg["value"] = msg["value"].detach()


@contextmanager
def side_run() -> Iterator[None]:
    """A run of model or guide that leaves no mark: outer handlers record none of its sites,
    it builds no gradient graph, and the random-number generators end as they were (so
    that a check does not shift the user's random stream: a resumed run draws what an
    uninterrupted one does)."""
    cuda = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with poutine.block(), torch.no_grad(), torch.random.fork_rng(devices=cuda):
        yield


def particle_plate(name: str, size: int, plate_nesting: int) -> pyro.plate:
    """The plate of particles, one dimension left of the model's own plates."""
    return pyro.plate(name, size, dim=-(plate_nesting + 1))


def sample_sites(trace: Trace) -> Iterable[tuple[str, Message]]:
    """``(name, site)`` of the trace's sample sites, plate sub-sampling sites excluded."""
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site):
            yield name, site


def guess_plate_nesting(*traces: Trace) -> int:
    """Number of batch dimensions the traces' sample sites need: their deepest plate, or a
    site's batch rank when larger (a batch dimension no plate declares is summed like a
    plate's)."""
    return max((site_nesting(site) for tr in traces for _, site in sample_sites(tr)), default=0)


def resolve_plate_nesting(
    max_plate_nesting: float, model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> int:
    """``max_plate_nesting``, or when it is ``inf`` the :func:`guess_plate_nesting` of one
    run of guide and model (a :func:`side_run`: it shifts no random stream).

    The particle plate sits left of the model's plates, so their number must be known
    before particles can run.
    """
    if max_plate_nesting != math.inf:
        return int(max_plate_nesting)
    with side_run():
        return guess_plate_nesting(*run_guide_and_model(model, guide, args, kwargs))


def site_nesting(site: Message) -> int:
    """Batch dimensions a site needs right of the particles: its deepest plate, or its batch
    rank when that is larger (a batch dimension no plate declares is summed like a plate's)."""
    plate_depths = [-frame.dim for frame in site["cond_indep_stack"] if frame.vectorized]
    return max([len(site["fn"].batch_shape), *plate_depths])


def data_plates(*traces: Trace) -> dict[str, CondIndepStackFrame]:
    """The vectorised plates that enclose every sample site of the given traces, by name."""
    common: dict | None = None
    for trace in traces:
        for _, site in sample_sites(trace):
            frames = {
                frame.name: frame
                for frame in site["cond_indep_stack"]
                if frame.vectorized and frame.name not in OWN_PLATES
            }
            common = frames if common is None else {n: f for n, f in common.items() if n in frames}
    return common or {}


def plate_sizes(trace: Trace) -> dict[str, int]:
    """Size of every vectorised plate the trace's sample sites sit in (particle plates excluded)."""
    return {
        frame.name: frame.size
        for _, site in sample_sites(trace)
        for frame in site["cond_indep_stack"]
        if frame.vectorized and frame.name not in OWN_PLATES
    }


def log_density(
    trace: Trace, keep_dims: frozenset[int], ndim: int, scale_divisor: float = 1.0
) -> Tensor | None:
    """Sum of the trace's sample-site log-densities, reduced to the dimensions in ``keep_dims``.

    Each site's log-probability is masked, multiplied by ``site["scale"] / scale_divisor``,
    right-aligned to ``ndim`` batch dimensions and summed over every dimension not in
    ``keep_dims`` (negative indices) with ``keepdim=True``. Returns ``None`` for a trace
    without sample sites.
    """
    total = None
    for name, site in sample_sites(trace):
        log_p = site_log_density(name, site, keep_dims, ndim, scale_divisor)
        if log_p is not None:
            total = log_p if total is None else total + log_p
    return total


def site_log_density(
    name: str, site: Message, keep_dims: frozenset[int], ndim: int, scale_divisor: float = 1.0
) -> Tensor | None:
    """One site's term of :func:`log_density`; ``None`` when a mask makes it the number zero."""
    log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    scale = site["scale"] if scale_divisor == 1.0 else site["scale"] / scale_divisor
    log_p = scale_and_mask(log_p, scale, site["mask"])
    if not isinstance(log_p, Tensor):  # masked to the number zero
        return None
    if log_p.dim() > ndim:
        raise ValueError(
            f"Sample site '{name}' has batch shape {tuple(log_p.shape)}, which has more "
            f"dimensions than the {ndim} plates (particles included) that enclose it. Declare "
            "each batch dimension with a pyro.plate, or move it into the event with "
            ".to_event(n); if max_plate_nesting was given, check it counts every plate."
        )
    log_p = log_p.reshape((1,) * (ndim - log_p.dim()) + log_p.shape)
    sum_dims = tuple(d for d in range(-ndim, 0) if d not in keep_dims and log_p.shape[d] != 1)
    return log_p.sum(sum_dims, keepdim=True) if sum_dims else log_p


def observed_values(trace: Trace) -> dict[str, Tensor]:
    """Values of the observed sites of a model trace, by name."""
    return {name: site["value"] for name, site in sample_sites(trace) if site["is_observed"]}


def non_finite_observations(model_trace: Trace) -> NonFiniteDataError | None:
    """The error for the first observed site that holds NaN or inf where no mask hides it."""
    for name, site in sample_sites(model_trace):
        value = site["value"]
        if not site["is_observed"] or not torch.is_tensor(value) or not value.is_floating_point():
            continue
        batch_ndim = value.dim() - site["fn"].event_dim
        bad = ~torch.isfinite(value)
        bad = bad.reshape(*value.shape[:batch_ndim], -1).any(-1)
        if isinstance(site["mask"], Tensor):
            bad = bad & site["mask"]
        elif site["mask"] is False:
            continue
        while bad.dim() > batch_ndim:  # a mask with more dimensions than the value
            bad = bad.any(0)
        if not bad.any():
            continue
        kinds = [kind for kind, test in (("NaN", torch.isnan), ("inf", torch.isinf))
                 if test(value).any()]  # fmt: skip
        sub_sampled = {
            batch_ndim + frame.dim: model_trace.nodes[frame.name]["value"].cpu().numpy()
            for frame in site["cond_indep_stack"]
            if frame.vectorized
            and frame.name in model_trace
            and site_is_subsample(model_trace.nodes[frame.name])
            and -batch_ndim <= frame.dim
        }
        return non_finite_data_error(
            name,
            bad=bad.cpu().numpy(),
            kinds=kinds,
            sub_sampled=sub_sampled,
            mask_statement="poutine.mask",
        )
    return None


def non_finite_data_of(model: Callable, args: tuple, kwargs: dict) -> NonFiniteDataError | None:
    """:func:`non_finite_observations` of the model run on its own (latents from the prior),
    for when guide and model could not run together; ``None`` if that fails as well."""
    with side_run():
        try:
            model_trace = poutine.trace(model).get_trace(*args, **kwargs)
        except (ValueError, RuntimeError):
            return None
    return non_finite_observations(model_trace)


def trace_params(trace: Trace) -> set[str]:
    """The names of the ``pyro.param`` sites a trace used (``trace.nodes[name]["value"]``
    is the constrained value; its ``.unconstrained()`` the leaf tensor optimisers update)."""
    return {name for name, site in trace.nodes.items() if site["type"] == "param"}


def check_model_guide_match(model_trace: Trace, guide_trace: Trace) -> None:
    """Raise :class:`ModelGuideMismatchError` naming the sites where model and guide disagree."""
    check_site_match(
        model_latents=(n for n, s in sample_sites(model_trace) if not s["is_observed"]),
        model_observed=(n for n, s in sample_sites(model_trace) if s["is_observed"]),
        guide_sites=(
            n for n, s in sample_sites(guide_trace) if not s["infer"].get("is_auxiliary", False)
        ),
        sample_statement="pyro.sample",
    )


@dataclass
class ImportanceTraces:
    """Per-particle, per-datapoint log-densities of one wake evaluation.

    ``log_p`` and ``log_q`` have shape ``(K, *batch)``: particles first, then the
    model's ``plate_nesting`` plate dimensions, of size 1 except for data plates.
    """

    log_p: Tensor
    log_q: Tensor
    data_scale: float
    data_plates: dict[str, CondIndepStackFrame]
    model_trace: Trace
    guide_trace: Trace
    plate_nesting: int
    #: Every particle's guide trace when particles ran one at a time; empty when vectorised
    #: (``guide_trace`` then holds them all along the particle dimension).
    particle_guide_traces: tuple[Trace, ...] = ()
    #: With ``keep_attached``: the guide's samples as drawn (with their gradients), one dict
    #: per run of the guide (one when vectorised).
    attached_values: tuple[dict[str, Tensor], ...] = ()

    @cached_property
    def log_weights(self) -> Tensor:
        """``log_p - log_q``, computed once per evaluation (read up to four times per step)."""
        return self.log_p - self.log_q

    def per_datapoint(self, value: Tensor) -> Tensor:
        """``value`` (one entry per element of the plate dims) with only the data plates' dims kept,
        outermost first; a 0-d tensor when the weights are joint."""
        dims = sorted(frame.dim for frame in self.data_plates.values())
        return value.reshape([value.shape[d] for d in dims])

    @property
    def datapoint_log_weights(self) -> Tensor:
        """The log-weights with only the data plates' dims kept: ``(K, *datapoints)``."""
        log_weights = self.log_weights
        return log_weights.reshape((len(log_weights), *self.per_datapoint(log_weights[0]).shape))

    @property
    def vectorized(self) -> bool:
        """Whether the particles ran as a plate (one trace) rather than one at a time."""
        return not self.particle_guide_traces

    @cached_property
    def particle_values(self) -> dict[str, Tensor]:
        """Every guide site's value in every particle, ``(K, *plate dims, *event)``, with all
        ``plate_nesting`` plate dimensions present (of size 1 where the site is not in the plate)."""
        if self.vectorized:  # the particle dim is already there
            return {name: site["value"] for name, site in sample_sites(self.guide_trace)}
        values: dict[str, list[Tensor]] = {}
        for trace in self.particle_guide_traces:
            for name, site in sample_sites(trace):
                value = site["value"]
                batch_rank = value.dim() - site["fn"].event_dim
                padding = (1,) * (self.plate_nesting - batch_rank)
                values.setdefault(name, []).append(value.reshape(padding + value.shape))
        return {name: torch.stack(stacked) for name, stacked in values.items()}


def run_guide_and_model(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    mini_batch: Trace | None = None,
    *,
    detach: bool = True,
    attached: dict[str, Tensor] | None = None,
) -> tuple[Trace, Trace]:
    """Guide draws (gradient-free) samples; the model is replayed against them.

    ``mini_batch``, a trace of sub-sampling sites (and possibly of guide values), fixes the
    plates' mini-batch indices. ``detach=False`` keeps the samples' gradients (a replay of
    attached values); ``attached`` receives the guide's samples before they are detached.
    """
    if mini_batch is not None:
        guide = poutine.replay(guide, trace=mini_batch)
        model = poutine.replay(model, trace=mini_batch)
    with DetachSamples(attached) if detach else contextlib.nullcontext():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def mini_batch(*traces: Trace) -> Trace:
    """The model's plate sub-sampling sites, to replay one mini-batch across particles."""
    kept = Trace()
    for trace in traces:
        for name, site in trace.nodes.items():
            if site_is_subsample(site) and name not in OWN_PLATES and name not in kept:
                kept.add_node(name, **site)
    return kept


def _reduce(
    model_trace: Trace, guide_trace: Trace, keep_dims: frozenset[int], ndim: int, data_scale: float
) -> tuple[Tensor, Tensor]:
    log_p = log_density(model_trace, keep_dims, ndim, data_scale)
    if log_p is None:
        raise ValueError("The model has no pyro.sample statements: there is nothing to learn.")
    log_q = log_density(guide_trace, keep_dims, ndim, data_scale)
    if log_q is None:  # a guide without latents: q is the point mass of the empty set
        log_q = torch.zeros_like(log_p)
    if log_p.shape == log_q.shape:  # the usual case: no expand nodes in the autograd graph
        return log_p, log_q
    return torch.broadcast_tensors(log_p, log_q)


def importance_traces(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    num_particles: int,
    max_plate_nesting: float,
    vectorize: bool,
    keep_attached: bool = False,
) -> ImportanceTraces:
    """Draw ``num_particles`` guide samples and score them under model and guide.

    Vectorised, the particles are a plate at dim ``-(plate_nesting + 1)``; otherwise the
    guide runs ``num_particles`` times, every run replaying the first run's plate
    sub-sampling so that all particles see the same mini-batch. ``max_plate_nesting``
    (``inf``: guessed by :func:`resolve_plate_nesting`) is the number of plate dimensions
    of the model. ``keep_attached`` keeps the guide's samples as drawn, with their
    gradients, for :func:`path_log_weights`.
    """
    attached: list[dict[str, Tensor]] = []

    def keep() -> dict[str, Tensor] | None:
        if not keep_attached:
            return None
        attached.append({})
        return attached[-1]

    plate_nesting = resolve_plate_nesting(max_plate_nesting, model, guide, args, kwargs)
    if vectorize:
        plate = particle_plate(PARTICLE_PLATE, num_particles, plate_nesting)
        try:
            model_trace, guide_trace = run_guide_and_model(
                plate(model), plate(guide), args, kwargs, attached=keep()
            )
        except ValueError as error:
            if f"plate('{PARTICLE_PLATE}')" not in str(error):
                raise
            raise ValueError(
                f"Particles are a plate at dim {-(plate_nesting + 1)}, just left of the "
                f"max_plate_nesting={plate_nesting} plates of the model, and a site's plates "
                "reach that dim. Give max_plate_nesting the number of nested plates in the "
                "model (or leave it out to have it guessed)."
            ) from error
        runs = [(model_trace, guide_trace)]
    else:
        model_trace, guide_trace = run_guide_and_model(model, guide, args, kwargs, attached=keep())
        same_batch = mini_batch(guide_trace, model_trace)
        runs = [(model_trace, guide_trace)] + [
            run_guide_and_model(model, guide, args, kwargs, same_batch, attached=keep())
            for _ in range(num_particles - 1)
        ]
    check_model_guide_match(model_trace, guide_trace)

    plates = data_plates(model_trace, guide_trace)
    data_scale = math.prod(
        (frame.full_size or frame.size) / frame.size for frame in plates.values()
    )
    keep = frozenset(frame.dim for frame in plates.values())
    if vectorize:
        log_p, log_q = _reduce(
            model_trace, guide_trace, keep | {-(plate_nesting + 1)}, plate_nesting + 1, data_scale
        )
    else:
        pairs = [_reduce(m, g, keep, plate_nesting, data_scale) for m, g in runs]
        log_p = torch.stack([p for p, _ in pairs])
        log_q = torch.stack([q for _, q in pairs])
    return ImportanceTraces(
        log_p, log_q, data_scale, plates, model_trace, guide_trace, plate_nesting,
        particle_guide_traces=() if vectorize else tuple(guide for _, guide in runs),
        attached_values=tuple(attached),
    )  # fmt: skip


def path_log_weights(
    wake: ImportanceTraces, model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> Tensor:
    """``log w`` of the wake particles with a gradient only along the reparameterised samples.

    The guide's samples as drawn (``keep_attached``) are replayed through guide and model
    without detaching. ``log w`` there has the same value as ``wake.log_weights``; its
    gradient is the direct one (through θ and through φ in ``q``'s density) plus the path
    one (through the samples). Subtracting the wake's ``log w``, whose samples were
    detached, leaves the path gradient alone — for
    :func:`~pyro_wakesleep.objectives.dreg_wake_phi_loss`.
    """
    if not wake.attached_values:
        raise ValueError("path_log_weights needs importance_traces(..., keep_attached=True).")
    keep = frozenset(frame.dim for frame in wake.data_plates.values())
    batch = mini_batch(wake.guide_trace, wake.model_trace)
    pairs = []
    for values in wake.attached_values:
        replayed = Trace()
        for name, site in batch.nodes.items():
            replayed.add_node(name, **site)
        for name, site in sample_sites(wake.guide_trace):
            replayed.add_node(name, **{**site, "value": values[name]})
        if not wake.vectorized:  # one particle per run
            runs, ndim, dims = (model, guide), wake.plate_nesting, keep
        else:
            plate = particle_plate(PARTICLE_PLATE, len(wake.log_p), wake.plate_nesting)
            runs = (plate(model), plate(guide))
            ndim, dims = wake.plate_nesting + 1, keep | {-(wake.plate_nesting + 1)}
        model_trace, guide_trace = run_guide_and_model(*runs, args, kwargs, replayed, detach=False)
        pairs.append(_reduce(model_trace, guide_trace, dims, ndim, wake.data_scale))
    if not wake.vectorized:
        log_p = torch.stack([p for p, _ in pairs])
        log_q = torch.stack([q for _, q in pairs])
    else:
        log_p, log_q = pairs[0]
    log_weights = wake.log_weights
    return (log_p - log_q) - log_weights + log_weights.detach()


def is_bernoulli(fn: object) -> bool:
    """Whether a site's distribution is a Bernoulli (possibly as an event, expanded or masked)."""
    while fn is not None:
        if isinstance(fn, torch.distributions.Bernoulli):
            return True
        fn = getattr(fn, "base_dist", None)
    return False


def bernoulli_sites(trace: Trace) -> list[str]:
    """The names of the trace's latent sites whose distribution is a Bernoulli."""
    return [
        name
        for name, site in sample_sites(trace)
        if not site["is_observed"] and is_bernoulli(site["fn"])
    ]


def mean_activations(wake: ImportanceTraces, sites: Iterable[str]) -> dict[str, Tensor]:
    """Per site, the guide's probability that each unit is on, averaged over the particles
    and the datapoints (the data plates' dims): one value per unit, the other plate and the
    event dims of the site."""
    guide_traces = wake.particle_guide_traces or (wake.guide_trace,)
    ndim = wake.plate_nesting
    vectorised = int(wake.vectorized)  # the particle dim is a batch dim
    means = {}
    for name in sites:
        stacked = []
        for trace in guide_traces:
            fn = trace.nodes[name]["fn"]
            mean = fn.mean
            rank = mean.dim() - fn.event_dim
            mean = mean.reshape((1,) * (ndim + vectorised - rank) + mean.shape)
            stacked.append(mean if vectorised else mean.unsqueeze(0))
        mean = torch.cat(stacked)  # (K, *plate dims, *event)
        data_axes = [1 + ndim + frame.dim for frame in wake.data_plates.values()]
        means[name] = mean.mean(dim=[0, *data_axes])
    return means


def one_particle(trace: Trace, index: int, plate_nesting: int) -> Trace:
    """Particle ``index`` of a trace recorded under the particle plate, as a particle plate of
    size one records it: each sampled value narrowed to that particle, sub-sampling kept."""
    one = Trace()
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site):
            dim = site["value"].dim() - site["fn"].event_dim - (plate_nesting + 1)
            site = {**site, "value": site["value"].narrow(dim, index, 1)}
        one.add_node(name, **site)
    return one


def vectorization_mismatches(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    num_particles: int,
    plate_nesting: int,
) -> list[str]:
    """The sites whose per-particle log-density under the particle plate is not that of the
    same particle run alone; empty when particles may safely be a plate.

    A plate of particles is only correct for programs that broadcast every value along
    the particle dimension. A site that reads latents through an operation that moves or
    reduces a batch dimension (``.to_event(1)`` over a plate's dimension outside that
    plate, ``z.sum()``, ``z[0]``) mixes the particles silently. The check replays the last
    particle of a vectorised draw in a particle plate of size one and compares each site's
    log-density, so it catches every such mistake whatever its form. It runs without
    gradient and leaves the random-number generators as it found them.
    """
    with side_run():
        plate = particle_plate(PARTICLE_PLATE, num_particles, plate_nesting)
        try:
            model_trace, guide_trace = run_guide_and_model(plate(model), plate(guide), args, kwargs)
        except (RuntimeError, ValueError, IndexError) as error:
            try:  # a program that fails as one particle too is wrong: the step says how
                _reduce(
                    *run_guide_and_model(model, guide, args, kwargs),
                    frozenset(),
                    plate_nesting,
                    1.0,
                )
            except (RuntimeError, ValueError, IndexError):
                return []
            return [f"the program (which then fails: {str(error).splitlines()[0]})"]
        check_model_guide_match(model_trace, guide_trace)
        if non_finite_observations(model_trace) is not None:
            return []  # nothing to compare: the step itself reports the data
        last = num_particles - 1
        particle = one_particle(guide_trace, last, plate_nesting)
        for name, site in mini_batch(model_trace).nodes.items():
            if name not in particle:
                particle.add_node(name, **site)
        single = particle_plate(PARTICLE_PLATE, 1, plate_nesting)
        try:
            one_model, one_guide = run_guide_and_model(
                single(model), single(guide), args, kwargs, mini_batch=particle
            )
        except (RuntimeError, ValueError, IndexError) as error:
            return [f"(one particle alone failed: {error})"]
        return particle_mismatches(
            {"model": (model_trace, one_model), "guide": (guide_trace, one_guide)},
            last,
            frozenset(frame.dim for frame in data_plates(model_trace, guide_trace).values()),
            plate_nesting,
        )


def particle_mismatches(
    traces: dict[str, tuple[Trace, Trace]],
    index: int,
    keep_dims: frozenset[int],
    plate_nesting: int,
) -> list[str]:
    """Sites whose log-density at particle ``index`` of a vectorised trace differs from that of
    the same particle alone (a trace under a particle plate of size one).

    :param traces: ``{role: (vectorised trace, one-particle trace)}``, e.g. ``"model"``, ``"guide"``.
    :param keep_dims: the data plates' dims, kept apart as in the log-weights.
    """
    ndim = plate_nesting + 1
    keep = keep_dims | {-ndim}
    mismatches = []
    for role, (every_trace, alone_trace) in traces.items():
        for name, site in sample_sites(every_trace):
            alone = alone_trace.nodes.get(name)
            try:
                every = site_log_density(name, site, keep, ndim)
                alone = None if alone is None else site_log_density(name, alone, keep, ndim)
            except ValueError:  # more batch dimensions than plates: particles went astray
                mismatches.append(f"{role} site '{name}'")
                continue
            if every is None and alone is None:
                continue
            if every is not None and every.shape[-ndim] > 1:
                every = every.narrow(-ndim, index, 1)
            if (
                every is None
                or alone is None
                or every.shape != alone.shape
                or not torch.allclose(every, alone, rtol=1e-4, atol=1e-4, equal_nan=True)
            ):
                mismatches.append(f"{role} site '{name}'")
    return mismatches


def vectorization_is_safe(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    num_particles: int,
    plate_nesting: int,
) -> bool:
    """Whether particles may be a plate (:func:`vectorization_mismatches`); warns when not."""
    mismatches = vectorization_mismatches(
        model, guide, args, kwargs, num_particles=num_particles, plate_nesting=plate_nesting
    )
    if mismatches:
        warnings.warn(
            f"With particles as a plate, {', '.join(mismatches)} does not score as one particle "
            "alone: the program mixes particles or cannot broadcast them (typically a site "
            "outside a plate reads a latent from inside it through .to_event(n), a sum or an index over the "
            "plate's dimension, which the particle dimension then shifts into). Particles now "
            "run one at a time, which is correct but slower. To vectorise, put the site inside "
            "the plate, or write the program so that it broadcasts over extra dimensions on "
            "the left (index and reduce with negative dims, e.g. z.sum(-1) on a (..., N) "
            "tensor, and keep the plate's dimension in the batch shape); "
            "vectorize_particles=False silences this warning.",
            VectorizationWarning,
            stacklevel=4,
        )
    return not mismatches


def importance_chunks(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    num_particles: int,
    chunk_size: int,
    max_plate_nesting: float = math.inf,
    vectorize: bool = True,
) -> Iterator[ImportanceTraces]:
    """:func:`importance_traces` for ``num_particles`` particles, ``chunk_size`` at a time.

    Memory stays bounded however many particles are drawn, and every chunk replays the
    first chunk's plate sub-sampling, so all particles score the same mini-batch. Vectorised
    chunks are first checked with :func:`vectorization_is_safe` (once per call); a program
    that mixes particles under a plate runs one particle at a time instead.
    """
    if num_particles < 1 or chunk_size < 1:
        raise ValueError(
            f"num_particles and chunk_size must be >= 1, got {num_particles} and {chunk_size}."
        )
    plate_nesting = resolve_plate_nesting(max_plate_nesting, model, guide, args, kwargs)
    vectorize = vectorize and vectorization_is_safe(
        model, guide, args, kwargs, num_particles=min(chunk_size, num_particles),
        plate_nesting=plate_nesting,
    )  # fmt: skip
    for start in range(0, num_particles, chunk_size):
        wake = importance_traces(
            model,
            guide,
            args,
            kwargs,
            num_particles=min(chunk_size, num_particles - start),
            max_plate_nesting=plate_nesting,
            vectorize=vectorize,
        )
        if start == 0:
            same_batch = mini_batch(wake.guide_trace, wake.model_trace)
            if same_batch.nodes:
                model = poutine.replay(model, trace=same_batch)
                guide = poutine.replay(guide, trace=same_batch)
        yield wake


def split_arguments(tree: Any) -> tuple[tuple, list[Tensor]]:
    """``(static structure, tensor leaves)`` of ``tree``, the programs' ``(args, kwargs)``.

    Tuples, lists and dicts are walked; tensor leaves become inputs of a compiled step
    (:class:`~pyro_wakesleep.JitReweightedWakeSleep`), every other leaf (an ``int`` such as a
    data-set size, a string, ...) stays a Python value in the hashable static structure.
    The structure also records each tensor's shape, dtype and device: a traced graph is
    specialised to them, so another shape must compile another graph.
    """
    tensors: list[Tensor] = []

    def walk(node: Any) -> Any:
        if isinstance(node, Tensor):
            tensors.append(node)
            return (_TENSOR, tuple(node.shape), node.dtype, node.device)
        if isinstance(node, tuple | list):
            return (type(node), tuple(walk(item) for item in node))
        if isinstance(node, dict):
            return (dict, tuple((key, walk(value)) for key, value in node.items()))
        return (_STATIC, node)

    structure = walk(tree)
    try:
        hash(structure)
    except TypeError:
        raise TypeError(
            "A compiled objective passes tensors to the graph and keys the rest by value, "
            "but an argument of model and guide is neither a tensor nor hashable: pass "
            "tensors (or ints, strings, tuples), or use the eager objective."
        ) from None
    return structure, tensors


def join_arguments(structure: tuple, leaves: list[Tensor]) -> Any:
    """The inverse of :func:`split_arguments`: the tree with the tensor ``leaves`` put back
    in place."""
    supply = iter(leaves)

    def build(node: tuple) -> Any:
        kind = node[0]
        if kind == _TENSOR:
            return next(supply)
        if kind == _STATIC:
            return node[1]
        if kind is dict:
            return {key: build(value) for key, value in node[1]}
        return kind(build(item) for item in node[1])

    return build(structure)


#: Markers of :func:`split_arguments`' structure.
_TENSOR, _STATIC = "tensor", "static"
