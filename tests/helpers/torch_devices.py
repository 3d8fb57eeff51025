"""The torch devices a Pyro test runs on: the CPU always, CUDA where there is one."""

from __future__ import annotations

import pytest
import torch

#: ``pytest.mark.parametrize("device", DEVICES)``: CUDA cases are marked ``cuda`` and skip
#: cleanly without a device.
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ],
    ),
]
