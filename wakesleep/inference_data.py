"""ArviZ containers for importance-weighted guide draws (backend-neutral: NumPy, xarray, ArviZ).

A trained guide ``q(z | x)`` is a proposal for the model's posterior ``p(z | x)``.
Drawing ``S`` particles from it and weighting them by

    log w_s = log p(x, z_s) − log q(z_s | x)

gives a self-normalised importance sampler of the posterior, and the Pareto
shape ``k̂`` of the weights' upper tail says whether that sampler (and hence the
guide) can be trusted (Vehtari, Simpson, Gelman, Yao & Gabry 2024, *Pareto
smoothed importance sampling*, JMLR 25(72)):

- ``k̂ < 0.5``: the weights have finite variance; importance sampling is reliable;
- ``0.5 ≤ k̂ < 0.7``: finite mean, infinite variance; PSIS still gives usable estimates;
- ``k̂ ≥ 0.7``: estimates are unreliable: the guide misses mass the posterior has.

``k̂ = inf`` means ArviZ could not fit a tail: fewer than 5 draws lie strictly above the
tail cutoff. That happens with very few draws (``S`` below about 25) and with discrete
latents whose weights take only a few distinct values (e.g. one Bernoulli per datapoint).
Such weights are bounded, so the sampler is fine; read the ESS instead.

Both backends turn their traces into NumPy arrays and call
:func:`build_inference_data`; :func:`importance_resample` then gives an
unweighted posterior that every ArviZ function understands. PSIS itself is
ArviZ's own (``az.psislw`` in ArviZ < 1, ``arviz_stats.base.array_stats.psislw``
in ArviZ ≥ 1); nothing here re-implements it.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

try:
    import arviz as az
    import xarray as xr
except ImportError as error:
    raise ImportError(
        "The ArviZ diagnostics need arviz (and xarray). Install them with "
        "`pip install 'wakesleep[arviz]'`."
    ) from error

__all__ = [
    "build_inference_data",
    "draw_axes",
    "importance_ess",
    "importance_resample",
    "observed_axes",
    "psis_log_weights",
]

#: Names of the two sample dimensions ArviZ expects in ``posterior``.
CHAIN, DRAW = "chain", "draw"


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    peak = np.max(a, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(a - peak), axis=axis, keepdims=True)) + peak


def _check_log_weight(log_weight: np.ndarray) -> np.ndarray:
    lw = np.asarray(log_weight, dtype=np.float64)
    if lw.ndim < 1 or lw.shape[0] < 1:
        raise ValueError(
            f"log_weight must have a leading draw axis with at least one draw, got shape {lw.shape}."
        )
    if np.isnan(lw).any() or np.isposinf(lw).any():
        bad = np.argwhere(np.isnan(lw) | np.isposinf(lw))[0]
        raise ValueError(
            f"log_weight holds NaN or +inf (first at index {tuple(int(i) for i in bad)}: draw, "
            "datapoint...). A log-density of model or guide is not finite there: check the "
            "model's and guide's parameters and supports."
        )
    all_zero = np.all(np.isneginf(lw), axis=0)
    if np.any(all_zero):
        where = [tuple(int(i) for i in idx) for idx in np.argwhere(np.atleast_1d(all_zero))[:5]]
        raise ValueError(
            f"Every draw has weight zero (log_weight = -inf) for datapoint(s) {where}: the guide "
            "proposes only values the model rules out. Check that the guide's support matches "
            "the model's."
        )
    return lw


def _psislw_arviz(moved: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ArviZ's PSIS over the last axis of log importance ratios: ``(smoothed, k)``."""
    psislw = getattr(az, "psislw", None)
    if psislw is not None:  # ArviZ < 1
        smoothed, k = psislw(moved, reff=1.0)
        return np.asarray(smoothed), np.asarray(k)
    # ArviZ >= 1: PSIS lives in arviz_stats. Its array function takes log-*likelihoods*
    # (it smooths the negated values, as needed for PSIS-LOO), so hand it -log w.
    from arviz_stats.base import array_stats

    smoothed, k = array_stats.psislw(-moved, r_eff=1.0, axis=-1)
    smoothed = np.asarray(smoothed)
    # PSIS is monotone in the log-ratios: the largest raw ratio keeps the largest smoothed
    # weight. If not, this arviz_stats version does not negate internally; undo ours.
    top = np.take_along_axis(smoothed, np.argmax(moved, axis=-1)[..., None], axis=-1)[..., 0]
    if not np.all(top >= smoothed.max(axis=-1)):
        smoothed, k = array_stats.psislw(moved, r_eff=1.0, axis=-1)
    return np.asarray(smoothed), np.asarray(k)


def psis_log_weights(log_weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed, self-normalised log-weights and the Pareto ``k̂``, per datapoint.

    Args:
        log_weight: raw log importance weights ``log p(x, z) − log q(z | x)``, shape
            ``(S, *datapoint_shape)`` (draws first; ``datapoint_shape`` empty for joint weights).

    Returns:
        ``(smoothed, k)``: ``smoothed`` has the shape of ``log_weight`` and
        ``logsumexp(smoothed, axis=0) == 0``; ``k`` has shape ``datapoint_shape``. Draws are
        independent, so the relative efficiency ``r_eff`` is 1. With fewer than 5 draws strictly
        above the tail cutoff (``S`` below about 25, or weights with few distinct values, as
        from a discrete latent) ArviZ returns ``k = inf`` and the weights unsmoothed.

    Raises:
        ValueError: on NaN or ``+inf`` log-weights, or a datapoint whose draws all have
            weight zero.
    """
    lw = _check_log_weight(log_weight)
    smoothed, k = _psislw_arviz(np.moveaxis(lw, 0, -1))
    smoothed = smoothed - _logsumexp(smoothed, axis=-1)
    return np.moveaxis(smoothed, -1, 0), np.asarray(k, dtype=np.float64).reshape(lw.shape[1:])


def importance_ess(log_weight: np.ndarray) -> np.ndarray:
    """Importance-sampling effective sample size ``(Σ_s w_s)² / Σ_s w_s²`` per datapoint.

    Uses the *raw* (unsmoothed) weights, as the training objectives do
    (``last_terms["ess"]``); it lies in ``[1, S]``. When ``k̂ ≥ 0.7`` it is itself unreliable
    (usually over-optimistic): trust ``k̂`` first.
    """
    lw = _check_log_weight(log_weight)
    normalized = np.exp(lw - _logsumexp(lw, axis=0))
    return 1.0 / np.sum(normalized**2, axis=0)


def _axis_names(
    name: str, shape: tuple[int, ...], given: Sequence[str] | None, leading: tuple[str, ...]
) -> list[str]:
    """Dimension names of an array: ``given`` (``leading`` prepended when absent), else defaults."""
    names = list(given) if given is not None else []
    if leading and names[: len(leading)] != list(leading):
        names = list(leading) + names
    if len(names) > len(shape):
        raise ValueError(
            f"dims[{name!r}] names {len(names)} axes ({names}) but the array has shape {shape}."
        )
    names += [f"{name}_dim_{i}" for i in range(len(shape) - len(names))]
    if len(set(names)) != len(names):
        raise ValueError(f"dims[{name!r}] repeats a dimension name: {names}.")
    return names


def draw_axes(
    site: str, batch_shape: Sequence[int], event_ndim: int, plates: Mapping[int, str]
) -> tuple[tuple[int | slice, ...], list[str]]:
    """How to index a guide site's draws ``(S, *batch_shape, *event_shape)`` and name the result.

    ``batch_shape`` is left-padded to the model's plate dims; ``plates`` maps a plate's dim
    (negative) to its name. The index drops the size-1 batch axes that are no plate; the
    names are ``"draw"``, then each plate's name, other batch axes and the event axes being
    ``"{site}_dim_{i}"``.
    """
    names: list[str] = [DRAW]
    index: list[int | slice] = [slice(None)]
    extra = 0
    for axis, size in enumerate(batch_shape):
        dim = axis - len(batch_shape)  # the plate dim this axis stands for
        if dim in plates:
            names.append(plates[dim])
        elif size == 1:
            index.append(0)
            continue
        else:
            names.append(f"{site}_dim_{extra}")
            extra += 1
        index.append(slice(None))
    names += [f"{site}_dim_{extra + i}" for i in range(event_ndim)]
    return tuple(index), names


def observed_axes(
    site: str, shape: Sequence[int], event_ndim: int, plates: Mapping[int, tuple[str, int]]
) -> list[str]:
    """Names of an observed value's axes: a plate's name where the value's size along the
    plate's dim is the plate's size, else ``"{site}_dim_{i}"``.

    :param plates: ``{dim: (name, size)}`` of the plates enclosing the site.
    """
    batch_ndim = len(shape) - event_ndim
    names, extra = [], 0
    for axis, size in enumerate(shape):
        plate = plates.get(axis - batch_ndim) if axis < batch_ndim else None
        if plate is not None and size == plate[1]:
            names.append(plate[0])
        else:
            names.append(f"{site}_dim_{extra}")
            extra += 1
    return names


def _dimension_sizes(variables: Mapping[str, tuple[list[str], np.ndarray]]) -> dict[str, int]:
    """Size of every named dimension; a ``ValueError`` when two variables disagree."""
    sizes: dict[str, tuple[int, str]] = {}
    for name, (dims, values) in variables.items():
        for dim, size in zip(dims, values.shape, strict=True):
            seen = sizes.setdefault(dim, (size, name))
            if seen[0] != size:
                raise ValueError(
                    f"Dimension {dim!r} has size {seen[0]} in {seen[1]!r} but {size} in {name!r}."
                )
    return {dim: size for dim, (size, _) in sizes.items()}


def _dataset(
    variables: Mapping[str, tuple[list[str], np.ndarray]],
    coords: Mapping[str, Any],
    attrs: Mapping[str, Any],
) -> xr.Dataset:
    sizes = _dimension_sizes(variables)
    dim_coords = {
        dim: np.asarray(coords[dim]) if dim in coords else np.arange(size)
        for dim, size in sizes.items()
    }
    for dim, values in dim_coords.items():
        if len(values) != sizes[dim]:
            raise ValueError(
                f"coords[{dim!r}] has {len(values)} values but the dimension has size {sizes[dim]}."
            )
    return xr.Dataset(
        {name: (dims, values) for name, (dims, values) in variables.items()},
        coords=dim_coords,
        attrs=dict(attrs),
    )


def _container(groups: Mapping[str, xr.Dataset]) -> Any:
    """``az.InferenceData`` (ArviZ < 1) or ``xarray.DataTree`` (ArviZ ≥ 1) holding ``groups``."""
    if hasattr(az, "InferenceData"):
        return az.InferenceData(**groups)
    return xr.DataTree.from_dict(dict(groups))


def _group(idata: Any, name: str) -> xr.Dataset | None:
    """Group ``name`` of an InferenceData or DataTree as a Dataset, ``None`` when absent."""
    if hasattr(idata, "groups") and callable(idata.groups):  # az.InferenceData
        return getattr(idata, name) if name in idata.groups() else None
    if name not in idata.children:  # xarray.DataTree
        return None
    return idata[name].to_dataset()


def _group_names(idata: Any) -> list[str]:
    if hasattr(idata, "groups") and callable(idata.groups):
        return list(idata.groups())
    return list(idata.children)


def _attrs(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    attrs = {
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "arviz_version": az.__version__,
    }
    attrs.update(extra or {})
    return attrs


def build_inference_data(
    posterior: Mapping[str, np.ndarray],
    log_weight: np.ndarray,
    observed: Mapping[str, np.ndarray],
    dims: Mapping[str, Sequence[str]],
    weight_dims: Sequence[str],
    coords: Mapping[str, Any] | None = None,
    *,
    attrs: Mapping[str, Any] | None = None,
) -> Any:
    """An ArviZ ``InferenceData`` of importance-weighted guide draws.

    Args:
        posterior: latent site name -> array with a leading draw axis of size ``S``.
        log_weight: raw log importance weights ``log p(x, z) − log q(z | x)``, shape
            ``(S, *datapoint_shape)``; ``datapoint_shape`` is empty for joint weights (a
            global latent) and otherwise indexes the data plate(s).
        observed: observed site name -> data array (no draw axis).
        dims: variable name -> names of its axes. For a posterior variable, ``"draw"`` first
            (prepended when left out); for an observed variable, one name per axis. Axes
            left unnamed get ``"{name}_dim_{i}"``.
        weight_dims: names of the datapoint axes of ``log_weight``, e.g. ``["data"]`` (empty
            for joint weights). Posterior variables carrying these dimensions are the
            per-datapoint latents.
        coords: optional coordinate values per dimension name (default ``0..size-1``).
        attrs: extra attributes for every group (e.g. ``inference_library``).

    Returns:
        ``az.InferenceData`` (an ``xarray.DataTree`` under ArviZ ≥ 1) with

        - ``posterior``: every variable, dims ``(chain=1, draw=S, …)``;
        - ``sample_stats``: ``log_weight`` ``(chain, draw, *weight_dims)`` (raw),
          ``pareto_k`` ``(*weight_dims)`` (ArviZ's PSIS ``k̂`` over the draws, one per
          datapoint) and ``ess`` ``(*weight_dims)`` (importance-sampling effective sample
          size of the *raw* weights, :func:`importance_ess`);
        - ``observed_data``: the observed arrays.

    Raises:
        ValueError: on inconsistent shapes or dimension names, NaN/``+inf`` log-weights or
            a datapoint whose draws all have weight zero.
    """
    coords = dict(coords or {})
    lw = _check_log_weight(log_weight)
    num_draws = lw.shape[0]
    weight_dims = list(weight_dims)
    if len(weight_dims) != lw.ndim - 1:
        raise ValueError(
            f"weight_dims {weight_dims} must name every datapoint axis of log_weight, whose "
            f"shape is {lw.shape} (draws first)."
        )
    _, pareto_k = psis_log_weights(lw)
    ess = importance_ess(lw)
    group_attrs = _attrs(attrs)

    post_vars: dict[str, tuple[list[str], np.ndarray]] = {}
    for name, value in posterior.items():
        value = np.asarray(value)
        if value.ndim < 1 or value.shape[0] != num_draws:
            raise ValueError(
                f"posterior[{name!r}] has shape {value.shape}; its leading axis must be the "
                f"{num_draws} draws of log_weight."
            )
        names = _axis_names(name, value.shape, dims.get(name), (DRAW,))
        post_vars[name] = ([CHAIN, *names], value[None])
    stats_vars = {
        "log_weight": ([CHAIN, DRAW, *weight_dims], lw[None]),
        "pareto_k": (weight_dims, pareto_k),
        "ess": (weight_dims, ess),
    }
    obs_vars = {}
    for name, value in observed.items():
        value = np.asarray(value)
        obs_vars[name] = (_axis_names(name, value.shape, dims.get(name), ()), value)

    overlap = set(post_vars) & set(obs_vars)
    if overlap:
        raise ValueError(f"Variable name(s) {sorted(overlap)} appear in more than one group.")
    _dimension_sizes({**post_vars, **obs_vars, "log_weight": stats_vars["log_weight"]})

    weights = "per-datapoint" if weight_dims else "joint"
    groups = {
        "posterior": _dataset(post_vars, coords, group_attrs),
        "sample_stats": _dataset(
            stats_vars,
            coords,
            {**group_attrs, "weights": weights, "weight_dims": " ".join(weight_dims)},
        ),
    }
    if obs_vars:
        groups["observed_data"] = _dataset(obs_vars, coords, group_attrs)
    return _container(groups)


def _resample_indices(
    log_weight: np.ndarray, num_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """Multinomial draw indices, shape ``(num_samples, *datapoint_shape)``, per datapoint."""
    smoothed, _ = psis_log_weights(log_weight)
    probs = np.exp(smoothed).reshape(smoothed.shape[0], -1)
    probs /= probs.sum(axis=0, keepdims=True)
    columns = [
        rng.choice(probs.shape[0], size=num_samples, p=probs[:, j]) for j in range(probs.shape[1])
    ]
    return np.stack(columns, axis=-1).reshape((num_samples, *smoothed.shape[1:]))


def importance_resample(idata: Any, num_samples: int | None = None, seed: int = 0) -> Any:
    """An unweighted posterior whose draws follow the PSIS-smoothed importance weights.

    Draws are taken with replacement (multinomial resampling) from the stored ones with
    probabilities ``softmax(psis(log_weight))``. With per-datapoint weights each datapoint
    is resampled independently (for every variable carrying the weight dimensions); with
    joint weights one set of indices serves every variable, so draws stay whole.

    The result holds duplicates: its information is bounded by the importance ESS in
    ``sample_stats.ess``, not by ``num_samples``, and ArviZ's ``ess`` of the resampled
    draws (which treats them as independent) overstates it. Check ``pareto_k`` first.

    Args:
        idata: the output of :func:`build_inference_data` (or a backend's
            ``to_inference_data``); it is not modified.
        num_samples: number of resampled draws (default: as many as stored).
        seed: seed of the NumPy generator; the same seed gives the same draws.

    Returns:
        A new ``InferenceData`` with ``posterior`` ``(chain=1, draw=num_samples, …)``,
        ``sample_stats`` holding the source's per-datapoint ``pareto_k`` and ``ess`` (the
        ``log_weight`` of the source draws no longer applies and is dropped) and every other
        group (``observed_data``, …) unchanged.
    """
    posterior = _group(idata, "posterior")
    stats = _group(idata, "sample_stats")
    if posterior is None or stats is None or "log_weight" not in stats:
        raise ValueError(
            "importance_resample needs an InferenceData with a posterior group and "
            "sample_stats.log_weight, as made by to_inference_data."
        )
    log_weight = stats["log_weight"]
    weight_dims = [d for d in log_weight.dims if d not in (CHAIN, DRAW)]
    if log_weight.sizes[CHAIN] != 1:
        raise ValueError("importance_resample expects a single chain of importance draws.")
    lw = log_weight.transpose(CHAIN, DRAW, *weight_dims).values[0]
    num_draws = lw.shape[0]
    if num_samples is None:
        num_samples = num_draws
    if isinstance(num_samples, bool) or not isinstance(num_samples, int | np.integer):
        raise ValueError(f"num_samples must be a positive integer or None, got {num_samples!r}.")
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer or None, got {num_samples!r}.")
    rng = np.random.default_rng(seed)
    index = _resample_indices(lw, int(num_samples), rng)  # (M, *datapoint_shape)

    new_vars: dict[str, xr.Variable] = {}
    for name, var in posterior.data_vars.items():
        carried = [d for d in weight_dims if d in var.dims]
        if carried and len(carried) != len(weight_dims):
            raise ValueError(
                f"Posterior variable {name!r} has dims {var.dims}: it carries some but not all "
                f"of the weight dims {weight_dims}, so no weight applies to it."
            )
        if weight_dims and not carried:
            raise ValueError(
                f"Posterior variable {name!r} has none of the per-datapoint weight dims "
                f"{weight_dims}: with per-datapoint weights every latent must sit in the data "
                "plate(s); a global latent needs joint weights."
            )
        others = [d for d in var.dims if d not in (CHAIN, DRAW, *weight_dims)]
        order = [CHAIN, DRAW, *weight_dims, *others]
        values = var.transpose(*order).values
        take = index.reshape((1, num_samples, *index.shape[1:]) + (1,) * len(others))
        picked = np.take_along_axis(values, take, axis=1)
        new_vars[name] = xr.Variable(order, picked).transpose(*var.dims)
    coords = {
        dim: posterior.coords[dim].values for dim in posterior.dims if dim not in (CHAIN, DRAW)
    }
    coords.update({CHAIN: np.arange(1), DRAW: np.arange(num_samples)})
    post_attrs = {**posterior.attrs, "importance_resampled": 1, "resample_seed": seed}
    groups = {"posterior": xr.Dataset(new_vars, coords=coords, attrs=post_attrs)}
    kept = [v for v in ("pareto_k", "ess") if v in stats]
    if kept:
        groups["sample_stats"] = stats[kept].copy(deep=True)
    for group in _group_names(idata):
        if group not in ("posterior", "sample_stats"):
            groups[group] = _group(idata, group).copy(deep=True)
    return _container(groups)
