"""What the benchmark scripts share: their common flags and the statistics of the tables.

Each script times several implementations of one step in interleaved rounds (every round
runs each method once on the same batch); these helpers turn the recorded seconds into the
medians, quartiles and paired ratios of the markdown tables.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol


class Timed(Protocol):
    """A benchmarked method: its seconds per timed round and the loss each round returned."""

    seconds: list[float]
    values: list[float]


class CpuTimed(Timed, Protocol):
    """A benchmarked method that also records this thread's CPU seconds per round."""

    cpu_seconds: list[float]


def add_common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--repeats --warmup --hidden --seed --out``, the flags every benchmark takes."""
    parser.add_argument("--repeats", type=int, default=1000, help="timed rounds per hidden size")
    parser.add_argument("--warmup", type=int, default=100, help="untimed rounds first")
    parser.add_argument("--hidden", default="32,200", help="comma-separated hidden sizes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    return parser


def hidden_sizes(
    parser: argparse.ArgumentParser, args: argparse.Namespace, min_warmup: int
) -> list[int]:
    """The ``--hidden`` sizes, after checking ``--repeats`` and ``--warmup``."""
    if args.repeats < 2 or args.warmup < min_warmup:
        parser.error(f"--repeats must be >= 2 and --warmup >= {min_warmup}")
    return [int(h) for h in args.hidden.split(",") if h.strip()]


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of the ratio of two methods' times in the same round."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def quartile_cells(methods: Mapping[str, Timed], names: Sequence[str]) -> str:
    """``q1–q3`` of each method's wall-clock milliseconds, as table cells."""

    def cell(seconds: list[float]) -> str:
        q1, _, q3 = statistics.quantiles(seconds, n=4)
        return f"{1e3 * q1:.2f}–{1e3 * q3:.2f}"

    return " | ".join(cell(methods[name].seconds) for name in names)


def loss_row(
    num_hidden: int, methods: Mapping[str, Timed], names: Sequence[str], num_data: int, repeats: int
) -> str:
    """The mean loss per image over the last tenth of the rounds: the methods train alike."""
    tail = max(1, repeats // 10)
    cells = " | ".join(
        f"{statistics.fmean(methods[name].values[-tail:]) / num_data:.2f}" for name in names
    )
    return f"| {num_hidden} | {cells} |"


def goal_line(
    label: str,
    top: CpuTimed,
    bottom: CpuTimed,
    median: tuple[float, float],
    cpu: tuple[float, float],
    bound: float,
) -> tuple[str, list[str]]:
    """A goal ``top/bottom <= bound`` checked on the wall-clock and CPU-time medians
    (``(top, bottom)`` each) and on the paired ratios: its markdown line (met only when all
    four are) and the measures on which it was missed.

    :param label: the goal's words, e.g. ``"ours/hand <= 1.05 at hidden 32"``.
    """
    ratios = {
        "wall-clock median": median[0] / median[1],
        "CPU-time median": cpu[0] / cpu[1],
        "paired wall-clock": paired_ratio(top.seconds, bottom.seconds),
        "paired CPU-time": paired_ratio(top.cpu_seconds, bottom.cpu_seconds),
    }
    missed = [measure for measure, ratio in ratios.items() if ratio > bound]
    cells = ", ".join(
        f"{measure} {ratio:.2f} {'missed' if ratio > bound else 'met'}"
        for measure, ratio in ratios.items()
    )
    return f"- {label}: {'missed' if missed else 'met'} ({cells})", missed
