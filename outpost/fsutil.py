"""Atomic file writes: another process (a watcher, a link) never sees half a file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

PART = ".part"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: Path, *, mode: int | None = None) -> Iterator[BinaryIO]:
    """Write `path` through `path.part`, fsync, then rename; the `.part` is removed on error.

    The temporary name is hidden (leading dot) so watchers that skip dotfiles ignore it too.
    """
    # pid and a random tag keep two processes writing the same name from sharing a .part
    part = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(3).hex()}{PART}")
    f = open(part, "wb")  # noqa: SIM115 - closed below on every path
    try:
        if mode is not None:
            os.fchmod(f.fileno(), mode)
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(part, path)
        fsync_dir(path.parent)
    except BaseException:
        f.close()
        part.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    with atomic_writer(path, mode=mode) as f:
        f.write(data)


def is_transient_name(name: str) -> bool:
    """Files a reader must skip: hidden files and anything still being written."""
    return name.startswith(".") or name.endswith(PART)
