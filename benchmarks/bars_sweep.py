"""How often one start of the bars machine reaches a given KL: many seeds at once (NumPyro).

The trainer's bars defaults (``wakesleep/trainer/arguments.py``) come from sweeps of this kind. Each seed
is one start of the 16-8-1 machine of Hinton et al. (1995), trained exactly as
``python -m numpyro_wakesleep train --dataset bars --restarts 1`` trains it, all seeds as one
vmapped computation. At a few points of the run it prints every seed's exact
KL(true ‖ model) in bits and the training loss over the last fifth of the steps so far, and
at the end how many seeds reached 0.05 and 0.10 bits, and which seed ``--restarts`` would
have kept had the seeds been its candidates (the lowest loss after the first tenth).

    python benchmarks/bars_sweep.py --algorithm rws --seeds 16
    python benchmarks/bars_sweep.py --algorithm ws --seeds 32 --particles 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import random
from numpyro.infer import SVI

from numpyro_wakesleep.helmholtz import HelmholtzMachine
from numpyro_wakesleep.losses import ReweightedWakeSleep, WakeSleep
from wakesleep.trainer import schedule
from wakesleep.trainer.arguments import DATASET_DEFAULTS, decay_type, positive_float, positive_int
from wakesleep.trainer.datasets import load_dataset
from wakesleep.trainer.exact import bars_kl_bits
from wakesleep.trainer.initialisation import INITS


def main() -> None:
    bars = DATASET_DEFAULTS["bars"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", choices=("ws", "rws"), required=True)
    parser.add_argument("--seeds", type=positive_int, default=16, help="starts, seeds 0..S-1")
    parser.add_argument("--particles", type=positive_int, default=bars["particles"])
    parser.add_argument("--insomnia", type=float, default=1.0, help="RWS only")
    parser.add_argument("--steps", type=positive_int, default=bars["steps"])
    parser.add_argument("--batch-size", type=positive_int, default=bars["batch_size"])
    parser.add_argument("--lr", type=positive_float, default=bars["lr"])
    parser.add_argument("--lr-decay", type=decay_type, default=bars["lr_decay"])
    parser.add_argument("--init", choices=INITS, default=bars["init"])
    args = parser.parse_args()

    train_x = jnp.asarray(load_dataset("bars").train, dtype=jnp.float32)
    num_data = len(train_x)
    machine = HelmholtzMachine(train_x.shape[-1], bars["layers"], init=args.init)
    loss = (
        ReweightedWakeSleep(num_particles=args.particles, insomnia=args.insomnia)
        if args.algorithm == "rws"
        else WakeSleep(num_particles=args.particles)
    )
    learning_rate = partial(schedule.learning_rate, args.lr, args.lr_decay, args.steps)
    svi = SVI(machine.model, machine.guide, optax.adam(learning_rate), loss)

    def step(carry, _):
        state, key = carry
        key, draw = random.split(key)
        index = random.randint(draw, (args.batch_size,), 0, num_data)
        state, value = svi.update(state, train_x[index], num_data=num_data)
        return (state, key), value / num_data

    def run(states, keys, length):
        def one(state, key):
            (state, key), values = jax.lax.scan(step, (state, key), None, length=length)
            return state, key, values

        return jax.vmap(one)(states, keys)

    keys = jnp.stack([random.PRNGKey(seed) for seed in range(args.seeds)])
    # as the trainer splits PRNGKey(seed): seed s here is `--seed s --restarts 1` there
    split = jax.vmap(lambda key: random.split(key, 3))(keys)
    init_keys, batch_keys = split[:, 0], split[:, 1]
    init = jax.vmap(partial(svi.init, num_data=num_data), in_axes=(0, None))
    states = jax.jit(init)(init_keys, train_x[: args.batch_size])
    selection = schedule.selection_steps(args.steps, 2)
    marks = sorted({selection, args.steps // 4, args.steps})
    curves, done, began = [], 0, time.perf_counter()
    chosen = None
    for mark in marks:
        states, batch_keys, values = jax.jit(run, static_argnums=2)(states, batch_keys, mark - done)
        curves.append(np.asarray(values, dtype=np.float64))
        done = mark
        curve = np.concatenate(curves, axis=1)
        recent = curve[:, -max(1, mark // 5) :].mean(axis=1)
        params = jax.vmap(svi.get_params)(states)
        kl = [
            bars_kl_bits(*machine.generative_weights({k: v[s] for k, v in params.items()}))
            for s in range(args.seeds)
        ]
        if mark == selection:
            chosen = schedule.best_restart(curve)
        print(f"step {mark} ({time.perf_counter() - began:.0f} s)")
        print("  seed  " + " ".join(f"{s:>6d}" for s in range(args.seeds)))
        print("  KL    " + " ".join(f"{k:6.3f}" for k in kl))
        print("  loss  " + " ".join(f"{r:6.3f}" for r in recent))
    assert chosen is not None
    print(
        f"\n{args.algorithm}, K={args.particles}: final KL median {statistics.median(kl):.3f} "
        f"bits, min {min(kl):.3f}; {sum(k <= 0.05 for k in kl)}/{args.seeds} seeds <= 0.05, "
        f"{sum(k <= 0.10 for k in kl)}/{args.seeds} <= 0.10; the restart rule keeps seed "
        f"{chosen}: {kl[chosen]:.3f} bits"
    )


if __name__ == "__main__":
    main()
