"""Durable file writes: fsync, and write-to-a-temporary-name-then-rename, so a kill leaves the old file or the new
one, never half of one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def fsync(path: str | Path) -> None:
    """Flush a file, or a directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a temporary name beside ``path``, fsync it, rename it over ``path``, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    write(tmp)
    fsync(tmp)
    os.replace(tmp, path)
    fsync(path.parent)
