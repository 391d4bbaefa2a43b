"""The apply loop's rules, free of I/O: given the releases, the applies so far and the
time, what to do next. `ApplyLoop` (loop.py) gathers the facts and carries the step out.

- Releases apply in commit order: only a release newer than the running one is taken up,
  and of several ready ones the newest; the older ones are superseded without running.
- A release is taken up once. Whatever its outcome (applied, rolled back, failed), the loop
  does not apply it again by itself: Earth has to publish a newer commit (or a person runs
  `outpost-node apply`).
- An apply found half-way (the node was killed, or Docker went away) carries on: from the
  start when it had changed nothing yet, else again at most `max_attempts` times, and then
  it is rolled back. A rollback or a clean-up that was interrupted is finished.
- An apply that waits for images retries as soon as one arrives; it asks Earth again after
  a delay, at most `max_requests` times in all, and then fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..store.applies import CHECK, COMMIT, PREPARE, ROLLBACK, RUNNING, SWITCH, WAITING, ApplyRow

IDLE, WAIT, START, RESUME, RETRY, REQUEST, FAIL = (
    "idle", "wait", "start", "resume", "retry", "request", "fail")
DO_ROLLBACK, DO_COMMIT = "rollback", "commit"


@dataclass(frozen=True)
class Limits:
    max_attempts: int = 3  # runs of an apply that had started to change things
    max_requests: int = 3  # image requests to Earth for one apply


@dataclass(frozen=True)
class Step:
    action: str
    commit: str | None = None  # START: the release to apply
    apply_id: int | None = None  # the apply the action is for
    supersede: tuple[str, ...] = ()  # START: older ready releases that will never run
    reason: str = ""
    at: float | None = None  # WAIT: when to look again


def next_step(ready: Sequence[str], order: Mapping[str, int], tried: set[str],
              current: str | None, active: ApplyRow | None, now: float,
              limits: Limits = Limits(), auto: bool = True) -> Step:
    """`ready`: releases whose config and images are all present; `order`: each commit's
    place in the mirror's history (higher is newer); `tried`: commits taken up before;
    `current`: the running release; `active`: the apply that is running or waiting."""
    if active is not None and active.state == RUNNING:
        return _recover(active, now, limits)
    newer = _candidates(ready, order, tried, current) if auto else []
    if active is not None and active.state == WAITING:
        if newer and order[newer[-1]] > order.get(active.commit_id, -1):
            return Step(START, newer[-1], active.id, tuple(newer[:-1]),
                        reason=f"superseded by {newer[-1][:12]}")
        return _waiting(active, now, limits)
    if newer:
        return Step(START, newer[-1], supersede=tuple(newer[:-1]))
    return Step(IDLE)


def _candidates(ready: Sequence[str], order: Mapping[str, int], tried: set[str],
                current: str | None) -> list[str]:
    """Untried ready releases newer than the running one and every one tried, oldest
    first: a late release never applies over a newer one."""
    floor = max((order.get(c, -1) for c in {*tried, current} if c is not None), default=-1)
    found = {c for c in ready if c in order and c not in tried and order[c] > floor}
    return sorted(found, key=lambda c: order[c])


def _recover(active: ApplyRow, now: float, limits: Limits) -> Step:
    if active.retry_at is not None and now < active.retry_at:
        return Step(WAIT, apply_id=active.id, at=active.retry_at)
    if active.phase == PREPARE:
        return Step(RESUME, apply_id=active.id)
    if active.phase in (SWITCH, CHECK):
        if active.attempts < limits.max_attempts:
            return Step(RESUME, apply_id=active.id)
        return Step(DO_ROLLBACK, apply_id=active.id,
                    reason=f"interrupted {active.attempts} times while applying; "
                           f"last: {active.reason or 'the node stopped'}")
    if active.phase == COMMIT:
        return Step(DO_COMMIT, apply_id=active.id)
    if active.phase == ROLLBACK:
        return Step(DO_ROLLBACK, apply_id=active.id, reason=active.reason)
    return Step(IDLE)


def _waiting(active: ApplyRow, now: float, limits: Limits) -> Step:
    if active.arrived:
        return Step(RETRY, apply_id=active.id)
    if active.next_request is not None and now < active.next_request:
        return Step(WAIT, apply_id=active.id, at=active.next_request)
    if active.requests < limits.max_requests:
        return Step(REQUEST, apply_id=active.id)
    wanted = ", ".join(active.wanted)
    return Step(FAIL, apply_id=active.id,
                reason=f"{wanted} never arrived after {active.requests} request(s) to Earth"
                       + (f" ({active.reason})" if active.reason else ""))

