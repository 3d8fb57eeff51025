"""Data-parallel NumPyro training (``--devices``, several processes; ``docs/design.md`` §11).

The training runs go in subprocesses: this test process has JAX started with one CPU
device, and host devices (and ``jax.distributed.initialize``) must come before JAX starts.

Tolerances. A sharded step draws the same batch and the same particles as one device
(``jax_threefry_partitionable``) and sums the gradients over devices: only the order of
float32 sums differs. So

- the losses agree to ``rtol=1e-6``: a sum of 100 rows in float32 (eps 1.2e-7) rounds by
  ~1e-7 relative, whatever the order; 1e-6 leaves a factor ~10;
- the parameters after :data:`STEPS` Adam steps agree to ``atol=1e-6``: the parameters
  are ~0.1-1 in size, where float32's spacing is ~1e-8-1e-7, and Adam's step (lr × a ratio
  of moments) moves them by ~lr = 3e-3 per step, so a rounding in the gradient moves them
  by ~lr × 1e-7 — far below 1e-6; a wrong batch, wrong particles or an unscaled sum across
  devices moves them by ~lr, 3000 times more;
- a full run's exact test NLL (digits, enumerated: no Monte Carlo noise) agrees within
  ``steps × eps × NLL`` = 200 × 1.2e-7 × 25 ≈ 6e-4 nats: one relative rounding per step,
  accumulated; two seeds differ by ~0.07 nats after the same 200 steps, 100 times more.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from numpyro_wakesleep import distributed
from numpyro_wakesleep.train import HelmholtzTrainer
from wakesleep.trainer.arguments import parse_train_args

SLOW = pytest.mark.slow
STEPS = 3
#: (name, flags): the plain step, jsa's chains (replicated) and vmapped --restarts.
CASES = {
    "rws": ["--algorithm", "rws"],
    "jsa": ["--algorithm", "jsa"],
    "restarts": ["--algorithm", "rws", "--restarts", "2"],
}
#: Trains every case for STEPS steps with --devices of argv[2] (one process or several, as
#: the environment says) and writes process 0's losses, parameters and chains to argv[1].
STEPS_SCRIPT = """
import json, sys
import jax
import numpy as np
from numpyro_wakesleep.train import HelmholtzTrainer
from wakesleep.trainer.arguments import parse_train_args
from wakesleep.trainer.runs import load_data

out, devices, steps, cases = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
results = {}
for name, flags in cases.items():
    trainer = HelmholtzTrainer()
    args = parse_train_args(trainer.name, ["train", "--dataset", "digits", *flags,
        "--devices", devices, "--batch-size", "100", "--out", "unused"])
    trainer.set_up_devices(args)
    with trainer.on_device(args.device):
        trainer.build(args, load_data(args))
        if args.restarts > 1:
            curves = trainer.train_candidates(args.restarts, steps, lambda done: None)
            trainer.keep_candidate(1)
            losses = curves[1]
        else:
            trainer.start()
            for _ in range(steps):
                trainer.step()
            losses = np.asarray(trainer.take_losses())
            # the sharded step sums over devices: all-reduces in its compiled program
            step = trainer._jitted_step.lower(trainer._state, trainer._batch_key, trainer._train_x)
            results[f"{name}/all_reduces"] = np.asarray(step.compile().as_text().count("all-reduce"))
        state = trainer._local(trainer._state)
        results[f"{name}/losses"] = losses
        results[f"{name}/world_size"] = np.asarray(trainer.world_size)
        for key, value in trainer._svi.get_params(state).items():
            results[f"{name}/params/{key}"] = np.asarray(value)
        for path, value in jax.tree_util.tree_flatten_with_path(state.mutable_state)[0]:
            results[f"{name}/mutable/{jax.tree_util.keystr(path)}"] = np.asarray(value)
if trainer.is_main:
    np.savez(out, **results)
"""


def _python(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _finish(process: subprocess.Popen, timeout: float = 120) -> str:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(f"timed out (a hang?):\n{stderr[-3000:]}") from None
    assert process.returncode == 0, stderr[-3000:]
    return stdout


def _steps(out: Path, devices: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    argv = [str(out), str(devices), str(STEPS), json.dumps(CASES)]
    return _python("-c", STEPS_SCRIPT, *argv, env=env)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _assert_same_updates(reference: Path, sharded: Path, world_size: int) -> None:
    with np.load(reference) as one, np.load(sharded) as many:
        assert sorted(one.files) == sorted(many.files)
        for name in CASES:
            assert int(one[f"{name}/world_size"]) == 1
            assert int(many[f"{name}/world_size"]) == world_size
        for key in one.files:
            if key.endswith("/world_size"):
                continue
            if key.endswith("/all_reduces"):
                assert int(one[key]) == 0 and int(many[key]) > 0, key
                continue
            if key.endswith("/losses"):
                assert len(one[key]) == STEPS
                np.testing.assert_allclose(many[key], one[key], rtol=1e-6, err_msg=key)
            else:  # parameters and jsa's chains (0/1 values, ages: exact)
                np.testing.assert_allclose(many[key], one[key], rtol=0, atol=1e-6, err_msg=key)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory) -> Path:
    """The single-process, single-device updates of every case."""
    out = tmp_path_factory.mktemp("one") / "updates.npz"
    _finish(_steps(out, 1))
    return out


@SLOW
def test_two_cpu_devices_update_as_one_device_on_the_same_batch_and_particles(one_device, tmp_path):
    out = tmp_path / "updates.npz"
    _finish(_steps(out, 2))
    _assert_same_updates(one_device, out, world_size=2)


@SLOW
def test_two_processes_update_as_one_process(one_device, tmp_path):
    out = tmp_path / "updates.npz"
    env = {
        distributed.COORDINATOR: f"127.0.0.1:{_free_port()}",
        distributed.NUM_PROCESSES: "2",
    }
    processes = [_steps(out, 1, env={**env, distributed.PROCESS_ID: str(i)}) for i in (0, 1)]
    for process in processes:
        _finish(process)
    _assert_same_updates(one_device, out, world_size=2)


@SLOW
def test_a_short_run_on_two_devices_has_the_test_nll_of_one_device(tmp_path):
    steps = 200
    flags = ["--dataset", "digits", "--algorithm", "rws", "--steps", str(steps),
             "--num-samples", "100"]  # fmt: skip
    runs = {
        devices: _python(
            "-m",
            "numpyro_wakesleep",
            "train",
            *flags,
            "--devices",
            str(devices),
            "--out",
            str(tmp_path / f"devices{devices}"),
        )  # fmt: skip
        for devices in (1, 2)
    }
    metrics = {}
    for devices, process in runs.items():
        _finish(process, timeout=240)
        metrics[devices] = json.loads((tmp_path / f"devices{devices}" / "metrics.json").read_text())
    assert metrics[1]["world_size"] == 1 and metrics[2]["world_size"] == 2
    assert metrics[2]["nll_method"] == "exact"
    tolerance = steps * np.finfo(np.float32).eps * metrics[1]["test_nll_nats"]
    assert abs(metrics[2]["test_nll_nats"] - metrics[1]["test_nll_nats"]) < tolerance


@SLOW
def test_a_batch_size_that_devices_do_not_divide_is_one_line_and_creates_no_folder(tmp_path):
    out = tmp_path / "run"
    process = _python("-m", "numpyro_wakesleep", "train", "--dataset", "digits", "--algorithm", "rws",
                      "--devices", "2", "--batch-size", "99", "--out", str(out))  # fmt: skip
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert stderr.startswith("error: --batch-size 99 must be a multiple of --devices 2")
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert not out.exists()


# -- fast: what needs no second device --------------------------------------------------------
def test_devices_that_jax_started_without_are_an_error_that_says_what_to_do():
    if len(jax.local_devices(backend="cpu")) >= 2:
        pytest.skip("this process already has two CPU devices")
    trainer = HelmholtzTrainer()
    args = parse_train_args(trainer.name, ["train", "--dataset", "digits", "--algorithm", "rws",
                                           "--devices", "2",
                                           "--out", "unused"])  # fmt: skip
    with pytest.raises(SystemExit, match=r"error: --devices 2 needs 2 cpu devices .* sees 1: "
                       r".*xla_force_host_platform_device_count=2"):  # fmt: skip
        trainer.set_up_devices(args)


def test_the_environment_names_the_processes():
    assert distributed.processes_from_environment({}) is None
    explicit = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
                "JAX_PROCESS_ID": "3"}  # fmt: skip
    assert distributed.processes_from_environment(explicit) == distributed.Processes(
        "10.0.0.1:1234", 4, 3
    )
    slurm = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0"}
    assert distributed.processes_from_environment({**slurm, "SLURM_NTASKS": "1"}) is None
    assert (
        distributed.processes_from_environment({**slurm, "SLURM_NTASKS": "2"})
        == distributed.Processes()
    )
    with pytest.raises(SystemExit, match="JAX_PROCESS_ID must be a non-negative integer"):
        distributed.processes_from_environment({**explicit, "JAX_PROCESS_ID": ""})
    with pytest.raises(SystemExit, match=r"JAX_PROCESS_ID=4 must be in 0..JAX_NUM_PROCESSES-1"):
        distributed.processes_from_environment({**explicit, "JAX_PROCESS_ID": "4"})
