"""The sleep phase: dream ``(z, x) ~ p_θ`` and score the dreamed latents under the guide.

Dreams come from the model with its observations released
(``numpyro.handlers.uncondition``), without gradient (``stop_gradient`` on every
dreamed value). The guide must then see the dreamed observations, never the real
data beside dreamed latents; the observations reach it, in order of precedence,
through

1. a user callable ``dream_args(observations, args, kwargs) -> (args, kwargs)``;
2. a guide parameter named ``observations``, which receives ``{site: value}``
   (the convention of Pyro's ``ReweightedWakeSleep`` and ``CSIS``);
3. the call's own arguments: every argument that *is* an observed value is
   replaced by the dream; for ``obs=x[idx]`` under a sub-sampled plate, with
   ``x`` an argument, the guide gets ``x`` with the dreams written at rows
   ``idx``. Under ``jit`` whether ``x[idx]`` is the observed value is only known
   to the compiled step: an argument that is not keeps its data, and a sleep
   term with an observed site left unrouted is NaN (refused by
   :class:`~numpyro_wakesleep.AlternatingSVI`), never a silent mix.

Each dream is one draw of the model's whole data plate, with the wake pass's
mini-batch indices and parameters substituted. Dreams are ``jax.vmap``-ed over
their keys, so the guide sees one dream at a time and its shapes are those of the
wake pass. A guide that cannot be batched (a host callback without a batching
rule, say) or that builds plates of other sizes than in the wake pass makes
:class:`Dreamer` warn once and dream one at a time (``jax.lax.map``) from then on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, random
from numpyro.handlers import replay, seed, substitute, trace, uncondition

from wakesleep.contract import (
    DreamArgs,
    DreamRoutingError,
    ModelGuideMismatchError,
    SubSample,
    route_dreams,
)

from .traces import (
    DetachSamples,
    Trace,
    VectorizationWarning,
    check_model_guide_match,
    log_density,
    observed_values,
    plate_sizes,
)

__all__ = ["DreamArgs", "DreamRoutingError", "Dreamer", "route_dreams"]

#: What ``jax.vmap`` raises for a guide that runs one dream at a time but cannot be batched:
#: a primitive without a batching rule (``jax.pure_callback`` without ``vmap_method``)
#: raises ``NotImplementedError``; a batching rule that rejects its operands raises
#: ``TypeError`` or ``ValueError``.
BATCHING_ERRORS = (NotImplementedError, TypeError, ValueError)


class ArrayRows:
    """:class:`wakesleep.contract.RowAccess` for JAX arrays; one per dream.

    Under ``jit`` the comparison of ``x[idx]`` with the observed value is traced: the
    dreams are then written only where it holds, and :attr:`routed` says whether every
    site so routed found its argument.
    """

    def __init__(self) -> None:
        self._holds: dict[int, list] = {}  # id of a site's dream -> answers of its candidates

    @staticmethod
    def holds(argument: object, dim: int, indices: Array, value: Array) -> Any:
        if not isinstance(argument, jax.Array | np.ndarray) or jnp.ndim(argument) != jnp.ndim(
            value
        ):
            return False
        axis = jnp.ndim(argument) + dim
        if any(a != v for d, (a, v) in enumerate(zip(argument.shape, value.shape, strict=True))
               if d != axis):  # fmt: skip
            return False
        rows = jnp.take(argument, indices, axis=axis)
        if rows.shape != jnp.shape(value):
            return False
        same = jnp.all(rows == value)
        return same if isinstance(same, jax.core.Tracer) else bool(same)

    def write(self, argument: Array, dim: int, indices: Array, dream: Array, holds: Any) -> Array:
        self._holds.setdefault(id(dream), []).append(holds)
        index = (slice(None),) * (jnp.ndim(argument) + dim) + (indices,)
        written = jnp.asarray(argument).at[index].set(dream.astype(argument.dtype))
        return written if holds is True else jnp.where(holds, written, argument)

    @property
    def routed(self) -> Any:
        """``True``, or a traced boolean: every site routed through rows found its argument."""
        answers = [jnp.any(jnp.asarray(found)) for found in self._holds.values()]
        return jnp.all(jnp.asarray(answers)) if answers else True


def sub_samples(model_trace: Trace) -> dict[str, list[SubSample]]:
    """For each observed site, where its value may be rows of a sub-sampled plate's data: at
    the plate's dimension when the plate encloses the site, else along its first axis."""
    plates = {
        name: site
        for name, site in model_trace.items()
        if site["type"] == "plate" and site["args"][1] not in (None, site["args"][0])
    }
    found: dict[str, list[SubSample]] = {}
    for name, value in observed_values(model_trace).items():
        site = model_trace[name]
        inside = {f.name: f.dim for f in site["cond_indep_stack"] if f.name in plates}
        found[name] = [
            SubSample(
                inside[plate] - site["fn"].event_dim if plate in inside else -jnp.ndim(value),
                plates[plate]["value"],
            )
            for plate in plates
            if plate in inside or jnp.ndim(value) > 0
        ]
    return found


class Dreamer:
    """Draws dreams from the model and returns ``log q(z_m | x_m)`` per dream.

    :param num_dreams: ``M``, the number of dreams per step (each one draw of the
        model's whole data plate).
    :param dream_args: optional routing callable (see module docstring).
    :param routing_hint: the last sentence of a routing error (how to train without dreams).
    """

    def __init__(
        self, *, num_dreams: int, dream_args: DreamArgs | None, routing_hint: str = ""
    ) -> None:
        self.num_dreams = num_dreams
        self.dream_args = dream_args
        self.routing_hint = routing_hint

    def log_q(
        self,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        *,
        rng_key: Array,
        fixed: dict[str, Array],
        plate_nesting: int,
        wake_model_trace: Trace,
        wake_guide_trace: Trace,
        vectorize: bool,
    ) -> tuple[Array, bool]:
        """Scaled ``log q(z_m | x_m)`` of ``M`` dreams, each summed over its datapoints (shape
        ``(M,)``), and whether dreams may stay vectorised.

        ``fixed`` (parameters and the wake pass's mini-batch indices) is substituted into
        model and guide, so dreams cover the same mini-batch with the same ``N/B`` scale.
        ``vectorize`` dreams with ``jax.vmap`` rather than ``jax.lax.map``; a guide that
        cannot be batched then dreams one at a time, with a warning, and the answer is
        ``False``: the caller keeps it, so that later steps dream one at a time from the start.
        """
        keys = random.split(rng_key, self.num_dreams)
        dream = partial(
            self._dream, model, guide, args, kwargs, observed_values(wake_model_trace),
            sub_samples(wake_model_trace), fixed, plate_nesting,
        )  # fmt: skip
        if vectorize:
            seen: list[dict[str, int]] = []
            try:
                log_q = jax.vmap(partial(dream, seen=seen))(keys)
            except (DreamRoutingError, ModelGuideMismatchError):
                raise
            except BATCHING_ERRORS:  # a guide that cannot be batched: retry one dream at a time
                log_q = None
            expected = plate_sizes(wake_guide_trace)
            if log_q is not None and all(sizes == expected for sizes in seen):
                return log_q, True
            log_q = jax.lax.map(dream, keys)  # raises the guide's own error if it fails too
            self._warn_fall_back()
            return log_q, False
        return jax.lax.map(dream, keys), False

    def _dream(
        self,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        real: dict[str, Array],
        subsampled: dict[str, list[SubSample]],
        fixed: dict[str, Array],
        plate_nesting: int,
        rng_key: Array,
        seen: list[dict[str, int]] | None = None,
    ) -> Array:
        model_key, guide_key = random.split(rng_key)
        dreaming_model = seed(substitute(uncondition(model), data=fixed), model_key)
        with DetachSamples():
            dream = trace(dreaming_model).get_trace(*args, **kwargs)
        dreamed = {
            name: site["value"]
            for name, site in dream.items()
            if site["type"] == "sample" and site["infer"].get("was_observed", False)
        }
        rows = ArrayRows()
        guide_args, guide_kwargs = route_dreams(
            guide, dreamed, real, args, kwargs, self.dream_args,
            sub_samples=subsampled, rows=rows, hint=self.routing_hint,
        )  # fmt: skip
        replayed_guide = seed(substitute(replay(guide, trace=dream), data=fixed), guide_key)
        with DetachSamples():
            guide_trace = trace(replayed_guide).get_trace(*guide_args, **guide_kwargs)
        for name in dreamed:  # read the dream as a wake pass would see it
            dream[name]["is_observed"] = True
        check_model_guide_match(dream, guide_trace)
        if seen is not None:
            seen.append(plate_sizes(guide_trace))
        log_q = log_density(guide_trace, frozenset(), plate_nesting)
        if log_q is None:
            raise ModelGuideMismatchError(
                "The guide samples no latent site, so the sleep phase has nothing to train. "
                "Use insomnia=1, or give the guide the model's latent sites."
            )
        # an observed site whose rows no argument held (known only under jit): no silent mix
        return jnp.where(rows.routed, log_q.reshape(()), jnp.nan)

    def _warn_fall_back(self) -> None:
        warnings.warn(
            f"Vectorised dreaming (jax.vmap over {self.num_dreams} dreams) failed for this "
            "guide, or the guide then built plates of other sizes than in the wake phase, so "
            "dreams are now drawn one at a time (jax.lax.map), which is slower. To dream in "
            "parallel, write the guide so that it can be batched: use jax.numpy operations "
            "(a jax.pure_callback needs a vmap_method), and take plate sizes from the right "
            "of an input's shape (x.shape[-2] for a (batch, features) input) or pass them "
            "explicitly.",
            VectorizationWarning,
            stacklevel=5,
        )
