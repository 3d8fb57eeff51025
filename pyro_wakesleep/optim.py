"""Optimisers for ``pyro.infer.SVI``.

:class:`JointAdam` is Pyro's ``Adam`` (optionally under a ``LambdaLR`` schedule) as one torch
optimiser over every parameter, so that a step calls one optimiser instead of one per
parameter. NumPyro's optimisers (Optax) are one function over the whole parameter tree
already, so the NumPyro backend has no counterpart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pyro
import torch
from pyro.optim import PyroOptim

__all__ = ["JointAdam"]


class JointAdam(PyroOptim):
    """Pyro's ``Adam`` (or ``LambdaLR`` of Adam) for ``SVI``, as one torch optimiser::

        svi = pyro.infer.SVI(model, guide, JointAdam(1e-3), loss=JitReweightedWakeSleep(...))

    ``pyro.optim`` gives every parameter a torch optimiser of its own; a step then calls
    one optimiser per parameter, which on a small machine costs more than the step's maths
    (bars: 9 parameters, a millisecond). Here one ``torch.optim.Adam`` (and one ``LambdaLR``)
    holds the state of every parameter that ``SVI`` passes, ordered by name, and one loop
    applies torch's single-tensor Adam arithmetic to each (:meth:`_update`), so the updates
    are those of ``pyro.optim`` bit for bit, and parameters without a gradient are left
    alone as before.
    :meth:`get_state` and :meth:`set_state` keep ``PyroOptim``'s layout, one state dict per
    parameter name, so checkpoints move between the two.

    :param lr: Adam's learning rate.
    :param lr_lambda: optional factor of ``lr`` at step ``t`` (from 0), as ``LambdaLR`` takes
        it; :meth:`step`, called once after each ``SVI`` step, moves it on.
    """

    def __init__(self, lr: float, lr_lambda: Callable[[int], float] | None = None) -> None:
        super().__init__(torch.optim.Adam, {"lr": lr})  # what SVI checks; unused below
        self.lr = lr
        self.lr_lambda = lr_lambda
        self._params: dict[str, torch.Tensor] = {}
        self._by_id: dict[int, torch.Tensor] = {}
        self._optim: torch.optim.Adam | None = None
        self._schedule: torch.optim.lr_scheduler.LambdaLR | None = None
        self._waiting: dict[str, Any] = {}  # set_state's per-name states, before the params

    def __call__(self, params: Iterable[torch.Tensor]) -> None:
        """An Adam step of ``params`` (unconstrained leaves from the param store)."""
        params = list(params)
        # by identity (the dict holds the tensors, so no id is reused while it is compared)
        if self._optim is None or any(self._by_id.get(id(p)) is not p for p in params):
            self._build(params)
        self._update()

    def _update(self) -> None:
        """Adam's update (Kingma & Ba 2015) of every parameter that has a gradient:
        ``m ← β₁m + (1-β₁)g``, ``v ← β₂v + (1-β₂)g²``,
        ``θ ← θ - lr/(1-β₁ᵗ) · m / (√v / √(1-β₂ᵗ) + ε)``.

        The state and learning rate are the torch optimiser's, and the arithmetic is that of
        torch's single-tensor Adam, operation for operation, so the updates are the same bit
        for bit; what is left out is ``Optimizer.step``'s machinery per call (profiling
        hooks, grouping, dispatch), which costs more than the arithmetic on a small model.
        """
        group = self._optim.param_groups[0]
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        with torch.no_grad():
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                state = self._optim.state[param]
                if not state:  # the step count on the host, as torch keeps it
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(
                        param, memory_format=torch.preserve_format
                    )
                state["step"] += 1
                step = state["step"].item()  # a host tensor: no wait for the device
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = lr / (1 - beta1**step)
                denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
                param.addcdiv_(exp_avg, denom, value=-step_size)

    def step(self) -> None:
        """The next step's learning rate (a constant rate has nothing to do)."""
        if self._schedule is not None:
            self._schedule.step()

    def _build(self, params: list[torch.Tensor]) -> None:
        """(Re)build the optimiser over the known and new parameters, keeping every state."""
        waiting = {**self.get_state(), **self._waiting}
        self._params.update({_name_of(p): p for p in params})
        self._by_id = {id(p): p for p in self._params.values()}
        names = sorted(self._params)
        self._optim = torch.optim.Adam([self._params[n] for n in names], lr=self.lr)
        if self.lr_lambda is not None:
            self._schedule = torch.optim.lr_scheduler.LambdaLR(self._optim, self.lr_lambda)
            # the updates bypass Optimizer.step, whose wrapper tells the schedule that the
            # optimiser has stepped (else it warns that it moves before the optimiser)
            self._optim._opt_called = True
        self._waiting = {}
        states = [waiting.get(name) for name in names]
        if any(state is not None for state in states):
            self._load(names, states)

    def get_state(self) -> dict[str, Any]:
        """``{parameter name: state}`` in ``PyroOptim``'s layout: the state dict of an Adam of
        that one parameter (under ``"optimizer"``, beside the schedule's under
        ``"scheduler"``, with a learning-rate schedule)."""
        if self._optim is None:
            return dict(self._waiting)
        joint = self._optim.state_dict()
        group = {k: v for k, v in joint["param_groups"][0].items() if k != "params"}
        states = {}
        for index, name in enumerate(sorted(self._params)):
            state = {"state": {0: joint["state"][index]} if index in joint["state"] else {},
                     "param_groups": [{**group, "params": [0]}]}  # fmt: skip
            if self._schedule is not None:
                state = {"scheduler": self._schedule.state_dict(), "optimizer": state}
            states[name] = state
        return states

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`get_state` (or ``PyroOptim.get_state``): applied now to the
        parameters already seen, kept for the others until a step passes them."""
        self._waiting.update(state)
        if self._optim is not None:
            self._build(list(self._params.values()))

    def _load(self, names: list[str], states: list[Any]) -> None:
        optimizers = [
            None if s is None else s["optimizer"] if self._schedule is not None else s
            for s in states
        ]
        known = next(o for o in optimizers if o is not None)
        group = {k: v for k, v in known["param_groups"][0].items() if k != "params"}
        self._optim.load_state_dict(
            {
                "state": {
                    i: o["state"][0]
                    for i, o in enumerate(optimizers)
                    if o is not None and 0 in o["state"]
                },
                "param_groups": [{**group, "params": list(range(len(names)))}],
            }
        )
        if self._schedule is not None:
            self._schedule.load_state_dict(next(s for s in states if s is not None)["scheduler"])


def _name_of(param: torch.Tensor) -> str:
    return pyro.get_param_store().param_name(param)
