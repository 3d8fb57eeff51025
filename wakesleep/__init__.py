"""Backend-neutral pieces shared by ``pyro_wakesleep`` and ``numpyro_wakesleep``.

What users import for their own models: :mod:`wakesleep.contract` (the objectives'
argument contract) and :mod:`wakesleep.inference_data` (ArviZ conversion of
importance-weighted draws). The trainer application (command line, data sets, outputs)
is :mod:`wakesleep.trainer`. Only NumPy (and, for plots, Matplotlib) is imported here:
neither backend imports the other; both may import this package.
"""
