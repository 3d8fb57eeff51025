"""Per-step time of reweighted wake-sleep on a sigmoid belief net: ours (eager and compiled), Pyro's, hand-written; and JSA.

What is measured: the wall-clock time, and this thread's CPU time, of one training step --
compute the loss, back-propagate, apply an Adam update and return the reported value as a
float -- of four implementations of reweighted wake-sleep (wake-θ + wake-φ, ``insomnia = 1``,
no sleep phase), and of our joint stochastic approximation on the same network and ``K``:

- ``ours``: :class:`pyro_wakesleep.ReweightedWakeSleep` under ``pyro.infer.SVI.step``;
- ``jit``: :class:`pyro_wakesleep.JitReweightedWakeSleep` (the same arguments) under
  ``pyro.infer.SVI.step``: the same step compiled with ``torch.jit.trace`` (its first step runs
  eagerly, the second traces the graph, later ones replay it; the warm-up rounds, at least 3,
  cover the compilation). Pyro's validation is off inside its graph (its value is still checked
  for being finite while validation is on);
- ``jit+joint``: the same compiled objective with :class:`pyro_wakesleep.JointAdam` (Pyro's
  Adam, the same updates, as one torch optimiser, like the hand-written step's) instead of
  ``pyro.optim.Adam`` (one torch optimiser per parameter): the trainer's step;
- ``pyro``: :class:`pyro.infer.ReweightedWakeSleep` under ``pyro.infer.SVI.step``. It weights
  the *whole batch jointly* (one weight per particle, not per datapoint), a different and
  much noisier estimator; it is here only as a speed reference;
- ``hand``: a hand-written PyTorch step (``nn.Linear`` modules, ``torch.optim.Adam``): per-datapoint
  log-weights of shape ``(K, B)``, ``logsumexp`` over ``K`` for wake-θ, detached self-normalised
  weights for wake-φ, the ``N/B`` mini-batch scale applied after the ``logsumexp``;
- ``jsa``: :class:`pyro_wakesleep.JointStochasticApproximation` (``num_particles = K``) under
  ``pyro.infer.SVI.step``, the model and guide given the mini-batch's row indices
  (``index=``) so that each image keeps its chain. Its step is an RWS step's ``K`` proposals
  plus one guide and model evaluation of the chains' states and a ``K``-step sequential
  independence sampler; the table reports it against ``ours`` (JSA/RWS).

The model is a one-hidden-layer sigmoid belief net (``pyro_wakesleep.helmholtz.HelmholtzMachine``:
``h ~ Bernoulli(sigmoid(b))``, ``x | h ~ Bernoulli(sigmoid(W h + c))``, guide
``h | x ~ Bernoulli(sigmoid(V x + d))``) on scikit-learn's digits binarised at ``> 7``
(1797 images, 64 pixels), ``K = 10`` particles, mini-batches of 100 (plate sub-sampling with
``num_data = 1797``), Adam with learning rate 1e-3, one CPU thread. All six start from the same
parameters (each its own copy of the machine) and see the same mini-batches. Pyro's default validation of distribution arguments
and samples is on (``--validation off`` turns it off for the Pyro-based steps; the
hand-written step never validates).

The methods are interleaved in one process: every round draws a batch and runs one step of each
method, in an order that rotates from round to round; the first ``--warmup`` rounds are
discarded and the table reports medians over ``--repeats`` rounds, their ratios, and the median
of the per-round (paired) ratios, which is robust to drifts in machine load. Before timing, the
script checks on a shared random seed that ``ours`` and ``hand`` give the same value and the
same gradients (so they do the same work), and the same of ``jit`` and ``hand``, ``jit``'s
third call compared (two warm-up calls first: an eager one, then the tracing one), so that
its compiled graph is what is checked; it reports each method's value over the last timed
steps (all train from the same start on the same batches).

Goals (issue 15), each checked at its size on wall-clock and CPU-time medians and on the
paired ratios, printed as met/missed lines (and a warning when missed): ``ours/pyro <= 1``
at both sizes, ``ours/hand <= 1.5`` at hidden 200, and for the compiled step (the trainer's,
``jit+joint``) ``<= 1.25`` hand-written at hidden 200 and ``<= 0.6`` Pyro at hidden 32.

Command (it wrote ``benchmarks/results/pyro_sbn.md``)::

    .venv/bin/python benchmarks/bench_pyro_sbn.py --repeats 1000 --warmup 100 \\
        --hidden 32,200 --out benchmarks/results/pyro_sbn.md

Flags: ``--repeats`` (timed rounds per hidden size), ``--warmup`` (untimed rounds first, at
least 3),
``--hidden`` (comma-separated hidden sizes, default ``32,200``), ``--out`` (markdown file),
``--seed``, ``--validation on|off``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import pyro.infer
import pyro.optim
import torch
import torch.nn.functional as F
from _timing import (
    add_common_arguments,
    goal_line,
    hidden_sizes,
    loss_row,
    paired_ratio,
    quartile_cells,
)
from sklearn.datasets import load_digits
from torch import Tensor, nn

import pyro_wakesleep
from pyro_wakesleep.helmholtz import HelmholtzMachine

NUM_PARTICLES = 10
BATCH_SIZE = 100
LEARNING_RATE = 1e-3
METHODS = ("ours", "jit", "jit+joint", "pyro", "hand", "jsa")
#: (numerator, denominator, bound, hidden sizes): each a goal ``numerator/denominator <= bound``
GOALS = (
    ("ours", "pyro", 1.0, (32, 200)),
    ("ours", "hand", 1.5, (200,)),
    ("jit+joint", "hand", 1.25, (200,)),
    ("jit+joint", "pyro", 0.6, (32,)),
)
#: warm-up rounds that cover ``jit``'s compilation: an eager step, the tracing step, a replay
MIN_WARMUP = 3


class HandWrittenRWS(nn.Module):
    """Reweighted wake-sleep for a one-hidden-layer sigmoid belief net, written in plain PyTorch.

    Generative ``p(h) p(x|h)``: ``top_logits`` and ``decoder``; recognition ``q(h|x)``:
    ``encoder``. One :meth:`step` is the RWS wake-θ + wake-φ update with one Adam optimiser.
    """

    def __init__(self, num_visible: int, num_hidden: int, num_particles: int, lr: float) -> None:
        super().__init__()
        self.num_particles = num_particles
        self.top_logits = nn.Parameter(torch.zeros(num_hidden))
        self.decoder = nn.Linear(num_hidden, num_visible)
        self.encoder = nn.Linear(num_visible, num_hidden)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=lr)

    def copy_from(self, machine: HelmholtzMachine) -> HandWrittenRWS:
        """Take the parameters of a one-hidden-layer Helmholtz machine (same initialisation)."""
        with torch.no_grad():
            self.top_logits.copy_(machine.generative.top_logits)
            self.decoder.weight.copy_(machine.generative.layers[0].weight)
            self.decoder.bias.copy_(machine.generative.layers[0].bias)
            self.encoder.weight.copy_(machine.recognition[0].weight)
            self.encoder.bias.copy_(machine.recognition[0].bias)
        return self

    def terms(self, x: Tensor, num_data: int) -> tuple[Tensor, Tensor]:
        """``(wake_theta, wake_phi)`` surrogate losses, summed over the batch and scaled by N/B.

        ``wake_theta``'s value is the negative IWAE bound (the reported value).
        """
        scale = num_data / x.shape[0]
        logits_q = self.encoder(x)  # (B, H)
        with torch.no_grad():  # no gradient through the sample
            h = torch.bernoulli(
                torch.sigmoid(logits_q).expand((self.num_particles, *logits_q.shape))
            )
        # log-densities per particle and datapoint, shape (K, B)
        log_q = -F.binary_cross_entropy_with_logits(logits_q.expand_as(h), h, reduction="none").sum(
            -1
        )
        log_prior = -F.binary_cross_entropy_with_logits(
            self.top_logits.expand_as(h), h, reduction="none"
        ).sum(-1)
        logits_x = self.decoder(h)  # (K, B, D)
        log_lik = -F.binary_cross_entropy_with_logits(
            logits_x, x.expand_as(logits_x), reduction="none"
        ).sum(-1)
        log_w = log_prior + log_lik - log_q.detach()  # (K, B)
        iwae = torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)  # (B,)
        wake_theta = -scale * iwae.sum()
        weights = torch.softmax(log_w.detach(), dim=0)
        wake_phi = -scale * (weights * log_q).sum()
        return wake_theta, wake_phi

    def step(self, x: Tensor, num_data: int) -> float:
        """One RWS update; returns the negative IWAE bound (nats, full-data scale)."""
        wake_theta, wake_phi = self.terms(x, num_data)
        self.optimizer.zero_grad()
        (wake_theta + wake_phi).backward()
        self.optimizer.step()
        return wake_theta.item()


@dataclass
class Method:
    """A named training step and the values it reported while being timed."""

    name: str
    step: Callable[[Tensor, Tensor], float]  # (mini-batch, its row indices) -> value
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    #: the loss object's ``last_terms`` (read after timing, not during)
    last_terms: Callable[[], dict[str, float]] | None = None


def _machines(num_hidden: int, seed: int) -> tuple[HelmholtzMachine, HelmholtzMachine]:
    """Two Helmholtz machines with the same initial parameters, under distinct Pyro names."""
    torch.manual_seed(seed)
    ours = HelmholtzMachine(64, hidden=(num_hidden,), name=f"ours{num_hidden}")
    return ours, _twin(ours, f"pyro{num_hidden}")


def _twin(machine: HelmholtzMachine, name: str) -> HelmholtzMachine:
    """A copy of ``machine`` (same parameters) under another Pyro name."""
    twin = copy.deepcopy(machine)
    twin.name = name
    return twin


def _machine_grads(machine: HelmholtzMachine) -> list[Tensor]:
    """The gradients of a one-hidden-layer machine, in the order of ``hand``'s below."""
    return [
        machine.generative.top_logits.grad,
        machine.generative.layers[0].weight.grad,
        machine.generative.layers[0].bias.grad,
        machine.recognition[0].weight.grad,
        machine.recognition[0].bias.grad,
    ]


def check_same_maths(num_hidden: int, images: Tensor, seed: int) -> dict[str, float]:
    """Value and gradients of ``ours`` and of ``jit`` against ``hand`` on the same samples
    (shared seed).

    ``jit`` is called three times, the first two (eager, then tracing) on other seeds, so that
    the third, compared, replays its compiled graph. Returns the largest relative differences
    and the values per image; Pyro's joint-weight value on the same samples is given for
    reference.
    """
    pyro.clear_param_store()
    num_data = images.shape[0]
    batch = images[:BATCH_SIZE]
    machine, other = _machines(num_hidden, seed)
    jit_machine = _twin(machine, f"jit{num_hidden}")  # before any gradient exists
    hand = HandWrittenRWS(64, num_hidden, NUM_PARTICLES, LEARNING_RATE).copy_from(machine)

    # max_plate_nesting given, so that no guessing run of the guide draws from the generator
    ours_loss = pyro_wakesleep.ReweightedWakeSleep(
        num_particles=NUM_PARTICLES, insomnia=1.0, max_plate_nesting=1
    )
    torch.manual_seed(seed + 1)
    ours_value = ours_loss.differentiable_loss(machine.model, machine.guide, batch, num_data)
    ours_value.backward()
    ours_value = ours_value.detach()
    ours_wake_theta = ours_loss.last_terms["wake_theta"]
    ours_grads = _machine_grads(machine)

    jit_loss = pyro_wakesleep.JitReweightedWakeSleep(
        num_particles=NUM_PARTICLES, insomnia=1.0, max_plate_nesting=1
    )
    for call in range(2):  # eager, then tracing: no gradients taken
        torch.manual_seed(seed + 10 + call)
        jit_loss.differentiable_loss(jit_machine.model, jit_machine.guide, batch, num_data)
    torch.manual_seed(seed + 1)
    jit_value = jit_loss.differentiable_loss(jit_machine.model, jit_machine.guide, batch, num_data)
    jit_value.backward()
    jit_value = jit_value.detach()
    jit_grads = _machine_grads(jit_machine)

    torch.manual_seed(seed + 1)
    wake_theta, wake_phi = hand.terms(batch, num_data)
    (wake_theta + wake_phi).backward()
    wake_theta = wake_theta.detach()
    hand_grads = [
        hand.top_logits.grad,
        hand.decoder.weight.grad,
        hand.decoder.bias.grad,
        hand.encoder.weight.grad,
        hand.encoder.bias.grad,
    ]

    pyro_loss = pyro.infer.ReweightedWakeSleep(
        num_particles=NUM_PARTICLES, insomnia=1.0, max_plate_nesting=1
    )
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        pyro_wake_theta, _ = pyro_loss.loss(other.model, other.guide, batch, num_data)

    def rel(a: Tensor, b: Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))

    hand_value = float(wake_theta)
    return {
        "value_rel_diff": abs(float(ours_value) - hand_value) / abs(hand_value),
        "wake_theta_rel_diff": abs(ours_wake_theta - hand_value) / abs(hand_value),
        "grad_rel_diff": max(rel(a, b) for a, b in zip(ours_grads, hand_grads, strict=True)),
        "jit_value_rel_diff": abs(float(jit_value) - hand_value) / abs(hand_value),
        "jit_grad_rel_diff": max(rel(a, b) for a, b in zip(jit_grads, hand_grads, strict=True)),
        "ours_nats_per_image": float(ours_value) / num_data,
        "jit_nats_per_image": float(jit_value) / num_data,
        "hand_nats_per_image": hand_value / num_data,
        "pyro_nats_per_image": float(pyro_wake_theta) / num_data,
    }


def make_methods(num_hidden: int, num_data: int, seed: int) -> list[Method]:
    """The six steps, from the same initial parameters."""
    pyro.clear_param_store()
    ours_machine, pyro_machine = _machines(num_hidden, seed)
    jsa_machine = _twin(ours_machine, f"jsa{num_hidden}")
    jit_machine = _twin(ours_machine, f"jit{num_hidden}")
    joint_machine = _twin(ours_machine, f"joint{num_hidden}")
    hand = HandWrittenRWS(64, num_hidden, NUM_PARTICLES, LEARNING_RATE).copy_from(ours_machine)
    ours_svi = pyro.infer.SVI(
        ours_machine.model,
        ours_machine.guide,
        pyro.optim.Adam({"lr": LEARNING_RATE}),
        loss=pyro_wakesleep.ReweightedWakeSleep(num_particles=NUM_PARTICLES, insomnia=1.0),
    )
    jit_svi = pyro.infer.SVI(
        jit_machine.model,
        jit_machine.guide,
        pyro.optim.Adam({"lr": LEARNING_RATE}),
        loss=pyro_wakesleep.JitReweightedWakeSleep(num_particles=NUM_PARTICLES, insomnia=1.0),
    )
    joint_svi = pyro.infer.SVI(
        joint_machine.model,
        joint_machine.guide,
        pyro_wakesleep.JointAdam(LEARNING_RATE),
        loss=pyro_wakesleep.JitReweightedWakeSleep(num_particles=NUM_PARTICLES, insomnia=1.0),
    )
    pyro_svi = pyro.infer.SVI(
        pyro_machine.model,
        pyro_machine.guide,
        pyro.optim.Adam({"lr": LEARNING_RATE}),
        loss=pyro.infer.ReweightedWakeSleep(num_particles=NUM_PARTICLES, insomnia=1.0),
    )
    jsa_loss = pyro_wakesleep.JointStochasticApproximation(num_particles=NUM_PARTICLES)
    jsa_svi = pyro.infer.SVI(
        jsa_machine.model, jsa_machine.guide, pyro.optim.Adam({"lr": LEARNING_RATE}), loss=jsa_loss
    )
    return [
        Method("ours", lambda x, index: ours_svi.step(x, num_data)),
        Method("jit", lambda x, index: jit_svi.step(x, num_data)),
        Method("jit+joint", lambda x, index: joint_svi.step(x, num_data)),
        # Pyro's SVI.step returns (wake-θ loss, φ loss); the first is its reported bound.
        Method("pyro", lambda x, index: pyro_svi.step(x, num_data)[0]),
        Method("hand", lambda x, index: hand.step(x, num_data)),
        # JSA keys its chains by the data plate's sub-sample indices: the batch's rows
        Method(
            "jsa",
            lambda x, index: jsa_svi.step(x, num_data, index=index),
            last_terms=lambda: jsa_loss.last_terms,
        ),
    ]


def time_interleaved(
    methods: list[Method], images: Tensor, repeats: int, warmup: int, seed: int
) -> None:
    """Round-robin: each round draws one batch and times one step of every method on it.

    Records wall-clock time and this thread's CPU time (``time.thread_time``; torch runs on
    this one thread), which leaves out the time spent waiting for a core on a busy machine.
    """
    generator = torch.Generator().manual_seed(seed)
    for round_ in range(warmup + repeats):
        index = torch.randint(images.shape[0], (BATCH_SIZE,), generator=generator)
        batch = images[index]
        shift = round_ % len(methods)
        for method in methods[shift:] + methods[:shift]:
            start, start_cpu = time.perf_counter(), time.thread_time()
            value = method.step(batch, index)
            elapsed, elapsed_cpu = time.perf_counter() - start, time.thread_time() - start_cpu
            if round_ >= warmup:
                method.seconds.append(elapsed)
                method.cpu_seconds.append(elapsed_cpu)
                method.values.append(value)


def _row(num_hidden: int, ms: dict[str, float]) -> str:
    return (
        f"| {num_hidden} | {ms['ours']:.3f} | {ms['jit']:.3f} | {ms['pyro']:.3f} "
        f"| {ms['hand']:.3f} | {ms['ours'] / ms['pyro']:.2f} | {ms['ours'] / ms['hand']:.2f} "
        f"| {ms['jit'] / ms['pyro']:.2f} | {ms['jit'] / ms['hand']:.2f} "
        f"| {ms['jit+joint']:.3f} | {ms['jit+joint'] / ms['pyro']:.2f} "
        f"| {ms['jit+joint'] / ms['hand']:.2f} "
        f"| {ms['jsa']:.3f} | {ms['jsa'] / ms['ours']:.2f} |"
    )


def check_goals(
    num_hidden: int,
    methods: dict[str, Method],
    median: dict[str, float],
    cpu: dict[str, float],
) -> tuple[list[str], list[str]]:
    """The goals of :data:`GOALS` at this hidden size: one met/missed line each, on wall-clock
    and CPU-time medians and paired ratios, and a warning for each goal missed on any."""
    lines, warnings = [], []
    for numerator, denominator, bound, sizes in GOALS:
        if num_hidden not in sizes:
            continue
        goal = f"{numerator}/{denominator} <= {bound:g} at hidden {num_hidden}"
        line, missed = goal_line(
            goal, methods[numerator], methods[denominator],
            (median[numerator], median[denominator]), (cpu[numerator], cpu[denominator]), bound,
        )  # fmt: skip
        lines.append(line)
        if missed:
            warnings.append(f"Goal missed: {goal} ({', '.join(missed)}).")
    return lines, warnings


def main() -> None:
    parser = add_common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument(
        "--validation",
        choices=("on", "off"),
        default="on",
        help="Pyro/torch distribution validation for the Pyro-based steps (Pyro's default: on)",
    )
    args = parser.parse_args()
    sizes = hidden_sizes(parser, args, min_warmup=MIN_WARMUP)

    torch.set_num_threads(1)
    pyro.enable_validation(args.validation == "on")
    logging.getLogger("pyro").setLevel(logging.WARNING)  # "Guessed max_plate_nesting" notices
    images = torch.as_tensor(load_digits().data > 7, dtype=torch.float32)
    num_data = images.shape[0]

    load_before = os.getloadavg()[0]
    rows, cpu_rows, spread, values, checks, warnings = [], [], [], [], [], []
    jsa_stats, goals = [], []
    for num_hidden in sizes:
        check = check_same_maths(num_hidden, images, args.seed)
        checks.append(
            f"| {num_hidden} | {check['value_rel_diff']:.1e} | {check['grad_rel_diff']:.1e} "
            f"| {check['jit_value_rel_diff']:.1e} | {check['jit_grad_rel_diff']:.1e} "
            f"| {check['ours_nats_per_image']:.2f} | {check['jit_nats_per_image']:.2f} "
            f"| {check['hand_nats_per_image']:.2f} | {check['pyro_nats_per_image']:.2f} |"
        )
        for name in ("", "jit_"):
            if check[f"{name}value_rel_diff"] > 1e-5 or check[f"{name}grad_rel_diff"] > 1e-4:
                warnings.append(
                    f"WARNING: {name.rstrip('_') or 'ours'} and hand-written differ at hidden "
                    f"{num_hidden} (or no longer draw their random numbers in the same order): "
                    f"{check}"
                )

        methods = {m.name: m for m in make_methods(num_hidden, num_data, args.seed)}
        time_interleaved(list(methods.values()), images, args.repeats, args.warmup, args.seed)
        median = {name: 1e3 * statistics.median(m.seconds) for name, m in methods.items()}
        rows.append(_row(num_hidden, median))
        cpu = {name: 1e3 * statistics.median(m.cpu_seconds) for name, m in methods.items()}
        cpu_rows.append(_row(num_hidden, cpu))
        ours, jit, jsa = methods["ours"], methods["jit"], methods["jsa"]
        joint = methods["jit+joint"]
        pyro_, hand = methods["pyro"], methods["hand"]
        spread.append(
            f"| {num_hidden} | {quartile_cells(methods, METHODS)} "
            f"| {paired_ratio(ours.seconds, pyro_.seconds):.2f} "
            f"| {paired_ratio(ours.seconds, hand.seconds):.2f} "
            f"| {paired_ratio(jit.seconds, pyro_.seconds):.2f} "
            f"| {paired_ratio(jit.cpu_seconds, pyro_.cpu_seconds):.2f} "
            f"| {paired_ratio(jit.seconds, hand.seconds):.2f} "
            f"| {paired_ratio(jit.cpu_seconds, hand.cpu_seconds):.2f} "
            f"| {paired_ratio(joint.seconds, pyro_.seconds):.2f} "
            f"| {paired_ratio(joint.seconds, hand.seconds):.2f} "
            f"| {paired_ratio(jsa.seconds, ours.seconds):.2f} "
            f"| {paired_ratio(jsa.cpu_seconds, ours.cpu_seconds):.2f} |"
        )
        values.append(loss_row(num_hidden, methods, METHODS, num_data, args.repeats))
        terms = methods["jsa"].last_terms()
        jsa_stats.append(
            f"hidden {num_hidden}: acceptance rate {terms['acceptance_rate']:.2f}, mean chain "
            f"age {terms['chain_age']:.1f} steps"
        )
        goal_lines, goal_warnings = check_goals(num_hidden, methods, median, cpu)
        goals.extend(goal_lines)
        warnings.extend(goal_warnings)

    command = " ".join(["python", "benchmarks/bench_pyro_sbn.py", *sys.argv[1:]])
    lines = [
        f"## Reweighted wake-sleep and JSA steps, sigmoid belief net 64-H on digits, "
        f"K={NUM_PARTICLES}, batch {BATCH_SIZE}, 1 thread",
        "",
        f"`{command}`",
        "",
        "| hidden size | ours ms/step | jit ms/step | pyro RWS ms/step | hand-written ms/step "
        "| ours/pyro | ours/hand | jit/pyro | jit/hand | jit+joint ms/step | jit+joint/pyro "
        "| jit+joint/hand | JSA ms/step | JSA/ours |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Medians over {args.repeats} interleaved rounds after {args.warmup} warm-up rounds. "
        "A step = loss, gradients, Adam update, value returned as a float. `pyro RWS` is "
        "`pyro.infer.ReweightedWakeSleep`, which weights the whole batch jointly (one weight per "
        "particle for all 100 images: a different, much noisier estimator); it is a speed "
        "reference only. `ours` and `hand-written` weight per datapoint and compute the same "
        "value and gradients (checked below). `jit` is "
        f"`pyro_wakesleep.JitReweightedWakeSleep(num_particles={NUM_PARTICLES}, insomnia=1.0)`, "
        "ours compiled with `torch.jit.trace` (same value and gradients, checked below; "
        "compiled during the warm-up rounds), under `pyro.optim.Adam`; `jit+joint` is the same "
        "with `pyro_wakesleep.JointAdam` (the same updates as one torch optimiser, like the "
        "hand-written step's): the trainer's step. `JSA` is "
        f"`pyro_wakesleep.JointStochasticApproximation(num_particles={NUM_PARTICLES})` on the "
        "same network, batches and K (model and guide given the batch's row indices, which "
        "key the per-image chains); JSA/ours is its time over that of our RWS step. Goals: "
        "ours/pyro <= 1 at both sizes, ours/hand <= 1.5 at hidden 200, jit+joint/hand <= "
        "1.25 at hidden 200, jit+joint/pyro <= 0.6 at hidden 32 (checked below).",
        "",
        "CPU time of this thread per step (`time.thread_time`, medians): the same steps without "
        "the time spent waiting for a core, the steadier number on a shared machine:",
        "",
        "| hidden size | ours ms/step | jit ms/step | pyro RWS ms/step | hand-written ms/step "
        "| ours/pyro | ours/hand | jit/pyro | jit/hand | jit+joint ms/step | jit+joint/pyro "
        "| jit+joint/hand | JSA ms/step | JSA/ours |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *cpu_rows,
        "",
        "Spread (first to third quartile, ms) and the median of the per-round ratios (each "
        "round times every method on the same batch, so this ratio is robust to drifts in "
        "machine load):",
        "",
        "| hidden size | ours | jit | jit+joint | pyro RWS | hand-written | JSA "
        "| paired ours/pyro | paired ours/hand | paired jit/pyro | paired jit/pyro (CPU) "
        "| paired jit/hand | paired jit/hand (CPU) | paired jit+joint/pyro "
        "| paired jit+joint/hand | paired JSA/ours | paired JSA/ours (CPU) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *spread,
        "",
        "Goals, each on the wall-clock and CPU-time medians and on the paired ratios (met "
        "when all four are):",
        "",
        *goals,
        "",
        "Same maths, on one shared seed at the initial parameters: relative difference of ours "
        "and of jit from the hand-written step (value; largest gradient entry), and the value of "
        "each on those samples in nats/image (Pyro's is its joint-weight bound, a different "
        "number). jit's is its third call, after an eager and a tracing one: its compiled graph:",
        "",
        "| hidden size | ours: value rel. diff | ours: max grad rel. diff | jit: value rel. diff "
        "| jit: max grad rel. diff | ours | jit | hand-written | pyro RWS |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *checks,
        "",
        "Reported value (negative bound, nats/image) averaged over the last 10% of the timed "
        "steps; all six started from the same parameters and saw the same batches (JSA "
        "reports the negative IWAE bound of its K proposals, comparable with RWS):",
        "",
        "| hidden size | ours | jit | jit+joint | pyro RWS | hand-written | JSA |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *values,
        "",
        "JSA at the last timed step (`last_terms`): " + "; ".join(jsa_stats) + ".",
        "",
        *(f"**{warning}**\n" for warning in warnings),
        f"torch {torch.__version__}, pyro-ppl {pyro.__version__}, Python "
        f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch thread; validation {args.validation} for the "
        "Pyro-based steps (`--validation`; Pyro's default is on; off inside jit's graph); "
        "1-minute load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
