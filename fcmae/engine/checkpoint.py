"""Atomic checkpoint files and resume resolution.

A checkpoint is written to a temporary file in the destination's directory, flushed and
fsync'ed, then renamed over the destination with :func:`os.replace` (atomic on POSIX), and the
directory entry is fsync'ed too. A process killed at any moment leaves either the previous file
or the new one, never a truncated mix; a failed write removes its temporary file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

_TMP_PREFIX = ".tmp-"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot open directories
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temp file + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict written by :func:`atomic_save`; a clear error if unreadable.

    ``weights_only=False``: checkpoints hold plain python objects (config dicts, RNG states);
    only load checkpoints you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # any unpickling failure means a bad file
        raise ValueError(f"checkpoint {path} is not readable ({err})") from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path} does not hold a dict (got {type(ckpt).__name__})")
    return ckpt


def find_latest_checkpoint(
    root: str | os.PathLike, filename: str, exclude: str | os.PathLike | None = None
) -> Path | None:
    """Newest ``<run>/<filename>`` (by modification time) among run dirs under ``root``.

    Searches ``root/filename`` and ``root/*/filename``; ``exclude`` skips one run dir
    (typically the current, just-created one). Returns None when there is none.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    excluded = Path(exclude).resolve() if exclude is not None else None
    candidates = [root / filename, *root.glob(f"*/{filename}")]
    found = [p for p in candidates if p.is_file()]
    if excluded is not None:
        found = [p for p in found if p.parent.resolve() != excluded]
    if not found:
        return None
    return max(found, key=lambda p: (p.stat().st_mtime_ns, str(p)))


def resolve_resume(
    resume: str | os.PathLike | None,
    runs_root: str | os.PathLike,
    filename: str,
    exclude: str | os.PathLike | None = None,
) -> Path | None:
    """Turn a ``resume`` setting into a checkpoint path, or None for a fresh start.

    * ``None`` / ``""`` / ``"none"`` / ``False``: fresh start;
    * ``"auto"``: the latest ``filename`` under ``runs_root`` (fresh start, logged, if none);
    * a file path: that checkpoint; a directory: ``<dir>/<filename>``.

    A given path that does not exist is a ValueError naming it.
    """
    if resume is None or resume is False or str(resume).lower() in ("", "none", "null", "false"):
        return None
    if str(resume) == "auto":
        found = find_latest_checkpoint(runs_root, filename, exclude)
        if found is None:
            log.info("resume=auto: no %s under %s, starting fresh", filename, runs_root)
        return found
    path = Path(resume)
    if path.is_dir():
        path = path / filename
    if not path.is_file():
        raise ValueError(
            f"resume={resume}: no checkpoint at {path}; pass an existing checkpoint file or run "
            "directory, resume=auto, or resume=null"
        )
    return path
