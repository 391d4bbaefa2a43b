"""Progress bars on stderr (rich), for a person at a terminal; nothing for scripts."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..progress import Advance, Meter, silent

if TYPE_CHECKING:
    from rich.console import Console


@contextmanager
def progress_bars(show: bool = True, console: Console | None = None) -> Iterator[Meter]:
    """A meter drawing one bar per piece of work, while the block runs; `silent` when
    `show` is off (--json) or stderr is not a terminal. rich is imported only here (30 ms
    that short commands should not pay)."""
    if not show or (console is None and not sys.stderr.isatty()):
        yield silent
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(),
                  console=console or Console(stderr=True)) as bars:
        def meter(what: str, total: int | None = None, /) -> Advance:
            task = bars.add_task(what, total=total)
            return lambda n: bars.advance(task, n)
        yield meter
