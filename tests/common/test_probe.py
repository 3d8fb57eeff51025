"""The linear probe: pooling, accuracy on data with known answers, baselines, the report."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the linear probe needs scikit-learn (the data extra)")

from wakesleep.probe import (  # noqa: E402  (after the skip)
    feature_report,
    linear_probe,
    pca_components,
    pool_groups,
    probe_accuracies,
)
from wakesleep.trainer.datasets import Dataset, load_dataset  # noqa: E402


def _blobs(num: int, classes: int, dim: int, seed: int, spread: float = 10.0):
    """Gaussian blobs far apart: class ``k`` centred at ``spread * e_k``."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num) % classes
    centres = spread * np.eye(classes, dim)
    return centres[labels] + rng.normal(size=(num, dim)), labels.astype(np.int64)


def _gaussian_dataset(train, test, train_labels, test_labels, **groups) -> Dataset:
    return Dataset(
        "synthetic",
        np.asarray(train, dtype=np.float32),
        np.asarray(test, dtype=np.float32),
        None,
        visible="gaussian",
        train_labels=train_labels,
        test_labels=test_labels,
        **groups,
    )


# --------------------------------------------------------------------------- pooling


def test_pool_groups_averages_each_group_exactly():
    features = np.array([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [5.0, 6.0], [0.0, 0.0]])
    labels = np.array([4, 4, 1, 4, 1])
    groups = np.array([7, 7, 2, 7, 2])  # not contiguous, ids not from 0
    pooled, pooled_labels = pool_groups(features, labels, groups)
    # groups in increasing id order: 2 then 7
    np.testing.assert_array_equal(pooled, [[5.0, 0.0], [3.0, 4.0]])
    assert pooled_labels.tolist() == [1, 4] and pooled_labels.dtype == np.int64


def test_pool_groups_without_groups_leaves_rows_alone():
    features = np.arange(6).reshape(3, 2)
    pooled, labels = pool_groups(features, np.array([0, 1, 0]))
    np.testing.assert_array_equal(pooled, features)
    assert labels.tolist() == [0, 1, 0]


def test_pool_groups_refuses_a_group_with_two_labels_and_bad_shapes():
    with pytest.raises(ValueError, match=r"Groups \[3\].*different labels"):
        pool_groups(np.zeros((3, 2)), np.array([0, 1, 1]), np.array([3, 3, 5]))
    with pytest.raises(ValueError, match="one entry per row"):
        pool_groups(np.zeros((3, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match="one entry per row"):
        pool_groups(np.zeros((3, 2)), np.array([0, 1, 1]), np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="2-D array"):
        pool_groups(np.zeros(3), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        pool_groups(np.array([[np.nan], [0.0]]), np.array([0, 1]))


# --------------------------------------------------------------------------- the probe


def test_separable_classes_are_read_perfectly():
    x_train, y_train = _blobs(300, 4, 6, seed=0)
    x_test, y_test = _blobs(200, 4, 6, seed=1)
    assert linear_probe(x_train, y_train, x_test, y_test) == 1.0


def test_shuffled_labels_give_chance():
    # the same features, each blob's points spread over all classes: nothing to read.
    # Many small blobs, so that the classes a blob happens to favour average out.
    x_train, y_train = _blobs(2_000, 4, 6, seed=0, spread=0.0)
    x_test, y_test = _blobs(4_000, 4, 6, seed=1, spread=0.0)
    shuffled = np.random.default_rng(2).permutation(y_train)
    assert linear_probe(x_train, y_train, x_test, y_test) < 0.31  # no signal at all
    assert abs(linear_probe(x_train, shuffled, x_test, y_test) - 0.25) < 0.04  # chance
    # the separable blobs with their labels shuffled: the probe cannot beat chance by much
    x_train, y_train = _blobs(2_000, 4, 6, seed=0)
    x_test, y_test = _blobs(4_000, 4, 6, seed=1)
    assert linear_probe(x_train, shuffled, x_test, y_test) < 0.4


def test_probe_is_deterministic():
    x_train, y_train = _blobs(300, 3, 5, seed=0, spread=1.0)  # overlapping: not trivial
    x_test, y_test = _blobs(300, 3, 5, seed=1, spread=1.0)
    first = linear_probe(x_train, y_train, x_test, y_test)
    assert 0.4 < first < 1.0
    assert linear_probe(x_train, y_train, x_test, y_test) == first


def test_groups_are_pooled_before_the_probe():
    # single frames are noise around their utterance's class centre; the average of 50
    # frames is close to the centre. Pooled, every test utterance is read right.
    rng = np.random.default_rng(0)
    frames, num_utterances = 50, 40

    def split(seed):
        labels = np.repeat(np.arange(num_utterances) % 2, frames)
        centres = np.where(labels[:, None] == 1, 0.5, -0.5)
        x = centres + np.random.default_rng(seed).normal(scale=3.0, size=(len(labels), 3))
        return x, labels, np.repeat(np.arange(num_utterances), frames)

    x_train, y_train, g_train = split(1)
    x_test, y_test, g_test = split(2)
    per_frame = linear_probe(x_train, y_train, x_test, y_test)
    pooled = linear_probe(
        x_train, y_train, x_test, y_test, train_groups=g_train, test_groups=g_test
    )
    assert per_frame < 0.75 and pooled == 1.0
    # the accuracy is a fraction of the 40 utterances, not of the 2,000 frames
    x_noise = rng.normal(size=x_test.shape)
    noisy = linear_probe(
        x_train, y_train, x_noise, y_test, train_groups=g_train, test_groups=g_test
    )
    assert noisy * num_utterances == pytest.approx(round(noisy * num_utterances))


def test_probe_validates_its_inputs():
    x, y = _blobs(20, 2, 3, seed=0)
    with pytest.raises(ValueError, match="3 columns but the test features 4"):
        linear_probe(x, y, np.zeros((5, 4)), np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match="at least two classes"):
        linear_probe(x, np.zeros(20, dtype=np.int64), x, y)
    with pytest.raises(ValueError, match="one entry per row"):
        linear_probe(x, y, x, y, test_groups=np.zeros(3, dtype=np.int64))


def test_probe_without_sklearn_says_how_to_install(monkeypatch):
    for name in ("sklearn", "sklearn.linear_model", "sklearn.decomposition"):
        monkeypatch.setitem(sys.modules, name, None)
    x, y = _blobs(20, 2, 3, seed=0)
    with pytest.raises(ImportError, match=r"pip install 'wakesleep\[data\]'"):
        linear_probe(x, y, x, y)


# --------------------------------------------------------------------------- baselines


def test_pca_components_are_capped_by_the_input():
    assert pca_components(8, 12, 4_000) == 8
    assert pca_components(200, 12, 4_000) == 12  # no more components than dimensions
    assert pca_components(200, 784, 50) == 50  # nor than datapoints
    with pytest.raises(ValueError, match="num_features must be a positive integer"):
        pca_components(0, 12, 10)


def test_probe_accuracies_on_learned_raw_and_pca():
    # the class is in raw coordinate 0 only, which has the smallest variance: one PCA
    # component (the largest-variance direction, coordinate 1) misses it; learned features
    # that copy coordinate 0 find it.
    rng = np.random.default_rng(0)

    def split(n):
        labels = rng.integers(0, 2, n)
        x = np.stack(
            [labels * 2.0 - 1.0 + 0.1 * rng.normal(size=n), 10.0 * rng.normal(size=n)],
            axis=1,
        )
        return x, labels.astype(np.int64)

    x_train, y_train = split(400)
    x_test, y_test = split(400)
    data = _gaussian_dataset(x_train, x_test, y_train, y_test)
    accuracies = probe_accuracies(data, x_train[:, :1], x_test[:, :1])
    assert set(accuracies) == {"learned", "raw", "pca"}
    assert accuracies["learned"] == 1.0 and accuracies["raw"] == 1.0
    assert accuracies["pca"] < 0.65
    # as many learned features as dimensions: PCA is a rotation and reads them all
    assert probe_accuracies(data, x_train, x_test)["pca"] == 1.0


def test_probe_accuracies_refuses_unlabelled_data_and_wrong_rows():
    x, y = _blobs(40, 2, 3, seed=0)
    unlabelled = Dataset("file", np.zeros((4, 4), np.uint8), np.zeros((2, 4), np.uint8), (2, 2))
    with pytest.raises(ValueError, match="needs labels.*'file'"):
        probe_accuracies(unlabelled, np.zeros((4, 2)), np.zeros((2, 2)))
    data = _gaussian_dataset(x, x, y, y)
    with pytest.raises(ValueError, match="learned_test has 39 rows but the test set"):
        probe_accuracies(data, np.zeros((40, 2)), np.zeros((39, 2)))
    with pytest.raises(ValueError, match="2 features but learned_test 3"):
        probe_accuracies(data, np.zeros((40, 2)), np.zeros((40, 3)))


# --------------------------------------------------------------------------- the report


def test_feature_report_keys_and_per_layer_means():
    x_train, y_train = _blobs(200, 2, 4, seed=0)
    x_test, y_test = _blobs(100, 2, 4, seed=1)
    data = _gaussian_dataset(x_train, x_test, y_train, y_test)
    rng = np.random.default_rng(0)
    # two hidden layers of 3 and 2 units, bottom first, with on-probabilities near 0.2 and
    # 0.9; the bottom layer's first unit carries the class
    bottom = np.clip(0.2 + 0.05 * rng.normal(size=(200, 3)), 0, 1)
    bottom[:, 0] = 0.1 + 0.2 * y_train
    top = np.full((200, 2), 0.9)
    learned_train = np.concatenate([bottom, top], axis=1)
    learned_test = np.concatenate([bottom[:100], np.full((100, 2), 0.9)], axis=1)
    learned_test[:, 0] = 0.1 + 0.2 * y_test
    report = feature_report(data, learned_train, learned_test, hidden=[3, 2])
    assert set(report) == {"probe_accuracy", "mean_activation", "num_features", "pca_components"}
    assert set(report["probe_accuracy"]) == {"learned", "raw", "pca"}
    assert report["probe_accuracy"]["learned"] == 1.0
    assert report["mean_activation"] == pytest.approx([bottom.mean(), 0.9])
    assert report["num_features"] == 5
    assert report["pca_components"] == 4  # 5 features, but the input has 4 dimensions
    json.dumps(report)  # JSON-ready: plain floats and ints
    with pytest.raises(ValueError, match="adding up to the 5 features"):
        feature_report(data, learned_train, learned_test, hidden=[3, 3])


# --------------------------------------------------------------------------- real data


def test_vowels_raw_coefficients_identify_the_speaker():
    if importlib.util.find_spec("sktime") is None:
        pytest.skip("the vowels data set reads its files from sktime, which is not installed")
    vowels = load_dataset("vowels")
    # a placeholder for learned features: 8 "units" that carry nothing
    nothing_train = np.zeros((len(vowels.train), 8))
    nothing_test = np.zeros((len(vowels.test), 8))
    accuracies = probe_accuracies(vowels, nothing_train, nothing_test)
    # mean-pooled standardised coefficients: 96.8 % here (95.7 % without the scaler)
    assert accuracies["raw"] >= 0.93
    assert accuracies["pca"] >= 0.90  # 8 of 12 components: 93.0 %
    assert accuracies["learned"] < 0.2  # constant features: one class for everything


def test_digits_raw_pixels_identify_the_digit():
    pytest.importorskip("sklearn.datasets")
    digits = load_dataset("digits")
    accuracies = probe_accuracies(
        digits, digits.train.astype(np.float64), digits.test.astype(np.float64)
    )
    assert accuracies["raw"] > 0.85 and accuracies["learned"] == accuracies["raw"]
