"""A linear probe: how much of the labels a set of features makes linearly readable.

A Helmholtz machine's recognition net is an unsupervised feature extractor:
``machine.features(x)`` gives the guide's probabilities ``q(h_j = 1 | x)`` of every hidden
unit (all layers, bottom first). The probe measures those features the usual way, with a
*supervised* readout that the features never saw during training: multinomial logistic
regression,

.. math::

    p(y = k \\mid z) = \\operatorname{softmax}_k(W z + b),

fitted by L-BFGS (scikit-learn's ``LogisticRegression``, an L2 penalty of strength
``1/C``) on the training set's standardised features ``z`` and their labels, and scored by
its accuracy on the test set. ``C`` is chosen among :data:`PROBE_CS` by
:data:`PROBE_FOLDS`-fold cross-validation on the training examples alone, for each set of
features on its own: a fixed ``C`` favours some widths over others (with ``C = 1``, 400
standardised principal components of MNIST overfit 4,000 images and score below the raw
pixels they summarise). The labels are the speaker for ``vowels`` and the digit for ``digits`` and
``mnist5k``.

Speech frames are classified per utterance: the features of an utterance's frames are
averaged (:func:`pool_groups`) and the utterance is one example. Images are their own
examples.

A number alone says little, so :func:`probe_accuracies` runs the same probe on two
baselines beside the learned features: the raw input itself, and its first ``K``
principal components, where ``K`` is the number of learned features (a linear,
unsupervised extractor of the same width). Learned features that beat PCA at equal width
have found something a linear projection does not.

Backend-free: NumPy and scikit-learn only (``pip install 'wakesleep[data]'``), imported
when a probe runs. Every step is deterministic (L-BFGS and a full SVD, no random starts).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from wakesleep.trainer.datasets import DATA_EXTRA_HINT, Dataset, per_row_integers

__all__ = [
    "MAX_ITER",
    "PROBE_CS",
    "PROBE_FOLDS",
    "feature_report",
    "linear_probe",
    "pca_components",
    "pool_groups",
    "probe_accuracies",
]

#: L-BFGS iterations of the logistic regression: enough to converge on standardised
#: features of the built-in data sets.
MAX_ITER = 1_000
#: The inverse penalty strengths ``C`` the probe chooses from, and the folds it chooses with.
PROBE_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
PROBE_FOLDS = 3


def _sklearn() -> Any:
    """The scikit-learn pieces the probe needs, imported on first use."""
    try:
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from threadpoolctl import threadpool_limits  # a dependency of scikit-learn
    except ImportError as err:
        raise ImportError(
            f"The linear probe needs scikit-learn, which is not installed: {DATA_EXTRA_HINT}"
        ) from err
    return SimpleNamespace(
        PCA=PCA,
        LogisticRegression=LogisticRegression,
        StratifiedKFold=StratifiedKFold,
        cross_val_score=cross_val_score,
        make_pipeline=make_pipeline,
        StandardScaler=StandardScaler,
        threadpool_limits=threadpool_limits,
    )


def _matrix(features: Any, what: str) -> np.ndarray:
    """``features`` as a finite ``float64`` array of shape ``(rows, columns)``."""
    array = np.asarray(features)
    if array.ndim != 2 or array.dtype.kind not in "biuf" or 0 in array.shape:
        raise ValueError(
            f"{what} must be a non-empty 2-D array of numbers (rows, features), got "
            f"{array.dtype} of shape {array.shape}."
        )
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} has NaN or infinite values.")
    return array


def pool_groups(features: Any, labels: Any, groups: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Average the rows of each group: one example per group (per utterance).

    For a group ``g`` with rows ``R_g``, the pooled row is ``(1/|R_g|) Σ_{i ∈ R_g} f_i``
    and its label the label that every row of ``R_g`` carries. Groups come out in
    increasing order of their ids; their rows need not be contiguous.

    :param features: shape ``(N, F)``.
    :param labels: integers, shape ``(N,)``.
    :param groups: integers, shape ``(N,)``, the group of each row; ``None`` leaves the
        rows as they are (each row its own example).
    :returns: ``(pooled_features, pooled_labels)``, ``float64`` ``(G, F)`` and ``int64``
        ``(G,)``.
    :raises ValueError: for mismatched shapes, or a group whose rows carry different
        labels (pooling them would hide a labelling error).
    """
    features = _matrix(features, "features")
    labels = per_row_integers(labels, len(features), "labels").astype(np.int64)
    if groups is None:
        return features, labels
    groups = per_row_integers(groups, len(features), "groups")
    ids, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    sums = np.zeros((len(ids), features.shape[1]))
    np.add.at(sums, inverse, features)
    pooled_labels = np.empty(len(ids), dtype=np.int64)
    pooled_labels[inverse] = labels  # any row's label; checked below
    mixed = pooled_labels[inverse] != labels
    if np.any(mixed):
        bad = np.unique(groups[mixed])
        raise ValueError(
            f"Groups {bad[:5].tolist()}{' ...' if len(bad) > 5 else ''} ({len(bad)} in all) "
            f"have rows with different labels; every row of a group needs the same label."
        )
    return sums / counts[:, None], pooled_labels


def linear_probe(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    *,
    train_groups: Any = None,
    test_groups: Any = None,
) -> float:
    """Test accuracy of multinomial logistic regression fitted on the training features.

    The rows are first pooled per group (:func:`pool_groups`); then each feature is
    standardised with the training examples' mean and standard deviation (a constant
    feature is left centred at zero), and ``LogisticRegression`` (L-BFGS, softmax over all
    classes, at most :data:`MAX_ITER` iterations) is fitted to the training examples with
    the ``C`` of :data:`PROBE_CS` that scores best in :data:`PROBE_FOLDS`-fold stratified
    cross-validation on them (the largest such ``C`` on a tie). Deterministic: the folds
    are not shuffled.

    :param train_features: shape ``(N_train, F)``.
    :param train_labels: integers, shape ``(N_train,)``; at least two classes, each with
        at least :data:`PROBE_FOLDS` examples.
    :param test_features: shape ``(N_test, F)``, the same ``F``.
    :param test_labels: integers, shape ``(N_test,)``.
    :param train_groups: the group (utterance) of each training row, or ``None``.
    :param test_groups: the group of each test row, or ``None``.
    :returns: the fraction of test examples (groups, when given) whose label is predicted.
    """
    sk = _sklearn()
    x_train, y_train = pool_groups(train_features, train_labels, train_groups)
    x_test, y_test = pool_groups(test_features, test_labels, test_groups)
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"The training features have {x_train.shape[1]} columns but the test features "
            f"{x_test.shape[1]}."
        )
    classes, counts = np.unique(y_train, return_counts=True)
    if len(classes) < 2 or counts.min() < PROBE_FOLDS:
        raise ValueError(
            f"The training labels need at least two classes, each with {PROBE_FOLDS} or more "
            f"examples, to choose and fit a classifier; got counts {counts.tolist()}."
        )

    def probe(c: float) -> Any:
        return sk.make_pipeline(
            sk.StandardScaler(), sk.LogisticRegression(C=c, max_iter=MAX_ITER)
        )

    folds = sk.StratifiedKFold(n_splits=PROBE_FOLDS)
    # One BLAS thread: the problems are small (thousands of rows, hundreds of features), and
    # a multi-threaded BLAS beside the training framework's own threads, on a busy machine,
    # spins its threads and runs a hundred times slower (seconds instead of milliseconds).
    with sk.threadpool_limits(limits=1, user_api="blas"):
        scores = [sk.cross_val_score(probe(c), x_train, y_train, cv=folds).mean() for c in PROBE_CS]
        # on a tie the weakest penalty: the folds cannot tell, so regularise least
        best = max(i for i, score in enumerate(scores) if score >= max(scores) - 1e-12)
        model = probe(PROBE_CS[best]).fit(x_train, y_train)
        return float(np.mean(model.predict(x_test) == y_test))


def pca_components(num_features: int, num_visible: int, num_rows: int) -> int:
    """The width of the PCA baseline: ``min(num_features, num_visible, num_rows)``.

    As many components as there are learned features, but PCA of ``num_rows`` datapoints
    of dimension ``num_visible`` has at most ``min(num_visible, num_rows)`` components: a
    200-unit machine on 12 cepstrum coefficients is compared with all 12 (which carry the
    same information as the raw input).
    """
    for name, value in (
        ("num_features", num_features),
        ("num_visible", num_visible),
        ("num_rows", num_rows),
    ):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"pca_components: {name} must be a positive integer, got {value!r}.")
    return int(min(num_features, num_visible, num_rows))


def _check_learned(
    data: Dataset, learned_train: Any, learned_test: Any
) -> tuple[np.ndarray, np.ndarray]:
    if not data.labelled:
        raise ValueError(
            f"The linear probe needs labels, and data set {data.name!r} has none (only "
            f"digits, mnist5k and vowels are labelled)."
        )
    learned_train = _matrix(learned_train, "learned_train")
    learned_test = _matrix(learned_test, "learned_test")
    for split, learned in (("train", learned_train), ("test", learned_test)):
        rows = len(getattr(data, split))
        if len(learned) != rows:
            raise ValueError(
                f"learned_{split} has {len(learned)} rows but the {split} set of "
                f"{data.name!r} has {rows}: give the features of every datapoint, in order."
            )
    if learned_train.shape[1] != learned_test.shape[1]:
        raise ValueError(
            f"learned_train has {learned_train.shape[1]} features but learned_test "
            f"{learned_test.shape[1]}."
        )
    return learned_train, learned_test


def probe_accuracies(data: Dataset, learned_train: Any, learned_test: Any) -> dict[str, float]:
    """The linear probe's test accuracy on the learned features and on two baselines.

    ``learned``
        the features given (e.g. ``machine.features(x)`` of every datapoint);
    ``raw``
        the data set's own rows (pixels, cepstrum coefficients);
    ``pca``
        the raw rows projected on their first ``K`` principal components, PCA fitted on the
        training rows (datapoints, i.e. frames, before any pooling) and applied to both
        splits, with ``K = pca_components(F, D, N_train)``: as many components as learned
        features ``F``, but no more than the input has dimensions ``D`` (PCA cannot have
        more), see :func:`pca_components`.

    Each is pooled per group (utterance) when the data set has groups, then probed by
    :func:`linear_probe` against the data set's labels.

    :param data: a labelled :class:`~wakesleep.trainer.datasets.Dataset`.
    :param learned_train: shape ``(N_train, F)``, the features of ``data.train``'s rows.
    :param learned_test: shape ``(N_test, F)``, the features of ``data.test``'s rows.
    :returns: ``{"learned": ..., "raw": ..., "pca": ...}``, accuracies in ``[0, 1]``.
    """
    learned_train, learned_test = _check_learned(data, learned_train, learned_test)
    sk = _sklearn()
    raw_train = np.asarray(data.train, dtype=np.float64)
    raw_test = np.asarray(data.test, dtype=np.float64)
    components = pca_components(learned_train.shape[1], raw_train.shape[1], len(raw_train))
    with sk.threadpool_limits(limits=1, user_api="blas"):  # see linear_probe
        pca = sk.PCA(n_components=components, svd_solver="full").fit(raw_train)
        splits = {
            "learned": (learned_train, learned_test),
            "raw": (raw_train, raw_test),
            "pca": (pca.transform(raw_train), pca.transform(raw_test)),
        }
    return {
        name: linear_probe(
            train,
            data.train_labels,
            test,
            data.test_labels,
            train_groups=data.train_groups,
            test_groups=data.test_groups,
        )
        for name, (train, test) in splits.items()
    }


def feature_report(
    data: Dataset, learned_train: Any, learned_test: Any, hidden: Sequence[int]
) -> dict[str, Any]:
    """What the trainer writes to ``features.json`` for a labelled data set.

    :param data: a labelled :class:`~wakesleep.trainer.datasets.Dataset`.
    :param learned_train: shape ``(N_train, F)``: the features of the training rows, the
        hidden layers side by side, bottom first.
    :param learned_test: shape ``(N_test, F)``, likewise for the test rows.
    :param hidden: the sizes of the hidden layers, bottom first; they must add up to ``F``.
    :returns: a JSON-ready dict: ``probe_accuracy`` (:func:`probe_accuracies`),
        ``mean_activation`` (one number per hidden layer, bottom first: the mean of that
        layer's features over every training row and unit, the average probability that a
        unit is on), ``num_features`` (``F``) and ``pca_components`` (the width of the PCA
        baseline).
    """
    learned_train, learned_test = _check_learned(data, learned_train, learned_test)
    sizes = [int(size) for size in hidden]
    if not sizes or any(size < 1 for size in sizes) or sum(sizes) != learned_train.shape[1]:
        raise ValueError(
            f"hidden must list the positive sizes of the hidden layers, adding up to the "
            f"{learned_train.shape[1]} features; got {list(hidden)}."
        )
    layers = np.split(learned_train, np.cumsum(sizes)[:-1], axis=1)
    num_features = learned_train.shape[1]
    return {
        "probe_accuracy": probe_accuracies(data, learned_train, learned_test),
        "mean_activation": [float(layer.mean()) for layer in layers],
        "num_features": int(num_features),
        "pca_components": pca_components(num_features, data.num_visible, len(data.train)),
    }
