"""Input validation used at the public edge.

Public functions call these once and then hand trusted arrays to private code
(the `scipy.stats` pattern: public ``pdf`` validates, ``_pdf`` computes).
Every error names the argument and says what was expected.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

import numpy as np

FLOAT_DTYPES = (np.float32, np.float64)


def as_float_array(value, name: str, ndim: int | None = None, finite: bool = True) -> np.ndarray:
    """Return `value` as a float32/float64 ndarray, or raise naming `name`.

    Integer and boolean input is converted to float64; float32 is preserved;
    anything else (complex, object, strings) is a TypeError.
    """
    if isinstance(value, np.ndarray):
        array = value
    else:
        try:
            array = np.asarray(value)
        except Exception as error:  # ragged lists and the like
            raise TypeError(f"{name}: expected a numeric array, got {type(value).__name__}") from error
    if array.dtype.kind in "biu":
        array = array.astype(np.float64)
    elif array.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a float32 or float64 array, got dtype {array.dtype}")
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array, got shape {array.shape}")
    # The sum is finite for finite data unless it overflows; only then (or with a real NaN/inf)
    # pay for the elementwise check, whose boolean temporary is as large as the data.
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing sum of finite values is no warning
        suspect = finite and not np.isfinite(array.sum())
    if suspect and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"{name}: contains {bad} non-finite value(s) (NaN or inf)")
    return array


def check_positive_int(value, name: str, upper: int | None = None) -> int:
    """Return `value` as an int >= 1 (and <= `upper` if given), or raise naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value}")
    if upper is not None and value > upper:
        raise ValueError(f"{name}: expected an integer <= {upper}, got {value}")
    return int(value)


def check_choice(value, name: str, choices) -> str:
    """Return `value` if it is one of `choices`, else raise ValueError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {sorted(choices)}, got {value!r}")
    return value


def as_generator(rng, name: str = "rng") -> np.random.Generator:
    """Accept a Generator, an integer seed >= 0 or None (fresh entropy); else raise naming `name`."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, int | np.integer) and not isinstance(rng, bool):
        if rng < 0:
            raise ValueError(f"{name}: expected an integer seed >= 0, got {rng}")
        return np.random.default_rng(int(rng))
    raise TypeError(f"{name}: expected a numpy.random.Generator, an integer seed >= 0 or None, got {type(rng).__name__}")


def check_number(value, name: str) -> float:
    """`value` as a float when it is a real number (int, float, numpy scalar; not bool or str), else TypeError."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    return float(value)


def _leaves(value, path: str):
    """(path, ndarray or float) of every number inside `value`: arrays, floats, lists, tuples, dicts."""
    if isinstance(value, np.ndarray | np.generic | float | int) and not isinstance(value, bool):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}[{key!r}]")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")


def largest_magnitude(value) -> float:
    """The largest |finite number| inside `value` (arrays, floats, nested lists/tuples/dicts), 0.0 if none."""
    largest = 0.0
    for _, leaf in _leaves(value, ""):
        array = np.asarray(leaf)
        if array.dtype.kind in "biuf" and array.size:
            finite = np.abs(array[np.isfinite(array)]) if array.dtype.kind == "f" else np.abs(array)
            largest = max(largest, float(finite.max(initial=0.0)))
    return largest


def most_extreme_input(inputs: dict) -> str:
    """'NAME (|value| up to M)' for the input furthest from 1 in orders of magnitude.

    `inputs` maps an argument name to its numbers (an array, a float, nested lists); a scalar
    counts by its own size too (a Gaussian's sigma of 1e-200 is as extreme as weights of 1e200).
    Used to name the input that drove an overflow: the most likely driver, not a proof.
    """
    best, best_distance = "(no numeric input)", -1.0
    for name, numbers in inputs.items():
        magnitudes = [largest_magnitude(numbers)]
        if np.ndim(numbers) == 0 and not isinstance(numbers, list | tuple | dict):
            magnitudes.append(abs(float(numbers)))
        for magnitude in magnitudes:
            distance = abs(float(np.log10(magnitude))) if 0 < magnitude < np.inf else 0.0
            if distance > best_distance:
                best, best_distance = f"{name} (|value| up to {magnitude:.3g})", distance
    return best


def first_non_finite(value, name: str) -> str | None:
    """The path of the first non-finite number inside `value` (see `_leaves`), or None when all are finite."""
    for path, leaf in _leaves(value, name):
        array = np.asarray(leaf)
        if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
            return path
    return None


def _input_numbers(value):
    """The numbers of one argument that could drive an overflow (None for anything else): an MLP's
    weights, a likelihood's sigma, an ndarray, a float. Lazy arrays (dask) are never computed."""
    theta = getattr(value, "theta", None)
    if isinstance(theta, np.ndarray):
        return theta
    sigma = getattr(value, "sigma", None)
    if isinstance(sigma, float):
        return sigma
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value
    if isinstance(value, float | int | np.integer | np.floating) and not isinstance(value, bool):
        return value
    return None


def _non_finite_part(result, path: str) -> str | None:
    """Where `result` holds a NaN or inf ('the curvature of parameter '0.weight'', 'result[1]'), or None."""
    if callable(getattr(type(result), "first_non_finite", None)):  # a Curvature (not a lazy dask Delayed)
        bad = result.first_non_finite()
        return None if bad is None else f"a curvature not finite in parameter {bad!r}"
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        for item in dataclasses.fields(result):
            found = _non_finite_part(getattr(result, item.name), item.name)
            if found is not None:
                return found
        return None
    if isinstance(result, list | tuple):
        for index, item in enumerate(result):
            found = _non_finite_part(item, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    if isinstance(result, np.ndarray | np.generic | float) and np.asarray(result).dtype.kind in "fc":
        array = np.asarray(result)
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(array.sum()) or np.all(np.isfinite(array)):
                return None
        bad = array.size - np.count_nonzero(np.isfinite(array))
        return f"{path}, {bad} of its {array.size} numbers not finite"
    return None


def finite_or_refused(func):
    """The guard of every public function that returns numbers: finite numbers, or a ValueError.

    Applied as a decorator where the function is defined (so ``er.fisher`` and
    ``ewc_ref.curvature.estimate.fisher`` are the same guarded object). When the result holds a NaN
    or inf -- an overflow of finite inputs, e.g. weights of 1e200, inputs of 1e300, a Gaussian's sigma
    of 1e-200 -- nothing is returned: ValueError names the quantity and the argument that most likely
    drove it, the input furthest from 1 in orders of magnitude (`most_extreme_input`), first::

        model: fisher would return a curvature not finite in parameter '0.weight' (NaN or inf): an
        overflow of finite inputs, most likely driven by model (|value| up to 1e+200); nothing is returned
        x: hessian would return the result, 676 of its 676 numbers not finite (NaN or inf): ...
    """
    signature = inspect.signature(func)

    @functools.wraps(func)
    def guarded(*args, **kwargs):
        result = func(*args, **kwargs)
        where = _non_finite_part(result, "the result")
        if where is None:
            return result
        arguments = signature.bind_partial(*args, **kwargs).arguments
        inputs = {name: numbers for name, value in arguments.items() if (numbers := _input_numbers(value)) is not None}
        driver = most_extreme_input(inputs)
        name = driver.split()[0] if inputs else func.__name__
        raise ValueError(f"{name}: {func.__name__} would return {where} (NaN or inf): an overflow of "
                         f"finite inputs, most likely driven by {driver}; nothing is returned")

    return guarded
