"""The compiled objectives (``JitWakeSleep``, ``JitReweightedWakeSleep``,
``JitJointStochasticApproximation``) against their eager twins.

From the same seed a compiled run draws the same numbers in the same order as the eager
run, so values, parameters, ``last_terms`` and JSA's chains agree to float32 round-off
(in practice bit for bit on CPU). Beyond agreement: a new batch shape or a new non-tensor
argument compiles a new graph (never a stale one), a program whose Python reads a tensor's
value is refused with a message naming the eager class and the line, the non-finite check
still protects the parameters while validation is on, and after compilation the programs'
Python does not run at all (the graph replays).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from helpers.torch_devices import DEVICES
from pyro.infer import SVI
from torch import Tensor
from torch.distributions import constraints

from pyro_wakesleep import (
    JitJointStochasticApproximation,
    JitReweightedWakeSleep,
    JitWakeSleep,
    JointStochasticApproximation,
    NonFiniteLossWarning,
    ReweightedWakeSleep,
    Sparsity,
    WakeSleep,
)
from pyro_wakesleep.helmholtz import HelmholtzMachine

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RTOL, ATOL = 1e-6, 1e-7  # float32 round-off; the runs are bit-identical on CPU in practice
NUM_DATA = 20
STEPS = 6


# -- programs ---------------------------------------------------------------------------------
def bars_like(num: int = NUM_DATA, device: str = "cpu") -> Tensor:
    """Binary 16-pixel images (fixed seed)."""
    generator = torch.Generator().manual_seed(1)
    return (torch.rand(num, 16, generator=generator) < 0.3).float().to(device)


def gaussian_data(num: int = NUM_DATA, device: str = "cpu") -> Tensor:
    generator = torch.Generator().manual_seed(1234)
    return (0.4 + math.sqrt(2.0) * torch.randn(num, generator=generator)).to(device)


class Counter:
    """How many times the programs' Python bodies ran."""

    def __init__(self) -> None:
        self.model = self.guide = 0


def linear_gaussian(counter: Counter | None = None, device: str = "cpu"):
    """``z_i ~ N(mu, 1)``, ``x_i ~ N(z_i, 1)``; guide ``N(a x_i + b, s)`` (reparameterisable)."""
    counter = counter or Counter()

    def model(x: Tensor) -> None:
        counter.model += 1
        mu = pyro.param("mu", torch.tensor(0.0, device=device))
        with pyro.plate("data", x.shape[-1], device=device):
            z = pyro.sample("z", dist.Normal(mu, torch.ones((), device=device)))
            pyro.sample("x", dist.Normal(z, torch.ones((), device=device)), obs=x)

    def guide(x: Tensor) -> None:
        counter.guide += 1
        a = pyro.param("a", torch.tensor(0.3, device=device))
        b = pyro.param("b", torch.tensor(-0.5, device=device))
        s = pyro.param("s", torch.tensor(0.9, device=device), constraint=constraints.positive)
        with pyro.plate("data", x.shape[-1], device=device):
            pyro.sample("z", dist.Normal(a * x + b, s))

    return model, guide


def helmholtz(device: str = "cpu"):
    machine = HelmholtzMachine(num_visible=16, hidden=(8, 1)).to(device)
    return machine.model, machine.guide


# -- running both twins -----------------------------------------------------------------------
def params_now() -> dict[str, Tensor]:
    store = pyro.get_param_store()
    return {name: store.get_param(name).detach().clone() for name in store.keys()}


def train(
    make_loss: Callable,
    make_programs: Callable,
    batches: list[tuple[tuple, dict]],
    seed: int = 0,
    lr: float = 0.05,
):
    """``SVI.step`` over ``batches`` from ``seed`` and a fresh param store: the values, the
    ``last_terms`` after every step, the final parameters and the loss object."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model, guide = make_programs()
    loss = make_loss()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), loss=loss)
    values, terms = [], []
    for args, kwargs in batches:
        values.append(svi.step(*args, **kwargs))
        terms.append(loss.last_terms)
    return values, terms, params_now(), loss


def assert_same_runs(eager, compiled) -> None:
    e_values, e_terms, e_params, _ = eager
    c_values, c_terms, c_params, _ = compiled
    assert all(math.isfinite(v) for v in e_values)
    torch.testing.assert_close(
        torch.tensor(c_values, dtype=torch.float64),
        torch.tensor(e_values, dtype=torch.float64),
        rtol=RTOL,
        atol=ATOL,
    )
    assert len(c_terms) == len(e_terms)
    for step, (e, c) in enumerate(zip(e_terms, c_terms, strict=True)):
        assert set(c) == set(e), f"step {step}: terms {sorted(c)} != {sorted(e)}"
        for name in e:
            assert c[name] == pytest.approx(e[name], rel=RTOL, abs=ATOL), (step, name)
    assert set(c_params) == set(e_params)
    for name in e_params:
        torch.testing.assert_close(c_params[name], e_params[name], rtol=RTOL, atol=ATOL)


def repeated(*args, steps: int = STEPS, **kwargs) -> list[tuple[tuple, dict]]:
    return [(args, kwargs)] * steps


# eager class, its twin, constructor arguments, programs, data
CASES = [
    pytest.param(WakeSleep, JitWakeSleep, {"num_particles": 2}, helmholtz, bars_like, id="ws"),
    pytest.param(
        ReweightedWakeSleep,
        JitReweightedWakeSleep,
        {"num_particles": 4},
        helmholtz,
        bars_like,
        id="rws",
    ),
    pytest.param(
        ReweightedWakeSleep,
        JitReweightedWakeSleep,
        {"num_particles": 4, "alternate": True},
        helmholtz,
        bars_like,
        id="rws-alternate",
    ),
    pytest.param(
        ReweightedWakeSleep,
        JitReweightedWakeSleep,
        {"num_particles": 4, "insomnia": 0.5},
        helmholtz,
        bars_like,
        id="rws-insomnia-0.5",
    ),
    pytest.param(
        ReweightedWakeSleep,
        JitReweightedWakeSleep,
        {"num_particles": 4, "wake_phi": "dreg"},
        linear_gaussian,
        gaussian_data,
        id="rws-dreg",
    ),
    pytest.param(
        ReweightedWakeSleep,
        JitReweightedWakeSleep,
        {"num_particles": 4, "sparsity": Sparsity(0.1)},
        helmholtz,
        bars_like,
        id="rws-sparsity",
    ),
]


@pytest.mark.parametrize(("eager_cls", "jit_cls", "options", "programs", "data"), CASES)
def test_compiled_training_equals_eager(eager_cls, jit_cls, options, programs, data) -> None:
    """Values, ``last_terms`` and final parameters of ``STEPS`` SVI steps from one seed."""
    batches = repeated(data())
    eager = train(lambda: eager_cls(**options), programs, batches)
    compiled = train(lambda: jit_cls(**options), programs, batches)
    assert_same_runs(eager, compiled)
    if options.get("alternate"):
        assert compiled[3].phase == eager[3].phase


def jsa_batches(sizes: list[int], num_data: int = NUM_DATA) -> list[tuple[tuple, dict]]:
    """Mini-batches of ``bars_like`` with ``num_data`` and ``index`` keyword arguments,
    cycling through the data set in batches of the given sizes."""
    x = bars_like(num_data)
    batches, start = [], 0
    for size in sizes:
        index = (torch.arange(size) + start) % num_data
        batches.append(((x[index],), {"num_data": num_data, "index": index}))
        start += size
    return batches


def test_compiled_jsa_equals_eager_with_index_and_num_data() -> None:
    """JSA on a Helmholtz machine with ``num_data`` and ``index=``: values, terms,
    parameters and the chains' state."""
    batches = jsa_batches([5] * 8)
    eager = train(lambda: JointStochasticApproximation(num_particles=3), helmholtz, batches)
    compiled = train(lambda: JitJointStochasticApproximation(num_particles=3), helmholtz, batches)
    assert_same_runs(eager, compiled)
    assert "acceptance_rate" in compiled[1][-1]
    assert_same_chains(eager[3], compiled[3])


def assert_same_chains(eager, compiled) -> None:
    """The JSA chains' ``state_dict``: plate, per-site values, seen flags and ages."""
    e_state, c_state = eager.state_dict(), compiled.state_dict()
    assert e_state and set(c_state) == set(e_state)
    assert c_state["plate"] == e_state["plate"]
    assert set(c_state["values"]) == set(e_state["values"])
    for name, value in e_state["values"].items():
        torch.testing.assert_close(c_state["values"][name], value, rtol=RTOL, atol=ATOL)
    assert torch.equal(c_state["seen"], e_state["seen"])
    torch.testing.assert_close(c_state["age"], e_state["age"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "make_losses",
    [
        pytest.param(lambda: (WakeSleep(2), JitWakeSleep(2)), id="ws"),
        pytest.param(lambda: (ReweightedWakeSleep(4), JitReweightedWakeSleep(4)), id="rws"),
        pytest.param(
            lambda: (
                ReweightedWakeSleep(4, insomnia=0.5, alternate=True),
                JitReweightedWakeSleep(4, insomnia=0.5, alternate=True),
            ),
            id="rws-insomnia-alternate",
        ),
        pytest.param(
            lambda: (JointStochasticApproximation(3), JitJointStochasticApproximation(3)),
            id="jsa",
        ),
    ],
)
def test_differentiable_loss_gradients_equal_eager(make_losses) -> None:
    """``differentiable_loss`` three times (eager run, tracing run, replay): the same values
    and gradients as the eager class from the same seed."""
    x = bars_like()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide = helmholtz()
    eager, compiled = make_losses()
    for call in range(3):
        results = []
        for loss in (eager, compiled):
            pyro.set_rng_seed(100 + call)
            value = loss.differentiable_loss(model, guide, x)
            store = pyro.get_param_store()
            names = sorted(store.keys())
            leaves = [store.get_param(n).unconstrained() for n in names]
            grads = torch.autograd.grad(value, leaves, allow_unused=True)
            results.append((value.detach(), dict(zip(names, grads, strict=True))))
        (e_value, e_grads), (c_value, c_grads) = results
        assert c_value.dim() == 0 and torch.isfinite(c_value)
        torch.testing.assert_close(c_value, e_value, rtol=RTOL, atol=ATOL)
        assert set(c_grads) == set(e_grads)
        for name, e_grad in e_grads.items():
            if e_grad is None:
                assert c_grads[name] is None or not c_grads[name].any(), (call, name)
            else:
                assert c_grads[name] is not None, (call, name)
                torch.testing.assert_close(c_grads[name], e_grad, rtol=RTOL, atol=1e-6)


# -- new argument layouts -----------------------------------------------------------------------
def shuffled_batches(sizes: list[int], **kwargs) -> list[tuple[tuple, dict]]:
    x = bars_like()
    batches, start = [], 0
    for size in sizes:
        rows = (torch.arange(size) + start) % NUM_DATA
        batches.append(((x[rows],), dict(kwargs)))
        start += size
    return batches


@pytest.mark.parametrize(
    ("eager_cls", "jit_cls", "options"),
    [
        pytest.param(ReweightedWakeSleep, JitReweightedWakeSleep, {"insomnia": 0.5}, id="rws"),
        pytest.param(WakeSleep, JitWakeSleep, {}, id="ws"),
    ],
)
def test_smaller_last_batch_and_mixed_shapes_equal_eager(eager_cls, jit_cls, options) -> None:
    """Epochs of 8, 8, 4 datapoints, again and again: every step (a new shape's eager and
    tracing steps, and replays of both graphs, interleaved) gives the eager value."""
    sizes = [8, 8, 4] * 4 + [8, 4, 8, 4, 4, 8]
    batches = shuffled_batches(sizes, num_data=NUM_DATA)
    eager = train(lambda: eager_cls(num_particles=3, **options), helmholtz, batches)
    compiled = train(lambda: jit_cls(num_particles=3, **options), helmholtz, batches)
    assert_same_runs(eager, compiled)
    assert len(set(compiled[0])) == len(sizes)  # every step a new value


def test_jsa_smaller_last_batch_equals_eager() -> None:
    """JSA with mini-batches of 8, 8, 4 (indices cycling over the data set), mixed."""
    batches = jsa_batches([8, 8, 4] * 3 + [4, 8, 4])
    eager = train(lambda: JointStochasticApproximation(num_particles=2), helmholtz, batches)
    compiled = train(lambda: JitJointStochasticApproximation(num_particles=2), helmholtz, batches)
    assert_same_runs(eager, compiled)
    assert_same_chains(eager[3], compiled[3])


def test_changing_num_data_equals_eager() -> None:
    """A non-tensor keyword argument (``num_data``, the scale ``N/B``) that changes from step
    to step, back and forth: each value is keyed into its own graph and equals eager's."""
    x = bars_like()[:5]
    plan = [None, 100, 50, None, 100, 50, 100, 100, None, 50, 50, None]
    batches = [((x,), {} if n is None else {"num_data": n}) for n in plan]
    eager = train(lambda: ReweightedWakeSleep(num_particles=3), helmholtz, batches)
    compiled = train(lambda: JitReweightedWakeSleep(num_particles=3), helmholtz, batches)
    assert_same_runs(eager, compiled)
    # a rough check that the scale is applied: N = 100 reports about 20 times N = 5's value
    by_n = {n: v for n, v in zip(plan, compiled[0], strict=True)}
    assert 10.0 < by_n[100] / by_n[None] < 40.0


# -- programs that cannot be traced -------------------------------------------------------------
def branching_programs():
    """A model whose Python reads a tensor's value: data-dependent control flow."""

    def model(x: Tensor) -> None:
        mu = pyro.param("mu", torch.tensor(0.0))
        if x.sum() > 0:  # BRANCH
            mu = mu + 1.0
        with pyro.plate("data", x.shape[-1]):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    _, guide = linear_gaussian()
    return model, guide


def branch_line() -> str:
    source, first = inspect.getsourcelines(branching_programs)
    offset = next(i for i, line in enumerate(source) if "# BRANCH" in line)
    return f"{Path(__file__).name}:{first + offset}"


@pytest.mark.parametrize(
    ("jit_cls", "eager_name", "options"),
    [
        pytest.param(JitReweightedWakeSleep, "ReweightedWakeSleep", {}, id="rws"),
        pytest.param(JitWakeSleep, "WakeSleep", {}, id="ws"),
        pytest.param(JitJointStochasticApproximation, "JointStochasticApproximation", {}, id="jsa"),
    ],
)
def test_data_dependent_control_flow_is_refused(jit_cls, eager_name, options) -> None:
    pyro.set_rng_seed(0)
    model, guide = branching_programs()
    x = gaussian_data()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), loss=jit_cls(num_particles=2))
    svi.step(x)  # eager
    with pytest.raises(ValueError) as info:
        for _ in range(2):  # traced: refused (JSA traces once its chains exist, a step later)
            svi.step(x)
    message = str(info.value)
    assert f"Use {eager_name}, the eager class" in message
    assert branch_line() in message, message
    assert "ignore_jit_warnings=True" in message
    # no graph was kept: a later step that traces refuses again (the step after a refusal
    # runs eagerly, the one after traces)
    with pytest.raises(ValueError, match=eager_name):
        for _ in range(2):
            svi.step(x)


def test_ignore_jit_warnings_trusts_the_program() -> None:
    """With ``ignore_jit_warnings=True`` the branching program compiles; with the same data
    every step (the branch never changes) it trains as the eager class does."""
    batches = repeated(gaussian_data())
    eager = train(lambda: ReweightedWakeSleep(num_particles=2), branching_programs, batches)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        compiled = train(
            lambda: JitReweightedWakeSleep(num_particles=2, ignore_jit_warnings=True),
            branching_programs,
            batches,
        )
    assert_same_runs(eager, compiled)


def test_constant_created_in_the_model_compiles() -> None:
    """``pyro.param("p", torch.tensor(0.3))`` creates a constant while tracing (a harmless
    TracerWarning, not a value read): it compiles, and equals eager."""

    def programs():
        def model(x: Tensor) -> None:
            p = pyro.param("p", torch.tensor(0.3), constraint=constraints.unit_interval)
            with pyro.plate("data", x.shape[-1]):
                z = pyro.sample("z", dist.Bernoulli(p))
                pyro.sample("x", dist.Normal(2.0 * z - 1.0, torch.tensor(1.0)), obs=x)

        def guide(x: Tensor) -> None:
            w = pyro.param("w", torch.tensor(0.5))
            with pyro.plate("data", x.shape[-1]):
                pyro.sample("z", dist.Bernoulli(logits=w * x))

        return model, guide

    batches = repeated(gaussian_data())
    eager = train(lambda: ReweightedWakeSleep(num_particles=3), programs, batches)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        compiled = train(lambda: JitReweightedWakeSleep(num_particles=3), programs, batches)
    assert_same_runs(eager, compiled)


# -- non-finite values, return type, replay -----------------------------------------------------
@pytest.mark.parametrize(
    "make_loss",
    [
        pytest.param(lambda: JitReweightedWakeSleep(num_particles=3), id="rws"),
        pytest.param(lambda: JitReweightedWakeSleep(num_particles=3, alternate=True), id="alt"),
        pytest.param(lambda: JitWakeSleep(num_particles=2), id="ws"),
    ],
)
def test_non_finite_value_after_compilation_is_skipped(make_loss) -> None:
    """Under validation (the default) a compiled step whose value is not finite warns with
    :class:`NonFiniteLossWarning`, changes no parameter and keeps the phase."""
    pyro.set_rng_seed(0)
    model, guide = linear_gaussian()
    x = gaussian_data()
    loss = make_loss()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss=loss)
    for _ in range(4):  # eager, traced and replayed steps of every phase
        svi.step(x)
    before, phase = params_now(), loss.phase
    huge = x.clone()
    huge[3] = 1e30  # finite data whose squared residual overflows: every log-weight is -inf
    with pytest.warns(NonFiniteLossWarning, match="skipped"):
        value = svi.step(huge)
    assert not math.isfinite(value)
    after = params_now()
    for name, old in before.items():
        assert torch.equal(after[name], old), name
    assert loss.phase == phase
    assert math.isfinite(svi.step(x))  # and training goes on


@pytest.mark.parametrize("calls_before", [0, 3], ids=["first-call", "compiled"])
def test_non_finite_differentiable_loss_raises_like_eager(calls_before) -> None:
    pyro.set_rng_seed(0)
    model, guide = linear_gaussian()
    x = gaussian_data()
    loss = JitReweightedWakeSleep(num_particles=3)
    for _ in range(calls_before):
        loss.differentiable_loss(model, guide, x)
    huge = x.clone()
    huge[3] = 1e30
    with pytest.raises(ValueError, match="Non-finite"):
        loss.differentiable_loss(model, guide, huge)


@pytest.mark.parametrize(
    "make_loss",
    [
        pytest.param(lambda: WakeSleep(num_particles=2), id="ws"),
        pytest.param(lambda: ReweightedWakeSleep(num_particles=3), id="rws"),
        pytest.param(lambda: JointStochasticApproximation(num_particles=2), id="jsa"),
        pytest.param(lambda: JitWakeSleep(num_particles=2), id="jit-ws"),
        pytest.param(lambda: JitReweightedWakeSleep(num_particles=3), id="jit-rws"),
        pytest.param(lambda: JitJointStochasticApproximation(num_particles=2), id="jit-jsa"),
    ],
)
def test_loss_and_grads_returns_a_0_dim_tensor(make_loss) -> None:
    pyro.set_rng_seed(0)
    model, guide = helmholtz()
    x = bars_like()
    loss = make_loss()
    for _ in range(4):  # eager, traced, replayed
        value = loss.loss_and_grads(model, guide, x)
        assert isinstance(value, Tensor) and value.dim() == 0
        assert not value.requires_grad
        assert torch.isfinite(value)


@pytest.mark.parametrize(
    "make_loss",
    [
        pytest.param(lambda: JitReweightedWakeSleep(num_particles=3), id="rws"),
        pytest.param(lambda: JitReweightedWakeSleep(num_particles=3, insomnia=0.5), id="dreams"),
        pytest.param(lambda: JitReweightedWakeSleep(num_particles=3, alternate=True), id="alt"),
        pytest.param(lambda: JitWakeSleep(num_particles=2), id="ws"),
        pytest.param(lambda: JitJointStochasticApproximation(num_particles=2), id="jsa"),
    ],
)
def test_compiled_steps_do_not_run_the_programs(make_loss) -> None:
    """After compilation (two steps per phase) the programs' Python never runs again: the
    graph replays, and still trains (values change)."""
    pyro.set_rng_seed(0)
    counter = Counter()
    model, guide = linear_gaussian(counter)
    x = gaussian_data()
    loss = make_loss()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss=loss)
    for _ in range(4):
        svi.step(x)
    assert counter.model > 0 and counter.guide > 0
    seen = (counter.model, counter.guide)
    before = params_now()
    values = [svi.step(x) for _ in range(5)]
    assert (counter.model, counter.guide) == seen
    assert len(set(values)) == len(values)
    assert any(not torch.equal(params_now()[n], v) for n, v in before.items())


# -- CUDA --------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("eager_cls", "jit_cls", "options"),
    [
        pytest.param(ReweightedWakeSleep, JitReweightedWakeSleep, {"insomnia": 0.5}, id="rws"),
        pytest.param(WakeSleep, JitWakeSleep, {}, id="ws"),
    ],
)
def test_compiled_equals_eager_on_device(device, eager_cls, jit_cls, options) -> None:
    batches = repeated(bars_like(device=device), steps=5)
    eager = train(lambda: eager_cls(num_particles=3, **options), lambda: helmholtz(device), batches)
    compiled = train(
        lambda: jit_cls(num_particles=3, **options), lambda: helmholtz(device), batches
    )
    assert_same_runs(eager, compiled)
    assert all(p.device.type == device for p in compiled[2].values())


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_jsa_equals_eager_on_device(device) -> None:
    x = bars_like(device=device)
    batches = []
    for start in range(0, 4 * 5, 5):
        index = torch.arange(start, start + 5, device=device) % NUM_DATA
        batches.append(((x[index],), {"num_data": NUM_DATA, "index": index}))
    eager = train(lambda: JointStochasticApproximation(2), lambda: helmholtz(device), batches)
    compiled = train(lambda: JitJointStochasticApproximation(2), lambda: helmholtz(device), batches)
    assert_same_runs(eager, compiled)
    assert_same_chains(eager[3], compiled[3])
