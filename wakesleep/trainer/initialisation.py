"""Starting values of a Helmholtz machine's parameters, written once for both backends.

Each backend's ``HelmholtzMachine(..., init=...)`` draws every parameter from the
:class:`Uniform` that :func:`helmholtz_inits` names for it, with its own random-number
generator. Parameter names are relative to the machine's prefix, in ``torch.nn.Linear``
layout: ``generative.top_logits``, ``generative.layers.{i}.weight`` (maps ``h_{i+1}`` to
the logits of ``h_i``, ``h_0 = x``), ``generative.layers.{i}.bias``,
``recognition.{i}.weight`` (maps ``h_i`` to the logits of ``h_{i+1}``) and
``recognition.{i}.bias``; a machine with Gaussian visible units (``visible="gaussian"``)
also has ``generative.visible_log_scale``, the log standard deviation of each visible unit,
which starts at 0 (unit scale: standardise the data) and ``generative.layers.0`` then gives
the visible units' means.

``"default"``
    ``torch.nn.Linear``'s start: weights and biases uniform in ``±1/sqrt(fan_in)``; the top
    logits at 0.
``"sparse"``
    For sparse binary images made of parts, such as the bars of Hinton, Dayan, Frey & Neal
    (1995). The units of ``h_1`` start mostly off (logit −3, in the model and in the guide)
    and can only add pixels (``h_1 → x`` weights uniform in ``[0, 1]``, ``x → h_1``
    recognition weights in ``[0, 0.5]``); pixels start mostly off (logit −2); every other
    weight and bias is uniform in ``±0.1``. Nothing is constrained afterwards: the signs
    are a starting point only. On bars, the default's symmetric start usually settles where
    hidden units are on by default and switch pixels *off*, about 1 bit from the data; the
    sparse start avoids that optimum (benchmarks/results/training.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["INITS", "VISIBLE_UNITS", "Uniform", "helmholtz_inits"]

#: The names ``HelmholtzMachine(..., init=...)`` accepts.
INITS: tuple[str, ...] = ("default", "sparse")
#: The names ``HelmholtzMachine(..., visible=...)`` accepts: binary or real-valued data.
VISIBLE_UNITS: tuple[str, ...] = ("bernoulli", "gaussian")

_SPARSE_SCALE = 0.1
_SPARSE_VISIBLE_LOGIT = -2.0
_SPARSE_HIDDEN_LOGIT = -3.0
_SPARSE_GENERATIVE_MAX = 1.0
_SPARSE_RECOGNITION_MAX = 0.5


@dataclass(frozen=True)
class Uniform:
    """Uniform in ``[low, high]``; a constant when ``low == high``."""

    low: float
    high: float


def helmholtz_inits(
    num_visible: int, hidden: Sequence[int], init: str = "default", visible: str = "bernoulli"
) -> dict[str, Uniform]:
    """The starting distribution of every parameter of a ``num_visible``-``hidden`` machine.

    :param init: one of :data:`INITS`.
    :param visible: one of :data:`VISIBLE_UNITS`.
    :returns: ``{relative parameter name: Uniform}``, every parameter of the machine once.
    :raises ValueError: for sizes below 1, no hidden layer, an unknown ``init`` or
        ``visible``, or ``init="sparse"`` with Gaussian visible units (the sparse start is
        for binary images of parts).
    """
    hidden = tuple(hidden)
    if num_visible < 1 or not hidden or any(h < 1 for h in hidden):
        raise ValueError(
            f"A Helmholtz machine needs num_visible >= 1 and at least one hidden layer of "
            f"size >= 1, got num_visible={num_visible}, hidden={hidden}."
        )
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(map(repr, INITS))}, got {init!r}.")
    if visible not in VISIBLE_UNITS:
        raise ValueError(
            f"visible must be one of {', '.join(map(repr, VISIBLE_UNITS))}, got {visible!r}."
        )
    if visible == "gaussian" and init == "sparse":
        raise ValueError(
            "init='sparse' starts binary pixels mostly off, which means nothing for Gaussian "
            "visible units: use init='default' with visible='gaussian'."
        )
    sizes = (int(num_visible), *(int(h) for h in hidden))
    depth = len(sizes) - 1
    inits: dict[str, Uniform] = {}
    if init == "default":
        inits["generative.top_logits"] = Uniform(0.0, 0.0)
        for i in range(depth):
            for prefix, fan_in in (
                (f"generative.layers.{i}", sizes[i + 1]),
                (f"recognition.{i}", sizes[i]),
            ):
                bound = 1.0 / math.sqrt(fan_in)
                inits[f"{prefix}.weight"] = inits[f"{prefix}.bias"] = Uniform(-bound, bound)
        if visible == "gaussian":  # drawn last: the other parameters start as without it
            inits["generative.visible_log_scale"] = Uniform(0.0, 0.0)
        return inits
    small = Uniform(-_SPARSE_SCALE, _SPARSE_SCALE)
    inits["generative.top_logits"] = small
    for i in range(depth):
        for prefix in (f"generative.layers.{i}", f"recognition.{i}"):
            inits[f"{prefix}.weight"] = inits[f"{prefix}.bias"] = small
    inits["generative.layers.0.weight"] = Uniform(0.0, _SPARSE_GENERATIVE_MAX)
    inits["generative.layers.0.bias"] = Uniform(_SPARSE_VISIBLE_LOGIT, _SPARSE_VISIBLE_LOGIT)
    h1_logits = "generative.layers.1.bias" if depth > 1 else "generative.top_logits"
    inits[h1_logits] = Uniform(_SPARSE_HIDDEN_LOGIT, _SPARSE_HIDDEN_LOGIT)
    inits["recognition.0.weight"] = Uniform(0.0, _SPARSE_RECOGNITION_MAX)
    inits["recognition.0.bias"] = Uniform(_SPARSE_HIDDEN_LOGIT, _SPARSE_HIDDEN_LOGIT)
    return inits
