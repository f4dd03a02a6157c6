"""JSON for results and the command line: strictly valid text (RFC 8259), never NaN or Infinity.

``json_text`` is the one serialiser behind every result's ``to_json()`` (``JsonResult``) and the
command line's ``--json`` (ewc_ref/commands/_args.py, ``write_json``): a non-finite number becomes
null, and the object names it under ``"non_finite"`` (docs/file-format.md, section 9).
Standard library and NumPy only (a leaf utility).
"""

from __future__ import annotations

import json
import math
import re

import numpy as np


def strict_json(value, path: str = "", found: dict | None = None):
    """`value` with every non-finite float (NaN, +-inf) replaced by None, recursively.

    Each replaced number is recorded in `found` as JSON path -> what it was ('inf', '-inf',
    'nan'): ``{"keys": {"0.weight": {"max_abs_error": inf}}}`` records
    ``keys["0.weight"].max_abs_error``, ``{"b": [1.0, nan]}`` records ``b[1]``.
    NumPy scalars are converted to Python numbers first (np.float64 is a float; np.float32 and
    the integer types are not, and json.dumps would refuse them).
    """
    found = {} if found is None else found
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        found[path or "(the value)"] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return None
    if isinstance(value, dict):
        return {key: strict_json(item, _json_path(path, key), found) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item, f"{path}[{index}]", found) for index, item in enumerate(value)]
    return value


def _json_path(path: str, key) -> str:
    """`path` extended by `key`: '.name' for a plain name, '["0.weight"]' for any other key."""
    key = str(key)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def json_text(value) -> str:
    """`value` as one line of strictly valid JSON (RFC 8259): the one serialiser of every
    ``to_json()`` and of the command line's ``--json``.

    NaN and +-inf become null; an object (dict) that had any gains the key ``"non_finite"``,
    {JSON path: 'nan' | 'inf' | '-inf'}, the reason for each such null (docs/file-format.md, section 9).
    """
    found: dict[str, str] = {}
    clean = strict_json(value, "", found)
    if found and isinstance(clean, dict):
        clean["non_finite"] = found
    return json.dumps(clean, allow_nan=False)


class JsonResult:
    """Mixin of every result object: ``to_dict()`` is the JSON object, ``to_json()`` its text.

    (Until format version 1.1, ``to_json()`` returned the object; docs/file-format.md, version notes.)
    """

    def to_dict(self) -> dict:
        raise NotImplementedError

    def to_json(self) -> str:
        """``to_dict()`` as one line of strictly valid JSON (`json_text`)."""
        return json_text(self.to_dict())
