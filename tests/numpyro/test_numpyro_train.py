"""``python -m numpyro_wakesleep train`` end to end, on tiny settings; the machine's helpers.

The trainer tests mirror ``tests/test_pyro_train.py``. The helpers of
:class:`numpyro_wakesleep.helmholtz.HelmholtzMachine` are checked against exact
enumeration (:mod:`wakesleep.trainer.exact`) on machines small enough to enumerate:

- ``generative_weights`` feeds the exact ``log p(x)``, which must equal the importance
  estimate of :mod:`numpyro_wakesleep.evaluation` with many particles, within 5 of its
  standard errors (the relative standard error of the mean importance weight);
- ``sample`` draws images whose pixel means must equal the exact marginal pixel
  probabilities within 5 binomial standard errors, and whose image frequencies must pass
  a chi-square test against the exact ``p(x)`` of all ``2^D`` images.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.numpyro_machines import random_params
from helpers.trainer import (
    interrupted,
    press_ctrl_c_after_first_call,
)
from jax import random
from scipy import stats

from numpyro_wakesleep.chains import CHAINS
from numpyro_wakesleep.evaluation import importance_log_likelihood, importance_log_weights
from numpyro_wakesleep.helmholtz import HelmholtzMachine
from numpyro_wakesleep.train import (
    CHECKPOINT,
    LEGACY_CHECKPOINT,
    HelmholtzTrainer,
    _step_function,
    main,
)
from wakesleep.trainer import evaluation, loop, schedule
from wakesleep.trainer.arguments import parse_train_args
from wakesleep.trainer.datasets import load_dataset
from wakesleep.trainer.exact import helmholtz_log_marginal

TINY = ["--steps", "12", "--batch-size", "8", "--particles", "3", "--num-samples", "40",
        "--restarts", "2"]  # fmt: skip


def run(out: Path, *extra: str, dataset: str = "bars", algorithm: str = "rws") -> dict:
    argv = ["train", "--dataset", dataset, "--algorithm", algorithm, *TINY, *extra]
    return main([*argv, "--out", str(out)])


def load_checkpoint(folder: Path) -> dict:
    """The checkpoint in ``folder`` as the trainer reads it: its meta and state together."""
    meta, state = HelmholtzTrainer().read_checkpoint(folder / CHECKPOINT)
    return {**meta, **state}


def has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


# -- the trainer ----------------------------------------------------------------------------
# Every training run compiles its own jitted step, so the runs are shared: one finished run
# per algorithm (module-scoped), copied where a test changes its folder.
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    runs = {}
    for algorithm in ("rws", "ws"):
        out = tmp_path_factory.mktemp(f"finished_{algorithm}")
        runs[algorithm] = (out, run(out, algorithm=algorithm))
    return runs


@pytest.fixture(scope="module")
def finished_jsa(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("finished_jsa")
    return out, run(out, algorithm="jsa")


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["rws", "ws"])
def test_writes_every_output(finished, algorithm):
    folder, metrics = finished[algorithm]
    outputs = ("metrics.json", "samples.npy", "samples.png", "curve.png", CHECKPOINT)
    for name in (*outputs, "diagnostics.json", "khat.png"):
        assert (folder / name).stat().st_size > 0, name
    on_disk = json.loads((folder / "metrics.json").read_text())
    assert on_disk["backend"] == "numpyro_wakesleep" and on_disk["algorithm"] == algorithm
    assert on_disk["layers"] == [8, 1] and on_disk["steps"] == 12 and on_disk["particles"] == 3
    assert on_disk["nll_method"] == "exact"
    # an untrained bars machine is far from the 3.43-bit source: KL is large but finite
    assert 0.0 < on_disk["kl_bits"] < 64 and on_disk["train_nll_nats"] > 0
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["sparsity"] is None and 0.0 < on_disk["mean_activation"] < 1.0
    diagnostics = json.loads((folder / "diagnostics.json").read_text())
    assert diagnostics["num_datapoints"] == 500 and diagnostics["num_samples"] == 1000
    assert 0.0 <= diagnostics["fraction_khat_above_0.7"] <= diagnostics["fraction_khat_above_0.5"]
    samples = np.load(folder / "samples.npy")
    assert samples.dtype == np.uint8 and samples.shape == (40, 16)
    assert set(np.unique(samples)) <= {0, 1}
    checkpoint = load_checkpoint(folder)
    assert checkpoint["step"] == 12 and len(checkpoint["curve"]) == 12
    assert all(np.isfinite(checkpoint["curve"]))
    assert checkpoint["run"]["algorithm"] == algorithm and checkpoint["run"]["seed"] == 0


def same_run(straight_folder: Path, straight: dict, folder: Path, resumed: dict) -> None:
    """The resumed run in ``folder`` ended exactly where the uninterrupted one did."""
    a = load_checkpoint(straight_folder)
    b = load_checkpoint(folder)
    assert a["step"] == b["step"] == 12
    assert set(a["params"]) == set(b["params"])
    for name, value in a["params"].items():
        assert value.dtype == b["params"][name].dtype
        assert np.array_equal(value, b["params"][name]), name
    assert len(a["optim"]) == len(b["optim"]) > 0
    for x, y in zip(a["optim"], b["optim"], strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    assert np.array_equal(a["optim_step"], b["optim_step"])
    assert np.array_equal(a["rng"], b["rng"]) and np.array_equal(a["batches"], b["batches"])
    assert a["curve"] == b["curve"]
    assert a["mutable"].keys() == b["mutable"].keys()  # jsa: the chains, by name
    for name, value in a["mutable"].items():
        assert value.dtype == b["mutable"][name].dtype
        assert np.array_equal(value, b["mutable"][name]), name
    for key in ("train_nll_nats", "test_nll_nats", "kl_bits", "acceptance_rate"):
        assert straight.get(key) == resumed.get(key), key
    samples = [np.load(f / "samples.npy") for f in (straight_folder, folder)]
    assert np.array_equal(*samples)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_that_resumes_to_where_an_uninterrupted_run_ends(
    finished, tmp_path, monkeypatch, capsys
):
    # bars' default learning rate decays over --steps: the schedule must survive too
    monkeypatch.setattr(schedule, "MIN_CHECKPOINT_INTERVAL", 5)
    press_ctrl_c_after_first_call(monkeypatch, loop, "save_checkpoint")  # during step 5's save
    assert interrupted(capsys, run, tmp_path) == (
        f"Interrupted at step 6; checkpoint saved in {tmp_path}. Resume with the same command "
        "plus --resume."
    )  # the step under way when Ctrl-C came was finished and saved
    assert load_checkpoint(tmp_path)["step"] == 6 and len(load_checkpoint(tmp_path)["curve"]) == 6
    assert not (tmp_path / "metrics.json").exists()
    monkeypatch.undo()
    resumed = run(tmp_path, "--resume")
    same_run(*finished["rws"], tmp_path, resumed)


@pytest.mark.slow
def test_jsa_writes_its_acceptance_rate_and_checkpoints_its_chains(finished_jsa):
    folder, metrics = finished_jsa
    on_disk = json.loads((folder / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics)) and on_disk["algorithm"] == "jsa"
    assert 0.0 < on_disk["acceptance_rate"] <= 1.0 and on_disk["nll_method"] == "exact"
    for name in ("samples.npy", "samples.png", "curve.png", "diagnostics.json", "khat.png"):
        assert (folder / name).stat().st_size > 0, name
    chains = load_checkpoint(folder)["mutable"]  # read with allow_pickle=False
    num_train = len(load_dataset("bars").train)
    prefix = f"mutable/{CHAINS}"
    assert {name: value.shape for name, value in chains.items()} == {
        f"{prefix}/values/h1": (num_train, 8),
        f"{prefix}/values/h2": (num_train, 1),
        f"{prefix}/seen": (num_train,),
        f"{prefix}/age": (num_train,),
    }
    seen, age = chains[f"{prefix}/seen"], chains[f"{prefix}/age"]
    assert seen.dtype == np.bool_ and age.dtype == np.int32
    # the kept start's chains: its selection step and the 11 steps after it, 8 images each
    assert 8 < seen.sum() <= 12 * 8
    assert age.max() <= 11 and not age[~seen].any()


@pytest.mark.slow
def test_jsa_resumes_with_its_chains_to_where_an_uninterrupted_run_ends(
    finished_jsa, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(schedule, "MIN_CHECKPOINT_INTERVAL", 5)
    press_ctrl_c_after_first_call(monkeypatch, loop, "save_checkpoint")  # during step 5's save
    jsa = partial(run, algorithm="jsa")
    assert interrupted(capsys, jsa, tmp_path).startswith("Interrupted at step 6;")
    assert load_checkpoint(tmp_path)["mutable"][f"mutable/{CHAINS}/seen"].sum() > 0
    monkeypatch.undo()
    resumed = run(tmp_path, "--resume", algorithm="jsa")
    same_run(*finished_jsa, tmp_path, resumed)


def _trainer(tmp_path: Path, algorithm: str, *extra: str) -> HelmholtzTrainer:
    argv = ["train", "--dataset", "bars", "--algorithm", algorithm, *TINY, *extra,
            "--out", str(tmp_path)]  # fmt: skip
    trainer = HelmholtzTrainer()
    trainer.build(parse_train_args("numpyro_wakesleep", argv), load_dataset("bars"))
    return trainer


class RecordingSVI:
    """Stands in for ``numpyro.infer.SVI``: records what a trainer's step passes."""

    def update(self, state, x, **kwargs):
        self.x, self.kwargs = x, kwargs
        return state, 0.0


@pytest.mark.parametrize("algorithm", ["ws", "rws", "jsa"])
def test_only_jsa_passes_the_rows_and_draws_them_without_replacement(algorithm):
    train_x = jnp.arange(40.0)[:, None] * jnp.ones(3)  # row i holds i
    svi = RecordingSVI()
    step = _step_function(svi, 40, 8, schedule.keeps_chains(algorithm))
    key = random.PRNGKey(0)
    _, next_key, _ = step(None, key, train_x)
    assert svi.kwargs.keys() == ({"num_data", "index"} if algorithm == "jsa" else {"num_data"})
    if algorithm == "jsa":
        index = np.asarray(svi.kwargs["index"])
        assert len(np.unique(index)) == len(index) == 8
        assert np.array_equal(np.asarray(svi.x[:, 0]), index)
    else:  # the draws of earlier releases: with replacement, from the batch key
        expected = random.randint(random.split(key)[1], (8,), 0, 40)
        assert np.array_equal(np.asarray(svi.x[:, 0]), np.asarray(expected))
    assert np.array_equal(next_key, random.split(key)[0])


@pytest.mark.slow
def test_a_jsa_step_advances_the_chains_of_exactly_the_rows_it_drew(tmp_path):
    # the chains are keyed by the rows passed as index=, not by indices the plate draws
    trainer = _trainer(tmp_path, "jsa")
    trainer.start()
    chains = trainer._state.mutable_state[CHAINS]
    assert not np.asarray(chains["seen"]).any()
    num_data = len(load_dataset("bars").train)
    drawn = []
    for _ in range(3):
        draw = random.split(trainer._batch_key)[1]
        drawn.append(np.asarray(jax.lax.top_k(random.uniform(draw, (num_data,)), 8)[1]))
        trainer.step()
    seen = np.asarray(trainer._state.mutable_state[CHAINS]["seen"])
    assert set(np.flatnonzero(seen)) == set(np.concatenate(drawn).tolist())
    age = np.asarray(trainer._state.mutable_state[CHAINS]["age"])
    assert not age[~seen].any()


@pytest.mark.slow
def test_jsa_restarts_keep_each_candidates_chains_with_it(tmp_path):
    trainer = _trainer(tmp_path, "jsa")
    trainer.train_candidates(3, 2, lambda done: None)
    states, _ = trainer._candidates
    chains = states.mutable_state[CHAINS]  # vmapped: the candidates along axis 0
    seen = np.asarray(chains["seen"])
    assert seen.shape == (3, len(load_dataset("bars").train))
    # each candidate's chains saw only its own 2 mini-batches of 8 (shared ones would see 48)
    assert np.all((seen.sum(axis=1) > 0) & (seen.sum(axis=1) <= 16))
    assert not np.array_equal(seen[0], seen[1])
    trainer.keep_candidate(1)
    trainer.write_checkpoint(tmp_path / CHECKPOINT, {"step": 2})
    kept = load_checkpoint(tmp_path)["mutable"]
    for name in ("h1", "h2"):
        value = np.asarray(chains["values"][name][1])
        assert np.array_equal(kept[f"mutable/{CHAINS}/values/{name}"], value), name
    assert np.array_equal(kept[f"mutable/{CHAINS}/seen"], seen[1])
    assert np.array_equal(kept[f"mutable/{CHAINS}/age"], np.asarray(chains["age"][1]))


@pytest.mark.slow
def test_ctrl_c_in_the_final_evaluation_leaves_a_run_that_resume_evaluates(
    finished, tmp_path, monkeypatch, capsys
):
    press_ctrl_c_after_first_call(monkeypatch, evaluation, "mean_nll")  # the training NLL
    assert interrupted(capsys, run, tmp_path) == (
        f"Interrupted during the final evaluation; the trained machine is saved in {tmp_path}. "
        "Resume with the same command plus --resume to redo the evaluation."
    )
    assert load_checkpoint(tmp_path)["step"] == 12
    assert not (tmp_path / "metrics.json").exists()
    monkeypatch.undo()
    resumed = run(tmp_path, "--resume")
    same_run(*finished["rws"], tmp_path, resumed)


@pytest.mark.slow
def test_reported_nlls_are_the_exact_mean_per_image(finished):
    folder, metrics = finished["rws"]
    assert metrics["nll_method"] == "exact"
    params = load_checkpoint(folder)["params"]  # unconstrained, as the weights are
    top, layers = HelmholtzMachine(16, (8, 1)).generative_weights(params)
    data = load_dataset("bars")
    for split, key in ((data.test, "test_nll_nats"), (data.train, "train_nll_nats")):
        log_px = helmholtz_log_marginal(split, top, layers)
        # a sum, or a mean over other images or another machine, is far outside this
        assert metrics[key] == pytest.approx(-log_px.mean(), rel=1e-9, abs=0), key


@pytest.mark.slow
def test_existing_checkpoint_is_never_overwritten_without_resume(finished, tmp_path):
    folder = copy_of(finished["rws"][0], tmp_path)
    before = (folder / CHECKPOINT).read_bytes()
    with pytest.raises(SystemExit, match="--resume"):
        run(folder)
    assert (folder / CHECKPOINT).read_bytes() == before


@pytest.mark.slow
def test_resume_needs_a_checkpoint_with_the_same_settings(finished, tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint.npz"):
        run(tmp_path, "--resume")
    folder = copy_of(finished["rws"][0], tmp_path)
    before = (folder / CHECKPOINT).read_bytes()
    with pytest.raises(SystemExit, match="lr"):
        run(folder, "--resume", "--lr", "0.5")
    with pytest.raises(SystemExit, match="algorithm: checkpoint 'rws' vs now 'ws'"):
        run(folder, "--resume", algorithm="ws")
    assert (folder / CHECKPOINT).read_bytes() == before


# -- --sparsity ------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["ws", "rws", "jsa"])
def test_the_sparsity_flags_reach_the_objective(tmp_path, algorithm):
    assert _trainer(tmp_path, algorithm)._svi.loss.sparsity is None
    sparse = _trainer(tmp_path, algorithm, "--sparsity", "0.1", "--sparsity-weight", "2.5")
    assert (sparse._svi.loss.sparsity.target, sparse._svi.loss.sparsity.weight) == (0.1, 2.5)
    assert sparse._svi.loss.sparsity.sites is None  # every hidden layer
    default_weight = _trainer(tmp_path, algorithm, "--sparsity", "0.2")._svi.loss.sparsity
    assert (default_weight.target, default_weight.weight) == (0.2, 1.0)


def test_mean_activation_is_the_guides_first_layer_probability_averaged(tmp_path):
    trainer = _trainer(tmp_path, "rws", "--layers", "5")
    trainer.start()
    images = load_dataset("bars").train[:30]
    params = trainer._params
    logits = images @ np.asarray(params["helmholtz_recognition.0.weight"]).T + np.asarray(
        params["helmholtz_recognition.0.bias"]
    )
    expected = float(np.mean(1.0 / (1.0 + np.exp(-logits))))
    assert trainer.mean_activation(images, random.PRNGKey(1)) == pytest.approx(expected, 1e-5)


@pytest.mark.slow
def test_mean_activation_of_two_layers_counts_every_unit_once(tmp_path):
    trainer = _trainer(tmp_path, "rws", "--layers", "6,2")
    trainer.start()
    images = load_dataset("bars").train[:20]
    value = trainer.mean_activation(images, random.PRNGKey(3))
    assert value == trainer.mean_activation(images, random.PRNGKey(3))  # the key decides
    assert 0.0 < value < 1.0


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ws", "rws", "jsa"])
def test_a_strong_sparsity_penalty_lowers_the_mean_activation(tmp_path, algorithm):
    short = ["--steps", "150", "--restarts", "1", "--lr", "0.03", "--lr-decay", "1"]
    free = run(tmp_path / "free", *short, algorithm=algorithm)
    sparse = run(tmp_path / "sparse", *short, "--sparsity", "0.02", "--sparsity-weight", "20",
                 algorithm=algorithm)  # fmt: skip
    assert free["sparsity"] is None
    assert sparse["sparsity"] == {"target": 0.02, "weight": 20.0}
    assert sparse["mean_activation"] < 0.1 < free["mean_activation"]
    on_disk = json.loads((tmp_path / "sparse" / "metrics.json").read_text())
    assert on_disk["mean_activation"] == sparse["mean_activation"]
    assert load_checkpoint(tmp_path / "sparse")["run"]["sparsity"] == sparse["sparsity"]


@pytest.mark.slow
def test_a_sparse_run_resumes_to_where_an_uninterrupted_run_ends(tmp_path, monkeypatch, capsys):
    sparse = ("--sparsity", "0.1", "--sparsity-weight", "3")
    straight = run(tmp_path / "straight", *sparse)
    monkeypatch.setattr(schedule, "MIN_CHECKPOINT_INTERVAL", 5)
    press_ctrl_c_after_first_call(monkeypatch, loop, "save_checkpoint")  # during step 5's save
    folder = tmp_path / "resumed"
    assert interrupted(capsys, run, folder, *sparse).startswith("Interrupted at step 6;")
    monkeypatch.undo()
    before = (folder / CHECKPOINT).read_bytes()
    for other, says in [
        ((), "sparsity: checkpoint {'target': 0.1, 'weight': 3.0} vs now None"),
        (("--sparsity", "0.1"), "vs now {'target': 0.1, 'weight': 1.0}"),
        (("--sparsity", "0.2", "--sparsity-weight", "3"), "vs now {'target': 0.2, 'weight': 3.0}"),
    ]:
        with pytest.raises(SystemExit, match=re.escape(says)):
            run(folder, "--resume", *other)
    assert (folder / CHECKPOINT).read_bytes() == before
    resumed = run(folder, "--resume", *sparse)
    same_run(tmp_path / "straight", straight, folder, resumed)
    assert straight["mean_activation"] == resumed["mean_activation"]
    assert resumed["sparsity"] == {"target": 0.1, "weight": 3.0}


class RunsCode:
    """Unpickling this makes the folder ``made``: a stand-in for code in a pickle."""

    def __init__(self, made: Path) -> None:
        self.made = made

    def __reduce__(self):
        return (os.mkdir, (str(self.made),))


def refused(folder: Path, *extra: str) -> str:
    """The one-line error with which a run in ``folder`` refuses its checkpoint."""
    with pytest.raises(SystemExit) as info:
        run(folder, *extra)
    message = str(info.value.code)
    assert "\n" not in message and " is not a checkpoint this release reads " in message
    assert message.endswith(
        "Start a new run instead: the same command without --resume, with another --out."
    )
    return message


@pytest.mark.slow
def test_a_pickled_checkpoint_is_refused_without_running_its_code(finished, tmp_path):
    made = tmp_path / "made_by_unpickling"
    # the release before pickled its checkpoint.pkl: neither resumed nor overwritten
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / LEGACY_CHECKPOINT).write_bytes(pickle.dumps({"step": 12, "code": RunsCode(made)}))
    for extra in (("--resume",), ()):
        assert refused(legacy, *extra).startswith(f"error: {legacy / LEGACY_CHECKPOINT} ")
    assert sorted(path.name for path in legacy.iterdir()) == [LEGACY_CHECKPOINT]
    # a checkpoint.npz that holds a pickled object array, or that is a pickle
    folder = copy_of(finished["rws"][0], tmp_path)
    with np.load(folder / CHECKPOINT) as npz:
        arrays = dict(npz)
    np.savez(folder / CHECKPOINT, **arrays, extra=np.array([RunsCode(made)], dtype=object))
    assert refused(folder, "--resume").startswith(f"error: {folder / CHECKPOINT} ")
    (folder / CHECKPOINT).write_bytes(pickle.dumps(RunsCode(made)))
    refused(folder, "--resume")
    assert not made.exists()


@pytest.mark.skipif(has_gpu(), reason="checks the message shown without a GPU")
def test_cuda_without_gpu_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no GPU"):
        run(tmp_path, "--device", "cuda")
    assert not (tmp_path / CHECKPOINT).exists()


@pytest.mark.slow
def test_module_entry_point_rejects_bad_flags():
    result = subprocess.run(
        [sys.executable, "-m", "numpyro_wakesleep", "train", "--dataset", "bars", "--out", "x"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--algorithm" in result.stderr
    assert "python -m numpyro_wakesleep" in result.stderr


# -- the machine's helpers, against exact enumeration ----------------------------------------


def all_images(num_visible: int) -> np.ndarray:
    return np.array(list(itertools.product((0, 1), repeat=num_visible)), dtype=np.float64)


def test_generative_weights_are_float64_in_the_layout_of_wakesleep_exact():
    machine = HelmholtzMachine(5, (3, 2))
    params = random_params(machine, 0, 1.0, 1.0)
    top, layers = machine.generative_weights(params)
    assert top.dtype == np.float64 and top.shape == (2,)
    assert [(w.shape, b.shape) for w, b in layers] == [((5, 3), (5,)), ((3, 2), (3,))]
    assert all(w.dtype == b.dtype == np.float64 for w, b in layers)
    weight = params["helmholtz_generative.layers.0.weight"]
    np.testing.assert_array_equal(layers[0][0], np.asarray(weight, dtype=np.float64))
    with pytest.raises(KeyError, match="other_generative"):
        HelmholtzMachine(5, (3, 2), name="other").generative_weights(params)


@pytest.mark.slow
def test_exact_likelihood_of_generative_weights_equals_the_importance_estimate():
    # 3-2 hidden units above 6 pixels, generative weights large enough that a wrong layout
    # or a wrong layer order would move log p(x) by far more than the Monte Carlo error; a
    # diffuse guide keeps the importance weights' variance small
    machine = HelmholtzMachine(6, (3, 2))
    params = random_params(machine, 1, 1.5, 0.5)
    x = all_images(6)[::5]  # 13 images
    exact = helmholtz_log_marginal(x, *machine.generative_weights(params))
    num_particles = 40_000
    log_w = importance_log_weights(
        machine.model, machine.guide, params, jnp.asarray(x, jnp.float32),
        rng_key=random.PRNGKey(2), num_particles=num_particles, chunk_size=10_000,
    )  # fmt: skip
    assert log_w.shape == (num_particles, len(x))
    log_w = np.asarray(log_w, dtype=np.float64)
    w = np.exp(log_w - log_w.max(axis=0))
    estimate = np.log(w.mean(axis=0)) + log_w.max(axis=0)
    relative_se = w.std(axis=0) / w.mean(axis=0) / np.sqrt(num_particles)
    assert np.all(relative_se < 0.05), relative_se
    np.testing.assert_array_less(np.abs(estimate - exact), 5 * relative_se + 1e-4)
    # the running log-sum-exp over chunks gives the same estimate from the same draws
    running = importance_log_likelihood(
        machine.model, machine.guide, params, jnp.asarray(x, jnp.float32),
        rng_key=random.PRNGKey(2), num_particles=num_particles, chunk_size=10_000,
    )  # fmt: skip
    assert running.shape == (len(x),)
    np.testing.assert_allclose(np.asarray(running), estimate, atol=2e-4)


def test_importance_log_likelihood_validates_its_counts():
    machine = HelmholtzMachine(4, (2,))
    params = random_params(machine, 0, 1.0, 1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        importance_log_likelihood(
            machine.model, machine.guide, params, jnp.zeros((3, 4)),
            rng_key=random.PRNGKey(0), num_particles=10, chunk_size=0,
        )  # fmt: skip


def test_samples_are_binary_uint8_of_the_requested_shape():
    machine = HelmholtzMachine(7, (3,))
    params = random_params(machine, 0, 1.0, 1.0)
    samples = machine.sample(params, random.PRNGKey(1), 25)
    assert isinstance(samples, jax.Array)
    assert samples.dtype == jnp.uint8 and samples.shape == (25, 7)
    assert set(np.unique(np.asarray(samples))) <= {0, 1}
    again = machine.sample(params, random.PRNGKey(1), 25)
    assert np.array_equal(np.asarray(samples), np.asarray(again))  # the key decides
    with pytest.raises(ValueError, match="num_samples"):
        machine.sample(params, random.PRNGKey(1), 0)


def test_samples_follow_the_exact_marginal_of_the_generative_model():
    machine = HelmholtzMachine(5, (3, 2))
    params = random_params(machine, 3, 1.5, 1.0)
    images = all_images(5)
    p_x = np.exp(helmholtz_log_marginal(images, *machine.generative_weights(params)))
    assert abs(p_x.sum() - 1.0) < 1e-9
    num_samples = 100_000
    samples = np.asarray(machine.sample(params, random.PRNGKey(4), num_samples), dtype=np.float64)

    # pixel means: each a binomial proportion, sd sqrt(p (1 - p) / S)
    pixel_p = p_x @ images
    sd = np.sqrt(pixel_p * (1 - pixel_p) / num_samples)
    np.testing.assert_array_less(np.abs(samples.mean(axis=0) - pixel_p), 5 * sd)

    # the 32 image frequencies: multinomial counts against the exact p(x), chi-square test
    index = samples @ (2 ** np.arange(4, -1, -1))  # row order of all_images
    counts = np.bincount(index.astype(np.int64), minlength=len(images))
    expected = num_samples * p_x
    rare = expected < 5  # pooled into one cell, so that the chi-square approximation holds
    if rare.any():
        counts = np.append(counts[~rare], counts[rare].sum())
        expected = np.append(expected[~rare], expected[rare].sum())
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < stats.chi2.ppf(0.9999, df=len(counts) - 1), chi2


def test_every_chunk_of_the_importance_estimate_scores_the_same_mini_batch():
    # Exact posterior as guide: every weight equals p(x_i), so the estimate is exact for the
    # mini-batch drawn once; chunks on different mini-batches would mix datapoints.
    import numpyro
    import numpyro.distributions as dist

    data = jnp.linspace(-2.0, 2.0, 40)

    def model():
        with numpyro.plate("data", 40, subsample_size=5) as index:
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            numpyro.sample("x", dist.Normal(z, 1.0), obs=data[index])

    def guide():
        with numpyro.plate("data", 40, subsample_size=5) as index:
            numpyro.sample("z", dist.Normal(data[index] / 2, np.sqrt(0.5)))

    estimate = importance_log_likelihood(
        model, guide, {}, rng_key=random.PRNGKey(3), num_particles=12, chunk_size=4
    )
    # which 5 of the 40 datapoints: the exact log p(x_i) of the batch must match one-to-one
    log_px = np.asarray(dist.Normal(0.0, np.sqrt(2.0)).log_prob(data))
    matches = [np.flatnonzero(np.abs(log_px - e) < 1e-5) for e in np.asarray(estimate)]
    assert all(len(m) >= 1 for m in matches), (estimate, log_px)


def test_machine_bernoulli_scores_like_numpyro_with_the_right_gradient_at_zero_logits():
    # The machine's Bernoulli sites: NumPyro's log-probabilities and support check, and the
    # gradient value - sigmoid(logits) everywhere, also at logits exactly 0 (where the prior
    # logits start), where NumPyro's own Bernoulli(logits=...) is off by 1/2.
    import numpyro
    import numpyro.distributions as dist

    from numpyro_wakesleep.helmholtz import _Bernoulli

    logits = jnp.array([0.0, 1.5, -2.0, 30.0, -30.0])
    for value in (jnp.array([1, 0, 1, 0, 1]), jnp.array([0, 1, 0, 1, 0])):
        expected = dist.Bernoulli(logits=logits).log_prob(value)
        np.testing.assert_allclose(_Bernoulli(logits).log_prob(value), expected, rtol=1e-6)
        grad = jax.grad(lambda lg, v=value: _Bernoulli(lg).log_prob(v).sum())(logits)
        np.testing.assert_allclose(grad, value - jax.nn.sigmoid(logits), rtol=1e-6, atol=1e-7)
    with numpyro.validation_enabled(True), pytest.warns(UserWarning, match="Out-of-support"):
        out_of_support = _Bernoulli(jnp.zeros(2)).log_prob(jnp.array([0.5, 2.0]))
    assert np.all(np.isneginf(out_of_support))
