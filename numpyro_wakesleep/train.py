"""``python -m numpyro_wakesleep train``: the shared trainer (:mod:`wakesleep.trainer.loop`) on NumPyro.

:class:`HelmholtzTrainer` is the NumPyro side of
:class:`wakesleep.trainer.backend.TrainerBackend`: a
:class:`~numpyro_wakesleep.helmholtz.HelmholtzMachine` trained by
:class:`numpyro.infer.SVI`, its parameters in the SVI state.

Randomness comes from one key, ``PRNGKey(seed)``, split into the key of
:meth:`numpyro.infer.SVI.init` (whose state then carries the key of every step), the key
of the mini-batch indices and the key of the evaluation. Each step is one jitted call that
draws the mini-batch indices and runs :meth:`numpyro.infer.SVI.update`; losses stay on the
device until the trainer takes them, so the host does not wait for the device at every
step. ``--restarts`` candidates train as one batched (vmapped) computation.

``--devices D`` (and a multi-process launch, :mod:`numpyro_wakesleep.distributed`) trains
on a mesh of ``D`` devices per process: the same jitted step with the mini-batch it draws
constrained to be split over the mesh, every other array (training set, parameters,
optimiser state, keys, ``jsa``'s chains) replicated, so the step draws the batch and the
particles of one device and only the order of sums differs. With ``--devices 1`` in one
process nothing of this is set up: the run is the one-device run, bit for bit.

``--algorithm jsa`` keeps one Markov chain per training image in the SVI state's
``mutable_state`` (:class:`~numpyro_wakesleep.JointStochasticApproximation`, whose
``init_state`` adds them to :meth:`numpyro.infer.SVI.init`'s state): each step draws the
mini-batch's rows without replacement and passes them as ``index=`` to model and guide
(:func:`wakesleep.trainer.schedule.keeps_chains`). The vmapped ``--restarts`` candidates
each carry their own chains, along the candidates' axis like every other leaf.

The checkpoint (``checkpoint.npz``) holds NumPy arrays only: parameters, optimiser state,
keys and the mutable state (the chains of ``jsa``, by name:
``mutable/wakesleep_chains/values/h1``, ``.../seen``, ``.../age``), with the trainer's meta
as a JSON string; it is read with
``np.load(..., allow_pickle=False)``, which runs no code from the file. A ``checkpoint.pkl``
of an earlier release is refused with a line that says how to go on.
"""

from __future__ import annotations

import argparse
import io
import json
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array, random
from numpyro import handlers
from numpyro.infer import SVI
from numpyro.infer.svi import SVIState

from wakesleep.trainer import loop, schedule
from wakesleep.trainer.arguments import parse_train_args, sparsity_settings
from wakesleep.trainer.backend import GenerativeWeights
from wakesleep.trainer.datasets import Dataset
from wakesleep.trainer.outputs import atomic_write_bytes
from wakesleep.trainer.runs import UnreadableCheckpoint

from . import distributed, losses
from .evaluation import importance_log_likelihood, importance_log_weights
from .helmholtz import HelmholtzMachine

__all__ = ["CHECKPOINT", "HelmholtzTrainer", "main"]

CHECKPOINT = "checkpoint.npz"
#: What earlier releases wrote: a pickle, never loaded.
LEGACY_CHECKPOINT = "checkpoint.pkl"


def main(argv: Sequence[str] | None = None) -> dict | None:
    """``python -m numpyro_wakesleep train ...``: train, write the outputs, print the metrics
    (process 0 of a multi-process run; the others return ``None``)."""
    trainer = HelmholtzTrainer()
    # --devices and a multi-process launch must be set up before JAX starts its backend,
    # which the shared loop does first thing (on_device); the flags are parsed again there
    trainer.set_up_devices(parse_train_args(trainer.name, argv))
    return loop.main(trainer, argv)


def _no_jit(function: Callable) -> Callable:
    """``--no-jit``: the function as it is, in place of ``jax.jit``."""
    return function


def _device(name: str) -> jax.Device:
    if name == "cuda":
        try:
            return jax.local_devices(backend="gpu")[0]
        except RuntimeError:
            raise SystemExit(
                "error: --device cuda was asked for, but JAX sees no GPU here. Use --device "
                "cpu, or install a CUDA build of jax (e.g. pip install 'jax[cuda12]') on a "
                "machine with a GPU."
            ) from None
    return jax.local_devices(backend="cpu")[0]


def _optimiser(args: argparse.Namespace) -> optax.GradientTransformation:
    """Adam whose learning rate at step ``t`` is :func:`wakesleep.trainer.schedule.learning_rate`.

    A constant rate (``--lr-decay 1``) is plain ``optax.adam(lr)``; otherwise Optax keeps
    the schedule's step count in its state, which travels with the checkpoint.
    """
    if args.lr_decay == 1.0:
        return optax.adam(args.lr)
    return optax.adam(partial(schedule.learning_rate, args.lr, args.lr_decay, args.steps))


def _step_function(
    svi: SVI,
    num_data: int,
    batch_size: int,
    chains: bool,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> Callable:
    """One training step (to be jitted): draw a mini-batch, then ``svi.update`` on it.

    With ``chains`` (``jsa``) the rows are drawn without replacement and passed as
    ``index``; otherwise with replacement and without ``index`` (the draws of earlier
    releases). With ``batch_sharding`` (``--devices``) the batch's rows are split over the
    devices: each computes the particles and gradients of its rows, and XLA sums the
    gradients across devices. Inside ``jax.vmap`` (``--restarts``) the candidates' axis
    stays whole.
    """

    def _batch(train_x: Array, index: Array) -> Array:
        if batch_sharding is None:
            return train_x[index]
        return jax.lax.with_sharding_constraint(train_x[index], batch_sharding)

    def step(svi_state: SVIState, batch_key: Array, train_x: Array) -> tuple:
        batch_key, draw = random.split(batch_key)
        if chains:
            # without replacement: the rows of the batch_size largest of num_data uniforms
            # (random.choice(..., replace=False) sorts all rows: a bars run took 13x longer)
            index = jax.lax.top_k(random.uniform(draw, (num_data,)), batch_size)[1]
            batch = _batch(train_x, index)
            svi_state, value = svi.update(svi_state, batch, num_data=num_data, index=index)
        else:
            index = random.randint(draw, (batch_size,), 0, num_data)
            svi_state, value = svi.update(svi_state, _batch(train_x, index), num_data=num_data)
        return svi_state, batch_key, value

    return step


def _as_numpy(tree: Any) -> Any:
    """The same pytree with every array fetched to the host as a NumPy array."""
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _path_name(path: tuple) -> str:
    """``"wakesleep_chains/values/h1"`` for a pytree path of dictionary keys (or indices)."""
    parts = []
    for entry in path:
        for attribute in ("key", "idx", "name"):
            if hasattr(entry, attribute):
                parts.append(str(getattr(entry, attribute)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def _named(prefix: str, tree: Any) -> dict[str, Any]:
    """The leaves of ``tree`` by ``prefix/path`` (:func:`_path_name`)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {f"{prefix}/{_path_name(path)}": leaf for path, leaf in leaves}


def _indexed(prefix: str, leaves: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{prefix}/{i}": leaf for i, leaf in enumerate(leaves)}


def _unindexed(prefix: str, arrays: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    count = sum(name.startswith(f"{prefix}/") for name in arrays)
    return [arrays[f"{prefix}/{i}"] for i in range(count)]


class HelmholtzTrainer:
    """The NumPyro backend of the shared trainer (:class:`wakesleep.trainer.backend.TrainerBackend`)."""

    name = "numpyro_wakesleep"
    checkpoint = CHECKPOINT
    legacy_checkpoints = (LEGACY_CHECKPOINT,)
    world_size = 1  # one process on one device, until set_up_devices finds more
    processes = 1
    is_main = True

    def __init__(self) -> None:
        self._pending: list[Array] = []  # losses still on the device
        self._candidates: tuple[SVIState, Array] | None = None
        self._state: SVIState | None = None
        self._mesh: jax.sharding.Mesh | None = None  # --devices / processes: the data mesh
        self._set_up = False

    def set_up_devices(self, args: argparse.Namespace) -> None:
        """``--devices`` and a multi-process launch (:mod:`numpyro_wakesleep.distributed`);
        before any JAX computation. Nothing at all for one device in one process."""
        if self._set_up:
            return
        self._set_up = True
        if args.devices == 1 and distributed.processes_from_environment() is None:
            return
        if args.batch_size % args.devices:
            raise SystemExit(
                f"error: --batch-size {args.batch_size} must be a multiple of --devices "
                f"{args.devices}, which each take an equal share of every batch: e.g. "
                f"--batch-size {args.batch_size - args.batch_size % args.devices or args.devices}."
            )
        if getattr(args, "no_jit", False):
            raise SystemExit(
                "error: --no-jit debugs the step on one device: drop --devices (and run in one "
                "process), or drop --no-jit."
            )
        platform = "gpu" if args.device == "cuda" else "cpu"
        processes = distributed.set_up(platform, args.devices)
        self.processes, self.is_main = processes, jax.process_index() == 0
        self.world_size = args.devices * processes
        if args.batch_size % self.world_size:
            raise SystemExit(
                f"error: --batch-size {args.batch_size} must be a multiple of --devices × "
                f"processes = {self.world_size}, which each take an equal share of every batch."
            )
        if self.world_size > 1:
            self._mesh = distributed.data_mesh(platform, args.devices)

    def any_process(self, flag: bool) -> bool:
        return distributed.any_process(flag) if self.processes > 1 else flag

    def _local(self, tree: Any) -> Any:
        """``tree`` as arrays of this process alone (the replicated ones' local copy)."""
        return tree if self._mesh is None else distributed.local(tree)

    def _replicated(self, tree: Any) -> Any:
        """``tree`` on every device of the mesh (as it is without one)."""
        if self._mesh is None:
            return tree
        return distributed.on_mesh(tree, distributed.replicated(self._mesh))

    def _synchronise(self, outputs: Any) -> None:
        """With a mesh of CPU devices, wait for each step before dispatching the next.

        XLA's CPU runtime runs every device's share of a program on one shared pool of
        threads, and an all-reduce holds its thread until the shares of all devices reach
        it. With many sharded steps dispatched ahead (the one-device run keeps up to 50 in
        flight), shares of later steps compete with the all-reduces of earlier ones for
        those threads, and on a machine with 2 cores such runs can hang (issue 16). One
        sharded program in flight leaves nothing else to hold the threads, by design. A
        sharded CPU step is long next to its dispatch, so little is lost; accelerators run
        each device's work in order and keep dispatching ahead.
        """
        if self._sync_each_step:
            jax.block_until_ready(outputs)

    @contextmanager
    def on_device(self, device: str) -> Iterator[None]:
        with jax.default_device(_device(device)):
            yield

    # -- training ---------------------------------------------------------------------------
    def build(self, args: argparse.Namespace, data: Dataset) -> None:
        self.set_up_devices(args)  # checks, where loop.train is called without main
        # uncommitted arrays on the default device: committing only some inputs of the
        # jitted step would make its second call compile again (with a mesh: every input
        # replicated on it)
        self._train_x = jnp.asarray(data.train, dtype=jnp.float32)
        self._num_data = len(self._train_x)
        self._first_batch = self._train_x[: args.batch_size]  # traces init's shapes
        self._train_x, self._first_batch = self._replicated((self._train_x, self._first_batch))
        self._init_key, self._batch_key, self._eval_key = random.split(random.PRNGKey(args.seed), 3)
        self._machine = HelmholtzMachine(
            self._train_x.shape[-1], args.layers, init=args.init, visible=data.visible
        )
        objective = schedule.objective(
            args.algorithm, args.particles, losses, sparsity_settings(args)
        )
        self._svi = SVI(self._machine.model, self._machine.guide, _optimiser(args), objective)
        self._chains = schedule.keeps_chains(args.algorithm)
        if self._chains:  # svi.init plus empty chains for every training image
            index = np.arange(args.batch_size)  # the rows of the first batch
            self._init = partial(objective.init_state, self._svi, num_data=self._num_data,
                                 index=index)  # fmt: skip
        else:
            self._init = partial(self._svi.init, num_data=self._num_data)
        sharding = None if self._mesh is None else distributed.batch_sharding(self._mesh)
        self._step_fn = _step_function(
            self._svi, self._num_data, args.batch_size, self._chains, sharding
        )
        # --no-jit: every operation dispatched from Python, for debugging (the same numbers)
        self._jit = _no_jit if getattr(args, "no_jit", False) else jax.jit
        self._sync_each_step = False
        if self._mesh is not None:  # every output replicated: the next step's inputs
            self._jit = partial(jax.jit, out_shardings=distributed.replicated(self._mesh))
            self._sync_each_step = self._mesh.devices.flat[0].platform == "cpu"
        self._jitted_step = self._jit(self._step_fn)
        self._jitted_acceptance = None
        self._jitted_activation = None

    def start(self) -> None:
        # jitted: one compilation instead of one per operation of an eager first trace
        init_key = self._replicated(self._init_key)
        self._state = self._jit(self._init)(init_key, self._first_batch)
        self._batch_key = self._replicated(self._batch_key)

    def train_candidates(
        self, restarts: int, steps: int, after_step: Callable[[int], None]
    ) -> np.ndarray:
        """One batched computation: ``init`` and the step are vmapped over keys split from
        the init key and the batch key."""
        starts = self._jit(jax.vmap(self._init, in_axes=(0, None)))
        init_keys = self._replicated(random.split(self._init_key, restarts))
        states = starts(init_keys, self._first_batch)
        batch_keys = self._replicated(random.split(self._batch_key, restarts))
        steps_of_all = self._jit(jax.vmap(self._step_fn, in_axes=(0, 0, None)))
        values = []
        for _ in range(steps):
            states, batch_keys, value = steps_of_all(states, batch_keys, self._train_x)
            self._synchronise(value)
            values.append(value)
            self._candidates = states, batch_keys
            after_step(restarts)
        # fetched one by one: a jnp.stack of thousands of arrays is one slow XLA compilation
        values = jax.device_get(self._local(values))
        return np.stack(values, axis=1).astype(np.float64) / self._num_data

    def keep_candidate(self, index: int) -> None:
        states, batch_keys = self._candidates
        if self._mesh is None:
            self._state = jax.tree.map(lambda leaf: leaf[index], states)
            self._batch_key = batch_keys[index]
        else:  # one program over the mesh, which every process runs
            pick = self._jit(lambda tree: jax.tree.map(lambda leaf: leaf[index], tree))
            self._state, self._batch_key = pick((states, batch_keys))
        self._candidates = None

    def step(self) -> None:
        self._state, self._batch_key, value = self._jitted_step(
            self._state, self._batch_key, self._train_x
        )
        self._synchronise(value)
        self._pending.append(value)

    def take_losses(self) -> list[float]:
        values = jax.device_get(self._local(self._pending))
        losses = [float(v) / self._num_data for v in values]
        self._pending.clear()
        return losses

    def wait(self) -> None:
        jax.block_until_ready((self._state, self._batch_key, self._candidates))

    # -- checkpoints ------------------------------------------------------------------------
    def write_checkpoint(self, path: Path, meta: Mapping[str, Any]) -> None:
        if not self.is_main:  # every array is replicated: process 0 holds all of it
            return
        state, batch_key = self._local((self._state, self._batch_key))
        optim_step, (params, optim_state) = state.optim_state
        arrays = {
            "meta": np.array(json.dumps(dict(meta))),
            "optim_step": _as_numpy(optim_step),
            "rng": _as_numpy(state.rng_key),
            "batches": _as_numpy(batch_key),
            # unconstrained, by name
            **{f"params/{name}": value for name, value in _as_numpy(params).items()},
            # the Optax state's leaves, in order; the mutable state's (jsa's chains) by name
            **_indexed("optim", _as_numpy(jax.tree.leaves(optim_state))),
            **_named("mutable", _as_numpy(state.mutable_state)),
        }
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(path, buffer.getvalue())

    def read_checkpoint(self, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        # allow_pickle=False: arrays only, no code from the run folder
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            meta = json.loads(str(arrays.pop("meta")))
        except (ValueError, OSError, KeyError, zipfile.BadZipFile) as error:
            raise UnreadableCheckpoint(str(path)) from error
        state = {
            "params": {
                name.removeprefix("params/"): value
                for name, value in arrays.items()
                if name.startswith("params/")
            },
            "optim": _unindexed("optim", arrays),
            "mutable": {
                name: value for name, value in arrays.items() if name.startswith("mutable/")
            },
            **{key: arrays[key] for key in ("optim_step", "rng", "batches")},
        }
        return meta, state

    def restore(self, state: Mapping[str, Any]) -> None:
        """The SVI state of a checkpoint, in the structure of a fresh state's shapes."""
        # only the structure of a fresh state is needed (and init's set-up of svi): trace it
        fresh = jax.eval_shape(self._init, self._init_key, self._first_batch)
        _, (params, optim_state) = fresh.optim_state
        leaves, structure = jax.tree.flatten(optim_state)
        mutable_names = list(_named("mutable", fresh.mutable_state))
        mutable_structure = jax.tree.structure(fresh.mutable_state)
        saved = state["optim"]
        if set(state["params"]) != set(params) or len(saved) != len(leaves):
            raise SystemExit(
                f"error: --resume: the {CHECKPOINT} does not hold the parameters of this machine "
                f"({sorted(state['params'])} vs {sorted(params)})."
            )
        if set(state["mutable"]) != set(mutable_names):
            raise SystemExit(
                f"error: --resume: the {CHECKPOINT} holds the state {sorted(state['mutable'])} "
                f"where this run needs {sorted(mutable_names)} (the chains of --algorithm jsa). "
                "Start a new run instead: the same command without --resume, with another --out."
            )
        params = {name: jnp.asarray(value) for name, value in state["params"].items()}
        optim_state = jax.tree.unflatten(structure, [jnp.asarray(leaf) for leaf in saved])
        mutable = jax.tree.unflatten(
            mutable_structure, [jnp.asarray(state["mutable"][name]) for name in mutable_names]
        )
        self._state = self._replicated(
            SVIState(
                (jnp.asarray(state["optim_step"]), (params, optim_state)),
                mutable,
                jnp.asarray(state["rng"]),
            )
        )
        self._batch_key = self._replicated(jnp.asarray(state["batches"]))

    # -- the trained machine ----------------------------------------------------------------
    @property
    def _params(self) -> dict[str, Array]:
        """The parameters, this process's copy: the evaluation runs in process 0 alone."""
        return self._svi.get_params(self._local(self._state))

    def generative_weights(self) -> GenerativeWeights:
        return self._machine.generative_weights(self._params)

    def evaluation_key(self) -> Array:
        return self._eval_key

    def split_key(self, key: Array, num: int) -> list[Array]:
        return list(random.split(key, num))

    def log_likelihood_sum(
        self, images: np.ndarray, key: Array, *, num_particles: int, chunk_size: int
    ) -> float:
        machine = self._machine
        log_px = importance_log_likelihood(
            machine.model, machine.guide, self._params, jnp.asarray(images, dtype=jnp.float32),
            rng_key=key, num_particles=num_particles, chunk_size=chunk_size,
        )  # fmt: skip
        return float(np.asarray(log_px, dtype=np.float64).sum())

    def log_weights(
        self, images: np.ndarray, key: Array, *, num_particles: int, chunk_size: int
    ) -> np.ndarray:
        machine = self._machine
        log_weights = importance_log_weights(
            machine.model, machine.guide, self._params, jnp.asarray(images, dtype=jnp.float32),
            rng_key=key, num_particles=num_particles, chunk_size=chunk_size,
        )  # fmt: skip
        return np.asarray(log_weights, dtype=np.float64)

    def visible_scale(self) -> np.ndarray | None:
        return self._machine.visible_scale(self._params)

    def sample(self, num_samples: int, key: Array) -> np.ndarray:
        return np.asarray(self._machine.sample(self._params, key, num_samples))

    def features(self, images: np.ndarray) -> np.ndarray:
        x = jnp.asarray(images, dtype=jnp.float32)
        return np.asarray(self._machine.features(self._params, x), dtype=np.float64)

    def mean_activation(self, images: np.ndarray, key: Array) -> float:
        """The guide run once on ``images`` (seeded by ``key``, jitted); its units'
        probabilities of being on, averaged."""
        if self._jitted_activation is None:
            machine = self._machine

            def activation(key: Array, params: dict[str, Array], x: Array) -> Array:
                guide = handlers.seed(handlers.substitute(machine.guide, data=params), key)
                trace = handlers.trace(guide).get_trace(x)
                probs = [
                    trace[f"h{layer}"]["fn"].mean.reshape(x.shape[0], -1)
                    for layer in range(1, len(machine.hidden) + 1)
                ]
                return jnp.concatenate(probs, axis=-1).mean()

            self._jitted_activation = jax.jit(activation)
        x = jnp.asarray(images, dtype=jnp.float32)
        return float(self._jitted_activation(key, self._params, x))

    def acceptance_rate(self, rows: np.ndarray, key: Array) -> float:
        """One JSA transition sweep from the chains of training rows ``rows`` (the state is
        not changed); the fraction of moves accepted."""
        if self._jitted_acceptance is None:
            machine, loss, num_data = self._machine, self._svi.loss, self._num_data

            def acceptance(key: Array, state: SVIState, index: Array, train_x: Array) -> Array:
                params = {**self._svi.get_params(state), **state.mutable_state}
                terms = loss.terms(key, params, machine.model, machine.guide, train_x[index],
                                   num_data=num_data, index=index)  # fmt: skip
                return terms["acceptance_rate"]

            self._jitted_acceptance = jax.jit(acceptance)
        index = jnp.asarray(rows, dtype=jnp.int32)
        state, train_x = self._local((self._state, self._train_x))
        return float(self._jitted_acceptance(key, state, index, train_x))
