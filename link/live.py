"""The live view of link-sim: one line per direction, redrawn in place on a terminal.

Plain ANSI escapes, no curses: the lines sit below whatever was logged before them, and
the log keeps scrolling above them (EventLog erases them before each line it writes).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

from outpost.units import format_duration, format_size

PERIOD = 0.25  # seconds between redraws
WINDOW = 5.0  # seconds of deliveries the throughput is averaged over
UP = "\x1b[{n}F"  # cursor to the start of the line n lines up
CLEAR_BELOW = "\x1b[J"  # erase from the cursor to the end of the screen
CLEAR_LINE = "\x1b[2K"


class Throughput:
    """Bytes per second delivered over the last WINDOW seconds, from running totals."""

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, total: int) -> float:
        """Record the total delivered so far at `now`; return the current rate."""
        self._samples.append((now, total))
        # Keep one sample at or before the window's start, so the window is fully covered.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()
        first_at, first_total = self._samples[0]
        span = now - first_at
        return (total - first_total) / span if span > 0 else 0.0


def direction_line(label: str, stats: dict[str, Any], rate: float, now: float) -> str:
    """One direction as a line, from Channel.stats_json's figures and a throughput.

    The figures go in the order a file meets them (outbox, link, inbox) and the rarer
    problems last, as they are the first cut off on a narrow terminal."""
    names = f"{stats['from'] or '?'}->{stats['to'] or '?'}"
    delivered, dropped = stats["delivered"], stats["dropped"]
    parts = [
        f"{label} {names}",
        _window(stats["up"], stats["next_change"], now),
        f"queued {stats['queued']}",
        f"in flight {stats['in_flight']} ({format_size(stats['in_flight_bytes'])})",
        f"{format_size(rate)}/s",
        f"delivered {delivered['count']} ({format_size(delivered['bytes'])})",
        f"dropped {dropped['count']} dup {stats['duplicated']['count']} "
        f"corrupt {stats['corrupted']['count']}",
    ]
    return "  ".join(parts)


def _window(up: bool, next_change: str | None, now: float) -> str:
    state = "up" if up else "DOWN"
    if next_change is None:  # no plan, or no change ever again
        return state
    at = datetime.fromisoformat(next_change).timestamp()
    return f"{state}, {'down' if up else 'up'} in {format_duration(max(0.0, at - now))}"


def fit(text: str, width: int) -> str:
    """Cut a line short of the terminal's width: a line that fills the last column makes
    some terminals wrap, and the cursor would no longer be where the redraw expects."""
    return text[: max(1, width - 1)]


def terminal_width(stream: TextIO) -> int:
    """The width of the terminal `stream` writes to. shutil.get_terminal_size asks stdout's,
    which is wrong when only stdout is redirected; it is the fallback (COLUMNS, or 80)."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):  # no fd (StringIO), or not a terminal
        columns = 0
    return columns or shutil.get_terminal_size().columns  # 0: a pty nobody sized


class LiveLines:
    """A few lines at the bottom of a terminal, redrawn in place at most every `period`.

    The cursor is left at the start of the line below them, so a redraw moves up over them
    and writes them again, and erase() moves up and clears: whatever is written next takes
    their place.
    """

    def __init__(
        self,
        stream: TextIO,
        clock: Callable[[], float] = time.monotonic,
        width: Callable[[], int] | None = None,
        period: float = PERIOD,
    ) -> None:
        self.stream = stream
        self.clock = clock
        self.width = width if width is not None else lambda: terminal_width(stream)
        self.period = period
        self.shown = 0  # lines on screen now
        self._longest = 0  # the longest of them: a narrower terminal may rewrap it
        self._drawn_at = -math.inf

    def due(self) -> bool:
        """Time for a redraw: the period is over, or the lines were erased."""
        return self.shown == 0 or self.clock() - self._drawn_at >= self.period

    def draw(self, lines: list[str]) -> None:
        width = self.width()
        self._forget_if_rewrapped(width)
        lines = [fit(line, width) for line in lines]
        out = [UP.format(n=self.shown) if self.shown else ""]
        out += [f"{CLEAR_LINE}{line}\n" for line in lines]
        if len(lines) < self.shown:  # fewer lines than before: clear the rest
            out.append(CLEAR_BELOW)
        self._write("".join(out))
        self.shown = len(lines)
        self._longest = max(map(len, lines), default=0)
        self._drawn_at = self.clock()

    def erase(self) -> None:
        self._forget_if_rewrapped(self.width())
        if self.shown:
            self._write(UP.format(n=self.shown) + CLEAR_BELOW)
            self.shown = 0

    def _forget_if_rewrapped(self, width: int) -> None:
        """Lines longer than a terminal made narrower are wrapped onto more rows by some
        terminals and cut by others: how far up they start is unknown, so they are left
        on screen and the next lines go below them rather than over what was logged."""
        if self._longest > width:
            self.shown = self._longest = 0

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
