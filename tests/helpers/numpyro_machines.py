"""Parameters of NumPyro Helmholtz machines for tests: drawn far from their initial values."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from numpyro_wakesleep.helmholtz import HelmholtzMachine


def random_params(
    machine: HelmholtzMachine, seed: int, generative: float, recognition: float
) -> dict[str, jnp.ndarray]:
    """Every parameter of model and guide drawn ``N(0, scale²)``, float32: the generative
    net's with scale ``generative``, the recognition net's with ``recognition``; Gaussian
    machines' visible log-scales uniform in ``[-0.7, 0.7]`` (drawn last, so a Bernoulli
    machine's draws are the same)."""
    rng = np.random.default_rng(seed)
    sizes = (machine.num_visible, *machine.hidden)
    gen, rec = f"{machine.name}_generative", f"{machine.name}_recognition"
    shapes = {f"{gen}.top_logits": ((sizes[-1],), generative)}
    for i in range(len(machine.hidden)):
        shapes[f"{gen}.layers.{i}.weight"] = ((sizes[i], sizes[i + 1]), generative)
        shapes[f"{gen}.layers.{i}.bias"] = ((sizes[i],), generative)
        shapes[f"{rec}.{i}.weight"] = ((sizes[i + 1], sizes[i]), recognition)
        shapes[f"{rec}.{i}.bias"] = ((sizes[i + 1],), recognition)
    params = {
        name: jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)
        for name, (shape, scale) in shapes.items()
    }
    if machine.visible == "gaussian":
        log_scale = rng.uniform(-0.7, 0.7, size=machine.num_visible)
        params[f"{gen}.visible_log_scale"] = jnp.asarray(log_scale, jnp.float32)
    return params
