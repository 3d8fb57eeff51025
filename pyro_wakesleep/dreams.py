"""The sleep phase: dream ``(z, x) ~ p_θ`` and score the dreamed latents under the guide.

Dreams come from the model with its observations released
(``poutine.uncondition``), without gradient. The guide must then see the
dreamed observations, never the real data beside dreamed latents; the
observations reach it, in order of precedence, through

1. a user callable ``dream_args(observations, args, kwargs) -> (args, kwargs)``;
2. a guide parameter named ``observations``, which receives ``{site: value}``
   (the convention of Pyro's ``ReweightedWakeSleep`` and ``CSIS``);
3. the call's own arguments: every argument that *is* an observed value is
   replaced by the dream; for ``obs=x[idx]`` under a sub-sampled plate, with
   ``x`` an argument, the guide gets ``x`` with the dreams written at rows
   ``idx`` (dreams replay the wake pass's mini-batch, so model and guide share
   its indices).

Vectorised dreams carry a leading dimension of dreams. A guide that reads a
plate size off its input's leading dimension, or indexes it from the left
(``x[idx]``), would then mix dreams; :class:`Dreamer` checks once per program
and argument shapes that the last of a vectorised batch of dreams is scored as
it is alone, and otherwise (or when the guide's plate sizes differ from the
wake pass, or it raises) warns once and dreams one at a time from then on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pyro.poutine as poutine
import torch
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from wakesleep.contract import (
    DreamArgs,
    DreamRoutingError,
    ModelGuideMismatchError,
    SubSample,
    VectorizationWarning,
    route_dreams,
)

from .traces import (
    DREAM_PLATE,
    OWN_PLATES,
    DetachSamples,
    check_model_guide_match,
    data_plates,
    log_density,
    mini_batch,
    observed_values,
    one_particle,
    particle_mismatches,
    particle_plate,
    plate_sizes,
    side_run,
)

__all__ = ["DreamArgs", "DreamRoutingError", "Dreamer", "route_dreams"]


class TensorRows:
    """:class:`wakesleep.contract.RowAccess` for torch tensors."""

    @staticmethod
    def holds(argument: object, dim: int, indices: Tensor, value: Tensor) -> bool:
        if not isinstance(argument, Tensor) or argument.dim() != value.dim():
            return False
        if any(a != v for d, (a, v) in enumerate(zip(argument.shape, value.shape, strict=True))
               if d != argument.dim() + dim):  # fmt: skip
            return False
        rows = argument.index_select(dim, indices.to(argument.device))
        return rows.shape == value.shape and torch.equal(rows, value.to(rows.dtype))

    @staticmethod
    def write(argument: Tensor, dim: int, indices: Tensor, dream: Tensor, holds: bool) -> Tensor:
        leading = dream.shape[: dream.dim() - argument.dim()]
        full = argument.expand(*leading, *argument.shape)
        return full.index_copy(dim, indices.to(argument.device), dream.to(argument.dtype))


def sub_samples(model_trace: Trace) -> dict[str, list[SubSample]]:
    """For each observed site, where its value may be rows of a sub-sampled plate's data: at
    the plate's dimension when the plate encloses the site, else along its first axis."""
    plates = {
        name: site
        for name, site in model_trace.nodes.items()
        if site_is_subsample(site)
        and name not in OWN_PLATES
        and site["fn"].subsample_size not in (None, site["fn"].size)
    }
    found: dict[str, list[SubSample]] = {}
    for name, value in observed_values(model_trace).items():
        site = model_trace.nodes[name]
        inside = {f.name: f.dim for f in site["cond_indep_stack"] if f.name in plates}
        found[name] = [
            SubSample(
                inside[plate] - site["fn"].event_dim if plate in inside else -value.dim(),
                plates[plate]["value"],
            )
            for plate in plates
            if plate in inside or value.dim() > 0
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
        self._checked: set[tuple] = set()  # check keys for which vectorised dreams passed

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
        vectorize: bool,
        check_key: tuple | None = None,
    ) -> tuple[Tensor, bool]:
        """Scaled ``log q(z_m | x_m)`` of ``M`` dreams, each summed over its datapoints (shape
        ``(M,)``), and whether dreams may stay vectorised.

        Dreams replay the wake pass's plate sub-sampling. ``vectorize`` dreams with a plate
        of ``M`` rather than a loop; when that is not safe for this guide the dreams are
        drawn one at a time, with a warning, and the answer is ``False``: the caller keeps
        it, so that the next steps dream one at a time from the start. ``check_key``
        (hashable, e.g. the programs and argument shapes) names what a vectorisation check
        once passed holds for.
        """
        call = _Call(
            model, guide, args, kwargs, plate_nesting,
            observed_values(wake_model_trace),
            sub_samples(wake_model_trace),
            mini_batch(wake_guide_trace, wake_model_trace),
        )  # fmt: skip
        if vectorize:
            plate = particle_plate(DREAM_PLATE, self.num_dreams, plate_nesting)
            try:
                dream, guide_trace = self._dream(call, plate, call.batch)
            except (DreamRoutingError, ModelGuideMismatchError):
                raise
            except (RuntimeError, ValueError, IndexError):
                guide_trace = None
            if (
                guide_trace is not None
                and plate_sizes(guide_trace) == plate_sizes(wake_guide_trace)
                and (check_key in self._checked or self._vectorization_is_safe(call, check_key))
            ):
                log_q = _log_q(guide_trace, plate_nesting + 1, vectorized=True)
                return log_q.reshape(self.num_dreams), True
            log_q = self._sequential(call)
            self._warn_fall_back()  # only once one-at-a-time dreams have worked
            return log_q, False
        return self._sequential(call), False

    def _sequential(self, call: _Call) -> Tensor:
        return torch.stack(
            [
                _log_q(self._dream(call, None, call.batch)[1], call.plate_nesting).reshape(())
                for _ in range(self.num_dreams)
            ]
        )

    def _dream(self, call: _Call, plate, replayed: Trace) -> tuple[Trace, Trace]:
        """One dream (or a plate of them) replaying ``replayed``, and the guide's trace on it."""
        dreaming_model = poutine.replay(poutine.uncondition(call.model), trace=replayed)
        dreaming_guide = call.guide
        if plate is not None:
            dreaming_model, dreaming_guide = plate(dreaming_model), plate(call.guide)
        with torch.no_grad(), DetachSamples():
            dream = poutine.trace(dreaming_model).get_trace(*call.args, **call.kwargs)
        dreamed = {
            name: site["value"]
            for name, site in dream.nodes.items()
            if site["type"] == "sample" and site["infer"].get("was_observed", False)
        }
        guide_args, guide_kwargs = route_dreams(
            call.guide, dreamed, call.real, call.args, call.kwargs, self.dream_args,
            sub_samples=call.sub_samples, rows=TensorRows, hint=self.routing_hint,
        )  # fmt: skip
        with DetachSamples():  # an auxiliary guide site must not carry a pathwise gradient
            guide_trace = poutine.trace(poutine.replay(dreaming_guide, trace=dream)).get_trace(
                *guide_args, **guide_kwargs
            )
        for site in dream.nodes.values():  # read the dream as a wake pass would see it
            if site["type"] == "sample" and site["infer"].get("was_observed", False):
                site["is_observed"] = True
        check_model_guide_match(dream, guide_trace)
        return dream, guide_trace

    def _vectorization_is_safe(self, call: _Call, check_key: tuple | None) -> bool:
        """Whether the last of a vectorised batch of dreams is dreamed and scored as it is
        alone (see :func:`pyro_wakesleep.traces.vectorization_mismatches`)."""
        with side_run():
            plate = particle_plate(DREAM_PLATE, self.num_dreams, call.plate_nesting)
            last = self.num_dreams - 1
            single = particle_plate(DREAM_PLATE, 1, call.plate_nesting)
            try:
                dream, guide_trace = self._dream(call, plate, call.batch)
                one = one_particle(dream, last, call.plate_nesting)
                for site in one.nodes.values():  # released again, so that replay dreams it
                    if site.get("infer", {}).get("was_observed", False):
                        site["is_observed"] = False
                one_dream, one_guide = self._dream(call, single, one)
            except (RuntimeError, ValueError, IndexError):
                return False
            keep = frozenset(frame.dim for frame in data_plates(dream, guide_trace).values())
            safe = not particle_mismatches(
                {"model": (dream, one_dream), "guide": (guide_trace, one_guide)},
                last,
                keep,
                call.plate_nesting,
            )
        if safe and check_key is not None:
            self._checked.add(check_key)
        return safe

    def _warn_fall_back(self) -> None:
        warnings.warn(
            "Vectorised dreaming gave the guide inputs with a leading dimension of "
            f"{self.num_dreams} dreams, and the guide then mixed dreams, built plates of other "
            "sizes than in the wake phase, or failed, so dreams are now drawn one at a time, "
            "which is slower. To dream in parallel, write the guide so that it broadcasts over "
            "extra dimensions on the left: index and size batch dimensions from the right "
            "(x.shape[-2] for a (batch, features) input, x.index_select(-2, idx) rather than "
            "x[idx]) or pass sizes explicitly.",
            VectorizationWarning,
            stacklevel=5,
        )


def _log_q(guide_trace: Trace, ndim: int, vectorized: bool = False) -> Tensor:
    """The guide's log-density of dreams: one entry per dream when vectorised."""
    log_q = log_density(guide_trace, frozenset({-ndim}) if vectorized else frozenset(), ndim)
    if log_q is None:
        raise ModelGuideMismatchError(
            "The guide samples no latent site, so the sleep phase has nothing to train. "
            "Use insomnia=1, or give the guide the model's latent sites."
        )
    return log_q


@dataclass
class _Call:
    """What every dream of one step shares: the programs, their arguments, the wake pass's
    observed values, their sub-sampled rows and its mini-batch."""

    model: Callable
    guide: Callable
    args: tuple
    kwargs: dict
    plate_nesting: int
    real: dict[str, Tensor]
    sub_samples: dict[str, list[SubSample]]
    batch: Trace
