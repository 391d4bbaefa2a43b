"""Waiting for services to become healthy: every service must pass within its budget.

The loop is free of I/O: each service comes with a `Probe` (docker.py makes them from
containers), and time and sleep are passed in, so its rules are tested without Docker.

- A service whose container stopped or restarts has failed at once, with its exit code and
  the last lines of its log as the reason (an image that does not start).
- A service with a health check passes on its first good try; it fails after `retries`
  bad ones, tried `interval` apart, each cut off after `timeout` (a check that hangs).
- A service without one passes when its container is still running one `interval`
  (default 2 s) after the start, without having restarted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from ..errors import ApplyFailed
from ..release.config import Health
from .context import Stopping

DEFAULT_SETTLE = 2.0


class Probe(Protocol):
    def failure(self) -> str | None:
        """Why the service's container is not running (None while it runs)."""

    def check(self, health: Health) -> tuple[bool, str]:
        """Try the health check once: (passed, what it said)."""


@dataclass
class _Watch:
    health: Health | None
    due: float
    start: float
    tries: int = 0
    last: str = ""


def wait_healthy(probes: Mapping[str, Probe], checks: Mapping[str, Health | None],
                 clock: Callable[[], float], stop: threading.Event,
                 log: Callable[[str], None] = lambda _m: None) -> dict[str, int]:
    """Return each service's number of tries once all pass; raise ApplyFailed naming the
    first service that fails. `stop` ends the wait early (the node is stopping)."""
    start = clock()
    watches = {name: _Watch(checks.get(name), start if checks.get(name) else
                            start + DEFAULT_SETTLE, start) for name in probes}
    passed: dict[str, int] = {}
    while len(passed) < len(watches):
        now = clock()
        for name, w in watches.items():
            if name in passed or now < w.due:
                continue
            why = probes[name].failure()
            if why is not None:
                raise ApplyFailed(f"service {name}: {why}", service=name)
            if _try(name, w, probes[name], now, log):
                passed[name] = w.tries
        waiting = [w.due for n, w in watches.items() if n not in passed]
        if waiting and stop.wait(max(0.0, min(waiting) - clock())):
            raise Stopping("the node is stopping")
    return passed


def _try(name: str, w: _Watch, probe: Probe, now: float, log: Callable[[str], None]) -> bool:
    if w.health is None:
        log(f"{name}: running after {DEFAULT_SETTLE:.0f}s (no health check)")
        return True
    ok, said = probe.check(w.health)
    w.tries += 1
    if ok:
        log(f"{name}: healthy after {w.tries} tr{'y' if w.tries == 1 else 'ies'}")
        return True
    w.last = said.strip()
    if w.tries >= w.health.retries:
        raise ApplyFailed(f"service {name}: health check failed {w.tries} times in "
                          f"{now - w.start:.0f}s; last: {w.last or 'no output'}",
                          service=name)
    w.due = now + w.health.interval
    return False
