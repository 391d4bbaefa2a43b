"""Atomic file writes: another process (a watcher, a link) never sees half a file."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import NotRegularFile

PART = ".part"


def fsync_path(path: Path, *, data_only: bool = False) -> None:
    """fsync a directory (its entries: a rename in it) or a file, by its path;
    `data_only`: fdatasync (a file's contents and size, not its times)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if data_only:
            os.fdatasync(fd)
        else:
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
        fsync_path(path.parent)
    except BaseException:
        f.close()
        part.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    with atomic_writer(path, mode=mode) as f:
        f.write(data)


def open_regular(path: Path) -> BinaryIO:
    """Open `path` for reading only if it is a regular file, never blocking: a FIFO or a
    device dropped where bundles are read would hang a plain open(), and a symlink could
    point anywhere. Raises NotRegularFile for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegularFile(f"{path.name} is a symbolic link, not a bundle file") from None
        raise
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        raise NotRegularFile(f"{path.name} is not a regular file "
                             f"({_FILE_TYPES.get(stat.S_IFMT(kind), 'special file')})")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


_FILE_TYPES = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket",
               stat.S_IFDIR: "a directory"}


def publish(part: Path, final: Path) -> Path:
    """Give the finished `part` its public name without ever replacing a file: `final`, or
    `final.1`, `final.2`... when that name is taken. Safe to repeat after a crash: a name
    that is already `part` itself (hard-linked before the crash) is kept. Returns the name."""
    candidate, n = final, 0
    while True:
        try:
            os.link(part, candidate)
            break
        except FileExistsError:
            if os.path.samefile(part, candidate):
                break
            n += 1
            candidate = final.with_name(f"{final.name}.{n}")
    os.unlink(part)
    fsync_path(final.parent)
    return candidate


def try_lock(path: Path) -> BinaryIO | None:
    """An exclusive lock on `path` (created if need be), held while the file stays open;
    None when another process (or another open file of this one) holds it. The holder's
    pid is written in it, for messages. The kernel drops the lock when the holder dies."""
    f = open(path, "a+b")  # noqa: SIM115 - returned, closed by the holder
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    f.truncate(0)
    f.write(f"{os.getpid()}\n".encode())
    f.flush()
    return f


def lock_holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


@contextmanager
def waiting_lock(path: Path, on_wait: Callable[[], None]) -> Iterator[None]:
    """Hold the lock on `path` for the block, waiting for it (after `on_wait`) if taken."""
    f = try_lock(path)
    if f is None:
        on_wait()
        f = open(path, "a+b")  # noqa: SIM115 - closed below
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        f.close()


def is_transient_name(name: str) -> bool:
    """Files a reader must skip: hidden files and anything still being written."""
    return name.startswith(".") or name.endswith(PART)
