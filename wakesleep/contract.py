"""What both backends check and say in the same words (DESIGN.md §1–2).

The objectives of ``pyro_wakesleep`` and ``numpyro_wakesleep`` take the same
arguments with the same meaning, raise the same errors and route dreams to the
guide by the same rules. Those rules are plain Python, so they live here once;
each backend only extracts the sets of sites or the values from its own traces.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any, Literal

__all__ = [
    "FIRST_PHASE",
    "DreamArgs",
    "DreamRoutingError",
    "ModelGuideMismatchError",
    "NonFiniteLossWarning",
    "Phase",
    "check_draw_arguments",
    "check_objective_arguments",
    "check_site_match",
    "route_dreams",
]

Phase = Literal["both", "model", "guide"]
#: The first phase of a step for each value of ``alternate``.
FIRST_PHASE: dict[object, Phase] = {
    False: "both",
    True: "model",
    "model_first": "model",
    "guide_first": "guide",
}
#: ``dream_args(observations, args, kwargs) -> (args, kwargs)``
DreamArgs = Callable[[dict[str, Any], tuple, dict], tuple[tuple, dict]]


class DreamRoutingError(ValueError):
    """The sleep phase found no way to show the guide the dreamed observations."""


class ModelGuideMismatchError(ValueError):
    """Model latents and guide sample sites disagree."""


class NonFiniteLossWarning(RuntimeWarning):
    """A wake-sleep step met a non-finite term and changed no parameter."""


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return int(value)


def _check_plate_nesting(max_plate_nesting: object) -> None:
    if max_plate_nesting != math.inf and (
        isinstance(max_plate_nesting, bool)
        or not isinstance(max_plate_nesting, numbers.Integral)
        or max_plate_nesting < 0
    ):
        raise ValueError(
            "max_plate_nesting must be a non-negative integer (the model's own plates, not "
            f"counting particles) or float('inf') to guess it, got {max_plate_nesting!r}."
        )


def check_draw_arguments(
    num_samples: object, chunk_size: object, max_plate_nesting: object, vectorize: object
) -> None:
    """Raise ``ValueError`` naming the first invalid argument of ``to_inference_data``."""
    _check_count("num_samples", num_samples)
    if chunk_size is not None:
        _check_count("chunk_size", chunk_size)
    _check_plate_nesting(max_plate_nesting)
    if not isinstance(vectorize, bool):
        raise ValueError(f"vectorize must be True or False, got {vectorize!r}.")


def check_objective_arguments(
    num_particles: object,
    insomnia: object,
    num_sleep_particles: object,
    vectorize_particles: object,
    max_plate_nesting: object,
    alternate: object,
    dream_args: object,
) -> None:
    """Raise ``ValueError`` naming the first invalid constructor argument of an objective."""
    _check_count("num_particles", num_particles)
    if num_sleep_particles is not None:
        _check_count("num_sleep_particles", num_sleep_particles)
    if (
        isinstance(insomnia, bool)
        or not isinstance(insomnia, numbers.Real)
        or not 0.0 <= insomnia <= 1.0
    ):
        raise ValueError(
            f"insomnia must be a number in [0, 1] (1: wake-phi only, 0: sleep-phi only), "
            f"got {insomnia!r}."
        )
    if not isinstance(vectorize_particles, bool):
        raise ValueError(f"vectorize_particles must be True or False, got {vectorize_particles!r}.")
    _check_plate_nesting(max_plate_nesting)
    if not (alternate is False or alternate is True or alternate in ("model_first", "guide_first")):
        raise ValueError(
            "alternate must be False (update model and guide together), True or 'model_first' "
            f"(model, then guide, ...), or 'guide_first', got {alternate!r}."
        )
    if dream_args is not None and not callable(dream_args):
        raise ValueError(
            "dream_args must be None or a callable (observations, args, kwargs) -> (args, kwargs), "
            f"got {dream_args!r}."
        )


def check_site_match(
    model_latents: Iterable[str],
    model_observed: Iterable[str],
    guide_sites: Iterable[str],
    sample_statement: str,
) -> None:
    """Raise :class:`ModelGuideMismatchError` naming the sites where model and guide disagree.

    :param guide_sites: the guide's sample sites, auxiliary ones excluded.
    :param sample_statement: ``"pyro.sample"`` or ``"numpyro.sample"``, for the advice.
    """
    latents, observed, guide = set(model_latents), set(model_observed), set(guide_sites)
    missing = sorted(latents - guide)
    if missing:
        raise ModelGuideMismatchError(
            f"The model has latent site(s) {missing} that the guide does not sample. Wake-sleep "
            "needs the guide to propose every latent variable of the model: add a "
            f"{sample_statement} statement with the same name to the guide (or observe the site "
            "in the model)."
        )
    extra = sorted(guide - latents)
    if extra:
        clash = sorted(set(extra) & observed)
        hint = f" (the model observes {clash}: the guide must not sample them)" if clash else ""
        raise ModelGuideMismatchError(
            f"The guide samples site(s) {extra} that are not latent sites of the model{hint}. "
            "Rename them to match the model's latent sites, remove them, or mark a genuine "
            'auxiliary variable with infer={"is_auxiliary": True}.'
        )


def _takes_observations(guide: Callable) -> bool:
    try:
        return "observations" in inspect.signature(guide).parameters
    except (TypeError, ValueError):  # builtins and other callables without a signature
        return False


def route_dreams(
    guide: Callable,
    dreamed: dict[str, Any],
    real: dict[str, Any],
    args: tuple,
    kwargs: dict,
    dream_args: DreamArgs | None = None,
) -> tuple[tuple, dict]:
    """The guide's ``(args, kwargs)`` for a sleep pass that shows it the ``dreamed`` observations.

    In order of precedence: (1) ``dream_args(dreamed, args, kwargs)``; (2) a guide parameter
    named ``observations`` receives ``dreamed`` (the convention of Pyro's
    ``ReweightedWakeSleep`` and ``CSIS``); (3) every argument that *is* (by identity) an
    observed value of the wake pass, ``real[site]``, is replaced by ``dreamed[site]``.

    :raises DreamRoutingError: naming the observed sites and the three options, when no
        rule applies or ``dream_args`` returns something other than ``(args, kwargs)``.
    """
    if dream_args is not None:
        routed = dream_args(dreamed, args, kwargs)
        if not (
            isinstance(routed, tuple)
            and len(routed) == 2
            and isinstance(routed[0], tuple | list)
            and isinstance(routed[1], dict)
        ):
            raise DreamRoutingError(
                "dream_args must return a pair (args, kwargs): a tuple of positional arguments "
                f"and a dict of keyword arguments for the guide; it returned {type(routed)}."
            )
        return tuple(routed[0]), routed[1]
    if _takes_observations(guide):
        return args, {**kwargs, "observations": dreamed}

    new_args, new_kwargs = list(args), dict(kwargs)
    for site, value in real.items():
        position = next((i for i, a in enumerate(args) if a is value), None)
        keyword = next((k for k, v in kwargs.items() if v is value), None)
        if position is not None:
            new_args[position] = dreamed[site]
        elif keyword is not None:
            new_kwargs[keyword] = dreamed[site]
        else:
            break
    else:
        if real:
            return tuple(new_args), new_kwargs
    raise DreamRoutingError(
        f"The sleep phase cannot show the guide the dreamed values of the observed site(s) "
        f"{sorted(real)}: no argument of the call is the observed value itself. Do one of: "
        "(1) pass dream_args=lambda observations, args, kwargs: (new_args, new_kwargs) to the "
        "objective; (2) give the guide a keyword parameter `observations=None` and read the "
        "data from observations[site] when it is given; (3) pass each observed value to "
        "model and guide as an argument and use it unchanged as `obs=`. Or set insomnia=1 "
        "(no sleep phase)."
    )
