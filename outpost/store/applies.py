"""Apply bookkeeping at the outpost, in the node's SQLite state (the apply loop: outpost/apply).

    applies         one row per apply: the commit, why it ran (auto, manual, rollback), how
                    far it got (phase), its outcome, durations, the failing service and the
                    reason, the images it waits for, and what Earth was last told of it
    apply_current   the release whose services run now (one row)

An apply's progress lives here, not in memory: a node killed in the middle of an apply
finds the row still `running` in its phase and resumes or rolls it back (apply/plan.py).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from .state import State

SCHEMA = """
CREATE TABLE IF NOT EXISTS applies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    commit_id TEXT NOT NULL, previous TEXT, applier TEXT NOT NULL, trigger TEXT NOT NULL,
    state TEXT NOT NULL, phase TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    started REAL NOT NULL, updated REAL NOT NULL, finished REAL,
    service TEXT, reason TEXT NOT NULL DEFAULT '',
    durations TEXT NOT NULL DEFAULT '{}', plan TEXT NOT NULL DEFAULT '{}',
    wanted TEXT NOT NULL DEFAULT '[]', requests INTEGER NOT NULL DEFAULT 0,
    next_request REAL, arrived INTEGER NOT NULL DEFAULT 0, retry_at REAL,
    reported TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS applies_commit ON applies (commit_id);
CREATE TABLE IF NOT EXISTS apply_current (
    one INTEGER PRIMARY KEY CHECK (one = 1), commit_id TEXT NOT NULL,
    apply_id INTEGER NOT NULL, since REAL NOT NULL);
"""

# apply states; RUNNING and WAITING are the active ones, at most one apply is active
RUNNING, WAITING = "running", "waiting-for-images"
APPLIED, ROLLED_BACK, FAILED, SUPERSEDED = "applied", "rolled-back", "failed", "superseded"
ACTIVE = (RUNNING, WAITING)
FINAL = (APPLIED, ROLLED_BACK, FAILED, SUPERSEDED)
# phases of a running apply, in order; ROLLBACK replaces CHECK when a service fails
PREPARE, SWITCH, CHECK, COMMIT, ROLLBACK, DONE = (
    "prepare", "switch", "check", "commit", "rollback", "done")


@dataclass(frozen=True)
class ApplyRow:
    id: int
    commit_id: str
    previous: str | None
    applier: str
    trigger: str
    state: str
    phase: str
    attempts: int
    started: float
    updated: float
    finished: float | None
    service: str | None
    reason: str
    durations: dict[str, float]
    plan: dict[str, Any]
    wanted: list[str]
    requests: int
    next_request: float | None
    arrived: bool
    retry_at: float | None
    reported: str

    @property
    def release(self) -> str:
        return self.commit_id[:12]

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "plan"}
        out["commit"] = out.pop("commit_id")
        out["changes"] = self.plan.get("terraform")  # the terraform applier's plan summary
        return out


@dataclass(frozen=True)
class Current:
    commit: str
    apply_id: int
    since: float


class ApplyStore:
    def __init__(self, state: State) -> None:
        self.state = state
        state.db.executescript(SCHEMA)

    # reading
    def get(self, apply_id: int) -> ApplyRow:
        rows = self.state.q("SELECT * FROM applies WHERE id = ?", apply_id)
        return _row(rows[0])

    def active(self) -> ApplyRow | None:
        rows = self.state.q("SELECT * FROM applies WHERE state IN (?, ?) ORDER BY id DESC "
                            "LIMIT 1", *ACTIVE)
        return _row(rows[0]) if rows else None

    def history(self, limit: int = 20) -> list[ApplyRow]:
        rows = self.state.q("SELECT * FROM applies ORDER BY id DESC LIMIT ?", limit)
        return [_row(r) for r in rows]

    def tried(self) -> set[str]:
        """Commits that were ever taken up by the loop: none of them is applied again
        by itself (a person can, with `outpost-node apply`)."""
        return {r["commit_id"] for r in self.state.q("SELECT DISTINCT commit_id FROM applies")}

    def applied_commits(self) -> set[str]:
        rows = self.state.q("SELECT DISTINCT commit_id FROM applies WHERE state = ?", APPLIED)
        return {r["commit_id"] for r in rows}

    def current(self) -> Current | None:
        rows = self.state.q("SELECT * FROM apply_current")
        if not rows:
            return None
        return Current(rows[0]["commit_id"], rows[0]["apply_id"], rows[0]["since"])

    def unreported(self) -> list[ApplyRow]:
        """Applies whose state Earth has not been told (waiting, or an outcome)."""
        rows = self.state.q("SELECT * FROM applies WHERE state != ? AND state != ? AND "
                            "reported != state ORDER BY id", RUNNING, SUPERSEDED)
        return [_row(r) for r in rows]

    # writing
    def start(self, commit: str, previous: str | None, applier: str, trigger: str,
              now: float) -> ApplyRow:
        with self.state.tx() as db:
            cur = db.execute(
                "INSERT INTO applies (commit_id, previous, applier, trigger, state, phase, "
                "started, updated) VALUES (?,?,?,?,?,?,?,?)",
                (commit, previous, applier, trigger, RUNNING, PREPARE, now, now))
            apply_id = int(cur.lastrowid or 0)
        return self.get(apply_id)

    def update(self, apply_id: int, now: float, **fields: Any) -> ApplyRow:
        for key in ("plan", "durations", "wanted"):
            if key in fields:
                fields[key] = json.dumps(fields[key])
        fields["updated"] = now
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.state.tx() as db:
            db.execute(f"UPDATE applies SET {cols} WHERE id = ?", (*fields.values(), apply_id))
        return self.get(apply_id)

    def finish(self, apply_id: int, state: str, now: float, *, reason: str = "",
               service: str | None = None, durations: dict[str, float] | None = None) -> None:
        """End an apply; an applied one becomes the running release in the same transaction."""
        row = self.get(apply_id)
        with self.state.tx() as db:
            db.execute("UPDATE applies SET state = ?, phase = ?, finished = ?, updated = ?, "
                       "reason = ?, service = ?, durations = ? WHERE id = ?",
                       (state, DONE, now, now, reason, service,
                        json.dumps(durations if durations is not None else row.durations),
                        apply_id))
            if state == APPLIED:
                db.execute("INSERT OR REPLACE INTO apply_current VALUES (1, ?, ?, ?)",
                           (row.commit_id, apply_id, now))

    def wait_for(self, apply_id: int, refs: list[str], now: float, reason: str) -> None:
        """The apply waits for `refs`; images it did not wait for before are asked for now."""
        row = self.get(apply_id)
        wanted = sorted(set(refs))
        ask = now if set(wanted) - set(row.wanted) or row.next_request is None \
            else row.next_request
        self.update(apply_id, now, state=WAITING, wanted=wanted, arrived=0, reason=reason,
                    next_request=ask)

    def images_arrived(self, refs: list[str], now: float) -> bool:
        """Mark the waiting apply that wants any of `refs`; True if one did."""
        active = self.active()
        if active is None or active.state != WAITING or not set(refs) & set(active.wanted):
            return False
        self.update(active.id, now, arrived=1)
        return True

    def resume(self, apply_id: int, now: float) -> None:
        """A waiting apply runs again from the start (its images arrived)."""
        with self.state.tx() as db:
            db.execute("UPDATE applies SET state = ?, phase = ?, arrived = 0, attempts = 0, "
                       "updated = ? WHERE id = ?", (RUNNING, PREPARE, now, apply_id))

    def retry_now(self, now: float) -> None:
        with self.state.tx() as db:
            db.execute("UPDATE applies SET retry_at = NULL, updated = ? WHERE state = ? AND "
                       "retry_at IS NOT NULL", (now, RUNNING))

    def mark_reported(self, apply_id: int, state: str) -> None:
        with self.state.tx() as db:
            db.execute("UPDATE applies SET reported = ? WHERE id = ?", (state, apply_id))


def _row(r: sqlite3.Row) -> ApplyRow:
    d = dict(r)
    for key in ("durations", "plan", "wanted"):
        d[key] = json.loads(d[key])
    d["arrived"] = bool(d["arrived"])
    return ApplyRow(**d)
