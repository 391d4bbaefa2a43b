"""What happens to each file on one direction of the link. Pure: no I/O, no clock.

Time (`now`, Unix seconds) and randomness (a `random.Random`) are passed in, so tests can
drive a `Direction` through hours of simulated link in microseconds and a seed reproduces
every decision.

One direction is a single transmitter: it takes the next file only when it is free and the
contact plan says it is up, the file then occupies it for size/bandwidth seconds
(serialisation), then propagates for latency + jitter. Loss, duplication, corruption and
reordering are decided per file when it is taken.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from outpost.contact import Schedule

# Extra delay of a reordered file, as a multiple of its "overtaking span" (see _reorder_delay).
_REORDER_MIN_FRACTION = 0.5
_REORDER_MIN_SPAN = 0.05  # seconds: even on an instant link, a held-back file stays back
_MAX_CORRUPT_BYTES = 4
# A duplicate arrives a little after the original, as a retransmitted copy would.
_DUPLICATE_MIN_SPREAD = 0.05


@dataclass(frozen=True)
class LinkParams:
    """The parameters of one direction (both directions share them)."""

    latency: float = 0.0  # one-way propagation delay, seconds
    jitter: float = 0.0  # extra delay, uniform in [0, jitter]
    loss: float = 0.0  # probability a file is dropped
    duplicate: float = 0.0  # probability a second copy is delivered
    corrupt: float = 0.0  # probability a delivered copy has a few bytes flipped
    reorder: float = 0.0  # probability a file is held back so later files overtake it
    bandwidth: int | None = None  # bytes per second; None is unlimited

    def problems(self) -> list[str]:
        """Human-readable reasons these parameters are invalid (empty when fine)."""
        found = []
        for name in ("latency", "jitter"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                found.append(f"{name} must be a finite duration >= 0 (got {value})")
        for name in ("loss", "duplicate", "corrupt", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                found.append(f"{name} must be a probability between 0 and 1 (got {value})")
        if self.bandwidth is not None and self.bandwidth <= 0:
            found.append(f"bandwidth must be positive (got {self.bandwidth})")
        return found


# (offset, xor mask): XOR keeps the patch independent of the file's bytes, and a mask in
# 1..255 guarantees the byte really changes.
Patch = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Copy:
    """One copy of a file that will reach the far inbox."""

    deliver_at: float
    corrupt: Patch = ()
    duplicate: bool = False


@dataclass(frozen=True)
class Transfer:
    """The link's decision for one file taken from the outbox."""

    size: int
    taken_at: float
    tx_start: float  # start of the serialisation attempt that completes (or is dropped)
    tx_end: float  # the link is busy with this file until then
    copies: tuple[Copy, ...] = ()  # empty when dropped
    dropped: str | None = None  # "loss", or "window" when no contact window fits it
    interrupted_at: float | None = None  # a window closed during the first attempt
    reordered: bool = False

    @property
    def held(self) -> bool:
        return self.interrupted_at is not None


@dataclass
class Direction:
    """One direction of the link: a transmitter, a schedule and a random source."""

    params: LinkParams
    schedule: Schedule = field(default_factory=Schedule.always_up)
    rng: random.Random = field(default_factory=random.Random)
    busy_until: float = -math.inf

    def serialisation_time(self, size: int) -> float:
        return 0.0 if self.params.bandwidth is None else size / self.params.bandwidth

    def free_at(self, now: float) -> float:
        """The first instant >= now at which the link could start sending a file."""
        return self.schedule.next_up(max(now, self.busy_until))

    def can_take(self, now: float) -> bool:
        return self.free_at(now) <= now

    def is_up(self, now: float) -> bool:
        return self.schedule.is_up(now)

    def occupy(self, until: float) -> None:
        """Mark the link busy until `until` (files recovered after a restart)."""
        self.busy_until = max(self.busy_until, until)

    def offer(self, size: int, now: float, start: float | None = None) -> Transfer:
        """Take a file of `size` bytes at `now`; decide everything that will happen to it.

        `start` is when serialisation really began: a file that was already waiting when
        the link became free starts at that moment, not at the poll that noticed it.
        Callers must only offer when `can_take(now)`.
        """
        begin = self.free_at(now if start is None else min(start, now))
        ser = self.serialisation_time(size)
        attempt = self._schedule_attempt(begin, ser)
        if attempt.dropped is not None:
            return self._finish(attempt.transfer(size, now, dropped=attempt.dropped))
        if self.rng.random() < self.params.loss:
            return self._finish(attempt.transfer(size, now, dropped="loss"))
        return self._finish(self._deliver(size, now, attempt, ser))

    def _schedule_attempt(self, begin: float, ser: float) -> _Attempt:
        """When the serialisation that completes starts and ends, given contact windows.

        A file that cannot finish before the window closes is interrupted at the close and
        restarted from scratch at the next window; if it does not fit that whole window
        either, it never will fit a window like it, so the link gives up on it (dropped,
        reason "window") instead of blocking the direction for ever.
        """
        end = begin + ser
        close = self.schedule.window_end(begin)
        if end <= close:
            return _Attempt(begin, end)
        restart = self.schedule.next_up(close)
        if math.isinf(restart):
            return _Attempt(begin, close, interrupted_at=close, dropped="window")
        if restart + ser > self.schedule.window_end(restart):
            return _Attempt(restart, restart, interrupted_at=close, dropped="window")
        return _Attempt(restart, restart + ser, interrupted_at=close)

    def _deliver(self, size: int, now: float, attempt: _Attempt, ser: float) -> Transfer:
        arrival = attempt.tx_end + self.params.latency + self._jitter()
        reordered = self.params.reorder > 0 and self.rng.random() < self.params.reorder
        if reordered:
            arrival += self._reorder_delay(ser)
        copies = [Copy(arrival, self._corruption(size))]
        if self.params.duplicate > 0 and self.rng.random() < self.params.duplicate:
            spread = max(_DUPLICATE_MIN_SPREAD, self.params.jitter)
            later = arrival + self.rng.uniform(0.0, spread)
            copies.append(Copy(later, self._corruption(size), duplicate=True))
        return attempt.transfer(size, now, copies=tuple(copies), reordered=reordered)

    def _finish(self, transfer: Transfer) -> Transfer:
        self.busy_until = max(self.busy_until, transfer.tx_end)
        return transfer

    def _jitter(self) -> float:
        return self.rng.uniform(0.0, self.params.jitter) if self.params.jitter > 0 else 0.0

    def _reorder_delay(self, ser: float) -> float:
        """Long enough for the next few files to overtake: they arrive at most about
        latency + jitter + their own serialisation after this one would have."""
        span = max(_REORDER_MIN_SPAN, self.params.latency + self.params.jitter + 3 * ser)
        return self.rng.uniform(_REORDER_MIN_FRACTION * span, span)

    def _corruption(self, size: int) -> Patch:
        if size == 0 or self.params.corrupt <= 0 or self.rng.random() >= self.params.corrupt:
            return ()
        count = self.rng.randint(1, min(_MAX_CORRUPT_BYTES, size))
        offsets = sorted(self.rng.sample(range(size), count))
        return tuple((offset, self.rng.randint(1, 255)) for offset in offsets)


@dataclass(frozen=True)
class _Attempt:
    tx_start: float
    tx_end: float
    interrupted_at: float | None = None
    dropped: str | None = None

    def transfer(
        self,
        size: int,
        now: float,
        *,
        copies: tuple[Copy, ...] = (),
        dropped: str | None = None,
        reordered: bool = False,
    ) -> Transfer:
        return Transfer(
            size=size,
            taken_at=now,
            tx_start=self.tx_start,
            tx_end=self.tx_end,
            copies=copies,
            dropped=dropped,
            interrupted_at=self.interrupted_at,
            reordered=reordered,
        )


def apply_patch(chunk: bytes, patch: Patch, base: int = 0) -> bytes:
    """`chunk`, which starts at file offset `base`, with the patch's bytes flipped."""
    out = bytearray(chunk)
    for offset, mask in patch:
        if base <= offset < base + len(out):
            out[offset - base] ^= mask
    return bytes(out)


def direction_rng(seed: int | None, label: str) -> random.Random:
    """The random source of one direction: reproducible with a seed, independent per label."""
    return random.Random(None if seed is None else f"{seed}/{label}")
