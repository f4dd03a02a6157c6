"""Data for continual learning: the shipped digits, real MNIST IDX files, and the three scenarios.

Data sources
------------
- :func:`load_digits`: the UCI 8x8 optical digits shipped in ``ewc_ref/data/digits.npz``
  (1,797 images, 64 pixels in 0..16, CC BY 4.0; see the README), scaled to [0, 1] and split
  into train/test by a fixed seed, independent of any run seed, so every run sees the same split.
- :func:`load_mnist`: the real MNIST IDX files (``train-images-idx3-ubyte`` etc., optionally
  ``.gz``) from a directory the user supplies; nothing is ever downloaded.

Scenarios (van de Ven & Tolias, "Three scenarios for continual learning", 2019)
------------------------------------------------------------------------------
Every scenario is a list of :class:`Task` plus a rule saying which *output columns* (logits) of
the network are active, when training task t and when testing task j after training task i.
The network always has 10 outputs; a scenario only chooses a subset of its logits, and the
categorical likelihood is the softmax over that subset, with labels re-indexed to positions in it.

=========  ======================  ===========================  ================================
name       van de Ven & Tolias     active columns, training t   active columns, testing j after i
=========  ======================  ===========================  ================================
domain     domain-incremental      all 10 (one head)            all 10
task       task-incremental        classes of task t (its head) classes of task j (identity given)
class      class-incremental       classes of tasks 0..t        classes of tasks 0..i (no identity)
=========  ======================  ===========================  ================================

- ``domain``: permuted digits. Task 0 is the original images; task t >= 1 applies a fixed random
  pixel permutation (drawn from the run seed) to every image, train and test alike.
- ``task``: split digits, classes 0..9 cut into consecutive groups (5 tasks of 2 classes by
  default) and a multi-head output: head t is the rows of the last layer belonging to the
  classes of task t. Training and testing task t use only those logits ("head view", see
  :func:`head_columns` and ewc_ref.continual.training).
- ``class``: the same split, one shared head over all classes seen so far: after task i the
  model must tell apart every class of tasks 0..i without being told the task. Logits of classes
  not yet seen are inactive (they cannot be predicted), as in van de Ven & Tolias.
"""

from __future__ import annotations

import gzip
import importlib.resources
import os
from dataclasses import dataclass, field

import numpy as np

from .._validate import as_generator, check_choice

N_CLASSES = 10
SCENARIOS = ("task", "domain", "class")
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


# ----------------------------------------------------------------------------- digits
def load_digits(test_fraction: float = DIGITS_TEST_FRACTION, split_seed: int = DIGITS_SPLIT_SEED):
    """The shipped UCI 8x8 digits, scaled to [0, 1], split into train and test.

    The split is stratified: within each class, a fixed permutation (from `split_seed`) puts
    round(test_fraction * n_class) images in the test set, so both sets have every class in
    the same proportion. With the defaults: 1,438 train and 359 test images.

    Returns
    -------
    x_train : (N_train, 64) float64 in [0, 1] (pixel counts 0..16 divided by 16)
    y_train : (N_train,) int64 labels 0..9
    x_test : (N_test, 64)
    y_test : (N_test,)
    """
    test_fraction = float(test_fraction)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction}")
    with importlib.resources.files("ewc_ref").joinpath("data/digits.npz").open("rb") as handle:
        with np.load(handle, allow_pickle=False) as archive:
            x = archive["x"].astype(np.float64) / 16.0
            y = archive["y"].astype(np.int64)
    return _stratified_split(x, y, test_fraction, split_seed)


def _stratified_split(x, y, test_fraction, split_seed):
    rng = np.random.default_rng(split_seed)
    test = np.zeros(y.shape[0], dtype=bool)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        n_test = int(round(test_fraction * members.size))
        test[rng.permutation(members)[:n_test]] = True
    return x[~test], y[~test], x[test], y[test]


# ----------------------------------------------------------------------------- MNIST IDX
# IDX format (LeCun's MNIST page): 2 zero bytes, a type code, the number of dimensions, then
# one big-endian uint32 per dimension, then the data, big-endian, row-major.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed: name ending in ``.gz``).

    Raises
    ------
    ValueError
        naming the file, when the magic number, the type code, the dimensions or the size
        do not match the IDX format.
    OSError
        when the file cannot be read.
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (gzip.BadGzipFile, EOFError, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot read IDX file ({error})") from error
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(raw)} bytes, expected a 4-byte magic number)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(
            f"{path}: not an IDX file: bad magic number 0x{raw[:4].hex()} (expected 0x0000TTDD with "
            f"type TT in {{08, 09, 0b, 0c, 0d, 0e}})"
        )
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    if ndim == 0:
        raise ValueError(f"{path}: IDX magic number says 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header: {len(raw)} bytes, expected at least {header}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: IDX size mismatch: header says shape {shape} of {dtype.str[1:]} "
            f"({expected} bytes with the header), file has {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(data_dir: str, stem: str) -> str:
    # Both the original names and the dotted variant some mirrors use (train-images.idx3-ubyte).
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        candidate = os.path.join(data_dir, name)
        if os.path.isfile(candidate):
            return candidate
    raise ValueError(f"--data-dir {data_dir}: missing MNIST file {stem} (or {stem}.gz)")


def load_mnist(data_dir):
    """The real MNIST from its four IDX files in `data_dir`, scaled to [0, 1].

    Expects ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
    and ``t10k-labels-idx1-ubyte``, each optionally gzip-compressed (``.gz``).

    Returns
    -------
    x_train : (60000, 784) float64 in [0, 1] (bytes / 255), y_train : (60000,) int64 in 0..9,
    x_test : (10000, 784), y_test : (10000,) (whatever sizes the files hold, checked consistent)

    Raises
    ------
    ValueError
        naming the directory or file when a file is missing, not IDX, of the wrong type or
        dimensions, or when images and labels disagree in number, or labels are outside 0..9.
    """
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise ValueError(f"--data-dir {data_dir}: not a directory")
    arrays = {}
    for key, stem in MNIST_FILES.items():
        path = _find_idx(data_dir, stem)
        array = read_idx(path)
        if key.endswith("images"):
            if array.ndim != 3 or array.dtype != np.uint8:
                raise ValueError(f"{path}: expected 3-d unsigned-byte images (N, rows, cols), got {array.ndim}-d {array.dtype}")
        elif array.ndim != 1 or array.dtype != np.uint8:
            raise ValueError(f"{path}: expected 1-d unsigned-byte labels (N,), got {array.ndim}-d {array.dtype}")
        elif array.size and array.max() >= N_CLASSES:
            raise ValueError(f"{path}: labels must lie in 0..9, found {int(array.max())}")
        arrays[key] = (path, array)
    out = []
    for split in ("train", "test"):
        (image_path, images), (label_path, labels) = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{label_path}: {labels.shape[0]} labels for {images.shape[0]} images in {image_path}")
        if images.shape[0] == 0:
            raise ValueError(f"{image_path}: contains no images")
        out += [images.reshape(images.shape[0], -1).astype(np.float64) / 255.0, labels.astype(np.int64)]
    if arrays["train_images"][1].shape[1:] != arrays["test_images"][1].shape[1:]:
        raise ValueError(
            f"{arrays['test_images'][0]}: image size {arrays['test_images'][1].shape[1:]} differs from the "
            f"training images {arrays['train_images'][1].shape[1:]}"
        )
    return tuple(out)


def write_idx(path, array: np.ndarray) -> None:
    """Write `array` (uint8/int8/int16/int32/float32/float64) as an IDX file (``.gz`` compresses).

    The inverse of :func:`read_idx`; used by the tests to make small MNIST-like files.
    """
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(f"array: dtype {array.dtype} has no IDX type code")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(_IDX_TYPES[code]).tobytes()
    path = os.fspath(path)
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as handle:
        handle.write(payload)


# ----------------------------------------------------------------------------- scenarios
@dataclass
class Task:
    """One task: inputs and the ORIGINAL labels 0..9 (re-indexed per head at use time).

    Attributes
    ----------
    name : e.g. 'permutation 2' or 'classes 4,5'
    x_train : (N_t, D), y_train : (N_t,) int, x_test : (M_t, D), y_test : (M_t,) int
    classes : (K_t,) the classes of this task, increasing
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: np.ndarray


@dataclass
class Scenario:
    """A sequence of tasks and the rule for which output columns are active.

    Attributes
    ----------
    name : 'task', 'domain' or 'class'
    tasks : list of Task
    n_outputs : C = 10, the width of the network's last layer
    """

    name: str
    tasks: list
    n_outputs: int = N_CLASSES
    permutations: list = field(default_factory=list)

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def n_inputs(self) -> int:
        return self.tasks[0].x_train.shape[1]

    def train_columns(self, t: int) -> np.ndarray:
        """Output columns active while training task t (and for its Fisher)."""
        if self.name == "domain":
            return np.arange(self.n_outputs)
        if self.name == "task":
            return self.tasks[t].classes
        return np.concatenate([task.classes for task in self.tasks[: t + 1]])

    def test_columns(self, i: int, j: int) -> np.ndarray:
        """Output columns used to test task j after training tasks 0..i."""
        if self.name == "domain":
            return np.arange(self.n_outputs)
        if self.name == "task":
            return self.tasks[j].classes
        return np.concatenate([task.classes for task in self.tasks[: i + 1]])


def head_labels(y: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Re-index original labels into positions within `columns`; -1 where the class is inactive.

    y : (N,) int in 0..9, columns : (K,) distinct ints in 0..9. Returns (N,) int64.
    """
    position = np.full(N_CLASSES, -1, dtype=np.int64)
    position[columns] = np.arange(columns.size)
    return position[y]


def check_n_tasks(scenario: str, n_tasks, n_classes: int = N_CLASSES) -> int:
    """Validate the number of tasks for a scenario; raise ValueError naming `tasks`.

    Split scenarios need at least two classes per task (a one-class head is always right), so
    at most n_classes // 2 tasks; permuted scenarios accept any number >= 2.
    """
    check_choice(scenario, "scenario", SCENARIOS)
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int | np.integer):
        raise TypeError(f"tasks: expected an integer, got {type(n_tasks).__name__}")
    if n_tasks < 2:
        raise ValueError(f"tasks: expected at least 2 tasks for continual learning, got {n_tasks}")
    if scenario != "domain" and n_tasks > n_classes // 2:
        raise ValueError(
            f"tasks: the {scenario}-incremental split of {n_classes} classes supports at most "
            f"{n_classes // 2} tasks (two classes each), got {n_tasks}"
        )
    return int(n_tasks)


def permuted_tasks(x_train, y_train, x_test, y_test, n_tasks: int, rng=None) -> Scenario:
    """Domain-incremental scenario: task 0 unpermuted, task t >= 1 a fixed random pixel permutation.

    The permutations are drawn from `rng` (a Generator or seed), one ``rng.permutation(D)`` per
    task t >= 1, in task order.
    """
    n_tasks = check_n_tasks("domain", n_tasks)
    rng = as_generator(rng)
    d = x_train.shape[1]
    permutations = [np.arange(d)] + [rng.permutation(d) for _ in range(n_tasks - 1)]
    classes = np.arange(N_CLASSES)
    tasks = [
        Task("original" if t == 0 else f"permutation {t}", x_train[:, p], y_train, x_test[:, p], y_test, classes)
        for t, p in enumerate(permutations)
    ]
    return Scenario("domain", tasks, permutations=permutations)


def split_tasks(x_train, y_train, x_test, y_test, n_tasks: int, scenario: str = "task") -> Scenario:
    """Task- or class-incremental scenario: classes 0..9 cut into `n_tasks` consecutive groups.

    The groups are ``np.array_split(range(10), n_tasks)`` (5 tasks: {0,1}, {2,3}, ..., {8,9};
    3 tasks: {0,1,2,3}, {4,5,6}, {7,8,9}).
    """
    check_choice(scenario, "scenario", ("task", "class"))
    n_tasks = check_n_tasks(scenario, n_tasks)
    tasks = []
    for group in np.array_split(np.arange(N_CLASSES), n_tasks):
        train, test = np.isin(y_train, group), np.isin(y_test, group)
        if not train.any() or not test.any():
            raise ValueError(f"tasks: no training or test examples for classes {group.tolist()}")
        name = "classes " + ",".join(map(str, group))
        tasks.append(Task(name, x_train[train], y_train[train], x_test[test], y_test[test], group))
    return Scenario(scenario, tasks)


def make_scenario(name: str, data, n_tasks: int, rng=None) -> Scenario:
    """Build scenario `name` ('task', 'domain' or 'class') from data = (x_train, y_train, x_test, y_test)."""
    check_choice(name, "scenario", SCENARIOS)
    if name == "domain":
        return permuted_tasks(*data, n_tasks, rng=rng)
    return split_tasks(*data, n_tasks, scenario=name)
