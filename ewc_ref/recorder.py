"""Record what a data loader yields, so diagnose sees the rows in the order a Fisher loop saw them.

A minibatch Fisher depends on which rows shared a batch, and a shuffled loader never yields the
same order twice: the order must be captured while the user's own loop runs. ``Recorder`` wraps
any iterable of ``(x, y)`` batches (a torch ``DataLoader`` with ``shuffle=True``, ``drop_last``,
any sampler; a list of NumPy batches) and is iterated in its place::

    loader = Recorder(DataLoader(dataset, batch_size=64, shuffle=True))
    for xb, yb in loader:                # the user's Fisher loop, unchanged
        ...
    loader.save("data.npz")              # rows in the order yielded, with the batch sizes

Afterwards ``.x`` (M, ...) and ``.y`` (M, ...) are the M rows stacked in the order they were
yielded (M < N with ``drop_last``; a row may repeat with a sampler that draws with replacement)
and ``.batches`` (K,) the number of rows of each batch, in turn (sum = M). ``.save`` writes them as
data.npz with the key ``batches`` (docs/file-format.md, data section; no ``order`` key: the file's
rows ARE in yielded order), which ``ewc-ref diagnose`` reads to compare THEIRS with the minibatch
Fisher over exactly those batches.

Everything else (``len(loader)``, ``loader.dataset``, ``loader.batch_size``) is the wrapped loader's.
Torch-free: a batch item is anything ``np.asarray`` converts (NumPy arrays, CPU torch tensors
through ``__array__``). Each new iteration starts a new record (the last pass is the one kept),
and the arrays are copied as they pass, so a loader that reuses its buffers cannot change them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np


def as_array(value, name: str) -> np.ndarray:
    """A copy of `value` as an ndarray (torch tensors via ``__array__``); TypeError naming `name`."""
    try:
        return np.asarray(value).copy()  # not np.array(copy=True): torch's __array__ takes no copy keyword
    except Exception as error:  # a tensor that requires grad, on a GPU, or a non-numeric object
        raise TypeError(f"{name}: does not convert to a NumPy array ({error}); a torch tensor must be on the "
                        "CPU and not require grad (.detach().cpu())") from error


class Recorder:
    """Wrap an iterable of (x, y) batches; iterate it as the original and record every row.

    Parameters
    ----------
    iterable : any iterable whose items are (x, y) pairs (tuples or lists; further items, such as
        Avalanche's task labels, are passed through and not recorded) of equal-length arrays

    Attributes (after an iteration)
    -------------------------------
    x : (M, ...) the rows of every x batch, stacked in the order yielded
    y : (M, ...) the labels, likewise
    batches : (K,) int64, rows per batch in turn (sum = M)
    complete : True when the last iteration ran to the end of the iterable
    """

    def __init__(self, iterable: Iterable):
        if not isinstance(iterable, Iterable):
            raise TypeError(f"iterable: expected an iterable of (x, y) batches (a DataLoader), got {type(iterable).__name__}")
        self.iterable = iterable
        self._x: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self.complete = False
        self._iterated = False

    def __iter__(self) -> Iterator:
        self._x, self._y, self.complete, self._iterated = [], [], False, True
        for index, batch in enumerate(self.iterable):
            self._record(index, batch)
            yield batch
        self.complete = True

    def __getattr__(self, name: str):
        # A drop-in for the loader: their loop may read loader.dataset, loader.batch_size, ...
        iterable = self.__dict__.get("iterable")
        if iterable is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(iterable, name)

    def __len__(self) -> int:
        return len(self.iterable)  # TypeError for iterables without a length, as for the original

    def _record(self, index: int, batch) -> None:
        if isinstance(batch, dict | str | bytes) or not hasattr(batch, "__getitem__") or not hasattr(batch, "__len__") \
                or len(batch) < 2:
            raise TypeError(f"batch {index}: expected an (x, y) pair, got {type(batch).__name__}")
        xb, yb = as_array(batch[0], f"batch {index}: x"), as_array(batch[1], f"batch {index}: y")
        if xb.ndim == 0 or yb.ndim == 0 or xb.shape[0] != yb.shape[0]:
            raise ValueError(f"batch {index}: x and y must have the same number of rows, got shapes {xb.shape} and {yb.shape}")
        if self._x and (xb.shape[1:] != self._x[0].shape[1:] or yb.shape[1:] != self._y[0].shape[1:]):
            raise ValueError(f"batch {index}: row shapes x {xb.shape[1:]}, y {yb.shape[1:]} differ from batch 0's "
                             f"x {self._x[0].shape[1:]}, y {self._y[0].shape[1:]}")
        self._x.append(xb)
        self._y.append(yb)

    def _check_recorded(self) -> None:
        if not self._iterated:
            raise ValueError("Recorder: nothing recorded yet; iterate it (your Fisher loop) first")
        if not self._x:
            raise ValueError("Recorder: the iterable yielded no batches")

    @property
    def x(self) -> np.ndarray:
        """(M, ...) rows of x in the order yielded."""
        self._check_recorded()
        return np.concatenate(self._x)

    @property
    def y(self) -> np.ndarray:
        """(M, ...) labels in the order yielded."""
        self._check_recorded()
        return np.concatenate(self._y)

    @property
    def batches(self) -> np.ndarray:
        """(K,) int64, the number of rows of each batch yielded, in turn."""
        self._check_recorded()
        return np.array([len(xb) for xb in self._x], dtype=np.int64)

    def save(self, path) -> None:
        """Write data.npz: x with its rows flattened to (M, d) as the file holds them, y, and ``batches``.

        Calls ``er.save_data(path, x, y, batches=...)`` (atomic); no ``order`` key: the rows are
        written in the order they were yielded."""
        from .io import save_data

        x = self.x
        save_data(path, x.reshape(x.shape[0], -1), self.y, batches=self.batches)

    def __repr__(self) -> str:
        if not self._x:
            return f"Recorder({type(self.iterable).__name__}, nothing recorded)"
        return (f"Recorder({type(self.iterable).__name__}, {sum(len(b) for b in self._x)} rows in "
                f"{len(self._x)} batches{'' if self.complete else ', incomplete pass'})")


__all__ = ["Recorder"]
