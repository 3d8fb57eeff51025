"""Models written the way users write them: routing dreams, bad data, mistakes in the call.

Both backends, the same cases:

- the same tensor passed twice (``svi.step(X, X)``): the guide must see the dream in every
  argument that held the data, never real data beside dreamed latents; two observed
  sites holding one argument is refused;
- the sub-sampling pattern ``obs=x[idx]`` with a guide reading ``x[idx]``: the sleep phase
  writes the dreams at the mini-batch's rows of ``x``, and the guide's ``x[idx]`` is then
  exactly the dream, every other row the data;
- NaN or inf in the observed data: an error naming the site and the datapoints before any
  parameter changes; masked missing values pass;
- the objective class handed to SVI instead of an instance; the routing hint of each class.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest

N, B = 6, 3
DATA = np.linspace(-1.5, 2.0, N).astype(np.float32)


# -- Pyro -------------------------------------------------------------------------------
pyro = pytest.importorskip("pyro")
import pyro.distributions as pdist  # noqa: E402
import torch  # noqa: E402
from pyro import poutine  # noqa: E402

import pyro_wakesleep as pws  # noqa: E402


def pyro_model(x, y=None, subsample_size=None, record=None):
    with pyro.plate("data", N, subsample_size=subsample_size) as idx:
        z = pyro.sample("z", pdist.Normal(0.0, 1.0))
        dream = pyro.sample("x", pdist.Normal(z, 1.0), obs=x[idx] if subsample_size else x)
    if record is not None:
        record.setdefault("model", []).append((idx, dream))


def pyro_guide(x, y=None, subsample_size=None, record=None):
    with pyro.plate("data", N, subsample_size=subsample_size) as idx:
        seen = (x if y is None else y)[idx] if subsample_size else (x if y is None else y)
        pyro.sample("z", pdist.Normal(0.5 * seen, 0.8))
    if record is not None:
        record.setdefault("guide", []).append((idx, x, y))


@pytest.mark.parametrize("vectorize", [True, False], ids=["vectorised", "sequential"])
def test_pyro_every_argument_holding_the_data_gets_the_dream(vectorize):
    x = torch.tensor(DATA)
    record: dict = {}
    loss = pws.WakeSleep(num_particles=2, num_sleep_particles=1, vectorize_particles=vectorize)
    loss.differentiable_loss(pyro_model, pyro_guide, x, x, record=record)
    _, dream = record["model"][-1]  # the last dream ...
    _, seen_x, seen_y = record["guide"][-1]  # ... and the guide that scored it
    assert seen_x is dream and seen_y is dream, "both arguments held the data"
    assert not torch.equal(dream.reshape(-1), x)


def test_pyro_two_sites_holding_one_argument_is_refused():
    def twice(x):
        with pyro.plate("data", N):
            z = pyro.sample("z", pdist.Normal(0.0, 1.0))
            pyro.sample("x1", pdist.Normal(z, 1.0), obs=x)
            pyro.sample("x2", pdist.Normal(z, 2.0), obs=x)

    def guide(x):
        with pyro.plate("data", N):
            pyro.sample("z", pdist.Normal(0.0, 1.0))

    with pytest.raises(pws.DreamRoutingError, match="'x1' and 'x2' both hold argument #0"):
        pws.WakeSleep().differentiable_loss(twice, guide, torch.tensor(DATA))


@pytest.mark.parametrize("vectorize", [True, False], ids=["vectorised", "sequential"])
def test_pyro_subsampled_dreams_are_written_at_the_mini_batch_rows(vectorize):
    pyro.set_rng_seed(1)
    x = torch.tensor(DATA)
    record: dict = {}
    loss = pws.WakeSleep(num_particles=2, num_sleep_particles=1, vectorize_particles=vectorize)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss.differentiable_loss(pyro_model, pyro_guide, x, subsample_size=B, record=record)
    # the guide reads x[idx], from the left: vectorised dreams fall back, saying how to vectorise
    fell_back = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(fell_back) == (1 if vectorize else 0)
    assert not vectorize or "x.index_select(-2, idx)" in str(fell_back[0].message)
    idx, dream = record["model"][-1]  # the (one-at-a-time) sleep pass's dream
    guide_idx, seen, _ = record["guide"][-1]
    assert torch.equal(guide_idx, idx), "the guide must share the dream's mini-batch"
    assert torch.equal(seen[idx], dream)
    rest = torch.ones(N, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(seen[rest], x[rest])
    wake_idx = record["model"][0][0]
    assert torch.equal(idx, wake_idx), "dreams replay the wake pass's mini-batch"


def test_pyro_subsampled_sleep_trains_a_guide_that_reads_x_of_idx():
    # the pattern of Pyro's SVI tutorials trains under every objective with a sleep phase
    pyro.set_rng_seed(0)
    x = torch.tensor(DATA)
    svi = pyro.infer.SVI(
        pyro_model,
        lambda x, subsample_size: _pyro_learned_guide(x, subsample_size),
        pyro.optim.Adam({"lr": 0.05}),
        loss=pws.ReweightedWakeSleep(num_particles=3, insomnia=0.0, vectorize_particles=False),
    )
    for _ in range(300):
        svi.step(x, subsample_size=B)
    # exact posterior of z given x: mean x/2, so the learned slope is 1/2
    assert pyro.param("slope").item() == pytest.approx(0.5, abs=0.1)


def _pyro_learned_guide(x, subsample_size):
    slope = pyro.param("slope", torch.tensor(0.0))
    with pyro.plate("data", N, subsample_size=subsample_size) as idx:
        pyro.sample("z", pdist.Normal(slope * x[idx], math.sqrt(0.5)))


@pytest.mark.parametrize("bad, kind", [(math.nan, "NaN"), (math.inf, "inf")])
def test_pyro_non_finite_data_are_named_and_change_nothing(bad, kind):
    where = re.escape("datapoint(s) 2")
    x = torch.tensor(DATA)
    x[2] = bad
    svi = pyro.infer.SVI(
        pyro_model, pyro_guide, pyro.optim.Adam({"lr": 0.1}), loss=pws.ReweightedWakeSleep(3)
    )
    with pytest.raises(pws.NonFiniteDataError, match=f"'x' holds {kind} at {where}"):
        svi.step(x)
    for validate in (True, False):  # the guide meets the NaN first when it reads x
        with pyro.validation_enabled(validate):
            with pytest.raises(pws.NonFiniteDataError, match=f"'x' holds {kind} at {where}"):
                pws.ReweightedWakeSleep(3).loss(pyro_model, pyro_guide, x)
    assert all(p.grad is None for p in pyro.get_param_store().values())


def test_pyro_non_finite_data_in_a_mini_batch_are_named_by_data_set_index():
    def blind_guide(x, subsample_size):
        with pyro.plate("data", N, subsample_size=subsample_size):
            pyro.sample("z", pdist.Normal(0.0, 1.0))

    x = torch.tensor(DATA)
    x[:] = math.nan
    with pytest.raises(pws.NonFiniteDataError) as error:
        pws.ReweightedWakeSleep(3).loss(pyro_model, blind_guide, x, subsample_size=B)
    listed = str(error.value).split("datapoint(s) ")[1].split(".")[0]
    assert len(listed.split(",")) == B and all(0 <= int(i) < N for i in listed.split(","))


def test_pyro_masked_missing_data_are_fine():
    x = torch.tensor(DATA)
    x[2] = math.nan
    present = ~torch.isnan(x)

    def masked_model(x):
        with pyro.plate("data", N):
            z = pyro.sample("z", pdist.Normal(0.0, 1.0))
            with poutine.mask(mask=present):
                pyro.sample("x", pdist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", N):
            pyro.sample("z", pdist.Normal(0.0, 1.0))

    with pyro.validation_enabled(False):  # Pyro's own validation refuses a NaN value
        assert math.isfinite(pws.ReweightedWakeSleep(3).loss(masked_model, guide, x))


def test_pyro_class_instead_of_instance_says_so():
    svi = pyro.infer.SVI(pyro_model, pyro_guide, pyro.optim.Adam({"lr": 0.1}), loss=pws.WakeSleep)
    with pytest.raises(ValueError, match=r"class WakeSleep .* loss=WakeSleep\(\)"):
        svi.step(torch.tensor(DATA))


def test_pyro_routing_hints_fit_the_objective():
    def hidden(x):  # the guide cannot be shown the dreams
        with pyro.plate("data", N):
            z = pyro.sample("z", pdist.Normal(0.0, 1.0))
            pyro.sample("x", pdist.Normal(z, 1.0), obs=x * 1.0)

    def guide(x):
        with pyro.plate("data", N):
            pyro.sample("z", pdist.Normal(0.0, 1.0))

    x = torch.tensor(DATA)
    with pytest.raises(pws.DreamRoutingError) as ws_error:
        pws.WakeSleep().differentiable_loss(hidden, guide, x)
    assert "insomnia=1" in str(ws_error.value) and "ReweightedWakeSleep(insomnia=1)" in str(
        ws_error.value
    )
    assert "Or set insomnia" not in str(ws_error.value)
    with pytest.raises(pws.DreamRoutingError, match=r"Or set insomnia=1"):
        pws.ReweightedWakeSleep(insomnia=0.5).differentiable_loss(hidden, guide, x)


# -- NumPyro ----------------------------------------------------------------------------
jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as ndist  # noqa: E402
import optax  # noqa: E402
from numpyro.handlers import mask as numpyro_mask  # noqa: E402

import numpyro_wakesleep as nws  # noqa: E402

KEY = jax.random.PRNGKey(0)


def numpyro_model(x, y=None, subsample_size=None, record=None):
    with numpyro.plate("data", N, subsample_size=subsample_size) as idx:
        z = numpyro.sample("z", ndist.Normal(0.0, 1.0))
        dream = numpyro.sample("x", ndist.Normal(z, 1.0), obs=x[idx] if subsample_size else x)
    if record is not None:
        record.setdefault("model", []).append((idx, dream))


def numpyro_guide(x, y=None, subsample_size=None, record=None):
    with numpyro.plate("data", N, subsample_size=subsample_size) as idx:
        seen = (x if y is None else y)[idx] if subsample_size else (x if y is None else y)
        numpyro.sample("z", ndist.Normal(0.5 * seen, 0.8))
    if record is not None:
        record.setdefault("guide", []).append((idx, x, y))


def test_numpyro_every_argument_holding_the_data_gets_the_dream():
    x = jnp.asarray(DATA)
    seen: list = []

    def guide(x, y):
        seen.append((x, y))
        numpyro_guide(x, y)

    loss = nws.WakeSleep(num_particles=2, num_sleep_particles=2)
    loss.loss(KEY, {}, numpyro_model, guide, x, x)
    dreamed = [(a, b) for a, b in seen if isinstance(a, jax.core.Tracer)]  # vmapped dreams
    assert dreamed and all(a is b for a, b in dreamed), "both arguments held the data"


def _recorder(store: list):
    """Record concrete values from inside ``vmap``/``jit`` (a debug callback per call)."""

    def record(*values):
        jax.debug.callback(lambda *v: store.append(tuple(np.asarray(a) for a in v)), *values)

    return record


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_numpyro_subsampled_dreams_are_written_at_the_mini_batch_rows(jit):
    dreams: list = []
    guide_inputs: list = []
    record_dream, record_input = _recorder(dreams), _recorder(guide_inputs)

    def model(x, subsample_size):
        with numpyro.plate("data", N, subsample_size=subsample_size) as idx:
            z = numpyro.sample("z", ndist.Normal(0.0, 1.0))
            record_dream(idx, numpyro.sample("x", ndist.Normal(z, 1.0), obs=x[idx]))

    def guide(x, subsample_size):
        with numpyro.plate("data", N, subsample_size=subsample_size) as idx:
            numpyro.sample("z", ndist.Normal(0.5 * x[idx], 0.8))
        record_input(idx, x)

    loss = nws.WakeSleep(num_particles=2, num_sleep_particles=2)
    run = lambda x: loss.loss(KEY, {}, model, guide, x, B)  # noqa: E731
    value = (jax.jit(run) if jit else run)(jnp.asarray(DATA))
    jax.effects_barrier()
    assert np.isfinite(float(value))
    wake_idx = dreams[0][0]
    dreamed = [(i, d) for i, d in dreams if not np.array_equal(d, DATA[i])]
    shown = [(i, x) for i, x in guide_inputs if not np.array_equal(x, DATA)]
    assert len(dreamed) == len(shown) == 2  # one per dream
    for idx, x in shown:
        np.testing.assert_array_equal(idx, wake_idx)  # dreams share the wake's mini-batch
        assert any(np.array_equal(x[idx], d) for _, d in dreamed)
        rest = np.setdiff1d(np.arange(N), idx)
        np.testing.assert_array_equal(x[rest], DATA[rest])


def _two_arrays_model(x, covariates, subsample_size, shift=0.0):
    with numpyro.plate("data", N, subsample_size=subsample_size) as idx:
        z = numpyro.sample("z", ndist.Normal(0.1 * covariates[idx], 1.0))
        numpyro.sample("x", ndist.Normal(z, 1.0), obs=x[idx] + shift)


def _two_arrays_guide(x, covariates, subsample_size, shift=0.0):
    with numpyro.plate("data", N, subsample_size=subsample_size) as idx:
        numpyro.sample("z", ndist.Normal(0.5 * x[idx] + 0.1 * covariates[idx], 0.8))


def test_numpyro_under_jit_only_the_argument_that_is_the_data_gets_the_dreams():
    # under jit x[idx] is compared inside the step: the same-shaped covariates keep their
    # values, exactly as eager routing decides, and the sleep term is the same number
    x, covariates = jnp.asarray(DATA), jnp.asarray(DATA[::-1].copy())
    loss = nws.WakeSleep(num_particles=2, num_sleep_particles=2)

    def terms(x, c):
        return loss.terms(KEY, {}, _two_arrays_model, _two_arrays_guide, x, c, B)

    eager, jitted = terms(x, covariates), jax.jit(terms)(x, covariates)
    assert np.isfinite(float(jitted["sleep_phi"]))
    np.testing.assert_allclose(jitted["sleep_phi"], eager["sleep_phi"], rtol=1e-5)


def test_numpyro_an_observation_no_argument_holds_is_an_error_or_nan_under_jit():
    x, covariates = jnp.asarray(DATA), jnp.asarray(DATA[::-1].copy())
    loss = nws.WakeSleep(num_particles=2, num_sleep_particles=2)

    def terms(x, c):  # obs = x[idx] + 1: no argument holds it
        return loss.terms(KEY, {}, _two_arrays_model, _two_arrays_guide, x, c, B, shift=1.0)

    with pytest.raises(nws.DreamRoutingError, match=r"obs=x\[idx\]"):
        terms(x, covariates)
    assert np.isnan(float(jax.jit(terms)(x, covariates)["sleep_phi"]))  # never a silent mix


def test_numpyro_subsampled_sleep_trains_a_guide_that_reads_x_of_idx():
    x = jnp.asarray(DATA)

    def guide(x, subsample_size):
        slope = numpyro.param("slope", 0.0)
        with numpyro.plate("data", N, subsample_size=subsample_size) as idx:
            numpyro.sample("z", ndist.Normal(slope * x[idx], math.sqrt(0.5)))

    def model(x, subsample_size):
        numpyro_model(x, subsample_size=subsample_size)

    svi = numpyro.infer.SVI(
        model, guide, optax.adam(0.05), loss=nws.ReweightedWakeSleep(3, insomnia=0.0)
    )
    result = svi.run(KEY, 300, x, B, progress_bar=False)
    assert float(result.params["slope"]) == pytest.approx(0.5, abs=0.1)


@pytest.mark.parametrize("bad, kind", [(math.nan, "NaN"), (math.inf, "inf")])
def test_numpyro_non_finite_data_are_named_where_the_data_are_concrete(bad, kind):
    x = jnp.asarray(DATA).at[2].set(bad)
    message = f"'x' holds {kind} at datapoint\\(s\\) 2"
    loss = nws.ReweightedWakeSleep(3)
    with pytest.raises(nws.NonFiniteDataError, match=message):
        loss.loss(KEY, {}, numpyro_model, numpyro_guide, x)
    svi = numpyro.infer.SVI(numpyro_model, numpyro_guide, optax.adam(0.1), loss=loss)
    with numpyro.validation_enabled(False):  # SVI.init runs the guide itself, never the loss
        state = svi.init(KEY, x)
    with pytest.raises(nws.NonFiniteDataError, match=message):
        svi.update(state, x)  # eager: gradients are traced, the data are not
    alternating = nws.AlternatingSVI(
        numpyro_model, numpyro_guide, optax.adam(0.1), optax.adam(0.1), loss=loss
    )
    with pytest.raises(nws.NonFiniteDataError, match=message):
        alternating.init(KEY, x)
    # under jit nothing can be raised: the value is NaN and AlternatingSVI keeps its state
    good = alternating.init(KEY, jnp.asarray(DATA))
    new_state, value = jax.jit(alternating.update)(good, x)
    assert not np.isfinite(float(value))
    for name in good.params:
        np.testing.assert_array_equal(new_state.params[name], good.params[name])


def test_numpyro_masked_missing_data_are_fine():
    x = jnp.asarray(DATA).at[2].set(jnp.nan)
    present = ~jnp.isnan(x)

    def masked_model(x):
        with numpyro.plate("data", N):
            z = numpyro.sample("z", ndist.Normal(0.0, 1.0))
            with numpyro_mask(mask=present):
                numpyro.sample("x", ndist.Normal(z, 1.0), obs=x)

    def guide(x):
        with numpyro.plate("data", N):
            numpyro.sample("z", ndist.Normal(0.0, 1.0))

    assert np.isfinite(float(nws.ReweightedWakeSleep(3).loss(KEY, {}, masked_model, guide, x)))
    nws.AlternatingSVI(
        masked_model, guide, optax.adam(0.1), optax.adam(0.1), loss=nws.WakeSleep()
    ).init(KEY, x)


def test_numpyro_class_instead_of_instance_says_so():
    svi = numpyro.infer.SVI(numpyro_model, numpyro_guide, optax.adam(0.1), loss=nws.WakeSleep)
    state = svi.init(KEY, jnp.asarray(DATA))
    with pytest.raises(ValueError, match=r"objective class .* loss=ReweightedWakeSleep\(\)"):
        svi.update(state, jnp.asarray(DATA))


def test_numpyro_routing_hints_fit_the_objective():
    def hidden(x):
        with numpyro.plate("data", N):
            z = numpyro.sample("z", ndist.Normal(0.0, 1.0))
            numpyro.sample("x", ndist.Normal(z, 1.0), obs=x * 1.0)

    def guide(x):
        with numpyro.plate("data", N):
            numpyro.sample("z", ndist.Normal(0.0, 1.0))

    x = jnp.asarray(DATA)
    with pytest.raises(nws.DreamRoutingError) as ws_error:
        nws.WakeSleep().loss(KEY, {}, hidden, guide, x)
    assert "ReweightedWakeSleep(insomnia=1)" in str(ws_error.value)
    assert "Or set insomnia" not in str(ws_error.value)
    with pytest.raises(nws.DreamRoutingError, match=r"Or set insomnia=1"):
        nws.ReweightedWakeSleep(insomnia=0.5).loss(KEY, {}, hidden, guide, x)
