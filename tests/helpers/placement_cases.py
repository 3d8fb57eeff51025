"""Sites placed inside and outside a data plate, with their exact objective values.

Every case is a linear-Gaussian model: latents ``z ~ N(0, I)`` placed inside the plate
``"data"`` (one per datapoint, a scalar or a ``D``-vector event) or outside it (one scalar,
or an ``N``-vector event), and observations ``x ~ N(A z, I)`` placed inside the plate (a
scalar or a ``D``-vector event per datapoint) or outside it (one event over every
datapoint, or the same values as undeclared batch dimensions). The plate may be
sub-sampled (``B`` of ``N``); the observed value is then ``x[idx]``.

With plate sub-sampling the objectives scale a site's log-density by ``s = N/B`` when it
sits in the plate: inside the log-weights when some site sits outside the plate (joint
weights), after the log-sum-exp otherwise (per-datapoint weights). Either way the
log-weight is ``c_z [log p(z) + t log p(x|z) − log q(z)]`` with ``c_z`` the latent's scale,
``c_x`` the observation's and ``t = c_x / c_z``, so the guide ``q ∝ p(z) p(x|z)^t`` (the
exact posterior of a tempered likelihood) makes every weight the same number and the
reported value, at any ``K``, is

    −c_z log ∫ N(z; 0, I) N(x; A z, I)^t dz
        = −c_z [−(d t/2) log 2π + (d/2) log(2π/t) + log N(x; 0, A Aᵀ + I/t)],

``d`` the number of observed values in the batch. ``t = 1`` without sub-sampling gives
``−log p(x)``. :func:`exact_value` computes it; :func:`posterior` is the guide's law,
written for NumPy, torch and jax.numpy alike (``xp``) so that guides compute it from the
plate's own indices at run time.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

N, B, D = 3, 2, 2
LATENTS = ("in-scalar", "in-event", "out-scalar", "out-event")
OBSERVED = ("in-scalar", "in-event", "out-event", "out-batch")


@dataclass(frozen=True)
class Placement:
    latent: str
    observed: str
    subsampled: bool

    @property
    def id(self) -> str:
        return f"z-{self.latent}/x-{self.observed}" + ("/subsampled" if self.subsampled else "")

    @property
    def latent_inside(self) -> bool:
        return self.latent.startswith("in")

    @property
    def observed_inside(self) -> bool:
        return self.observed.startswith("in")

    @property
    def uses_plate(self) -> bool:
        return self.latent_inside or self.observed_inside

    @property
    def latent_width(self) -> int:
        """Coordinates of ``z`` per datapoint (inside) or in all (outside)."""
        return {"in-scalar": 1, "in-event": D, "out-scalar": 1, "out-event": N}[self.latent]

    def mean(self, z, ones, idx=None):
        """The mean of ``x`` as the model computes it (any leading particle dimensions).

        ``ones(n)`` makes a vector of ones of the backend; ``idx`` the plate's indices when
        the latent is a global vector read inside a sub-sampled plate.
        """
        if self.latent == "in-event":
            return z.sum(-1) if self.observed == "in-scalar" else z
        if self.latent == "out-event":
            if self.observed_inside and idx is not None:
                z = z[..., idx]
            return z[..., None] * ones(D) if self.observed == "in-event" else z
        if self.observed == "in-event":
            return z[..., None] * ones(D)
        if self.latent == "out-scalar" and not self.observed_inside:
            return z[..., None] * ones(N)
        return z

    # -- the exact answer -------------------------------------------------------------
    def latent_shape(self) -> tuple[int, ...]:
        return {"in-scalar": (N,), "in-event": (N, D), "out-scalar": (), "out-event": (N,)}[
            self.latent
        ]

    def observed_shape(self) -> tuple[int, ...]:
        return self._full_mean(np.zeros(self.latent_shape())).shape

    def _full_mean(self, z: np.ndarray) -> np.ndarray:
        mean = self.mean(z, np.ones, idx=np.arange(N))
        if self.observed == "in-scalar":
            return np.broadcast_to(mean, (N,))
        if self.observed == "in-event":
            return np.broadcast_to(mean, (N, D))
        return mean

    def design(self) -> np.ndarray:
        """``A`` of ``x = A z + ε`` over the flattened full-data coordinates."""
        size = int(np.prod(self.latent_shape()))
        basis = np.eye(size).reshape(size, *self.latent_shape())
        return np.stack([self._full_mean(e).reshape(-1) for e in basis], axis=1)

    def scales(self) -> tuple[float, float]:
        """``(c_z, c_x)``: each site's plate sub-sampling scale."""
        s = N / B if self.subsampled else 1.0
        return (s if self.latent_inside else 1.0), (s if self.observed_inside else 1.0)

    def rows_and_columns(self, idx, xp):
        """Flattened indices of the batch's observed values and latent coordinates."""
        x_width = int(np.prod(self.observed_shape())) // N
        rows = (idx[:, None] * x_width + xp.arange(x_width)[None, :]).reshape(-1)
        z_size = int(np.prod(self.latent_shape()))
        if self.latent_inside:
            width = self.latent_width
            columns = (idx[:, None] * width + xp.arange(width)[None, :]).reshape(-1)
        else:
            columns = xp.arange(z_size)
        return rows, columns

    def exact_value(self, x: np.ndarray, idx: np.ndarray) -> float:
        c_z, c_x = self.scales()
        t = c_x / c_z
        rows, columns = self.rows_and_columns(np.asarray(idx), np)
        a = self.design()[np.ix_(rows, columns)]
        x_b = np.asarray(x, dtype=np.float64).reshape(-1)[rows]
        d = len(rows)
        cov = a @ a.T + np.eye(d) / t
        _, logdet = np.linalg.slogdet(cov)
        log_normal = -0.5 * (d * math.log(2 * math.pi) + logdet + x_b @ np.linalg.solve(cov, x_b))
        return -c_z * (
            -(d * t / 2) * math.log(2 * math.pi) + (d / 2) * math.log(2 * math.pi / t) + log_normal
        )


def posterior(case: Placement, design, x_flat, idx, xp, eye):
    """Mean and covariance of the guide ``q ∝ p(z) p(x|z)^t`` over the batch's latents.

    ``design`` and ``x_flat`` are the full-data ``A`` and flattened ``x`` as ``xp`` arrays,
    ``idx`` the plate's indices, ``eye(n)`` an identity of the backend's dtype.
    """
    c_z, c_x = case.scales()
    t = c_x / c_z
    rows, columns = case.rows_and_columns(idx, xp)
    a = design[rows][:, columns]
    precision = eye(a.shape[1]) + t * a.T @ a
    cov = xp.linalg.inv(precision)
    mean = t * cov @ (a.T @ x_flat[rows])
    return mean, cov


def blocks(cov, count: int, width: int, xp):
    """The ``count`` diagonal ``width × width`` blocks of a block-diagonal covariance."""
    four = cov.reshape(count, width, count, width)
    return xp.stack([four[i, :, i, :] for i in range(count)])


def placements() -> list[Placement]:
    cases = []
    for latent, observed, subsampled in itertools.product(LATENTS, OBSERVED, (False, True)):
        case = Placement(latent, observed, subsampled)
        if subsampled and not case.uses_plate:
            continue  # no plate to sub-sample
        cases.append(case)
    return cases


def observations(case: Placement, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=case.observed_shape()).astype(np.float32)
