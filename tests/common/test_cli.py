"""The trainer's command line, run folder and output files (``docs/design.md`` §3),
backend-neutral parts."""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import wakesleep.trainer.outputs as outputs
from wakesleep.trainer.arguments import (
    DATASET_DEFAULTS,
    DEFAULT_SPARSITY_WEIGHT,
    build_parser,
    layers_type,
    parse_train_args,
    resolve_defaults,
)
from wakesleep.trainer.initialisation import INITS
from wakesleep.trainer.outputs import (
    METRICS_KEYS,
    atomic_write_bytes,
    save_curve,
    save_samples,
    write_json,
    write_metrics,
)
from wakesleep.trainer.runs import (
    CtrlC,
    Interrupted,
    check_resume,
    exit_on_interrupt,
    load_data,
    prepare_out_dir,
    run_settings,
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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("algorithm", ["ws", "rws", "jsa"])
def test_every_algorithm_is_a_flag_of_both_backends(backend, algorithm, capsys):
    args = parse_train_args(backend, _train("--dataset", "digits", "--algorithm", algorithm))
    assert args.algorithm == algorithm
    with pytest.raises(SystemExit):
        build_parser(backend).parse_args(["train", "--help"])
    assert "ws,rws,jsa" in capsys.readouterr().out


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


def test_resume_names_every_setting_that_differs_from_the_checkpoint():
    args = parse_train_args("pyro_wakesleep", _train("--dataset", "bars", "--algorithm", "rws"))
    saved = run_settings(args)
    assert saved["layers"] == [8, 1]  # JSON values: a checkpoint stores a list
    check_resume(json.loads(json.dumps(saved)), args)  # the same settings resume
    longer = parse_train_args(
        "pyro_wakesleep", _train("--dataset", "bars", "--algorithm", "rws", "--steps", "9")
    )
    check_resume(saved, longer)  # --steps may change
    other = {**saved, "lr": 0.5, "layers": [4]}
    with pytest.raises(SystemExit, match=r"layers: checkpoint \[4\] vs now \[8, 1\], lr: "):
        check_resume(other, args)
    without = {k: v for k, v in saved.items() if k != "lr_decay"}
    with pytest.raises(SystemExit, match="lr_decay: checkpoint None vs now 0.01"):
        check_resume(without, args)


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
        _train(*GOOD, "--sparsity", "0"),
        _train(*GOOD, "--sparsity", "1"),
        _train(*GOOD, "--sparsity", "-0.1"),
        _train(*GOOD, "--sparsity", "nan"),
        _train(*GOOD, "--sparsity", "sparse"),
        _train(*GOOD, "--sparsity", "0.05", "--sparsity-weight", "-1"),
        _train(*GOOD, "--sparsity", "0.05", "--sparsity-weight", "inf"),
        _train(*GOOD, "--sparsity", "0.05", "--sparsity-weight", "nan"),
        _train(*GOOD, "--sparsity-weight", "2"),  # no --sparsity
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparsity_flags_parse_to_a_target_and_a_weight(backend):
    plain = parse_train_args(backend, _train(*GOOD))
    assert plain.sparsity is None and plain.sparsity_weight is None
    assert run_settings(plain)["sparsity"] is None
    default = parse_train_args(backend, _train(*GOOD, "--sparsity", "0.05"))
    assert (default.sparsity, default.sparsity_weight) == (0.05, DEFAULT_SPARSITY_WEIGHT) == (
        0.05, 1.0
    )  # fmt: skip
    weighted = parse_train_args(
        backend, _train(*GOOD, "--sparsity", "0.2", "--sparsity-weight", "0")
    )  # weight 0: no penalty, the mean activation still reported
    assert run_settings(weighted)["sparsity"] == {"target": 0.2, "weight": 0.0}


def test_sparsity_weight_without_sparsity_says_what_to_do(capsys):
    with pytest.raises(SystemExit) as info:
        parse_train_args("numpyro_wakesleep", _train(*GOOD, "--sparsity-weight", "2"))
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("python -m numpyro_wakesleep train: error: --sparsity-weight needs ")
    assert "--sparsity 0.05" in last


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--sparsity", "1.5"), "strictly between 0 and 1"),
        (("--sparsity", "0.1", "--sparsity-weight", "-2"), "expected a finite number >= 0"),
    ],
)
def test_sparsity_errors_name_the_flag_and_the_range(flags, says, capsys):
    with pytest.raises(SystemExit):
        parse_train_args("pyro_wakesleep", _train(*GOOD, *flags))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: argument --sparsity" in last and says in last


def test_resume_compares_the_sparsity_settings():
    sparse = parse_train_args("pyro_wakesleep", _train(*GOOD, "--sparsity", "0.05"))
    saved = json.loads(json.dumps(run_settings(sparse)))
    assert saved["sparsity"] == {"target": 0.05, "weight": 1.0}
    check_resume(saved, sparse)
    plain = parse_train_args("pyro_wakesleep", _train(*GOOD))
    with pytest.raises(SystemExit, match="sparsity: checkpoint {'target': 0.05, 'weight': 1.0} "
                       "vs now None"):  # fmt: skip
        check_resume(saved, plain)
    heavier = parse_train_args(
        "pyro_wakesleep", _train(*GOOD, "--sparsity", "0.05", "--sparsity-weight", "4")
    )
    with pytest.raises(SystemExit, match="'weight': 4.0"):
        check_resume(saved, heavier)
    # a checkpoint of an earlier release has no "sparsity": it resumes a run without one
    earlier = {k: v for k, v in run_settings(plain).items() if k != "sparsity"}
    check_resume(earlier, plain)
    with pytest.raises(SystemExit, match="sparsity: checkpoint None vs now"):
        check_resume(earlier, sparse)


def test_resolve_defaults_refuses_a_sparsity_weight_alone():
    args = build_parser("pyro_wakesleep").parse_args(_train(*GOOD))
    args.sparsity_weight = 2.0
    with pytest.raises(ValueError, match="--sparsity-weight needs --sparsity"):
        resolve_defaults(args)


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
        "world_size": 1,
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
        "world_size", "train_nll_nats", "test_nll_nats", "nll_method",
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
import wakesleep, wakesleep.trainer
from wakesleep.trainer import (
    arguments, backend, datasets, evaluation, exact, initialisation, loop, outputs, plots,
    runs, schedule,
)
banned = ("torch", "pyro", "jax", "numpyro", "matplotlib")
assert not [m for m in banned if m in sys.modules], [m for m in banned if m in sys.modules]
outputs.save_samples({str(tmp_path)!r}, np.ones((4, 4), dtype=np.uint8), (2, 2))
assert "matplotlib" in sys.modules and "matplotlib.pyplot" not in sys.modules
assert not [m for m in banned[:4] if m in sys.modules]
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- data and --out


def _file_args(path: Path, tmp_path: Path):
    return parse_train_args(
        "pyro_wakesleep", _train("--data-file", str(path), "--algorithm", "rws", out=str(tmp_path))
    )


def _grey(rows: int = 10, pixels: int = 64) -> np.ndarray:
    images = np.random.default_rng(0).integers(0, 2, size=(rows, pixels)).astype(np.float64)
    images[2, 3] = 0.5
    return images


def _with_nan() -> np.ndarray:
    images = _grey()
    images[2, 3], images[6, 0] = 1.0, np.nan
    return images


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("nowhere.npy", None, "does not exist"),
        ("grey.npy", _grey(), "not 0 or 1"),
        ("holes.npy", _with_nan(), "NaN in row 6"),
        ("cube.npy", np.zeros((4, 8, 8)), "x.reshape(len(x), -1)"),
        ("text.npy", b"0 1 0 1", "could not read it"),
        ("images.csv", b"0,1", "unknown extension"),
    ],
)
def test_bad_data_files_are_one_line_errors(tmp_path, name, content, says):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.save(path, content)
    with pytest.raises(SystemExit) as info:
        load_data(_file_args(path, tmp_path / "run"))
    message = str(info.value.code)
    assert message.startswith("error: --data-file: ") and says in message
    assert "\n" not in message


def test_a_missing_optional_dependency_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    args = parse_train_args("pyro_wakesleep", _train("--dataset", "digits", "--algorithm", "ws"))
    with pytest.raises(SystemExit, match=r"^error: --dataset digits: .*wakesleep\[data\]"):
        load_data(args)


def test_a_batch_larger_than_the_training_set_is_a_one_line_error(tmp_path):
    images = np.random.default_rng(1).integers(0, 2, size=(21, 64), dtype=np.uint8)
    np.save(tmp_path / "small.npy", images)
    args = _file_args(tmp_path / "small.npy", tmp_path / "run")  # --batch-size 100
    with pytest.raises(SystemExit, match=r"^error: --batch-size 100 is more than the 18 "):
        load_data(args)
    args.batch_size = 18
    data = load_data(args)
    assert data.train.shape == (18, 64) and data.image_shape == (8, 8)


def test_a_refused_out_folder_is_not_created(tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(SystemExit, match="no checkpoint.pt"):
        prepare_out_dir(out, "checkpoint.pt", resume=True)
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("mine")
    with pytest.raises(SystemExit, match="is a file; give a folder"):
        prepare_out_dir(tmp_path / "file", "checkpoint.pt", resume=False)
    assert (tmp_path / "file").read_text() == "mine"
    # a folder of the user's is used as it is, and never emptied
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert prepare_out_dir(tmp_path / "mine", "checkpoint.pt", resume=False) == tmp_path / "mine"
    assert prepare_out_dir(out, "checkpoint.pt", resume=False).is_dir()
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def _main(backend: str):
    return importlib.import_module(f"{backend}.train").main


@pytest.mark.parametrize(
    ("images", "says"),
    [
        (None, "does not exist"),
        (np.full((9, 64), np.inf), "inf in rows 0, 1, 2, 3, 4, ..."),
        (np.full((9, 64), 0.3), "not 0 or 1"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_trainers_check_the_data_before_making_the_out_folder(tmp_path, backend, images, says):
    path = tmp_path / "mine.npy"
    if images is not None:
        np.save(path, images)
    argv = _train("--data-file", str(path), "--algorithm", "rws", out=str(tmp_path / "new"))
    with pytest.raises(SystemExit, match=r"^error: --data-file: ") as info:
        _main(backend)(argv)
    assert says in str(info.value.code)
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(SystemExit, match=r"^error: --data-file: "):
        _main(backend)([*argv[:-1], str(tmp_path / "mine")])
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    "backend", ["pyro_wakesleep", pytest.param("numpyro_wakesleep", marks=pytest.mark.slow)]
)
def test_trainers_take_a_data_file_of_any_width(tmp_path, backend):
    # 64 pixels, the width of scikit-learn's digits, was once refused
    images = np.random.default_rng(0).integers(0, 2, size=(70, 64), dtype=np.uint8)
    np.save(tmp_path / "digits.npy", images)
    flags = ("--layers", "4", "--steps", "6", "--restarts", "1", "--num-samples", "30",
             "--batch-size", "8")  # fmt: skip
    argv = _train("--data-file", str(tmp_path / "digits.npy"), "--algorithm", "ws", *flags)
    metrics = _main(backend)([*argv[:-1], str(tmp_path / "run")])
    assert metrics["dataset"] == "file" and metrics["nll_method"] == "exact"
    assert 0 < metrics["test_nll_nats"] < 2 * 64 * math.log(2)  # finite, near chance
    assert np.load(tmp_path / "run" / "samples.npy").shape == (30, 64)
    assert (tmp_path / "run" / "samples.png").read_bytes()[:8] == PNG_MAGIC


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_is_recorded_until_a_safe_point_and_a_second_one_stops_at_once():
    before = signal.getsignal(signal.SIGINT)
    with CtrlC() as ctrl_c:
        ctrl_c.check()  # nothing pressed: nothing raised
        signal.raise_signal(signal.SIGINT)
        assert ctrl_c.pressed
        with pytest.raises(Interrupted) as info:
            ctrl_c.check(evaluating=True)
        assert info.value.evaluating and isinstance(info.value, KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_leaves_an_ignored_sigint_ignored():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with CtrlC() as ctrl_c:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
        assert not ctrl_c.pressed and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize(
    ("error", "has_checkpoint", "says"),
    [
        (Interrupted(1234), True, "Interrupted at step 1234; checkpoint saved in {out}. "
         "Resume with the same command plus --resume."),
        (Interrupted(evaluating=True), True, "Interrupted during the final evaluation; the "
         "trained machine is saved in {out}. Resume with the same command plus --resume to "
         "redo the evaluation."),
        (KeyboardInterrupt(), True, "Interrupted; the last checkpoint is in {out}. Resume with "
         "the same command plus --resume."),
        (Interrupted(), False, "Interrupted before the first checkpoint; nothing to resume. "
         "Run the command again."),
        (KeyboardInterrupt(), False, "Interrupted before the first checkpoint"),
    ],
)  # fmt: skip
def test_an_interrupted_run_exits_130_with_one_line_on_how_to_go_on(
    tmp_path, capsys, error, has_checkpoint, says
):
    if has_checkpoint:
        (tmp_path / "checkpoint.pkl").write_bytes(b"saved")
    with pytest.raises(SystemExit) as info, exit_on_interrupt(tmp_path, "checkpoint.pkl"):
        raise error
    assert info.value.code == 130
    captured = capsys.readouterr()
    assert captured.err.startswith(says.format(out=tmp_path)) and captured.err.count("\n") == 1
    assert captured.out == ""


# --------------------------------------------------------------------------- as a user meets it


def _run_module(backend: str, *flags: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", backend, "train", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_data_file_is_one_line_without_traceback_and_creates_no_folder(backend, tmp_path):
    np.save(tmp_path / "holes.npy", _with_nan())
    out = tmp_path / "run"
    process = _run_module(
        backend, "--data-file", str(tmp_path / "holes.npy"), "--algorithm", "rws", "--out", str(out)
    )
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert re.fullmatch(r"error: --data-file: .*holes\.npy: NaN in row 6 [^\n]*\n", stderr), stderr
    assert stdout == "" and not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_in_training_saves_a_checkpoint_and_says_how_to_resume(backend, tmp_path):
    out = tmp_path / "run"
    flags = ("--dataset", "bars", "--algorithm", "rws", "--steps", "1000000", "--restarts", "1")
    process = _run_module(backend, *flags, "--out", str(out))
    deadline = time.monotonic() + 60
    while not out.is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the run is set up (and compiled) or training: Ctrl-C waits for a step
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    last = stderr.splitlines()[-1]
    match = re.fullmatch(
        rf"Interrupted at step (\d+); checkpoint saved in {re.escape(str(out))}\. Resume with "
        r"the same command plus --resume\.",
        last,
    )
    assert match, stderr
    assert "Traceback" not in stderr and int(match[1]) >= 1
    assert [path.name for path in out.glob("checkpoint.*")] and not (out / "metrics.json").exists()


# --------------------------------------------------------------------------- vowels


def _needs_sktime() -> None:
    if importlib.util.find_spec("sktime") is None:
        pytest.skip("the vowels data set reads its files from sktime, which is not installed")


def test_vowels_defaults_are_a_gaussian_12_64_16_network():
    args = parse_train_args(
        "numpyro_wakesleep", _train("--dataset", "vowels", "--algorithm", "rws")
    )
    vowels = DATASET_DEFAULTS["vowels"]
    assert args.dataset == "vowels" and args.layers == tuple(vowels["layers"]) == (64, 16)
    assert (args.steps, args.lr, args.init, args.restarts) == (10_000, 1e-2, "default", 1)
    assert args.batch_size == vowels["batch_size"] and args.particles == vowels["particles"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_help_offers_the_vowels_data_set(backend, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser(backend).parse_args(["train", "--help"])
    assert info.value.code == 0
    assert "--dataset {bars,digits,mnist5k,vowels}" in capsys.readouterr().out


def test_the_dataset_help_says_what_vowels_is_and_what_it_needs(capsys):
    with pytest.raises(SystemExit):
        build_parser("pyro_wakesleep").parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    # the last mention is the flag's own entry (the first is the usage line)
    described = text.rsplit("--dataset {bars,digits,mnist5k,vowels} ", 1)[1].split("--data-file")[0]
    assert "vowels" in described and "wakesleep[speech]" in described


@pytest.mark.parametrize("backend", BACKENDS)
def test_init_sparse_with_vowels_is_one_error_line_and_creates_no_folder(tmp_path, backend):
    _needs_sktime()
    out = tmp_path / "new"
    argv = _train("--dataset", "vowels", "--algorithm", "rws", "--init", "sparse", out=str(out))
    with pytest.raises(SystemExit) as info:
        _main(backend)(argv)
    message = str(info.value.code)
    assert message.startswith("error: --init sparse is for binary images, and --dataset vowels ")
    assert "--init default" in message and "\n" not in message
    assert not out.exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(SystemExit, match=r"^error: --init sparse "):
        _main(backend)([*argv[:-1], str(tmp_path / "mine")])
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_vowels_without_sktime_says_to_install_the_speech_extra(tmp_path, backend, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sktime" else real(name, *a)
    )
    out = tmp_path / "new"
    argv = _train("--dataset", "vowels", "--algorithm", "ws", out=str(out))
    with pytest.raises(SystemExit) as info:
        _main(backend)(argv)
    message = str(info.value.code)
    assert re.fullmatch(r"error: --dataset vowels: .*pip install 'wakesleep\[speech\]'", message)
    assert "sktime" in message and not out.exists()
