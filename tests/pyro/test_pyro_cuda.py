"""The Pyro objectives on CUDA tensors: values, and SVI steps that move the parameters.

Every test runs on ``cpu`` too, so that its body is exercised on machines without a GPU;
the ``cuda`` variants skip cleanly there.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from helpers.torch_devices import DEVICES
from pyro.infer import SVI
from torch import Tensor
from torch.distributions import constraints

from pyro_wakesleep import ReweightedWakeSleep, WakeSleep
from pyro_wakesleep.helmholtz import HelmholtzMachine

pytestmark = pytest.mark.usefixtures("one_torch_thread", "pyro_seed_0")

LOSSES = [
    pytest.param(lambda: ReweightedWakeSleep(num_particles=8), id="rws"),
    pytest.param(lambda: ReweightedWakeSleep(num_particles=8, insomnia=0.5), id="rws-sleep"),
    pytest.param(lambda: WakeSleep(num_particles=2), id="ws"),
]
MU = 0.4


def make_linear_gaussian(device: str, guide_init: dict[str, float]):
    """z_i ~ N(mu, 1), x_i ~ N(z_i, 1); guide N(a x_i + b, s); parameters on ``device``."""

    def as_param(value: float) -> Tensor:
        return torch.tensor(value, device=device)

    def model(x: Tensor) -> None:
        mu = pyro.param("mu", as_param(MU))
        with pyro.plate("data", x.shape[-1], device=device):
            z = pyro.sample("z", dist.Normal(mu, as_param(1.0)))
            pyro.sample("x", dist.Normal(z, as_param(1.0)), obs=x)

    def guide(x: Tensor) -> None:
        a = pyro.param("a", as_param(guide_init["a"]))
        b = pyro.param("b", as_param(guide_init["b"]))
        s = pyro.param("s", as_param(guide_init["s"]), constraint=constraints.positive)
        with pyro.plate("data", x.shape[-1], device=device):
            pyro.sample("z", dist.Normal(a * x + b, s))

    return model, guide


def data_on(device: str, num_data: int = 50) -> Tensor:
    generator = torch.Generator().manual_seed(1234)
    return (MU + math.sqrt(2.0) * torch.randn(num_data, generator=generator)).to(device)


@pytest.mark.parametrize("make_loss", LOSSES)
@pytest.mark.parametrize("device", DEVICES)
def test_exact_guide_value_on_device(device: str, make_loss) -> None:
    # With the exact posterior as guide, every log-weight is log p(x_i): the value is
    # -Σ log N(x_i | mu, sqrt 2) whatever the samples (float32 round-off on N = 50 terms).
    model, guide = make_linear_gaussian(device, {"a": 0.5, "b": MU / 2, "s": math.sqrt(0.5)})
    x = data_on(device)
    value = make_loss().loss(model, guide, x)
    truth = -float(dist.Normal(torch.tensor(MU), math.sqrt(2.0)).log_prob(x.cpu()).sum())
    assert value == pytest.approx(truth, rel=1e-5)
    assert pyro.param("mu").device.type == device


@pytest.mark.parametrize("make_loss", LOSSES)
@pytest.mark.parametrize("device", DEVICES)
def test_svi_step_on_device_moves_parameters(device: str, make_loss) -> None:
    model, guide = make_linear_gaussian(device, {"a": 0.3, "b": -0.5, "s": 0.9})
    x = data_on(device)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), loss=make_loss())
    first = svi.step(x)  # creates the parameters, then updates them
    before = {name: pyro.param(name).detach().clone() for name in ("mu", "a", "b", "s")}
    second = svi.step(x)
    assert math.isfinite(first) and math.isfinite(second)
    for name, old in before.items():
        new = pyro.param(name)
        assert new.device.type == device
        assert torch.isfinite(new).all()
        assert not torch.equal(new.detach(), old), f"{name} did not move"


@pytest.mark.parametrize("make_loss", LOSSES)
@pytest.mark.parametrize("device", DEVICES)
def test_helmholtz_machine_steps_on_device(device: str, make_loss) -> None:
    generator = torch.Generator().manual_seed(7)
    x = (torch.rand(32, 16, generator=generator) < 0.3).float().to(device)
    machine = HelmholtzMachine(num_visible=16, hidden=(8, 1)).to(device)
    before = {name: p.detach().clone() for name, p in machine.named_parameters()}
    svi = SVI(machine.model, machine.guide, pyro.optim.Adam({"lr": 0.01}), loss=make_loss())
    values = [svi.step(x) for _ in range(2)]
    assert all(math.isfinite(v) for v in values)
    for name, param in machine.named_parameters():
        assert param.device.type == device
        assert torch.isfinite(param).all()
        assert not torch.equal(param.detach(), before[name]), f"{name} did not move"
