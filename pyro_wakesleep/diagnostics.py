"""ArviZ diagnostics of a trained Pyro guide as an importance sampler of the posterior.

::

    from pyro_wakesleep.diagnostics import importance_resample, to_inference_data

    idata = to_inference_data(model, guide, x, num_samples=1000)  # params: the param store
    idata.sample_stats["pareto_k"]          # PSIS k̂ per datapoint: < 0.7 is trustworthy
    posterior = importance_resample(idata)  # unweighted draws for az.summary, az.plot_posterior

The weights are those of the objectives (:mod:`pyro_wakesleep.traces`): one set per
element of the data plate(s), joint where a global latent exists. Importing this
module imports ArviZ; ``import pyro_wakesleep`` alone does not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pyro
import torch
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.runtime import Message
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample

from wakesleep.contract import check_draw_arguments
from wakesleep.inference_data import (
    build_inference_data,
    draw_axes,
    importance_resample,
    observed_axes,
)

from .traces import (
    OWN_PLATES,
    ImportanceTraces,
    importance_chunks,
    observed_values,
    sample_sites,
)

__all__ = ["importance_resample", "to_inference_data"]


def _to_numpy(value: torch.Tensor, site: Message) -> np.ndarray:
    array = value.detach().cpu().numpy()
    if site["fn"].support.is_discrete and not np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.int64)  # Pyro stores Bernoulli draws as floats
    return array


def _model_plates(site: Message) -> dict[int, CondIndepStackFrame]:
    """The model's own vectorised plates enclosing a site, by dim."""
    return {
        frame.dim: frame
        for frame in site["cond_indep_stack"]
        if frame.vectorized and frame.name not in OWN_PLATES
    }


def _latent_draws(
    name: str, site: Message, plate_nesting: int, vectorized: bool
) -> tuple[np.ndarray, list[str]]:
    """A guide site's draws ``(S, ...)`` and their dims (see :func:`draw_axes`).

    Vectorised, the value's batch dimensions are the particles and the model's
    ``plate_nesting`` plates; sequential, only the plates (left-padded when fewer) and a
    particle axis of size 1 is added.
    """
    value = site["value"]
    event_ndim = len(site["fn"].event_shape)
    batch_shape = tuple(value.shape[: value.dim() - event_ndim])
    plate_ndim = plate_nesting + 1 if vectorized else plate_nesting
    batch_shape = (1,) * (plate_ndim - len(batch_shape)) + batch_shape
    if not vectorized:
        batch_shape = (1,) + batch_shape
    value = value.reshape(batch_shape + tuple(value.shape[value.dim() - event_ndim :]))
    plates = {dim: frame.name for dim, frame in _model_plates(site).items()}
    index, dims = draw_axes(name, batch_shape[1:], event_ndim, plates)
    return _to_numpy(value[index], site), dims


def to_inference_data(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1000,
    vectorize: bool = True,
    max_plate_nesting: float = math.inf,
    chunk_size: int | None = None,
    **kwargs: Any,
) -> Any:
    """Importance-weighted guide draws as an ArviZ ``InferenceData``.

    Draws ``num_samples`` particles from ``guide(*args, **kwargs)``, scores them under
    ``model(*args, **kwargs)`` (parameters from Pyro's param store, no gradients) and
    weights them by ``log p(x, z) − log q(z | x)``, per element of the data plate(s) — the
    plates enclosing every sample site — exactly as the objectives do, or jointly when a
    global latent exists (then, with a sub-sampled plate, the scaled log-densities enter the
    weights, see :mod:`pyro_wakesleep.traces`).

    Args:
        model, guide: the Pyro programs given to the objective.
        *args: their positional arguments (the data).
        **kwargs: their keyword arguments.
        num_samples: number of draws ``S`` from the guide.
        vectorize: draw the particles in one vectorised plate (``True``) or one guide run
            at a time.
        max_plate_nesting: the model's own nested plates; ``inf`` guesses it by running
            model and guide once.
        chunk_size: draw at most this many particles at a time (vectorised), so memory stays
            bounded; every chunk replays the first one's plate sub-sampling.

    Returns:
        ``InferenceData`` (see :func:`wakesleep.inference_data.build_inference_data`):
        ``posterior`` holds every latent site of the guide with dims ``(chain=1, draw=S,
        *plates, *"{site}_dim_{i}")`` — plate dimensions are named after the plate, e.g.
        ``"data"``, and carry the sub-sample indices as coordinates; discrete sites are
        ``int64``. ``sample_stats`` holds ``log_weight`` ``(chain, draw, *data plates)``,
        ``pareto_k`` and ``ess`` per datapoint; ``observed_data`` the observed sites.

    Raises:
        ImportError: when ArviZ is not installed (``pip install 'wakesleep[arviz]'``).
        ValueError: on invalid arguments, a model/guide mismatch, or a datapoint whose
            draws all have weight zero.
    """
    check_draw_arguments(
        num_samples=num_samples,
        chunk_size=chunk_size,
        max_plate_nesting=max_plate_nesting,
        vectorize=vectorize,
    )
    log_weights: list[np.ndarray] = []
    latents: dict[str, list[np.ndarray]] = {}
    dims: dict[str, list[str]] = {}
    first: ImportanceTraces | None = None  # its traces name the sites and plates
    with torch.no_grad():
        for wake in importance_chunks(
            model,
            guide,
            args,
            kwargs,
            num_particles=num_samples,
            # sequential runs keep the traces of their first particle only: one draw a chunk
            chunk_size=(chunk_size or num_samples) if vectorize else 1,
            max_plate_nesting=max_plate_nesting,
            vectorize=vectorize,
        ):
            first = first or wake
            log_weights.append(wake.datapoint_log_weights.cpu().numpy())
            for name, site in sample_sites(wake.guide_trace):
                if not site["is_observed"]:
                    value, dims[name] = _latent_draws(name, site, wake.plate_nesting, vectorize)
                    latents.setdefault(name, []).append(value)

    assert first is not None
    first_model, first_guide = first.model_trace, first.guide_trace
    weight_dims = [frame.name for frame in sorted(first.data_plates.values(), key=lambda f: f.dim)]
    posterior = {name: np.concatenate(draws, axis=0) for name, draws in latents.items()}
    observed = {}
    coords: dict[str, np.ndarray] = {}
    for name, value in observed_values(first_model).items():
        site = first_model.nodes[name]
        observed[name] = value.detach().cpu().numpy()
        dims[name] = observed_axes(
            name,
            tuple(value.shape),
            len(site["fn"].event_shape),
            {dim: (frame.name, frame.size) for dim, frame in _model_plates(site).items()},
        )
    for trace in (first_guide, first_model):
        for _, site in sample_sites(trace):
            for frame in site["cond_indep_stack"]:
                if frame.vectorized and frame.name not in OWN_PLATES:
                    coords.setdefault(frame.name, _plate_coords(trace, frame))
    return build_inference_data(
        posterior=posterior,
        log_weight=np.concatenate(log_weights, axis=0),
        observed=observed,
        dims=dims,
        weight_dims=weight_dims,
        coords=coords,
        attrs={"inference_library": "pyro", "inference_library_version": pyro.__version__},
    )


def _plate_coords(trace: Trace, frame: Any) -> np.ndarray:
    """Coordinates of a plate dimension: its sub-sample indices, else ``0..size-1``."""
    site = trace.nodes.get(frame.name)
    if site is not None and site_is_subsample(site):
        return site["value"].detach().cpu().numpy()
    return np.arange(frame.size)
