"""Shared test settings (a CI Hypothesis profile with a fixed derandomised seed budget) and the shared problems."""

import ctypes
import os
import sys

import pytest
from hypothesis import HealthCheck, settings
from support.torch_problems import TORCH_PROBLEMS, load_torch_problem

settings.register_profile(
    "ci", max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
# A deeper search for local runs: HYPOTHESIS_PROFILE=thorough python -m pytest tests
settings.register_profile(
    "thorough", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
settings.register_profile("dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _return_freed_arrays_to_the_os() -> None:
    """Fix glibc's mmap threshold at 128 KiB so that freed large arrays go back to the OS (issue #26).

    glibc raises the threshold to the size of the largest block freed (up to 32 MiB), after which
    arrays of up to that size come from the heap and, once freed, stay in the process: one test of
    tests/test_curvature.py (now tests/curvature/test_*.py) left +41 MiB of free heap (RSS 129 MiB, 78 after malloc_trim; 85 with this).
    Over the whole serial run that free heap is retained memory of nothing: it changes no result.
    Linux/glibc only; anywhere else (or if libc cannot be loaded) nothing is done.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_MMAP_THRESHOLD = -3  # glibc malloc.h
    libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)


_return_freed_arrays_to_the_os()


# ----------------------------------------------------------------------------- problems as data
@pytest.fixture(params=TORCH_PROBLEMS, ids=[case["name"] for case in TORCH_PROBLEMS])
def torch_problem(request):
    """Each committed torch problem of support.torch_problems.TORCH_PROBLEMS, loaded (ids: the names)."""
    return load_torch_problem(request.param["name"])
