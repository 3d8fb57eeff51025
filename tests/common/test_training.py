"""The trainers' shared policies: objective, learning-rate schedule, restarts, checkpoint
steps, the evaluation's images and method."""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
from pathlib import Path

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


# --------------------------------------------------------------------------- trained end to end
# Short runs of both trainers (``docs/design.md`` §3 and §9): the real-valued vowels frames
# with Gaussian visible units, features.json for labelled data and none for bars.

TRAIN_BACKENDS = ("pyro_wakesleep", "numpyro_wakesleep")
#: a short run: 20 steps of rws on mini-batches of 16, no restarts, 50 samples
SHORT = ("--algorithm", "rws", "--steps", "20", "--batch-size", "16", "--particles", "3",
         "--num-samples", "50", "--restarts", "1")  # fmt: skip
#: two hidden layers, 6 units: enumerable, and fewer features than the 12 coefficients
VOWELS_LAYERS = (4, 2)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _short_run(backend: str, dataset: str, out: Path, *extra: str) -> dict:
    main = importlib.import_module(f"{backend}.train").main
    return main(["train", "--dataset", dataset, *SHORT, *extra, "--out", str(out)])


def _vowels_flags() -> tuple[str, ...]:
    return ("--layers", ",".join(str(n) for n in VOWELS_LAYERS))


@pytest.fixture(scope="module", params=TRAIN_BACKENDS)
def vowels_run(request, tmp_path_factory) -> tuple[str, Path, dict]:
    """One finished short vowels run per backend: ``(backend, folder, metrics)``."""
    if importlib.util.find_spec("sktime") is None:
        pytest.skip("the vowels data set reads its files from sktime, which is not installed")
    backend = request.param
    out = tmp_path_factory.mktemp(f"vowels_{backend}")
    return backend, out, _short_run(backend, "vowels", out, *_vowels_flags())


def _vowels():
    from wakesleep.trainer.datasets import load_dataset

    return load_dataset("vowels")


def _checkpoint_machine(backend: str, folder: Path, num_visible: int, layers: tuple[int, ...]):
    """The trained machine rebuilt from the checkpoint's parameters, as the backends' own
    trainer tests rebuild theirs: ``(generative_weights, visible_scale, features)``, the
    last a function of the data (float64 NumPy)."""
    if backend == "pyro_wakesleep":
        import pyro
        import torch

        from pyro_wakesleep.helmholtz import HelmholtzMachine
        from pyro_wakesleep.train import CHECKPOINT

        pyro.clear_param_store()
        for name, value in torch.load(folder / CHECKPOINT, weights_only=True)["params"].items():
            pyro.param(name, value)
        machine = HelmholtzMachine(num_visible, layers, visible="gaussian")

        def features(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return machine.features(torch.as_tensor(x, dtype=torch.float32)).double().numpy()

        return machine.generative_weights(), machine.visible_scale(), features
    import jax.numpy as jnp

    from numpyro_wakesleep.helmholtz import HelmholtzMachine
    from numpyro_wakesleep.train import CHECKPOINT, HelmholtzTrainer

    _, state = HelmholtzTrainer().read_checkpoint(folder / CHECKPOINT)
    params = state["params"]  # unconstrained, as every parameter of the machine is
    machine = HelmholtzMachine(num_visible, layers, visible="gaussian")

    def features(x: np.ndarray) -> np.ndarray:
        return np.asarray(machine.features(params, jnp.asarray(x, dtype=jnp.float32)), np.float64)

    return machine.generative_weights(params), machine.visible_scale(params), features


@pytest.mark.slow  # trains and evaluates end to end (~10 s a backend on two cores)
def test_a_vowels_run_reports_gaussian_exact_nlls_of_its_checkpoint(vowels_run):
    from wakesleep.trainer.exact import helmholtz_log_marginal

    backend, folder, metrics = vowels_run
    on_disk = json.loads((folder / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["backend"] == backend and on_disk["dataset"] == "vowels"
    assert on_disk["visible"] == "gaussian" and on_disk["nll_method"] == "exact"
    assert on_disk["layers"] == list(VOWELS_LAYERS) and "kl_bits" not in on_disk
    data = _vowels()
    weights, scale, _ = _checkpoint_machine(backend, folder, data.num_visible, VOWELS_LAYERS)
    assert scale.shape == (12,) and np.all(scale > 0)
    assert not np.allclose(scale, 1.0, rtol=0, atol=1e-6)  # trained: unit scales would differ
    for split, key in ((data.test, "test_nll_nats"), (data.train, "train_nll_nats")):
        log_px = helmholtz_log_marginal(split, *weights, visible_scale=scale)
        # a density per frame: a sum, other frames, unit scales or another machine are far off
        assert metrics[key] == pytest.approx(-log_px.mean(), rel=1e-9, abs=0), key


@pytest.mark.slow
def test_a_vowels_run_draws_real_valued_samples_and_plots_their_histograms(vowels_run):
    _, folder, _ = vowels_run
    samples = np.load(folder / "samples.npy")
    assert samples.dtype == np.float32 and samples.shape == (50, 12)
    assert np.all(np.isfinite(samples))
    assert not np.all((samples == 0) | (samples == 1))  # means plus Gaussian noise, not pixels
    assert len(np.unique(samples)) > 50 * 12 // 2
    assert (folder / "samples.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_a_vowels_run_writes_the_linear_probe_of_its_features(vowels_run):
    from wakesleep.probe import linear_probe

    backend, folder, _ = vowels_run
    report = json.loads((folder / "features.json").read_text())
    assert set(report) == {"probe_accuracy", "mean_activation", "num_features", "pca_components"}
    assert set(report["probe_accuracy"]) == {"learned", "raw", "pca"}
    for name, accuracy in report["probe_accuracy"].items():
        assert isinstance(accuracy, float) and 0.0 <= accuracy <= 1.0, name
    assert report["num_features"] == sum(VOWELS_LAYERS) == 6
    assert report["pca_components"] == min(sum(VOWELS_LAYERS), 12) == 6
    activation = report["mean_activation"]
    assert isinstance(activation, list) and len(activation) == len(VOWELS_LAYERS)
    assert all(isinstance(a, float) and 0.0 < a < 1.0 for a in activation)

    data = _vowels()
    groups = {"train_groups": data.train_groups, "test_groups": data.test_groups}
    raw = linear_probe(data.train, data.train_labels, data.test, data.test_labels, **groups)
    assert report["probe_accuracy"]["raw"] == raw
    # the learned features: the checkpoint's recognition net, per utterance, per layer
    _, _, features = _checkpoint_machine(backend, folder, data.num_visible, VOWELS_LAYERS)
    train, test = features(data.train), features(data.test)
    learned = linear_probe(train, data.train_labels, test, data.test_labels, **groups)
    assert report["probe_accuracy"]["learned"] == learned
    layers = np.split(train, np.cumsum(VOWELS_LAYERS)[:-1], axis=1)
    assert activation == pytest.approx([layer.mean() for layer in layers], rel=1e-6)


@pytest.mark.slow
def test_resuming_a_finished_vowels_run_evaluates_it_again_to_the_same_outputs(
    vowels_run, tmp_path
):
    backend, folder, metrics = vowels_run
    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    for name in ("metrics.json", "features.json", "samples.npy", "samples.png"):
        (copy / name).unlink()
    resumed = _short_run(backend, "vowels", copy, *_vowels_flags(), "--resume")
    assert resumed["steps"] == 20
    assert {k: v for k, v in resumed.items() if k != "seconds"} == {
        k: v for k, v in metrics.items() if k != "seconds"
    }
    assert json.loads((copy / "features.json").read_text()) == json.loads(
        (folder / "features.json").read_text()
    )
    assert np.array_equal(np.load(copy / "samples.npy"), np.load(folder / "samples.npy"))
    assert (copy / "samples.png").is_file()


@pytest.mark.slow  # two short runs a backend
@pytest.mark.parametrize("backend", TRAIN_BACKENDS)
def test_labelled_digits_get_features_json_and_bars_none(backend, tmp_path):
    pytest.importorskip("sklearn")
    metrics = _short_run(backend, "digits", tmp_path / "digits", "--layers", "4,2")
    assert metrics["visible"] == "bernoulli" and metrics["nll_method"] == "exact"
    report = json.loads((tmp_path / "digits" / "features.json").read_text())
    assert report["num_features"] == report["pca_components"] == 6  # 6 < 64 pixels
    assert len(report["mean_activation"]) == 2
    assert all(0.0 <= a <= 1.0 for a in report["probe_accuracy"].values())
    samples = np.load(tmp_path / "digits" / "samples.npy")
    assert samples.dtype == np.uint8 and samples.shape == (50, 64)

    metrics = _short_run(backend, "bars", tmp_path / "bars", "--layers", "4")
    assert metrics["visible"] == "bernoulli" and "kl_bits" in metrics
    assert (tmp_path / "bars" / "metrics.json").is_file()
    assert not (tmp_path / "bars" / "features.json").exists()
