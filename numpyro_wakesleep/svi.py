"""Alternating model and guide updates for NumPyro, with one optimiser state per side.

The wake-sleep algorithm of Hinton et al. (1995) alternates a wake phase, which
updates the generative model, and a sleep phase, which updates the recognition
model (the guide). :class:`numpyro.infer.SVI` updates every parameter at every
step from one optimiser state; :class:`AlternatingSVI` keeps what alternation
needs in a pure state: which phase comes next, and a separate Optax state for
the model's and for the guide's parameters, so that a model step never touches
the guide's moment estimates and vice versa.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from jax import Array, lax, random
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.infer.svi import SVIRunResult

from wakesleep.contract import Phase

from .chains import CHAINS
from .losses import NonFiniteLossWarning
from .traces import non_finite_data_of, non_finite_observations, trace_params

__all__ = ["AlternatingSVI", "AlternatingSVIState"]

#: The phases an alternating schedule steps through; :attr:`AlternatingSVIState.phase` is
#: an index into it (an int32, so that the state stays a pytree that ``jit`` can carry).
ALTERNATING_PHASES: tuple[Phase, Phase] = ("model", "guide")


class AlternatingSVIState(NamedTuple):
    """The state of :class:`AlternatingSVI`, a pytree.

    - **params**: every parameter of model and guide, unconstrained, by name;
    - **model_optim_state**, **guide_optim_state**: the Optax states of the model's and of
      the guide's parameters;
    - **mutable_state**: values of ``numpyro.mutable`` sites (or ``None``);
    - **phase**: what the next step updates, as an int32 index into ``("model", "guide")``;
      :meth:`AlternatingSVI.phase` reads it as that string;
    - **rng_key**: the random key of the next step.
    """

    params: dict[str, Array]
    model_optim_state: Any
    guide_optim_state: Any
    mutable_state: dict[str, Array] | None
    phase: Array
    rng_key: Array


def _check_optim(name: str, optim: object) -> optax.GradientTransformation:
    if not isinstance(optim, optax.GradientTransformation):
        raise TypeError(
            f"{name} must be an Optax GradientTransformation, e.g. optax.adam(1e-3), got "
            f"{type(optim).__name__}. numpyro.optim optimisers keep the parameter values in "
            "their own state, which cannot be shared between two optimisers; use the Optax "
            "equivalent."
        )
    return optim


def _strong(tree: Any) -> Any:
    """The same arrays without weak types, so that ``lax.scan``'s carry keeps its type."""
    return jax.tree.map(lambda x: lax.convert_element_type(x, jnp.result_type(x)), tree)


class AlternatingSVI:
    r"""Stochastic variational inference that alternates model-only and guide-only steps.

    Steps alternate: a *model step* follows the model terms of the loss (wake-θ) and
    changes only the model's parameters with ``model_optim``; a *guide step* follows the
    guide terms (``insomnia·wake-φ + (1 − insomnia)·sleep-φ``) and changes only the
    guide's parameters with ``guide_optim``. The phase is part of the state, so
    :meth:`update` is a pure function that can be jitted or scanned.

    Which parameters belong to which side is found at :meth:`init` by tracing the guide
    and the model (replayed against the guide) once: a parameter belongs to every program
    that reads it with ``numpyro.param``.

    **Shared parameters.** A parameter read by both programs is updated in *both* phases:
    in a model step with the gradient of the model terms, by ``model_optim``; in a guide
    step with the gradient of the guide terms, by ``guide_optim``. Its value is one array,
    but each optimiser keeps its own statistics for it (Adam's moments of the model
    gradients in ``model_optim_state``, of the guide gradients in ``guide_optim_state``),
    so the two gradients are never mixed in one moment estimate. Freezing one optimiser
    (``optax.set_to_zero()``) therefore freezes exactly the parameters it owns and stops
    the shared ones from moving in that side's phase only.

    **Non-finite steps.** When the loss or any updated parameter is not finite, the step is
    refused inside ``jit``: parameters, optimiser states, mutable state and phase are kept
    and only the random key moves on, so that the next step draws fresh particles. A
    refused step returns NaN as its loss (also when only the new parameters were not
    finite); :meth:`run` warns with the number of refused steps.

    With a loss of this package the phase decides which terms are computed (no dreams in
    a model step). Any other NumPyro ELBO (e.g. ``Trace_ELBO``) also works: both phases
    then differentiate its whole loss, restricted to that side's parameters. The first
    phase is the guide when the loss says ``alternate="guide_first"``, otherwise the model.

    :param model: the model, a NumPyro program.
    :param guide: the guide, a NumPyro program over the model's latent sites.
    :param model_optim: an Optax ``GradientTransformation`` for the model's parameters.
    :param guide_optim: an Optax ``GradientTransformation`` for the guide's parameters.
    :param loss: :class:`~numpyro_wakesleep.ReweightedWakeSleep`,
        :class:`~numpyro_wakesleep.WakeSleep` or another NumPyro ELBO.
    :param static_kwargs: keyword arguments of model and guide that stay fixed.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        model_optim: optax.GradientTransformation,
        guide_optim: optax.GradientTransformation,
        loss: Any,
        **static_kwargs: Any,
    ) -> None:
        self.model = model
        self.guide = guide
        self.model_optim = _check_optim("model_optim", model_optim)
        self.guide_optim = _check_optim("guide_optim", guide_optim)
        self.loss = loss
        self.static_kwargs = static_kwargs
        self.model_param_names: frozenset[str] = frozenset()
        self.guide_param_names: frozenset[str] = frozenset()
        self._transforms: dict[str, Any] = {}

    @property
    def shared_param_names(self) -> frozenset[str]:
        """Parameters read by both model and guide (known after :meth:`init`)."""
        return self.model_param_names & self.guide_param_names

    # -- state ------------------------------------------------------------------------------
    def init(
        self, rng_key: Array, *args: Any, init_params: dict | None = None, **kwargs: Any
    ) -> AlternatingSVIState:
        """Trace guide and model once; return the first state.

        Observed data holding NaN or inf (where no mask hides them) raise
        :class:`~numpyro_wakesleep.NonFiniteDataError` here, naming the site and datapoints.

        :param init_params: optional constrained values for some ``numpyro.param`` sites,
            used instead of their ``init_value``.
        """
        rng_key, model_key, guide_key = random.split(rng_key, 3)
        kwargs = {**kwargs, **self.static_kwargs}
        guide = seed(self.guide, guide_key)
        if init_params is not None:
            guide = substitute(guide, data=init_params)
        try:
            guide_trace = trace(guide).get_trace(*args, **kwargs)
        except (ValueError, RuntimeError) as error:  # NaN data often break the guide first
            problem = non_finite_data_of(self.model, init_params or {}, args, kwargs, model_key)
            if problem is not None:
                raise problem from error
            raise
        model = seed(replay(self.model, trace=guide_trace), model_key)
        if init_params is not None:
            model = substitute(model, data=init_params)
        model_trace = trace(model).get_trace(*args, **kwargs)
        problem = non_finite_observations(model_trace)  # the data are concrete here
        if problem is not None:
            raise problem

        params: dict[str, Array] = {}
        mutable: dict[str, Array] = {}
        self._transforms = {}
        for site in list(model_trace.values()) + list(guide_trace.values()):
            if site["type"] == "param":
                transform = biject_to(site["kwargs"].get("constraint", constraints.real))
                self._transforms[site["name"]] = transform
                params[site["name"]] = transform.inv(site["value"])
            elif site["type"] == "mutable":
                mutable[site["name"]] = site["value"]
        self.model_param_names = frozenset(trace_params(model_trace))
        self.guide_param_names = frozenset(trace_params(guide_trace))
        if hasattr(self.loss, "init_chains"):  # JointStochasticApproximation's per-datapoint state
            mutable[CHAINS] = self.loss.init_chains(
                guide_key, self._constrain(params), self.model, self.guide, *args, **kwargs
            )
        params, mutable = _strong((params, mutable))
        first: Phase = "guide" if getattr(self.loss, "first_phase", "model") == "guide" else "model"
        return AlternatingSVIState(
            params=params,
            model_optim_state=self.model_optim.init(self._side(params, self.model_param_names)),
            guide_optim_state=self.guide_optim.init(self._side(params, self.guide_param_names)),
            mutable_state=mutable or None,
            phase=jnp.asarray(ALTERNATING_PHASES.index(first), dtype=jnp.int32),
            rng_key=rng_key,
        )

    def get_params(self, svi_state: AlternatingSVIState) -> dict[str, Array]:
        """The constrained values of every parameter of model and guide."""
        return self._constrain(svi_state.params)

    @staticmethod
    def phase(svi_state: AlternatingSVIState) -> Phase:
        """What the next :meth:`update` of ``svi_state`` updates: ``"model"`` or ``"guide"``."""
        return ALTERNATING_PHASES[int(svi_state.phase)]

    # -- steps ------------------------------------------------------------------------------
    def update(
        self, svi_state: AlternatingSVIState, *args: Any, **kwargs: Any
    ) -> tuple[AlternatingSVIState, Array]:
        """One model step or one guide step, as ``svi_state.phase`` says; jit-able.

        :return: ``(new_state, loss)``, the loss being the reported value (nats) of the
            parameters before the step.
        """
        rng_key, step_key = random.split(svi_state.rng_key)

        def model_step(state: AlternatingSVIState) -> tuple:
            value, mutable, params, optim_state = self._side_step(
                "model", state, state.model_optim_state, step_key, args, kwargs
            )
            return value, mutable, params, optim_state, state.guide_optim_state

        def guide_step(state: AlternatingSVIState) -> tuple:
            value, mutable, params, optim_state = self._side_step(
                "guide", state, state.guide_optim_state, step_key, args, kwargs
            )
            return value, mutable, params, state.model_optim_state, optim_state

        value, mutable, params, model_opt, guide_opt = lax.cond(
            svi_state.phase == ALTERNATING_PHASES.index("model"), model_step, guide_step, svi_state
        )
        finite = jnp.isfinite(value) & jnp.all(
            jnp.asarray([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)] or [True])
        )
        proposed = (params, model_opt, guide_opt, mutable, 1 - svi_state.phase)  # the other phase
        kept = (
            svi_state.params,
            svi_state.model_optim_state,
            svi_state.guide_optim_state,
            svi_state.mutable_state,
            svi_state.phase,
        )
        params, model_opt, guide_opt, mutable, phase = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), proposed, kept
        )
        # a refused step reports NaN, also when only the new parameters were not finite
        value = jnp.where(finite, value, jnp.nan)
        return AlternatingSVIState(params, model_opt, guide_opt, mutable, phase, rng_key), value

    def run(
        self,
        rng_key: Array,
        num_steps: int,
        *args: Any,
        progress_bar: bool = True,
        init_state: AlternatingSVIState | None = None,
        init_params: dict | None = None,
        **kwargs: Any,
    ) -> SVIRunResult:
        """Run ``num_steps`` alternating steps (jitted); return ``SVIRunResult(params, state, losses)``.

        With ``progress_bar`` a tqdm bar shows the average loss; without, the steps run in one
        ``lax.scan``. ``init_state`` continues an earlier run.
        """
        if num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}.")
        state = (
            self.init(rng_key, *args, init_params=init_params, **kwargs)
            if init_state is None
            else init_state
        )

        def body(state: AlternatingSVIState, _: Any) -> tuple[AlternatingSVIState, Array]:
            return self.update(state, *args, **kwargs)

        if progress_bar:
            step = jax.jit(body)
            losses = []
            every = max(num_steps // 20, 1)
            with tqdm.trange(1, num_steps + 1) as bar:
                for i in bar:
                    state, value = step(state, None)
                    losses.append(value)
                    if i % every == 0:
                        recent = np.asarray(jax.device_get(losses[i - every : i]))
                        recent = recent[np.isfinite(recent)]
                        average = float(recent.mean()) if recent.size else float("nan")
                        bar.set_postfix_str(
                            f"init loss: {float(losses[0]):.4f}, "
                            f"avg. loss [{i - every + 1}-{i}]: {average:.4f}",
                            refresh=False,
                        )
            losses = jnp.stack(losses)
        else:
            state, losses = lax.scan(body, state, None, length=num_steps)
        refused = int(np.sum(~np.isfinite(np.asarray(losses))))
        if refused:
            warnings.warn(
                f"{refused} of {num_steps} steps had a non-finite loss and were refused (no "
                "parameter changed in them). Evaluate the loss outside jit (loss.loss(...) or "
                "loss.terms(...)) to see which term and site are at fault.",
                NonFiniteLossWarning,
                stacklevel=2,
            )
        return SVIRunResult(self.get_params(state), state, losses)

    def evaluate(self, svi_state: AlternatingSVIState, *args: Any, **kwargs: Any) -> Array:
        """The reported value (negative bound, nats) at the state's parameters; no update."""
        _, step_key = random.split(svi_state.rng_key)
        params = self._with_mutable(self.get_params(svi_state), svi_state.mutable_state)
        value = self._phase_loss("model", step_key, params, args, kwargs)["loss"]
        return lax.stop_gradient(value)

    # -- internals --------------------------------------------------------------------------
    def _constrain(self, params: dict[str, Array]) -> dict[str, Array]:
        return {
            name: self._transforms[name](value) if name in self._transforms else value
            for name, value in params.items()
        }

    @staticmethod
    def _side(params: dict[str, Array], names: frozenset[str]) -> dict[str, Array]:
        return {name: value for name, value in params.items() if name in names}

    @staticmethod
    def _with_mutable(params: dict[str, Array], mutable: dict | None) -> dict[str, Array]:
        if not mutable:
            return params
        return {**params, **lax.stop_gradient(mutable)}

    def _phase_loss(
        self, phase: Phase, rng_key: Array, params: dict, args: tuple, kwargs: dict
    ) -> dict[str, Any]:
        kwargs = {**kwargs, **self.static_kwargs}
        call = (self.model, self.guide, *args)
        if hasattr(self.loss, "loss_for_phase"):
            return self.loss.loss_for_phase(phase, rng_key, params, *call, **kwargs)
        try:
            return self.loss.loss_with_mutable_state(rng_key, params, *call, **kwargs)
        except NotImplementedError:
            return {"loss": self.loss.loss(rng_key, params, *call, **kwargs), "mutable_state": None}

    def _side_step(
        self,
        side: Phase,
        state: AlternatingSVIState,
        optim_state: Any,
        rng_key: Array,
        args: tuple,
        kwargs: dict,
    ) -> tuple[Array, Any, dict[str, Array], Any]:
        names = self.model_param_names if side == "model" else self.guide_param_names
        optim = self.model_optim if side == "model" else self.guide_optim
        own = self._side(state.params, names)

        def loss_fn(own_params: dict[str, Array]) -> tuple[Array, Any]:
            params = self._constrain({**state.params, **own_params})
            params = self._with_mutable(params, state.mutable_state)
            result = self._phase_loss(side, rng_key, params, args, kwargs)
            mutable = result["mutable_state"]
            if state.mutable_state is None or mutable is None:  # keep the state's structure
                mutable = state.mutable_state
            return result["loss"], mutable

        (value, mutable), grads = jax.value_and_grad(loss_fn, has_aux=True)(own)
        updates, optim_state = optim.update(grads, optim_state, own)
        params = {**state.params, **optax.apply_updates(own, updates)}
        return value, mutable, params, optim_state
