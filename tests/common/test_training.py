"""The trainers' shared policies: objective, learning-rate schedule, restarts, checkpoint
steps, the evaluation's images and method."""

from __future__ import annotations

import numpy as np
import pytest

from wakesleep.contract import Sparsity
from wakesleep.trainer.arguments import ALGORITHMS
from wakesleep.trainer.evaluation import nll_method, train_nll_images
from wakesleep.trainer.schedule import (
    best_restart,
    is_checkpoint_step,
    keeps_chains,
    learning_rate,
    objective,
    selection_steps,
)


def test_learning_rate_falls_from_lr_to_lr_times_decay():
    assert learning_rate(0.1, 0.01, 200, 0) == 0.1
    assert learning_rate(0.1, 0.01, 200, 100) == pytest.approx(0.01)
    assert learning_rate(0.1, 0.01, 200, 200) == pytest.approx(0.001)
    assert learning_rate(0.1, 1.0, 200, 150) == 0.1
    rates = [learning_rate(1.0, 0.5, 10, t) for t in range(11)]
    assert all(b < a for a, b in zip(rates, rates[1:], strict=False))
    assert rates[1] / rates[0] == pytest.approx(rates[7] / rates[6])  # exponential


def test_selection_takes_the_first_tenth_and_only_with_restarts():
    assert selection_steps(20_000, 16) == 2_000
    assert selection_steps(20_000, 1) == 0
    assert selection_steps(5, 2) == 1  # at least one step each


def test_best_restart_is_the_lowest_recent_loss():
    rng = np.random.default_rng(0)
    curves = 3.0 + 0.1 * rng.standard_normal((4, 100))
    curves[2, 80:] -= 0.5  # best over the last fifth...
    curves[1, :80] -= 2.0  # ...though another was far better earlier
    assert best_restart(curves) == 2
    assert best_restart(curves[:, :1]) == int(np.argmin(curves[:, 0]))
    with pytest.raises(ValueError, match="shape"):
        best_restart(np.zeros((3, 0)))


def test_checkpoint_steps():
    assert [d for d in range(1, 2_001) if is_checkpoint_step(d, 2_000)] == list(
        range(200, 2_001, 200)
    )
    assert [d for d in range(1, 251) if is_checkpoint_step(d, 250)] == [100, 200, 250]


def test_importance_train_nll_scores_the_first_thousand_images_exact_scores_all():
    images = np.arange(3_000)
    assert np.array_equal(train_nll_images(images, exact=False), np.arange(1_000))
    assert train_nll_images(images, exact=True) is images


def test_the_nll_method_names_the_importance_particles():
    assert nll_method(exact=True) == "exact"
    assert nll_method(exact=False) == "importance-5000"


def test_rws_is_the_wake_phase_guide_update_ws_the_classic_algorithm_jsa_keeps_chains():
    class Losses:  # stands in for a backend's losses module
        def ReweightedWakeSleep(**kwargs):  # noqa: N802
            return ("rws", kwargs)

        def WakeSleep(**kwargs):  # noqa: N802
            return ("ws", kwargs)

        def JointStochasticApproximation(**kwargs):  # noqa: N802
            return ("jsa", kwargs)

    none = {"sparsity": None}  # no penalty without --sparsity
    assert objective("rws", 7, Losses) == ("rws", {"num_particles": 7, "insomnia": 1.0, **none})
    assert objective("ws", 3, Losses) == ("ws", {"num_particles": 3, **none})
    assert objective("jsa", 5, Losses) == ("jsa", {"num_particles": 5, **none})
    # --sparsity T --sparsity-weight W: Sparsity(T, W) on every hidden layer, any algorithm
    for algorithm in ALGORITHMS:
        _, kwargs = objective(algorithm, 2, Losses, {"target": 0.1, "weight": 3.0})
        assert kwargs["sparsity"] == Sparsity(0.1, 3.0, None)
    with pytest.raises(ValueError, match="ws, rws, jsa"):
        objective("vi", 5, Losses)
    # only jsa passes index= and draws its mini-batches without replacement
    assert [keeps_chains(a) for a in ("ws", "rws", "jsa")] == [False, False, True]


@pytest.mark.parametrize("backend", ["pyro_wakesleep", "numpyro_wakesleep"])
def test_both_backends_build_jsa_from_their_own_losses(backend):
    import importlib

    losses = importlib.import_module(f"{backend}.losses")
    loss = objective("jsa", 4, losses)
    assert type(loss).__name__ == "JointStochasticApproximation" and loss.num_particles == 4


def test_guide_mean_activation_weighs_every_image_once_across_batches():
    from wakesleep.trainer.evaluation import EVALUATION_BATCH, guide_mean_activation
    from wakesleep.trainer.runs import CtrlC

    class Backend:  # stands in for a trainer backend: "activation" = the images' mean
        def split_key(self, key, num):
            return [None] * num

        def mean_activation(self, images, key):
            return float(np.mean(images))

    images = np.random.default_rng(0).random((2 * EVALUATION_BATCH + 37, 5))  # a short last batch
    value = guide_mean_activation(Backend(), images, None, CtrlC())
    assert value == pytest.approx(images.mean(), rel=1e-12)
