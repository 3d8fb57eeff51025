"""Train a Helmholtz machine on binarised scikit-learn digits with reweighted wake-sleep.

A short demonstration of the objectives under plain ``pyro.infer.SVI``: the
reported loss (negative importance-weighted bound, nats per image) falls.

    python examples/rws_digits.py --steps 1500
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch
from sklearn.datasets import load_digits

from pyro_wakesleep import ReweightedWakeSleep
from pyro_wakesleep.helmholtz import HelmholtzMachine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    images = torch.as_tensor(load_digits().data > 7, dtype=torch.float32)
    machine = HelmholtzMachine(images.shape[-1], hidden=(args.hidden,))
    loss = ReweightedWakeSleep(num_particles=args.particles, insomnia=1.0)
    svi = pyro.infer.SVI(machine.model, machine.guide, pyro.optim.Adam({"lr": args.lr}), loss)

    start, running = time.perf_counter(), None
    for step in range(1, args.steps + 1):
        batch = images[torch.randint(len(images), (args.batch_size,))]
        value = svi.step(batch, num_data=len(images)) / len(images)
        running = value if running is None else 0.95 * running + 0.05 * value
        if step == 1 or step % 100 == 0:
            print(
                f"step {step:5d}  loss {running:7.2f} nats/image  ess {loss.last_terms['ess']:.2f}"
            )
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
