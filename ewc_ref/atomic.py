"""Atomic outputs: a file (or a folder of files) appears whole at its name or not at all.

Writes go to a temporary file (or staging folder) beside the output, named
``.NAME.ewc-ref.PID.XXXXXXXX.tmp``, which is renamed over the target only on success; a writer
killed by SIGKILL cannot delete its own, so the next successful write into the same folder removes
those of dead processes (never a live writer's). Used by every writer of ewc_ref (ewc_ref.io, the
curvature files, the figures, the command line's -o). Standard library, NumPy and safe_files only.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import safe_files

# Temporary files of atomic_output (and staging folders of atomic_folder): ".NAME.ewc-ref.PID.XXXXXXXX.tmp"
# beside the output NAME, where PID is the writing process and XXXXXXXX mkstemp's random part.
TEMPORARY_PATTERN = ".{name}.ewc-ref.{pid}.XXXXXXXX.tmp"
_OURS = re.compile(r"^\..+\.ewc-ref\.([0-9]+)\.[a-z0-9_]{8}\.tmp$")
_PROCESS_START = time.time()  # when this process imported ewc_ref.io: no write of ours is older


def _prefix(path: Path) -> str:
    return f".{path.name}.ewc-ref.{os.getpid()}."


@contextmanager
def atomic_output(path):
    """Yield a temporary path next to `path`; on success give it the usual file mode and rename
    it over `path`, on any failure delete it. Nothing is ever half-written at `path`.

    The temporary file is named ``.NAME.ewc-ref.PID.XXXXXXXX.tmp`` (TEMPORARY_PATTERN). A writer
    killed by SIGKILL cannot delete its own; the next successful write into the same FOLDER removes
    every file or staging folder of that naming whose PID is no longer a running process AND whose
    modification time is older than this process's start (taken as the moment it imported
    ewc_ref.io, at or after the true start: for the CLI, within its first second), so a
    concurrent writer's file is never touched (`remove_stale_temporaries`).

    Raises
    ------
    TypeError naming `path` when it is not a str or os.PathLike; ValueError when it is a folder or
    its folder does not exist; OSError naming `path` (never the temporary) when it cannot be written.
    """
    path = Path(safe_files.check_path(path))
    folder = path.parent if str(path.parent) else Path(".")
    if os.path.isdir(path):  # os.replace would fail naming the temporary file, or replace an empty folder
        raise ValueError(f"path: {path} is a folder; expected a file name")
    if not folder.is_dir():
        raise ValueError(f"{path}: output folder {folder} does not exist")
    try:
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=_prefix(path), suffix=".tmp")
    except OSError as error:  # a read-only folder, a full disk: name the output, not the temporary
        raise OSError(f"{path}: cannot create the output in {folder} ({error.strerror or error})") from error
    os.close(handle)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, OSError) and error.filename is None:  # e.g. a full disk: say where
            raise OSError(f"{path}: cannot write the output ({error.strerror or error}); nothing was written") from error
        raise
    remove_stale_temporaries(path)


@contextmanager
def atomic_folder(path):
    """Yield a staging folder beside the output folder `path`; on success move its files into `path`.

    Every file is made in ``.NAME.ewc-ref.PID.XXXXXXXX.tmp/`` (same file system), so an interrupted
    run changes nothing at `path`. On success: a `path` that does not exist is the staging folder
    renamed whole (one rename); an existing `path` (which may hold the user's other files) gets each
    staged file by one ``os.replace``, only after every file was made; files of other names in it
    are never touched. On any failure the staging folder is deleted.
    """
    path = Path(safe_files.check_path(path))
    parent = path.parent if str(path.parent) else Path(".")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"path: {path} exists and is not a folder")
    parent.mkdir(parents=True, exist_ok=True)
    try:
        staging = Path(tempfile.mkdtemp(dir=parent, prefix=_prefix(path), suffix=".tmp"))
    except OSError as error:
        raise OSError(f"{path}: cannot create the output folder in {parent} ({error.strerror or error})") from error
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the usual mode
        try:
            os.rename(staging, path)  # atomic when `path` does not exist (or is an empty folder)
        except OSError:
            for item in sorted(staging.iterdir()):
                os.replace(item, path / item.name)
            staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    remove_stale_temporaries(path)


def remove_stale_temporaries(path) -> list[Path]:
    """Delete the temporary files and staging folders of killed writers beside `path`; return them.

    A file or folder ``.NAME.ewc-ref.PID.XXXXXXXX.tmp`` in the folder of `path`, for ANY name, is
    stale when no process PID is running and it was last modified before this process imported
    ewc_ref.io. So is the same-name file of the earlier naming ``.NAME.PID.XXXXXXXX.tmp``. Best
    effort: what cannot be removed is left.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    earlier = re.compile(rf"^\.{re.escape(path.name)}\.([0-9]+)\.[a-z0-9_]{{8}}\.tmp$")
    removed = []
    for candidate in folder.iterdir():
        match = _OURS.match(candidate.name) or earlier.match(candidate.name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        try:
            if candidate.lstat().st_mtime >= _PROCESS_START:
                continue
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate)
            else:
                candidate.unlink()
            removed.append(candidate)
        except OSError:
            pass
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid() or pid <= 0:
        return True  # our own writes; pid 0 is no writer (kill(0) would signal our group): keep
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True  # running, under another user
    except (ProcessLookupError, OverflowError, ValueError):
        return False  # gone, or a number no process can have
    return True


def atomic_savez(path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez to a temporary file next to `path`, then rename it into place (never a pickle)."""
    arrays = {key: np.asarray(value) for key, value in arrays.items()}
    for key, value in arrays.items():
        if value.dtype.hasobject:  # np.savez would pickle it, and no reader of ours would accept it
            raise TypeError(f"{key}: expected a numeric or string array, got dtype {value.dtype}")
    with atomic_output(path) as tmp, open(tmp, "wb") as stream:
        np.savez(stream, **arrays)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
