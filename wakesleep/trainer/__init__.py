"""The trainer application, ``python -m pyro_wakesleep train`` and ``python -m numpyro_wakesleep
train`` (``docs/design.md`` §3), apart from the objectives' library.

- :mod:`~wakesleep.trainer.arguments`: the command line;
- :mod:`~wakesleep.trainer.runs`: the ``--out`` folder, the checkpoint's rules, Ctrl-C;
- :mod:`~wakesleep.trainer.datasets`: bars, digits, mnist5k and the user's own file;
- :mod:`~wakesleep.trainer.initialisation`: the Helmholtz machine's starting values;
- :mod:`~wakesleep.trainer.exact`: exact likelihoods of small machines by enumeration;
- :mod:`~wakesleep.trainer.schedule`: objective, learning rate, restarts, checkpoint steps;
- :mod:`~wakesleep.trainer.loop`: the training loop, against
  :class:`~wakesleep.trainer.backend.TrainerBackend`, which each backend's ``train``
  module implements;
- :mod:`~wakesleep.trainer.evaluation`: likelihoods, samples and diagnostics of the
  trained machine;
- :mod:`~wakesleep.trainer.outputs` and :mod:`~wakesleep.trainer.plots`: the files in
  ``--out`` and their pictures.

Like the rest of :mod:`wakesleep`, nothing here imports torch or jax.
"""
