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

``model`` and ``guide`` are ordinary Pyro programs over a ``(batch, D)`` tensor
``x``; any objective of this package trains them. Batch dimensions are read
from the right, so vectorised particles and dreams broadcast through them.
Parameters start as :func:`wakesleep.trainer.initialisation.helmholtz_inits` says
(``init="default"``: like ``torch.nn.Linear``, top logits at zero; ``init="sparse"``: for
sparse images of parts), drawn from torch's global generator (``pyro.set_rng_seed``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from torch import Tensor, nn

from wakesleep.trainer.initialisation import helmholtz_inits

__all__ = ["HelmholtzMachine"]


class HelmholtzMachine(nn.Module):
    """A sigmoid belief net ``p(x, h_1..h_L)`` with a bottom-up recognition net ``q(h|x)``.

    :param num_visible: ``D``, the number of visible units.
    :param hidden: sizes of the hidden layers from the bottom (nearest ``x``) to the top,
        e.g. ``(8, 1)`` for the bars network of Hinton et al. (1995): 16-8-1.
    :param name: prefix of the parameters in Pyro's param store.
    :param init: how parameters start, ``"default"`` or ``"sparse"``
        (:mod:`wakesleep.trainer.initialisation`).
    :param visible: ``"bernoulli"`` for binary data; ``"gaussian"`` for real-valued data
        (standardise it): each visible unit is normal with a mean from the layer above and
        a learned scale, ``generative.visible_log_scale``, starting at 1.
    """

    def __init__(
        self,
        num_visible: int,
        hidden: Sequence[int],
        name: str = "helmholtz",
        init: str = "default",
        visible: str = "bernoulli",
    ) -> None:
        super().__init__()
        # checks the sizes, init and visible
        inits = helmholtz_inits(num_visible, hidden, init, visible)
        self.num_visible = num_visible
        self.hidden = tuple(int(h) for h in hidden)
        self.name = name
        self.visible = visible
        sizes = (num_visible, *self.hidden)
        # Model and guide register disjoint modules, so that each phase of an alternating
        # schedule touches only its own parameters.
        self.generative = nn.Module()
        self.generative.top_logits = nn.Parameter(torch.zeros(sizes[-1]))
        # generative.layers[i] maps layer i+1 to layer i (0 = visible)
        self.generative.layers = nn.ModuleList(
            nn.Linear(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)
        )
        # recognition[i] maps layer i to layer i+1
        self.recognition = nn.ModuleList(
            nn.Linear(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1)
        )
        if visible == "gaussian":
            self.generative.visible_log_scale = nn.Parameter(torch.zeros(num_visible))
        self.init = init
        with torch.no_grad():
            for relative, start in inits.items():
                self.get_parameter(relative).uniform_(start.low, start.high)

    def _plate(self, x: Tensor, num_data: int | None, index: Tensor | None) -> pyro.plate:
        """The data plate over ``x.shape[-2]``; of size ``num_data`` (scaled by ``N/B``) when
        given, with ``index`` (the rows of ``x`` in the data set) as its sub-sample indices."""
        batch = x.shape[-2]
        if num_data is None:
            return pyro.plate("data", batch, dim=-1, subsample=index)
        if index is None:
            index = torch.arange(batch, device=x.device)
        return pyro.plate("data", num_data, subsample=index, dim=-1)

    def model(self, x: Tensor, num_data: int | None = None, index: Tensor | None = None) -> None:
        """``p(x, h)``; ``num_data`` (the data-set size) scales a mini-batch ``x`` to the full set,
        and ``index`` (``x``'s rows in the data set) names its datapoints, which
        :class:`~pyro_wakesleep.JointStochasticApproximation` needs to keep their chains."""
        generative = pyro.module(
            f"{self.name}_generative", self.generative, update_module_params=True
        )
        depth = len(self.hidden)
        with self._plate(x, num_data, index):
            top = dist.Bernoulli(logits=self._per_unit(generative.top_logits)).to_event(1)
            h = pyro.sample(f"h{depth}", top)
            for layer in range(depth - 1, -1, -1):
                logits = self._affine(generative.layers[layer], h)
                if layer == 0:
                    pyro.sample("x", self._visible_distribution(generative, logits), obs=x)
                else:
                    h = pyro.sample(f"h{layer}", dist.Bernoulli(logits=logits).to_event(1))

    def _visible_distribution(self, generative: nn.Module, out: Tensor) -> dist.Distribution:
        """``p(x | h_1)`` from the bottom layer's output: logits or means."""
        if self.visible == "gaussian":
            scale = self._per_unit(generative.visible_log_scale).exp()
            return dist.Normal(out, scale).to_event(1)
        return dist.Bernoulli(logits=out).to_event(1)

    def guide(self, x: Tensor, num_data: int | None = None, index: Tensor | None = None) -> None:
        """``q(h | x)``, bottom-up; the arguments are those of :meth:`model`."""
        recognition = pyro.module(
            f"{self.name}_recognition", self.recognition, update_module_params=True
        )
        with self._plate(x, num_data, index):
            h = x
            for layer, net in enumerate(recognition, start=1):
                q = dist.Bernoulli(logits=self._affine(net, h))
                # The sampler's probabilities, evaluated now, once per datapoint: after a particle
                # plate has expanded the distribution the sigmoid would run on every copy.
                _ = q.probs
                h = pyro.sample(f"h{layer}", q.to_event(1))

    # Hooks of a stack of machines with a leading parameter dimension (the trainer's
    # candidates, ``pyro_wakesleep.train``); a single machine uses its parameters as they are.
    def _affine(self, layer: nn.Linear, h: Tensor) -> Tensor:
        """``layer(h)``: ``W h + b`` over the last dimension of ``h``."""
        return layer(h)

    def _per_unit(self, param: Tensor) -> Tensor:
        """A parameter with one entry per unit of a layer, as the sample sites broadcast it."""
        return param

    def generative_weights(self) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """The generative net as float64 NumPy arrays: ``(top_logits, [(weight, bias), ...])``.

        ``layers[i]`` maps ``h_{i+1}`` to the logits of ``h_i`` (``h_0 = x``), weights in
        ``nn.Linear`` layout ``(out, in)``: the format of :mod:`wakesleep.trainer.exact`.
        """
        generative = pyro.module(
            f"{self.name}_generative", self.generative, update_module_params=True
        )

        def as_numpy(t: Tensor) -> np.ndarray:
            return t.detach().cpu().double().numpy()

        layers = [(as_numpy(lin.weight), as_numpy(lin.bias)) for lin in generative.layers]
        return as_numpy(generative.top_logits), layers

    def visible_scale(self) -> np.ndarray | None:
        """The Gaussian visible units' standard deviations as float64 NumPy, shape ``(D,)``:
        ``helmholtz_log_marginal(x, *machine.generative_weights(), visible_scale=...)``;
        ``None`` for Bernoulli visible units."""
        if self.visible != "gaussian":
            return None
        generative = pyro.module(
            f"{self.name}_generative", self.generative, update_module_params=True
        )
        return generative.visible_log_scale.detach().double().exp().cpu().numpy()

    def features(self, x: Tensor) -> Tensor:
        """The recognition net's features of ``x``: the probabilities that the hidden units
        are on, every hidden layer, bottom first, shape ``(*batch, sum(hidden))``.

        Layer 1's are exactly ``q(h_1 = 1 | x) = sigmoid(V_1 x + c_1)``. An upper layer's are
        computed from the probabilities of the layer below in place of its binary states,
        ``sigmoid(V_l p_{l-1} + c_l)`` (a deterministic mean-field pass): the usual way to
        read a recognition net as a feature extractor, with no sampling noise. The result
        carries gradients to the recognition net (for fine-tuning); for features alone, call
        it under ``torch.no_grad()``.
        """
        recognition = pyro.module(
            f"{self.name}_recognition", self.recognition, update_module_params=True
        )
        layers, p = [], x
        for net in recognition:
            p = torch.sigmoid(net(p))
            layers.append(p)
        return torch.cat(layers, dim=-1)

    def sample(self, num_samples: int) -> Tensor:
        """``num_samples`` datapoints ``x ~ p_θ(x)`` drawn by running the model with ``x``
        released: ``uint8`` 0/1 images for Bernoulli visible units, float vectors for
        Gaussian ones; shape ``(num_samples, D)``."""
        device = self.generative.top_logits.device
        blank = torch.zeros(num_samples, self.num_visible, device=device)
        with torch.no_grad():
            trace = poutine.trace(poutine.uncondition(self.model)).get_trace(blank)
        value = trace.nodes["x"]["value"]
        return value if self.visible == "gaussian" else value.to(torch.uint8)
