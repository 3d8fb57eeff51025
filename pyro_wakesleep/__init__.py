"""Wake-sleep and reweighted wake-sleep objectives for Pyro.

Hand an objective to Pyro's own SVI::

    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}),
                         loss=pyro_wakesleep.ReweightedWakeSleep(num_particles=10))
"""

from .dreams import DreamRoutingError
from .losses import (
    JitJointStochasticApproximation,
    JitReweightedWakeSleep,
    JitWakeSleep,
    JointStochasticApproximation,
    NonFiniteDataError,
    NonFiniteLossWarning,
    ReweightedWakeSleep,
    Sparsity,
    WakeSleep,
)
from .optim import JointAdam
from .traces import ModelGuideMismatchError

__all__ = [
    "DreamRoutingError",
    "JitJointStochasticApproximation",
    "JitReweightedWakeSleep",
    "JitWakeSleep",
    "JointAdam",
    "JointStochasticApproximation",
    "ModelGuideMismatchError",
    "NonFiniteDataError",
    "NonFiniteLossWarning",
    "ReweightedWakeSleep",
    "Sparsity",
    "WakeSleep",
]
__version__ = "0.1.0"
