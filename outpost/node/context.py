"""What every part of a running node shares: its home, state, key and clock."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..codec import Limits
from ..delivery import ClockWatch, clock_verdict
from ..errors import StateError
from ..home import Home
from ..store.state import State

log = logging.getLogger("outpost")


def about(bundle: str, kind: str | None, peer: str | None) -> dict[str, str | None]:
    """The `extra` of a log call about one bundle: `--log-format json` prints these as
    fields (the text format already says them in words)."""
    return {"bundle": bundle, "kind": kind, "peer": peer}


@dataclass
class Node:
    home: Home
    state: State
    seed: bytes
    clock: Callable[[], float] = field(default=time.time)
    clocks: dict[str, ClockWatch] = field(default_factory=dict)
    _said: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.home.name

    @property
    def limits(self) -> Limits:
        s = self.home.settings
        return Limits(max_header=s.max_header, max_raw=s.max_bundle)

    def peers(self) -> list[str]:
        return sorted(self.state.keyring())

    def observe_clock(self, peer: str, created: float) -> None:
        """Learn how far `peer`'s clock is off from a bundle it made; keep it for `status`
        and say so in the log (once an hour) when it is off by more than the skew allowed."""
        now = self.clock()
        watch = self.clocks.setdefault(peer, ClockWatch())
        if not watch.observe(created, now) or watch.offset is None:
            return
        self.state.save_clock(peer, watch.offset, now)
        s = self.home.settings
        verdict = clock_verdict(watch.offset, s.clock_skew, s.rtt)
        if verdict and now - self._said.get(peer, 0.0) > 3600:
            self._said[peer] = now
            log.warning("%s's clock is %s: what it sends may expire early, or ours look "
                        "expired to it; fix its clock or allow for it with [delivery] "
                        "clock_skew (now %.0fs)", peer, verdict, s.clock_skew)


def open_node(home: Home, clock: Callable[[], float] = time.time, *,
              check: bool = False) -> Node:
    """The node of `home`, its state opened. Refused when the state was lost (missing or
    empty) in a home that was in use: starting afresh would silently drop its peers and the
    messages in its custody. `check` also runs SQLite's own check of the file (the daemon
    does, at start)."""
    for d in (home.inbox, home.quarantine, home.custody, home.reasm, home.staging):
        d.mkdir(parents=True, exist_ok=True)
    used = signs_of_use(home)
    db = home.state_db
    if used and (not db.exists() or db.stat().st_size == 0):
        raise StateError(f"{db} is missing or empty, but this home was in use ({used}): the "
                         "peers and the custody of messages were in it. Restore it from a "
                         "backup, or rebuild what can be with `outpost-node repair --home "
                         f"{home.path}`")
    state = State(db)
    verdict = state.intact() if check else "ok"
    if verdict != "ok" or (used and not state.keyring()):
        state.close()
        what = f"damaged ({verdict})" if verdict != "ok" else "without peers"
        raise StateError(f"{db} is {what}, but this home was in use ({used}). Restore it from "
                         "a backup, or rebuild what can be with `outpost-node repair --home "
                         f"{home.path}`")
    return Node(home=home, state=state, seed=home.signing_seed(), clock=clock)


def signs_of_use(home: Home) -> str:
    """What shows this home had peers or messages ("" for a fresh one)."""
    found = []
    custody = [p for p in home.custody.glob("*.opb")] if home.custody.is_dir() else []
    if custody:
        found.append(f"{len(custody)} custody cop{'y' if len(custody) == 1 else 'ies'}")
    peers = sorted(p.name for p in (home.path / "outbox").glob("*") if p.is_dir())
    if peers:
        found.append("peers " + ", ".join(peers))
    return "; ".join(found)
