"""Data-parallel training with JAX (``docs/design.md`` §11): devices, processes, shardings.

``--devices D`` trains on a :class:`jax.sharding.Mesh` with one axis, :data:`DATA_AXIS`,
over ``D`` local devices of ``--device`` in every process: the mini-batch is sharded along
it (:func:`batch_sharding`), the training set, the parameters, the optimiser state and
``jsa``'s chains are replicated (:func:`replicated`). XLA turns the sums over the batch
into all-reduces, so every device ends each step with the same parameters. Random draws do
not depend on the sharding (``jax_threefry_partitionable``, on by default since JAX 0.5),
so a sharded step draws the same particles as one device and differs from it only by the
order of floating-point sums.

On the CPU, the ``D`` devices are host devices, which must be asked for before JAX starts
its backend (:func:`set_up`, called by ``python -m numpyro_wakesleep train`` before any
computation).

Several processes (hosts, or processes on one machine) train together when the
environment says so, with JAX's own conventions (:func:`processes_from_environment`):

* ``JAX_COORDINATOR_ADDRESS=host:port``, ``JAX_NUM_PROCESSES=P`` and ``JAX_PROCESS_ID=i``
  in each process (``i`` = 0 … P-1; process 0 serves the coordinator at that address), or
* a Slurm job step or an Open MPI launch with more than one task, which
  :func:`jax.distributed.initialize` detects by itself.

Each process runs the whole trainer on the same data and seed in lock step; the mesh spans
every process's ``D`` devices (``world_size`` = D × P), and cross-process collectives on
the CPU go through gloo. Process 0 alone evaluates and writes; it does so with
process-local copies (:func:`local`) that need no other process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "Processes",
    "any_process",
    "batch_sharding",
    "data_mesh",
    "local",
    "on_mesh",
    "processes_from_environment",
    "replicated",
    "set_up",
]

#: The mesh's one axis, along which every mini-batch is split.
DATA_AXIS = "data"
#: The environment variables of an explicitly started multi-process run.
COORDINATOR, NUM_PROCESSES, PROCESS_ID = (
    "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
)  # fmt: skip
#: How long the processes that finished training wait at exit for process 0, which
#: evaluates and writes alone (JAX's default of 5 minutes is shorter than an evaluation).
SHUTDOWN_TIMEOUT_S = 24 * 3600


@dataclass(frozen=True)
class Processes:
    """How this process joins a multi-process run: the arguments of
    :func:`jax.distributed.initialize`, or all ``None`` where a cluster (Slurm, Open MPI)
    tells JAX itself."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _int_variable(environ: Mapping[str, str], name: str) -> int:
    value = environ.get(name)
    if value is None or not value.strip().isdigit():
        raise SystemExit(
            f"error: {COORDINATOR} is set, so {name} must be a non-negative integer too "
            f"(got {value!r}). Set {NUM_PROCESSES}=P and {PROCESS_ID}=0..P-1 in every "
            f"process, or unset {COORDINATOR} for a run in one process."
        )
    return int(value)


def processes_from_environment(environ: Mapping[str, str] = os.environ) -> Processes | None:
    """The multi-process run this environment asks for; ``None`` for one process.

    Explicit: :data:`COORDINATOR` with :data:`NUM_PROCESSES` and :data:`PROCESS_ID`.
    Detected by JAX: a Slurm step (``SLURM_NTASKS`` > 1) or an Open MPI launch
    (``OMPI_COMM_WORLD_SIZE`` > 1). A single-task Slurm job trains in one process.
    """
    if environ.get(COORDINATOR):
        count, index = _int_variable(environ, NUM_PROCESSES), _int_variable(environ, PROCESS_ID)
        if not 0 <= index < count:
            raise SystemExit(
                f"error: {PROCESS_ID}={index} must be in 0..{NUM_PROCESSES}-1 = 0..{count - 1}."
            )
        return Processes(environ[COORDINATOR], count, index)
    slurm = "SLURM_JOB_ID" in environ and "SLURM_PROCID" in environ
    if slurm and int(environ.get("SLURM_NTASKS", "1")) > 1:
        return Processes()
    if "OMPI_MCA_orte_hnp_uri" in environ and int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return Processes()
    return None


def _backend_started() -> bool:
    """Whether JAX has started a backend (after which device counts are fixed)."""
    from jax._src import xla_bridge  # no public equivalent

    return xla_bridge.backends_are_initialized()


def set_up(platform: str, devices: int, environ: Mapping[str, str] = os.environ) -> int:
    """Make ``devices`` local devices of ``platform`` (``"cpu"`` or ``"gpu"``) and join the
    multi-process run the environment asks for; the number of processes.

    Must come before any JAX computation: on the CPU it sets ``jax_num_cpu_devices`` (host
    devices are made when the backend starts), and :func:`jax.distributed.initialize` must
    precede the backend too. Called again (or after JAX started) it only checks that the
    devices are there, with a ``SystemExit`` that says what to do otherwise.
    """
    processes = processes_from_environment(environ)
    if not _backend_started():
        if platform == "cpu" and devices > 1:
            jax.config.update("jax_num_cpu_devices", devices)
        if processes is not None:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(
                processes.coordinator_address,
                processes.num_processes,
                processes.process_id,
                shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S,
            )
    elif processes is not None and jax.process_count() == 1:
        raise SystemExit(
            "error: the environment asks for a multi-process run, but JAX had started in "
            "this process before the trainer could join it. Start the run with "
            "python -m numpyro_wakesleep train, or call "
            "numpyro_wakesleep.distributed.set_up before any JAX computation."
        )
    try:
        found = len(jax.local_devices(backend=platform))
    except RuntimeError:
        found = 0
    if found < devices:
        if platform == "cpu":
            hint = (
                "JAX had started with fewer host devices before the trainer could ask for "
                f"more: set XLA_FLAGS=--xla_force_host_platform_device_count={devices} (or "
                f"jax.config.update('jax_num_cpu_devices', {devices})) before the first JAX "
                "computation, or run python -m numpyro_wakesleep train"
            )
        elif found == 0:
            hint = (
                "use --device cpu, or install a CUDA build of jax (e.g. pip install "
                "'jax[cuda12]') on a machine with a GPU"
            )
        else:
            hint = f"use --devices {found} or fewer, or a machine with more"
        raise SystemExit(
            f"error: --devices {devices} needs {devices} {platform} devices in this process, "
            f"JAX sees {found}: {hint}."
        )
    return jax.process_count()


def data_mesh(platform: str, devices: int) -> Mesh:
    """The one-axis mesh of the first ``devices`` local devices of every process, in order
    of process."""
    chosen = []
    for process in range(jax.process_count()):
        owned = [d for d in jax.devices(platform) if d.process_index == process]
        chosen.extend(owned[:devices])
    return Mesh(np.array(chosen), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """A whole copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The rows of a mini-batch split over ``mesh`` (inside ``jax.vmap`` over ``--restarts``
    candidates, the candidates' axis stays whole)."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def on_mesh(tree: Any, sharding: NamedSharding) -> Any:
    """Every leaf of ``tree`` as a global array with ``sharding``, from host values that are
    the same in every process (``jax.device_put`` of a NumPy array cannot reach another
    process's devices)."""

    def place(leaf: Any) -> jax.Array:
        value = np.asarray(jax.device_get(leaf))
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(place, tree)


def local(tree: Any) -> Any:
    """Each replicated leaf as this process's own copy, on its first device of the mesh:
    arrays that computations in this process alone can use (evaluation, checkpoint)."""
    return jax.tree.map(lambda leaf: leaf.addressable_shards[0].data, tree)


def any_process(flag: bool) -> bool:
    """Whether ``flag`` holds in any process: a collective that every process must call."""
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.array([flag], dtype=np.int32))
    return bool(np.asarray(flags).any())
