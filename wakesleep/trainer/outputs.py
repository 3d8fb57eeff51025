"""The trainer's output files (``docs/design.md`` §3), written atomically.

``--out DIR`` receives ``metrics.json``, ``samples.npy``, ``samples.png``,
``curve.png``, ``diagnostics.json``, ``khat.png`` and, for labelled data sets,
``features.json`` (the checkpoint is the backend's).
Every file is first written to a temporary file in the same folder, flushed to disk and
then renamed over the target (:func:`os.replace` is atomic on POSIX and Windows), so a
crash or a full disk never leaves a half-written file behind: a reader sees the old file
or the new one. The pictures are drawn by :mod:`wakesleep.trainer.plots`.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import plots
from .arguments import sparsity_settings

__all__ = [
    "METRICS_KEYS",
    "MAX_GRID_IMAGES",
    "NLL_METHODS",
    "atomic_write_bytes",
    "save_curve",
    "save_diagnostics",
    "run_metrics",
    "save_samples",
    "save_vector_samples",
    "summary_line",
    "write_json",
    "write_metrics",
]

#: Keys that every ``metrics.json`` holds (``docs/design.md`` §3, and ``world_size`` of §11);
#: ``bars`` adds ``kl_bits``.
METRICS_KEYS: tuple[str, ...] = (
    "backend",
    "dataset",
    "algorithm",
    "layers",
    "particles",
    "steps",
    "seconds",
    "world_size",
    "train_nll_nats",
    "test_nll_nats",
    "nll_method",
)
#: ``nll_method`` values: exact enumeration, or importance sampling with ``K`` particles.
NLL_METHODS = ("exact", "importance-<K>")
_NLL_METHOD = re.compile(r"exact|importance-[1-9][0-9]*")
#: At most this many images go into ``samples.png``.
MAX_GRID_IMAGES = 100

PathLike = str | os.PathLike[str]


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that ``path`` is never seen half-written.

    The bytes go to a temporary file in the same folder (created if needed), which is
    flushed and ``fsync``-ed, then renamed over ``path`` with :func:`os.replace`; the
    folder is ``fsync``-ed too where the platform allows. On any error the temporary file
    is removed and ``path`` keeps its old content. A new file gets mode ``0o644``; an
    existing file keeps its mode.

    :returns: ``path`` as a :class:`~pathlib.Path`.
    """
    target = Path(path)
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_folder(folder)
    return target


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _to_json(value: Any) -> Any:
    """Plain JSON types: NumPy scalars/arrays, tuples and paths converted; NaN/inf -> None."""
    if isinstance(value, Mapping):
        return {str(key): _to_json(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return _to_json(value.tolist())
    if isinstance(value, list | tuple):
        return [_to_json(item) for item in value]
    if isinstance(value, np.generic):
        return _to_json(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as strict JSON (sorted keys, indent 2, final newline), atomically.

    NumPy scalars and arrays become numbers and lists, tuples lists, paths strings.
    Non-finite floats (a diverged run) become ``null``, since JSON has no NaN.
    """
    text = json.dumps(_to_json(obj), sort_keys=True, indent=2, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_metrics(out_dir: PathLike, metrics: Mapping[str, Any]) -> Path:
    """Check ``metrics`` against ``docs/design.md`` §3 and write ``out_dir/metrics.json``.

    Required: every key of :data:`METRICS_KEYS`, plus ``kl_bits`` when ``dataset`` is
    ``"bars"`` (and only then: a KL to the bars distribution means nothing elsewhere).
    ``nll_method`` is ``"exact"`` or ``"importance-K"`` (e.g. ``"importance-5000"``).
    Further keys are written as given.

    :raises ValueError: naming the missing or unexpected keys or a bad ``nll_method``.
    """
    missing = [key for key in METRICS_KEYS if key not in metrics]
    is_bars = metrics.get("dataset") == "bars"
    if is_bars and "kl_bits" not in metrics:
        missing.append("kl_bits")
    if missing:
        raise ValueError(f"metrics.json needs the keys {missing}; got {sorted(metrics)}.")
    if not is_bars and "kl_bits" in metrics:
        raise ValueError(
            f"kl_bits is the KL to the bars distribution and belongs to dataset 'bars' only, "
            f"not {metrics['dataset']!r}."
        )
    method = metrics["nll_method"]
    if not isinstance(method, str) or not _NLL_METHOD.fullmatch(method):
        raise ValueError(
            f"nll_method must be 'exact' or 'importance-K' (e.g. 'importance-5000'), got "
            f"{method!r}."
        )
    return write_json(Path(out_dir) / "metrics.json", dict(metrics))


def save_samples(
    out_dir: PathLike, samples: np.ndarray, image_shape: Sequence[int]
) -> tuple[Path, Path]:
    """Write ``samples.npy`` and ``samples.png`` to ``out_dir``.

    :param samples: images drawn from the trained generative model, 0/1 (any integer,
        boolean or float dtype holding only 0 and 1), shape ``(S, D)`` with ``S >= 1``.
    :param image_shape: ``(height, width)``, ``height * width == D``.
    :returns: the paths of ``samples.npy`` (``uint8``, ``(S, D)``) and ``samples.png`` (a
        grid of the first ``min(S, 100)`` images, black = 1). The ``.npy`` is written
        first, so it survives a missing Matplotlib.
    :raises ValueError: for a wrong shape or values other than 0/1.
    """
    array = np.asarray(samples)
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"image_shape must be (height, width), got {tuple(image_shape)}.")
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] != shape[0] * shape[1]:
        raise ValueError(
            f"samples must have shape (S, {shape[0] * shape[1]}) with S >= 1 for images of shape "
            f"{shape}, got {array.shape}."
        )
    if array.dtype.kind not in "biuf" or not np.all((array == 0) | (array == 1)):
        raise ValueError("samples must hold only 0 and 1 (binary images).")
    array = array.astype(np.uint8)

    out = Path(out_dir)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    npy_path = atomic_write_bytes(out / "samples.npy", buffer.getvalue())
    png = plots.samples_png(array[:MAX_GRID_IMAGES], (shape[0], shape[1]))
    return npy_path, atomic_write_bytes(out / "samples.png", png)


def save_vector_samples(
    out_dir: PathLike, samples: np.ndarray, reference: np.ndarray
) -> tuple[Path, Path]:
    """Write real-valued ``samples`` (Gaussian visible units) as ``samples.npy`` (``float32``,
    ``(S, D)``) and ``samples.png`` (each coordinate's histogram against ``reference``, the
    training data) to ``out_dir``; the ``.npy`` first, so it survives a missing Matplotlib.

    :raises ValueError: for a shape other than ``(S, D)`` with ``S >= 1`` and ``D`` the
        reference's, or values that are not finite.
    """
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] != reference.shape[1]:
        raise ValueError(
            f"samples must have shape (S, {reference.shape[1]}) with S >= 1, got {array.shape}."
        )
    if not np.all(np.isfinite(array)):
        raise ValueError("samples must be finite.")
    out = Path(out_dir)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    npy_path = atomic_write_bytes(out / "samples.npy", buffer.getvalue())
    png = plots.marginals_png(array, np.asarray(reference, dtype=np.float32))
    return npy_path, atomic_write_bytes(out / "samples.png", png)


def save_curve(
    out_dir: PathLike,
    steps: Sequence[float] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    ylabel: str,
) -> Path:
    """Write ``curve.png``, the training curve: ``values`` against ``steps``
    (:func:`wakesleep.trainer.plots.curve_png`).

    :param steps: the step of each value, 1-D.
    :param values: the logged values (e.g. the loss in nats), same length as ``steps``.
    :param ylabel: the y-axis label, e.g. ``"loss (nats)"``.
    :raises ValueError: for empty or mismatched inputs.
    """
    x = np.asarray(steps, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or y.shape != x.shape or x.size == 0:
        raise ValueError(
            f"steps and values must be non-empty 1-D sequences of the same length, got "
            f"shapes {x.shape} and {y.shape}."
        )
    return atomic_write_bytes(Path(out_dir) / "curve.png", plots.curve_png(x, y, ylabel))


#: k̂ above this: the guide is not a trustworthy proposal for that datapoint (PSIS).
KHAT_UNRELIABLE = 0.7
#: k̂ below this: importance weights of finite variance.
KHAT_GOOD = 0.5


def _quantiles(values: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """``np.quantile`` that lets an infinite k̂ through without numpy's inf − inf warning."""
    with np.errstate(invalid="ignore"):
        return np.quantile(values, levels)


def save_diagnostics(out_dir: PathLike, pareto_k: np.ndarray, num_samples: int) -> dict[str, Any]:
    """Write ``diagnostics.json`` and ``khat.png``: how far to trust the learned guide.

    ``pareto_k`` holds one PSIS ``k̂`` per test datapoint (Vehtari et al., *Pareto smoothed
    importance sampling*), computed from ``num_samples`` guide draws. The JSON holds the
    quantiles of ``k̂`` over datapoints and the fractions above 0.5 and 0.7; ``khat.png``
    plots every ``k̂`` (sorted) against those thresholds. ``k̂ = inf`` (too few distinct tail
    draws for a fit) counts as above both thresholds.

    :returns: the dictionary written to ``diagnostics.json``.
    """
    k = np.asarray(pareto_k, dtype=np.float64).reshape(-1)
    if k.size == 0 or np.isnan(k).any():
        raise ValueError("pareto_k must hold one k-hat per datapoint, none of them NaN.")
    levels = (0.05, 0.25, 0.5, 0.75, 0.95)
    summary = {
        "num_datapoints": int(k.size),
        "num_samples": int(num_samples),
        # JSON has no infinity: a quantile that falls on k̂ = inf is written as null
        "khat_quantiles": {
            f"{q:g}": (float(v) if np.isfinite(v) else None)
            for q, v in zip(levels, _quantiles(k, levels), strict=True)
        },
        "fraction_khat_above_0.5": float(np.mean(k > KHAT_GOOD)),
        "fraction_khat_above_0.7": float(np.mean(k > KHAT_UNRELIABLE)),
    }
    write_json(Path(out_dir) / "diagnostics.json", summary)

    atomic_write_bytes(Path(out_dir) / "khat.png", plots.khat_png(k, (KHAT_GOOD, KHAT_UNRELIABLE)))
    return summary


def run_metrics(
    backend: str,
    args: Any,
    seconds: float,
    train_nll: float,
    test_nll: float,
    nll_method: str,
    kl_bits: float | None = None,
    world_size: int = 1,
) -> dict[str, Any]:
    """The ``metrics.json`` record of a trainer run (``docs/design.md`` §3), the same for both backends.

    :param nll_method: ``"exact"`` or ``"importance-K"``
        (:func:`wakesleep.trainer.evaluation.nll_method`).
    :param kl_bits: added for ``bars`` only (``None``, written as null, when the machine is
        too large to enumerate).
    :param world_size: the data-parallel workers that trained it (``docs/design.md`` §11):
        torch.distributed ranks (Pyro), devices × processes (NumPyro); 1 for one process on
        one device.
    """
    metrics: dict[str, Any] = {
        "backend": backend,
        "dataset": args.dataset,
        "algorithm": args.algorithm,
        "layers": list(args.layers),
        "particles": args.particles,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "lr_decay": args.lr_decay,
        "init": args.init,
        "restarts": args.restarts,
        "seed": args.seed,
        "seconds": round(seconds, 3),
        "world_size": int(world_size),
        "train_nll_nats": float(train_nll),
        "test_nll_nats": float(test_nll),
        "nll_method": nll_method,
    }
    metrics["sparsity"] = sparsity_settings(args)  # {"target", "weight"} or None
    if args.dataset == "bars":
        metrics["kl_bits"] = kl_bits
    return metrics


def summary_line(metrics: Mapping[str, Any]) -> str:
    """``key=value, ...`` of a metrics record, floats to 4 significant digits."""
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) and math.isfinite(v) else f"{k}={v}"
        for k, v in metrics.items()
    )
