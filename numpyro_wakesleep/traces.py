"""Running guide and model over particles, and reducing traces to log-weights.

The estimators of :mod:`numpyro_wakesleep.objectives` need, per particle and per
datapoint, ``log p(x, z)`` and ``log q(z | x)``. This module produces them:

- a *probe* pass (:func:`probe`) runs guide and model once, outside any ``vmap``; it fixes the
  step's plate sub-sampling indices and tells which plates are data plates, how
  deeply plates nest and whether model and guide agree;
- particles are a ``jax.vmap`` over particle keys (vectorised) or a
  ``jax.lax.map`` (sequential); every particle substitutes the probe's parameter
  values *and* its sub-sampling indices, so all particles of a step see the same
  mini-batch;
- the *data plates* are the plates that enclose every sample site of model and
  guide; log-densities keep one entry per element of them and are summed over
  every other dimension, so weights are per datapoint. With no such plate (a
  global latent) the weights are joint;
- log-densities use the site's scale *without* the data plates' sub-sampling
  factor ``N/B``; that factor is returned separately (:attr:`ImportanceTraces.data_scale`)
  and applied by the caller after the log-sum-exp over particles. Any other
  scale (a sub-sampled plate that is not a data plate, ``handlers.scale``)
  stays inside the log-weights, where it then targets the full-data posterior;
- many particles (log-likelihoods, diagnostics) come ``chunk_size`` at a time from
  :func:`importance_chunks`, one compiled call a chunk.

Unlike the Pyro backend there is no particle plate: ``vmap`` adds the particle
dimension outside the program, so model and guide always run on one particle.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, random
from numpyro.distributions import BernoulliLogits, BernoulliProbs
from numpyro.distributions.util import scale_and_mask
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.primitives import CondIndepStackFrame, Messenger

from wakesleep.contract import (
    ModelGuideMismatchError,
    NonFiniteDataError,
    VectorizationWarning,
    check_site_match,
    non_finite_data_error,
)

__all__ = [
    "DetachSamples",
    "ImportanceChunk",
    "ImportanceTraces",
    "ModelGuideMismatchError",
    "Probe",
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
    "non_finite_data_of",
    "non_finite_observations",
    "observed_values",
    "path_log_weights",
    "plate_sizes",
    "probe",
    "run_guide_and_model",
    "sample_sites",
    "site_log_density",
    "site_nesting",
    "split_arguments",
    "subsample_indices",
    "trace_params",
]

#: An execution trace of NumPyro: site name -> message.
Trace = dict


class DetachSamples(Messenger):
    """Cuts the gradient through every sampled (unobserved) value with :func:`jax.lax.stop_gradient`.

    Wake-sleep estimators differentiate ``log p`` and ``log q`` at fixed
    samples; a reparameterised sample must not carry a pathwise gradient into
    the sites downstream of it. Enter it *outside* ``handlers.trace`` so that the
    trace records the stopped value (post-processing runs outermost first).
    """

    def postprocess_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["value"] = jax.lax.stop_gradient(msg["value"])


def sample_sites(trace: Trace) -> Iterable[tuple[str, dict]]:
    """``(name, site)`` of the trace's sample sites (plates are ``"plate"`` sites, not samples)."""
    for name, site in trace.items():
        if site["type"] == "sample":
            yield name, site


def guess_plate_nesting(*traces: Trace) -> int:
    """Number of batch dimensions the traces' sample sites need: their deepest plate, or a
    site's batch rank when larger (a batch dimension no plate declares is summed like a
    plate's)."""
    return max((site_nesting(site) for tr in traces for _, site in sample_sites(tr)), default=0)


def site_nesting(site: dict) -> int:
    """Batch dimensions a site needs: its deepest plate, or its batch rank when larger."""
    plate_depths = [-frame.dim for frame in site["cond_indep_stack"]]
    return max([len(site["fn"].batch_shape), *plate_depths])


def data_plates(*traces: Trace) -> dict[str, CondIndepStackFrame]:
    """The plates that enclose every sample site of the given traces, by name."""
    common: dict | None = None
    for tr in traces:
        for _, site in sample_sites(tr):
            frames = {frame.name: frame for frame in site["cond_indep_stack"]}
            common = frames if common is None else {n: f for n, f in common.items() if n in frames}
    return common or {}


def plate_sizes(trace: Trace) -> dict[str, int]:
    """(Sub-sampled) size of every plate the trace's sample sites sit in."""
    return {
        frame.name: frame.size
        for _, site in sample_sites(trace)
        for frame in site["cond_indep_stack"]
    }


def subsample_indices(*traces: Trace) -> dict[str, Array]:
    """The mini-batch indices of every plate of the traces, by plate name (first trace wins)."""
    indices: dict[str, Array] = {}
    for tr in traces:
        for name, site in tr.items():
            if site["type"] == "plate" and name not in indices:
                indices[name] = site["value"]
    return indices


def _full_size(name: str, frame: CondIndepStackFrame, traces: Iterable[Trace]) -> int:
    """Size of plate ``name`` before sub-sampling, as its plate site records it."""
    for tr in traces:
        site = tr.get(name)
        if site is not None and site["type"] == "plate":
            return int(site["args"][0])
    return frame.size


def log_density(
    trace: Trace, keep_dims: frozenset[int], ndim: int, scale_divisor: float = 1.0
) -> Array | None:
    """Sum of the trace's sample-site log-densities, reduced to the dimensions in ``keep_dims``.

    Each site's log-probability is multiplied by ``site["scale"] / scale_divisor`` (masks
    are part of the site's distribution in NumPyro), right-aligned to ``ndim`` batch
    dimensions and summed over every dimension not in ``keep_dims`` (negative indices),
    keeping the dimensions. Returns ``None`` for a trace without sample sites.
    """
    total = None
    for name, site in sample_sites(trace):
        log_p = site_log_density(name, site, keep_dims, ndim, scale_divisor)
        total = log_p if total is None else total + log_p
    return total


def site_log_density(
    name: str, site: dict, keep_dims: frozenset[int], ndim: int, scale_divisor: float = 1.0
) -> Array:
    """One site's term of :func:`log_density`."""
    log_p = site["fn"].log_prob(site["value"])
    scale = 1.0 if site["scale"] is None else site["scale"]
    log_p = scale_and_mask(log_p, scale if scale_divisor == 1.0 else scale / scale_divisor)
    log_p = jnp.asarray(log_p)
    if log_p.ndim > ndim:
        raise ValueError(
            f"Sample site '{name}' has batch shape {tuple(log_p.shape)}, which has more "
            f"dimensions than the {ndim} plates that enclose it. Declare each batch "
            "dimension with a numpyro.plate, or move it into the event with .to_event(n); "
            "if max_plate_nesting was given, check it counts every plate."
        )
    log_p = jnp.reshape(log_p, (1,) * (ndim - log_p.ndim) + log_p.shape)
    sum_dims = tuple(d for d in range(-ndim, 0) if d not in keep_dims and log_p.shape[d] != 1)
    return jnp.sum(log_p, axis=sum_dims, keepdims=True) if sum_dims else log_p


def observed_values(trace: Trace) -> dict[str, Array]:
    """Values of the observed sites of a model trace, by name."""
    return {name: site["value"] for name, site in sample_sites(trace) if site["is_observed"]}


def non_finite_observations(model_trace: Trace) -> NonFiniteDataError | None:
    """The error for the first observed site that holds NaN or inf where no mask hides it.

    Only concrete values can be checked: under ``jit`` the observed values are traced and
    this returns ``None``.
    """
    for name, site in sample_sites(model_trace):
        value = site["value"]
        if not site["is_observed"] or isinstance(value, jax.core.Tracer):
            continue
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating):
            continue
        batch_ndim = value.ndim - site["fn"].event_dim
        bad = ~np.isfinite(value).reshape(*value.shape[:batch_ndim], -1).all(-1)
        mask = getattr(site["fn"], "_mask", None)  # numpyro.handlers.mask wraps the distribution
        if isinstance(mask, jax.core.Tracer):
            continue
        if mask is not None:
            bad = bad & np.asarray(mask)
        while bad.ndim > batch_ndim:  # a mask with more dimensions than the value
            bad = bad.any(0)
        if not bad.any():
            continue
        kinds = [kind for kind, test in (("NaN", np.isnan), ("inf", np.isinf))
                 if test(value).any()]  # fmt: skip
        sub_sampled = {
            batch_ndim + frame.dim: np.asarray(model_trace[frame.name]["value"])
            for frame in site["cond_indep_stack"]
            if frame.name in model_trace
            and _full_size(frame.name, frame, [model_trace]) != frame.size
            and -batch_ndim <= frame.dim
        }
        return non_finite_data_error(
            name, bad=bad, kinds=kinds, sub_sampled=sub_sampled, mask_statement="handlers.mask"
        )
    return None


def non_finite_data_of(
    model: Callable, params: dict, args: tuple, kwargs: dict, rng_key: Array
) -> NonFiniteDataError | None:
    """:func:`non_finite_observations` of the model run on its own (latents from the prior),
    for when guide and model could not run together; ``None`` if that fails as well."""
    try:
        model_trace = trace(seed(substitute(model, data=params), rng_key)).get_trace(
            *args, **kwargs
        )
    except (ValueError, RuntimeError, TypeError):
        return None
    return non_finite_observations(model_trace)


def trace_params(trace: Trace) -> set[str]:
    """The names of the ``numpyro.param`` sites a trace used."""
    return {name for name, site in trace.items() if site["type"] == "param"}


def check_model_guide_match(model_trace: Trace, guide_trace: Trace) -> None:
    """Raise :class:`ModelGuideMismatchError` naming the sites where model and guide disagree."""
    check_site_match(
        model_latents=(n for n, s in sample_sites(model_trace) if not s["is_observed"]),
        model_observed=(n for n, s in sample_sites(model_trace) if s["is_observed"]),
        guide_sites=(
            n for n, s in sample_sites(guide_trace) if not s["infer"].get("is_auxiliary", False)
        ),
        sample_statement="numpyro.sample",
    )


@dataclass
class ImportanceTraces:
    """Per-particle, per-datapoint log-densities of one wake evaluation.

    ``log_p`` and ``log_q`` have shape ``(K, *batch)``: particles first, then the
    model's ``plate_nesting`` plate dimensions, of size 1 except for data plates.
    ``model_trace`` and ``guide_trace`` are the probe pass (one particle, no ``vmap``);
    ``fixed`` holds what every run substitutes (parameters and mini-batch indices);
    ``site_finite`` says, per particle, whether each site's log-density was finite.
    """

    log_p: Array
    log_q: Array
    data_scale: float
    data_plates: dict[str, CondIndepStackFrame]
    model_trace: Trace
    guide_trace: Trace
    plate_nesting: int
    fixed: dict[str, Array]
    site_finite: dict[str, Array]
    #: Every particle's value of each guide site, ``(K, *value shape)`` (with ``keep_draws``).
    particle_values: dict[str, Array] = field(default_factory=dict)
    #: With ``keep_attached``: the particles' keys, which redraw the same samples with their
    #: gradients (:func:`path_log_weights`), and whether particles were vmapped.
    particle_keys: Array | None = None
    vectorized: bool = True
    #: With ``keep_activations``: each particle's guide mean at every Bernoulli latent site.
    particle_means: dict[str, Array] = field(default_factory=dict)

    @property
    def log_weights(self) -> Array:
        return self.log_p - self.log_q

    def per_datapoint(self, value: Array) -> Array:
        """``value`` (one entry per element of the plate dims) with only the data plates' dims kept,
        outermost first; a 0-d array when the weights are joint."""
        dims = sorted(frame.dim for frame in self.data_plates.values())
        return jnp.reshape(value, [value.shape[d] for d in dims])

    @property
    def datapoint_log_weights(self) -> Array:
        """The log-weights with only the data plates' dims kept: ``(K, *datapoints)``."""
        log_weights = self.log_weights
        return log_weights.reshape((len(log_weights), *self.per_datapoint(log_weights[0]).shape))


def run_guide_and_model(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    fixed: dict[str, Array],
    rng_key: Array,
    *,
    detach: bool = True,
) -> tuple[Trace, Trace]:
    """The guide draws (gradient-free) samples; the model is replayed against them.

    ``fixed`` (parameter values, plate indices, mutable state) is substituted into both.
    ``detach=False`` keeps the samples' gradients (the same draws: the key decides them).
    """
    guide_key, model_key = random.split(rng_key)
    with DetachSamples() if detach else contextlib.nullcontext():
        guide_trace = trace(seed(substitute(guide, data=fixed), guide_key)).get_trace(
            *args, **kwargs
        )
    replayed = substitute(replay(model, trace=guide_trace), data=fixed)
    model_trace = trace(seed(replayed, model_key)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def _reduce(
    model_trace: Trace, guide_trace: Trace, keep_dims: frozenset[int], ndim: int, data_scale: float
) -> tuple[Array, Array]:
    log_p = log_density(model_trace, keep_dims, ndim, data_scale)
    if log_p is None:
        raise ValueError("The model has no numpyro.sample statements: there is nothing to learn.")
    log_q = log_density(guide_trace, keep_dims, ndim, data_scale)
    if log_q is None:  # a guide without latents: q is the point mass of the empty set
        log_q = jnp.zeros_like(log_p)
    return jnp.broadcast_arrays(log_p, log_q)


def _site_finite(model_trace: Trace, guide_trace: Trace) -> dict[str, Array]:
    return {
        f"{role} site '{name}'": jnp.all(jnp.isfinite(site["fn"].log_prob(site["value"])))
        for role, tr in (("model", model_trace), ("guide", guide_trace))
        for name, site in sample_sites(tr)
    }


@dataclass(frozen=True)
class Probe:
    """One eager run of guide and model, outside any ``vmap``: what every particle shares.

    ``fixed`` is what each particle substitutes: the parameter values (those missing from
    ``params`` at the value they took here, so that a random initialiser is drawn once for
    all particles) and the plates' mini-batch indices.
    """

    model_trace: Trace
    guide_trace: Trace
    fixed: dict[str, Array]
    plate_nesting: int
    data_plates: dict[str, CondIndepStackFrame]
    data_scale: float

    @property
    def keep_dims(self) -> frozenset[int]:
        """The data plates' dims, kept apart in the log-weights."""
        return frozenset(frame.dim for frame in self.data_plates.values())


def probe(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    rng_key: Array,
    params: dict[str, Array],
    max_plate_nesting: float,
) -> Probe:
    """Run guide and model once to fix the step's mini-batch and read its plate structure.

    ``max_plate_nesting`` (``inf``: guessed from this run) is the number of plate
    dimensions of the model. Raises :class:`ModelGuideMismatchError` when the programs'
    sites disagree.
    """
    model_trace, guide_trace = run_guide_and_model(model, guide, args, kwargs, params, rng_key)
    check_model_guide_match(model_trace, guide_trace)
    traces = (guide_trace, model_trace)
    initial = {n: s["value"] for tr in traces for n, s in tr.items() if s["type"] == "param"}
    plates = data_plates(model_trace, guide_trace)
    return Probe(
        model_trace=model_trace,
        guide_trace=guide_trace,
        fixed={**initial, **params, **subsample_indices(*traces)},
        plate_nesting=(
            guess_plate_nesting(*traces)
            if max_plate_nesting == math.inf
            else int(max_plate_nesting)
        ),
        data_plates=plates,
        data_scale=math.prod(_full_size(n, f, traces) / f.size for n, f in plates.items()),
    )


class _Scored(NamedTuple):
    """What :func:`_score_particles` returns, each with a leading particle dimension."""

    log_p: Array
    log_q: Array
    site_finite: dict[str, Array]
    values: dict[str, Array]
    means: dict[str, Array]


def _score_particles(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    fixed: dict[str, Array],
    keys: Array,
    *,
    plate_nesting: int,
    keep_dims: frozenset[int],
    data_scale: float,
    vectorize: bool,
    draws: tuple[str, ...] = (),
    means: tuple[str, ...] = (),
) -> _Scored:
    """``log_p``, ``log_q`` ``(len(keys), *plate dims)``, per-site finiteness, the guide's
    values of the ``draws`` sites and its distributions' means at the ``means`` sites, one
    particle per key, each substituting ``fixed``."""

    def particle(key: Array) -> _Scored:
        model_trace, guide_trace = run_guide_and_model(model, guide, args, kwargs, fixed, key)
        log_p, log_q = _reduce(model_trace, guide_trace, keep_dims, plate_nesting, data_scale)
        return _Scored(
            log_p,
            log_q,
            _site_finite(model_trace, guide_trace),
            {name: guide_trace[name]["value"] for name in draws},
            {name: guide_trace[name]["fn"].mean for name in means},
        )

    return (jax.vmap(particle) if vectorize else _sequential(particle))(keys)


def importance_traces(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    rng_key: Array,
    params: dict[str, Array],
    num_particles: int,
    max_plate_nesting: float,
    vectorize: bool,
    keep_draws: bool = False,
    keep_attached: bool = False,
    keep_activations: bool = False,
) -> ImportanceTraces:
    """Draw ``num_particles`` guide samples and score them under model and guide.

    A :func:`probe` pass (outside the ``vmap``) draws the step's plate sub-sampling indices
    and reads the plate structure; the particles, ``jax.vmap``-ed over their keys (or
    ``jax.lax.map``-ped when ``vectorize`` is false), substitute those indices so that
    every particle sees the same mini-batch. ``max_plate_nesting`` (``inf``: guessed from
    the probe pass) is the number of plate dimensions of the model. With ``keep_draws``
    every particle's guide values come back in :attr:`ImportanceTraces.particle_values`;
    ``keep_attached`` keeps the particles' keys for :func:`path_log_weights`;
    ``keep_activations`` the means of the guide's Bernoulli sites for
    :func:`mean_activations`.
    """
    probe_key, particles_key = random.split(rng_key)
    shared = probe(
        model, guide, args, kwargs, rng_key=probe_key, params=params,
        max_plate_nesting=max_plate_nesting,
    )  # fmt: skip
    draws = tuple(name for name, _ in sample_sites(shared.guide_trace)) if keep_draws else ()
    keys = random.split(particles_key, num_particles)
    scored = _score_particles(
        model, guide, args, kwargs, shared.fixed, keys,
        plate_nesting=shared.plate_nesting, keep_dims=shared.keep_dims,
        data_scale=shared.data_scale, vectorize=vectorize, draws=draws,
        means=tuple(bernoulli_sites(shared.guide_trace)) if keep_activations else (),
    )  # fmt: skip
    return ImportanceTraces(
        scored.log_p, scored.log_q, shared.data_scale, shared.data_plates, shared.model_trace,
        shared.guide_trace, shared.plate_nesting, shared.fixed, scored.site_finite,
        scored.values, particle_means=scored.means,
        particle_keys=keys if keep_attached else None, vectorized=vectorize,
    )  # fmt: skip


def is_bernoulli(fn: object) -> bool:
    """Whether a site's distribution is a Bernoulli (possibly as an event, expanded or masked)."""
    while fn is not None:
        if isinstance(fn, (BernoulliLogits, BernoulliProbs)):
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


def mean_activations(wake: ImportanceTraces, sites: Iterable[str]) -> dict[str, Array]:
    """Per site, the guide's probability that each unit is on, averaged over the particles
    and the datapoints (the data plates' dims): one value per unit, the other plate and the
    event dims of the site. Needs ``importance_traces(..., keep_activations=True)``."""
    means = {}
    for name in sites:
        mean = wake.particle_means[name]  # (K, *site batch, *event)
        event_dim = wake.guide_trace[name]["fn"].event_dim
        batch_rank = mean.ndim - 1 - event_dim
        data_axes = [1 + batch_rank + frame.dim for frame in wake.data_plates.values()]
        means[name] = jnp.mean(mean, axis=(0, *data_axes))
    return means


def path_log_weights(
    wake: ImportanceTraces, model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> Array:
    """``log w`` of the wake particles with a gradient only along the reparameterised samples.

    Each particle's key draws its samples again, now without stopping their gradients.
    ``log w`` there has the same value as ``wake.log_weights``; its gradient is the direct
    one (through θ and through φ in ``q``'s density) plus the path one (through the
    samples). Subtracting the wake's ``log w``, whose samples were stopped, leaves the path
    gradient alone — for :func:`~numpyro_wakesleep.objectives.dreg_wake_phi_loss`.
    """
    if wake.particle_keys is None:
        raise ValueError("path_log_weights needs importance_traces(..., keep_attached=True).")
    keep = frozenset(frame.dim for frame in wake.data_plates.values())

    def particle(key: Array) -> Array:
        model_trace, guide_trace = run_guide_and_model(
            model, guide, args, kwargs, wake.fixed, key, detach=False
        )
        log_p, log_q = _reduce(model_trace, guide_trace, keep, wake.plate_nesting, wake.data_scale)
        return log_p - log_q

    run = jax.vmap(particle) if wake.vectorized else _sequential(particle)
    log_weights = wake.log_weights
    return run(wake.particle_keys) - log_weights + jax.lax.stop_gradient(log_weights)


class ImportanceChunk(NamedTuple):
    """One chunk of :func:`importance_chunks`.

    - **log_weights**: ``(chunk, *datapoints)``, the data plates' dims outermost first
      (no datapoint dims when the weights are joint);
    - **draws**: the guide's values of its latent sites, ``(chunk, *site shape)`` (empty
      unless asked for);
    - **probe**: the pass that fixed the chunks' mini-batch and plate structure (the same
      for every chunk).
    """

    log_weights: Array
    draws: dict[str, Array]
    probe: Probe


def _chunk(
    fixed: dict[str, Array],
    arrays: list[Array],
    keys: Array,
    *,
    model: Callable,
    guide: Callable,
    structure: tuple,
    plate_nesting: int,
    keep_dims: frozenset[int],
    data_scale: float,
    vectorize: bool,
    draws: tuple[str, ...],
) -> tuple[Array, dict[str, Array]]:
    """Per-datapoint log-weights and the ``draws`` sites' values of one chunk of particles."""
    args, kwargs = join_arguments(structure, arrays)
    scored = _score_particles(
        model, guide, args, kwargs, fixed, keys, plate_nesting=plate_nesting,
        keep_dims=keep_dims, data_scale=data_scale, vectorize=vectorize, draws=draws,
    )  # fmt: skip
    log_weights = jax.lax.stop_gradient(scored.log_p - scored.log_q)  # (chunk, *plate dims)
    datapoints = [log_weights.shape[dim] for dim in sorted(keep_dims)]  # as per_datapoint
    return log_weights.reshape((len(log_weights), *datapoints)), scored.values


_CHUNK_STATIC = (
    "model", "guide", "structure", "plate_nesting", "keep_dims", "data_scale", "vectorize",
    "draws",
)  # fmt: skip
#: Compiled once per (model, guide, static arguments, chunk size, input shapes): repeated
#: evaluations and diagnostics of the same shapes do not recompile.
_jitted_chunk = jax.jit(_chunk, static_argnames=_CHUNK_STATIC)


def _chunk_function(**static: Any) -> Callable:
    """The cached jitted chunk function; a fresh one when something static is unhashable."""
    try:
        hash(tuple(static.values()))
    except TypeError:
        return jax.jit(partial(_chunk, **static))
    return partial(_jitted_chunk, **static)


def importance_chunks(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    rng_key: Array,
    params: dict[str, Array],
    num_particles: int,
    chunk_size: int,
    max_plate_nesting: float = math.inf,
    vectorize: bool = True,
    keep_draws: bool = False,
) -> Iterator[ImportanceChunk]:
    """Per-datapoint log-weights of ``num_particles`` particles, ``chunk_size`` at a time.

    Memory stays bounded however many particles are drawn. One :func:`probe` pass fixes the
    mini-batch and the plate structure of every chunk; each chunk is one compiled call
    (model, guide and the non-array arguments static, parameters and arrays traced),
    cached across calls. The draws depend on ``rng_key`` only: the same key gives the same
    particles whatever ``chunk_size`` and ``vectorize`` are. ``keep_draws`` also returns
    the guide's latent values (they cost device memory).
    """
    if num_particles < 1 or chunk_size < 1:
        raise ValueError(
            f"num_particles and chunk_size must be >= 1, got {num_particles} and {chunk_size}."
        )
    probe_key, particles_key = random.split(rng_key)
    shared = probe(
        model, guide, args, kwargs, rng_key=probe_key, params=dict(params),
        max_plate_nesting=max_plate_nesting,
    )  # fmt: skip
    latents = tuple(n for n, s in sample_sites(shared.guide_trace) if not s["is_observed"])
    structure, arrays = split_arguments((args, kwargs))
    run = _chunk_function(
        model=model,
        guide=guide,
        structure=structure,
        plate_nesting=shared.plate_nesting,
        keep_dims=shared.keep_dims,
        data_scale=shared.data_scale,
        vectorize=vectorize,
        draws=latents if keep_draws else (),
    )
    keys = random.split(particles_key, num_particles)
    step = min(chunk_size, num_particles)
    pad = -num_particles % step
    if pad:  # the last chunk is topped up with repeated keys (one compilation), then cut
        keys = jnp.concatenate([keys, keys[:pad]])
    for start in range(0, num_particles, step):
        log_weights, draws = run(shared.fixed, arrays, keys[start : start + step])
        kept = min(step, num_particles - start)
        yield ImportanceChunk(
            log_weights[:kept], {name: value[:kept] for name, value in draws.items()}, shared
        )


def _sequential(fn: Callable) -> Callable:
    """``fn`` mapped over the leading axis one element at a time (``jax.lax.map``)."""
    return lambda xs: jax.lax.map(fn, xs)


def split_arguments(tree: Any) -> tuple[tuple, list[Array]]:
    """``(static structure, array leaves)`` of ``tree``, the programs' ``(args, kwargs)``.

    Array leaves are traced under ``jit``; every other leaf (an ``int`` such as a data-set
    size, a string, ...) stays a Python value in the hashable static structure, so that plate
    sizes and the like keep working inside a jitted function of the arrays.
    """
    leaves, treedef = jax.tree.flatten(tree)
    is_array = tuple(isinstance(leaf, jax.Array | np.ndarray) for leaf in leaves)
    statics = tuple(None if a else leaf for leaf, a in zip(leaves, is_array, strict=True))
    arrays = [jnp.asarray(leaf) for leaf, a in zip(leaves, is_array, strict=True) if a]
    return (treedef, is_array, statics), arrays


def join_arguments(structure: tuple, leaves: list[Array]) -> Any:
    """The inverse of :func:`split_arguments`: the tree with the array ``leaves`` put back
    in place."""
    treedef, is_array, statics = structure
    supply = iter(leaves)
    leaves = [next(supply) if a else s for a, s in zip(is_array, statics, strict=True)]
    return jax.tree.unflatten(treedef, leaves)
