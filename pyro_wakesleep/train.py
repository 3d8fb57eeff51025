"""``python -m pyro_wakesleep train``: the shared trainer (:mod:`wakesleep.trainer.loop`) on Pyro.

:class:`HelmholtzTrainer` is the Pyro side of :class:`wakesleep.trainer.backend.TrainerBackend`:
a :class:`~pyro_wakesleep.helmholtz.HelmholtzMachine` trained by ``pyro.infer.SVI``, its
parameters in Pyro's global parameter store and its randomness from Pyro's global
generators (seeded by ``--seed``) plus a host ``torch.Generator`` for the mini-batches.

``--algorithm jsa`` keeps one Markov chain per training image on the loss
(:class:`~pyro_wakesleep.JointStochasticApproximation`): each step passes the mini-batch's
rows in the training set as ``index=`` to model and guide, and draws the rows without
replacement (:func:`wakesleep.trainer.schedule.keeps_chains`).

The checkpoint (``checkpoint.pt``) holds only tensors, numbers, strings and plain
containers: parameters, optimiser state, every generator's state and, for ``jsa``, the
chains (``loss.state_dict()``), so it loads with
``torch.load(..., weights_only=True)``, which runs no code from the file. A checkpoint of
an earlier release (pickled objects) is refused with a line that says how to go on.
"""

from __future__ import annotations

import argparse
import copy
import io
import pickle
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import SVI
from torch.distributed.elastic.multiprocessing.errors import record
from torch.distributions import constraints

from wakesleep.trainer import loop, schedule
from wakesleep.trainer.arguments import sparsity_settings
from wakesleep.trainer.backend import GenerativeWeights
from wakesleep.trainer.datasets import Dataset
from wakesleep.trainer.outputs import atomic_write_bytes
from wakesleep.trainer.runs import UnreadableCheckpoint

from . import distributed, losses
from .evaluation import importance_log_likelihood, importance_log_weights
from .helmholtz import HelmholtzMachine
from .optim import JointAdam

__all__ = ["CHECKPOINT", "HelmholtzTrainer", "main"]

CHECKPOINT = "checkpoint.pt"


def main(argv: Sequence[str] | None = None) -> dict | None:
    """``python -m pyro_wakesleep train ...``: train, write the outputs, print the metrics
    (rank 0 of a data-parallel run; the other ranks return ``None``)."""
    if distributed.launched():  # a rank's error goes into torchrun's report of the failure
        return record(loop.main)(HelmholtzTrainer(), argv)
    return loop.main(HelmholtzTrainer(), argv)


def _svi_step(svi: SVI, *args, **kwargs) -> torch.Tensor:
    """``svi.step`` with Pyro's validation off, returning the loss as a 0-dim tensor (its
    float would wait for the device)."""
    with pyro.validation_enabled(False), poutine.trace(param_only=True) as capture:
        loss = svi.loss_and_grads(svi.model, svi.guide, *args, **kwargs)
    params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
    distributed.average_gradients(params)  # data-parallel: the global batch's gradient
    svi.optim(params)
    pyro.infer.util.zero_grads(params)
    return loss.detach()


def _floats(losses: list[torch.Tensor]) -> list[float]:
    """Losses as floats, fetched from the device at once."""
    return torch.stack(losses).tolist() if losses else []


def _check_data_parallel(args: argparse.Namespace, world_size: int) -> None:
    """Exit with a line that says what to do where a data-parallel run cannot be the global
    batch's (:mod:`pyro_wakesleep.distributed`)."""
    if getattr(args, "devices", 1) != 1:
        raise SystemExit(
            "error: --devices is the NumPyro trainer's. Pyro trains on several processes (one "
            "per GPU, or CPU processes) with torchrun: torchrun --nproc_per_node=D -m "
            "pyro_wakesleep train ..."
        )
    if world_size == 1:
        return
    if args.batch_size % world_size:
        raise SystemExit(
            f"error: --batch-size {args.batch_size} does not split over {world_size} ranks; "
            f"pass a multiple of {world_size} (each rank takes an equal shard of every batch)."
        )
    if schedule.keeps_chains(args.algorithm) or sparsity_settings(args) is not None:
        what = "--algorithm jsa keeps chains per training image" if args.algorithm == "jsa" else (
            "--sparsity penalises the whole batch's mean activation"
        )  # fmt: skip
        raise SystemExit(
            f"error: {what}, which the ranks' shards do not share, so a data-parallel update "
            "would not be the global batch's. Train it in one process (without torchrun), or "
            "with the NumPyro trainer's --devices, whose sharded step is the global batch's."
        )


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "error: --device cuda was asked for, but PyTorch sees no CUDA device here. "
            "Use --device cpu, or install a CUDA build of torch on a machine with a GPU."
        )
    return torch.device(name)


def _optimiser(args: argparse.Namespace) -> JointAdam:
    """Adam whose learning rate at step ``t`` is :func:`wakesleep.trainer.schedule.learning_rate`.

    A constant rate (``--lr-decay 1``) is plain Adam; otherwise the schedule's step count
    sits in the optimiser state and travels with the checkpoint.
    """
    if args.lr_decay == 1.0:
        return JointAdam(args.lr)
    return JointAdam(args.lr, partial(schedule.learning_rate, 1.0, args.lr_decay, args.steps))


class _Candidates(HelmholtzMachine):
    """Machines of one shape as one Pyro program, for ``--restarts``: every parameter
    stacked along a new leading dimension, model and guide inside a ``candidates`` plate
    left of the data plate, each candidate with a mini-batch of its own, ``x`` of shape
    ``(candidates, batch, D)``.

    The objectives weigh particles per element of every plate that encloses all sample sites
    (:func:`pyro_wakesleep.traces.data_plates`), so each candidate has its own importance
    weights; the summed loss's gradient with respect to one candidate's parameters is that
    candidate's own, and Adam acts element by element: each candidate is updated as it would
    be alone. Objectives that couple datapoints (chains by row, a batch-wide sparsity
    penalty) would couple the candidates too; the trainer runs those one by one.
    """

    def __init__(self, machines: Sequence[HelmholtzMachine]) -> None:
        first = machines[0]
        with torch.random.fork_rng(devices=[]):  # these draws are replaced by the stack's
            super().__init__(
                first.num_visible, first.hidden, name=first.name, init=first.init,
                visible=first.visible,
            )  # fmt: skip
        self.num_candidates = len(machines)
        for name, _ in list(self.named_parameters()):
            module, _, leaf = name.rpartition(".")
            stacked = torch.stack([machine.get_parameter(name).detach() for machine in machines])
            setattr(self.get_submodule(module), leaf, torch.nn.Parameter(stacked))

    def model(self, x: torch.Tensor, num_data: int | None = None, index: None = None) -> None:
        with pyro.plate("candidates", self.num_candidates, dim=-2):
            super().model(x, num_data)

    def guide(self, x: torch.Tensor, num_data: int | None = None, index: None = None) -> None:
        with pyro.plate("candidates", self.num_candidates, dim=-2):
            super().guide(x, num_data)

    def _affine(self, layer: torch.nn.Linear, h: torch.Tensor) -> torch.Tensor:
        # h: (..., candidates, batch, in); weight: (candidates, out, in)
        return torch.matmul(h, layer.weight.transpose(-1, -2)) + layer.bias.unsqueeze(-2)

    def _per_unit(self, param: torch.Tensor) -> torch.Tensor:
        return param.unsqueeze(-2)  # (candidates, 1, units): broadcast over the batch


def _candidate_losses(objective: Any) -> torch.Tensor:
    """Each candidate's reported value per datapoint in the last step, ``(candidates,)``: the
    negative bound of its datapoints' importance weights, averaged (a 0-dim tensor per
    candidate that nothing reads yet)."""
    return -objective._bound(objective._last["log_weights"]).mean(-1)


def _candidate_state(stack: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Candidate ``index``'s training state from that of the stack: its slice of every
    parameter and of every moment of Adam (step counts and schedules are shared)."""

    def pick(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value[index] if value.dim() > 0 else value
        if isinstance(value, Mapping):
            return {key: pick(item) for key, item in value.items()}
        return value

    return {**stack, "params": pick(stack["params"]), "optim": pick(stack["optim"])}


def _rng_state() -> dict[str, Any]:
    """Pyro's global generators (torch, ``random``, NumPy) as tensors, numbers and lists."""
    name, keys, position, has_gauss, cached_gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "random": [version, list(internal), gauss_next],
        "numpy": [name, keys.tolist(), position, has_gauss, cached_gauss],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["random"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, position, has_gauss, cached_gauss = state["numpy"]
    np.random.set_state(
        (name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gauss)
    )
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _on_device(chains: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """A chain state (:meth:`~pyro_wakesleep.JointStochasticApproximation.state_dict`) with
    its tensors on ``device``."""
    if not chains:
        return {}
    return {
        **chains,
        "values": {name: value.to(device) for name, value in chains["values"].items()},
        "seen": chains["seen"].to(device),
        "age": chains["age"].to(device),
    }


class HelmholtzTrainer:
    """The Pyro backend of the shared trainer (:class:`wakesleep.trainer.backend.TrainerBackend`)."""

    name = "pyro_wakesleep"
    checkpoint = CHECKPOINT
    legacy_checkpoints: tuple[str, ...] = ()  # same name as before: refused when it is read
    world_size = 1  # one process on one device, until build finds more
    processes = 1
    is_main = True

    def __init__(self) -> None:
        self._device = torch.device("cpu")
        self._losses: list[float] = []
        # the training state of candidate i, after train_candidates
        self._candidate: Callable[[int], Mapping[str, Any]] | None = None

    def any_process(self, flag: bool) -> bool:
        return distributed.any_process(flag)

    @contextmanager
    def on_device(self, device: str) -> Iterator[None]:
        """On ``--device``; under ``torchrun``, one rank of a data-parallel run
        (:mod:`pyro_wakesleep.distributed`) on its own GPU with CUDA."""
        self._device = _device(device)
        if not distributed.launched():
            yield
            return
        self._device = distributed.start(device)
        try:
            self.world_size = self.processes = distributed.world_size()
            self.is_main = distributed.rank() == 0
            yield
        finally:
            distributed.stop()

    # -- training ---------------------------------------------------------------------------
    def build(self, args: argparse.Namespace, data: Dataset) -> None:
        _check_data_parallel(args, self.world_size)
        self._args = args
        self._train_x = torch.as_tensor(data.train, dtype=torch.float32, device=self._device)
        self._visible = data.visible
        self._chains = schedule.keeps_chains(args.algorithm)
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        # its parameters drawn here
        self._machine, self._svi, self._objective = self._new_machine()
        # mini-batch order, on the host: the same global batches on every rank
        self._batches = torch.Generator().manual_seed(args.seed)
        if self.world_size > 1:  # rank 0's start everywhere; particles of each rank's own
            distributed.broadcast_parameters(list(self._machine.parameters()))
            if distributed.rank() > 0:  # rank 0 draws what one process draws
                pyro.set_rng_seed(distributed.rank_seed(args.seed, distributed.rank()))

    def _new_machine(self) -> tuple[HelmholtzMachine, SVI, Any]:
        """A machine, its SVI and the SVI's objective (which holds the chains of ``jsa``)."""
        machine = self._draw_machine()
        return (machine, *self._new_svi(machine))

    def _draw_machine(self) -> HelmholtzMachine:
        """A machine whose parameters are drawn from the global generators now."""
        args = self._args
        machine = HelmholtzMachine(
            self._train_x.shape[-1], args.layers, init=args.init, visible=self._visible
        )
        return machine.to(self._device)

    def _new_svi(self, machine: HelmholtzMachine) -> tuple[SVI, Any]:
        args = self._args
        objective = schedule.objective(
            args.algorithm, args.particles, losses, sparsity_settings(args),
            compiled=not getattr(args, "no_jit", False),
        )  # fmt: skip
        return SVI(machine.model, machine.guide, _optimiser(args), objective), objective

    def start(self) -> None:
        pass  # the machine drew its parameters in build

    def train_candidates(
        self, restarts: int, steps: int, after_step: Callable[[int], None]
    ) -> np.ndarray:
        """Candidates, each a fresh machine drawn from the global generators, with mini-batches
        of their own from the batch generator: one stacked program (:class:`_Candidates`)
        for ``ws`` and ``rws``; one after another where the objective couples datapoints
        (``jsa``'s chains are indexed by row, the sparsity penalty averages over the batch)."""
        if self._chains or self._objective.sparsity is not None:
            return self._train_one_by_one(restarts, steps, after_step)
        return self._train_stacked(restarts, steps, after_step)

    def _train_stacked(
        self, restarts: int, steps: int, after_step: Callable[[int], None]
    ) -> np.ndarray:
        pyro.clear_param_store()
        stack = _Candidates([self._draw_machine() for _ in range(restarts)])
        distributed.broadcast_parameters(list(stack.parameters()))  # rank 0's starts
        svi, objective = self._new_svi(stack)
        num_data, batch_size = len(self._train_x), self._args.batch_size
        curve = []
        for _ in range(steps):
            index = torch.randint(num_data, (restarts, batch_size), generator=self._batches)
            index = distributed.shard(index)  # this rank's datapoints of every candidate
            _svi_step(svi, self._train_x[index.to(self._device)], num_data=num_data)
            svi.optim.step()  # the next step's learning rate
            curve.append(_candidate_losses(objective))
            after_step(restarts)
        self._candidate = partial(_candidate_state, self._training_state(svi, objective))
        curves = distributed.mean_over_ranks(torch.stack(curve, dim=1))  # the global batches'
        return np.asarray(curves.tolist(), dtype=np.float64)

    def _train_one_by_one(
        self, restarts: int, steps: int, after_step: Callable[[int], None]
    ) -> np.ndarray:
        curves, candidates = [], []
        for _ in range(restarts):
            pyro.clear_param_store()
            _, svi, objective = self._new_machine()
            curve = []
            for _ in range(steps):
                curve.append(self._step(svi))
                after_step(1)
            curves.append(_floats(curve))
            # with its own chains (jsa), which live on the candidate's loss
            candidates.append(copy.deepcopy(self._training_state(svi, objective)))
        self._candidate = candidates.__getitem__
        return np.asarray(curves, dtype=np.float64)

    def keep_candidate(self, index: int) -> None:
        self.restore(self._candidate(index))
        self._candidate = None

    def _step(self, svi: SVI) -> torch.Tensor:
        """One step on a mini-batch drawn with the batch generator; the loss per datapoint,
        a 0-dim tensor that nothing reads yet, so the step never waits for the device.

        ``jsa`` draws the rows without replacement and passes them as ``index``; ``ws`` and
        ``rws`` draw with replacement and pass none (the draws of earlier releases). Pyro's
        validation is off: it reads values (host synchronisations) in every step.
        """
        num_data, batch_size = len(self._train_x), self._args.batch_size
        if self._chains:
            index = torch.randperm(num_data, generator=self._batches)[:batch_size]
            index = index.to(self._device)
            value = _svi_step(svi, self._train_x[index], num_data=num_data, index=index)
        else:
            index = torch.randint(num_data, (batch_size,), generator=self._batches)
            index = distributed.shard(index)  # this rank's rows of the global batch
            value = _svi_step(svi, self._train_x[index.to(self._device)], num_data=num_data)
        svi.optim.step()  # the next step's learning rate
        return value / num_data

    def step(self) -> None:
        self._losses.append(self._step(self._svi))

    def take_losses(self) -> list[float]:
        losses, self._losses = self._losses, []
        if not losses:
            return []
        # data-parallel: each rank's loss is its shard's; their mean is the global batch's
        return distributed.mean_over_ranks(torch.stack(losses)).tolist()

    def wait(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    # -- checkpoints ------------------------------------------------------------------------
    def _training_state(self, svi: SVI, objective: Any) -> dict[str, Any]:
        """Parameters, optimiser state, every generator and (``jsa``) the chains: what
        continues a run exactly."""
        params = pyro.get_param_store().get_state()["params"]
        state = {
            "params": {name: value.detach() for name, value in params.items()},
            "optim": svi.optim.get_state(),
            "rng": _rng_state(),
            "batches": self._batches.get_state(),
        }
        if self._chains:  # {"plate", "values", "seen", "age"}: a string and tensors
            state["chains"] = objective.state_dict()
        return state

    def write_checkpoint(self, path: Path, meta: Mapping[str, Any]) -> None:
        """Every rank's generators gathered, the ranks' parameters checked to be the same;
        rank 0 writes."""
        state = self._training_state(self._svi, self._objective)
        every_rng = distributed.gather_objects(state["rng"])
        distributed.check_same_parameters(state["params"])
        if not self.is_main:
            return
        if self.world_size > 1:  # each rank continues its own particles on --resume
            state["rng_ranks"] = every_rng
        buffer = io.BytesIO()
        torch.save({"meta": dict(meta), **state}, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def read_checkpoint(self, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        # weights_only: tensors and plain containers only, no code from the run folder
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            return state.pop("meta"), state
        except (pickle.UnpicklingError, RuntimeError, KeyError, AttributeError) as error:
            raise UnreadableCheckpoint(str(path)) from error

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a training state, with the fresh SVI of :meth:`build`.

        Generator states stay on the host; parameters and chains move to the device. The
        machine's parameters (``pyro.module``) are unconstrained.
        """
        params = {
            name: value.to(self._device).requires_grad_() for name, value in state["params"].items()
        }
        pyro.clear_param_store()
        pyro.get_param_store().set_state(
            {"params": params, "constraints": dict.fromkeys(params, constraints.real)}
        )
        self._svi.optim.set_state(state["optim"])
        every_rng = state.get("rng_ranks")  # a data-parallel checkpoint: this rank's own
        _set_rng_state(every_rng[distributed.rank()] if every_rng else state["rng"])
        self._batches.set_state(state["batches"])
        if self._chains:
            if "chains" not in state:
                raise SystemExit(
                    "error: --resume: the checkpoint holds no chains of --algorithm jsa. Start a "
                    "new run instead: the same command without --resume, with another --out."
                )
            self._objective.load_state_dict(_on_device(state["chains"], self._device))

    # -- the trained machine ----------------------------------------------------------------
    def _images(self, images: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(images, dtype=torch.float32, device=self._device)

    def generative_weights(self) -> GenerativeWeights:
        return self._machine.generative_weights()

    def evaluation_key(self) -> None:
        return None  # Pyro draws from its global generators

    def split_key(self, key: None, num: int) -> list[None]:
        return [None] * num

    def log_likelihood_sum(
        self, images: np.ndarray, key: None, *, num_particles: int, chunk_size: int
    ) -> float:
        machine = self._machine
        log_px = importance_log_likelihood(
            machine.model, machine.guide, self._images(images),
            num_particles=num_particles, chunk_size=chunk_size,
        )  # fmt: skip
        return float(log_px.sum())

    def log_weights(
        self, images: np.ndarray, key: None, *, num_particles: int, chunk_size: int
    ) -> np.ndarray:
        machine = self._machine
        log_weights = importance_log_weights(
            machine.model, machine.guide, self._images(images),
            num_particles=num_particles, chunk_size=chunk_size,
        )  # fmt: skip
        return log_weights.double().cpu().numpy()

    def visible_scale(self) -> np.ndarray | None:
        return self._machine.visible_scale()

    def sample(self, num_samples: int, key: None) -> np.ndarray:
        return self._machine.sample(num_samples).cpu().numpy()

    def features(self, images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self._machine.features(self._images(images)).double().cpu().numpy()

    def mean_activation(self, images: np.ndarray, key: None) -> float:
        """The guide run once on ``images``; its units' probabilities of being on, averaged.

        The upper layers' draws come from a fork of torch's generators (``fork_rng``), so
        the samples and diagnostics drawn afterwards are those of a run without it.
        """
        depth = len(self._machine.hidden)
        devices = [self._device] if self._device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            trace = poutine.trace(self._machine.guide).get_trace(self._images(images))
            probs = [
                trace.nodes[f"h{layer}"]["fn"].mean.reshape(len(images), -1)
                for layer in range(1, depth + 1)
            ]
        return float(torch.cat(probs, dim=-1).double().mean())

    def acceptance_rate(self, rows: np.ndarray, key: None) -> float:
        """One JSA transition sweep from the chains of training rows ``rows``, on a copy of
        the loss (the run's chains stay as they are); the fraction of moves accepted."""
        probe = copy.deepcopy(self._objective)
        index = torch.as_tensor(rows, dtype=torch.long, device=self._device)
        machine = self._machine
        with torch.no_grad():
            probe.differentiable_loss(
                machine.model, machine.guide, self._train_x[index],
                num_data=len(self._train_x), index=index,
            )  # fmt: skip
        return probe.last_terms["acceptance_rate"]
