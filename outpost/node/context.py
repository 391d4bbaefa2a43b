"""What every part of a running node shares: its home, state, key and clock."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..codec import Limits
from ..home import Home
from ..store.state import State

log = logging.getLogger("outpost")


@dataclass
class Node:
    home: Home
    state: State
    seed: bytes
    clock: Callable[[], float] = field(default=time.time)

    @property
    def name(self) -> str:
        return self.home.name

    @property
    def limits(self) -> Limits:
        s = self.home.settings
        return Limits(max_header=s.max_header, max_raw=s.max_bundle)

    def peers(self) -> list[str]:
        return sorted(self.state.keyring())


def open_node(home: Home, clock: Callable[[], float] = time.time) -> Node:
    for d in (home.inbox, home.quarantine, home.spool / "custody", home.spool / "reasm",
              home.spool / "staging"):
        d.mkdir(parents=True, exist_ok=True)
    return Node(home=home, state=State(home.state_db), seed=home.signing_seed(), clock=clock)
