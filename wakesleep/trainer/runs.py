"""The rules of a run's ``--out`` folder, its checkpoint and Ctrl-C (``docs/design.md`` §3).

- :func:`load_data`: the data are checked before anything is created; a bad file, a
  missing optional dependency or a too large ``--batch-size`` is a one-line ``error:``
  (status 1).
- :func:`prepare_out_dir`: a fresh run never overwrites a checkpoint, ``--resume`` needs
  one, and a refused run creates nothing.
- :func:`run_settings` and :func:`check_resume`: a resumed run has the settings of its
  checkpoint (all but ``--steps``, which a constant learning rate may extend).
- :class:`UnreadableCheckpoint`: a checkpoint is never unpickled; one that is not in this
  release's safe format is refused with a line that says how to go on.
- :class:`CtrlC`, :class:`Interrupted` and :func:`exit_on_interrupt`: Ctrl-C stops a run
  where it can stop cleanly, with a checkpoint to resume from, and ends it with one line
  that says what was saved and how to resume, status 130.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from .arguments import DATA_SET_DEPENDENT, sparsity_settings
from .datasets import Dataset, load_dataset

__all__ = [
    "RUN_KEYS",
    "CtrlC",
    "Interrupted",
    "UnreadableCheckpoint",
    "check_resume",
    "exit_on_interrupt",
    "interrupt_message",
    "load_data",
    "prepare_out_dir",
    "run_settings",
    "unreadable_checkpoint_message",
]

#: The settings a resumed run must share with its checkpoint: all but ``--steps``, which a
#: run with a constant learning rate may extend. ``sparsity`` is ``--sparsity`` and
#: ``--sparsity-weight`` (:func:`~wakesleep.trainer.arguments.sparsity_settings`): ``None``
#: without a penalty, so that checkpoints of earlier releases, which lack it, resume as runs
#: without one.
RUN_KEYS = (
    "dataset", "algorithm", *(k for k in DATA_SET_DEPENDENT if k != "steps"), "seed",
    "sparsity",
)  # fmt: skip


def run_settings(args: argparse.Namespace) -> dict[str, object]:
    """The settings of ``args`` that a checkpoint records (:data:`RUN_KEYS`), as JSON values."""
    settings = {key: _as_json_value(getattr(args, key)) for key in RUN_KEYS if key != "sparsity"}
    settings["sparsity"] = sparsity_settings(args)
    return settings


def _as_json_value(value: object) -> object:
    # --layers parses to a tuple; a checkpoint stores a list (JSON has no tuples)
    return list(value) if isinstance(value, tuple) else value


def check_resume(saved: dict[str, object], args: argparse.Namespace) -> None:
    """Exit with a message naming every setting where ``args`` differ from a checkpoint's
    (one the checkpoint lacks differs too)."""
    now = run_settings(args)
    differing = {k: (saved.get(k), now[k]) for k in RUN_KEYS if saved.get(k) != now[k]}
    if differing:
        details = ", ".join(
            f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in differing.items()
        )
        raise SystemExit(f"error: --resume with other settings than the checkpoint ({details}).")


def load_data(args: argparse.Namespace) -> Dataset:
    """The data set of default-resolved ``args``, checked before anything is created.

    :class:`~wakesleep.trainer.datasets.Dataset` checks its arrays (0/1 pixels, or finite
    real values), so the data are sound before any training. A file that is missing, unreadable, not 2-D or
    not 0/1 (NaN and inf named with their rows), a missing optional dependency, or a
    ``--batch-size`` larger than the training set exits with a one-line ``error:`` that says
    what to do.
    """
    source = "--dataset " + args.dataset if args.data_file is None else "--data-file"
    try:
        data = load_dataset(args.dataset, seed=args.seed, path=args.data_file)
    except (ValueError, ImportError) as error:
        raise SystemExit(f"error: {source}: {error}") from None
    if data.visible == "gaussian" and args.init == "sparse":
        raise SystemExit(
            f"error: --init sparse is for binary images, and {source} is real-valued "
            f"(Gaussian visible units): use --init default."
        )
    if args.batch_size > len(data.train):
        raise SystemExit(
            f"error: --batch-size {args.batch_size} is more than the {len(data.train)} "
            f"training images of {source}; pass --batch-size {len(data.train)} or less."
        )
    return data


def prepare_out_dir(
    out: Path, checkpoint: str, resume: bool, legacy_checkpoints: Sequence[str] = ()
) -> Path:
    """Create ``--out``; refuse to overwrite an existing checkpoint unless resuming, or to
    resume without one. Nothing the user has is replaced by a fresh run, and a refused run
    creates nothing.

    :param legacy_checkpoints: file names of checkpoints that earlier releases wrote and this
        one does not read (pickles: loading them could run code from the folder). A folder
        holding one is neither resumed nor overwritten.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out {out} is a file; give a folder (created if need be).")
    has_checkpoint = (out / checkpoint).is_file()
    legacy = [name for name in legacy_checkpoints if (out / name).is_file()]
    if legacy and not has_checkpoint:
        raise SystemExit(unreadable_checkpoint_message(out / legacy[0]))
    if has_checkpoint and not resume:
        raise SystemExit(
            f"error: {out} already holds a {checkpoint}; pass --resume to continue it, or "
            "choose another --out so that it is not overwritten."
        )
    if resume and not has_checkpoint:
        raise SystemExit(f"error: --resume: there is no {checkpoint} in {out} to resume from.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SystemExit(f"error: --out {out}: cannot create it ({error.strerror}).") from None
    return out


class UnreadableCheckpoint(ValueError):
    """A checkpoint that a backend does not load: another format, or one that is not safe to
    load (a pickle from an earlier release could run code). :func:`unreadable_checkpoint_message`
    says what to do."""


def unreadable_checkpoint_message(path: Path) -> str:
    """The one line with which a run refuses the checkpoint at ``path``, and how to go on."""
    return (
        f"error: {path} is not a checkpoint this release reads (earlier releases pickled "
        "theirs, and loading a pickle could run code from the folder); it was not loaded. "
        "Start a new run instead: the same command without --resume, with another --out."
    )


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C that a trainer acted on where its run could stop cleanly.

    :param step: the step of the checkpoint written on the way out; ``None`` when none was
        (the ``--restarts`` candidates were training) or in the evaluation.
    :param evaluating: the training had finished and its final checkpoint was written; the
        evaluation that follows was stopped.
    """

    def __init__(self, step: int | None = None, *, evaluating: bool = False) -> None:
        super().__init__(step, evaluating)
        self.step = step
        self.evaluating = evaluating


class CtrlC:
    """``with CtrlC() as ctrl_c:``: a Ctrl-C (SIGINT) sets ``ctrl_c.pressed`` instead of raising.

    Python raises ``KeyboardInterrupt`` between any two bytecodes: in the middle of an
    optimiser update (a checkpoint of half-updated parameters would not resume exactly),
    of a checkpoint being written, or while JAX still computes asynchronously into buffers
    that the unwinding frees (a crash was once seen). Within the block a trainer instead
    looks at ``pressed`` between steps and between the stages of its evaluation and stops
    there with :class:`Interrupted`. A second Ctrl-C raises ``KeyboardInterrupt`` at once,
    for a run that does not reach such a point soon enough.

    Outside the main thread, where signal handlers cannot be set, and where SIGINT is
    ignored (a job started with ``nohup``), nothing changes.
    """

    def __init__(self) -> None:
        self.pressed = False
        self._restore: object = None  # the handler to put back on leaving

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def check(self, step: int | None = None, *, evaluating: bool = False) -> None:
        """Raise :class:`Interrupted` with these arguments if Ctrl-C was pressed."""
        if self.pressed:
            raise Interrupted(step, evaluating=evaluating)

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN:
                signal.signal(signal.SIGINT, self._handle)
                # None: a handler set outside Python; the default is the nearest to it
                self._restore = signal.SIG_DFL if previous is None else previous
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._restore is not None:
            signal.signal(signal.SIGINT, self._restore)
            self._restore = None


def interrupt_message(error: KeyboardInterrupt, out: Path, checkpoint: str) -> str:
    """One line for a run stopped by Ctrl-C: what was saved in ``out`` and how to go on."""
    resume = "Resume with the same command plus --resume"
    if isinstance(error, Interrupted) and error.evaluating:
        return (
            f"Interrupted during the final evaluation; the trained machine is saved in {out}. "
            f"{resume} to redo the evaluation."
        )
    if isinstance(error, Interrupted) and error.step is not None:
        return f"Interrupted at step {error.step}; checkpoint saved in {out}. {resume}."
    if (Path(out) / checkpoint).is_file():  # a second Ctrl-C, not waiting for a safe point
        return f"Interrupted; the last checkpoint is in {out}. {resume}."
    return "Interrupted before the first checkpoint; nothing to resume. Run the command again."


@contextmanager
def exit_on_interrupt(out: Path, checkpoint: str) -> Iterator[None]:
    """Turn a Ctrl-C in the block into :func:`interrupt_message` on stderr and exit status
    130 (128 + SIGINT, what shells report for Ctrl-C), without a traceback."""
    try:
        yield
    except KeyboardInterrupt as error:
        print(interrupt_message(error, out, checkpoint), file=sys.stderr)
        raise SystemExit(130) from None
