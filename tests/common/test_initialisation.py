"""``HelmholtzMachine(..., init=...)``: both backends start every parameter as
:func:`wakesleep.trainer.initialisation.helmholtz_inits` says."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wakesleep.trainer.initialisation import INITS, Uniform, helmholtz_inits

SHAPES = [(16, (8, 1)), (6, (4, 3, 2)), (5, (3,))]


def _pyro_params(num_visible, hidden, init):
    import pyro

    from pyro_wakesleep.helmholtz import HelmholtzMachine

    pyro.set_rng_seed(0)
    machine = HelmholtzMachine(num_visible, hidden, init=init)
    return {name: p.detach().numpy() for name, p in machine.named_parameters()}


def _numpyro_params(num_visible, hidden, init):
    import jax.numpy as jnp
    from jax import random
    from numpyro import handlers

    from numpyro_wakesleep.helmholtz import HelmholtzMachine

    machine = HelmholtzMachine(num_visible, hidden, init=init)
    x = jnp.zeros((2, num_visible))
    params = {}
    for program, key in ((machine.model, 0), (machine.guide, 1)):
        seeded = handlers.seed(program, random.PRNGKey(key))
        trace = handlers.trace(seeded).get_trace(x)
        params.update(
            {
                k.removeprefix("helmholtz_"): np.asarray(v["value"])
                for k, v in trace.items()
                if v["type"] == "param"
            }  # fmt: skip
        )
    return params


BACKENDS = {"pyro": _pyro_params, "numpyro": _numpyro_params}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize(("num_visible", "hidden"), SHAPES)
def test_every_parameter_starts_in_its_range(backend, init, num_visible, hidden):
    inits = helmholtz_inits(num_visible, hidden, init)
    params = BACKENDS[backend](num_visible, hidden, init)
    assert set(params) == set(inits)  # every parameter named once, no more
    for name, value in params.items():
        start = inits[name]
        assert np.all(value >= start.low) and np.all(value <= start.high), name
        if start.low < start.high and value.size >= 8:  # drawn, not a constant
            assert np.ptp(value) > 0.3 * (start.high - start.low), name


def test_sparse_start():
    inits = helmholtz_inits(16, (8, 1), "sparse")
    assert inits["generative.layers.0.weight"] == Uniform(0.0, 1.0)  # causes add pixels
    assert inits["generative.layers.0.bias"] == Uniform(-2.0, -2.0)  # pixels mostly off
    assert inits["generative.layers.1.bias"] == Uniform(-3.0, -3.0)  # h_1 mostly off in p
    assert inits["recognition.0.bias"] == Uniform(-3.0, -3.0)  # and in q
    assert inits["recognition.0.weight"] == Uniform(0.0, 0.5)
    assert inits["generative.top_logits"] == Uniform(-0.1, 0.1)
    # one hidden layer: h_1 is the top, so its prior logits start at -3
    assert helmholtz_inits(5, (3,), "sparse")["generative.top_logits"] == Uniform(-3.0, -3.0)


def test_default_start_is_that_of_torch_linear():
    inits = helmholtz_inits(16, (8, 1))
    assert inits["generative.top_logits"] == Uniform(0.0, 0.0)
    bound = 1 / math.sqrt(8)  # layers.0 maps the 8 hidden units to the pixels
    assert inits["generative.layers.0.weight"] == Uniform(-bound, bound)
    assert inits["recognition.0.bias"] == Uniform(-0.25, 0.25)  # fan-in 16


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_unknown_init_is_a_clear_error(backend):
    if backend == "pyro":
        from pyro_wakesleep.helmholtz import HelmholtzMachine
    else:
        from numpyro_wakesleep.helmholtz import HelmholtzMachine
    with pytest.raises(ValueError, match="init must be one of 'default', 'sparse'"):
        HelmholtzMachine(16, (8, 1), init="zeros")
