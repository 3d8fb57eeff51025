"""The trainer's command line and output files (DESIGN.md §3), backend-neutral parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import wakesleep.outputs as outputs
from wakesleep.cli import (
    DATASET_DEFAULTS,
    build_parser,
    check_resume,
    layers_type,
    parse_train_args,
    resolve_defaults,
    run_settings,
)
from wakesleep.initialisation import INITS
from wakesleep.outputs import (
    METRICS_KEYS,
    atomic_write_bytes,
    save_curve,
    save_samples,
    write_json,
    write_metrics,
)

BACKENDS = ("pyro_wakesleep", "numpyro_wakesleep")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _train(*flags: str, out: str = "run") -> list[str]:
    return ["train", *flags, "--out", out]


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("dataset", ["bars", "digits", "mnist5k"])
def test_defaults_resolve_per_dataset(dataset):
    args = parse_train_args("pyro_wakesleep", _train("--dataset", dataset, "--algorithm", "rws"))
    expected = DATASET_DEFAULTS[dataset]
    assert args.dataset == dataset and args.algorithm == "rws"
    assert args.layers == tuple(expected["layers"])
    assert args.particles == expected["particles"]
    assert args.steps == expected["steps"]
    assert args.batch_size == expected["batch_size"]
    assert args.lr == expected["lr"]
    assert args.lr_decay == expected["lr_decay"] and args.init == expected["init"]
    assert args.restarts == expected["restarts"]
    assert args.num_samples == 10_000
    assert args.seed == 0 and args.device == "cpu" and args.resume is False
    assert args.out == Path("run") and args.data_file is None


def test_issue_defaults():
    bars = DATASET_DEFAULTS["bars"]
    assert bars["layers"] == (8, 1)  # the 16-8-1 network of Hinton et al. (1995)
    assert bars["init"] == "sparse" and bars["lr_decay"] < 1  # the bars sweep's setting
    assert sum(DATASET_DEFAULTS["digits"]["layers"]) <= 22  # exact likelihood enumerable
    assert set(DATASET_DEFAULTS) >= {"bars", "digits", "mnist5k", "file"}
    for defaults in DATASET_DEFAULTS.values():
        assert set(defaults) == {
            "layers", "particles", "steps", "batch_size", "lr", "lr_decay", "init", "restarts"
        }  # fmt: skip
        assert 0 < defaults["lr_decay"] <= 1 and defaults["init"] in INITS


def test_checkpoints_from_before_the_schedule_resume_with_its_neutral_values():
    args = parse_train_args("pyro_wakesleep", _train("--dataset", "digits", "--algorithm", "rws"))
    new_keys = ("lr_decay", "init", "restarts")
    saved = {k: v for k, v in run_settings(args).items() if k not in new_keys}
    check_resume(saved, args)  # digits: lr_decay 1 and init "default", as before
    bars = parse_train_args("pyro_wakesleep", _train("--dataset", "bars", "--algorithm", "rws"))
    old_bars = {k: v for k, v in run_settings(bars).items() if k not in new_keys}
    with pytest.raises(SystemExit, match="lr_decay: checkpoint 1.0 vs now 0.01"):
        check_resume(old_bars, bars)


def test_explicit_flags_win():
    argv = _train(
        "--dataset", "bars", "--algorithm", "ws", "--layers", "4,2,1", "--particles", "1",
        "--steps", "50", "--batch-size", "7", "--lr", "0.5", "--seed", "3", "--device", "cuda",
        "--num-samples", "12", "--resume", out="/tmp/somewhere",
    )  # fmt: skip
    args = parse_train_args("numpyro_wakesleep", argv)
    assert (args.algorithm, args.layers, args.particles, args.steps) == ("ws", (4, 2, 1), 1, 50)
    assert (args.batch_size, args.lr, args.seed, args.device) == (7, 0.5, 3, "cuda")
    assert (args.num_samples, args.resume, args.out) == (12, True, Path("/tmp/somewhere"))


def test_data_file_implies_dataset_file():
    args = parse_train_args(
        "pyro_wakesleep", _train("--data-file", "mine.npz", "--algorithm", "rws")
    )
    assert args.dataset == "file" and args.data_file == Path("mine.npz")
    assert args.layers == DATASET_DEFAULTS["file"]["layers"]


def test_resolve_defaults_copies():
    parser = build_parser("pyro_wakesleep")
    raw = parser.parse_args(_train("--dataset", "digits", "--algorithm", "ws"))
    resolved = resolve_defaults(raw)
    assert raw.layers is None and raw.steps is None
    assert resolved.layers == DATASET_DEFAULTS["digits"]["layers"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_prog_names_the_backend(backend, capsys):
    parser = build_parser(backend)
    assert parser.prog == f"python -m {backend}"
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--dataset", "--data-file", "--algorithm", "--layers", "--particles",
                 "--steps", "--batch-size", "--lr", "--lr-decay", "--init", "--restarts", "--seed", "--device", "--num-samples",
                 "--resume", "--out"):  # fmt: skip
        assert flag in text
    assert f"python -m {backend} train" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8,1", (8, 1)), ("16", (16,)), (" 200 , 200 ", (200, 200)), ("4,3,2,1", (4, 3, 2, 1))],
)
def test_layers_parsing(text, expected):
    assert layers_type(text) == expected
    args = parse_train_args(
        "pyro_wakesleep", _train("--dataset", "bars", "--algorithm", "ws", "--layers", text)
    )
    assert args.layers == expected


GOOD = ("--dataset", "bars", "--algorithm", "rws")


@pytest.mark.parametrize(
    "argv",
    [
        _train(*GOOD, "--layers", ""),
        _train(*GOOD, "--layers", "8,,1"),
        _train(*GOOD, "--layers", "8,0"),
        _train(*GOOD, "--layers", "8,-1"),
        _train(*GOOD, "--layers", "8.5"),
        _train(*GOOD, "--layers", "eight"),
        _train(*GOOD, "--layers", "8,1,"),
        _train(*GOOD, "--particles", "0"),
        _train(*GOOD, "--particles", "-3"),
        _train(*GOOD, "--particles", "ten"),
        _train(*GOOD, "--steps", "1.5"),
        _train(*GOOD, "--steps", "0"),
        _train(*GOOD, "--batch-size", "0"),
        _train(*GOOD, "--lr", "0"),
        _train(*GOOD, "--lr", "-1e-3"),
        _train(*GOOD, "--lr", "nan"),
        _train(*GOOD, "--lr", "inf"),
        _train(*GOOD, "--lr", "fast"),
        _train(*GOOD, "--lr-decay", "0"),
        _train(*GOOD, "--lr-decay", "1.5"),
        _train(*GOOD, "--lr-decay", "nan"),
        _train(*GOOD, "--init", "zeros"),
        _train(*GOOD, "--restarts", "0"),
        _train(*GOOD, "--seed", "-1"),
        _train(*GOOD, "--seed", "x"),
        _train(*GOOD, "--num-samples", "0"),
        _train(*GOOD, "--device", "tpu"),
        _train(*GOOD, "--unknown-flag"),
        _train("--dataset", "mnist", "--algorithm", "rws"),
        _train("--dataset", "bars", "--algorithm", "vi"),
        _train("--dataset", "bars"),  # no --algorithm
        _train("--algorithm", "rws"),  # no data set
        _train(*GOOD, "--data-file", "x.npy"),  # --dataset and --data-file
        ["train", *GOOD],  # no --out
        [],  # no subcommand
        ["fit", *GOOD, "--out", "run"],
    ],
)
def test_bad_flags_are_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parse_train_args("pyro_wakesleep", argv)
    assert info.value.code == 2
    assert "usage: python -m pyro_wakesleep" in capsys.readouterr().err


def test_layer_error_message_names_the_bad_entry(capsys):
    with pytest.raises(SystemExit):
        parse_train_args("numpyro_wakesleep", _train(*GOOD, "--layers", "8,x"))
    err = capsys.readouterr().err
    assert "--layers" in err and "'x'" in err


# --------------------------------------------------------------------------- outputs


def test_atomic_write_replaces_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "deep" / "file.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["file.bin"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(outputs.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_write_json_is_sorted_strict_and_converts_numpy(tmp_path):
    path = write_json(
        tmp_path / "x.json",
        {"b": np.float32(1.5), "a": (1, 2), "c": np.arange(2), "d": float("nan"), "e": np.int64(3)},
    )
    text = path.read_text()
    assert text.endswith("\n") and "NaN" not in text
    assert list(json.loads(text)) == ["a", "b", "c", "d", "e"]
    assert json.loads(text) == {"a": [1, 2], "b": 1.5, "c": [0, 1], "d": None, "e": 3}
    assert text.startswith('{\n  "a"')  # indent 2


def _metrics(**overrides):
    metrics = {
        "backend": "pyro_wakesleep",
        "dataset": "bars",
        "algorithm": "rws",
        "layers": (8, 1),
        "particles": 10,
        "steps": 100,
        "seconds": 1.25,
        "train_nll_nats": 2.5,
        "test_nll_nats": 2.6,
        "nll_method": "exact",
        "kl_bits": 0.1,
    }
    metrics.update(overrides)
    return {k: v for k, v in metrics.items() if v is not None}


def test_metrics_keys_are_those_of_the_design():
    assert set(METRICS_KEYS) == {
        "backend", "dataset", "algorithm", "layers", "particles", "steps", "seconds",
        "train_nll_nats", "test_nll_nats", "nll_method",
    }  # fmt: skip


def test_write_metrics_round_trip(tmp_path):
    path = write_metrics(tmp_path, _metrics())
    assert path == tmp_path / "metrics.json"
    assert json.loads(path.read_text()) == {**_metrics(), "layers": [8, 1]}
    digits = _metrics(dataset="digits", kl_bits=None, nll_method="importance-5000")
    assert (
        json.loads(write_metrics(tmp_path, digits).read_text())["nll_method"] == "importance-5000"
    )


@pytest.mark.parametrize(
    ("metrics", "pattern"),
    [
        (_metrics(test_nll_nats=None), "test_nll_nats"),
        (_metrics(kl_bits=None), "kl_bits"),
        (_metrics(dataset="digits"), "bars' only"),
        (_metrics(nll_method="importance"), "nll_method"),
        (_metrics(nll_method="iwae-5000"), "nll_method"),
    ],
)
def test_write_metrics_rejects_incomplete_metrics(tmp_path, metrics, pattern):
    with pytest.raises(ValueError, match=pattern):
        write_metrics(tmp_path, metrics)
    assert not (tmp_path / "metrics.json").exists()


def test_save_samples(tmp_path):
    samples = np.random.default_rng(0).integers(0, 2, size=(150, 16)).astype(np.float32)
    npy, png = save_samples(tmp_path / "out", samples, (4, 4))
    loaded = np.load(npy)
    assert loaded.dtype == np.uint8 and loaded.shape == (150, 16)
    assert np.array_equal(loaded, samples.astype(np.uint8))
    assert png.read_bytes()[:8] == PNG_MAGIC
    for bad in (np.zeros((3, 15)), np.zeros(16), np.full((3, 16), 2), np.zeros((0, 16))):
        with pytest.raises(ValueError, match="samples"):
            save_samples(tmp_path, bad, (4, 4))


def test_save_curve(tmp_path):
    steps = np.arange(1, 501)
    values = 10.0 / np.sqrt(steps)
    values[7] = np.nan
    path = save_curve(tmp_path, steps, values, "loss (nats)")
    assert path == tmp_path / "curve.png" and path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="same length"):
        save_curve(tmp_path, steps, values[:-1], "loss")


def test_neutral_package_imports_no_backend_and_plots_without_pyplot(tmp_path):
    code = f"""
import sys
import numpy as np
import wakesleep, wakesleep.cli, wakesleep.datasets, wakesleep.exact, wakesleep.outputs
banned = ("torch", "pyro", "jax", "numpyro", "matplotlib")
assert not [m for m in banned if m in sys.modules], [m for m in banned if m in sys.modules]
wakesleep.outputs.save_samples({str(tmp_path)!r}, np.ones((4, 4), dtype=np.uint8), (2, 2))
assert "matplotlib" in sys.modules and "matplotlib.pyplot" not in sys.modules
assert not [m for m in banned[:4] if m in sys.modules]
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
