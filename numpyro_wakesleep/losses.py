"""Wake-sleep objectives as NumPyro ELBO losses for :class:`numpyro.infer.SVI`.

The maths is in :mod:`numpyro_wakesleep.objectives`, tracing in
:mod:`numpyro_wakesleep.traces`, dreaming in :mod:`numpyro_wakesleep.dreams`; the
classes here pick the terms of a step and return one scalar whose *value* is the
reported value and whose *gradient* is the update, for SVI to differentiate.

Under ``jit`` (``SVI.update``, ``SVI.run``) nothing can be logged from inside the
step. The separate terms of an evaluation are returned by the pure method
:meth:`~ReweightedWakeSleep.terms`, which can itself be jitted::

    terms = jax.jit(lambda key, params, x: loss.terms(key, params, model, guide, x))
    terms(key, svi.get_params(state), x)   # {"loss": ..., "wake_theta": ..., "ess": ...}

and :attr:`~ReweightedWakeSleep.last_terms` holds those of the last evaluation made
outside any JAX transformation.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array, random
from numpyro.infer.elbo import ELBO

from wakesleep.contract import (
    FIRST_PHASE,
    PHASES,
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
    not_an_instance,
    not_reparameterisable_error,
)

from . import objectives
from .chains import CHAINS, advance_chains, empty_chains
from .dreams import DreamArgs, Dreamer
from .traces import (
    ImportanceTraces,
    bernoulli_sites,
    importance_traces,
    mean_activations,
    non_finite_data_of,
    non_finite_observations,
    path_log_weights,
    probe,
    sample_sites,
)

__all__ = [
    "JointStochasticApproximation",
    "NonFiniteDataError",
    "NonFiniteLossWarning",
    "ReweightedWakeSleep",
    "Sparsity",
    "WakeSleep",
]


def _is_traced(tree: Any) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


class _WakeSleepELBO(ELBO):
    """Shared machinery of :class:`ReweightedWakeSleep` and :class:`WakeSleep`.

    Subclasses say which bound is reported and which wake-θ estimator is used.
    """

    #: Wake-sleep never differentiates through a sample, so discrete latents are fine
    #: (this also silences SVI's warning about them).
    can_infer_discrete = True

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
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles)
        self.insomnia = float(insomnia)
        self.num_sleep_particles = (
            num_particles if num_sleep_particles is None else num_sleep_particles
        )
        self.max_plate_nesting = max_plate_nesting
        self.alternate = alternate
        self.dream_args = dream_args
        self.sparsity = sparsity
        self.wake_phi = wake_phi
        self._dreamer = Dreamer(
            num_dreams=self.num_sleep_particles,
            dream_args=dream_args,
            routing_hint=ROUTING_HINTS.get(self._objective, ""),
        )
        # False once a guide could not be batched: dreams then run one at a time for good
        self._vectorize_dreams = vectorize_particles
        self._warned_alternate = False
        self._last: dict[str, Array] = {}

    # -- what subclasses choose ------------------------------------------------------------
    #: The wake pass returns every particle's guide values (``particle_values``).
    _keeps_draws: bool = False

    def _bound(self, log_weights: Array) -> Array:
        raise NotImplementedError

    def _wake_theta_loss(self, log_p: Array, log_q: Array) -> Array:
        raise NotImplementedError

    # -- public ---------------------------------------------------------------------------
    @property
    def first_phase(self) -> Phase:
        """What an alternating schedule updates first — ``"model"`` or ``"guide"`` (``"both"``
        when ``alternate`` is false). :class:`~numpyro_wakesleep.svi.AlternatingSVI` reads it."""
        return FIRST_PHASE[self.alternate]

    @property
    def last_terms(self) -> dict[str, float]:
        """The terms of the last evaluation made outside ``jit``/``grad``, in nats, for logging.

        ``loss`` is the reported value; ``wake_theta``, ``wake_phi`` and ``sleep_phi`` are the
        surrogate terms that were computed (unweighted by ``insomnia``); ``ess`` is the mean
        over datapoints of the importance-sampling effective sample size ``1 / Σ_k w̄_k²``;
        the other keys of :meth:`terms` likewise. Evaluations inside a JAX transformation (``SVI.update`` is jitted) leave it
        unchanged: call :meth:`terms` (jit-able) for those.
        """
        return {name: float(value) for name, value in self._last.items()}

    def loss(
        self,
        rng_key: Array,
        param_map: dict[str, Array],
        model: Callable,
        guide: Callable,
        *args: Any,
        **kwargs: Any,
    ) -> Array:
        """The scalar :class:`numpyro.infer.SVI` differentiates.

        Its value is the reported value (the negative bound, nats; what ``SVI.update`` and
        ``SVI.run`` return) and its gradient is the full update of model and guide. Unlike
        Pyro's ``loss``, it includes the sleep phase: in NumPyro the loss *is* what is
        differentiated. ``loss_for_phase("model", ...)["loss"]`` has the same value and
        draws no dreams: the cheaper way to evaluate the bound.
        """
        _check_instance(self)
        return self.loss_with_mutable_state(rng_key, param_map, model, guide, *args, **kwargs)[
            "loss"
        ]

    def loss_with_mutable_state(
        self,
        rng_key: Array,
        param_map: dict[str, Array],
        model: Callable,
        guide: Callable,
        *args: Any,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """``{"loss": scalar, "mutable_state": ...}`` for :class:`numpyro.infer.SVI`.

        The scalar's value is the reported value (negative bound, nats) and its gradient the
        full update of model and guide: both sides, whatever ``alternate`` says (SVI keeps no
        phase; :class:`~numpyro_wakesleep.AlternatingSVI` alternates). ``mutable_state`` is
        that of the step's probe pass, ``None`` without ``numpyro.mutable`` sites.
        """
        _check_instance(self)
        if self.alternate is not False and not self._warned_alternate:
            self._warned_alternate = True
            warnings.warn(
                f"alternate={self.alternate!r} has no effect here: numpyro.infer.SVI keeps no "
                "phase between steps, so every step updates model and guide together. Train "
                "with numpyro_wakesleep.AlternatingSVI to alternate model and guide steps.",
                UserWarning,
                stacklevel=2,
            )
        return self.loss_for_phase("both", rng_key, param_map, model, guide, *args, **kwargs)

    def loss_for_phase(
        self,
        phase: Phase,
        rng_key: Array,
        param_map: dict[str, Array],
        model: Callable,
        guide: Callable,
        *args: Any,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Like :meth:`loss_with_mutable_state`, with the gradient of one phase only.

        ``phase="model"`` carries the wake-θ gradient, ``"guide"`` the guide terms
        (``insomnia·wake-φ + (1 − insomnia)·sleep-φ``; no dreams are drawn in a model
        phase), ``"both"`` all of them. The value is the same in every phase.
        """
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}.")
        loss, wake, _, _, state = self._evaluate(
            rng_key, param_map, model, guide, args, kwargs, phase
        )
        mutable = {
            name: site["value"]
            for tr in (wake.model_trace, wake.guide_trace)
            for name, site in tr.items()
            if site["type"] == "mutable"
        }
        return {"loss": loss, "mutable_state": {**mutable, **state} or None}

    def terms(
        self,
        rng_key: Array,
        param_map: dict[str, Array],
        model: Callable,
        guide: Callable,
        *args: Any,
        **kwargs: Any,
    ) -> dict[str, Array]:
        """The separate terms of one evaluation (a pure function: jit it to log under ``jit``).

        Keys: ``loss`` (the reported value), ``wake_theta``, ``wake_phi`` when
        ``insomnia > 0``, ``sleep_phi`` when ``insomnia < 1`` (surrogate values, nats, each a
        scaled sum over datapoints, unweighted by ``insomnia``) and ``ess``, the mean over
        datapoints of the effective sample size ``1 / Σ_k w̄_k²``. With ``sparsity`` set,
        ``sparsity`` (the penalty) and ``mean_activation``;
        :class:`JointStochasticApproximation` adds ``acceptance_rate`` and ``chain_age``.
        """
        _, _, terms, extra, _ = self._evaluate(
            rng_key, param_map, model, guide, args, kwargs, "both"
        )
        return {**jax.lax.stop_gradient(terms), **extra}

    # -- the step -------------------------------------------------------------------------
    def _wake(
        self, rng_key: Array, param_map: dict, model: Callable, guide: Callable, args, kwargs
    ) -> ImportanceTraces:
        return importance_traces(
            model,
            guide,
            args,
            kwargs,
            rng_key=rng_key,
            params={name: v for name, v in param_map.items() if name != CHAINS},
            num_particles=self.num_particles,
            max_plate_nesting=self.max_plate_nesting,
            vectorize=self.vectorize_particles,
            keep_draws=self._keeps_draws,
            keep_attached=self.wake_phi == "dreg",
            keep_activations=self.sparsity is not None,
        )

    def _sparsity_penalty(self, wake: ImportanceTraces) -> tuple[Array, Array]:
        """``weight · N · Σ_j KL(Bern(target) ‖ Bern(ρ̂_j))`` over the chosen Bernoulli sites of the
        guide (``N``: the datapoints the batch stands for), and the mean activation."""
        sites = self.sparsity.chosen_sites(
            bernoulli_sites(wake.guide_trace),
            [name for name, site in sample_sites(wake.guide_trace) if not site["is_observed"]],
        )
        rho = jnp.concatenate([r.reshape(-1) for r in mean_activations(wake, sites).values()])
        eps = jnp.finfo(rho.dtype).eps  # a unit always on or off: a large, finite penalty
        penalty = objectives.sparsity_penalty(jnp.clip(rho, eps, 1.0 - eps), self.sparsity.target)
        num_data = wake.log_weights[0].size * wake.data_scale
        return self.sparsity.weight * num_data * penalty, jnp.mean(jax.lax.stop_gradient(rho))

    def _value(self, wake: ImportanceTraces) -> Array:
        return -_scaled_sum(self._bound(wake.log_weights), wake.data_scale)

    def _evaluate(
        self,
        rng_key: Array,
        param_map: dict,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        phase: Phase,
    ) -> tuple[Array, ImportanceTraces, dict[str, Array], dict[str, Array], dict[str, Any]]:
        """``(loss, wake, terms, statistics, state)``: the scalar to differentiate, the wake
        traces, the terms by name (``loss`` first), statistics for logging (``ess``, ...) and
        the state to carry (see :meth:`_terms`)."""
        wake_key, dream_key = random.split(rng_key)
        try:
            wake = self._wake(wake_key, param_map, model, guide, args, kwargs)
        except (ValueError, RuntimeError) as error:
            # NaN data often first show as a guide that cannot build its distributions
            if not isinstance(error, ModelGuideMismatchError):
                problem = non_finite_data_of(model, param_map, args, kwargs, wake_key)
                if problem is not None:
                    raise problem from error
            raise
        terms, weighted, extra, state = self._terms(
            dream_key, param_map, model, guide, args, kwargs, wake, phase
        )
        if self.sparsity is not None:
            terms["sparsity"], extra["mean_activation"] = self._sparsity_penalty(wake)
            if phase != "model":
                weighted.append(terms["sparsity"])
        value = self._value(wake)
        if "valid" in extra:  # the step cannot be right: make it non-finite, as under jit
            value = jnp.where(extra.pop("valid"), value, jnp.nan)
        terms = {"loss": value, **terms}
        loss = objectives.surrogate(value, *weighted)
        if _concretely_false(jnp.isfinite(loss)):  # eager, gradients or not: the data are concrete
            problem = non_finite_observations(wake.model_trace)
            if problem is not None:
                raise problem
        extra = {**extra, "ess": _ess(wake.log_weights)}
        if not _is_traced((loss, terms, wake.log_weights)):
            self._last = {**terms, **extra}
            if not jnp.isfinite(loss):
                warnings.warn(self._diagnose(wake, terms), NonFiniteLossWarning, stacklevel=4)
        return loss, wake, terms, extra, state

    def _terms(
        self,
        rng_key: Array,
        param_map: dict,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        wake: ImportanceTraces,
        phase: Phase,
    ) -> tuple[dict[str, Array], list[Array], dict[str, Array], dict[str, Any]]:
        """The step's surrogate terms by name, the list that enters the gradient (weighted),
        extra statistics for :attr:`last_terms`, and state to carry to the next step (entries
        of the SVI state's ``mutable_state``)."""
        terms: dict[str, Array] = {}
        weighted: list[Array] = []
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
                weighted.append(self.insomnia * terms["wake_phi"])
            if self.insomnia < 1.0:
                log_q_dreams, self._vectorize_dreams = self._dreamer.log_q(
                    model,
                    guide,
                    args,
                    kwargs,
                    rng_key=rng_key,
                    fixed=wake.fixed,
                    plate_nesting=wake.plate_nesting,
                    wake_model_trace=wake.model_trace,
                    wake_guide_trace=wake.guide_trace,
                    vectorize=self._vectorize_dreams,
                )
                terms["sleep_phi"] = objectives.sleep_phi_loss(log_q_dreams)
                weighted.append((1.0 - self.insomnia) * terms["sleep_phi"])
        return terms, weighted, {}, {}

    # -- diagnosis of a non-finite evaluation (outside jit only) ----------------------------
    @staticmethod
    def _diagnose(wake: ImportanceTraces, terms: dict[str, Array]) -> str:
        return non_finite_loss_message(
            bad_terms=[name for name, t in terms.items() if not bool(jnp.all(jnp.isfinite(t)))],
            dead_datapoints=int(jnp.sum(jnp.all(wake.log_weights == -jnp.inf, axis=0))),
            bad_sites=[label for label, ok in wake.site_finite.items() if not bool(jnp.all(ok))],
            advice=" Under jit, AlternatingSVI and SVI(...).stable_update refuse such a step.",
        )


def _check_reparameterisable(wake: ImportanceTraces) -> None:
    """``wake_phi="dreg"`` differentiates through every guide sample: name those it cannot."""
    sites = [name for name, site in sample_sites(wake.guide_trace) if not site["fn"].has_rsample]
    if sites:
        raise not_reparameterisable_error(sites)


def _check_instance(loss: object) -> None:
    """SVI handed the class calls its methods with a random key as ``self``: say so."""
    if not isinstance(loss, _WakeSleepELBO):
        raise ValueError(not_an_instance())


def _concretely_false(flag: Array) -> bool:
    """``True`` when ``flag`` is known to be false now (outside ``jit``, gradients or not)."""
    try:
        return not bool(flag)
    except jax.errors.ConcretizationTypeError:
        return False


def _scaled_sum(per_datapoint: Array, data_scale: float) -> Array:
    """Sum over datapoints after multiplying by the data plates' sub-sampling factor ``N/B``."""
    total = jnp.sum(per_datapoint)
    return total if data_scale == 1.0 else data_scale * total


def _ess(log_weights: Array) -> Array:
    """Mean over datapoints of the effective sample size ``1 / Σ_k w̄_k²``."""
    return jnp.mean(objectives.effective_sample_size(jax.lax.stop_gradient(log_weights)))


class ReweightedWakeSleep(_WakeSleepELBO):
    r"""Reweighted wake-sleep (Bornschein & Bengio 2015; Le et al. 2019) as an SVI loss.

    Per datapoint, ``K = num_particles`` guide samples :math:`z_k \sim q_\phi(\cdot|x)`
    (no gradient through the sample) are weighted by
    :math:`\log w_k = \log p_\theta(x,z_k) - \log q_\phi(z_k|x)`, :math:`\bar w = \mathrm{softmax}(\log w)`:

    - wake-θ, the model update: :math:`\sum_k \bar w_k \nabla_\theta \log p_\theta(x, z_k)`;
    - wake-φ: :math:`\sum_k \bar w_k \nabla_\phi \log q_\phi(z_k | x)`;
    - sleep-φ: :math:`\frac{1}{M}\sum_m \nabla_\phi \log q_\phi(z_m|x_m)`,
      :math:`(z_m, x_m) \sim p_\theta` dreamed from the model, ``M = num_sleep_particles``.

    The guide follows ``insomnia · wake-φ + (1 − insomnia) · sleep-φ``. The value of
    :meth:`loss` is the negative importance-weighted bound :math:`-\sum_x \log \frac1K \sum_k w_k`
    (nats), an unbiased estimate of its full-data value under plate sub-sampling; its
    gradient is the update above (guide terms enter as ``t − stop_gradient(t)``).

    Weights are formed per element of the plates that enclose every sample site (the data
    plate); with a global latent they are joint. Sub-sampled plates: unscaled
    log-densities inside the log-sum-exp, the ``N/B`` factor outside; all particles and
    dreams of a step share one mini-batch. With joint weights, a sub-sampled plate's scale
    stays inside the log-weights (they then target the full-data posterior of the global
    latent).

    Cost per step: one probe pass, ``K`` guide samples and ``K`` model and guide
    log-density evaluations (``jax.vmap``-ed, or ``jax.lax.map``-ped when
    ``vectorize_particles=False``); with ``insomnia < 1`` also ``M`` model samples and ``M``
    guide evaluations. Under ``jit`` the probe pass costs only the plate sub-sampling.

    :param num_particles: ``K``, guide samples per datapoint (``K = 1`` is allowed).
    :param insomnia: weight of wake-φ against sleep-φ in the guide update, in ``[0, 1]``.
    :param num_sleep_particles: ``M``, dreams per step (default ``num_particles``).
    :param vectorize_particles: ``jax.vmap`` particles and dreams rather than ``jax.lax.map``.
    :param max_plate_nesting: the model's own plates, particles not counted (guessed if inf).
    :param alternate: ``False`` updates model and guide each step; ``True`` /
        ``"model_first"`` alternates model-only and guide-only steps, ``"guide_first"``
        starts with the guide. Alternation needs a state between steps: it is carried out
        by :class:`~numpyro_wakesleep.AlternatingSVI`; under plain ``numpyro.infer.SVI``
        every step updates both (with a warning).
    :param dream_args: ``(observations, args, kwargs) -> (args, kwargs)``, how dreams reach
        the guide (see :mod:`numpyro_wakesleep.dreams` for the default rules).
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

    def _bound(self, log_weights: Array) -> Array:
        return objectives.iwae_bound(log_weights)

    def _wake_theta_loss(self, log_p: Array, log_q: Array) -> Array:
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

    def _bound(self, log_weights: Array) -> Array:
        return objectives.elbo_estimate(log_weights)

    def _wake_theta_loss(self, log_p: Array, log_q: Array) -> Array:
        return objectives.ws_wake_theta_loss(log_p)


@jax.custom_jvp
def _chainless(value: Array) -> Array:
    """``value``, which must not be differentiated: JSA's gradient needs the chain state."""
    return value


@_chainless.defjvp
def _chainless_jvp(primals: tuple, tangents: tuple) -> tuple:
    raise ValueError(_NO_CHAINS)


_NO_CHAINS = (
    "JointStochasticApproximation keeps a Markov chain per datapoint in the SVI state, and this "
    "state has none. Create the state with loss.init_state(svi, rng_key, *args) (or pass "
    "init_state=loss.init_state(svi, rng_key, *args) to svi.run); AlternatingSVI.init adds "
    "the chains itself."
)


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

    No gradient flows through the sampler. The value of :meth:`loss` is the negative IWAE
    bound of the proposals, :math:`-\sum_n \log\frac1K\sum_k w(z'_k)` (nats), comparable
    with :class:`ReweightedWakeSleep`; :meth:`terms` adds ``acceptance_rate`` (the fraction
    of transitions that moved) and ``chain_age`` (the mean number of steps since the batch's
    chains last moved).

    The chains are carried functionally in the SVI state (``mutable_state["wakesleep_chains"]``,
    see :mod:`numpyro_wakesleep.chains`), so steps stay pure under ``jit``::

        svi = SVI(model, guide, optax.adam(1e-3), loss=loss)
        state = loss.init_state(svi, rng_key, x)      # svi.init plus the chains
        result = svi.run(rng_key, 2000, x, init_state=state)

    :class:`~numpyro_wakesleep.AlternatingSVI` adds the chains in its own ``init``.
    Datapoints are identified by the data plate's sub-sample indices (``0..N−1`` without
    sub-sampling), so each keeps its chain across mini-batches; a datapoint met for the
    first time starts from its first proposal. Mini-batches scale the per-datapoint terms
    by ``N/B`` as in :class:`ReweightedWakeSleep`.

    Cost per step: that of :class:`ReweightedWakeSleep` with ``K`` particles and no sleep
    phase, plus one guide and model evaluation of the chains' states.

    :param num_particles: ``K``, proposals per datapoint and step (``K = 1`` is allowed).
    :param vectorize_particles: ``jax.vmap`` the proposals rather than ``jax.lax.map``.
    :param max_plate_nesting: the model's own plates, particles not counted (guessed if inf).
    :param sparsity: a :class:`~wakesleep.contract.Sparsity` constraint on the guide's
        Bernoulli units, or ``None``.

    :raises ValueError: when the model has a global latent (no plate encloses every site, so
        there is no per-datapoint chain) or several data plates; when the data plate's size
        is not that of the chains; when a sub-sample index lies outside the plate (under
        ``jit`` such a step's loss is NaN instead); when a step is differentiated without
        chains in the SVI state.

    References: H. Xu, Z. Ou (2016), *Joint stochastic approximation learning of Helmholtz
    machines*, ICLR workshop track; Z. Ou, Y. Song (2020), *Joint stochastic approximation
    and its application to learning discrete latent variable models*, UAI.
    """

    _objective = "JointStochasticApproximation"
    _keeps_draws = True  # the chains store the proposals' values

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

    # -- the chain state ------------------------------------------------------------------
    def init_chains(
        self,
        rng_key: Array,
        param_map: dict[str, Array],
        model: Callable,
        guide: Callable,
        *args: Any,
        **kwargs: Any,
    ) -> dict:
        """Empty chains for every datapoint of the data plate (one run of guide and model
        tells the plate's size and the sites' shapes)."""
        shared = probe(
            model, guide, args, kwargs, rng_key=rng_key, params=param_map,
            max_plate_nesting=self.max_plate_nesting,
        )  # fmt: skip
        return empty_chains(shared)

    def init_state(
        self, svi: Any, rng_key: Array, *args: Any, init_params: dict | None = None, **kwargs: Any
    ) -> Any:
        """``svi.init(rng_key, *args, **kwargs)`` with the chains in its ``mutable_state``.

        :param svi: a :class:`numpyro.infer.SVI` (or
            :class:`~numpyro_wakesleep.AlternatingSVI`) whose loss is this object.
        """
        state = svi.init(rng_key, *args, init_params=init_params, **kwargs)
        if state.mutable_state is not None and CHAINS in state.mutable_state:
            return state
        chains = self.init_chains(
            rng_key, svi.get_params(state), svi.model, svi.guide, *args,
            **kwargs, **svi.static_kwargs,
        )  # fmt: skip
        return state._replace(mutable_state={**(state.mutable_state or {}), CHAINS: chains})

    # -- the objective --------------------------------------------------------------------
    def loss(
        self,
        rng_key: Array,
        param_map: dict[str, Array],
        model: Callable,
        guide: Callable,
        *args: Any,
        **kwargs: Any,
    ) -> Array:
        """The reported value, the negative IWAE bound of the proposals (nats).

        With the chains in ``param_map`` (as SVI passes them) it is differentiable, with the
        JSA update as its gradient; without them it can only be evaluated.
        """
        _check_instance(self)
        loss, *_ = self._evaluate(rng_key, param_map, model, guide, args, kwargs, "both")
        return loss if CHAINS in param_map else _chainless(loss)

    def loss_for_phase(
        self,
        phase: Phase,
        rng_key: Array,
        param_map: dict[str, Array],
        model: Callable,
        guide: Callable,
        *args: Any,
        **kwargs: Any,
    ) -> dict[str, Any]:
        if CHAINS not in param_map:
            raise ValueError(_NO_CHAINS)
        return super().loss_for_phase(phase, rng_key, param_map, model, guide, *args, **kwargs)

    loss_for_phase.__doc__ = _WakeSleepELBO.loss_for_phase.__doc__

    def _bound(self, log_weights: Array) -> Array:
        return objectives.iwae_bound(log_weights)

    def _terms(
        self,
        rng_key: Array,
        param_map: dict,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        wake: ImportanceTraces,
        phase: Phase,
    ) -> tuple[dict[str, Array], list[Array], dict[str, Array], dict[str, Any]]:
        chains = param_map.get(CHAINS)
        if chains is None:  # an evaluation without a state: every chain starts afresh
            chains = empty_chains(wake)
        step, chains = advance_chains(
            jax.lax.stop_gradient(chains), wake, model, guide, args, kwargs,
            rng_key=rng_key,
        )  # fmt: skip
        terms: dict[str, Array] = {}
        if phase != "guide":
            terms["wake_theta"] = _scaled_sum(
                objectives.chain_average_loss(step.log_p, step.weights), wake.data_scale
            )
        if phase != "model":
            terms["wake_phi"] = _scaled_sum(
                objectives.chain_average_loss(step.log_q, step.weights), wake.data_scale
            )
        extra = {
            "acceptance_rate": step.acceptance_rate,
            "chain_age": step.mean_age,
            "valid": step.valid,
        }
        return terms, list(terms.values()), extra, {CHAINS: chains}
