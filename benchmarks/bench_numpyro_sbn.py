"""Per-step time of reweighted wake-sleep on a sigmoid belief net: NumPyro (ours), hand-written JAX, Pyro; and JSA.

What is measured: the wall-clock time, and the CPU time of the process, of one training step
-- draw the particles, compute the loss, differentiate, apply an Adam update and return the
reported value as a Python float -- of three implementations of reweighted wake-sleep
(wake-θ + wake-φ, ``insomnia = 1``, no sleep phase), and of our NumPyro joint stochastic
approximation on the same network and ``K``:

- ``ours``: :class:`numpyro_wakesleep.ReweightedWakeSleep` under ``numpyro.infer.SVI.update``,
  jit-compiled (``jax.jit`` of the update, the mini-batch an argument), ``optax.adam``;
- ``hand``: a hand-written JAX step (plain ``jnp``, ``jax.grad``, ``optax.adam``,
  ``jax.jit``): per-datapoint log-weights of shape ``(K, B)``, ``logsumexp`` over ``K`` for
  wake-θ (``log q`` stop-gradient'ed), stop-gradient'ed self-normalised weights for wake-φ, the
  ``N/B`` mini-batch scale applied after the ``logsumexp``; the same parameter layout
  (``torch.nn.Linear``: ``h @ W.T + b``);
- ``pyro``: our Pyro backend, :class:`pyro_wakesleep.ReweightedWakeSleep` under
  ``pyro.infer.SVI.step`` (``pyro.optim.Adam``, one torch thread), on the same work;
- ``jsa``: :class:`numpyro_wakesleep.JointStochasticApproximation` (``num_particles = K``)
  under jitted ``numpyro.infer.SVI.update``, its state from ``loss.init_state`` (the
  per-image chains carried in ``mutable_state``), the model and guide given the mini-batch's
  row indices (``index=``, a jit argument). Its step is an RWS step's ``K`` proposals plus one
  guide and model evaluation of the chains' states and a ``K``-step sequential independence
  sampler; the tables report it against ``ours`` (JSA/RWS).

The model is a one-hidden-layer sigmoid belief net (``h ~ Bernoulli(sigmoid(b))``,
``x | h ~ Bernoulli(sigmoid(W h + c))``, guide ``h | x ~ Bernoulli(sigmoid(V x + d))``:
``numpyro_wakesleep.helmholtz.HelmholtzMachine`` and its Pyro twin) on scikit-learn's digits
binarised at ``> 7`` (1797 images, 64 pixels), ``K = 10`` particles, mini-batches of 100 (plate
sub-sampling with ``num_data = 1797``), Adam with learning rate 1e-3. All four start from the
same parameters and see the same mini-batches.

One thread at a time. ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1`` is set before JAX is imported, but with jaxlib 0.10 that alone
does not make XLA's CPU client single-threaded (measured: its pool keeps one thread per CPU, and
two of them share each step's work). What does: the process is pinned to one CPU while the
client is created (it sizes its pool from the CPU affinity), then every thread is unpinned
again, free to run on any CPU. Asynchronous dispatch is off. A JAX step then runs on the calling
thread and on XLA's one worker thread, one after the other (CPU time equals wall-clock time on an
idle core); the CPU time reported is the whole process's (``time.process_time``), and the script
lists, from per-thread CPU clocks over the warm-up, which threads did each method's work.
``--xla-threads default`` skips the pinning and keeps asynchronous dispatch, for comparison.
Torch runs on the calling thread (``torch.set_num_threads(1)``).

The methods are interleaved in one process: every round draws a batch, converts it to a JAX and
a torch array (not timed) and runs one step of each method, in an order that rotates from
round to round; ``--warmup`` rounds come first (after each jitted step has been compiled on its
own, so compile time is never timed) and are discarded; the tables report medians over
``--repeats`` rounds, their ratios and the median of the per-round (paired) ratios. JAX steps
end with ``jax.block_until_ready`` on their outputs.

Before timing, the script checks that ``ours`` and ``hand`` compute the same value and
gradients on the same samples: it replays our loss's random-key chain (``rng_key -> wake key ->
probe / particle keys``) through ``numpyro_wakesleep.traces.run_guide_and_model`` to recover the
samples ours drew and feeds them to the hand-written terms. It does so at the initial
parameters with the prior logits moved off zero (drawn from N(0, 1)), and reports apart the
prior-logit gradient at the initial parameters themselves, where all prior logits are exactly
0: there the gradient of NumPyro's ``Bernoulli(logits=...).log_prob`` is off by +1/2 per
element (its ``binary_cross_entropy_with_logits`` is ``max(x, 0) + log1p(exp(-|x|)) - x y``, and
JAX differentiates ``|x|`` at 0 as 1, so the middle term contributes -1/2 instead of 0). In the timed runs each step
draws its own samples, so the table also gives each method's value over the last timed steps
(same start, same batches).

Goal (issue 15): ``ours/hand <= 1.05`` at both sizes, printed as a met/missed line per size on
the wall-clock and CPU-time medians and on the paired ratios (and a warning when missed).

Command (it wrote ``benchmarks/results/numpyro_sbn.md``)::

    .venv/bin/python benchmarks/bench_numpyro_sbn.py --repeats 1000 --warmup 100 \\
        --hidden 32,200 --out benchmarks/results/numpyro_sbn.md

Flags: ``--repeats`` (timed rounds per hidden size), ``--warmup`` (untimed rounds first),
``--hidden`` (comma-separated hidden sizes, default ``32,200``), ``--out`` (markdown file),
``--seed``, ``--numpyro-validation on|off`` (NumPyro's distribution validation while ours is
traced; NumPyro 0.22's default, on, masks out-of-support values with ``where``),
``--pyro-validation on|off`` (the same for the Pyro step; Pyro's default, on),
``--xla-threads one|default``.
"""

from __future__ import annotations

import os
import sys

# Before JAX is imported (XLA reads its flags once).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
).strip()
_ONE_XLA_THREAD = "--xla-threads=default" not in sys.argv and not any(
    a == "--xla-threads" and b == "default" for a, b in zip(sys.argv, sys.argv[1:], strict=False)
)
_ALL_CPUS = os.sched_getaffinity(0)
if _ONE_XLA_THREAD:  # XLA's CPU client sizes its thread pool from the affinity when created
    os.sched_setaffinity(0, {min(_ALL_CPUS)})

import argparse  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_cpu_enable_async_dispatch", not _ONE_XLA_THREAD)
jax.devices()  # create the CPU client now, while pinned
if _ONE_XLA_THREAD:
    for _tid in os.listdir("/proc/self/task"):  # every thread created so far, XLA's included
        try:
            os.sched_setaffinity(int(_tid), _ALL_CPUS)
        except OSError:  # a thread that has exited since
            pass

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import optax  # noqa: E402
import pyro  # noqa: E402
import pyro.infer  # noqa: E402
import pyro.optim  # noqa: E402
import torch  # noqa: E402
from _timing import (  # noqa: E402
    add_common_arguments,
    goal_line,
    hidden_sizes,
    loss_row,
    paired_ratio,
    quartile_cells,
)
from jax import Array, random  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import numpyro_wakesleep  # noqa: E402
import pyro_wakesleep  # noqa: E402
from numpyro_wakesleep.helmholtz import HelmholtzMachine  # noqa: E402
from numpyro_wakesleep.traces import run_guide_and_model, subsample_indices  # noqa: E402
from pyro_wakesleep.helmholtz import HelmholtzMachine as PyroHelmholtzMachine  # noqa: E402

NUM_VISIBLE = 64
NUM_PARTICLES = 10
BATCH_SIZE = 100
LEARNING_RATE = 1e-3
METHODS = ("ours", "hand", "pyro", "jsa")
#: issue 15's goal, at every hidden size: ours/hand <= GOAL_OURS_HAND
GOAL_OURS_HAND = 1.05


# --------------------------------------------------------------------------------------------
# The hand-written JAX step
# --------------------------------------------------------------------------------------------
class HandParams(NamedTuple):
    """Parameters of the one-hidden-layer net, in ``torch.nn.Linear`` layout (``h @ W.T + b``)."""

    top_logits: Array  # (H,)      prior logits of h
    decoder_weight: Array  # (D, H)
    decoder_bias: Array  # (D,)
    encoder_weight: Array  # (H, D)
    encoder_bias: Array  # (H,)


class HandState(NamedTuple):
    """What the hand-written step carries from one step to the next."""

    params: HandParams
    opt_state: Any
    rng_key: Array


def _log_bernoulli(logits: Array, value: Array) -> Array:
    """``log Bernoulli(value | sigmoid(logits))`` elementwise."""
    return value * logits - jax.nn.softplus(logits)


def hand_terms(params: HandParams, x: Array, h: Array, scale: float) -> tuple[Array, Array]:
    """``(wake_theta, wake_phi)`` surrogates on guide samples ``h`` of shape ``(K, B, H)``.

    Both are sums over the batch scaled by ``scale = N/B``; ``wake_theta``'s value is the
    negative IWAE bound (the reported value), its gradient the wake-θ update; ``wake_phi``'s
    gradient is the wake-φ update.
    """
    logits_q = x @ params.encoder_weight.T + params.encoder_bias  # (B, H)
    log_q = _log_bernoulli(logits_q, h).sum(-1)  # (K, B)
    log_prior = _log_bernoulli(params.top_logits, h).sum(-1)  # (K, B)
    logits_x = h @ params.decoder_weight.T + params.decoder_bias  # (K, B, D)
    log_lik = _log_bernoulli(logits_x, x).sum(-1)  # (K, B)
    log_w = log_prior + log_lik - jax.lax.stop_gradient(log_q)  # (K, B)
    iwae = jax.nn.logsumexp(log_w, axis=0) - math.log(h.shape[0])  # (B,)
    wake_theta = -scale * iwae.sum()
    weights = jax.nn.softmax(jax.lax.stop_gradient(log_w), axis=0)
    wake_phi = -scale * (weights * log_q).sum()
    return wake_theta, wake_phi


def hand_sample(params: HandParams, x: Array, key: Array, num_particles: int) -> Array:
    """``K`` guide samples per datapoint, ``(K, B, H)``, as floats (no gradient flows)."""
    logits_q = x @ params.encoder_weight.T + params.encoder_bias
    shape = (num_particles, *logits_q.shape)
    return random.bernoulli(key, jax.nn.sigmoid(logits_q), shape).astype(x.dtype)


def hand_loss(params: HandParams, x: Array, h: Array, scale: float) -> tuple[Array, Array]:
    """``(wake_theta + wake_phi, wake_theta)``: the differentiated loss and the reported value."""
    wake_theta, wake_phi = hand_terms(params, x, h, scale)
    return wake_theta + wake_phi, wake_theta


def make_hand_step(
    optimizer: optax.GradientTransformation, num_particles: int, num_data: int
) -> Callable[[HandState, Array], tuple[HandState, Array]]:
    """The jitted hand-written RWS step ``(state, x) -> (state, negative IWAE bound)``."""

    def step(state: HandState, x: Array) -> tuple[HandState, Array]:
        rng_key, sample_key = random.split(state.rng_key)
        h = hand_sample(state.params, x, sample_key, num_particles)
        grads, value = jax.grad(hand_loss, has_aux=True)(state.params, x, h, num_data / x.shape[0])
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return HandState(optax.apply_updates(state.params, updates), opt_state, rng_key), value

    return jax.jit(step)


# --------------------------------------------------------------------------------------------
# Set-up: one initialisation, three copies
# --------------------------------------------------------------------------------------------
def _hand_params(params: dict[str, Array], name: str) -> HandParams:
    """The numpyro machine's parameters (constrained, by name) as :class:`HandParams`."""
    return HandParams(
        params[f"{name}_generative.top_logits"],
        params[f"{name}_generative.layers.0.weight"],
        params[f"{name}_generative.layers.0.bias"],
        params[f"{name}_recognition.0.weight"],
        params[f"{name}_recognition.0.bias"],
    )


def _pyro_machine(params: HandParams, num_hidden: int) -> PyroHelmholtzMachine:
    """The Pyro backend's machine, with the given parameters (a fresh param-store name)."""
    machine = PyroHelmholtzMachine(NUM_VISIBLE, hidden=(num_hidden,), name=f"pyro{num_hidden}")
    with torch.no_grad():
        for tensor, value in (
            (machine.generative.top_logits, params.top_logits),
            (machine.generative.layers[0].weight, params.decoder_weight),
            (machine.generative.layers[0].bias, params.decoder_bias),
            (machine.recognition[0].weight, params.encoder_weight),
            (machine.recognition[0].bias, params.encoder_bias),
        ):
            tensor.copy_(torch.from_numpy(np.array(value)))
    return machine


@dataclass
class Setup:
    """The four steps of one hidden size, from the same initial parameters.

    Each step takes the mini-batch and its row indices in the data set (only ``jsa`` uses
    them) and returns the reported value.
    """

    machine: HelmholtzMachine
    loss: numpyro_wakesleep.ReweightedWakeSleep
    initial: dict[str, Array]
    ours: Callable[[Array, Array], float]
    hand: Callable[[Array, Array], float]
    pyro: Callable[[torch.Tensor, torch.Tensor], float]
    jsa: Callable[[Array, Array], float]
    #: JSA's acceptance rate and mean chain age on its current state (read after timing)
    jsa_stats: Callable[[Array, Array], dict[str, float]]


def make_setup(num_hidden: int, num_data: int, first_batch: Array, seed: int) -> Setup:
    """Initialise the numpyro machine, copy its parameters into the others, compile."""
    name = f"ours{num_hidden}"
    machine = HelmholtzMachine(NUM_VISIBLE, hidden=(num_hidden,), name=name)
    loss = numpyro_wakesleep.ReweightedWakeSleep(num_particles=NUM_PARTICLES, insomnia=1.0)
    svi = numpyro.infer.SVI(machine.model, machine.guide, optax.adam(LEARNING_RATE), loss=loss)
    svi_state = svi.init(random.PRNGKey(seed), first_batch, num_data)
    initial = svi.get_params(svi_state)
    ours_update = jax.jit(lambda state, x: svi.update(state, x, num_data))

    optimizer = optax.adam(LEARNING_RATE)
    params = _hand_params(initial, name)
    hand_state = HandState(params, optimizer.init(params), random.PRNGKey(seed + 1))
    hand_update = make_hand_step(optimizer, NUM_PARTICLES, num_data)

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    pyro_machine = _pyro_machine(params, num_hidden)
    pyro_svi = pyro.infer.SVI(
        pyro_machine.model,
        pyro_machine.guide,
        pyro.optim.Adam({"lr": LEARNING_RATE}),
        loss=pyro_wakesleep.ReweightedWakeSleep(num_particles=NUM_PARTICLES, insomnia=1.0),
    )

    # JSA on the same machine (same parameter names, its own SVI state), same start
    jsa_loss = numpyro_wakesleep.JointStochasticApproximation(num_particles=NUM_PARTICLES)
    jsa_svi = numpyro.infer.SVI(
        machine.model, machine.guide, optax.adam(LEARNING_RATE), loss=jsa_loss
    )
    first_index = jnp.arange(first_batch.shape[0])
    jsa_state = jsa_loss.init_state(
        jsa_svi, random.PRNGKey(seed), first_batch, num_data, index=first_index,
        init_params=initial,
    )  # fmt: skip
    jsa_update = jax.jit(lambda state, x, index: jsa_svi.update(state, x, num_data, index=index))

    # compile the jitted steps now (on throw-away states) so that no timed call compiles
    jax.block_until_ready(ours_update(svi_state, first_batch))
    jax.block_until_ready(hand_update(hand_state, first_batch))
    jax.block_until_ready(jsa_update(jsa_state, first_batch, first_index))

    def ours(x: Array, index: Array) -> float:
        nonlocal svi_state
        svi_state, value = jax.block_until_ready(ours_update(svi_state, x))
        return float(value)

    def hand(x: Array, index: Array) -> float:
        nonlocal hand_state
        hand_state, value = jax.block_until_ready(hand_update(hand_state, x))
        return float(value)

    def pyro_step(x: torch.Tensor, index: torch.Tensor) -> float:
        return pyro_svi.step(x, num_data)

    def jsa(x: Array, index: Array) -> float:
        nonlocal jsa_state
        jsa_state, value = jax.block_until_ready(jsa_update(jsa_state, x, index))
        return float(value)

    def jsa_stats(x: Array, index: Array) -> dict[str, float]:
        params = {**jsa_svi.get_params(jsa_state), **jsa_state.mutable_state}
        terms = jsa_loss.terms(
            random.PRNGKey(seed + 4), params, machine.model, machine.guide, x, num_data,
            index=index,
        )  # fmt: skip
        return {name: float(terms[name]) for name in ("acceptance_rate", "chain_age")}

    return Setup(machine, loss, initial, ours, hand, pyro_step, jsa, jsa_stats)


# --------------------------------------------------------------------------------------------
# Same maths on the same samples
# --------------------------------------------------------------------------------------------
def _ours_samples(
    setup: Setup, params: dict[str, Array], rng_key: Array, x: Array, num_data: int
) -> Array:
    """The guide samples ``(K, B, H)`` our loss draws from ``rng_key``.

    Replays the key chain of ``ReweightedWakeSleep`` (``losses._evaluate`` splits the key into
    wake and dream keys; ``traces.importance_traces`` splits the wake key into probe and
    particle keys and runs ``run_guide_and_model`` once per particle key).
    """
    model, guide, args = setup.machine.model, setup.machine.guide, (x, num_data)
    wake_key, _ = random.split(rng_key)
    probe_key, particles_key = random.split(wake_key)
    model_trace, guide_trace = run_guide_and_model(model, guide, args, {}, params, probe_key)
    fixed = {**params, **subsample_indices(guide_trace, model_trace)}

    def particle(key: Array) -> Array:
        _, g_trace = run_guide_and_model(model, guide, args, {}, fixed, key)
        return g_trace["h1"]["value"]

    return jax.vmap(particle)(random.split(particles_key, NUM_PARTICLES)).astype(x.dtype)


def _rel(a: Array, b: Array) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-12))


def check_same_maths(
    setup: Setup, params: dict[str, Array], x: Array, num_data: int, seed: int
) -> dict[str, Any]:
    """Value and gradients of ours and of the hand-written terms on the same samples.

    Relative differences of the value (negative IWAE bound) and of wake-φ, the largest
    gradient entry's per parameter (as :class:`HandParams`), and the value in nats/image.
    """
    loss, model, guide = setup.loss, setup.machine.model, setup.machine.guide
    rng_key = random.PRNGKey(seed + 2)
    ours_value, ours_grads = jax.value_and_grad(
        lambda p: loss.loss(rng_key, p, model, guide, x, num_data)
    )(params)
    ours_wake_phi = loss.terms(rng_key, params, model, guide, x, num_data)["wake_phi"]
    name = setup.machine.name
    h = _ours_samples(setup, params, rng_key, x, num_data)
    hand_params = _hand_params(params, name)
    scale = num_data / x.shape[0]
    (_, hand_value), hand_grads = jax.value_and_grad(hand_loss, has_aux=True)(
        hand_params, x, h, scale
    )
    _, hand_wake_phi = hand_terms(hand_params, x, h, scale)
    ours_grads = _hand_params(ours_grads, name)
    return {
        "value_rel_diff": abs(float(ours_value) - float(hand_value)) / abs(float(hand_value)),
        "wake_phi_rel_diff": abs(float(ours_wake_phi) - float(hand_wake_phi))
        / abs(float(hand_wake_phi)),
        "grad_rel_diff": HandParams(
            *(_rel(a, b) for a, b in zip(ours_grads, hand_grads, strict=True))
        ),
        "ours_nats_per_image": float(ours_value) / num_data,
        "hand_nats_per_image": float(hand_value) / num_data,
    }


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
def _thread_cpu_clocks() -> dict[int, float]:
    """CPU time (s) of every thread of this process so far, by thread id.

    Reads Linux's per-thread CPU clocks (clock id ``(~tid << 3) | 6``: ``CPUCLOCK_SCHED`` of
    thread ``tid``), so threads that Python did not start, XLA's among them, are included.
    """
    clocks = {}
    for name in os.listdir("/proc/self/task"):
        try:
            clocks[int(name)] = time.clock_gettime(((~int(name)) << 3) | 6)
        except OSError:  # a thread that has exited since
            pass
    return clocks


@dataclass
class Method:
    """A named training step and what was recorded while timing it."""

    name: str
    step: Callable[[Any, Any], float]  # (mini-batch, its row indices) -> value
    backend: str  # "jax" or "torch": which form of the batch and indices the step takes
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    #: CPU time (s) per thread id spent in this method's warm-up steps
    warm_thread_cpu: dict[int, float] = field(default_factory=dict)

    def threads_used(self, caller: int) -> str:
        """Which threads did the warm-up work: ``"2 (XLA worker 79%, caller 21%)"``."""
        total = sum(self.warm_thread_cpu.values()) or 1e-12
        shares = sorted(
            ((cpu / total, tid) for tid, cpu in self.warm_thread_cpu.items() if cpu / total > 0.01),
            reverse=True,
        )
        parts = [
            f"{'caller' if tid == caller else 'other'} {100 * share:.0f}%" for share, tid in shares
        ]
        return f"{len(shares)} thread{'s' if len(shares) > 1 else ''} ({', '.join(parts)})"


def time_interleaved(
    methods: list[Method], images: np.ndarray, repeats: int, warmup: int, seed: int
) -> None:
    """Round-robin: each round draws one batch and times one step of every method on it.

    Records wall-clock time and the process's CPU time (``time.process_time``: all threads,
    XLA's worker included); during the warm-up also each thread's CPU time, to see which
    threads do the work.
    """
    generator = np.random.default_rng(seed)
    for round_ in range(warmup + repeats):
        index = generator.integers(0, images.shape[0], BATCH_SIZE)
        batch = images[index]
        inputs = {
            "jax": jax.block_until_ready((jnp.asarray(batch), jnp.asarray(index, jnp.int32))),
            "torch": (torch.from_numpy(batch), torch.from_numpy(index)),
        }
        shift = round_ % len(methods)
        for method in methods[shift:] + methods[:shift]:
            x, rows = inputs[method.backend]
            before = _thread_cpu_clocks() if round_ < warmup else {}
            start, start_cpu = time.perf_counter(), time.process_time()
            value = method.step(x, rows)
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            if round_ >= warmup:
                method.seconds.append(elapsed)
                method.cpu_seconds.append(elapsed_cpu)
                method.values.append(value)
            else:
                for tid, cpu in _thread_cpu_clocks().items():
                    spent = cpu - before.get(tid, 0.0)
                    method.warm_thread_cpu[tid] = method.warm_thread_cpu.get(tid, 0.0) + spent


def _row(num_hidden: int, ms: dict[str, float]) -> str:
    return (
        f"| {num_hidden} | {ms['ours']:.3f} | {ms['hand']:.3f} | {ms['ours'] / ms['hand']:.2f} "
        f"| {ms['pyro']:.3f} | {ms['ours'] / ms['pyro']:.2f} "
        f"| {ms['jsa']:.3f} | {ms['jsa'] / ms['ours']:.2f} |"
    )


def main() -> None:
    parser = add_common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument(
        "--pyro-validation",
        choices=("on", "off"),
        default="on",
        help="Pyro's distribution validation for the Pyro step (Pyro's default: on)",
    )
    parser.add_argument(
        "--numpyro-validation",
        choices=("on", "off"),
        default="on",
        help="NumPyro's distribution validation while ours is traced (NumPyro 0.22's default: on)",
    )
    parser.add_argument(
        "--xla-threads",
        choices=("one", "default"),
        default="one",
        help="one: XLA's CPU client with one thread (read before argparse runs); default: as is",
    )
    args = parser.parse_args()
    sizes = hidden_sizes(parser, args, min_warmup=1)

    torch.set_num_threads(1)
    pyro.enable_validation(args.pyro_validation == "on")
    numpyro.enable_validation(args.numpyro_validation == "on")
    logging.getLogger("pyro").setLevel(logging.WARNING)
    images = np.asarray(load_digits().data > 7, dtype=np.float32)
    num_data = images.shape[0]
    first_batch = jnp.asarray(images[:BATCH_SIZE])

    load_before = os.getloadavg()[0]
    rows, cpu_rows, spread, values, checks, threads, warnings = [], [], [], [], [], [], []
    jsa_stats, goals = [], []
    for num_hidden in sizes:
        setup = make_setup(num_hidden, num_data, first_batch, args.seed)
        shifted = dict(setup.initial)  # prior logits off zero, where NumPyro's gradient is right
        top = f"{setup.machine.name}_generative.top_logits"
        shifted[top] = random.normal(random.PRNGKey(args.seed + 3), shifted[top].shape)
        check = check_same_maths(setup, shifted, first_batch, num_data, args.seed)
        at_zero = check_same_maths(setup, setup.initial, first_batch, num_data, args.seed)
        checks.append(
            f"| {num_hidden} | {check['value_rel_diff']:.1e} | {check['wake_phi_rel_diff']:.1e} "
            f"| {max(check['grad_rel_diff']):.1e} | {check['ours_nats_per_image']:.3f} "
            f"| {check['hand_nats_per_image']:.3f} "
            f"| {max(at_zero['grad_rel_diff'][1:]):.1e} "
            f"| {at_zero['grad_rel_diff'].top_logits:.1e} |"
        )
        if check["value_rel_diff"] > 1e-5 or max(check["grad_rel_diff"]) > 1e-4:
            warnings.append(
                f"WARNING: ours and hand-written differ at hidden {num_hidden} (or ours no "
                f"longer draws its random numbers in the replayed order): {check}"
            )

        methods = {
            "ours": Method("ours", setup.ours, "jax"),
            "hand": Method("hand", setup.hand, "jax"),
            "pyro": Method("pyro", setup.pyro, "torch"),
            "jsa": Method("jsa", setup.jsa, "jax"),
        }
        time_interleaved(list(methods.values()), images, args.repeats, args.warmup, args.seed)
        median = {n: 1e3 * statistics.median(m.seconds) for n, m in methods.items()}
        cpu = {n: 1e3 * statistics.median(m.cpu_seconds) for n, m in methods.items()}
        rows.append(_row(num_hidden, median))
        cpu_rows.append(_row(num_hidden, cpu))
        ours, hand, pyro_, jsa = (methods[n] for n in ("ours", "hand", "pyro", "jsa"))
        spread.append(
            f"| {num_hidden} | {quartile_cells(methods, METHODS)} "
            f"| {paired_ratio(ours.seconds, hand.seconds):.2f} "
            f"| {paired_ratio(ours.cpu_seconds, hand.cpu_seconds):.2f} "
            f"| {paired_ratio(ours.seconds, pyro_.seconds):.2f} "
            f"| {paired_ratio(ours.cpu_seconds, pyro_.cpu_seconds):.2f} "
            f"| {paired_ratio(jsa.seconds, ours.seconds):.2f} "
            f"| {paired_ratio(jsa.cpu_seconds, ours.cpu_seconds):.2f} |"
        )
        stats = setup.jsa_stats(first_batch, jnp.arange(BATCH_SIZE))
        jsa_stats.append(
            f"hidden {num_hidden}: acceptance rate {stats['acceptance_rate']:.2f}, mean chain "
            f"age {stats['chain_age']:.1f} steps"
        )
        values.append(loss_row(num_hidden, methods, METHODS, num_data, args.repeats))
        caller = threading.get_native_id()
        threads.append(
            f"hidden {num_hidden}: "
            + "; ".join(f"{n} {methods[n].threads_used(caller)}" for n in METHODS)
        )
        goal = f"ours/hand <= {GOAL_OURS_HAND:g} at hidden {num_hidden}"
        line, missed = goal_line(
            goal, ours, hand, (median["ours"], median["hand"]), (cpu["ours"], cpu["hand"]),
            GOAL_OURS_HAND,
        )  # fmt: skip
        goals.append(line)
        if missed:
            warnings.append(
                f"Goal missed: {goal} ({', '.join(missed)}): ours more than "
                f"{GOAL_OURS_HAND:g}x the hand-written JAX step."
            )

    command = " ".join(["python", "benchmarks/bench_numpyro_sbn.py", *sys.argv[1:]])
    header = [
        "| hidden | ours ms/step | hand-written ms/step | ours/hand | pyro backend ms/step "
        "| numpyro/pyro | JSA ms/step | JSA/ours |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    xla_threads = (
        "XLA's CPU client created while the process was pinned to one CPU (one worker "
        "thread), then unpinned; synchronous dispatch"
        if _ONE_XLA_THREAD
        else "XLA's CPU client as is (`--xla-threads default`), asynchronous dispatch"
    )
    lines = [
        f"## Reweighted wake-sleep and JSA steps, NumPyro: sigmoid belief net 64-H on digits, "
        f"K={NUM_PARTICLES}, batch {BATCH_SIZE}, 1 thread",
        "",
        f"`{command}`",
        "",
        *header,
        *rows,
        "",
        f"Wall-clock medians over {args.repeats} interleaved rounds after {args.warmup} warm-up "
        "rounds (compilation excluded). A step = particles, loss, gradients, Adam update, "
        "value returned as a float (JAX steps: `jax.block_until_ready` on all outputs). "
        "`ours` = `numpyro_wakesleep.ReweightedWakeSleep(num_particles=10, insomnia=1.0)` "
        "under jitted `numpyro.infer.SVI.update`; `hand-written` = plain-JAX RWS step "
        "(`jax.grad`, `optax.adam`, `jax.jit`); `pyro backend` = "
        "`pyro_wakesleep.ReweightedWakeSleep` under `pyro.infer.SVI.step`; numpyro/pyro = "
        "ours/pyro backend; `JSA` = `numpyro_wakesleep.JointStochasticApproximation("
        f"num_particles={NUM_PARTICLES})` under jitted `numpyro.infer.SVI.update` on the same "
        "network, batches and K (chains in the SVI state's `mutable_state`, model and guide "
        "given the batch's row indices); JSA/ours = its time over that of our RWS step. "
        f"Goal: ours/hand <= {GOAL_OURS_HAND:g} at every size (checked below).",
        "",
        "CPU time per step (`time.process_time`: all of the process's threads, the caller "
        "and XLA's one worker, which take turns; medians): the steadier number on a shared "
        "machine:",
        "",
        *header,
        *cpu_rows,
        "",
        "Spread (first to third quartile of wall-clock time, ms) and the medians of the "
        "per-round ratios (each round times every method on the same batch, so these are "
        "robust to drifts in machine load):",
        "",
        "| hidden | ours | hand-written | pyro backend | JSA | paired ours/hand (wall) "
        "| paired ours/hand (CPU) | paired numpyro/pyro (wall) | paired numpyro/pyro (CPU) "
        "| paired JSA/ours (wall) | paired JSA/ours (CPU) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *spread,
        "",
        "Goal, on the wall-clock and CPU-time medians and on the paired ratios (met when all "
        "four are):",
        "",
        *goals,
        "",
        "Same maths, ours and the hand-written terms on the same samples (ours' key chain "
        "replayed), first batch: relative difference of the value (negative IWAE bound), of "
        "wake-φ and of the largest gradient entry (largest over parameters), and the value "
        "in nats/image, at the initial parameters with the prior logits drawn from N(0, 1); "
        "then, at the initial parameters themselves (prior logits all exactly 0), the largest "
        "gradient difference of the other parameters and that of the prior logits, where "
        "NumPyro's `Bernoulli(logits=0).log_prob` has a gradient off by 1/2 per element:",
        "",
        "| hidden | value rel. diff | wake-φ rel. diff | max grad rel. diff | ours | "
        "hand-written | at logits 0: other grads | at logits 0: prior-logit grad |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *checks,
        "",
        "Reported value (negative IWAE bound, nats/image) averaged over the last 10% of the "
        "timed steps; all four started from the same parameters and saw the same batches "
        "(each draws its own samples; JSA's value is the bound of its K proposals):",
        "",
        "| hidden | ours | hand-written | pyro backend | JSA |",
        "|---:|---:|---:|---:|---:|",
        *values,
        "",
        "JSA after the timed steps, on the first batch (indices 0..99) at its final state "
        "(`loss.terms`, chains not advanced): " + "; ".join(jsa_stats) + ".",
        "",
        "Threads that did each method's work during its warm-up steps, with their shares of "
        "its CPU time (per-thread CPU clocks; `caller` is the thread that runs the loop, "
        "`other` a thread of XLA's pool): " + "; ".join(threads) + ".",
        "",
        *(f"**{warning}**\n" for warning in warnings),
        f"`numpyro_wakesleep` from `{Path(numpyro_wakesleep.__file__).parent}`; "
        f"jax {jax.__version__}, numpyro {numpyro.__version__}, optax {optax.__version__}, "
        f"torch {torch.__version__}, pyro-ppl {pyro.__version__}, Python "
        f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"`XLA_FLAGS={os.environ['XLA_FLAGS']}`; {xla_threads}; {torch.get_num_threads()} torch "
        f"thread; NumPyro validation {args.numpyro_validation} (`--numpyro-validation`), Pyro "
        f"validation {args.pyro_validation} (`--pyro-validation`); 1-minute load "
        f"average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
