"""Fixtures of the PyTorch bridge tests (tests/pytorch/)."""

import pytest
from support.torch_penalties import Catalogue


@pytest.fixture(scope="module")
def catalogue():
    """The catalogue's penalties on the committed fixtures (float64 and float32), built once per test module."""
    return Catalogue()
