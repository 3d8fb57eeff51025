"""A training step never waits for the device: no host synchronisation in ``loss_and_grads``.

With Pyro's validation off, after warm-up steps (vectorisation checks done, graphs of the
compiled classes traced), ``loss.loss_and_grads(model, guide, ...)`` must not read a
tensor's value on the host. The tensor methods that do (``item``, ``__bool__``,
``__float__``, ``__int__``, ``__index__``, ``tolist``, ``numpy``, ``cpu``) are replaced on
``torch.Tensor`` for the step and every call is recorded with a short stack. A sanity test
shows that the instrument catches the value check that validation performs.

Reads inside torch's C++ operators (e.g. a boolean-mask index) do not go through these
methods; on CUDA, ``torch.cuda.set_sync_debug_mode("error")`` catches those too, so the
``cuda`` variant adds it.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pyro
import pytest
import torch
from helpers.torch_devices import DEVICES
from torch import Tensor

from pyro_wakesleep import (
    JitJointStochasticApproximation,
    JitReweightedWakeSleep,
    JitWakeSleep,
    JointStochasticApproximation,
    ReweightedWakeSleep,
    WakeSleep,
)
from pyro_wakesleep.helmholtz import HelmholtzMachine

pytestmark = pytest.mark.usefixtures("one_torch_thread", "pyro_seed_0")

#: Tensor methods that read a value on the host (``cpu``: a device-to-host copy).
SYNCING = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu")
WARM_UP = 3
NUM_DATA = 20

LOSSES = [
    pytest.param(lambda: WakeSleep(num_particles=2), id="ws"),
    pytest.param(lambda: ReweightedWakeSleep(num_particles=4), id="rws"),
    pytest.param(lambda: ReweightedWakeSleep(num_particles=4, alternate=True), id="rws-alternate"),
    pytest.param(lambda: ReweightedWakeSleep(num_particles=4, insomnia=0.5), id="rws-dreams"),
    pytest.param(lambda: JointStochasticApproximation(num_particles=3), id="jsa"),
    pytest.param(lambda: JitWakeSleep(num_particles=2), id="jit-ws"),
    pytest.param(lambda: JitReweightedWakeSleep(num_particles=4), id="jit-rws"),
    pytest.param(
        lambda: JitReweightedWakeSleep(num_particles=4, alternate=True), id="jit-rws-alternate"
    ),
    pytest.param(
        lambda: JitReweightedWakeSleep(num_particles=4, insomnia=0.5), id="jit-rws-dreams"
    ),
    pytest.param(lambda: JitJointStochasticApproximation(num_particles=3), id="jit-jsa"),
]


@contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Pyro's validation set for the block, then restored."""
    previous = pyro.infer.util.is_validation_enabled()
    pyro.enable_validation(enabled)
    try:
        yield
    finally:
        pyro.enable_validation(previous)


@contextmanager
def host_reads() -> Iterator[list[str]]:
    """Record every call of a :data:`SYNCING` method of ``torch.Tensor`` in the block: the
    method's name and the last frames of the stack that called it."""
    calls: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def spy(name: str, original: Callable) -> Callable:
        def method(self, *args, **kwargs):
            stack = "".join(traceback.format_stack(limit=6)[:-1])
            calls.append(f"Tensor.{name}() called from\n{stack}")
            return original(self, *args, **kwargs)

        return method

    for name, original in originals.items():
        setattr(torch.Tensor, name, spy(name, original))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def setup(device: str):
    generator = torch.Generator().manual_seed(1)
    x = (torch.rand(NUM_DATA, 16, generator=generator) < 0.3).float().to(device)
    machine = HelmholtzMachine(num_visible=16, hidden=(8, 1)).to(device)
    return machine.model, machine.guide, x


def zero_grads() -> None:
    for _, param in pyro.get_param_store().named_parameters():
        param.grad = None


def warmed_up(make_loss: Callable, device: str = "cpu"):
    """The loss after :data:`WARM_UP` (or, alternating, twice as many) steps with validation
    off: every check run, every phase's graph traced."""
    model, guide, x = setup(device)
    index = torch.arange(NUM_DATA, device=device)
    kwargs = {"num_data": NUM_DATA, "index": index}
    loss = make_loss()
    steps = 2 * WARM_UP if getattr(loss, "alternate", False) else WARM_UP
    for _ in range(steps):
        loss.loss_and_grads(model, guide, x, **kwargs)
        zero_grads()
    return loss, model, guide, x, kwargs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make_loss", LOSSES)
def test_step_never_reads_a_value_on_the_host(make_loss, device) -> None:
    with validation(False):
        loss, model, guide, x, kwargs = warmed_up(make_loss, device)
        cuda = device == "cuda"
        for _ in range(2):  # both phases of an alternating schedule
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
            try:
                with host_reads() as calls:
                    value = loss.loss_and_grads(model, guide, x, **kwargs)
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode(0)
            assert not calls, "a step synchronised with the host:\n" + "\n".join(calls[:5])
            zero_grads()
        assert isinstance(value, Tensor) and value.dim() == 0
        assert math.isfinite(float(value))  # read after the step, outside the instrument


@pytest.mark.parametrize(
    "make_loss",
    [
        pytest.param(lambda: ReweightedWakeSleep(num_particles=4), id="rws"),
        pytest.param(lambda: JitReweightedWakeSleep(num_particles=4), id="jit-rws"),
    ],
)
def test_instrument_catches_the_validation_check(make_loss) -> None:
    """With validation on, the non-finite check reads the value: the instrument sees it
    (so the test above can fail)."""
    with validation(False):
        loss, model, guide, x, kwargs = warmed_up(make_loss)
    with validation(True), host_reads() as calls:
        loss.loss_and_grads(model, guide, x, **kwargs)
    assert any(call.startswith("Tensor.__bool__") for call in calls), calls


def test_instrument_catches_a_deliberate_item() -> None:
    """A model that calls ``.item()`` is caught, with its line in the stack."""
    original = torch.Tensor.item
    model, guide, x = setup("cpu")

    def reading_model(x, **kwargs):
        model(x, **kwargs)
        return x.sum().item()  # DELIBERATE

    loss = ReweightedWakeSleep(num_particles=2)
    with validation(False):
        for _ in range(WARM_UP):
            loss.loss_and_grads(reading_model, guide, x)
            zero_grads()
        with host_reads() as calls:
            loss.loss_and_grads(reading_model, guide, x)
    assert calls and all(call.startswith("Tensor.item") for call in calls)
    assert "DELIBERATE" in calls[0]
    assert torch.Tensor.item is original  # restored
