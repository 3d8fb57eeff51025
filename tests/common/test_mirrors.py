"""The two backends are mirrors: the same idea has the same name, signature and place.

For every module present in both ``pyro_wakesleep`` and ``numpyro_wakesleep``, both must
export the same public names (``__all__``), and a public function or class in both must
take the same parameters — apart from the short, explicit lists below, each with its
reason (``docs/design.md`` §5).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

import pytest

pytest.importorskip("pyro")
pytest.importorskip("numpyro")
pytest.importorskip("arviz")  # the diagnostics modules import it

#: Modules both backends have, by the same name and role.
SHARED_MODULES = [
    "distributed",
    "chains",
    "traces",
    "dreams",
    "losses",
    "objectives",
    "diagnostics",
    "evaluation",
    "helmholtz",
    "train",
]

#: Modules only one backend has, and why.
ONLY_ONE_BACKEND = {
    "numpyro_wakesleep.svi": "AlternatingSVI: numpyro.infer.SVI keeps no phase between steps; "
    "Pyro alternates inside the loss under its own SVI",
    "pyro_wakesleep.optim": "JointAdam: pyro.optim gives each parameter a torch optimiser of "
    "its own; Optax optimisers are one function of the whole parameter tree already",
}

_PLATE_OF_PARTICLES = (
    "Pyro's particles are a plate inside the program, which a program can mix: these check "
    "and undo that; NumPyro vmaps particles outside the program"
)
_PROBE = (
    "NumPyro's particles run inside vmap/jit: one eager probe pass fixes the mini-batch and "
    "plate structure; Pyro needs the plate nesting before its particle plate runs"
)

_CHAIN_STATE = (
    "Pyro keeps JSA's chains on the loss object (Chains, state_dict); NumPyro carries them "
    "functionally in the SVI state's mutable_state (CHAINS, empty_chains)"
)

_COMPILED = (
    "Pyro's compiled twins (torch.jit.trace, Pyro's JitTrace_ELBO convention); NumPyro's "
    "objectives are always jit-compiled by its SVI"
)

#: ``(module, name)`` exported by one backend only, and why.
_RANKS = (
    "torch.distributed's ranks are processes that exchange gradients explicitly, one "
    "all-reduce per step; JAX shards one program over a mesh and XLA adds the collectives"
)
_MESH = (
    "JAX shards one program over a mesh of devices (one axis, batches split, the rest "
    "replicated) and starts processes with jax.distributed; torch.distributed has no mesh"
)

ONLY_IN_PYRO = {
    **{("distributed", name): _RANKS for name in (
        "COLLECTIVE_TIMEOUT", "average_gradients", "broadcast_parameters",
        "check_same_parameters", "gather_objects", "launched", "mean_over_ranks", "rank",
        "rank_seed", "shard", "start", "stop", "world_size",
    )},  # fmt: skip
    ("traces", "particle_plate"): _PLATE_OF_PARTICLES,
    ("traces", "one_particle"): _PLATE_OF_PARTICLES,
    ("traces", "particle_mismatches"): _PLATE_OF_PARTICLES,
    ("traces", "vectorization_mismatches"): _PLATE_OF_PARTICLES,
    ("traces", "vectorization_is_safe"): _PLATE_OF_PARTICLES,
    ("traces", "resolve_plate_nesting"): _PROBE,
    ("traces", "side_run"): "NumPyro programs are pure: a check needs no fork of the random "
    "state and builds no gradient graph",
    ("traces", "mini_batch"): "Pyro replays a trace of sub-sampling sites; NumPyro "
    "substitutes the indices (subsample_indices)",
    ("chains", "Chains"): _CHAIN_STATE,
    ("losses", "JitWakeSleep"): _COMPILED,
    ("losses", "JitReweightedWakeSleep"): _COMPILED,
    ("losses", "JitJointStochasticApproximation"): _COMPILED,
}
ONLY_IN_NUMPYRO = {
    **{("distributed", name): _MESH for name in (
        "DATA_AXIS", "Processes", "batch_sharding", "data_mesh", "local", "on_mesh",
        "processes_from_environment", "replicated", "set_up",
    )},  # fmt: skip
    ("traces", "probe"): _PROBE,
    ("traces", "Probe"): _PROBE,
    ("traces", "subsample_indices"): "NumPyro substitutes the step's plate indices; Pyro "
    "replays a trace of them (mini_batch)",
    ("traces", "ImportanceChunk"): "a jitted chunk returns arrays, not traces: Pyro's "
    "importance_chunks yields ImportanceTraces",
    ("chains", "CHAINS"): _CHAIN_STATE,
    ("chains", "empty_chains"): _CHAIN_STATE,
}

#: Parameters NumPyro adds everywhere: it has no global parameter store and no global
#: random state, so values and keys are passed explicitly.
NUMPYRO_EXPLICIT_STATE = {"params", "rng_key"}

#: ``(module, name)`` whose parameters differ beyond that, and why.
SIGNATURE_DIFFERENCES = {
    ("traces", "ImportanceTraces"): "NumPyro also keeps what its particles substituted "
    "(fixed) and per-site finiteness, known only inside jit",
    ("traces", "run_guide_and_model"): "Pyro replays a mini-batch trace, NumPyro substitutes "
    "fixed values",
    ("traces", "importance_chunks"): "keep_draws: a jitted chunk returns the guide's draws "
    "only when asked (device memory); Pyro's chunks are traces holding them",
    ("traces", "importance_traces"): "keep_draws: vmapped particles return the guide's draws "
    "only when asked; Pyro's traces hold them",
    ("chains", "ChainStep"): "under jit an out-of-range index cannot raise: NumPyro's step "
    "says whether it is valid",
    ("chains", "advance_chains"): "Pyro checks indices on request (a host sync) and draws "
    "from torch's global generator; NumPyro takes a key",
}


def _module(backend: str, name: str):
    return importlib.import_module(f"{backend}.{name}")


def _parameters(obj: object) -> list[str] | None:
    """Parameter names of a function, or of a class's own constructor; ``None`` when there
    is nothing of ours to compare (a constant, or a constructor inherited from a framework)."""
    if inspect.isclass(obj):
        init = obj.__dict__.get("__init__")
        if init is None:
            return None
        names = list(inspect.signature(init).parameters)[1:]  # without self
    elif isinstance(obj, Callable):
        try:
            names = list(inspect.signature(obj).parameters)
        except (TypeError, ValueError):
            return None
    else:
        return None
    return names


@pytest.mark.parametrize("module", SHARED_MODULES)
def test_shared_modules_export_the_same_names(module):
    pyro_names = set(_module("pyro_wakesleep", module).__all__)
    numpyro_names = set(_module("numpyro_wakesleep", module).__all__)
    assert pyro_names - numpyro_names == {n for m, n in ONLY_IN_PYRO if m == module}
    assert numpyro_names - pyro_names == {n for m, n in ONLY_IN_NUMPYRO if m == module}


def test_packages_export_the_same_names_but_the_modules_of_one_backend_and_compiled_twins():
    pyro_names = set(importlib.import_module("pyro_wakesleep").__all__)
    numpyro_names = set(importlib.import_module("numpyro_wakesleep").__all__)
    compiled_twins = {n for m, n in ONLY_IN_PYRO if m == "losses"}
    assert pyro_names - numpyro_names == compiled_twins | {"JointAdam"}
    assert numpyro_names - pyro_names == {"AlternatingSVI", "AlternatingSVIState"}


def test_modules_of_one_backend_exist_in_it_alone():
    for qualified in ONLY_ONE_BACKEND:
        backend, module = qualified.split(".")
        other = "pyro_wakesleep" if backend == "numpyro_wakesleep" else "numpyro_wakesleep"
        assert importlib.util.find_spec(qualified) is not None
        assert importlib.util.find_spec(f"{other}.{module}") is None


@pytest.mark.parametrize("module", SHARED_MODULES)
def test_shared_names_take_the_same_parameters(module):
    pyro_module = _module("pyro_wakesleep", module)
    numpyro_module = _module("numpyro_wakesleep", module)
    differing = {}
    for name in sorted(set(pyro_module.__all__) & set(numpyro_module.__all__)):
        if (module, name) in SIGNATURE_DIFFERENCES:
            continue
        pyro_params = _parameters(getattr(pyro_module, name))
        numpyro_params = _parameters(getattr(numpyro_module, name))
        if pyro_params is None or numpyro_params is None:
            continue
        numpyro_params = [p for p in numpyro_params if p not in NUMPYRO_EXPLICIT_STATE]
        if pyro_params != numpyro_params:
            differing[name] = (pyro_params, numpyro_params)
    assert differing == {}


def test_the_lists_of_differences_name_only_what_exists():
    """An entry left behind after a difference is removed would hide the next one."""
    for (module, name), _ in ONLY_IN_PYRO.items():
        assert name in _module("pyro_wakesleep", module).__all__
    for (module, name), _ in ONLY_IN_NUMPYRO.items():
        assert name in _module("numpyro_wakesleep", module).__all__
    for module, name in SIGNATURE_DIFFERENCES:
        pyro_params = _parameters(getattr(_module("pyro_wakesleep", module), name))
        numpyro_params = _parameters(getattr(_module("numpyro_wakesleep", module), name))
        extra = NUMPYRO_EXPLICIT_STATE
        assert pyro_params != [p for p in numpyro_params if p not in extra], (module, name)


def test_phases_have_the_same_names_in_both_backends():
    import numpyro_wakesleep
    import pyro_wakesleep
    from numpyro_wakesleep.svi import ALTERNATING_PHASES
    from wakesleep.contract import FIRST_PHASE

    assert set(ALTERNATING_PHASES) | {"both"} == set(FIRST_PHASE.values())
    for alternate, first in FIRST_PHASE.items():
        assert pyro_wakesleep.WakeSleep(alternate=alternate).first_phase == first
        assert numpyro_wakesleep.WakeSleep(alternate=alternate).first_phase == first
        assert pyro_wakesleep.WakeSleep(alternate=alternate).phase == first


@pytest.mark.parametrize(
    "name", ["iwae_bound", "elbo_estimate", "normalized_weights", "effective_sample_size"]
)
def test_the_maths_of_the_weights_gives_the_same_numbers_in_both_backends(name):
    import jax.numpy as jnp
    import numpy as np
    import torch

    log_weights = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    pyro_value = getattr(_module("pyro_wakesleep", "objectives"), name)(torch.tensor(log_weights))
    numpyro_value = getattr(_module("numpyro_wakesleep", "objectives"), name)(
        jnp.asarray(log_weights)
    )
    np.testing.assert_allclose(pyro_value.numpy(), np.asarray(numpyro_value), rtol=1e-5)
