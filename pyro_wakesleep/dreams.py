"""The sleep phase: dream ``(z, x) ~ p_θ`` and score the dreamed latents under the guide.

Dreams come from the model with its observations released
(``poutine.uncondition``), without gradient. The guide must then see the
dreamed observations, never the real data beside dreamed latents; the
observations reach it, in order of precedence, through

1. a user callable ``dream_args(observations, args, kwargs) -> (args, kwargs)``;
2. a guide parameter named ``observations``, which receives ``{site: value}``
   (the convention of Pyro's ``ReweightedWakeSleep`` and ``CSIS``);
3. the call's own arguments, when every observed site's value *is* one of them.

Vectorised dreams carry a leading dimension of dreams. A guide that reads a
plate size off its input's leading dimension would then build the wrong plate;
:class:`Dreamer` notices (the guide's plate sizes differ from the wake pass,
or it raises), warns once, and dreams one at a time from then on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pyro.poutine as poutine
import torch
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from wakesleep.contract import (
    DreamArgs,
    DreamRoutingError,
    ModelGuideMismatchError,
    route_dreams,
)

from .traces import (
    DREAM_PLATE,
    DetachSamples,
    check_model_guide_match,
    log_density,
    observed_values,
    particle_plate,
    plate_sizes,
)

__all__ = ["DreamArgs", "DreamRoutingError", "Dreamer", "route_dreams"]


class Dreamer:
    """Draws dreams from the model and returns ``log q(z_m | x_m)`` per dream.

    :param num_dreams: ``M``, the number of dreams per step (each one draw of the
        model's whole data plate).
    :param vectorize: dream with a plate of ``M`` rather than a loop.
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
        plate_nesting: int,
        wake_model_trace: Trace,
        wake_guide_trace: Trace,
    ) -> Tensor:
        """Scaled ``log q(z_m | x_m)`` of ``M`` dreams, each summed over its datapoints: shape ``(M,)``."""
        real = observed_values(wake_model_trace)
        if self.vectorize:
            plate = particle_plate(DREAM_PLATE, self.num_dreams, plate_nesting)
            try:
                log_q, guide_trace = self._dream(
                    model, guide, args, kwargs, real, plate_nesting, plate
                )
            except (DreamRoutingError, ModelGuideMismatchError):
                raise
            except (RuntimeError, ValueError, IndexError):
                guide_trace = None
            if guide_trace is not None and plate_sizes(guide_trace) == plate_sizes(
                wake_guide_trace
            ):
                return log_q.reshape(self.num_dreams)
            log_q = self._sequential(model, guide, args, kwargs, real, plate_nesting)
            self._fall_back()  # only once one-at-a-time dreams have worked
            return log_q
        return self._sequential(model, guide, args, kwargs, real, plate_nesting)

    def _sequential(self, model, guide, args, kwargs, real, plate_nesting) -> Tensor:
        return torch.stack(
            [
                self._dream(model, guide, args, kwargs, real, plate_nesting)[0].reshape(())
                for _ in range(self.num_dreams)
            ]
        )

    def _dream(
        self,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        real: dict,
        plate_nesting: int,
        plate=None,
    ) -> tuple[Tensor, Trace]:
        dreaming_model, dreaming_guide = poutine.uncondition(model), guide
        if plate is not None:
            dreaming_model, dreaming_guide = plate(dreaming_model), plate(guide)
        with torch.no_grad(), DetachSamples():
            dream = poutine.trace(dreaming_model).get_trace(*args, **kwargs)
        dreamed = {
            name: site["value"]
            for name, site in dream.nodes.items()
            if site["type"] == "sample" and site["infer"].get("was_observed", False)
        }
        guide_args, guide_kwargs = route_dreams(guide, dreamed, real, args, kwargs, self.dream_args)
        with DetachSamples():  # an auxiliary guide site must not carry a pathwise gradient
            guide_trace = poutine.trace(poutine.replay(dreaming_guide, trace=dream)).get_trace(
                *guide_args, **guide_kwargs
            )
        for site in dream.nodes.values():  # read the dream as a wake pass would see it
            if site["type"] == "sample" and site["infer"].get("was_observed", False):
                site["is_observed"] = True
        check_model_guide_match(dream, guide_trace)
        ndim = plate_nesting + (plate is not None)
        keep = frozenset({-ndim}) if plate is not None else frozenset()
        log_q = log_density(guide_trace, keep, ndim)
        if log_q is None:
            raise ModelGuideMismatchError(
                "The guide samples no latent site, so the sleep phase has nothing to train. "
                "Use insomnia=1, or give the guide the model's latent sites."
            )
        return log_q, guide_trace

    def _fall_back(self) -> None:
        self.vectorize = False
        warnings.warn(
            "Vectorised dreaming gave the guide inputs with a leading dimension of "
            f"{self.num_dreams} dreams, and the guide then built plates of other sizes than "
            "in the wake phase (or failed), so dreams are now drawn one at a time, which is "
            "slower. To dream in parallel, write the guide so that plate sizes do not come "
            "from an input's leading dimension: index batch dimensions from the right "
            "(x.shape[-2] for a (batch, features) input) or pass the size explicitly.",
            RuntimeWarning,
            stacklevel=5,
        )
