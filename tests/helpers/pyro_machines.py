"""Parameters of Pyro Helmholtz machines for tests: drawn far from their initial values."""

from __future__ import annotations

import torch

from pyro_wakesleep.helmholtz import HelmholtzMachine


def randomise(
    machine: HelmholtzMachine, seed: int, generative: float, recognition: float
) -> HelmholtzMachine:
    """``machine`` with every parameter drawn ``N(0, scale²)`` (the generative net's with scale
    ``generative``, the recognition net's with ``recognition``) before it first meets the
    param store; the visible log-scales (Gaussian machines) uniform in ``[-0.7, 0.7]``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in machine.named_parameters():
            if name.endswith("visible_log_scale"):
                param.uniform_(-0.7, 0.7, generator=generator)
            else:
                scale = generative if name.startswith("generative") else recognition
                param.normal_(0.0, scale, generator=generator)
    return machine
