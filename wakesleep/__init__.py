"""Backend-neutral pieces shared by ``pyro_wakesleep`` and ``numpyro_wakesleep``.

Only NumPy (and, for plots, Matplotlib) lives here: data sets, exact
computations on small Helmholtz machines, the trainer's command line and output
files, and the ArviZ conversion of importance-weighted draws. Neither backend
imports the other; both may import this package.
"""
