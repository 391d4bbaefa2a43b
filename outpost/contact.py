"""Contact plans: when one direction of the link is up.

Text format (docs/link-sim.md has the full description):

    # comments start with '#'; blank lines are ignored
    0s      10m          # a window from START to END
    25m     +5m          # END may be '+DURATION': a window 5 minutes long
    2h      forever      # END may be 'forever' (or '-', 'inf'): open-ended
    2030-01-01T00:00:00Z  2030-01-01T00:10:00Z   # absolute ISO-8601 times (UTC if no zone)
    repeat  90m          # optional: every window also recurs every 90 minutes

Relative times are offsets from the plan's origin (for link-sim, its first start, persisted
in its state directory; for a node, [delivery] contact_origin). Parsing needs no clock:
`ContactPlan.bind(origin)` turns a parsed plan into a `Schedule` of wall-clock (Unix) times,
which answers is_up / next_up / window_end.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from outpost.errors import OutpostError
from outpost.units import parse_duration

OPEN_END = ("forever", "-", "inf", "never")
_ISO_PREFIX = re.compile(r"^\d{4}-\d{2}-\d{2}")
# Merging back-to-back windows stops after this many steps: a plan whose repeated windows
# cover the whole period would otherwise never end, and "up for ever" is the right answer.
_MAX_MERGE_STEPS = 10_000


class ContactPlanError(ValueError):
    """The contact plan text is malformed; the message names the source and line."""


def parse_plan_duration(text: str) -> float:
    """Seconds in `text`, as parse_duration reads them (24h39m35s included); ValueError."""
    try:
        return parse_duration(text.strip())
    except OutpostError as e:
        raise ValueError(str(e)) from None


def parse_iso_time(text: str) -> float:
    """Unix time of an ISO-8601 timestamp; a timestamp without a zone is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO-8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass(frozen=True)
class PlanWindow:
    """One window as written: offsets from the origin, or Unix times if `absolute`."""

    start: float
    end: float  # math.inf for an open-ended window
    absolute: bool


@dataclass(frozen=True)
class ContactPlan:
    windows: tuple[PlanWindow, ...]
    period: float | None = None  # `repeat PERIOD`

    def bind(self, origin: float) -> Schedule:
        """The schedule in wall-clock time, relative windows counted from `origin`."""
        spans = []
        for w in self.windows:
            shift = 0.0 if w.absolute else origin
            spans.append((w.start + shift, w.end + shift))
        return Schedule(tuple(spans), self.period)

    @property
    def uses_origin(self) -> bool:
        return any(not w.absolute for w in self.windows)


@dataclass(frozen=True)
class Schedule:
    """Up/down periods in wall-clock time: `spans` are [start, end) windows.

    With `period`, window k of a span is [start + k*period, end + k*period) for k >= 0;
    the parser guarantees every span is at most one period long, so at most one
    occurrence of a span can contain a given instant.
    """

    spans: tuple[tuple[float, float], ...]
    period: float | None = None

    @classmethod
    def always_up(cls) -> Schedule:
        return cls(((-math.inf, math.inf),))

    def is_up(self, t: float) -> bool:
        return self._containing_end(t) is not None

    def next_up(self, t: float) -> float:
        """The first instant >= t when the link is up; math.inf if it never is again."""
        if self.is_up(t):
            return t
        return min((self._next_start(s, t) for s, _ in self.spans), default=math.inf)

    def window_end(self, t: float) -> float:
        """When the up period containing `t` ends (back-to-back windows count as one).

        Returns `t` itself if the link is down at `t`, math.inf if it never goes down.
        """
        end = self._containing_end(t)
        if end is None:
            return t
        for _ in range(_MAX_MERGE_STEPS):
            if math.isinf(end):
                return end
            further = self._containing_end(end)
            if further is None:
                return end
            end = further
        return math.inf

    def after_up_time(self, t: float, seconds: float) -> float:
        """The instant when the link has been up for `seconds` counted from `t` (what a
        transfer of that length needs): math.inf if the plan never gives that much."""
        for _ in range(_MAX_MERGE_STEPS):
            t = self.next_up(t)
            if math.isinf(t):
                return t
            end = self.window_end(t)
            if end - t >= seconds:
                return t + seconds
            seconds -= end - t
            t = end
        return math.inf

    def next_change(self, t: float) -> float:
        """The next instant after `t` when the link goes up or down (math.inf if never)."""
        return self.window_end(t) if self.is_up(t) else self.next_up(t)

    def _containing_end(self, t: float) -> float | None:
        """The latest end among the window occurrences that contain `t`, or None."""
        best: float | None = None
        for start, end in self.spans:
            occurrence = self._occurrence_at(start, end, t)
            if occurrence is not None and (best is None or occurrence > best):
                best = occurrence
        return best

    def _occurrence_at(self, start: float, end: float, t: float) -> float | None:
        """The end of the occurrence of [start, end) that contains `t`, if any."""
        if self.period is None or math.isinf(start):
            return end if start <= t < end else None
        k = math.floor((t - start) / self.period)
        if k < 0:
            return None
        shift = k * self.period
        return end + shift if start + shift <= t < end + shift else None

    def _next_start(self, start: float, t: float) -> float:
        if self.period is None or math.isinf(start):
            return start if start >= t else math.inf
        k = max(0, math.ceil((t - start) / self.period))
        return start + k * self.period


def parse_contact_plan(text: str, source: str = "<contact plan>") -> ContactPlan:
    """Parse the text format above; ContactPlanError names `source` and the line."""
    windows: list[PlanWindow] = []
    period: float | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}, line {number}"
        fields = line.split()
        try:
            if fields[0].lower() == "repeat":
                if period is not None:
                    raise ValueError("'repeat' given twice")
                period = _parse_repeat(fields)
            else:
                windows.append(_parse_window(fields))
        except ValueError as e:
            raise ContactPlanError(f"{where}: {e} (in {raw.strip()!r})") from None
    if not windows:
        raise ContactPlanError(f"{source}: no windows (write lines like '0s 10m')")
    if period is not None:
        _check_repeatable(windows, period, source)
    return ContactPlan(tuple(windows), period)


def _parse_repeat(fields: list[str]) -> float:
    if len(fields) != 2:
        raise ValueError("expected 'repeat PERIOD', e.g. 'repeat 90m'")
    period = parse_plan_duration(fields[1])
    if period <= 0:
        raise ValueError("the repeat period must be positive")
    return period


def _parse_window(fields: list[str]) -> PlanWindow:
    if len(fields) != 2:
        raise ValueError("expected 'START END', e.g. '0s 10m' or '1h +5m'")
    start_text, end_text = fields
    absolute = bool(_ISO_PREFIX.match(start_text))
    start = parse_iso_time(start_text) if absolute else parse_plan_duration(start_text)
    end = _parse_end(end_text, start, absolute)
    if end <= start:
        raise ValueError("the window ends before it starts")
    return PlanWindow(start, end, absolute)


def _parse_end(text: str, start: float, absolute: bool) -> float:
    if text.lower() in OPEN_END:
        return math.inf
    if text.startswith("+"):
        return start + parse_plan_duration(text[1:])
    if bool(_ISO_PREFIX.match(text)) != absolute:
        raise ValueError("START and END must both be offsets or both be ISO times")
    return parse_iso_time(text) if absolute else parse_plan_duration(text)


def _check_repeatable(windows: list[PlanWindow], period: float, source: str) -> None:
    for w in windows:
        if math.isinf(w.end):
            raise ContactPlanError(f"{source}: an open-ended window cannot repeat")
        if w.end - w.start > period:
            raise ContactPlanError(
                f"{source}: a window is longer than the repeat period "
                f"({w.end - w.start:g}s > {period:g}s)"
            )
