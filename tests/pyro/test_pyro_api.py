"""The Pyro objectives' API: alternation, dream routing, validation and non-finite steps."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_wakesleep import (
    DreamRoutingError,
    ModelGuideMismatchError,
    NonFiniteLossWarning,
    ReweightedWakeSleep,
    WakeSleep,
)

N = 20


@pytest.fixture
def data() -> torch.Tensor:
    pyro.set_rng_seed(0)
    return 1.5 * torch.randn(N)


def model(x: torch.Tensor) -> None:
    mu = pyro.param("mu", torch.tensor(0.3))
    with pyro.plate("data", x.shape[-1]):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide(x: torch.Tensor) -> None:
    a = pyro.param("a", torch.tensor(0.3))
    b = pyro.param("b", torch.tensor(0.1))
    with pyro.plate("data", x.shape[-1]):
        pyro.sample("z", dist.Normal(a * x + b, 0.8))


def guide_with_observations(x: torch.Tensor, observations: dict | None = None) -> None:
    guide(observations["x"] if observations is not None else x)


def params(*names: str) -> dict[str, torch.Tensor]:
    return {name: pyro.param(name).detach().clone() for name in names}


# -- alternation -------------------------------------------------------------------------


@pytest.mark.parametrize("loss_class", [ReweightedWakeSleep, WakeSleep])
@pytest.mark.parametrize("alternate", [True, "model_first", "guide_first"])
def test_alternating_steps_update_one_side_only(data, loss_class, alternate):
    loss = loss_class(num_particles=3, alternate=alternate)
    svi = SVI(model, guide_with_observations, Adam({"lr": 0.1}), loss)
    phases = ["guide", "model"] if alternate == "guide_first" else ["model", "guide"]
    loss.loss(model, guide_with_observations, data)  # creates the parameters
    for step in range(6):  # several rounds, so Adam has momentum on both sides
        phase = phases[step % 2]
        assert loss.phase == phase
        before = params("mu", "a", "b")
        svi.step(data)
        after = params("mu", "a", "b")
        moved = {name for name in before if not torch.equal(before[name], after[name])}
        assert moved == ({"mu"} if phase == "model" else {"a", "b"}), (step, phase, moved)


def test_simultaneous_step_updates_both_sides(data):
    loss = ReweightedWakeSleep(num_particles=3, insomnia=0.5)
    assert loss.phase == "both"
    svi = SVI(model, guide_with_observations, Adam({"lr": 0.1}), loss)
    loss.loss(model, guide_with_observations, data)
    before = params("mu", "a", "b")
    svi.step(data)
    after = params("mu", "a", "b")
    assert all(not torch.equal(before[n], after[n]) for n in before)
    assert loss.phase == "both"


def test_shared_parameter_moves_in_both_phases(data):
    def shared_model(x):
        scale = pyro.param("shared", torch.tensor(1.0), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[-1]):
            z = pyro.sample("z", dist.Normal(0.0, scale))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def shared_guide(x):
        scale = pyro.param("shared", torch.tensor(1.0), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[-1]):
            pyro.sample("z", dist.Normal(0.5 * x, scale))

    loss = ReweightedWakeSleep(alternate=True)
    svi = SVI(shared_model, shared_guide, Adam({"lr": 0.1}), loss)
    loss.loss(shared_model, shared_guide, data)
    for _ in range(2):
        before = params("shared")["shared"]
        svi.step(data)
        assert not torch.equal(before, params("shared")["shared"])


def test_loss_and_differentiable_loss_do_not_advance_phase_and_report_wake_bound(data):
    loss = ReweightedWakeSleep(num_particles=4, insomnia=0.0, alternate=True)
    svi = SVI(model, guide_with_observations, Adam({"lr": 0.1}), loss)
    loss.loss(model, guide_with_observations, data)
    loss.differentiable_loss(model, guide_with_observations, data)
    assert loss.phase == "model"
    for _ in range(2):  # a model step, then a guide step: both report the wake bound
        pyro.set_rng_seed(7)
        expected = loss.loss(model, guide_with_observations, data)
        pyro.set_rng_seed(7)
        assert svi.step(data) == pytest.approx(expected, rel=1e-6)


# -- routing of dreams -----------------------------------------------------------------


def sharp_model(x: torch.Tensor) -> None:
    """Observations are their latent plus tiny noise, so a dreamed x is recognisable."""
    with pyro.plate("data", x.shape[-1]):
        z = pyro.sample("z", dist.Normal(3.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1e-3), obs=x)


def recording_guide(seen: list):
    def guide_body(x: torch.Tensor) -> None:
        a = pyro.param("a", torch.tensor(0.3))
        with pyro.plate("data", x.shape[-1]):
            z = pyro.sample("z", dist.Normal(a * x, 1.0))
        seen.append((x, z))

    return guide_body


def assert_sleep_saw_dreams(seen: list, real: torch.Tensor) -> None:
    dreams = [(x, z) for x, z in seen if x is not real]
    assert dreams, "the guide was never called with dreamed observations"
    for x, z in dreams:  # the dreamed x sits on its dreamed z; real data would not
        assert (x - z).abs().max() < 0.01


@pytest.mark.parametrize("vectorize", [True, False])
def test_routing_by_argument_identity(vectorize):
    real = torch.zeros(N)
    seen: list = []
    loss = WakeSleep(num_sleep_particles=3, vectorize_particles=vectorize)
    loss.differentiable_loss(sharp_model, recording_guide(seen), real)
    assert_sleep_saw_dreams(seen, real)


def test_routing_by_observations_keyword():
    real = torch.zeros(N)
    seen: list = []
    body = recording_guide(seen)

    def guide(x, observations=None):
        body(observations["x"] if observations is not None else x)

    def model_reading_copy(x):  # obs is not an argument, so only `observations` can route
        sharp_model(x.clone())

    WakeSleep(num_sleep_particles=3).differentiable_loss(model_reading_copy, guide, real)
    assert_sleep_saw_dreams(seen, real)


def test_routing_by_dream_args_takes_precedence():
    real = torch.zeros(N)
    seen: list = []
    body = recording_guide(seen)
    received = []

    def guide(batch: dict, observations=None):
        received.append(observations)
        body(batch["x"])

    def model(batch: dict):
        sharp_model(batch["x"])

    def dream_args(observations, args, kwargs):
        return ({"x": observations["x"]},), kwargs

    loss = WakeSleep(num_sleep_particles=3, dream_args=dream_args)
    loss.differentiable_loss(model, guide, {"x": real})
    seen_real = [x for x, _ in seen if x is real]
    assert seen_real and all(obs is None for obs in received)
    assert_sleep_saw_dreams(seen, real)


def test_routing_error_names_sites_and_options():
    def model_reading_copy(x):
        sharp_model(x + 0.0)

    loss = WakeSleep()
    with pytest.raises(DreamRoutingError) as info:
        loss.differentiable_loss(model_reading_copy, recording_guide([]), torch.zeros(N))
    message = str(info.value)
    for needle in ("'x'", "dream_args", "observations", "insomnia=1"):
        assert needle in message
    # insomnia = 1 needs no dreams, so the same pair trains without error
    ReweightedWakeSleep(insomnia=1.0).differentiable_loss(
        model_reading_copy, recording_guide([]), torch.zeros(N)
    )


def test_dream_args_must_return_args_and_kwargs():
    loss = WakeSleep(dream_args=lambda observations, args, kwargs: observations)
    with pytest.raises(DreamRoutingError, match="pair"):
        loss.differentiable_loss(sharp_model, recording_guide([]), torch.zeros(N))


def test_guide_reading_leading_dimension_falls_back_to_sequential_dreams_once(data):
    def leading_dim_guide(x):
        a = pyro.param("a", torch.tensor(0.3))
        # Reads the batch size off the leading dimension: under vectorised dreams x is (M, N),
        # so the reshape yields M values instead of N.
        loc = a * x.reshape(x.shape[0], -1).mean(-1)
        with pyro.plate("data", x.shape[-1]):
            pyro.sample("z", dist.Normal(loc, 1.0))

    loss = WakeSleep(num_particles=1, num_sleep_particles=3, vectorize_particles=True)
    with pytest.warns(RuntimeWarning, match="one at a time") as record:
        first = loss.differentiable_loss(model, leading_dim_guide, data)
    assert sum(issubclass(w.category, RuntimeWarning) for w in record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = loss.differentiable_loss(model, leading_dim_guide, data)
    assert torch.isfinite(first) and torch.isfinite(second)
    first.backward()
    assert pyro.param("a").grad is not None and torch.isfinite(pyro.param("a").grad)


# -- validation ------------------------------------------------------------------------


@pytest.mark.parametrize("loss_class", [ReweightedWakeSleep, WakeSleep])
@pytest.mark.parametrize(
    "kwargs, needle", [({"num_particles": 0}, "num_particles"), ({"dream_args": 3}, "dream_args")]
)
def test_invalid_arguments_raise_value_error(loss_class, kwargs, needle):
    # every rule is tested once in tests/common/test_contract.py; this checks they are applied
    with pytest.raises(ValueError, match=needle):
        loss_class(**kwargs)


def test_wake_sleep_has_no_insomnia_and_allows_one_particle(data):
    with pytest.raises(TypeError):
        WakeSleep(insomnia=0.5)
    value = ReweightedWakeSleep(num_particles=1).loss(model, guide, data)
    assert math.isfinite(value)


def test_guide_missing_a_latent_is_named():
    def partial_guide(x):
        pass

    with pytest.raises(ModelGuideMismatchError, match="'z'"):
        ReweightedWakeSleep().loss(model, partial_guide, torch.zeros(N))


def test_guide_site_unknown_to_model_is_named():
    def extra_guide(x):
        guide(x)
        pyro.sample("extra", dist.Normal(0.0, 1.0))

    with pytest.raises(ModelGuideMismatchError, match="'extra'"):
        ReweightedWakeSleep().loss(model, extra_guide, torch.zeros(N))


def test_too_small_max_plate_nesting_is_explained(data):
    with pytest.raises(ValueError, match="max_plate_nesting=0"):
        ReweightedWakeSleep(max_plate_nesting=0).loss(model, guide, data)


# -- non-finite steps ------------------------------------------------------------------


def test_non_finite_step_warns_and_changes_nothing(data):
    broken = {"on": False}

    def fragile_model(x):
        mu = pyro.param("mu", torch.tensor(0.3))
        with pyro.plate("data", x.shape[-1]):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)
            if broken["on"]:  # every particle of every datapoint gets zero weight
                pyro.factor("impossible", torch.full_like(x, -math.inf))

    loss = ReweightedWakeSleep(num_particles=3, insomnia=0.5, alternate=True)
    svi = SVI(fragile_model, guide_with_observations, Adam({"lr": 0.1}), loss)
    svi.step(data)
    svi.step(data)  # both sides now have Adam momentum
    broken["on"] = True
    before = params("mu", "a", "b")
    with pytest.warns(NonFiniteLossWarning, match="impossible") as record:
        value = svi.step(data)
    assert not math.isfinite(value)
    assert "zero weight under every particle" in str(record[0].message)
    after = params("mu", "a", "b")
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert loss.phase == "model"  # the refused step is retried, not skipped over
    with pytest.raises(ValueError, match="impossible"):
        loss.differentiable_loss(fragile_model, guide_with_observations, data)
    with pytest.warns(NonFiniteLossWarning):
        loss.loss(fragile_model, guide_with_observations, data)


def test_last_terms_expose_each_term(data):
    loss = ReweightedWakeSleep(num_particles=5, insomnia=0.5)
    value = loss.loss_and_grads(model, guide_with_observations, data)
    terms = loss.last_terms
    assert set(terms) == {"loss", "wake_theta", "wake_phi", "sleep_phi", "ess"}
    assert terms["loss"] == pytest.approx(value)
    assert 1.0 <= terms["ess"] <= 5.0
