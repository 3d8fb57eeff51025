"""What both backends check and say in the same words (``docs/design.md`` §1–2).

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
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import numpy as np

__all__ = [
    "FIRST_PHASE",
    "DreamArgs",
    "DreamRoutingError",
    "ModelGuideMismatchError",
    "NonFiniteDataError",
    "NonFiniteLossWarning",
    "PHASES",
    "Phase",
    "ROUTING_HINTS",
    "RowAccess",
    "Sparsity",
    "SubSample",
    "VectorizationWarning",
    "check_draw_arguments",
    "check_objective_arguments",
    "check_site_match",
    "check_sparsity",
    "check_wake_phi",
    "not_reparameterisable_error",
    "chain_plate_error",
    "chain_size_error",
    "chain_index_error",
    "not_an_instance",
    "non_finite_data_error",
    "non_finite_loss_message",
    "route_dreams",
]

Phase = Literal["both", "model", "guide"]
#: Every phase, the vocabulary of both backends — ``"both"`` updates model and guide,
#: ``"model"`` the model only (wake-θ), ``"guide"`` the guide only.
PHASES: tuple[Phase, ...] = get_args(Phase)
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


class NonFiniteDataError(ValueError):
    """An observed site holds NaN or infinite values where no mask hides them."""


class VectorizationWarning(RuntimeWarning):
    """Particles or dreams could not be batched for this model and guide: they now run one
    at a time."""


def non_finite_loss_message(
    bad_terms: list[str], dead_datapoints: int, bad_sites: list[str], advice: str = ""
) -> str:
    """What a non-finite wake-sleep evaluation says, from the facts a backend extracted.

    :param bad_terms: the names of the non-finite terms (``"loss"``, ``"wake_theta"``, ...).
    :param dead_datapoints: how many datapoints have zero weight under every particle.
    :param bad_sites: ``"model site 'z'"``-style labels of sites with a non-finite
        log-density.
    :param advice: a last sentence particular to the backend.
    """
    parts = [f"Non-finite wake-sleep term(s) {bad_terms}."]
    if dead_datapoints:
        parts.append(
            f"{dead_datapoints} datapoint(s) have zero weight under every particle "
            "(log p(x, z) - log q(z|x) = -inf for all of them)."
        )
    if bad_sites:
        parts.append(f"Non-finite log-probabilities at {', '.join(bad_sites)}.")
    parts.append(
        "Check that the guide proposes only values the model supports, that probabilities "
        "are not exactly 0 or 1 (clamp logits), and the learning rate." + advice
    )
    return " ".join(parts)


def non_finite_data_error(
    site: str,
    *,
    bad: np.ndarray,
    kinds: list[str],
    sub_sampled: dict[int, np.ndarray],
    mask_statement: str,
) -> NonFiniteDataError:
    """The error for an observed site holding ``kinds`` (``"NaN"``, ``"inf"``).

    :param bad: boolean, one entry per element of the site's batch dimensions: whether that
        datapoint holds a non-finite value that no mask hides.
    :param sub_sampled: ``{axis of bad: the data-set indices along it}`` for sub-sampled
        plates, so that datapoints are named by their index in the data set.
    :param mask_statement: ``"poutine.mask"`` or ``"handlers.mask"``, for the advice.
    """
    positions = np.argwhere(bad)
    for axis, indices in sub_sampled.items():
        positions[:, axis] = np.asarray(indices)[positions[:, axis]]
    shown = [int(p[0]) if len(p) == 1 else tuple(int(i) for i in p) for p in positions[:10]]
    shown = shown if np.ndim(bad) else []
    if shown:
        more = f", ... ({len(positions)} in all)" if len(positions) > len(shown) else ""
        where = f"at datapoint(s) {', '.join(map(str, shown))}{more}"
    else:
        where = "(the site has no batch dimension to point at)"
    return NonFiniteDataError(
        f"Observed site '{site}' holds {' and '.join(kinds)} {where}. Wake-sleep needs finite "
        "observations: remove or impute those values, or hide missing ones with "
        f"{mask_statement}(mask=...) (False where missing). No parameter was changed."
    )


@dataclass(frozen=True)
class Sparsity:
    r"""A sparsity constraint on the guide's binary units (sparse wake-sleep; ``docs/design.md §7``).

    For every Bernoulli latent site of the guide (or the ``sites`` named), :math:`\hat\rho_j`
    is the guide's probability that unit ``j`` is on, averaged over the datapoints of the
    batch (and over the particles' draws of the layers below). The guide loss gains

    .. math:: \lambda \sum_j \mathrm{KL}\big(\mathrm{Bernoulli}(\rho)\,\|\,
              \mathrm{Bernoulli}(\hat\rho_j)\big)

    per datapoint (so ``N`` times this on a data set of ``N``, like the other guide terms),
    with :math:`\rho` = ``target`` and :math:`\lambda` = ``weight``, as in sparse sigmoid
    and deep belief nets (Lee, Ekanadham & Ng 2008). The generative model then learns from
    sparse codes.

    :param target: the desired mean activation, in ``(0, 1)``.
    :param weight: :math:`\lambda \ge 0` (0 switches the penalty off but still reports
        the mean activation).
    :param sites: names of Bernoulli latent sites of the guide; ``None``: all of them.
    """

    target: float = 0.05
    weight: float = 1.0
    sites: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if (
            isinstance(self.target, bool)
            or not isinstance(self.target, numbers.Real)
            or not 0.0 < self.target < 1.0
        ):
            raise ValueError(
                f"Sparsity target must be a mean activation strictly between 0 and 1, got "
                f"{self.target!r}."
            )
        if (
            isinstance(self.weight, bool)
            or not isinstance(self.weight, numbers.Real)
            or not math.isfinite(self.weight)
            or self.weight < 0
        ):
            raise ValueError(f"Sparsity weight must be a finite number >= 0, got {self.weight!r}.")
        if self.sites is not None:
            sites = (self.sites,) if isinstance(self.sites, str) else tuple(self.sites)
            if not sites or not all(isinstance(name, str) for name in sites):
                raise ValueError(
                    f"Sparsity sites must be None (every Bernoulli latent of the guide) or "
                    f"site names, got {self.sites!r}."
                )
            object.__setattr__(self, "sites", sites)

    def chosen_sites(self, bernoulli: list[str], latent: list[str]) -> list[str]:
        """The sites the penalty covers, given the guide's Bernoulli latent sites and all its
        latent sites; an error naming any requested site that is not a Bernoulli latent."""
        if self.sites is None:
            if not bernoulli:
                raise ValueError(
                    "Sparsity constrains Bernoulli latent sites of the guide, and this guide "
                    f"has none (its latent sites: {latent}). Remove sparsity=, or give the "
                    "guide binary units (dist.Bernoulli)."
                )
            return bernoulli
        wrong = [name for name in self.sites if name not in bernoulli]
        if wrong:
            kinds = [
                f"'{name}' ({'not Bernoulli' if name in latent else 'not a guide site'})"
                for name in wrong
            ]
            raise ValueError(
                f"Sparsity sites must be Bernoulli latent sites of the guide: {', '.join(kinds)}. "
                f"The guide's Bernoulli latents are {bernoulli}."
            )
        return list(self.sites)


#: How wake-φ is estimated: the score function, or doubly reparameterised (Tucker et al. 2019).
WAKE_PHI_ESTIMATORS = ("score", "dreg")


def check_wake_phi(wake_phi: object) -> None:
    """Raise ``ValueError`` unless ``wake_phi`` is ``"score"`` or ``"dreg"``."""
    if wake_phi not in WAKE_PHI_ESTIMATORS:
        raise ValueError(
            f"wake_phi must be 'score' (the self-normalised score estimator) or 'dreg' (doubly "
            f"reparameterised, for reparameterisable guides), got {wake_phi!r}."
        )


def check_sparsity(sparsity: object) -> None:
    """Raise ``ValueError`` unless ``sparsity`` is ``None`` or a :class:`Sparsity`."""
    if sparsity is not None and not isinstance(sparsity, Sparsity):
        raise ValueError(
            "sparsity must be None or Sparsity(target=0.05, weight=1.0, sites=None) (importable "
            f"from the backend's package), got {sparsity!r}."
        )


def not_reparameterisable_error(sites: list[str]) -> ValueError:
    """The guide sites that ``wake_phi="dreg"`` cannot differentiate through."""
    return ValueError(
        f"wake_phi='dreg' differentiates through the guide's samples, but guide site(s) "
        f"{sites} cannot be reparameterised (their distributions have no rsample: discrete "
        "or otherwise). Use wake_phi='score' (the default) for this guide."
    )


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
    *, num_samples: object, chunk_size: object, max_plate_nesting: object, vectorize: object
) -> None:
    """Raise ``ValueError`` naming the first invalid argument of ``to_inference_data``."""
    _check_count("num_samples", num_samples)
    if chunk_size is not None:
        _check_count("chunk_size", chunk_size)
    _check_plate_nesting(max_plate_nesting)
    if not isinstance(vectorize, bool):
        raise ValueError(f"vectorize must be True or False, got {vectorize!r}.")


def not_an_instance(objective: str | None = None) -> str:
    """The message for an objective class handed to SVI where an instance belongs
    (``objective`` the class name, when known)."""
    name = objective or "ReweightedWakeSleep"
    which = f"the class {objective}" if objective else "an objective class"
    return (
        f"SVI was given {which} where an objective instance belongs: write loss={name}() "
        f"(with parentheses, and any arguments inside them, e.g. {name}(num_particles=10))."
    )


def check_objective_arguments(
    objective: str,
    *,
    num_particles: object,
    insomnia: object,
    num_sleep_particles: object,
    vectorize_particles: object,
    max_plate_nesting: object,
    alternate: object,
    dream_args: object,
) -> None:
    """Raise ``ValueError`` naming the first invalid constructor argument of an objective."""
    if callable(num_particles):  # SVI called the class itself with (model, guide, ...)
        raise ValueError(not_an_instance(objective))
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


class RowAccess(Protocol):
    """How a backend reads and writes the rows of an argument along one dimension."""

    def holds(self, argument: Any, dim: int, indices: Any, value: Any) -> Any:
        """Whether ``value`` is ``argument``'s rows ``indices`` along ``dim`` (counted from the
        right): ``False`` when it is not; else ``True``, or a traced boolean when only the
        compiled step can tell (NumPyro under ``jit``)."""

    def write(self, argument: Any, dim: int, indices: Any, dream: Any, holds: Any) -> Any:
        """``argument`` with ``dream`` written at rows ``indices`` along ``dim`` where ``holds``
        (the answer of :meth:`holds`); ``dream`` may carry leading dimensions (vectorised
        dreams) that the result then carries too."""


@dataclass(frozen=True)
class SubSample:
    """The rows of the full data a sub-sampled plate reads: the plate's dimension, counted
    from the right of the observed *value* (event dimensions included), and its indices."""

    dim: int
    indices: Any


def route_dreams(
    guide: Callable,
    dreamed: dict[str, Any],
    real: dict[str, Any],
    args: tuple,
    kwargs: dict,
    dream_args: DreamArgs | None = None,
    *,
    sub_samples: dict[str, list[SubSample]] | None = None,
    rows: RowAccess | None = None,
    hint: str = "",
) -> tuple[tuple, dict]:
    """The guide's ``(args, kwargs)`` for a sleep pass that shows it the ``dreamed`` observations.

    In order of precedence: (1) ``dream_args(dreamed, args, kwargs)``; (2) a guide parameter
    named ``observations`` receives ``dreamed`` (the convention of Pyro's
    ``ReweightedWakeSleep`` and ``CSIS``); (3) every argument that *is* (by identity) the
    observed value of the wake pass, ``real[site]``, is replaced by ``dreamed[site]`` —
    every one, so that the guide never sees real data beside dreamed latents; (4) for a site
    with none, every argument whose rows at a sub-sampled plate's indices
    (``sub_samples[site]``) are the observed value — ``obs=x[idx]`` with ``x`` an argument —
    gets the dreams written at those rows (through ``rows``).

    :param hint: a last sentence for the errors (how to do without a sleep phase).
    :raises DreamRoutingError: naming the observed sites and the ways to route them, when a
        site has no argument, two sites claim the same argument, or ``dream_args`` returns
        something other than ``(args, kwargs)``.
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

    arguments: dict[int | str, Any] = {**dict(enumerate(args)), **kwargs}
    writes: dict[int | str, tuple[str, Any]] = {}  # argument -> (site, its dreamed value)
    unrouted = []
    for site, value in real.items():
        found = {key: dreamed[site] for key, a in arguments.items() if a is value}
        if not found and rows is not None:
            for key, a in arguments.items():
                for sub in (sub_samples or {}).get(site, ()):
                    holds = rows.holds(a, sub.dim, sub.indices, value)
                    if holds is not False:
                        found[key] = rows.write(a, sub.dim, sub.indices, dreamed[site], holds)
        if not found:
            unrouted.append(site)
        for key, new in found.items():
            if key in writes and writes[key][0] != site:
                raise DreamRoutingError(
                    f"The observed sites '{writes[key][0]}' and '{site}' both hold argument "
                    f"{_argument_name(key)} of the call, so the sleep phase cannot tell which "
                    "dream to show the guide there. Pass each observed value as its own "
                    f"argument, or route the dreams yourself. {_ROUTING_OPTIONS} {hint}".rstrip()
                )
            writes[key] = (site, new)
    if real and not unrouted:
        new_args = [writes[i][1] if i in writes else a for i, a in enumerate(args)]
        new_kwargs = {k: writes[k][1] if k in writes else v for k, v in kwargs.items()}
        return tuple(new_args), new_kwargs
    raise DreamRoutingError(
        f"The sleep phase cannot show the guide the dreamed values of the observed site(s) "
        f"{sorted(unrouted or real)}: no argument of the call is the observed value itself, "
        "nor the full data that a sub-sampled plate's indices select it from "
        f"(obs=x[idx]). {_ROUTING_OPTIONS} {hint}".rstrip()
    )


#: The last sentence of a routing error — how each objective trains without dreams.
ROUTING_HINTS = {
    "ReweightedWakeSleep": "Or set insomnia=1 (no sleep phase).",
    "WakeSleep": "Or train with ReweightedWakeSleep(insomnia=1), whose guide needs no dreams.",
}

_ROUTING_OPTIONS = (
    "Do one of: (1) pass dream_args=lambda observations, args, kwargs: (new_args, "
    "new_kwargs) to the objective; (2) give the guide a keyword parameter "
    "`observations=None` and read the data from observations[site] when it is given; "
    "(3) pass each observed value to model and guide as an argument and use it unchanged "
    "as `obs=`, or as `obs=x[idx]` with idx the indices of its sub-sampled plate."
)


def _argument_name(key: int | str) -> str:
    return f"#{key} (positional)" if isinstance(key, int) else f"'{key}'"


# -- joint stochastic approximation: a chain per datapoint --------------------------------
def chain_plate_error(data_plates: list[str]) -> ValueError:
    """Why a model has no chain per datapoint: no plate encloses every site, or several do."""
    if not data_plates:
        return ValueError(
            "JointStochasticApproximation keeps one Markov chain per datapoint, keyed by the "
            "data plate (the plate that encloses every sample site of model and guide), and "
            "this model has none: a latent outside every plate (a global latent) is shared "
            "by all datapoints, so it has no per-datapoint chain. Put every latent inside "
            "the data plate, or train this model with ReweightedWakeSleep."
        )
    return ValueError(
        f"JointStochasticApproximation keys its chains by one data plate, but the plates "
        f"{sorted(data_plates)} each enclose every sample site. Merge them into one plate "
        "over datapoints (reshape the data), or train with ReweightedWakeSleep."
    )


def chain_size_error(plate: str, cached: int, now: int, restart: str) -> ValueError:
    """The data plate's size differs from that of the chains kept so far; ``restart`` says
    how the backend starts chains afresh."""
    return ValueError(
        f"The data plate '{plate}' has size {now}, but JointStochasticApproximation keeps "
        f"chains for {cached} datapoints from earlier steps. The chains are keyed by the "
        "plate's indices, so its size must stay that of the whole data set: pass the full "
        "size and sub-sample with subsample_size (or subsample=indices). To train on other "
        f"data, {restart}."
    )


def chain_index_error(plate: str, size: int, bad: list[int]) -> ValueError:
    """Sub-sample indices outside ``0..size-1``."""
    return ValueError(
        f"The data plate '{plate}' of size {size} was sub-sampled with indices {bad[:5]} "
        f"outside 0..{size - 1}; each datapoint's chain is keyed by its index. Pass indices "
        "into the whole data set, with the plate's size that of the data set."
    )
