"""The rules both backends share, tested once against ``wakesleep.contract``.

Argument checks, model/guide site matching, dream routing and the messages of bad data
are plain Python in one place; the backend tests (``tests/pyro``, ``tests/numpyro``)
keep one smoke test each that the objectives call them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from wakesleep.contract import (
    ROUTING_HINTS,
    DreamRoutingError,
    ModelGuideMismatchError,
    SubSample,
    check_objective_arguments,
    check_site_match,
    non_finite_data_error,
    route_dreams,
)

VALID = {
    "num_particles": 10,
    "insomnia": 1.0,
    "num_sleep_particles": None,
    "vectorize_particles": True,
    "max_plate_nesting": math.inf,
    "alternate": False,
    "dream_args": None,
}
INVALID = [
    ({"num_particles": 0}, "num_particles"),
    ({"num_particles": -2}, "num_particles"),
    ({"num_particles": 2.5}, "num_particles"),
    ({"num_particles": True}, "num_particles"),
    ({"num_sleep_particles": 0}, "num_sleep_particles"),
    ({"num_sleep_particles": 1.5}, "num_sleep_particles"),
    ({"insomnia": -0.1}, "insomnia"),
    ({"insomnia": 1.1}, "insomnia"),
    ({"insomnia": "0.5"}, "insomnia"),
    ({"insomnia": None}, "insomnia"),
    ({"insomnia": math.nan}, "insomnia"),
    ({"insomnia": True}, "insomnia"),
    ({"vectorize_particles": "yes"}, "vectorize_particles"),
    ({"vectorize_particles": 1}, "vectorize_particles"),
    ({"max_plate_nesting": -1}, "max_plate_nesting"),
    ({"max_plate_nesting": 1.5}, "max_plate_nesting"),
    ({"max_plate_nesting": True}, "max_plate_nesting"),
    ({"alternate": "sometimes"}, "alternate"),
    ({"alternate": 1}, "alternate"),
    ({"alternate": 1.0}, "alternate"),
    ({"dream_args": 3}, "dream_args"),
]


# -- arguments --------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "name"), INVALID)
def test_invalid_arguments_are_named(change, name):
    with pytest.raises(ValueError, match=name):
        check_objective_arguments("ReweightedWakeSleep", **{**VALID, **change})


@pytest.mark.parametrize(
    "change",
    [{}, {"num_particles": 1}, {"insomnia": 0}, {"max_plate_nesting": 2}, {"alternate": True},
     {"alternate": "guide_first"}, {"num_sleep_particles": 3}, {"dream_args": lambda o, a, k: (a, k)}],
)  # fmt: skip
def test_valid_arguments_pass(change):
    check_objective_arguments("ReweightedWakeSleep", **{**VALID, **change})


def test_a_program_as_num_particles_means_the_class_was_handed_to_svi():
    with pytest.raises(ValueError, match=r"class WakeSleep .* loss=WakeSleep\(\)"):
        check_objective_arguments("WakeSleep", **{**VALID, "num_particles": lambda x: x})


# -- sites ------------------------------------------------------------------------------
def test_a_latent_the_guide_lacks_is_named():
    with pytest.raises(ModelGuideMismatchError, match=r"\['z2'\].*pyro.sample"):
        check_site_match(
            model_latents=["z1", "z2"], model_observed=["x"], guide_sites=["z1"],
            sample_statement="pyro.sample",
        )  # fmt: skip


def test_a_guide_site_the_model_lacks_or_observes_is_named():
    with pytest.raises(ModelGuideMismatchError, match=r"\['w'\]"):
        check_site_match(
            model_latents=["z"], model_observed=["x"], guide_sites=["z", "w"],
            sample_statement="numpyro.sample",
        )  # fmt: skip
    with pytest.raises(ModelGuideMismatchError, match=r"observes \['x'\]"):
        check_site_match(
            model_latents=["z"], model_observed=["x"], guide_sites=["z", "x"],
            sample_statement="numpyro.sample",
        )  # fmt: skip


# -- routing ----------------------------------------------------------------------------
class NumpyRows:
    """``RowAccess`` for NumPy arrays, as each backend writes its own."""

    @staticmethod
    def holds(argument, dim, indices, value):
        return (
            isinstance(argument, np.ndarray)
            and argument.ndim == value.ndim
            and np.array_equal(np.take(argument, indices, axis=dim), value)
        )

    @staticmethod
    def write(argument, dim, indices, dream, holds):
        written = argument.copy()
        written[(slice(None),) * (argument.ndim + dim) + (indices,)] = dream
        return written


def guide(x, y=None):
    pass


def guide_with_observations(x, observations=None):
    pass


X = np.arange(6.0)
DREAM = -np.ones(6)


def test_dream_args_win_over_every_other_rule():
    def dream_args(observations, args, kwargs):
        return (observations["x"] * 2,), {}

    args, kwargs = route_dreams(
        guide_with_observations, {"x": DREAM}, {"x": X}, (X,), {}, dream_args
    )
    np.testing.assert_array_equal(args[0], DREAM * 2)
    assert kwargs == {}


def test_an_observations_parameter_receives_the_dreams():
    args, kwargs = route_dreams(guide_with_observations, {"x": DREAM}, {"x": X}, (X,), {})
    assert args[0] is X and kwargs["observations"]["x"] is DREAM


def test_every_argument_that_is_the_data_gets_the_dream():
    args, kwargs = route_dreams(guide, {"x": DREAM}, {"x": X}, (X,), {"y": X})
    assert args[0] is DREAM and kwargs["y"] is DREAM


def test_rows_of_a_full_data_argument_get_the_dreams_at_the_mini_batch():
    idx = np.array([4, 1])
    args, _ = route_dreams(
        guide, {"x": np.array([-1.0, -2.0])}, {"x": X[idx]}, (X, X + 10), {},
        sub_samples={"x": [SubSample(-1, idx)]}, rows=NumpyRows,
    )  # fmt: skip
    np.testing.assert_array_equal(args[0], [0, -2, 2, 3, -1, 5])
    np.testing.assert_array_equal(args[1], X + 10)  # not the data: untouched


def test_two_sites_holding_one_argument_are_refused():
    with pytest.raises(DreamRoutingError, match="'a' and 'b' both hold argument #0"):
        route_dreams(guide, {"a": DREAM, "b": DREAM * 2}, {"a": X, "b": X}, (X,), {})


@pytest.mark.parametrize("objective", sorted(ROUTING_HINTS))
def test_unroutable_dreams_name_the_sites_the_options_and_the_objective_hint(objective):
    with pytest.raises(DreamRoutingError) as error:
        route_dreams(guide, {"x": DREAM}, {"x": X * 1.0}, (X,), {}, hint=ROUTING_HINTS[objective])
    message = str(error.value)
    for needle in ("['x']", "dream_args", "observations", "obs=", ROUTING_HINTS[objective]):
        assert needle in message
    assert objective != "WakeSleep" or "Or set insomnia" not in message


def test_dream_args_must_return_args_and_kwargs():
    with pytest.raises(DreamRoutingError, match="must return a pair"):
        route_dreams(guide, {"x": DREAM}, {"x": X}, (X,), {}, lambda o, a, k: o)


# -- bad data ---------------------------------------------------------------------------
def test_non_finite_data_are_named_by_data_set_index_under_sub_sampling():
    bad = np.zeros(12, dtype=bool)
    bad[[2, 7]] = True
    indices = np.arange(100, 112)
    error = non_finite_data_error(
        site="x", bad=bad, kinds=["NaN"], sub_sampled={0: indices}, mask_statement="poutine.mask"
    )
    assert "'x' holds NaN at datapoint(s) 102, 107." in str(error)
    assert "poutine.mask" in str(error)


def test_many_non_finite_datapoints_are_counted():
    error = non_finite_data_error(
        site="x", bad=np.ones(25, dtype=bool), kinds=["NaN", "inf"], sub_sampled={},
        mask_statement="handlers.mask",
    )  # fmt: skip
    assert "NaN and inf at datapoint(s) 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ... (25 in all)" in str(error)
