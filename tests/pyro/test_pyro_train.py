"""``python -m pyro_wakesleep train`` end to end, on tiny settings."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from helpers.trainer import (
    ctrl_c_after_first_checkpoint,
    interrupted,
    press_ctrl_c_after_first_call,
)
from pyro import poutine

from pyro_wakesleep.helmholtz import HelmholtzMachine
from pyro_wakesleep.train import CHECKPOINT, HelmholtzTrainer, _Candidates, main
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
    """The checkpoint in ``folder``, loaded as the trainer does: tensors and plain data only."""
    return torch.load(folder / CHECKPOINT, weights_only=True)


@pytest.mark.parametrize("algorithm", ["rws", "ws"])
@pytest.mark.slow  # trains end to end, as in the NumPyro trainer's tests
def test_writes_every_output(tmp_path, algorithm):
    metrics = run(tmp_path, algorithm=algorithm)
    outputs = ("metrics.json", "samples.npy", "samples.png", "curve.png", CHECKPOINT)
    for name in (*outputs, "diagnostics.json", "khat.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["backend"] == "pyro_wakesleep" and on_disk["algorithm"] == algorithm
    assert on_disk["layers"] == [8, 1] and on_disk["steps"] == 12 and on_disk["particles"] == 3
    assert on_disk["nll_method"] == "exact"
    # an untrained bars machine is far from the 3.43-bit source: KL is large but finite
    assert 0.0 < on_disk["kl_bits"] < 64 and on_disk["train_nll_nats"] > 0
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["sparsity"] is None and 0.0 < on_disk["mean_activation"] < 1.0
    diagnostics = json.loads((tmp_path / "diagnostics.json").read_text())
    assert diagnostics["num_datapoints"] == 500 and diagnostics["num_samples"] == 1000
    assert 0.0 <= diagnostics["fraction_khat_above_0.7"] <= diagnostics["fraction_khat_above_0.5"]
    samples = np.load(tmp_path / "samples.npy")
    assert samples.dtype == np.uint8 and samples.shape == (40, 16)
    assert set(np.unique(samples)) <= {0, 1}


def _same_run(a_folder: Path, b_folder: Path, a: dict, b: dict, steps: int = 12) -> None:
    ca, cb = load_checkpoint(a_folder), load_checkpoint(b_folder)
    assert ca["meta"]["step"] == cb["meta"]["step"] == steps
    assert ca["params"].keys() == cb["params"].keys()
    for name, value in ca["params"].items():
        assert torch.equal(value, cb["params"][name]), name
    assert ca["meta"]["curve"] == cb["meta"]["curve"] and len(ca["meta"]["curve"]) == steps
    assert torch.equal(ca["rng"]["torch"], cb["rng"]["torch"])
    assert ca["rng"]["numpy"] == cb["rng"]["numpy"] and ca["rng"]["random"] == cb["rng"]["random"]
    assert torch.equal(ca["batches"], cb["batches"])
    assert ca.keys() == cb.keys()
    if "chains" in ca:  # jsa: every datapoint's chain, whether it was seen, its age
        assert ca["chains"]["plate"] == cb["chains"]["plate"] == "data"
        assert ca["chains"]["values"].keys() == cb["chains"]["values"].keys()
        for name, value in ca["chains"]["values"].items():
            assert torch.equal(value, cb["chains"]["values"][name]), name
        for key in ("seen", "age"):
            assert torch.equal(ca["chains"][key], cb["chains"][key]), key
    for key in ("train_nll_nats", "test_nll_nats", "kl_bits", "acceptance_rate"):
        assert a.get(key) == b.get(key), key


@pytest.mark.slow  # trains end to end, as in the NumPyro trainer's tests
def test_ctrl_c_saves_a_checkpoint_that_resumes_to_where_an_uninterrupted_run_ends(
    tmp_path, monkeypatch, capsys
):
    # bars' default learning rate decays over --steps: the schedule must survive too
    straight = run(tmp_path / "straight")
    monkeypatch.setattr(schedule, "MIN_CHECKPOINT_INTERVAL", 5)
    press_ctrl_c_after_first_call(monkeypatch, loop, "save_checkpoint")  # during step 5's save
    folder = tmp_path / "resumed"
    assert interrupted(capsys, run, folder) == (
        f"Interrupted at step 6; checkpoint saved in {folder}. Resume with the same command "
        "plus --resume."
    )  # the step under way when Ctrl-C came was finished and saved
    assert load_checkpoint(folder)["meta"]["step"] == 6
    assert not (folder / "metrics.json").exists()
    monkeypatch.undo()
    resumed = run(folder, "--resume")
    _same_run(tmp_path / "straight", folder, straight, resumed)


@pytest.mark.slow  # trains end to end, as in the NumPyro trainer's tests
def test_jsa_writes_its_acceptance_rate_and_checkpoints_its_chains(tmp_path):
    metrics = run(tmp_path, algorithm="jsa")
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics)) and on_disk["algorithm"] == "jsa"
    assert 0.0 < on_disk["acceptance_rate"] <= 1.0 and on_disk["nll_method"] == "exact"
    for name in ("samples.npy", "samples.png", "curve.png", "diagnostics.json", "khat.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    chains = load_checkpoint(tmp_path)["chains"]  # loaded with weights_only=True
    num_train = len(load_dataset("bars").train)
    assert chains["plate"] == "data"
    assert {name: tuple(v.shape) for name, v in chains["values"].items()} == {
        "h1": (num_train, 8),
        "h2": (num_train, 1),
    }
    assert chains["seen"].dtype == torch.bool and chains["seen"].shape == (num_train,)
    # the kept start's chains: its selection step and the 11 steps after it, 8 images each
    assert 8 < int(chains["seen"].sum()) <= 12 * 8
    assert int(chains["age"].max()) <= 11 and not chains["age"][~chains["seen"]].any()


@pytest.mark.slow  # trains end to end, as in the NumPyro trainer's tests
def test_jsa_resumes_with_its_chains_to_where_an_uninterrupted_run_ends(
    tmp_path, monkeypatch, capsys
):
    straight = run(tmp_path / "straight", algorithm="jsa")
    monkeypatch.setattr(schedule, "MIN_CHECKPOINT_INTERVAL", 5)
    press_ctrl_c_after_first_call(monkeypatch, loop, "save_checkpoint")  # during step 5's save
    folder = tmp_path / "resumed"
    jsa = partial(run, algorithm="jsa")
    assert interrupted(capsys, jsa, folder).startswith("Interrupted at step 6;")
    assert int(load_checkpoint(folder)["chains"]["seen"].sum()) > 0
    monkeypatch.undo()
    resumed = run(folder, "--resume", algorithm="jsa")
    _same_run(tmp_path / "straight", folder, straight, resumed)
    assert np.array_equal(
        np.load(folder / "samples.npy"), np.load(tmp_path / "straight" / "samples.npy")
    )


def _trainer(tmp_path: Path, algorithm: str, *extra: str) -> HelmholtzTrainer:
    argv = ["train", "--dataset", "bars", "--algorithm", algorithm, *TINY, *extra,
            "--out", str(tmp_path)]  # fmt: skip
    trainer = HelmholtzTrainer()
    trainer.build(parse_train_args("pyro_wakesleep", argv), load_dataset("bars"))
    return trainer


class NoOptimiser:
    """An optimiser that changes nothing."""

    def __call__(self, params):
        pass

    def step(self):
        pass


class RecordingSVI:
    """Stands in for ``pyro.infer.SVI``: records what a trainer's step passes to the loss."""

    model = guide = None
    optim = NoOptimiser()

    def loss_and_grads(self, model, guide, x, **kwargs):
        self.x, self.kwargs = x, kwargs
        return torch.tensor(0.0)


@pytest.mark.parametrize("algorithm", ["ws", "rws", "jsa"])
def test_only_jsa_passes_the_rows_and_draws_them_without_replacement(tmp_path, algorithm):
    trainer = _trainer(tmp_path, algorithm)
    svi = RecordingSVI()
    num_data = len(trainer._train_x)
    for _ in range(20):
        trainer._step(svi)
        assert svi.kwargs.keys() == ({"num_data", "index"} if algorithm == "jsa" else {"num_data"})
        if algorithm == "jsa":
            index = svi.kwargs["index"]
            assert len(index.unique()) == len(index) == 8
            assert torch.equal(svi.x, trainer._train_x[index])
    if algorithm != "jsa":  # the draws of earlier releases: with replacement, one generator
        batches = torch.Generator().manual_seed(0)
        for _ in range(20):
            index = torch.randint(num_data, (8,), generator=batches)
        assert torch.equal(svi.x, trainer._train_x[index])


def test_a_jsa_step_advances_the_chains_of_exactly_the_rows_it_drew(tmp_path):
    # the chains are keyed by the rows passed as index=
    trainer = _trainer(tmp_path, "jsa")
    num_data = len(trainer._train_x)
    batches = torch.Generator().manual_seed(0)
    drawn = [torch.randperm(num_data, generator=batches)[:8] for _ in range(3)]
    for _ in range(3):
        trainer.step()
    seen = trainer._objective.state_dict()["seen"]
    assert set(seen.nonzero().flatten().tolist()) == set(torch.cat(drawn).tolist())


def test_jsa_restarts_keep_each_candidates_chains_with_it(tmp_path):
    trainer = _trainer(tmp_path, "jsa")
    trainer.train_candidates(3, 2, lambda done: None)
    chains = [trainer._candidate(index)["chains"] for index in range(3)]
    # each candidate's chains saw only its own 2 mini-batches of 8 (shared ones would see 48)
    assert all(0 < int(c["seen"].sum()) <= 16 for c in chains)
    assert not torch.equal(chains[0]["seen"], chains[1]["seen"])
    trainer.keep_candidate(1)
    trainer.write_checkpoint(tmp_path / CHECKPOINT, {"step": 2})
    kept = load_checkpoint(tmp_path)["chains"]
    for name, value in chains[1]["values"].items():
        assert torch.equal(kept["values"][name], value), name
    assert torch.equal(kept["seen"], chains[1]["seen"])
    assert torch.equal(kept["age"], chains[1]["age"])


def _candidate_traces(machine, x, fixed=None):
    """Guide and model traces of ``machine`` on ``x``; the guide's latents ``fixed`` if given."""
    if fixed is None:
        guide_trace = poutine.trace(machine.guide).get_trace(x, num_data=100)
        model = poutine.replay(machine.model, trace=guide_trace)
    else:
        guide = poutine.condition(machine.guide, data=fixed)
        guide_trace = poutine.trace(guide).get_trace(x, num_data=100)
        model = poutine.condition(machine.model, data=fixed)
    return guide_trace, poutine.trace(model).get_trace(x, num_data=100)


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_stacked_candidates_are_the_machines_side_by_side(visible):
    # the stack's densities and their gradients, candidate by candidate, are those of
    # each machine alone on its own mini-batch and the same latents
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    machines = [HelmholtzMachine(6, (4, 3), visible=visible) for _ in range(3)]
    stack = _Candidates(machines)
    x = torch.randint(0, 2, (3, 5, 6)).float()  # 3 candidates, 5 datapoints each
    guide_trace, model_trace = _candidate_traces(stack, x)
    assert guide_trace.nodes["candidates"]["type"] == "sample"  # the plate is there
    stacked = {name: p for name, p in pyro.get_param_store().named_parameters()}
    log_w = model_trace.log_prob_sum() - guide_trace.log_prob_sum()
    stacked_grads = torch.autograd.grad(log_w, list(stacked.values()))
    for r, machine in enumerate(machines):
        fixed = {f"h{layer}": guide_trace.nodes[f"h{layer}"]["value"][r] for layer in (1, 2)}
        pyro.clear_param_store()  # the machine alone, with its own parameters
        alone_guide, alone_model = _candidate_traces(machine, x[r], fixed)
        for ours, alone in ((guide_trace, alone_guide), (model_trace, alone_model)):
            for name in ("h1", "h2") if ours is guide_trace else ("h2", "h1", "x"):
                site, own = ours.nodes[name], alone.nodes[name]
                assert torch.allclose(site["fn"].log_prob(site["value"])[r],
                                      own["fn"].log_prob(own["value"]), atol=1e-5), (r, name)  # fmt: skip
        alone_w = alone_model.log_prob_sum() - alone_guide.log_prob_sum()
        own = dict(machine.generative.named_parameters(prefix="helmholtz_generative$$$"))
        own |= dict(machine.recognition.named_parameters(prefix="helmholtz_recognition$$$"))
        own = {name.replace("$$$.", "$$$"): p for name, p in own.items()}
        grads = torch.autograd.grad(alone_w, [own[name] for name in stacked])
        for name, ours, alone in zip(stacked, stacked_grads, grads, strict=True):
            assert torch.allclose(ours[r], alone, atol=1e-4), (r, name)


@pytest.mark.parametrize("algorithm", ["rws", "ws"])
def test_a_stack_of_one_candidate_trains_as_the_machine_alone(tmp_path, algorithm):
    # the same draws in the same order: the stacked path and the one-by-one path agree
    # (eager: TorchScript's optimiser may hand a graph's draws out in another order)
    stacked = _trainer(tmp_path, algorithm, "--no-jit")  # seeds Pyro's generators
    curve = stacked.train_candidates(1, 5, lambda done: None)
    alone = _trainer(tmp_path, algorithm, "--no-jit")  # seeds them again
    reference = alone._train_one_by_one(1, 5, lambda done: None)
    assert curve.shape == reference.shape == (1, 5)
    np.testing.assert_allclose(curve, reference, rtol=1e-5)
    stacked.keep_candidate(0)
    kept = {name: value.clone() for name, value in pyro.get_param_store().items()}
    alone.keep_candidate(0)
    for name, value in pyro.get_param_store().items():
        assert kept[name].shape == value.shape
        assert torch.allclose(kept[name], value, atol=1e-5), name


def test_stacked_candidates_keep_their_own_parameters_and_moments(tmp_path):
    trainer = _trainer(tmp_path, "rws")
    curves = trainer.train_candidates(3, 4, lambda done: None)
    assert curves.shape == (3, 4) and np.isfinite(curves).all()
    assert len({tuple(c) for c in curves}) == 3  # own starts, own mini-batches
    stacked = {name: value.detach().clone() for name, value in pyro.get_param_store().items()}
    stack_optim = trainer._candidate.args[0]["optim"]  # the stack's state, before the pick
    moments = {name: s["optimizer"]["state"][0]["exp_avg"] for name, s in stack_optim.items()}
    trainer.keep_candidate(2)
    for name, value in pyro.get_param_store().items():
        assert torch.equal(value.detach(), stacked[name][2]), name
    trainer.write_checkpoint(tmp_path / CHECKPOINT, {"step": 4})
    for name, state in load_checkpoint(tmp_path)["optim"].items():
        assert torch.equal(state["optimizer"]["state"][0]["exp_avg"], moments[name][2]), name
        assert int(state["optimizer"]["state"][0]["step"]) == 4


@pytest.mark.slow  # trains end to end, as in the NumPyro trainer's tests
def test_a_keyboard_interrupt_between_safe_points_exits_cleanly_too(tmp_path, monkeypatch, capsys):
    # a second Ctrl-C raises at once; the last checkpoint written is the one to resume
    ctrl_c_after_first_checkpoint(monkeypatch)
    assert interrupted(capsys, run, tmp_path).startswith(
        f"Interrupted; the last checkpoint is in {tmp_path}."
    )
    assert load_checkpoint(tmp_path)["meta"]["step"] == 5
    monkeypatch.undo()
    assert run(tmp_path, "--resume")["steps"] == 12


@pytest.mark.slow  # trains end to end, as in the NumPyro trainer's tests
def test_ctrl_c_in_the_final_evaluation_leaves_a_run_that_resume_evaluates(
    tmp_path, monkeypatch, capsys
):
    straight = run(tmp_path / "straight")
    press_ctrl_c_after_first_call(monkeypatch, evaluation, "mean_nll")  # the training NLL
    folder = tmp_path / "resumed"
    assert interrupted(capsys, run, folder) == (
        f"Interrupted during the final evaluation; the trained machine is saved in {folder}. "
        "Resume with the same command plus --resume to redo the evaluation."
    )
    assert load_checkpoint(folder)["meta"]["step"] == 12
    assert not (folder / "metrics.json").exists()
    monkeypatch.undo()
    resumed = run(folder, "--resume")
    _same_run(tmp_path / "straight", folder, straight, resumed)
    assert np.array_equal(
        np.load(folder / "samples.npy"), np.load(tmp_path / "straight" / "samples.npy")
    )


@pytest.mark.slow  # trains end to end, as in the NumPyro trainer's tests
def test_reported_nlls_are_the_exact_mean_per_image(tmp_path):
    metrics = run(tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["nll_method"] == "exact"
    for name, value in load_checkpoint(tmp_path)["params"].items():
        pyro.param(name, value)
    top, layers = HelmholtzMachine(16, (8, 1)).generative_weights()
    data = load_dataset("bars")
    for split, key in ((data.test, "test_nll_nats"), (data.train, "train_nll_nats")):
        log_px = helmholtz_log_marginal(split, top, layers)
        # a sum, or a mean over other images or another machine, is far outside this
        assert metrics[key] == pytest.approx(-log_px.mean(), rel=1e-9, abs=0), key


@pytest.mark.slow  # trains end to end, as in the NumPyro trainer's tests
def test_extended_run_ends_where_a_longer_run_ends(tmp_path):
    # with a constant learning rate and one start a run can also be resumed with more --steps
    constant = ("--lr-decay", "1", "--restarts", "1")
    straight = run(tmp_path / "straight", *constant)
    argv = ["train", "--dataset", "bars", "--algorithm", "rws", *TINY, *constant, "--steps", "5"]
    main([*argv, "--out", str(tmp_path / "resumed")])
    resumed = run(tmp_path / "resumed", "--resume", *constant)
    _same_run(tmp_path / "straight", tmp_path / "resumed", straight, resumed)


@pytest.mark.slow  # trains end to end, as in the NumPyro trainer's tests
def test_existing_checkpoint_is_never_overwritten_without_resume(tmp_path):
    run(tmp_path)
    before = (tmp_path / CHECKPOINT).read_bytes()
    with pytest.raises(SystemExit, match="--resume"):
        run(tmp_path)
    assert (tmp_path / CHECKPOINT).read_bytes() == before


@pytest.mark.slow  # trains end to end, as in the NumPyro trainer's tests
def test_resume_needs_a_checkpoint_with_the_same_settings(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint.pt"):
        run(tmp_path, "--resume")
    run(tmp_path)
    with pytest.raises(SystemExit, match="lr"):
        run(tmp_path, "--resume", "--lr", "0.5")


# -- --sparsity ------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["ws", "rws", "jsa"])
def test_the_sparsity_flags_reach_the_objective(tmp_path, algorithm):
    assert _trainer(tmp_path, algorithm)._objective.sparsity is None
    sparse = _trainer(tmp_path, algorithm, "--sparsity", "0.1", "--sparsity-weight", "2.5")
    assert (sparse._objective.sparsity.target, sparse._objective.sparsity.weight) == (0.1, 2.5)
    assert sparse._objective.sparsity.sites is None  # every hidden layer
    default_weight = _trainer(tmp_path, algorithm, "--sparsity", "0.2")._objective.sparsity
    assert (default_weight.target, default_weight.weight) == (0.2, 1.0)


def test_mean_activation_is_the_guides_first_layer_probability_averaged(tmp_path):
    trainer = _trainer(tmp_path, "rws", "--layers", "5")
    images = load_dataset("bars").train[:30]
    recognition = trainer._machine.recognition[0]
    with torch.no_grad():
        expected = torch.sigmoid(recognition(torch.as_tensor(images, dtype=torch.float32)))
    state = torch.get_rng_state()
    assert trainer.mean_activation(images, None) == pytest.approx(float(expected.mean()), 1e-6)
    assert torch.equal(torch.get_rng_state(), state)  # the other outputs draw as before


@pytest.mark.slow  # trains end to end, as in the NumPyro trainer's tests
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
    assert load_checkpoint(tmp_path / "sparse")["meta"]["run"]["sparsity"] == sparse["sparsity"]


@pytest.mark.slow  # trains end to end, as in the NumPyro trainer's tests
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
    _same_run(tmp_path / "straight", folder, straight, resumed)
    assert straight["mean_activation"] == resumed["mean_activation"]
    assert resumed["sparsity"] == {"target": 0.1, "weight": 3.0}


class RunsCode:
    """Unpickling this makes the folder ``made``: a stand-in for code in a pickle."""

    def __init__(self, made: Path) -> None:
        self.made = made

    def __reduce__(self):
        return (os.mkdir, (str(self.made),))


@pytest.mark.slow  # trains end to end, as in the NumPyro trainer's tests
def test_a_pickled_checkpoint_is_refused_without_running_its_code(tmp_path, capsys):
    # what the release before wrote: pickled parameter-store state (constraint objects) and
    # NumPy generator state, beside an object whose unpickling runs code
    pyro.param("helmholtz_generative.top_logits", torch.zeros(1))
    made = tmp_path / "made_by_unpickling"
    legacy = {
        "step": 12,
        "params": pyro.get_param_store().get_state(),
        "rng": pyro.util.get_rng_state(),
        "extra": RunsCode(made),
    }
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(legacy, folder / CHECKPOINT)
    before = (folder / CHECKPOINT).read_bytes()
    with pytest.raises(SystemExit) as info:
        run(folder, "--resume")
    message = str(info.value.code)
    assert message.startswith(f"error: {folder / CHECKPOINT} is not a checkpoint this release")
    assert message.endswith(
        "Start a new run instead: the same command without --resume, with another --out."
    )
    assert "\n" not in message
    assert not made.exists() and (folder / CHECKPOINT).read_bytes() == before
    assert not (folder / "metrics.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_gpu_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no CUDA device"):
        run(tmp_path, "--device", "cuda")


@pytest.mark.slow
def test_module_entry_point_rejects_bad_flags():
    result = subprocess.run(
        [sys.executable, "-m", "pyro_wakesleep", "train", "--dataset", "bars", "--out", "x"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--algorithm" in result.stderr


def _optimiser_run(optimiser, steps, resume=None):
    """Train a small machine with ``optimiser`` for ``steps`` steps, alternating phases (so
    some steps leave a side's gradients at None); with ``resume = (params, optimiser
    state)``, from those, as the trainer's --resume does. The final parameters (as the param
    store's unconstrained state) and the optimiser's state."""
    import pyro_wakesleep

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    machine = HelmholtzMachine(16, (4, 2))
    x = (torch.rand(20, 16) < 0.3).float()
    loss = pyro_wakesleep.ReweightedWakeSleep(num_particles=3, alternate=True)
    svi = pyro.infer.SVI(machine.model, machine.guide, optimiser, loss)
    if resume is not None:
        # a copy: torch's load_state_dict keeps the saved step counters and steps them in place
        params, saved = copy.deepcopy(resume)
        pyro.clear_param_store()
        pyro.get_param_store().set_state(
            {
                "params": {k: v.clone().requires_grad_() for k, v in params.items()},
                "constraints": dict.fromkeys(params, torch.distributions.constraints.real),
            }
        )
        svi.optim.set_state(saved)
    for _ in range(steps):
        svi.step(x)
        if hasattr(svi.optim, "step"):  # a learning-rate schedule
            svi.optim.step()
    params = {
        k: v.detach().clone() for k, v in pyro.get_param_store().get_state()["params"].items()
    }
    return params, svi.optim.get_state()


@pytest.mark.parametrize("decay", [None, 0.1])
def test_joint_adam_updates_as_pyros_per_parameter_optimisers(decay):
    from functools import partial

    import pyro.optim

    from pyro_wakesleep import JointAdam
    from wakesleep.trainer.schedule import learning_rate

    lr_lambda = None if decay is None else partial(learning_rate, 1.0, decay, 10)

    def pyros():
        if lr_lambda is None:
            return pyro.optim.Adam({"lr": 0.05})
        return pyro.optim.LambdaLR(
            {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05}, "lr_lambda": lr_lambda}
        )

    def joint():
        return JointAdam(0.05, lr_lambda)

    expected = _optimiser_run(pyros(), 7)
    got = _optimiser_run(joint(), 7)
    for name in expected[0]:  # bit for bit
        assert torch.equal(got[0][name], expected[0][name]), name
    assert got[1].keys() == expected[1].keys()
    # the state's layout is PyroOptim's: either's checkpoint continues in the other exactly
    continued, _ = _optimiser_run(pyros(), 4, resume=expected)
    for make, saved in ((joint, expected), (pyros, got), (joint, got)):
        resumed, _ = _optimiser_run(make(), 4, resume=saved)
        for name in continued:
            assert torch.equal(resumed[name], continued[name]), (make.__name__, name)


def test_several_processes_stop_at_a_step_they_agree_on(tmp_path, capsys):
    # a Ctrl-C in one of several processes takes effect at the next step where they compare
    # their flags (every LOG_EVERY steps, and at checkpoints), never at a step of its own
    import signal

    asked = []

    class OneOfTwo(HelmholtzTrainer):
        processes = 2

        def __init__(self) -> None:
            super().__init__()
            self.steps_done = 0

        def any_process(self, flag: bool) -> bool:
            asked.append((self.steps_done, flag))
            return flag

        def step(self) -> None:
            super().step()
            self.steps_done += 1
            if self.steps_done == 3:
                signal.raise_signal(signal.SIGINT)

    argv = ["train", "--dataset", "bars", "--algorithm", "rws", *TINY[:-2], "--restarts", "1",
            "--steps", "400", "--out", str(tmp_path)]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        loop.main(OneOfTwo(), argv)
    assert info.value.code == 130
    assert asked == [(loop.LOG_EVERY, True)]  # asked once, at the first agreed step
    assert load_checkpoint(tmp_path)["meta"]["step"] == loop.LOG_EVERY
    assert "Traceback" not in capsys.readouterr().err
