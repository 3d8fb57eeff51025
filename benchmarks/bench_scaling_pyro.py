"""Data-parallel scaling of the Pyro trainer: one process against ``torchrun`` ranks.

What is measured: the wall-clock time per training step of
:class:`pyro_wakesleep.train.HelmholtzTrainer` -- the step the trainer runs (compiled RWS,
``JointAdam``), at the data set's default settings -- in blocks of :data:`BLOCK` steps that
end with ``take_losses`` as the trainer's loop does every 50 steps (with ranks: an
all-reduce of the block's losses), after a warm-up block that compiles. Each setup runs in
its own process(es), one thread each, as a user would start it:

- ``1 process``: ``python -m pyro_wakesleep train ...``;
- ``P ranks``: ``torchrun --nproc_per_node=P -m pyro_wakesleep train ...`` (gloo over
  localhost): each rank ``B / P`` rows of every batch and one all-reduce of the gradients
  per step, so at best ``P`` times faster.

The table reports rank 0's median and quartiles of the blocks' milliseconds per step and the
speed-up of the median against one process; the load average before and after. No
evaluation runs (the trainer's would dominate an mnist5k run).

Command (it wrote ``benchmarks/results/scaling_pyro.md``)::

    .venv/bin/python benchmarks/bench_scaling_pyro.py --datasets digits,mnist5k --blocks 10 \\
        --out benchmarks/results/scaling_pyro.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
#: Steps per timed block (the trainer's loop fetches the losses every 50 steps).
BLOCK = 50


def worker(dataset: str, blocks: int) -> None:
    """Train ``1 + blocks`` blocks; rank 0 prints the milliseconds per step of each timed one."""
    from pyro_wakesleep import distributed
    from pyro_wakesleep.train import HelmholtzTrainer
    from wakesleep.trainer.arguments import parse_train_args
    from wakesleep.trainer.runs import load_data

    trainer = HelmholtzTrainer()
    argv = ["train", "--dataset", dataset, "--algorithm", "rws", "--out", "unused"]
    args = parse_train_args(trainer.name, argv)
    with trainer.on_device(args.device):
        trainer.build(args, load_data(args))
        per_step = []
        for block in range(1 + blocks):
            began = time.perf_counter()
            for _ in range(BLOCK):
                trainer.step()
            trainer.take_losses()
            if block > 0:
                per_step.append(1e3 * (time.perf_counter() - began) / BLOCK)
        if distributed.rank() == 0:
            print(json.dumps({"world_size": trainer.world_size, "ms": per_step}))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(dataset: str, ranks: int, blocks: int) -> dict:
    """Rank 0's report of :func:`worker` on ``ranks`` processes."""
    command = [__file__, "--worker", dataset, "--blocks", str(blocks)]
    if ranks > 1:
        command = ["-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
                   "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *command]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, *command], cwd=ROOT, env=env, check=True,
                            capture_output=True, text=True)  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,mnist5k")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--worker", metavar="DATASET", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.blocks)
        return
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = []
    for dataset in args.datasets.split(","):
        one = None
        for ranks in (1, args.ranks):
            report = measure(dataset, ranks, args.blocks)
            assert report["world_size"] == ranks, report
            q1, median, q3 = statistics.quantiles(report["ms"], n=4)
            one = one or median
            setup = "1 process" if ranks == 1 else f"{ranks} ranks (torchrun, gloo)"
            rows.append(
                f"| {dataset} | {setup} | {ranks} | {median:.2f} | {q1:.2f}–{q3:.2f} "
                f"| {one / median:.2f} |"
            )
    command = " ".join(["python", "benchmarks/bench_scaling_pyro.py", *sys.argv[1:]])
    text = "\n".join([
        f"## Pyro trainer: one process against {args.ranks} torchrun ranks",
        "",
        f"`{command}`",
        "",
        "| data set | setup | world_size | ms/step (median) | q1–q3 | speed-up |",
        "|---|---|---:|---:|---:|---:|",
        *rows,
        "",
        f"RWS at each data set's default settings, {args.blocks} timed blocks of {BLOCK} steps "
        "after one untimed block, one thread per process. torch "
        f"{torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs; load "
        f"average (1, 5, 15 min) {load_before} before, "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} after.",
    ]) + "\n"  # fmt: skip
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
