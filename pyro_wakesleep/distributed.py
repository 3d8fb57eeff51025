"""Data-parallel training on ``torch.distributed`` (``docs/design.md`` §11).

Every process (*rank*) holds the whole machine, takes its shard of every global mini-batch,
draws its own particles and dreams, and averages its gradients with the other ranks' before
the optimiser step; every rank then applies the same update and keeps the same parameters.

**Why the average is the global batch's update.** The objectives weigh particles per
datapoint, and a term over a mini-batch is a sum over its datapoints scaled by ``N / B``
(the data plate's sub-sampling; the dreams of the sleep phase are scaled alike). A rank
with a shard of ``B / P`` datapoints scales by ``P · N / B``, so the mean over the ``P``
ranks of their gradients is ``N / B`` times the sum over the whole batch: the gradient of
the global batch, wake and sleep terms alike, with each datapoint's own particles.
Objectives whose terms are not sums over datapoints (a penalty on the batch's mean
activation, chains kept per training row) do not decompose so; the trainer refuses them.

**Why not** ``DistributedDataParallel``. DDP all-reduces from hooks that its wrapped
module's ``forward`` arms, and expects every parameter in every backward pass. Pyro's
programs do not run through a module's ``forward``, and an alternating schedule gives the
idle side no gradient at all (``grad is None``, so that Adam leaves it alone). One explicit
all-reduce after ``loss_and_grads`` averages exactly the gradients that the step set, in
one message per step.

A loop of one's own, started with ``torchrun --nproc_per_node=P script.py``::

    torch.distributed.init_process_group("gloo")  # "nccl" on GPUs; torchrun sets the rest
    for step in range(steps):
        rows = shard(torch.randint(N, (B,), generator=batches))  # the same generator seed
        with poutine.trace(param_only=True) as capture:          # on every rank
            objective.loss_and_grads(model, guide, data[rows], num_data=N)
        params = [site["value"].unconstrained() for site in capture.trace.nodes.values()]
        average_gradients(params)
        optimiser(params)
        pyro.infer.util.zero_grads(params)

Seed the generators of the parameters' start alike on every rank (or
:func:`broadcast_parameters` from rank 0) and those of the particles apart
(:func:`rank_seed`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import pyro
import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "COLLECTIVE_TIMEOUT",
    "any_process",
    "average_gradients",
    "broadcast_parameters",
    "check_same_parameters",
    "gather_objects",
    "launched",
    "mean_over_ranks",
    "rank",
    "rank_seed",
    "shard",
    "start",
    "stop",
    "world_size",
]

#: How long a collective waits for the other ranks before it fails: a rank that dies outside
#: ``torchrun`` (which ends the others itself) ends the run with an error instead of a hang.
COLLECTIVE_TIMEOUT = timedelta(minutes=5)


def launched() -> bool:
    """Whether this process is one of several ranks (``torchrun`` sets ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: str) -> torch.device:
    """Join the process group that ``torchrun``'s environment describes, with gloo on the CPU
    and NCCL on CUDA (one GPU per rank, ``cuda:LOCAL_RANK``); this rank's device."""
    if device == "cuda":
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", timeout=COLLECTIVE_TIMEOUT, device_id=local)
        return local
    dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    return torch.device(device)


def stop() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """The number of ranks; 1 without a process group."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank; 0 without a process group."""
    return dist.get_rank() if dist.is_initialized() else 0


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s particles and dreams, far from any small seed for ranks
    above 0 (rank 0 goes on with the generators that drew the parameters, as one process
    does)."""
    return seed if rank == 0 else seed + 1_000_003 * rank


def shard(batch: Tensor, dim: int = -1) -> Tensor:
    """This rank's contiguous block of ``batch`` along ``dim`` (a global mini-batch's rows,
    drawn alike on every rank); its size must be a multiple of the number of ranks."""
    size = world_size()
    if size == 1:
        return batch
    return batch.tensor_split(size, dim=dim)[rank()]


def _by_name(params: Iterable[Tensor]) -> list[Tensor]:
    """Pyro parameters in the order of their names: the same on every rank."""
    store = pyro.get_param_store()
    return sorted(params, key=store.param_name)


def average_gradients(params: Iterable[Tensor]) -> None:
    """Replace the gradient of every parameter in ``params`` (unconstrained tensors of Pyro's
    param store) that has one by its mean over the ranks: one all-reduce per dtype.

    Every rank must pass parameters with gradients of the same names and shapes (ranks in
    lock step do: the same phase, the same program); those without one (``grad is None``,
    the idle side of an alternating schedule) stay without.
    """
    size = world_size()
    if size == 1:
        return
    buckets: dict[torch.dtype, list[Tensor]] = defaultdict(list)
    for param in _by_name(params):
        if param.grad is not None:
            buckets[param.grad.dtype].append(param.grad)
    for grads in buckets.values():
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        dist.all_reduce(flat)
        flat /= size
        for grad, mean in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            grad.copy_(mean.view_as(grad))


def mean_over_ranks(values: Tensor) -> Tensor:
    """The mean of ``values`` over the ranks (a new tensor): losses of the shards, averaged
    into the global batch's."""
    if world_size() == 1:
        return values
    total = values.detach().clone()
    dist.all_reduce(total)
    return total / world_size()


def any_process(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank: a collective that every rank must call at the same
    step."""
    if world_size() == 1:
        return flag
    nccl = dist.get_backend() == "nccl"  # NCCL reduces tensors on this rank's GPU only
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_parameters(params: Sequence[Tensor]) -> None:
    """Rank 0's values of ``params`` on every rank (in place; the same order on every rank)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for param in params:
            dist.broadcast(param, src=0)


def check_same_parameters(params: dict[str, Tensor]) -> None:
    """Raise ``RuntimeError`` naming the parameters whose values differ between ranks.

    Each parameter is summarised by its sum and its sum of squares in float64; the ranks'
    summaries are compared with a max and a min all-reduce.
    """
    if world_size() == 1:
        return
    names = sorted(params)

    def summarise(value: Tensor) -> Tensor:
        value = value.detach().double()
        return torch.stack([value.sum(), value.square().sum()])

    summary = torch.stack([summarise(params[name]) for name in names])
    highest, lowest = summary.clone(), summary.clone()
    dist.all_reduce(highest, op=dist.ReduceOp.MAX)
    dist.all_reduce(lowest, op=dist.ReduceOp.MIN)
    differing = [
        n for n, same in zip(names, (highest == lowest).all(-1).tolist(), strict=True) if not same
    ]
    if differing:
        raise RuntimeError(
            f"The ranks' parameters differ ({', '.join(differing)}): their updates were not "
            "the same. Every rank must run the same program on batches of the same shape; "
            "please report this with the command that was run."
        )


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (pickled through the process group)."""
    if world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
