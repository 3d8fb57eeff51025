"""The sleep phase: dream ``(z, x) ~ p_θ`` and score the dreamed latents under the guide.

Dreams come from the model with its observations released
(``numpyro.handlers.uncondition``), without gradient (``stop_gradient`` on every
dreamed value). The guide must then see the dreamed observations, never the real
data beside dreamed latents; the observations reach it, in order of precedence,
through

1. a user callable ``dream_args(observations, args, kwargs) -> (args, kwargs)``;
2. a guide parameter named ``observations``, which receives ``{site: value}``
   (the convention of Pyro's ``ReweightedWakeSleep`` and ``CSIS``);
3. the call's own arguments, when every observed site's value *is* one of them.

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

import jax
from jax import Array, random
from numpyro.handlers import replay, seed, substitute, trace, uncondition

from wakesleep.contract import (
    DreamArgs,
    DreamRoutingError,
    ModelGuideMismatchError,
    route_dreams,
)

from .traces import (
    DetachSamples,
    Trace,
    check_model_guide_match,
    log_density,
    observed_values,
    plate_sizes,
)

__all__ = ["DreamArgs", "DreamRoutingError", "Dreamer", "route_dreams"]


class Dreamer:
    """Draws dreams from the model and returns ``log q(z_m | x_m)`` per dream.

    :param num_dreams: ``M``, the number of dreams per step (each one draw of the
        model's whole data plate).
    :param vectorize: dream with ``jax.vmap`` rather than ``jax.lax.map``.
    :param dream_args: optional routing callable (see module docstring).
    """

    def __init__(self, num_dreams: int, vectorize: bool, dream_args: DreamArgs | None) -> None:
        self.num_dreams = num_dreams
        self.vectorize = vectorize
        self.dream_args = dream_args

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
    ) -> Array:
        """Scaled ``log q(z_m | x_m)`` of ``M`` dreams, each summed over its datapoints: shape ``(M,)``.

        ``fixed`` (parameters and the wake pass's mini-batch indices) is substituted into
        model and guide, so dreams cover the same mini-batch with the same ``N/B`` scale.
        """
        keys = random.split(rng_key, self.num_dreams)
        dream = partial(
            self._dream, model, guide, args, kwargs, observed_values(wake_model_trace), fixed,
            plate_nesting,
        )  # fmt: skip
        if self.vectorize:
            seen: list[dict[str, int]] = []
            try:
                log_q = jax.vmap(partial(dream, seen=seen))(keys)
            except (DreamRoutingError, ModelGuideMismatchError):
                raise
            except Exception:  # a guide that cannot be batched: retry one dream at a time
                log_q = None
            expected = plate_sizes(wake_guide_trace)
            if log_q is not None and all(sizes == expected for sizes in seen):
                return log_q
            log_q = jax.lax.map(dream, keys)  # raises the guide's own error if it fails too
            self._fall_back()
            return log_q
        return jax.lax.map(dream, keys)

    def _dream(
        self,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        real: dict[str, Array],
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
        guide_args, guide_kwargs = route_dreams(guide, dreamed, real, args, kwargs, self.dream_args)
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
        return log_q.reshape(())

    def _fall_back(self) -> None:
        self.vectorize = False
        warnings.warn(
            f"Vectorised dreaming (jax.vmap over {self.num_dreams} dreams) failed for this "
            "guide, or the guide then built plates of other sizes than in the wake phase, so "
            "dreams are now drawn one at a time (jax.lax.map), which is slower. To dream in "
            "parallel, write the guide so that it can be batched: use jax.numpy operations "
            "(a jax.pure_callback needs a vmap_method), and take plate sizes from the right "
            "of an input's shape (x.shape[-2] for a (batch, features) input) or pass them "
            "explicitly.",
            RuntimeWarning,
            stacklevel=5,
        )
