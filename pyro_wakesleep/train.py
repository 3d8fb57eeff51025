"""``python -m pyro_wakesleep train``: train a Helmholtz machine and write its report.

Flags and outputs are those of DESIGN.md §3, shared with ``numpyro_wakesleep``
through :mod:`wakesleep.cli` and :mod:`wakesleep.outputs`. A checkpoint
(``checkpoint.pt``) holds parameters, optimiser state, every random-number
generator and the curve, so ``--resume`` ends where an uninterrupted run with
the same seed ends.

A Ctrl-C stops the run between two steps, where the checkpoint is consistent
(:class:`wakesleep.training.CtrlC`), writes it and exits with a line that says how to
resume. The final checkpoint is written before the evaluation, so a Ctrl-C there leaves
a run that ``--resume`` evaluates again.
"""

from __future__ import annotations

import argparse
import copy
import io
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer import SVI
from pyro.optim import Adam, LambdaLR, PyroLRScheduler, PyroOptim
from tqdm.auto import tqdm

from wakesleep import cli, outputs, training
from wakesleep.datasets import BinaryDataset
from wakesleep.exact import bars_kl_bits, helmholtz_enumerable, helmholtz_log_marginal

from .evaluation import importance_log_likelihood, importance_log_weights
from .helmholtz import HelmholtzMachine
from .losses import ReweightedWakeSleep, WakeSleep

__all__ = ["main", "train"]

BACKEND = "pyro_wakesleep"
CHECKPOINT = "checkpoint.pt"


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "error: --device cuda was asked for, but PyTorch sees no CUDA device here. "
            "Use --device cpu, or install a CUDA build of torch on a machine with a GPU."
        )
    return torch.device(name)


def _objective(args: argparse.Namespace):
    if args.algorithm == "rws":
        return ReweightedWakeSleep(num_particles=args.particles, insomnia=1.0)
    return WakeSleep(num_particles=args.particles)


def _optimiser(args: argparse.Namespace) -> PyroOptim:
    """Adam whose learning rate at step ``t`` is :func:`wakesleep.training.learning_rate`.

    A constant rate (``--lr-decay 1``) is plain Adam, as in checkpoints written before the
    schedule existed; otherwise the schedule's step count sits in the optimiser state and
    travels with the checkpoint.
    """
    if args.lr_decay == 1.0:
        return Adam({"lr": args.lr})
    return LambdaLR(
        {
            "optimizer": torch.optim.Adam,
            "optim_args": {"lr": args.lr},
            "lr_lambda": partial(training.learning_rate, 1.0, args.lr_decay, args.steps),
        }
    )


def _checkpoint_state(step: int, seconds: float, curve: list[float], batches, svi: SVI, args):
    return {
        "step": step,
        "seconds": seconds,
        "curve": curve,
        "run": cli.run_settings(args),
        **_training_state(svi, batches),
    }


def _save_checkpoint(out: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    outputs.atomic_write_bytes(out / CHECKPOINT, buffer.getvalue())


def _load_checkpoint(out: Path, args: argparse.Namespace, device: torch.device) -> dict:
    # Random-number generator states must stay on the host; parameters move to the device.
    state = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=False)
    cli.check_resume(state["run"], args)
    state["params"]["params"] = {k: v.to(device) for k, v in state["params"]["params"].items()}
    return state


def _nll(
    machine: HelmholtzMachine, images: torch.Tensor, exact: bool, ctrl_c: training.CtrlC
) -> float:
    """Mean negative log-likelihood per image, nats; a Ctrl-C stops it between batches."""
    if exact:
        top, layers = machine.generative_weights()
        return float(-helmholtz_log_marginal(images.cpu().numpy(), top, layers).mean())
    total = 0.0
    for start in range(0, len(images), 100):
        ctrl_c.check(evaluating=True)
        batch = images[start : start + 100]
        log_px = importance_log_likelihood(
            machine.model, machine.guide, batch, num_particles=5000, chunk_size=250
        )
        total += float(log_px.sum())
    return -total / len(images)


#: The guide's k̂ diagnostics use this many draws on at most this many test images.
DIAGNOSTIC_SAMPLES, DIAGNOSTIC_IMAGES = 1000, 500


def _diagnostics(machine: HelmholtzMachine, images: torch.Tensor, out: Path) -> None:
    """``diagnostics.json`` and ``khat.png``: PSIS k̂ of the guide on test images."""
    try:
        from wakesleep.inference_data import psis_log_weights
    except ImportError as error:  # ArviZ is an optional extra
        print(f"diagnostics skipped: {error}")
        return
    log_weights = importance_log_weights(
        machine.model, machine.guide, images[:DIAGNOSTIC_IMAGES],
        num_particles=DIAGNOSTIC_SAMPLES, chunk_size=250,
    )  # fmt: skip
    _, pareto_k = psis_log_weights(log_weights.double().cpu().numpy())
    outputs.save_diagnostics(out, pareto_k, DIAGNOSTIC_SAMPLES)


def _step(svi: SVI, train_x: torch.Tensor, batches: torch.Generator, batch_size: int) -> float:
    """One step on a mini-batch drawn with ``batches``; the loss per datapoint."""
    num_data = len(train_x)
    index = torch.randint(num_data, (batch_size,), generator=batches)
    value = svi.step(train_x[index.to(train_x.device)], num_data=num_data) / num_data
    if isinstance(svi.optim, PyroLRScheduler):
        svi.optim.step()  # the next step's learning rate
    return value


def _training_state(svi: SVI, batches: torch.Generator) -> dict:
    """Parameters, optimiser state and every generator: what continues a run exactly."""
    return {
        "params": pyro.get_param_store().get_state(),
        "optim": svi.optim.get_state(),
        "rng": pyro.util.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "batches": batches.get_state(),
    }


def _restore(svi: SVI, batches: torch.Generator, state: dict) -> None:
    """Continue from a :func:`_training_state` with a fresh ``svi`` (never stepped)."""
    pyro.clear_param_store()
    pyro.get_param_store().set_state(state["params"])
    svi.optim.set_state(state["optim"])
    pyro.util.set_rng_state(state["rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    batches.set_state(state["batches"])


def _select_start(
    args: argparse.Namespace,
    train_x: torch.Tensor,
    batches: torch.Generator,
    ctrl_c: training.CtrlC,
) -> dict:
    """``--restarts``: train each candidate from its own start; the best one's state and curve.

    Candidates run one after another, each a fresh machine drawn from the global generator,
    for :func:`wakesleep.training.selection_steps` steps; :func:`wakesleep.training.best_restart`
    picks the winner. No checkpoint is written meanwhile.
    """
    steps = training.selection_steps(args.steps, args.restarts)
    states, curves = [], []
    with tqdm(total=steps * args.restarts, unit="step",
              desc=f"{BACKEND} {args.algorithm} {args.dataset}, {args.restarts} starts") as progress:  # fmt: skip
        for _ in range(args.restarts):
            pyro.clear_param_store()
            machine = HelmholtzMachine(train_x.shape[-1], args.layers, init=args.init)
            machine = machine.to(train_x.device)
            svi = SVI(machine.model, machine.guide, _optimiser(args), _objective(args))
            curve = []
            for _ in range(steps):
                ctrl_c.check()  # no checkpoint yet: nothing to save
                curve.append(_step(svi, train_x, batches, args.batch_size))
            curves.append(curve)
            states.append(copy.deepcopy(_training_state(svi, batches)))
            progress.update(steps)
    best = training.best_restart(np.asarray(curves))
    return {**states[best], "curve": curves[best]}


def train(args: argparse.Namespace) -> dict:
    """Run the job described by parsed, default-resolved ``args``; return the metrics.

    Bad data exit before ``--out`` is created; a Ctrl-C raises
    :class:`wakesleep.training.Interrupted` where the run can stop cleanly.
    """
    device = _device(args.device)
    data = cli.load_data(args)
    with training.CtrlC() as ctrl_c:
        out = cli.prepare_out_dir(args.out, CHECKPOINT, args.resume)
        return _train(args, data, out, device, ctrl_c)


def _train(
    args: argparse.Namespace,
    data: BinaryDataset,
    out: Path,
    device: torch.device,
    ctrl_c: training.CtrlC,
) -> dict:
    """The body of :func:`train`, Ctrl-C acted on between steps and evaluation stages."""
    train_x = torch.as_tensor(data.train, dtype=torch.float32, device=device)
    test_x = torch.as_tensor(data.test, dtype=torch.float32, device=device)

    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    machine = HelmholtzMachine(train_x.shape[-1], args.layers, init=args.init).to(device)
    svi = SVI(machine.model, machine.guide, _optimiser(args), _objective(args))
    batches = torch.Generator().manual_seed(args.seed)  # mini-batch order, on the host
    start_step, seconds, curve = 0, 0.0, []
    began = time.perf_counter()
    if args.resume:
        state = _load_checkpoint(out, args, device)
        _restore(svi, batches, state)
        start_step, seconds, curve = state["step"], state["seconds"], state["curve"]
    elif args.restarts > 1:
        state = _select_start(args, train_x, batches, ctrl_c)
        _restore(svi, batches, state)
        start_step, curve = training.selection_steps(args.steps, args.restarts), state["curve"]

    # closed on the way out, so that a Ctrl-C's message is the last line on the terminal
    with tqdm(range(start_step, args.steps), initial=start_step, total=args.steps,
              desc=f"{BACKEND} {args.algorithm} {args.dataset}", unit="step") as progress:  # fmt: skip
        for step in progress:
            curve.append(_step(svi, train_x, batches, args.batch_size))
            if (step + 1) % 50 == 0:
                progress.set_postfix(loss=f"{np.mean(curve[-50:]):.3f}")
            stop = ctrl_c.pressed  # read once: a Ctrl-C from now on waits for the next step
            if stop or training.is_checkpoint_step(step + 1, args.steps):
                elapsed = seconds + time.perf_counter() - began
                state = _checkpoint_state(step + 1, elapsed, curve, batches, svi, args)
                _save_checkpoint(out, state)
            if stop:
                raise training.Interrupted(step + 1)
    seconds += time.perf_counter() - began

    # the final checkpoint is on disk: a Ctrl-C from here on leaves a run that --resume
    # evaluates again
    exact = helmholtz_enumerable(args.layers)
    bars_kl = None
    if args.dataset == "bars" and exact:  # exact KL needs the hidden layers enumerated
        bars_kl = float(bars_kl_bits(*machine.generative_weights()))
    train_nll = _nll(machine, training.train_nll_images(train_x, exact), exact, ctrl_c)
    test_nll = _nll(machine, test_x, exact, ctrl_c)
    metrics = outputs.run_metrics(BACKEND, args, seconds, train_nll, test_nll, exact, bars_kl)
    ctrl_c.check(evaluating=True)
    outputs.write_metrics(out, metrics)
    outputs.save_samples(out, machine.sample(args.num_samples).cpu().numpy(), data.image_shape)
    outputs.save_curve(out, np.arange(1, len(curve) + 1), curve, "loss (nats per datapoint)")
    ctrl_c.check(evaluating=True)
    _diagnostics(machine, test_x, out)
    return metrics


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m pyro_wakesleep train ...``: train, write the outputs, print the metrics."""
    args = cli.parse_train_args(BACKEND, argv)
    with cli.exit_on_interrupt(args.out, CHECKPOINT):
        metrics = train(args)
    print(outputs.summary_line(metrics))
    return metrics
