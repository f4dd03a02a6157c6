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

from .. import safe_files, safe_idx
from .._validate import as_generator, check_choice
from ..atomic import atomic_output
from ..safe_idx import IDX_TYPES

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
    with importlib.resources.as_file(importlib.resources.files("ewc_ref").joinpath("data/digits.npz")) as path:
        arrays = safe_files.read_npz(path, "shipped digits file")
    x, y = arrays["x"].astype(np.float64) / 16.0, arrays["y"].astype(np.int64)
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
# IDX format (LeCun's MNIST page): see ewc_ref.safe_files, which reads it.
_IDX_TYPES = IDX_TYPES

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed: name ending in ``.gz``) in native byte order.

    The hardened reader :func:`ewc_ref.safe_idx.read_idx`: header and size checked before any
    data is read, decompression streamed with a cap.

    Raises
    ------
    ValueError
        naming the file, when it is missing, the magic number, the type code, the dimensions
        (none may be 0) or the size do not match the IDX format, the gzip stream is damaged,
        or the declared size is above the memory budget.
    """
    return safe_idx.read_idx(path)


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
    data_dir = safe_files.check_path(data_dir, "data_dir")
    if not os.path.isdir(data_dir):
        raise ValueError(f"--data-dir {data_dir}: not a directory")
    paths = {key: _find_idx(data_dir, stem) for key, stem in MNIST_FILES.items()}
    _check_mnist_headers(paths)  # kinds, counts and sizes from the headers, before any data
    out = []
    for split in ("train", "test"):
        images, labels = read_idx(paths[f"{split}_images"]), read_idx(paths[f"{split}_labels"])
        if labels.max() >= N_CLASSES:
            raise ValueError(f"{paths[f'{split}_labels']}: labels must lie in 0..9, found {int(labels.max())}")
        out += [images.reshape(images.shape[0], -1).astype(np.float64) / 255.0, labels.astype(np.int64)]
    return tuple(out)


def _check_mnist_headers(paths: dict) -> None:
    """Refuse the four MNIST files from their IDX headers: 3-d u8 images, 1-d u8 labels, as many
    labels as images, one image size, and the float64 images within the memory budget."""
    headers = {key: safe_idx.idx_header(path) for key, path in paths.items()}
    for key, header in headers.items():
        ndim, what = (3, "images (N, rows, cols)") if key.endswith("images") else (1, "labels (N,)")
        if len(header.shape) != ndim or header.dtype != np.uint8:
            raise ValueError(f"{paths[key]}: expected {ndim}-d unsigned-byte {what}, got {len(header.shape)}-d {header.dtype.newbyteorder('=')}")
    for split in ("train", "test"):
        images, labels = headers[f"{split}_images"].shape, headers[f"{split}_labels"].shape
        if images[0] != labels[0]:
            raise ValueError(f"{paths[f'{split}_labels']}: {labels[0]} labels for {images[0]} images in {paths[f'{split}_images']}")
    if headers["train_images"].shape[1:] != headers["test_images"].shape[1:]:
        raise ValueError(
            f"{paths['test_images']}: image size {headers['test_images'].shape[1:]} differs from the "
            f"training images {headers['train_images'].shape[1:]}"
        )
    as_float64 = sum(8 * int(np.prod(headers[f"{s}_images"].shape, dtype=object)) for s in ("train", "test"))
    safe_files.check_budget(as_float64, f"--data-dir {os.path.dirname(paths['train_images'])}: the MNIST images as float64")


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
    path = safe_files.check_path(path)
    with atomic_output(path) as tmp, (gzip.open if path.endswith(".gz") else open)(tmp, "wb") as handle:
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
