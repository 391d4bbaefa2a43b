"""The node's SQLite state, shared by the daemon and the CLI (WAL, short transactions).

Tables:
    peers      trusted nodes and their public keys
    messages   bundles we hold in custody until every unit is acknowledged
    units      what crosses the link: a whole bundle (idx -1) or one fragment of it
    seen       ids delivered to the application (duplicates are dropped by these)
    reasm      reassemblies in progress, and reasm_parts the fragments they hold
    rtt        the round-trip estimate per peer
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..delivery import RttEstimator
from ..errors import StateError

SCHEMA = """
CREATE TABLE IF NOT EXISTS peers (
    name TEXT PRIMARY KEY, pubkey BLOB NOT NULL, added REAL NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY, peer TEXT NOT NULL, kind TEXT NOT NULL, path TEXT NOT NULL,
    size INTEGER NOT NULL, priority INTEGER NOT NULL, created REAL NOT NULL,
    expires REAL NOT NULL, units INTEGER NOT NULL, state TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS units (
    id TEXT PRIMARY KEY, msg TEXT NOT NULL, idx INTEGER NOT NULL, peer TEXT NOT NULL,
    size INTEGER NOT NULL, state TEXT NOT NULL, name TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, taken_at REAL, next_retry REAL);
CREATE INDEX IF NOT EXISTS units_state ON units (peer, state);
CREATE INDEX IF NOT EXISTS units_msg ON units (msg);
CREATE TABLE IF NOT EXISTS seen (
    id TEXT PRIMARY KEY, src TEXT NOT NULL, kind TEXT NOT NULL, expires REAL NOT NULL,
    at REAL NOT NULL, finish TEXT);
CREATE TABLE IF NOT EXISTS reasm (
    parent TEXT PRIMARY KEY, src TEXT NOT NULL, kind TEXT NOT NULL, total INTEGER NOT NULL,
    count INTEGER NOT NULL, expires REAL NOT NULL, received INTEGER NOT NULL DEFAULT 0,
    started REAL NOT NULL);
CREATE TABLE IF NOT EXISTS reasm_parts (
    parent TEXT NOT NULL, idx INTEGER NOT NULL, PRIMARY KEY (parent, idx));
CREATE TABLE IF NOT EXISTS rtt (
    peer TEXT PRIMARY KEY, srtt REAL NOT NULL, rttvar REAL NOT NULL, samples INTEGER NOT NULL,
    last_ack REAL);
"""

# unit states: new (waiting for room in the outbox), queued (file in the outbox),
# flight (the link took it), acked; carried: exported to go by hand, never via the outbox
NEW, QUEUED, FLIGHT, ACKED, CARRIED = "new", "queued", "flight", "acked", "carried"


@dataclass(frozen=True)
class Unit:
    id: str
    msg: str
    idx: int
    peer: str
    size: int
    state: str
    name: str
    attempts: int
    taken_at: float | None
    next_retry: float | None


@dataclass(frozen=True)
class Message:
    id: str
    peer: str
    kind: str
    path: str
    size: int
    priority: int
    created: float
    expires: float
    units: int
    state: str
    meta: dict[str, Any]


class State:
    def __init__(self, path: Path) -> None:
        try:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
        except sqlite3.Error as e:
            raise StateError(f"cannot open state {path}: {e}") from e

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; taken IMMEDIATE so the CLI and the daemon never deadlock."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            raise StateError(f"state database error: {e}") from e

    def q(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise StateError(f"state database error: {e}") from e

    # peers
    def add_peer(self, name: str, key: bytes, now: float) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO peers VALUES (?, ?, ?)", (name, key, now))

    def keyring(self) -> dict[str, bytes]:
        return {r["name"]: bytes(r["pubkey"]) for r in self.q("SELECT * FROM peers")}

    # custody
    def add_message(self, m: Message, units: list[Unit]) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                       (m.id, m.peer, m.kind, m.path, m.size, m.priority, m.created,
                        m.expires, m.units, m.state, json.dumps(m.meta)))
            db.executemany("INSERT INTO units VALUES (?,?,?,?,?,?,?,?,?,?)",
                           [(u.id, u.msg, u.idx, u.peer, u.size, u.state, u.name,
                             u.attempts, u.taken_at, u.next_retry) for u in units])

    def message(self, msg_id: str) -> Message | None:
        rows = self.q("SELECT * FROM messages WHERE id = ?", msg_id)
        return _message(rows[0]) if rows else None

    def messages(self, state: str | None = None) -> list[Message]:
        if state is None:
            return [_message(r) for r in self.q("SELECT * FROM messages ORDER BY created")]
        return [_message(r) for r in
                self.q("SELECT * FROM messages WHERE state = ? ORDER BY created", state)]

    def units(self, peer: str, state: str) -> list[Unit]:
        rows = self.q(
            "SELECT units.* FROM units JOIN messages ON messages.id = units.msg "
            "WHERE units.peer = ? AND units.state = ? "
            "ORDER BY messages.priority DESC, messages.created, units.idx", peer, state)
        return [Unit(**dict(r)) for r in rows]

    def units_of(self, msg_id: str) -> list[Unit]:
        return [Unit(**dict(r)) for r in
                self.q("SELECT * FROM units WHERE msg = ? ORDER BY idx", msg_id)]

    def unit(self, unit_id: str) -> Unit | None:
        rows = self.q("SELECT * FROM units WHERE id = ?", unit_id)
        return Unit(**dict(rows[0])) if rows else None

    def set_unit(self, unit_id: str, **fields: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.tx() as db:
            db.execute(f"UPDATE units SET {cols} WHERE id = ?", (*fields.values(), unit_id))

    def claim(self, unit_id: str) -> bool:
        """Take a waiting unit for the outbox; False if another process already did."""
        with self.tx() as db:
            cur = db.execute("UPDATE units SET state = ?, attempts = attempts + 1 "
                             "WHERE id = ? AND state = ?", (QUEUED, unit_id, NEW))
            return cur.rowcount == 1

    def set_units(self, changes: list[tuple[str, dict[str, Any]]]) -> None:
        """Several unit updates in one transaction (one fsync for a whole ack batch)."""
        with self.tx() as db:
            for unit_id, fields in changes:
                cols = ", ".join(f"{k} = ?" for k in fields)
                db.execute(f"UPDATE units SET {cols} WHERE id = ?", (*fields.values(), unit_id))

    def units_by_id(self, ids: list[str]) -> list[Unit]:
        out: list[Unit] = []
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            marks = ",".join("?" * len(part))
            out += [Unit(**dict(r)) for r in
                    self.q(f"SELECT * FROM units WHERE id IN ({marks})", *part)]
        return out

    def set_message_state(self, msg_id: str, state: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE messages SET state = ? WHERE id = ?", (state, msg_id))

    def drop_units(self, msg_id: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM units WHERE msg = ?", (msg_id,))

    def prune_messages(self, before: float) -> int:
        """Forget finished messages (delivered or expired) created before `before`."""
        with self.tx() as db:
            cur = db.execute("DELETE FROM messages WHERE state != 'sending' AND created < ?",
                             (before,))
            return cur.rowcount

    def unacked_count(self, msg_id: str) -> int:
        row = self.q("SELECT count(*) AS n FROM units WHERE msg = ? AND state != ?",
                     msg_id, ACKED)
        return int(row[0]["n"])

    def queued_bytes(self, peer: str) -> int:
        row = self.q("SELECT coalesce(sum(size), 0) AS n FROM units WHERE peer = ? AND state = ?",
                     peer, QUEUED)
        return int(row[0]["n"])

    # seen
    def seen(self, bundle_id: str) -> sqlite3.Row | None:
        rows = self.q("SELECT * FROM seen WHERE id = ?", bundle_id)
        return rows[0] if rows else None

    def add_seen(self, bundle_id: str, src: str, kind: str, expires: float, now: float,
                 finish: list[tuple[str, str]] | None) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO seen VALUES (?,?,?,?,?,?)",
                       (bundle_id, src, kind, expires, now,
                        json.dumps(finish) if finish else None))

    def finished(self, bundle_id: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE seen SET finish = NULL WHERE id = ?", (bundle_id,))

    def unfinished_ids(self) -> list[str]:
        return [r["id"] for r in self.q("SELECT id FROM seen WHERE finish IS NOT NULL")]

    def unfinished_renames(self, bundle_id: str) -> list[tuple[str, str]]:
        row = self.seen(bundle_id)
        if row is None or row["finish"] is None:
            return []
        return [(str(a), str(b)) for a, b in json.loads(row["finish"])]

    def prune_seen(self, before: float) -> int:
        with self.tx() as db:
            cur = db.execute("DELETE FROM seen WHERE expires < ? AND finish IS NULL", (before,))
            return cur.rowcount

    # reassembly
    def reasm(self, parent: str) -> sqlite3.Row | None:
        rows = self.q("SELECT * FROM reasm WHERE parent = ?", parent)
        return rows[0] if rows else None

    def reassemblies(self) -> list[sqlite3.Row]:
        return self.q("SELECT * FROM reasm ORDER BY started")

    def has_part(self, parent: str, idx: int) -> bool:
        return bool(self.q("SELECT 1 FROM reasm_parts WHERE parent = ? AND idx = ?", parent, idx))

    def add_parts(self, parts: list[tuple[str, int, str, str, int, int, float]],
                  now: float) -> None:
        """Record fragments (parent, index, src, kind, total, count, expires) in one go."""
        with self.tx() as db:
            for parent, idx, src, kind, total, count, expires in parts:
                db.execute("INSERT OR IGNORE INTO reasm (parent, src, kind, total, count, "
                           "expires, started) VALUES (?,?,?,?,?,?,?)",
                           (parent, src, kind, total, count, expires, now))
                db.execute("INSERT OR IGNORE INTO reasm_parts VALUES (?, ?)", (parent, idx))
            for parent in {p[0] for p in parts}:
                db.execute("UPDATE reasm SET received = (SELECT count(*) FROM reasm_parts "
                           "WHERE parent = ?) WHERE parent = ?", (parent, parent))

    def drop_reasm(self, parent: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM reasm_parts WHERE parent = ?", (parent,))
            db.execute("DELETE FROM reasm WHERE parent = ?", (parent,))

    # rtt
    def rtt(self, peer: str, default: float) -> RttEstimator:
        rows = self.q("SELECT * FROM rtt WHERE peer = ?", peer)
        if not rows:
            return RttEstimator.seeded(default)
        r = rows[0]
        return RttEstimator(srtt=r["srtt"], rttvar=r["rttvar"], samples=r["samples"])

    def save_rtt(self, peer: str, est: RttEstimator, last_ack: float | None) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO rtt VALUES (?,?,?,?,?)",
                       (peer, est.srtt, est.rttvar, est.samples, last_ack))

    def last_ack(self, peer: str) -> float | None:
        rows = self.q("SELECT last_ack FROM rtt WHERE peer = ?", peer)
        return rows[0]["last_ack"] if rows else None


def _message(r: sqlite3.Row) -> Message:
    d = dict(r)
    d["meta"] = json.loads(d["meta"])
    return Message(**d)
