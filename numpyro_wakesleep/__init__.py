"""Wake-sleep and reweighted wake-sleep objectives for NumPyro.

Hand an objective to NumPyro's own SVI::

    svi = numpyro.infer.SVI(model, guide, optax.adam(1e-3),
                            loss=numpyro_wakesleep.ReweightedWakeSleep(num_particles=10))
    result = svi.run(jax.random.PRNGKey(0), 2000, x)

or alternate model-only and guide-only steps, each side with its own optimiser::

    svi = numpyro_wakesleep.AlternatingSVI(model, guide, optax.adam(1e-3), optax.adam(1e-3),
                                           loss=numpyro_wakesleep.WakeSleep())
"""

from .dreams import DreamRoutingError
from .losses import (
    JointStochasticApproximation,
    NonFiniteDataError,
    NonFiniteLossWarning,
    ReweightedWakeSleep,
    Sparsity,
    WakeSleep,
)
from .svi import AlternatingSVI, AlternatingSVIState
from .traces import ModelGuideMismatchError

__all__ = [
    "AlternatingSVI",
    "AlternatingSVIState",
    "DreamRoutingError",
    "JointStochasticApproximation",
    "ModelGuideMismatchError",
    "NonFiniteDataError",
    "NonFiniteLossWarning",
    "ReweightedWakeSleep",
    "Sparsity",
    "WakeSleep",
]
__version__ = "0.1.0"
