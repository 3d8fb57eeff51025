"""Data-parallel scaling of the NumPyro trainer: one device, ``--devices 2``, two processes.

What is measured: the wall-clock time per training step of
:class:`numpyro_wakesleep.train.HelmholtzTrainer` -- the step the trainer runs, with the
dataset's default settings (``--algorithm rws``, ``--batch-size 100``, ``--particles 10``)
-- in blocks of :data:`BLOCK` steps that end with ``take_losses`` as the trainer's loop does
every 50 steps (which waits for the device), after a warm-up block that compiles. Each
setup runs in its own process(es), as a user would start it:

- ``1 device``: ``python -m numpyro_wakesleep train ...`` (the default), which dispatches
  the steps of a block ahead and waits once;
- ``1 device, waits``: the same, waiting for every step as the sharded CPU runs do (to
  avoid the hang of issue 16): what the wait alone costs;
- ``2 devices``: ``... --devices 2`` (two XLA host devices in one process);
- ``2 processes``: two processes with ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES=2``
  and ``JAX_PROCESS_ID=0/1`` on this machine (gloo collectives over localhost).

The table reports the median and quartiles of the blocks' seconds per step (process 0's)
and the speed-up of the median against one device; the load average before and after.

    python benchmarks/bench_scaling_numpyro.py --datasets digits,mnist5k \\
        --out benchmarks/results/scaling_numpyro.md
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

#: Steps per timed block (the trainer's loop fetches the losses every 50 steps).
BLOCK = 50
#: (name, --devices, processes, wait for every step)
SETUPS = (
    ("1 device", 1, 1, False),
    ("1 device, waits", 1, 1, True),
    ("2 devices", 2, 1, True),
    ("2 processes", 1, 2, True),
)


def worker(dataset: str, devices: int, blocks: int, wait: bool) -> None:
    """Train ``1 + blocks`` blocks; print process 0's seconds per step of each timed block."""
    from numpyro_wakesleep.train import HelmholtzTrainer
    from wakesleep.trainer.arguments import parse_train_args
    from wakesleep.trainer.runs import load_data

    trainer = HelmholtzTrainer()
    argv = ["train", "--dataset", dataset, "--algorithm", "rws", "--devices", str(devices),
            "--out", "unused"]  # fmt: skip
    args = parse_train_args(trainer.name, argv)
    trainer.set_up_devices(args)
    with trainer.on_device(args.device):
        trainer.build(args, load_data(args))
        trainer._sync_each_step = wait  # as it is already, except for "1 device, waits"
        trainer.start()
        seconds = []
        for block in range(1 + blocks):  # the first compiles: untimed
            began = time.perf_counter()
            for _ in range(BLOCK):
                trainer.step()
            trainer.take_losses()
            if block:
                seconds.append((time.perf_counter() - began) / BLOCK)
    if trainer.is_main:
        print(json.dumps({"world_size": trainer.world_size, "seconds": seconds}))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_setup(dataset: str, devices: int, processes: int, blocks: int, wait: bool) -> dict:
    """One setup in fresh processes; process 0's record."""
    command = [sys.executable, __file__, "--worker", dataset, str(devices), str(blocks)]
    command += ["--wait"] if wait else []
    environments = [dict(os.environ)]
    if processes > 1:
        address = f"127.0.0.1:{_free_port()}"
        environments = [
            {
                **os.environ,
                "JAX_COORDINATOR_ADDRESS": address,
                "JAX_NUM_PROCESSES": str(processes),
                "JAX_PROCESS_ID": str(i),
            }  # fmt: skip
            for i in range(processes)
        ]
    children = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for env in environments
    ]
    outputs = [child.communicate(timeout=1800) for child in children]
    for child, (_, stderr) in zip(children, outputs, strict=True):
        if child.returncode:
            raise SystemExit(f"error: a worker failed:\n{stderr[-3000:]}")
    return json.loads(outputs[0][0].strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="digits,mnist5k")
    parser.add_argument("--blocks", type=int, default=6, help=f"timed blocks of {BLOCK} steps")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    parser.add_argument("--worker", nargs=3, metavar=("DATASET", "DEVICES", "BLOCKS"))
    parser.add_argument("--wait", action="store_true", help="(worker) wait for every step")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]), args.wait)
        return
    load_before = os.getloadavg()
    rows = []
    for dataset in args.datasets.split(","):
        medians = {}
        for name, devices, processes, wait in SETUPS:
            record = run_setup(dataset, devices, processes, args.blocks, wait)
            seconds = record["seconds"]
            q1, median, q3 = statistics.quantiles(seconds, n=4)
            medians[name] = median = statistics.median(seconds)
            speed_up = medians["1 device"] / median
            rows.append(
                f"| {dataset} | {name} | {record['world_size']} | {1e3 * median:.2f} | "
                f"{1e3 * q1:.2f}–{1e3 * q3:.2f} | {speed_up:.2f} |"
            )
            print(rows[-1], flush=True)
    load_after = os.getloadavg()
    lines = [
        "# NumPyro data-parallel scaling (this machine)",
        "",
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}; load average (1, 5, 15 min) "
        f"{' '.join(f'{x:.2f}' for x in load_before)} before, "
        f"{' '.join(f'{x:.2f}' for x in load_after)} after.",
        f"Per-step wall-clock time of `--algorithm rws` with each dataset's default settings, "
        f"{args.blocks} timed blocks of {BLOCK} steps after one untimed block; medians and "
        "quartiles over the blocks; speed-up = median of 1 device / median.",
        "",
        "| dataset | setup | world_size | ms/step (median) | q1–q3 | speed-up |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "    python benchmarks/bench_scaling_numpyro.py "
        f"--datasets {args.datasets} --blocks {args.blocks}",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
