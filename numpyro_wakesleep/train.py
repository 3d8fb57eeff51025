"""``python -m numpyro_wakesleep train``: train a Helmholtz machine and write its report.

Flags and outputs are those of DESIGN.md §3, shared with ``pyro_wakesleep`` through
:mod:`wakesleep.cli` and :mod:`wakesleep.outputs`. A checkpoint (``checkpoint.pkl``)
holds parameters, optimiser state, every random key and the curve, as NumPy arrays, so
``--resume`` ends where an uninterrupted run with the same seed ends.

Randomness comes from one key, ``PRNGKey(seed)``, split into the key of
:meth:`numpyro.infer.SVI.init` (whose state then carries the key of every step), the key
of the mini-batch indices and the key of the evaluation (likelihood estimates, samples,
diagnostics); the checkpoint stores the keys as they stand. Each step is one jitted call
that draws the mini-batch indices and runs :meth:`numpyro.infer.SVI.update`; losses stay
on the device and are fetched every :data:`LOG_EVERY` steps, so the host does not wait
for the device at every step.

A Ctrl-C stops the run between two steps (:class:`wakesleep.training.CtrlC`): it never
interrupts a JAX computation, and the run waits for the device before it writes the
checkpoint and exits with a line that says how to resume. The final checkpoint is written
before the evaluation, so a Ctrl-C there leaves a run that ``--resume`` evaluates again.
"""

from __future__ import annotations

import argparse
import pickle
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array, random
from numpyro.infer import SVI
from numpyro.infer.svi import SVIState
from tqdm.auto import tqdm

from wakesleep import cli, outputs, training
from wakesleep.datasets import BinaryDataset
from wakesleep.exact import bars_kl_bits, helmholtz_enumerable, helmholtz_log_marginal

from .evaluation import importance_log_likelihood, importance_log_weights
from .helmholtz import HelmholtzMachine
from .losses import ReweightedWakeSleep, WakeSleep

__all__ = ["main", "train"]

BACKEND = "numpyro_wakesleep"
CHECKPOINT = "checkpoint.pkl"
#: Losses are fetched from the device (and the progress bar updated) every this many steps.
LOG_EVERY = 50


def _device(name: str) -> jax.Device:
    if name == "cuda":
        try:
            return jax.devices("gpu")[0]
        except RuntimeError:
            raise SystemExit(
                "error: --device cuda was asked for, but JAX sees no GPU here. Use --device "
                "cpu, or install a CUDA build of jax (e.g. pip install 'jax[cuda12]') on a "
                "machine with a GPU."
            ) from None
    return jax.devices("cpu")[0]


def _objective(args: argparse.Namespace) -> ReweightedWakeSleep | WakeSleep:
    if args.algorithm == "rws":
        return ReweightedWakeSleep(num_particles=args.particles, insomnia=1.0)
    return WakeSleep(num_particles=args.particles)


def _optimiser(args: argparse.Namespace) -> optax.GradientTransformation:
    """Adam whose learning rate at step ``t`` is :func:`wakesleep.training.learning_rate`.

    A constant rate (``--lr-decay 1``) is plain ``optax.adam(lr)``, whose state has the
    structure of checkpoints written before the schedule existed; otherwise Optax keeps the
    schedule's step count in its state, which travels with the checkpoint.
    """
    if args.lr_decay == 1.0:
        return optax.adam(args.lr)
    return optax.adam(partial(training.learning_rate, args.lr, args.lr_decay, args.steps))


def _as_numpy(tree: Any) -> Any:
    """The same pytree with every array fetched to the host as a NumPy array."""
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _checkpoint_state(
    step: int,
    seconds: float,
    curve: list[float],
    batch_key: Array,
    svi_state: SVIState,
    args: argparse.Namespace,
) -> dict:
    optim_step, (params, optim_state) = svi_state.optim_state
    return {
        "step": step,
        "seconds": seconds,
        "curve": curve,
        "run": cli.run_settings(args),
        "params": _as_numpy(params),  # unconstrained, by name
        "optim_step": _as_numpy(optim_step),
        "optim": _as_numpy(jax.tree.leaves(optim_state)),  # the Optax state's leaves, in order
        "mutable": _as_numpy(svi_state.mutable_state),
        "rng": _as_numpy(svi_state.rng_key),
        "batches": _as_numpy(batch_key),
    }


def _save_checkpoint(out: Path, state: dict) -> None:
    outputs.atomic_write_bytes(out / CHECKPOINT, pickle.dumps(state, protocol=5))


def _load_checkpoint(out: Path, args: argparse.Namespace) -> dict:
    with (out / CHECKPOINT).open("rb") as handle:
        state = pickle.load(handle)
    cli.check_resume(state["run"], args)
    return state


def _restore(fresh: SVIState, state: dict) -> SVIState:
    """The SVI state of a checkpoint, in the structure of a fresh state (or of its shapes)."""
    _, (params, optim_state) = fresh.optim_state
    leaves, structure = jax.tree.flatten(optim_state)
    saved = state["optim"]
    if set(state["params"]) != set(params) or len(saved) != len(leaves):
        raise SystemExit(
            f"error: --resume: the {CHECKPOINT} does not hold the parameters of this machine "
            f"({sorted(state['params'])} vs {sorted(params)})."
        )
    params = {name: jnp.asarray(value) for name, value in state["params"].items()}
    optim_state = jax.tree.unflatten(structure, [jnp.asarray(leaf) for leaf in saved])
    return SVIState(
        (jnp.asarray(state["optim_step"]), (params, optim_state)),
        jax.tree.map(jnp.asarray, state["mutable"]),
        jnp.asarray(state["rng"]),
    )


def _step_function(svi: SVI, num_data: int, batch_size: int) -> Callable:
    """One training step (to be jitted): draw a mini-batch, then ``svi.update`` on it."""

    def step(svi_state: SVIState, batch_key: Array, train_x: Array) -> tuple:
        batch_key, draw = random.split(batch_key)
        index = random.randint(draw, (batch_size,), 0, num_data)
        svi_state, value = svi.update(svi_state, train_x[index], num_data=num_data)
        return svi_state, batch_key, value

    return step


def _select_start(
    init: Callable,
    step: Callable,
    init_key: Array,
    batch_key: Array,
    train_x: Array,
    args: argparse.Namespace,
    ctrl_c: training.CtrlC,
) -> tuple[SVIState, Array, list[float]]:
    """``--restarts``: train every candidate from its own start; the best one's state and curve.

    The candidates are one batched computation: ``init`` and ``step`` are vmapped over keys
    split from ``init_key`` and ``batch_key``, for :func:`wakesleep.training.selection_steps`
    steps; :func:`wakesleep.training.best_restart` picks the winner. No checkpoint is
    written meanwhile.
    """
    steps = training.selection_steps(args.steps, args.restarts)
    starts = jax.jit(jax.vmap(init, in_axes=(0, None)))
    states = starts(random.split(init_key, args.restarts), train_x[: args.batch_size])
    batch_keys = random.split(batch_key, args.restarts)
    steps_of_all = jax.jit(jax.vmap(step, in_axes=(0, 0, None)))
    values = []
    with tqdm(range(steps), unit="step",
              desc=f"{BACKEND} {args.algorithm} {args.dataset}, {args.restarts} starts") as progress:  # fmt: skip
        for _ in progress:
            if ctrl_c.pressed:
                jax.block_until_ready(states)  # nothing left computing as the run unwinds
                ctrl_c.check()  # no checkpoint yet: nothing to save
            states, batch_keys, value = steps_of_all(states, batch_keys, train_x)
            values.append(value)
    # fetched one by one: a jnp.stack of thousands of arrays is one slow XLA compilation
    curves = np.stack(jax.device_get(values), axis=1).astype(np.float64) / len(train_x)
    best = training.best_restart(curves)
    state = jax.tree.map(lambda leaf: leaf[best], states)
    return state, batch_keys[best], [float(v) for v in curves[best]]


def _nll(
    machine: HelmholtzMachine,
    params: dict,
    images: Array,
    exact: bool,
    rng_key: Array,
    ctrl_c: training.CtrlC,
) -> float:
    """Mean negative log-likelihood per image, nats; a Ctrl-C stops it between batches."""
    if exact:
        top, layers = machine.generative_weights(params)
        return float(-helmholtz_log_marginal(np.asarray(images), top, layers).mean())
    total = 0.0
    starts = range(0, len(images), 100)
    for key, start in zip(random.split(rng_key, len(starts)), starts, strict=True):
        ctrl_c.check(evaluating=True)  # the previous batch is fetched: nothing computing
        batch = images[start : start + 100]
        log_px = importance_log_likelihood(
            machine.model, machine.guide, params, batch, rng_key=key,
            num_particles=5000, chunk_size=250,
        )  # fmt: skip
        total += float(np.asarray(log_px, dtype=np.float64).sum())
    return -total / len(images)


#: The guide's k̂ diagnostics use this many draws on at most this many test images.
DIAGNOSTIC_SAMPLES, DIAGNOSTIC_IMAGES = 1000, 500


def _diagnostics(
    machine: HelmholtzMachine, params: dict, images: Array, out: Path, rng_key: Array
) -> None:
    """``diagnostics.json`` and ``khat.png``: PSIS k̂ of the guide on test images."""
    try:
        from wakesleep.inference_data import psis_log_weights
    except ImportError as error:  # ArviZ is an optional extra
        print(f"diagnostics skipped: {error}")
        return
    log_weights = importance_log_weights(
        machine.model, machine.guide, params, images[:DIAGNOSTIC_IMAGES], rng_key=rng_key,
        num_particles=DIAGNOSTIC_SAMPLES, chunk_size=250,
    )  # fmt: skip
    _, pareto_k = psis_log_weights(np.asarray(log_weights, dtype=np.float64))
    outputs.save_diagnostics(out, pareto_k, DIAGNOSTIC_SAMPLES)


def train(args: argparse.Namespace) -> dict:
    """Run the job described by parsed, default-resolved ``args``; return the metrics.

    Bad data exit before ``--out`` is created; a Ctrl-C raises
    :class:`wakesleep.training.Interrupted` where the run can stop cleanly.
    """
    device = _device(args.device)
    data = cli.load_data(args)
    with training.CtrlC() as ctrl_c, jax.default_device(device):
        out = cli.prepare_out_dir(args.out, CHECKPOINT, args.resume)
        return _train_on_device(args, data, out, ctrl_c)


def _train_on_device(
    args: argparse.Namespace, data: BinaryDataset, out: Path, ctrl_c: training.CtrlC
) -> dict:
    """The body of :func:`train`, run with the chosen device as JAX's default device.

    Ctrl-C is acted on between steps and evaluation stages, once the device is idle.
    """
    # uncommitted arrays on the default device: committing only some inputs of the jitted
    # step would make its second call compile again
    train_x = jnp.asarray(data.train, dtype=jnp.float32)
    test_x = jnp.asarray(data.test, dtype=jnp.float32)

    init_key, batch_key, eval_key = random.split(random.PRNGKey(args.seed), 3)
    machine = HelmholtzMachine(train_x.shape[-1], args.layers, init=args.init)
    svi = SVI(machine.model, machine.guide, _optimiser(args), _objective(args))
    num_data = len(train_x)
    init = partial(svi.init, num_data=num_data)
    start_step, seconds, curve = 0, 0.0, []
    began = time.perf_counter()
    if args.resume:
        state = _load_checkpoint(out, args)
        # only the structure of a fresh state is needed (and init's set-up of svi): trace it
        svi_state = _restore(jax.eval_shape(init, init_key, train_x[: args.batch_size]), state)
        batch_key = jnp.asarray(state["batches"])
        start_step, seconds, curve = state["step"], state["seconds"], state["curve"]
    elif args.restarts > 1:
        svi_state, batch_key, curve = _select_start(
            init, _step_function(svi, num_data, args.batch_size), init_key, batch_key, train_x,
            args, ctrl_c,
        )  # fmt: skip
        start_step = training.selection_steps(args.steps, args.restarts)
    else:
        # jitted: one compilation instead of one per operation of an eager first trace
        svi_state = jax.jit(init)(init_key, train_x[: args.batch_size])

    step_fn = jax.jit(_step_function(svi, num_data, args.batch_size))
    pending: list[Array] = []  # losses still on the device

    def fetch() -> None:
        curve.extend(float(v) / num_data for v in jax.device_get(pending))
        pending.clear()

    # closed on the way out, so that a Ctrl-C's message is the last line on the terminal
    with tqdm(range(start_step, args.steps), initial=start_step, total=args.steps,
              desc=f"{BACKEND} {args.algorithm} {args.dataset}", unit="step") as progress:  # fmt: skip
        for step in progress:
            svi_state, batch_key, value = step_fn(svi_state, batch_key, train_x)
            pending.append(value)
            if (step + 1) % LOG_EVERY == 0:
                fetch()
                progress.set_postfix(loss=f"{np.mean(curve[-LOG_EVERY:]):.3f}")
            stop = ctrl_c.pressed  # read once: a Ctrl-C from now on waits for the next step
            if stop or training.is_checkpoint_step(step + 1, args.steps):
                fetch()  # the state is fetched too: the device is idle once it is saved
                elapsed = seconds + time.perf_counter() - began
                state = _checkpoint_state(step + 1, elapsed, curve, batch_key, svi_state, args)
                _save_checkpoint(out, state)
            if stop:
                raise training.Interrupted(step + 1)
    fetch()
    seconds += time.perf_counter() - began

    # the final checkpoint is on disk: a Ctrl-C from here on leaves a run that --resume
    # evaluates again. Every stage fetches its result, so none leaves the device busy.
    params = svi.get_params(svi_state)
    nll_train_key, nll_test_key, sample_key, diagnostics_key = random.split(eval_key, 4)
    exact = helmholtz_enumerable(args.layers)
    bars_kl = None
    if args.dataset == "bars" and exact:  # exact KL needs the hidden layers enumerated
        bars_kl = float(bars_kl_bits(*machine.generative_weights(params)))
    train_images = training.train_nll_images(train_x, exact)
    train_nll = _nll(machine, params, train_images, exact, nll_train_key, ctrl_c)
    test_nll = _nll(machine, params, test_x, exact, nll_test_key, ctrl_c)
    metrics = outputs.run_metrics(BACKEND, args, seconds, train_nll, test_nll, exact, bars_kl)
    ctrl_c.check(evaluating=True)
    outputs.write_metrics(out, metrics)
    samples = np.asarray(machine.sample(params, sample_key, args.num_samples))
    outputs.save_samples(out, samples, data.image_shape)
    outputs.save_curve(out, np.arange(1, len(curve) + 1), curve, "loss (nats per datapoint)")
    ctrl_c.check(evaluating=True)
    _diagnostics(machine, params, test_x, out, diagnostics_key)
    return metrics


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m numpyro_wakesleep train ...``: train, write the outputs, print the metrics."""
    args = cli.parse_train_args(BACKEND, argv)
    with cli.exit_on_interrupt(args.out, CHECKPOINT):
        metrics = train(args)
    print(outputs.summary_line(metrics))
    return metrics
