"""Helmholtz machines: layered sigmoid belief nets with a recognition network.

Generative (top-down)::

    h_L ~ Bernoulli(sigmoid(b_L))
    h_l | h_{l+1} ~ Bernoulli(sigmoid(W_l h_{l+1} + b_l))      l = L-1 .. 1
    x | h_1 ~ Bernoulli(sigmoid(W_0 h_1 + b_0))             visible="bernoulli" (binary data)
    x | h_1 ~ Normal(W_0 h_1 + b_0, exp(s))                 visible="gaussian" (real-valued data)

Recognition (bottom-up)::

    h_1 | x ~ Bernoulli(sigmoid(V_1 x + c_1)),  h_l | h_{l-1} ~ Bernoulli(sigmoid(V_l h_{l-1} + c_l))

:meth:`HelmholtzMachine.features` is the recognition net as a feature extractor (``docs/design.md``
§9): the probabilities that the hidden units are on, every layer, bottom first.

``model`` and ``guide`` are ordinary NumPyro programs over a ``(batch, D)`` array
``x``; any objective of this package trains them. Batch dimensions are read
from the right. Parameters are ``numpyro.param`` sites whose starting values are drawn
as :func:`wakesleep.trainer.initialisation.helmholtz_inits` says (``init="default"``: like
``torch.nn.Linear``, top logits at zero; ``init="sparse"``: for sparse images of parts).

Parameter values live outside the machine (in the SVI state), so the helpers that read
them take the constrained parameter dictionary, ``svi.get_params(state)``:
:meth:`HelmholtzMachine.generative_weights` and :meth:`HelmholtzMachine.visible_scale` for
:mod:`wakesleep.trainer.exact`, :meth:`HelmholtzMachine.sample` for datapoints drawn from the
generative model and :meth:`HelmholtzMachine.features` for the recognition net's features.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from numbers import Integral

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import Array, random
from numpyro import handlers

from wakesleep.trainer.initialisation import Uniform, helmholtz_inits

__all__ = ["HelmholtzMachine"]


class _Bernoulli(dist.BernoulliLogits):
    """``Bernoulli(logits)`` scored as ``value * logits - softplus(logits)``: the latent units.

    The same log-probability as NumPyro's ``BernoulliLogits`` at finite logits, the same
    samples (integers) and the same support check, with two differences. Its gradient is right
    at logits exactly 0, where the machine's prior logits start: NumPyro's
    ``max(x, 0) + log1p(exp(-|x|)) - x y`` has gradient ``-y`` there (JAX differentiates ``|x|``
    at 0 as 1) instead of ``sigmoid(0) - y``. And no ``where`` lies on the gradient's path (the
    support check adds ``0`` or ``-inf``, a function of the value alone). That matters for
    speed: the logits of the guide's first layer (and the prior logits) are shared by all the
    particles of a step, so their gradient sums over particles, and with NumPyro's
    double-``where`` form or its ``where``-masking validation XLA on CPU (jaxlib 0.10) leaves
    that sum as a separate, slow reduction (benchmarks/bench_numpyro_sbn.py, 200 hidden units:
    an RWS step 1.42x a hand-written JAX one, 1.04x with this class). The observed pixels keep
    NumPyro's ``Bernoulli``: their logits differ per particle, and it compiles faster there.
    Logits of ``±inf`` give ``nan`` (NumPyro's form special-cases them); the machine's logits
    are finite.
    """

    def log_prob(self, value: Array) -> Array:
        log_prob = value * self.logits - jax.nn.softplus(self.logits)
        if self._validate_args:  # -inf outside {0, 1}, as NumPyro's @validate_sample
            log_prob = log_prob + jnp.where(self._validate_sample(value), 0.0, -jnp.inf)
        return log_prob


def _draw(start: Uniform, shape: tuple[int, ...]) -> Callable[[Array], Array]:
    """The ``numpyro.param`` initialiser that draws ``shape`` values from ``start``."""
    return lambda key: random.uniform(key, shape, minval=start.low, maxval=start.high)


class HelmholtzMachine:
    """A sigmoid belief net ``p(x, h_1..h_L)`` with a bottom-up recognition net ``q(h|x)``.

    :param num_visible: ``D``, the number of visible units.
    :param hidden: sizes of the hidden layers from the bottom (nearest ``x``) to the top,
        e.g. ``(8, 1)`` for the bars network of Hinton et al. (1995): 16-8-1.
    :param name: prefix of the parameter names. Model and guide use disjoint names
        (``{name}_generative.*`` and ``{name}_recognition.*``), so that each phase of an
        alternating schedule touches only its own parameters.
    :param init: how parameters start, ``"default"`` or ``"sparse"``
        (:mod:`wakesleep.trainer.initialisation`).
    :param visible: ``"bernoulli"`` for binary data; ``"gaussian"`` for real-valued data
        (standardise it): each visible unit is normal with a mean from the layer above and
        a learned scale, ``{name}_generative.visible_log_scale``, starting at 1.
    """

    def __init__(
        self,
        num_visible: int,
        hidden: Sequence[int],
        name: str = "helmholtz",
        init: str = "default",
        visible: str = "bernoulli",
    ) -> None:
        # checks the sizes, init and visible
        inits = helmholtz_inits(num_visible, hidden, init, visible)
        self.num_visible = num_visible
        self.hidden = tuple(int(h) for h in hidden)
        self.name = name
        self.init = init
        self.visible = visible
        self._sizes = (num_visible, *self.hidden)
        self._inits = inits

    def _param(self, relative: str, shape: tuple[int, ...]) -> Array:
        """The parameter ``{name}_{relative}``, drawn from its start on first use."""
        return numpyro.param(f"{self.name}_{relative}", _draw(self._inits[relative], shape))

    def _linear(self, relative: str, fan_in: int, fan_out: int, h: Array) -> Array:
        """``h @ W.T + b`` with ``W`` of shape ``(fan_out, fan_in)``, as ``torch.nn.Linear``."""
        weight = self._param(f"{relative}.weight", (fan_out, fan_in))
        return h @ weight.T + self._param(f"{relative}.bias", (fan_out,))

    @contextmanager
    def _plate(self, x: Array, num_data: int | None, index: Array | None) -> Iterator[None]:
        """The data plate over ``x.shape[-2]``; of size ``num_data`` (scaled by ``N/B``) when
        given, with ``index`` (the rows of ``x`` in the data set) as its sub-sample indices.

        With ``num_data`` the caller has already drawn the mini-batch ``x``; without ``index``
        the plate's own sub-sampling indices only set the ``num_data / batch`` scale.
        """
        batch = x.shape[-2]
        size = batch if num_data is None else num_data
        if index is None:
            with numpyro.plate("data", size, subsample_size=batch, dim=-1):
                yield
        else:
            # numpyro.plate draws its indices when it is made, not when it is entered: the
            # caller's must be substituted around its construction
            with handlers.substitute(data={"data": jnp.asarray(index)}):
                plate = numpyro.plate("data", size, subsample_size=batch, dim=-1)
            with plate:
                yield

    def model(
        self, x: Array, num_data: int | None = None, index: Array | None = None
    ) -> None:
        """``p(x, h)``; ``num_data`` (the data-set size) scales a mini-batch ``x`` to the full set,
        and ``index`` (``x``'s rows in the data set) names its datapoints, which
        :class:`~numpyro_wakesleep.JointStochasticApproximation` needs to keep their chains."""
        sizes, depth = self._sizes, len(self.hidden)
        top_logits = self._param("generative.top_logits", (sizes[-1],))
        with self._plate(x, num_data, index):
            h = numpyro.sample(f"h{depth}", _Bernoulli(top_logits).to_event(1))
            # layers.{i} maps layer i+1 to layer i (0 = visible)
            for layer in range(depth - 1, -1, -1):
                logits = self._linear(
                    f"generative.layers.{layer}", sizes[layer + 1], sizes[layer], h
                )
                if layer == 0:
                    numpyro.sample("x", self._visible_distribution(logits), obs=x)
                else:
                    h = numpyro.sample(f"h{layer}", _Bernoulli(logits).to_event(1))

    def _visible_distribution(self, out: Array) -> dist.Distribution:
        """``p(x | h_1)`` from the bottom layer's output: logits or means."""
        if self.visible == "gaussian":
            log_scale = self._param("generative.visible_log_scale", (self.num_visible,))
            return dist.Normal(out, jnp.exp(log_scale)).to_event(1)
        return dist.Bernoulli(logits=out).to_event(1)

    def guide(
        self, x: Array, num_data: int | None = None, index: Array | None = None
    ) -> None:
        """``q(h | x)``, bottom-up; the arguments are those of :meth:`model`."""
        sizes = self._sizes
        with self._plate(x, num_data, index):
            h = x
            for layer in range(1, len(sizes)):
                logits = self._linear(f"recognition.{layer - 1}", sizes[layer - 1], sizes[layer], h)
                h = numpyro.sample(f"h{layer}", _Bernoulli(logits).to_event(1))

    def generative_weights(
        self, params: dict[str, Array]
    ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """The generative net as float64 NumPy arrays: ``(top_logits, [(weight, bias), ...])``.

        ``layers[i]`` maps ``h_{i+1}`` to the logits of ``h_i`` (``h_0 = x``), weights in
        ``torch.nn.Linear`` layout ``(out, in)``: the format of :mod:`wakesleep.trainer.exact`. The
        model's ``{name}_generative.layers.{i}.weight`` parameters already have that layout
        (``_linear`` computes ``h @ W.T + b``), so nothing is transposed.

        :param params: constrained parameter values by name, e.g. ``svi.get_params(state)``.
        :raises KeyError: naming a generative parameter that ``params`` lacks.
        """

        def as_numpy(relative: str, shape: tuple[int, ...]) -> np.ndarray:
            return np.asarray(self._checked(params, relative, shape), dtype=np.float64)

        sizes = self._sizes
        layers = [
            (
                as_numpy(f"generative.layers.{i}.weight", (sizes[i], sizes[i + 1])),
                as_numpy(f"generative.layers.{i}.bias", (sizes[i],)),
            )
            for i in range(len(self.hidden))
        ]
        return as_numpy("generative.top_logits", (sizes[-1],)), layers

    def _checked(self, params: dict[str, Array], relative: str, shape: tuple[int, ...]) -> Array:
        """``params["{name}_{relative}"]``, with a clear error when it is missing or not of
        ``shape``."""
        name = f"{self.name}_{relative}"
        if name not in params:
            raise KeyError(
                f"params has no {name!r}: pass the parameters of this machine (name "
                f"{self.name!r}), e.g. svi.get_params(state)."
            )
        value = params[name]
        if tuple(np.shape(value)) != shape:
            raise ValueError(f"params[{name!r}] has shape {np.shape(value)}, expected {shape}.")
        return value

    def visible_scale(self, params: dict[str, Array]) -> np.ndarray | None:
        """The Gaussian visible units' standard deviations as float64 NumPy, shape ``(D,)``:
        ``helmholtz_log_marginal(x, *machine.generative_weights(params), visible_scale=...)``;
        ``None`` for Bernoulli visible units.

        :param params: constrained parameter values by name, e.g. ``svi.get_params(state)``.
        """
        if self.visible != "gaussian":
            return None
        log_scale = self._checked(params, "generative.visible_log_scale", (self.num_visible,))
        return np.exp(np.asarray(log_scale, dtype=np.float64))

    def features(self, params: dict[str, Array], x: Array) -> Array:
        """The recognition net's features of ``x``: the probabilities that the hidden units
        are on, every hidden layer, bottom first, shape ``(*batch, sum(hidden))``.

        Layer 1's are exactly ``q(h_1 = 1 | x) = sigmoid(V_1 x + c_1)``. An upper layer's are
        computed from the probabilities of the layer below in place of its binary states,
        ``sigmoid(V_l p_{l-1} + c_l)`` (a deterministic mean-field pass): the usual way to
        read a recognition net as a feature extractor, with no sampling noise. Jitted once
        per machine and shape.

        :param params: constrained parameter values by name, e.g. ``svi.get_params(state)``.
        :raises KeyError: naming a recognition parameter that ``params`` lacks.
        """
        sizes = self._sizes
        for layer in range(len(self.hidden)):
            self._checked(params, f"recognition.{layer}.weight", (sizes[layer + 1], sizes[layer]))
            self._checked(params, f"recognition.{layer}.bias", (sizes[layer + 1],))
        return _features(self, params, jnp.asarray(x))

    def sample(self, params: dict[str, Array], rng_key: Array, num_samples: int) -> Array:
        """``num_samples`` datapoints ``x ~ p_θ(x)`` drawn by running the model with ``x`` released.

        The model runs once on a blank ``(num_samples, D)`` batch under
        ``handlers.uncondition`` (``x`` is then sampled, not observed), with ``params``
        substituted and ``rng_key`` as its seed; the run is jitted (compiled once per machine
        and ``num_samples``).

        :param params: constrained parameter values by name, e.g. ``svi.get_params(state)``.
        :returns: shape ``(num_samples, D)``: ``uint8`` 0/1 images for Bernoulli visible units,
            floats for Gaussian ones.
        """
        if (
            isinstance(num_samples, bool)
            or not isinstance(num_samples, Integral)
            or num_samples < 1
        ):
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
        return _draw_images(self, params, rng_key, int(num_samples))


@partial(jax.jit, static_argnums=(0, 3))
def _draw_images(
    machine: HelmholtzMachine, params: dict[str, Array], rng_key: Array, num_samples: int
) -> Array:
    """The model run once, jitted, on a blank batch with ``x`` released; binary ``x`` as
    ``uint8``."""
    blank = jnp.zeros((num_samples, machine.num_visible))
    program = handlers.uncondition(handlers.substitute(machine.model, data=params))
    model_trace = handlers.trace(handlers.seed(program, rng_key)).get_trace(blank)
    value = model_trace["x"]["value"]
    return value if machine.visible == "gaussian" else value.astype(jnp.uint8)


@partial(jax.jit, static_argnums=0)
def _features(machine: HelmholtzMachine, params: dict[str, Array], x: Array) -> Array:
    """The mean-field pass of :meth:`HelmholtzMachine.features`, jitted."""
    sizes, layers, p = machine._sizes, [], x
    with handlers.substitute(data=params):
        for layer in range(1, len(sizes)):
            fan_in, fan_out = sizes[layer - 1], sizes[layer]
            p = jax.nn.sigmoid(machine._linear(f"recognition.{layer - 1}", fan_in, fan_out, p))
            layers.append(p)
    return jnp.concatenate(layers, axis=-1)
