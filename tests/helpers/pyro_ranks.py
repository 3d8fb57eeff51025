"""Scripts that ``torchrun`` starts in the Pyro data-parallel tests (tests/pyro/test_pyro_distributed.py).

``python tests/helpers/pyro_ranks.py steps OUT STEPS -- TRAIN_FLAGS...``: every rank builds the
trainer of ``train TRAIN_FLAGS``, takes ``STEPS`` training steps and saves its parameters
to ``OUT/rank{r}.pt``.

``python tests/helpers/pyro_ranks.py fail STEP -- TRAIN_FLAGS...``: runs the trainer, rank 1
raising at its step ``STEP``.

``python tests/helpers/pyro_ranks.py diverge OUT -- TRAIN_FLAGS...``: rank 1 moves one
parameter after two steps, then every rank writes the checkpoint ``OUT/checkpoint.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyro
import torch

from pyro_wakesleep import distributed
from pyro_wakesleep.train import HelmholtzTrainer, main
from wakesleep.trainer.arguments import parse_train_args
from wakesleep.trainer.runs import load_data


def train_steps(out: Path, steps: int, flags: list[str]) -> None:
    args = parse_train_args("pyro_wakesleep", ["train", *flags])
    trainer = HelmholtzTrainer()
    with trainer.on_device(args.device):
        trainer.build(args, load_data(args))
        for _ in range(steps):
            trainer.step()
        trainer.take_losses()  # every rank, as the trainer does
        params = {name: p.detach().clone() for name, p in pyro.get_param_store().items()}
        torch.save(params, out / f"rank{distributed.rank()}.pt")


def fail_at(step: int, flags: list[str]) -> None:
    calls = {"n": 0}
    original = HelmholtzTrainer.step

    def step_or_fail(self: HelmholtzTrainer) -> None:
        calls["n"] += 1
        if distributed.rank() == 1 and calls["n"] == step:
            raise RuntimeError(f"rank 1 fails at step {step} on purpose")
        original(self)

    HelmholtzTrainer.step = step_or_fail
    main(["train", *flags])


def diverge(out: Path, flags: list[str]) -> None:
    args = parse_train_args("pyro_wakesleep", ["train", *flags])
    trainer = HelmholtzTrainer()
    with trainer.on_device(args.device):
        trainer.build(args, load_data(args))
        for _ in range(2):
            trainer.step()
        if distributed.rank() == 1:
            with torch.no_grad():
                next(iter(pyro.get_param_store().values())).add_(1e-3)
        trainer.write_checkpoint(out / "checkpoint.pt", {"step": 2})


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    split = rest.index("--")
    positional, flags = rest[:split], rest[split + 1 :]
    if command == "steps":
        train_steps(Path(positional[0]), int(positional[1]), flags)
    elif command == "diverge":
        diverge(Path(positional[0]), flags)
    else:
        fail_at(int(positional[0]), flags)
