"""How far off a peer's clock seems, from the creation times of its bundles (pure).

A bundle created at `created` by the peer's clock arrives at `now` by ours; `now -
created` is the time it took plus how far the peer's clock is behind ours. The smallest
such difference over a while (acks and bundles that crossed at once) is the best estimate
of the offset; a negative one means the peer's clock is ahead (nothing arrives before it
was made). A peer far enough behind that every bundle it sends looks old, or ahead, is
worth a clear word: its bundles expire early, or ours look expired to it.
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW = 3600.0  # the estimate forgets samples older than this


@dataclass
class ClockWatch:
    offset: float | None = None  # the smallest now - created in the current window
    since: float = 0.0  # when the current window started

    def observe(self, created: float, now: float) -> bool:
        """Take one bundle's creation time; True when the estimate changed."""
        sample = now - created
        if self.offset is None or now - self.since > WINDOW or sample < self.offset:
            changed = self.offset is None or abs(sample - self.offset) >= 1.0
            if self.offset is None or now - self.since > WINDOW:
                self.since = now
            self.offset = sample
            return changed
        return False


def clock_verdict(offset: float | None, skew: float, rtt: float) -> str | None:
    """What to tell a person about a peer's clock, or None when it looks right."""
    if offset is None:
        return None
    if offset < -skew:
        return f"ahead of ours by at least {_human(-offset)}"
    if offset > max(skew, 4 * rtt):
        return (f"about {_human(offset)} behind ours (or everything it sends takes that long "
                "to arrive)")
    return None


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
