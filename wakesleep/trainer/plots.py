"""The trainer's plots as PNG bytes: ``samples.png``, ``curve.png`` and ``khat.png``.

``samples.png`` is a grid of images for image data and histograms of each coordinate
against the training data's for real-valued vectors (``vowels``).

Plots use Matplotlib's Agg canvas directly (``matplotlib.figure.Figure`` with
``FigureCanvasAgg``), imported only when a plot is drawn. No display is needed and the
user's global Matplotlib backend (``pyplot``) is left untouched. Writing the bytes to
``--out`` is :mod:`wakesleep.trainer.outputs`'s job.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["curve_png", "image_grid", "khat_png", "marginals_png", "samples_png"]


def _agg_figure(width: float, height: float) -> Any:
    """A Matplotlib ``Figure`` attached to an Agg canvas (no pyplot, no display)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "Writing samples.png and curve.png needs matplotlib: pip install matplotlib "
            "(it comes with pip install 'wakesleep[dev]')."
        ) from err
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def image_grid(images: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """Tile ``images`` (n, H*W) into one array with a 1-pixel border between images.

    Pixels are 0/1; borders and empty cells are 0.5 (grey).
    """
    height, width = image_shape
    count = len(images)
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.full((rows * (height + 1) + 1, columns * (width + 1) + 1), 0.5)
    for index, image in enumerate(images.reshape(count, height, width)):
        r, c = divmod(index, columns)
        top, left = 1 + r * (height + 1), 1 + c * (width + 1)
        grid[top : top + height, left : left + width] = image
    return grid


def samples_png(images: np.ndarray, image_shape: tuple[int, int]) -> bytes:
    """A grid of 0/1 ``images`` (n, H*W), black = 1."""
    grid = image_grid(images, image_shape)
    figure = _agg_figure(6.0, 6.0 * grid.shape[0] / grid.shape[1])
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    axes.imshow(grid, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes.set_axis_off()
    return _png(figure)


def marginals_png(samples: np.ndarray, reference: np.ndarray) -> bytes:
    """Real-valued ``samples`` (n, D) against ``reference`` data (m, D), one histogram per
    coordinate (at most 16, the first): where the model's marginals miss the data's."""
    shown = min(samples.shape[1], 16)
    columns = min(shown, 4)
    rows = math.ceil(shown / columns)
    figure = _agg_figure(2.4 * columns, 1.9 * rows)
    for d in range(shown):
        axes = figure.add_subplot(rows, columns, d + 1)
        both = np.concatenate([samples[:, d], reference[:, d]])
        bins = np.linspace(*np.percentile(both, [0.5, 99.5]), 30)
        axes.hist(reference[:, d], bins=bins, density=True, color="0.7", label="data")
        axes.hist(samples[:, d], bins=bins, density=True, histtype="step", color="tab:blue",
                  label="model")  # fmt: skip
        axes.set_title(f"x[{d}]", fontsize=8)
        axes.tick_params(labelsize=6)
        axes.set_yticks([])
    figure.axes[0].legend(fontsize=6)
    figure.tight_layout()
    return _png(figure)


def curve_png(x: np.ndarray, y: np.ndarray, ylabel: str) -> bytes:
    """``y`` against the steps ``x``: faint raw values under a running mean over about 1/50
    of the points, so noisy per-step losses stay readable. Non-finite values leave gaps."""
    figure = _agg_figure(6.4, 4.0)
    axes = figure.add_subplot()
    axes.plot(x, y, color="tab:blue", alpha=0.3, linewidth=0.8, label="value")
    window = max(1, len(y) // 50)
    if window > 1:
        finite = np.isfinite(y)
        kernel = np.ones(window)
        sums = np.convolve(np.where(finite, y, 0.0), kernel, mode="valid")
        counts = np.convolve(finite.astype(np.float64), kernel, mode="valid")
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sums / counts
        axes.plot(x[window - 1 :], mean, color="tab:blue", linewidth=1.5, label="running mean")
        axes.legend()
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return _png(figure)


def khat_png(pareto_k: np.ndarray, thresholds: Sequence[float]) -> bytes:
    """Every PSIS ``k̂`` (sorted; infinite ones left out) against dashed ``thresholds``."""
    k = np.asarray(pareto_k, dtype=np.float64)
    figure = _agg_figure(6.4, 4.0)
    axes = figure.add_subplot()
    shown = np.sort(np.where(np.isfinite(k), k, np.nan))
    axes.plot(np.arange(1, k.size + 1), shown, ".", markersize=3, color="tab:blue")
    for level, color in zip(thresholds, ("tab:orange", "tab:red"), strict=True):
        axes.axhline(level, color=color, linestyle="--", linewidth=1, label=f"k̂ = {level}")
    axes.set_xlabel("test datapoint (sorted by k̂)")
    axes.set_ylabel("PSIS k̂ of the guide's weights")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return _png(figure)
