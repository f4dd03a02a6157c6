"""Small helpers shared by the subcommands."""

from __future__ import annotations

from pathlib import Path


def check_output_path(path) -> Path:
    """Fail before any work if the output cannot be written (folder missing, or a folder given)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"-o {path}: is a folder, expected a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"-o {path}: folder {folder} does not exist")
    return path
