"""A jitted NumPyro update never moves data between host and device.

After a warm-up call (compilation), ``jax.jit(svi.update)`` of :class:`numpyro.infer.SVI`
and of :class:`~numpyro_wakesleep.AlternatingSVI`, with every objective of this package,
runs under three instruments:

- ``jax.transfer_guard("disallow")``: any implicit host-to-device transfer (an argument
  that is a NumPy array or a Python number) or device-to-host transfer raises. On the CPU
  backend the guard sees host-to-device transfers only: reading an array (``float(x)``,
  ``np.asarray(x)``, ``jax.device_get``) is not a transfer there and passes silently (checked
  below), so two more instruments stand in for that direction;
- the reads of a ``jax.Array``'s value on the host (``_value``, ``__array__``, ``item``,
  ``__float__``, ... and ``jax.device_get``) are recorded with a short stack;
- the update's lowered program holds no host callback (``pure_callback``, ``io_callback``,
  ``jax.debug.print``, which run Python on the host inside the step).

Sanity tests show each instrument catching a deliberate transfer, so the tests can fail.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax._src.array import ArrayImpl
from numpyro.infer import SVI

from numpyro_wakesleep import (
    AlternatingSVI,
    JointStochasticApproximation,
    ReweightedWakeSleep,
    WakeSleep,
)
from numpyro_wakesleep.helmholtz import HelmholtzMachine

NUM_DATA = 20
HIDDEN = (4,)  # one hidden layer: the same code paths, a smaller program to compile
#: What reads a ``jax.Array``'s value on the host (``_value`` is a property).
READS = ("_value", "__array__", "item", "tolist", "__float__", "__int__", "__bool__", "__index__")
#: How host callbacks appear in a lowered program (CPU, GPU and older spellings).
CALLBACK_MARKS = ("callback", "outfeed", "infeed", "host_compute")

SLOW = pytest.mark.slow  # each compiles an update (seconds)
LOSSES = [
    pytest.param(lambda: WakeSleep(num_particles=2), id="ws", marks=SLOW),
    pytest.param(lambda: ReweightedWakeSleep(num_particles=4), id="rws"),
    pytest.param(
        lambda: ReweightedWakeSleep(num_particles=4, insomnia=0.5), id="rws-dreams", marks=SLOW
    ),
    pytest.param(lambda: JointStochasticApproximation(num_particles=3), id="jsa"),
]
ALTERNATING_LOSSES = [
    pytest.param(lambda: WakeSleep(num_particles=2, alternate=True), id="ws", marks=SLOW),
    pytest.param(lambda: ReweightedWakeSleep(num_particles=4, alternate=True), id="rws"),
    pytest.param(
        lambda: ReweightedWakeSleep(num_particles=4, insomnia=0.5, alternate=True),
        id="rws-dreams",
        marks=SLOW,
    ),
    pytest.param(lambda: JointStochasticApproximation(num_particles=3), id="jsa"),
]


@contextmanager
def host_reads() -> Iterator[list[str]]:
    """Record every read of a ``jax.Array``'s value on the host in the block (method name
    and the calling frames)."""
    calls: list[str] = []

    def record(name: str) -> None:
        stack = "".join(traceback.format_stack(limit=6)[:-2])
        calls.append(f"{name} called from\n{stack}")

    originals = {name: ArrayImpl.__dict__[name] for name in READS}
    original_device_get = jax.device_get

    def spy(name: str, original):
        if isinstance(original, property):
            return property(lambda self: (record(name), original.fget(self))[1])

        def method(self, *args, **kwargs):
            record(name)
            return original(self, *args, **kwargs)

        return method

    def device_get(tree):
        record("jax.device_get")
        return original_device_get(tree)

    for name, original in originals.items():
        setattr(ArrayImpl, name, spy(name, original))
    jax.device_get = device_get
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(ArrayImpl, name, original)
        jax.device_get = original_device_get


@contextmanager
def no_transfers() -> Iterator[list[str]]:
    """The transfer guard set to ``"disallow"``, and the host reads recorded."""
    with jax.transfer_guard("disallow"), host_reads() as calls:
        yield calls


def compile_update(update: Callable, *args, **kwargs) -> tuple[Callable, list[str]]:
    """``update`` compiled for these arguments (ahead of time: no compilation in the timed
    steps), and the lines of its lowered program that call back to the host."""
    lowered = jax.jit(update).lower(*args, **kwargs)
    text = lowered.as_text()
    callbacks = [
        line.strip() for line in text.splitlines() if any(m in line for m in CALLBACK_MARKS)
    ]
    return lowered.compile(), callbacks


def data() -> tuple[jax.Array, jax.Array]:
    """Binary images, and their indices in the data set, on the device."""
    rng = np.random.default_rng(1)
    x = jnp.asarray((rng.random((NUM_DATA, 16)) < 0.3).astype(np.float32))
    return x, jnp.arange(NUM_DATA)


def assert_clean(calls: list[str]) -> None:
    assert not calls, "the step read a value on the host:\n" + "\n".join(calls[:5])


# -- numpyro.infer.SVI --------------------------------------------------------------------------
def svi_and_state(make_loss: Callable, x: jax.Array, index: jax.Array):
    machine = HelmholtzMachine(num_visible=16, hidden=HIDDEN)
    loss = make_loss()
    svi = SVI(machine.model, machine.guide, optax.adam(0.05), loss=loss, num_data=NUM_DATA)
    key = jax.random.PRNGKey(0)
    if isinstance(loss, JointStochasticApproximation):
        return svi, loss.init_state(svi, key, x, index=index)
    return svi, svi.init(key, x, index=index)


@pytest.mark.parametrize("make_loss", LOSSES)
def test_jitted_svi_update_never_transfers(make_loss) -> None:
    x, index = data()
    svi, state = svi_and_state(make_loss, x, index)
    update, callbacks = compile_update(svi.update, state, x, index=index)
    assert not callbacks
    state, _ = update(state, x, index=index)  # warm-up
    values = []
    with no_transfers() as calls:
        for _ in range(3):
            state, value = update(state, x, index=index)
            values.append(value)
    assert_clean(calls)
    assert np.isfinite(np.asarray(values)).all()


# -- AlternatingSVI ---------------------------------------------------------------------------
@pytest.mark.parametrize("make_loss", ALTERNATING_LOSSES)
def test_jitted_alternating_update_never_transfers(make_loss) -> None:
    x, index = data()
    machine = HelmholtzMachine(num_visible=16, hidden=HIDDEN)
    alt = AlternatingSVI(
        machine.model,
        machine.guide,
        optax.adam(0.05),
        optax.adam(0.05),
        loss=make_loss(),
        num_data=NUM_DATA,
    )
    state = alt.init(jax.random.PRNGKey(0), x, index=index)
    update, callbacks = compile_update(alt.update, state, x, index=index)  # a lax.cond
    assert not callbacks  # of both phases
    state, _ = update(state, x, index=index)  # warm-up
    phases, values = [], []
    with no_transfers() as calls:
        for _ in range(4):
            phases.append(state.phase)
            state, value = update(state, x, index=index)
            values.append(value)
    assert_clean(calls)
    assert [int(p) for p in phases] == [1, 0, 1, 0]  # both phases ran under the guard
    assert np.isfinite(np.asarray(values)).all()


# -- the instruments can fail -----------------------------------------------------------------
@pytest.fixture(scope="module")
def rws_update():
    """A compiled RWS update, its state and arguments, for the sanity tests."""
    x, index = data()
    svi, state = svi_and_state(lambda: ReweightedWakeSleep(num_particles=2), x, index)
    update = jax.jit(svi.update)
    state, _ = update(state, x, index=index)  # compiles
    return update, state, x, index


def test_guard_catches_a_host_array_argument(rws_update) -> None:
    """A NumPy argument is a host-to-device transfer on every backend: the guard raises."""
    update, state, x, index = rws_update
    with jax.transfer_guard("disallow"), pytest.raises(Exception, match="(?i)disallowed"):
        update(state, np.asarray(x), index=index)


def test_guard_catches_reading_a_value_off_cpu() -> None:
    """Reading a value is a device-to-host transfer that the guard refuses on an
    accelerator; on the CPU backend it is not a transfer (the reason for the other
    instruments)."""
    value = jax.jit(lambda v: v.sum())(jnp.ones(3))
    with jax.transfer_guard("disallow"):
        if jax.default_backend() == "cpu":
            assert float(value) == 3.0
        else:
            with pytest.raises(Exception, match="(?i)disallowed"):
                float(value)


@pytest.mark.parametrize(
    "read",
    [
        pytest.param(lambda v: float(v), id="float"),
        pytest.param(lambda v: v.item(), id="item"),
        pytest.param(lambda v: bool(v), id="bool"),
        pytest.param(lambda v: v.tolist(), id="tolist"),
        pytest.param(lambda v: jax.device_get(v), id="device_get"),
    ],
)
def test_host_reads_are_recorded(rws_update, read) -> None:
    """A step followed by a read of its value (what a loop that logs every step does) is
    caught; the instruments are removed afterwards. (``np.asarray`` of a CPU array reads it
    through the buffer protocol, which no Python method sees: not covered.)"""
    update, state, x, index = rws_update
    before = dict(ArrayImpl.__dict__)
    with no_transfers() as calls:
        state, value = update(state, x, index=index)
        read(value)
    assert calls
    assert all(ArrayImpl.__dict__[name] is before[name] for name in READS)


def test_host_callbacks_are_found() -> None:
    """A model that prints with ``jax.debug.print`` calls back to the host in the step."""
    x, index = data()
    machine = HelmholtzMachine(num_visible=16, hidden=HIDDEN)

    def printing_model(x, **kwargs):
        machine.model(x, **kwargs)
        jax.debug.print("sum {}", x.sum())

    svi = SVI(
        printing_model,
        machine.guide,
        optax.adam(0.05),
        loss=ReweightedWakeSleep(2),
        num_data=NUM_DATA,
    )
    state = svi.init(jax.random.PRNGKey(0), x, index=index)
    lowered = jax.jit(svi.update).lower(state, x, index=index).as_text()
    assert any(mark in lowered for mark in CALLBACK_MARKS)
