"""Progress of long work (publish, import, export, sending a big file).

The layer doing the work reports through a `Meter`; only the command line draws it
(`cli/progress.py`), so the layers below never touch a terminal. A meter is called once
per piece of work with what it is and its size in bytes (None: not known yet), and gives
back the function to call with each further number of bytes done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Advance = Callable[[int], None]


class Meter(Protocol):
    def __call__(self, what: str, total: int | None = None, /) -> Advance: ...


def _nothing(_n: int) -> None:
    return None


def silent(_what: str, _total: int | None = None, /) -> Advance:
    """The meter of work nobody watches."""
    return _nothing


def prefixed(meter: Meter, prefix: str) -> Meter:
    """`meter`, each piece of work's name starting with `prefix` (say, whom it is for)."""
    def named(what: str, total: int | None = None, /) -> Advance:
        return meter(f"{prefix}{what}", total)
    return named


def running_total(advance: Advance) -> Advance:
    """An Advance for callers that report the bytes done so far, not each step (the
    registry upload does, and starts again from 0 when it retries)."""
    done = 0

    def report(total: int) -> None:
        nonlocal done
        advance(total - done)
        done = total
    return report


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class MeteredReader:
    """`source`, reporting each read's length: lets a copy that takes a file be watched."""

    def __init__(self, source: Readable, advance: Advance) -> None:
        self._source, self._advance = source, advance

    def read(self, n: int = -1, /) -> bytes:
        data = self._source.read(n)
        self._advance(len(data))
        return data
