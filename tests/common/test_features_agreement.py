"""Pyro's and NumPyro's Helmholtz machines with the same parameter values agree.

The Pyro machine's parameters (random, far from their start) are copied into NumPyro's
parameter dict by name: Pyro's param store names ``{module}$$${attribute}``
(``helmholtz_generative$$$layers.0.weight``), NumPyro's ``{module}.{attribute}``
(``helmholtz_generative.layers.0.weight``), the same names otherwise, as listed below. Then
features, the Gaussian model's log-density of ``x`` given the hidden units, and the exact
``log p(x)`` of Gaussian visible units agree to float32 precision.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pyro = pytest.importorskip("pyro")
jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")

import jax.numpy as jnp  # noqa: E402
import pyro.poutine as poutine  # noqa: E402
from helpers.pyro_machines import randomise  # noqa: E402
from jax import random  # noqa: E402
from numpyro import handlers  # noqa: E402

from numpyro_wakesleep.helmholtz import HelmholtzMachine as NumPyroHelmholtz  # noqa: E402
from pyro_wakesleep.helmholtz import HelmholtzMachine as PyroHelmholtz  # noqa: E402
from wakesleep.trainer.exact import helmholtz_log_marginal  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NUM_VISIBLE, HIDDEN = 6, (3, 2)


def pyro_machine(visible: str, seed: int) -> PyroHelmholtz:
    """A Pyro machine with every parameter drawn ``N(0, 1.2²)`` (log-scales ``U(-0.7, 0.7)``),
    registered in the (cleared) param store by one model and one guide call."""
    pyro.set_rng_seed(seed)
    machine = randomise(PyroHelmholtz(NUM_VISIBLE, HIDDEN, visible=visible), seed, 1.2, 1.2)
    x = torch.zeros(2, NUM_VISIBLE)
    machine.model(x)
    machine.guide(x)
    return machine


def copied_params(visible: str) -> dict[str, jnp.ndarray]:
    """The Pyro param store's values under NumPyro's names (``$$$`` becomes ``.``)."""
    store = pyro.get_param_store()
    return {
        name.replace("$$$", "."): jnp.asarray(store[name].detach().cpu().numpy())
        for name in store.keys()
    }


def numpyro_param_names(machine: NumPyroHelmholtz) -> set[str]:
    x = jnp.zeros((2, NUM_VISIBLE))
    names = set()
    for program in (machine.model, machine.guide):
        trace = handlers.trace(handlers.seed(program, random.PRNGKey(0))).get_trace(x)
        names |= {name for name, site in trace.items() if site["type"] == "param"}
    return names


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_parameter_names_correspond(visible):
    pyro_machine(visible, seed=0)
    names = set(copied_params(visible))
    assert names == numpyro_param_names(NumPyroHelmholtz(NUM_VISIBLE, HIDDEN, visible=visible))
    expected = {
        "helmholtz_generative.top_logits",
        "helmholtz_generative.layers.0.weight",
        "helmholtz_generative.layers.0.bias",
        "helmholtz_generative.layers.1.weight",
        "helmholtz_generative.layers.1.bias",
        "helmholtz_recognition.0.weight",
        "helmholtz_recognition.0.bias",
        "helmholtz_recognition.1.weight",
        "helmholtz_recognition.1.bias",
    }
    if visible == "gaussian":
        expected.add("helmholtz_generative.visible_log_scale")
    assert names == expected


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_features_agree(visible):
    machine = pyro_machine(visible, seed=1)
    params = copied_params(visible)
    rng = np.random.default_rng(2)
    if visible == "bernoulli":
        x = (rng.random((4, 7, NUM_VISIBLE)) < 0.5).astype(np.float32)
    else:
        x = (1.5 * rng.standard_normal((4, 7, NUM_VISIBLE))).astype(np.float32)
    torch_features = machine.features(torch.from_numpy(x)).detach().numpy()
    jax_features = np.asarray(
        NumPyroHelmholtz(NUM_VISIBLE, HIDDEN, visible=visible).features(params, jnp.asarray(x))
    )
    assert torch_features.shape == jax_features.shape == (4, 7, sum(HIDDEN))
    np.testing.assert_allclose(torch_features, jax_features, rtol=1e-5, atol=1e-6)


def test_generative_weights_and_visible_scale_agree():
    machine = pyro_machine("gaussian", seed=3)
    params = copied_params("gaussian")
    jax_machine = NumPyroHelmholtz(NUM_VISIBLE, HIDDEN, visible="gaussian")
    top_p, layers_p = machine.generative_weights()
    top_n, layers_n = jax_machine.generative_weights(params)
    np.testing.assert_array_equal(top_p, top_n)
    for (wp, bp), (wn, bn) in zip(layers_p, layers_n, strict=True):
        np.testing.assert_array_equal(wp, wn)
        np.testing.assert_array_equal(bp, bn)
    scale_p, scale_n = machine.visible_scale(), jax_machine.visible_scale(params)
    assert scale_p.dtype == scale_n.dtype == np.float64
    np.testing.assert_allclose(scale_p, scale_n, rtol=1e-6)


def test_gaussian_log_density_given_the_hidden_units_agrees():
    machine = pyro_machine("gaussian", seed=4)
    params = copied_params("gaussian")
    jax_machine = NumPyroHelmholtz(NUM_VISIBLE, HIDDEN, visible="gaussian")
    rng = np.random.default_rng(5)
    x = (1.5 * rng.standard_normal((8, NUM_VISIBLE))).astype(np.float32)
    h1 = (rng.random((8, 3)) < 0.5).astype(np.float32)
    h2 = (rng.random((8, 2)) < 0.5).astype(np.float32)

    data = {"h1": torch.from_numpy(h1), "h2": torch.from_numpy(h2)}
    trace = poutine.trace(poutine.condition(machine.model, data=data)).get_trace(
        torch.from_numpy(x)
    )
    trace.compute_log_prob()
    torch_log_p = {
        name: trace.nodes[name]["log_prob"].detach().numpy() for name in ("h2", "h1", "x")
    }

    conditioned = handlers.condition(
        handlers.substitute(jax_machine.model, data=params),
        data={"h1": jnp.asarray(h1), "h2": jnp.asarray(h2)},
    )
    jax_trace = handlers.trace(handlers.seed(conditioned, random.PRNGKey(0))).get_trace(
        jnp.asarray(x)
    )
    for name in ("h2", "h1", "x"):
        site = jax_trace[name]
        jax_log_p = np.asarray(site["fn"].log_prob(site["value"]))
        np.testing.assert_allclose(torch_log_p[name], jax_log_p, rtol=1e-5, atol=1e-5)


def test_exact_gaussian_log_marginal_agrees():
    machine = pyro_machine("gaussian", seed=6)
    params = copied_params("gaussian")
    jax_machine = NumPyroHelmholtz(NUM_VISIBLE, HIDDEN, visible="gaussian")
    x = 1.5 * np.random.default_rng(7).standard_normal((20, NUM_VISIBLE))
    from_pyro = helmholtz_log_marginal(
        x, *machine.generative_weights(), visible_scale=machine.visible_scale()
    )
    from_numpyro = helmholtz_log_marginal(
        x, *jax_machine.generative_weights(params), visible_scale=jax_machine.visible_scale(params)
    )
    assert np.all(np.isfinite(from_pyro))
    # float32 parameters: the log-scales agree exactly, their exp to ~1e-7 relative
    np.testing.assert_allclose(from_pyro, from_numpyro, rtol=1e-6, atol=1e-6)
