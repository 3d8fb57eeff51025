"""Wake-sleep objectives as :class:`pyro.infer.ELBO` losses for :class:`pyro.infer.SVI`.

The maths is in :mod:`pyro_wakesleep.objectives`, tracing in
:mod:`pyro_wakesleep.traces`, dreaming in :mod:`pyro_wakesleep.dreams`; the
classes here pick the terms of a step and hand their gradient to Pyro.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
from pyro.infer import ELBO
from pyro.infer.util import is_validation_enabled
from torch import Tensor

from wakesleep.contract import (
    FIRST_PHASE,
    ROUTING_HINTS,
    ModelGuideMismatchError,
    NonFiniteDataError,
    NonFiniteLossWarning,
    Phase,
    Sparsity,
    check_objective_arguments,
    check_sparsity,
    check_wake_phi,
    non_finite_loss_message,
    not_reparameterisable_error,
)

from . import objectives
from .chains import Chains, advance_chains
from .dreams import DreamArgs, Dreamer
from .traces import (
    ImportanceTraces,
    bernoulli_sites,
    importance_traces,
    join_arguments,
    mean_activations,
    non_finite_data_of,
    non_finite_observations,
    path_log_weights,
    resolve_plate_nesting,
    sample_sites,
    split_arguments,
    trace_params,
    vectorization_is_safe,
)

__all__ = [
    "JitJointStochasticApproximation",
    "JitReweightedWakeSleep",
    "JitWakeSleep",
    "JointStochasticApproximation",
    "NonFiniteDataError",
    "NonFiniteLossWarning",
    "ReweightedWakeSleep",
    "Sparsity",
    "WakeSleep",
]


class _WakeSleepELBO(ELBO):
    """Shared machinery of :class:`ReweightedWakeSleep` and :class:`WakeSleep`.

    Subclasses say which bound is reported and which wake-θ estimator is used.
    """

    #: The objective's public name, for its messages.
    _objective = ""

    def __init__(
        self,
        *,
        num_particles: int,
        insomnia: float,
        num_sleep_particles: int | None,
        vectorize_particles: bool,
        max_plate_nesting: float,
        alternate: bool | str,
        dream_args: DreamArgs | None,
        sparsity: Sparsity | None = None,
        wake_phi: str = "score",
    ) -> None:
        check_sparsity(sparsity)
        check_wake_phi(wake_phi)
        check_objective_arguments(
            self._objective,
            num_particles=num_particles,
            insomnia=insomnia,
            num_sleep_particles=num_sleep_particles,
            vectorize_particles=vectorize_particles,
            max_plate_nesting=max_plate_nesting,
            alternate=alternate,
            dream_args=dream_args,
        )
        # Pyro's ELBO adds the particle plate to max_plate_nesting when vectorising; here it
        # always counts the model's own plates, so the base class must not vectorise.
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.vectorize_particles = vectorize_particles
        self.insomnia = float(insomnia)
        self.num_sleep_particles = (
            num_particles if num_sleep_particles is None else num_sleep_particles
        )
        self.alternate = alternate
        self.dream_args = dream_args
        self.sparsity = sparsity
        self.wake_phi = wake_phi
        self._dreamer = Dreamer(
            num_dreams=self.num_sleep_particles,
            dream_args=dream_args,
            routing_hint=ROUTING_HINTS.get(self._objective, ""),
        )
        # False once the programs mixed particles, or the guide dreams: from then on they run
        # one at a time (the user's vectorize_particles stays as given)
        self._vectorize_wake = vectorize_particles
        self._vectorize_dreams = vectorize_particles
        self._resolved_plate_nesting: int | None = None
        self._vectorization_checked: set[tuple] = set()
        self._next_phase: Phase = FIRST_PHASE[alternate]
        self._last: dict[str, Tensor] = {}

    # -- what subclasses choose ------------------------------------------------------------
    #: The wake-θ surrogate's value is the reported value (bit for bit), so a step that
    #: computes wake-θ need not evaluate the bound a second time.
    _wake_theta_is_value: bool = False

    def _bound(self, log_weights: Tensor) -> Tensor:
        raise NotImplementedError

    def _wake_theta_loss(self, log_p: Tensor, log_q: Tensor) -> Tensor:
        raise NotImplementedError

    # -- public ---------------------------------------------------------------------------
    @property
    def first_phase(self) -> Phase:
        """What an alternating schedule updates first — ``"model"`` or ``"guide"`` (``"both"``
        when ``alternate`` is false)."""
        return FIRST_PHASE[self.alternate]

    @property
    def phase(self) -> Phase:
        """What the next :meth:`loss_and_grads` updates — ``"both"``, ``"model"`` or ``"guide"``."""
        return self._next_phase

    @property
    def last_terms(self) -> dict[str, float]:
        """The terms of the last evaluation, in nats, for logging.

        ``loss`` is the reported value; ``wake_theta``, ``wake_phi`` and ``sleep_phi`` are the
        surrogate terms that were computed (unweighted by ``insomnia``); ``ess`` is the mean
        over datapoints of the importance-sampling effective sample size ``1 / Σ_k w̄_k²``.
        :class:`JointStochasticApproximation` adds ``acceptance_rate`` and ``chain_age``; with
        ``sparsity`` set, ``sparsity`` (the penalty) and ``mean_activation`` are added.
        Reading it synchronises with the device; the training step itself does not.
        """
        terms = {name: float(t) for name, t in self._last.items() if name != "log_weights"}
        if "log_weights" in self._last:
            terms["ess"] = float(objectives.effective_sample_size(self._last["log_weights"]).mean())
        return terms

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """The reported value (negative bound, nats) without gradients or a sleep phase."""
        with torch.no_grad():
            wake = self._wake(model, guide, args, kwargs)
            value = self._value(wake)
            self._last = {"loss": value, "log_weights": wake.log_weights}
            result = value.item()
            if not math.isfinite(result):
                _refuse_non_finite_data(wake)
                warnings.warn(self._diagnose(wake, {"loss": value}), NonFiniteLossWarning, 2)
        return result

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> Tensor:
        """A scalar whose value is the reported value and whose gradient is the full update.

        Both model and guide terms are included whatever ``alternate`` says; the phase does
        not advance. With Pyro validation enabled a non-finite result raises ``ValueError``.
        """
        loss, wake, terms = self._surrogate(model, guide, args, kwargs, "both")
        self._refuse_non_finite(loss, lambda: (wake, terms))
        return loss

    def _refuse_non_finite(
        self,
        loss: Tensor,
        diagnosis: Callable[[], tuple[ImportanceTraces, dict[str, Tensor]]],
    ) -> None:
        """While validation is on: raise ``ValueError`` (or :class:`NonFiniteDataError`) when
        ``loss`` is not finite, naming what ``diagnosis``'s traces and terms show."""
        if is_validation_enabled() and not torch.isfinite(loss):
            wake, terms = diagnosis()
            _refuse_non_finite_data(wake)
            raise ValueError(self._diagnose(wake, terms))

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> Tensor:
        """Back-propagate this step's update and return the reported value, a 0-dim tensor
        (``pyro.infer.SVI.step`` turns it into a float; a loop of its own can read it later,
        so that the step never waits for the device).

        With ``alternate`` set, the parameters of the side not updated this step end it with
        ``grad = None``, so optimisers (Adam's moments included) leave them untouched. While
        Pyro's validation is enabled (its default) a non-finite value warns with
        :class:`NonFiniteLossWarning`, sets no gradient at all (the step changes nothing) and
        does not advance the phase; that check reads the value, a host synchronisation, so
        with validation off nothing is checked and the step never synchronises.
        """
        phase = self._next_phase
        loss, wake, terms = self._surrogate(model, guide, args, kwargs, phase)
        params = _Params.of(wake)
        if self._skipped_non_finite(loss, params, lambda: (wake, terms)):
            return loss.detach()
        return self._backward(loss, phase, params)

    def _skipped_non_finite(
        self,
        loss: Tensor,
        params: _Params,
        diagnosis: Callable[[], tuple[ImportanceTraces, dict[str, Tensor]]],
    ) -> bool:
        """While validation is on: whether ``loss`` is non-finite, in which case every
        gradient is cleared and the step skipped with a warning (``diagnosis`` gives the
        traces and terms that the message names)."""
        if not is_validation_enabled() or torch.isfinite(loss):
            return False
        _clear_grads(params.model | params.guide)
        wake, terms = diagnosis()
        _refuse_non_finite_data(wake)
        warnings.warn(
            self._diagnose(wake, terms) + " The step was skipped: no parameter changes.",
            NonFiniteLossWarning,
            stacklevel=3,
        )
        return True

    def _backward(self, loss: Tensor, phase: Phase, params: _Params) -> Tensor:
        """``loss.backward()``; with a phase, the idle side's gradients cleared and the phase
        advanced. Returns the reported value (``loss``'s value), detached."""
        loss.backward()
        if phase != "both":
            idle = params.guide - params.model if phase == "model" else params.model - params.guide
            _clear_grads(idle)
            self._next_phase = "guide" if phase == "model" else "model"
        return loss.detach()

    # -- the step -------------------------------------------------------------------------
    def _get_trace(self, model, guide, args, kwargs):  # pyro.infer.ELBO's abstract hook
        wake = self._wake(model, guide, args, kwargs)
        return wake.model_trace, wake.guide_trace

    def _plate_nesting(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
        """``max_plate_nesting``, or the guess from the first call (guessing runs the programs)."""
        if self._resolved_plate_nesting is None:
            self._resolved_plate_nesting = resolve_plate_nesting(
                self.max_plate_nesting, model, guide, args, kwargs
            )
        return self._resolved_plate_nesting

    def _vectorize(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> bool:
        """Particles as a plate, once :func:`vectorization_is_safe` has passed for this program
        and these argument shapes; for good (and dreams too) once it has failed."""
        if not self._vectorize_wake:
            return False
        key = _check_key(model, guide, args, kwargs)
        if key not in self._vectorization_checked:
            if not vectorization_is_safe(
                model,
                guide,
                args,
                kwargs,
                num_particles=max(self.num_particles, self.num_sleep_particles),
                plate_nesting=self._plate_nesting(model, guide, args, kwargs),
            ):
                self._vectorize_wake = self._vectorize_dreams = False
                return False
            self._vectorization_checked.add(key)
        return True

    def _wake(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> ImportanceTraces:
        try:
            return importance_traces(
                model,
                guide,
                args,
                kwargs,
                num_particles=self.num_particles,
                max_plate_nesting=self._plate_nesting(model, guide, args, kwargs),
                vectorize=self._vectorize(model, guide, args, kwargs),
                keep_attached=self.wake_phi == "dreg",
            )
        except (ValueError, RuntimeError) as error:
            # NaN data often first show as a guide that cannot build its distributions
            if not isinstance(error, ModelGuideMismatchError):
                problem = non_finite_data_of(model, args, kwargs)
                if problem is not None:
                    raise problem from error
            raise

    def _sparsity_penalty(self, wake: ImportanceTraces) -> tuple[Tensor, Tensor]:
        """``weight · N · Σ_j KL(Bern(target) ‖ Bern(ρ̂_j))`` over the chosen Bernoulli sites of the
        guide (``N``: the datapoints the batch stands for), and the mean activation."""
        sites = self.sparsity.chosen_sites(
            bernoulli_sites(wake.guide_trace),
            [name for name, site in sample_sites(wake.guide_trace) if not site["is_observed"]],
        )
        rho = torch.cat([r.reshape(-1) for r in mean_activations(wake, sites).values()])
        eps = torch.finfo(rho.dtype).eps  # a unit always on or off: a large, finite penalty
        penalty = objectives.sparsity_penalty(rho.clamp(eps, 1.0 - eps), self.sparsity.target)
        num_data = wake.log_weights[0].numel() * wake.data_scale
        return self.sparsity.weight * num_data * penalty, rho.detach().mean()

    def _value(self, wake: ImportanceTraces) -> Tensor:
        return -_scaled_sum(self._bound(wake.log_weights), wake.data_scale)

    def _surrogate(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict, phase: Phase
    ) -> tuple[Tensor, ImportanceTraces, dict[str, Tensor]]:
        wake = self._wake(model, guide, args, kwargs)
        terms, weighted, extra = self._terms(model, guide, args, kwargs, wake, phase)
        if self.sparsity is not None:
            terms["sparsity"], extra["mean_activation"] = self._sparsity_penalty(wake)
            if phase != "model":
                weighted.append(terms["sparsity"])
        if "wake_theta" in terms and self._wake_theta_is_value:
            value = terms["wake_theta"].detach()
        else:
            value = self._value(wake)
        self._last = {
            "loss": value.detach(),
            **{name: t.detach() for name, t in terms.items()},
            **extra,
            "log_weights": wake.log_weights.detach(),
        }
        return objectives.surrogate(value, *weighted), wake, {"loss": value, **terms}

    def _terms(
        self,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        wake: ImportanceTraces,
        phase: Phase,
    ) -> tuple[dict[str, Tensor], list[Tensor], dict[str, Tensor]]:
        """The step's surrogate terms by name, the list that enters the gradient (weighted),
        and extra statistics for :attr:`last_terms`."""
        terms: dict[str, Tensor] = {}
        weighted: list[Tensor] = []
        if phase != "guide":
            terms["wake_theta"] = _scaled_sum(
                self._wake_theta_loss(wake.log_p, wake.log_q), wake.data_scale
            )
            weighted.append(terms["wake_theta"])
        if phase != "model":
            if self.insomnia > 0.0:
                if self.wake_phi == "dreg":
                    _check_reparameterisable(wake)
                    wake_phi = objectives.dreg_wake_phi_loss(
                        wake.log_weights, path_log_weights(wake, model, guide, args, kwargs)
                    )
                else:
                    wake_phi = objectives.wake_phi_loss(wake.log_weights, wake.log_q)
                terms["wake_phi"] = _scaled_sum(wake_phi, wake.data_scale)
                weighted.append(
                    terms["wake_phi"] if self.insomnia == 1.0 else self.insomnia * terms["wake_phi"]
                )
            if self.insomnia < 1.0:
                log_q_dreams, self._vectorize_dreams = self._dreamer.log_q(
                    model,
                    guide,
                    args,
                    kwargs,
                    plate_nesting=wake.plate_nesting,
                    wake_model_trace=wake.model_trace,
                    wake_guide_trace=wake.guide_trace,
                    vectorize=self._vectorize_dreams,
                    check_key=_check_key(model, guide, args, kwargs),
                )
                terms["sleep_phi"] = objectives.sleep_phi_loss(log_q_dreams)
                weighted.append((1.0 - self.insomnia) * terms["sleep_phi"])
        return terms, weighted, {}

    # -- diagnosis of a non-finite step (slow path only) ----------------------------------
    @staticmethod
    def _diagnose(wake: ImportanceTraces, terms: dict[str, Tensor]) -> str:
        return non_finite_loss_message(
            bad_terms=[name for name, t in terms.items() if not torch.isfinite(t).all()],
            dead_datapoints=int((wake.log_weights == -math.inf).all(0).sum()),
            bad_sites=[
                f"{role} site '{name}'"
                for role, trace in (("model", wake.model_trace), ("guide", wake.guide_trace))
                for name, site in sample_sites(trace)
                if not torch.isfinite(site["fn"].log_prob(site["value"])).all()
            ],
        )


def _check_reparameterisable(wake: ImportanceTraces) -> None:
    """``wake_phi="dreg"`` differentiates through every guide sample: name those it cannot."""
    sites = [name for name, site in sample_sites(wake.guide_trace) if not site["fn"].has_rsample]
    if sites:
        raise not_reparameterisable_error(sites)


@dataclass(frozen=True)
class _Params:
    """The names of the parameters that model and guide read in a step."""

    model: frozenset[str]
    guide: frozenset[str]

    @classmethod
    def of(cls, wake: ImportanceTraces) -> _Params:
        """Those of the step whose traces ``wake`` holds."""
        return cls(
            frozenset(trace_params(wake.model_trace)), frozenset(trace_params(wake.guide_trace))
        )


def _clear_grads(names: Iterable[str]) -> None:
    """Leave the named parameters' leaf tensors without a gradient, so that optimisers
    (Adam's moments included) skip them this step."""
    store = pyro.get_param_store()
    for name in names:
        store.get_param(name).unconstrained().grad = None


def _refuse_non_finite_data(wake: ImportanceTraces) -> None:
    """Raise :class:`NonFiniteDataError` when the observed data are what is not finite."""
    problem = non_finite_observations(wake.model_trace)
    if problem is not None:
        raise problem


def _check_key(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple:
    """What a vectorisation check holds for: the programs and their tensor arguments' shapes."""
    items = [*enumerate(args), *kwargs.items()]
    return (model, guide, tuple((k, tuple(v.shape)) for k, v in items if isinstance(v, Tensor)))


def _scaled_sum(per_datapoint: Tensor, data_scale: float) -> Tensor:
    """Sum over datapoints after multiplying by the data plates' sub-sampling factor ``N/B``."""
    total = per_datapoint.sum()
    return total if data_scale == 1.0 else data_scale * total


class ReweightedWakeSleep(_WakeSleepELBO):
    r"""Reweighted wake-sleep (Bornschein & Bengio 2015; Le et al. 2019) as an SVI loss.

    Per datapoint, ``K = num_particles`` guide samples :math:`z_k \sim q_\phi(\cdot|x)`
    (no gradient through the sample) are weighted by
    :math:`\log w_k = \log p_\theta(x,z_k) - \log q_\phi(z_k|x)`, :math:`\bar w = \mathrm{softmax}(\log w)`:

    - wake-θ, the model update: :math:`\sum_k \bar w_k \nabla_\theta \log p_\theta(x, z_k)`;
    - wake-φ: :math:`\sum_k \bar w_k \nabla_\phi \log q_\phi(z_k | x)`;
    - sleep-φ: :math:`\frac{1}{M}\sum_m \nabla_\phi \log q_\phi(z_m|x_m)`,
      :math:`(z_m, x_m) \sim p_\theta` dreamed from the model, ``M = num_sleep_particles``.

    The guide follows ``insomnia · wake-φ + (1 − insomnia) · sleep-φ``. The reported value is
    the negative importance-weighted bound :math:`-\sum_x \log \frac1K \sum_k w_k` (nats),
    an unbiased estimate of its full-data value under plate sub-sampling.

    Weights are formed per element of the plates that enclose every sample site (the data
    plate); with a global latent they are joint. Sub-sampled plates: unscaled
    log-densities inside the log-sum-exp, the ``N/B`` factor outside.

    Cost per step: ``K`` guide samples and ``K`` model and guide log-density evaluations;
    with ``insomnia < 1`` also ``M`` model samples and ``M`` guide evaluations.

    :param num_particles: ``K``, guide samples per datapoint (``K = 1`` is allowed).
    :param insomnia: weight of wake-φ against sleep-φ in the guide update, in ``[0, 1]``.
    :param num_sleep_particles: ``M``, dreams per step (default ``num_particles``).
    :param vectorize_particles: particles (and dreams) as a plate rather than a loop.
    :param max_plate_nesting: the model's own plates, particles not counted (guessed if inf).
    :param alternate: ``False`` updates model and guide each step; ``True`` / ``"model_first"``
        alternates model-only and guide-only steps, ``"guide_first"`` starts with the guide.
    :param dream_args: ``(observations, args, kwargs) -> (args, kwargs)``, how dreams reach
        the guide (see :mod:`pyro_wakesleep.dreams` for the default rules).
    :param sparsity: a :class:`~wakesleep.contract.Sparsity` constraint on the guide's
        Bernoulli units (sparse wake-sleep), or ``None``.
    :param wake_phi: ``"score"`` (default), the self-normalised score estimator of wake-φ, or
        ``"dreg"``, the doubly-reparameterised one of Tucker et al. (2019) for
        reparameterisable guides: the same expectation, a lower variance.

    References: Bornschein & Bengio (2015), *Reweighted wake-sleep*, arXiv:1406.2751;
    Le et al. (2019), *Revisiting reweighted wake-sleep for models with stochastic control
    flow*, arXiv:1805.10469; Burda et al. (2016), *Importance weighted autoencoders*.
    """

    _objective = "ReweightedWakeSleep"

    def __init__(
        self,
        num_particles: int = 10,
        insomnia: float = 1.0,
        num_sleep_particles: int | None = None,
        vectorize_particles: bool = True,
        max_plate_nesting: float = float("inf"),
        alternate: bool | str = False,
        dream_args: DreamArgs | None = None,
        sparsity: Sparsity | None = None,
        wake_phi: str = "score",
    ) -> None:
        super().__init__(
            num_particles=num_particles,
            insomnia=insomnia,
            num_sleep_particles=num_sleep_particles,
            vectorize_particles=vectorize_particles,
            max_plate_nesting=max_plate_nesting,
            alternate=alternate,
            dream_args=dream_args,
            sparsity=sparsity,
            wake_phi=wake_phi,
        )

    # −Σ IWAE(log p − sg(log q)) and −Σ IWAE(log w) are the same number: sg changes no value.
    _wake_theta_is_value = True

    def _bound(self, log_weights: Tensor) -> Tensor:
        return objectives.iwae_bound(log_weights)

    def _wake_theta_loss(self, log_p: Tensor, log_q: Tensor) -> Tensor:
        return objectives.rws_wake_theta_loss(log_p, log_q)


class WakeSleep(_WakeSleepELBO):
    r"""Classic wake-sleep (Hinton, Dayan, Frey & Neal 1995) as an SVI loss.

    - wake-θ: :math:`\frac1K \sum_k \nabla_\theta \log p_\theta(x, z_k)`,
      :math:`z_k \sim q_\phi(\cdot|x)`, ``K = num_particles``;
    - sleep-φ: :math:`\frac1M \sum_m \nabla_\phi \log q_\phi(z_m|x_m)`,
      :math:`(z_m, x_m) \sim p_\theta`, ``M = num_sleep_particles``.

    The reported value is the negative ELBO estimate
    :math:`-\sum_x \frac1K \sum_k \log w_k` (nats). Arguments and their meaning are those of
    :class:`ReweightedWakeSleep`, without ``insomnia`` and ``wake_phi`` (the guide learns from
    dreams only).
    """

    _objective = "WakeSleep"

    def __init__(
        self,
        num_particles: int = 1,
        num_sleep_particles: int | None = None,
        vectorize_particles: bool = True,
        max_plate_nesting: float = float("inf"),
        alternate: bool | str = False,
        dream_args: DreamArgs | None = None,
        sparsity: Sparsity | None = None,
    ) -> None:
        super().__init__(
            num_particles=num_particles,
            insomnia=0.0,  # the guide learns from dreams only
            num_sleep_particles=num_sleep_particles,
            vectorize_particles=vectorize_particles,
            max_plate_nesting=max_plate_nesting,
            alternate=alternate,
            dream_args=dream_args,
            sparsity=sparsity,
        )

    def _bound(self, log_weights: Tensor) -> Tensor:
        return objectives.elbo_estimate(log_weights)

    def _wake_theta_loss(self, log_p: Tensor, log_q: Tensor) -> Tensor:
        return objectives.ws_wake_theta_loss(log_p)


class JointStochasticApproximation(_WakeSleepELBO):
    r"""Joint stochastic approximation, JSA (Xu & Ou 2016; Ou & Song 2020), as an SVI loss.

    Stochastic-approximation wake-sleep: for every datapoint :math:`x_n` of the data plate
    the loss keeps a latent sample :math:`\bar z_n`, a Markov chain whose stationary law is
    the exact posterior :math:`p_\theta(z|x_n)`. Each step draws ``K = num_particles``
    proposals :math:`z'_k \sim q_\phi(\cdot|x_n)` and runs a Metropolis independence sampler
    through them from :math:`\bar z_n`, accepting :math:`z'_k` with probability
    :math:`\min(1, w(z'_k)/w(z_{\text{current}}))`, :math:`w = p_\theta(x, z)/q_\phi(z|x)`.
    With :math:`s_1..s_K` the chain's states after each transition:

    - wake-θ: :math:`\frac1K \sum_k \nabla_\theta \log p_\theta(x_n, s_k)`, unbiased for
      :math:`\nabla_\theta \log p_\theta(x_n)` at stationarity, at any ``K`` (RWS with
      small ``K`` is biased);
    - wake-φ: :math:`\frac1K \sum_k \nabla_\phi \log q_\phi(s_k|x_n)`, which moves the guide
      towards the posterior (and so raises the acceptance rate).

    No gradient flows through the sampler. The reported value is the negative IWAE bound of
    the proposals, :math:`-\sum_n \log\frac1K\sum_k w(z'_k)` (nats), comparable with
    :class:`ReweightedWakeSleep`; :attr:`last_terms` adds ``acceptance_rate`` (the fraction of
    transitions that moved) and ``chain_age`` (the mean number of steps since the batch's
    chains last moved).

    Datapoints are identified by the data plate's sub-sample indices (``0..N−1`` without
    sub-sampling), so each keeps its chain across mini-batches; a datapoint met for the
    first time starts from its first proposal. The chains live on this object, on the
    device of the guide's samples; :meth:`state_dict` and :meth:`load_state_dict` save and
    restore them with a checkpoint. Mini-batches scale the per-datapoint terms by ``N/B``
    as in :class:`ReweightedWakeSleep`. :meth:`loss` evaluates the bound and leaves the
    chains as they are; :meth:`loss_and_grads` and :meth:`differentiable_loss` advance them.

    Cost per step: that of :class:`ReweightedWakeSleep` with ``K`` particles and no sleep
    phase, plus one guide and model evaluation of the chains' states.

    :param num_particles: ``K``, proposals per datapoint and step (``K = 1`` is allowed).
    :param vectorize_particles: proposals as a plate rather than a loop.
    :param max_plate_nesting: the model's own plates, particles not counted (guessed if inf).
    :param sparsity: a :class:`~wakesleep.contract.Sparsity` constraint on the guide's
        Bernoulli units, or ``None``.

    :raises ValueError: at the first step, when the model has a global latent (no plate
        encloses every site, so there is no per-datapoint chain) or several data plates;
        when the data plate's size changes between steps; when a sub-sample index lies
        outside the plate (checked while Pyro's validation is enabled).

    References: H. Xu, Z. Ou (2016), *Joint stochastic approximation learning of Helmholtz
    machines*, ICLR workshop track; Z. Ou, Y. Song (2020), *Joint stochastic approximation
    and its application to learning discrete latent variable models*, UAI.
    """

    _objective = "JointStochasticApproximation"

    def __init__(
        self,
        num_particles: int = 1,
        vectorize_particles: bool = True,
        max_plate_nesting: float = float("inf"),
        sparsity: Sparsity | None = None,
    ) -> None:
        super().__init__(
            num_particles=num_particles,
            insomnia=1.0,  # the guide follows the chain states, like wake-phi
            num_sleep_particles=None,
            vectorize_particles=vectorize_particles,
            max_plate_nesting=max_plate_nesting,
            alternate=False,
            dream_args=None,
            sparsity=sparsity,
        )
        self.chains = Chains()

    def state_dict(self) -> dict:
        """The chains (per-datapoint latent states, whether each datapoint was seen, and the
        chains' ages), for a checkpoint; ``{}`` before the first step."""
        return self.chains.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (tensors stay on the device they are on)."""
        self.chains.load_state_dict(state)

    def _bound(self, log_weights: Tensor) -> Tensor:
        return objectives.iwae_bound(log_weights)

    def _terms(
        self,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        wake: ImportanceTraces,
        phase: Phase,
    ) -> tuple[dict[str, Tensor], list[Tensor], dict[str, Tensor]]:
        step = advance_chains(
            self.chains, wake, model, guide, args, kwargs, validate=is_validation_enabled()
        )
        terms: dict[str, Tensor] = {}
        if phase != "guide":
            terms["wake_theta"] = _scaled_sum(
                objectives.chain_average_loss(step.log_p, step.weights), wake.data_scale
            )
        if phase != "model":
            terms["wake_phi"] = _scaled_sum(
                objectives.chain_average_loss(step.log_q, step.weights), wake.data_scale
            )
        extra = {"acceptance_rate": step.acceptance_rate, "chain_age": step.mean_age}
        return terms, list(terms.values()), extra


# --------------------------------------------------------------------------- compiled twins


@dataclass
class _Graph:
    """A step's tensor computation traced into a TorchScript graph (``torch.jit.trace``), for
    one phase and one layout of the arguments: the parameters' leaf tensors, the arguments'
    tensors and the objective's state tensors in, the surrogate loss and the terms of
    :attr:`last_terms` out."""

    compiled: Callable[..., tuple[Tensor, ...]]
    params: _Params
    names: tuple[str, ...]


class _JitWakeSleepELBO(_WakeSleepELBO):
    """The compiled twins' machinery (:class:`JitReweightedWakeSleep` says what it does):
    one :class:`_Graph` per phase and argument layout, traced on the second step."""

    def __init__(
        self, *args, ignore_jit_warnings: bool = False, jit_options: dict | None = None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.ignore_jit_warnings = ignore_jit_warnings
        self.jit_options = {"check_trace": False, **(jit_options or {})}
        self._graphs: dict[tuple, _Graph | _Params] = {}

    def __getstate__(self) -> dict:
        # graphs cannot be copied or pickled: a copy compiles its own
        return {**self.__dict__, "_graphs": {}}

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> Tensor:
        loss, _ = self._compiled_step(model, guide, args, kwargs, "both")
        self._refuse_non_finite(loss, self._diagnosis(model, guide, args, kwargs, loss))
        return loss

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> Tensor:
        phase = self._next_phase
        loss, params = self._compiled_step(model, guide, args, kwargs, phase)
        if self._skipped_non_finite(
            loss, params, self._diagnosis(model, guide, args, kwargs, loss)
        ):
            return loss.detach()
        return self._backward(loss, phase, params)

    def _diagnosis(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict, loss: Tensor
    ) -> Callable[[], tuple[ImportanceTraces, dict[str, Tensor]]]:
        """For the message about a non-finite step: a graph keeps no traces, so fresh eager
        ones (without gradients) show which sites and datapoints are not finite."""

        def traces() -> tuple[ImportanceTraces, dict[str, Tensor]]:
            with torch.no_grad():
                return self._wake(model, guide, args, kwargs), {"loss": loss}

        return traces

    # -- what a subclass with state adds ----------------------------------------------------
    def _state_tensors(self) -> list[Tensor]:
        """Tensors a step updates in place (JSA's chains): inputs of the graph."""
        return []

    def _set_state_tensors(self, tensors: list[Tensor]) -> None:
        pass

    def _can_trace(self) -> bool:
        """Whether the state is ready to be traced (JSA's chains exist after a first step)."""
        return True

    # -- the step -------------------------------------------------------------------------
    def _compiled_step(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict, phase: Phase
    ) -> tuple[Tensor, _Params]:
        """This step's surrogate loss (its value the reported value) and the parameters that
        model and guide read; :attr:`_last` set to the step's terms."""
        self._vectorize(model, guide, args, kwargs)  # eager checks that run the programs
        structure, tensors = split_arguments((args, kwargs))
        state = self._state_tensors()
        key = (
            phase,
            model,
            guide,
            structure,
            tuple((tuple(t.shape), t.dtype, t.device) for t in state),
        )
        known = self._graphs.get(key)
        if isinstance(known, _Graph):
            params = [_leaf(name) for name in sorted(known.params.model | known.params.guide)]
            loss, *terms = known.compiled(*params, *tensors, *state)
            self._last = dict(zip(known.names, terms, strict=True))
            return loss, known.params
        if known is None or not self._can_trace():
            # eager: learns the parameters that the graph will take as inputs
            loss, wake, _ = self._surrogate(model, guide, args, kwargs, phase)
            params = self._graphs[key] = _Params.of(wake)
            return loss, params
        return self._trace(key, known, model, guide, structure, tensors, state, phase)

    def _trace(
        self,
        key: tuple,
        params: _Params,
        model: Callable,
        guide: Callable,
        structure: tuple,
        tensors: list[Tensor],
        state: list[Tensor],
        phase: Phase,
    ) -> tuple[Tensor, _Params]:
        """Trace the step into a graph; the tracing run is this step."""
        names = sorted(params.model | params.guide)
        num_params, num_tensors = len(names), len(tensors)
        outputs: dict[str, tuple] = {}

        def step(*inputs: Tensor) -> tuple[Tensor, ...]:
            # the leaves are the param store's own tensors, so the programs' pyro.param
            # calls read graph inputs
            args, kwargs = join_arguments(structure, list(inputs[num_params:][:num_tensors]))
            self._set_state_tensors(list(inputs[num_params + num_tensors :]))
            loss, _, _ = self._surrogate(model, guide, args, kwargs, phase)
            result = (loss, *self._last.values())
            outputs["names"], outputs["result"] = tuple(self._last), result
            return result

        leaves = [_leaf(name) for name in names]
        with pyro.validation_enabled(False), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", "`torch.jit.trace` is deprecated")
            compiled = torch.jit.trace(step, (*leaves, *tensors, *state), **self.jit_options)
        tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
        # Libraries read shapes (the graph is keyed on them); a read in the user's programs
        # may be of a value
        problems = [
            w
            for w in tracer
            if str(w.message).startswith(_READS_A_VALUE)
            and not w.filename.startswith(_LIBRARY_FOLDERS)
        ]
        for w in caught:
            if w not in tracer:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if problems and not self.ignore_jit_warnings:
            # no graph kept: the next step with this key traces again, and refuses again
            raise ValueError(_untraceable_message(self._objective, problems))
        self._graphs[key] = _Graph(compiled, params, outputs["names"])
        loss, *terms = outputs["result"]
        self._last = dict(zip(outputs["names"], terms, strict=True))
        return loss, params


#: Where the TracerWarnings of reading a shape come from: torch, Pyro and this package, whose
#: traced steps read shapes only (validation, which reads values, is off while tracing).
_LIBRARY_FOLDERS = tuple(
    str(Path(module.__file__).parent) for module in (torch, pyro, sys.modules[__package__])
)


#: How torch's TracerWarning starts when Python reads a tensor's value (``bool``, ``int``,
#: ``float``, ``.item()``, indexing); others (a ``torch.tensor`` constant) are harmless here.
_READS_A_VALUE = "Converting a tensor to a Python"


def _leaf(name: str) -> Tensor:
    """The unconstrained leaf tensor of parameter ``name`` (what optimisers update); the
    ``pyro.param`` call registers it with an enclosing ``SVI.step``'s parameter capture."""
    return pyro.param(name).unconstrained()


def _untraceable_message(objective: str, problems: list[warnings.WarningMessage]) -> str:
    where = sorted({f"{w.filename}:{w.lineno}" for w in problems})
    return (
        f"Jit{objective} cannot compile this model and guide: their Python reads the value "
        f"of a tensor ({str(problems[0].message).split(' might')[0]}), at "
        f"{', '.join(where[:3])}. A compiled graph "
        f"would replay the branch taken while it was traced (data-dependent or stochastic "
        f"control flow). Use {objective}, the eager class, for this program; pass "
        f"ignore_jit_warnings=True only if the value read never changes between steps."
    )


class JitReweightedWakeSleep(_JitWakeSleepELBO, ReweightedWakeSleep):
    """:class:`ReweightedWakeSleep` compiled with ``torch.jit.trace``: the same arguments,
    draws, values and gradients, far less Python per step (Pyro's ``JitTrace_ELBO``
    convention).

    For models of static structure (no Python control flow on tensor values, the same sites
    every step). Tensors that model and guide take are inputs of the graph; other arguments
    (``num_data=N``) and each tensor's shape, dtype and device are part of the compilation
    key, so a smaller last mini-batch compiles a graph of its own instead of reusing a wrong
    one. Per phase and key, the first step runs eagerly (it learns which parameters model and
    guide read), the second traces the graph (its tracing run is the step), later ones
    replay it. Random draws are operations of the graph, fresh at every call and in the
    eager order, so a compiled run draws what an eager run draws from the same seed, with
    one caveat: TorchScript's optimiser (from the fourth call of a graph) may hand some
    graphs' draws out in another order (seen with the trainer's stack of ``--restarts``
    machines under :class:`WakeSleep`), which changes which numbers each site gets but not
    their distribution.

    A program whose Python reads a tensor's value (data-dependent or stochastic control
    flow, ``.item()``, a tensor in an ``if``) would have its graph replay the branch taken
    while tracing: tracing refuses it with a ``ValueError`` that names the line and says to
    use the eager class. Pyro's validation is off inside the graph; the value is still
    checked for being finite while validation is enabled (a host synchronisation, as in the
    eager class). Copies (``copy.deepcopy``) and pickles compile their own graphs.

    :param ignore_jit_warnings: trust a program whose tracing reads a tensor's value
        (otherwise refused with a ``ValueError``).
    :param jit_options: passed to ``torch.jit.trace`` (``check_trace`` defaults to False).
    """


class JitWakeSleep(_JitWakeSleepELBO, WakeSleep):
    """:class:`WakeSleep` compiled with ``torch.jit.trace``; arguments and behaviour as in
    :class:`JitReweightedWakeSleep`."""


class JitJointStochasticApproximation(_JitWakeSleepELBO, JointStochasticApproximation):
    """:class:`JointStochasticApproximation` compiled with ``torch.jit.trace``; arguments
    and behaviour as in :class:`JitReweightedWakeSleep`. The chains are inputs of the graph,
    updated in place: the first step (which creates them) runs eagerly."""

    def _state_tensors(self) -> list[Tensor]:
        chains = self.chains
        if chains.seen is None:
            return []
        return [*(chains.values[name] for name in sorted(chains.values)), chains.seen, chains.age]

    def _set_state_tensors(self, tensors: list[Tensor]) -> None:
        if not tensors:
            return
        chains = self.chains
        *values, chains.seen, chains.age = tensors
        chains.values = dict(zip(sorted(chains.values), values, strict=True))

    def _can_trace(self) -> bool:
        return self.chains.seen is not None
