"""The node's SQLite state, shared by the daemon and the CLI (WAL, short transactions).

Tables:
    peers       trusted nodes and their public keys
    messages    bundles we hold in custody until the peer acknowledges the whole of it
    units       what crosses the link: a whole bundle (idx -1) or one fragment of it
    seen        (sender, id) of what was delivered: duplicates are dropped by these
    seen_floor  per sender, the latest expiry among seen ids pruned: anything expiring
                before it is a replay, whatever the clock says
    reasm       reassemblies in progress by (sender, parent), reasm_parts their fragments
                and reasm_repairs the FEC repair fragments kept beside them
    rtt         the round-trip estimate per peer
    loss        the loss rate observed per peer (it sizes FEC)
    traffic     bytes and files to and from each peer per minute (the status page's chart)
    clocks      how far each peer's clock seems off from ours (delivery/clock.py)

Ids are unique per sender only, so everything a receiver keeps is keyed by (sender, id).
The schema's version is SQLite's user_version; `migrate` brings an older home up to date.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..codec import Repair
from ..delivery import LossEstimator, RttEstimator
from ..errors import StateError

SCHEMA = """
CREATE TABLE IF NOT EXISTS peers (
    name TEXT PRIMARY KEY, pubkey BLOB NOT NULL, added REAL NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY, peer TEXT NOT NULL, kind TEXT NOT NULL, path TEXT NOT NULL,
    size INTEGER NOT NULL, priority INTEGER NOT NULL, created REAL NOT NULL,
    expires REAL NOT NULL, units INTEGER NOT NULL, state TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}', whole_due REAL, rounds INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS units (
    id TEXT PRIMARY KEY, msg TEXT NOT NULL, idx INTEGER NOT NULL, peer TEXT NOT NULL,
    size INTEGER NOT NULL, state TEXT NOT NULL, name TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, taken_at REAL, next_retry REAL,
    offset INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS units_state ON units (peer, state);
CREATE INDEX IF NOT EXISTS units_msg ON units (msg);
CREATE TABLE IF NOT EXISTS seen (
    src TEXT NOT NULL, id TEXT NOT NULL, kind TEXT NOT NULL, expires REAL NOT NULL,
    at REAL NOT NULL, finish TEXT, PRIMARY KEY (src, id));
CREATE TABLE IF NOT EXISTS seen_floor (src TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS reasm (
    src TEXT NOT NULL, parent TEXT NOT NULL, kind TEXT NOT NULL, total INTEGER NOT NULL,
    count INTEGER NOT NULL, expires REAL NOT NULL, received INTEGER NOT NULL DEFAULT 0,
    started REAL NOT NULL, PRIMARY KEY (src, parent));
CREATE TABLE IF NOT EXISTS reasm_parts (
    src TEXT NOT NULL, parent TEXT NOT NULL, idx INTEGER NOT NULL, offset INTEGER,
    length INTEGER, PRIMARY KEY (src, parent, idx));
CREATE TABLE IF NOT EXISTS reasm_repairs (
    src TEXT NOT NULL, parent TEXT NOT NULL, idx INTEGER NOT NULL, offset INTEGER NOT NULL,
    first INTEGER NOT NULL, k INTEGER NOT NULL, m INTEGER NOT NULL, j INTEGER NOT NULL,
    block INTEGER NOT NULL, PRIMARY KEY (src, parent, idx));
CREATE TABLE IF NOT EXISTS loss (
    peer TEXT PRIMARY KEY, rate REAL NOT NULL, samples INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS traffic (
    peer TEXT NOT NULL, dir TEXT NOT NULL, minute INTEGER NOT NULL, bytes INTEGER NOT NULL,
    files INTEGER NOT NULL, resent INTEGER NOT NULL, PRIMARY KEY (peer, dir, minute));
CREATE TABLE IF NOT EXISTS clocks (
    peer TEXT PRIMARY KEY, offset REAL NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rtt (
    peer TEXT PRIMARY KEY, srtt REAL NOT NULL, rttvar REAL NOT NULL, samples INTEGER NOT NULL,
    last_ack REAL);
"""

SCHEMA_VERSION = 1
# Version 0 keyed seen and reassembly by id alone; version 1 by (sender, id).
MIGRATE_TO_1 = """
ALTER TABLE seen RENAME TO seen_v0;
ALTER TABLE reasm RENAME TO reasm_v0;
ALTER TABLE reasm_parts RENAME TO reasm_parts_v0;
""" + SCHEMA + """
INSERT OR IGNORE INTO seen SELECT src, id, kind, expires, at, finish FROM seen_v0;
INSERT OR IGNORE INTO reasm SELECT src, parent, kind, total, count, expires, received, started
    FROM reasm_v0;
INSERT OR IGNORE INTO reasm_parts SELECT r.src, p.parent, p.idx, NULL, NULL
    FROM reasm_parts_v0 p JOIN reasm_v0 r ON r.parent = p.parent;
DROP TABLE seen_v0;
DROP TABLE reasm_v0;
DROP TABLE reasm_parts_v0;
"""

# A message in custody is sending until the peer acknowledges the whole of it (delivered),
# its lifetime ends (expired), or it cannot be sent any more (failed: its custody copy is
# gone, say).
SENDING, DELIVERED, EXPIRED, FAILED = "sending", "delivered", "expired", "failed"
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
    offset: int = 0  # where its bytes start in the message's custody file


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
    whole_due: float | None = None  # every unit acked: the peer's ack of the whole is due
    rounds: int = 0  # times the whole was sent again because the peer lost its reassembly


class State:
    def __init__(self, path: Path) -> None:
        try:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.migrate()
        except sqlite3.Error as e:
            raise StateError(f"cannot open state {path}: {e}; if it is damaged, restore it "
                             "from a backup or run `outpost-node repair`") from e

    def migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        old = self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'seen'").fetchone()
        if version == 0 and old is not None:
            self.db.executescript("BEGIN IMMEDIATE;" + MIGRATE_TO_1 + "COMMIT;")
            self._add_columns("messages", whole_due="REAL",
                              rounds="INTEGER NOT NULL DEFAULT 0")
            if self._add_columns("units", offset="INTEGER NOT NULL DEFAULT 0"):
                self.db.execute("UPDATE units SET offset = max(idx, 0) * (SELECT json_extract("
                                "meta, '$.fragment_size') FROM messages WHERE id = units.msg)")
        self.db.executescript(SCHEMA)
        self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _add_columns(self, table: str, **columns: str) -> bool:
        have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
        added = False
        for name, kind in columns.items():
            if name not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
                added = True
        return added

    def intact(self) -> str:
        """SQLite's own check of the file: "ok", or what is wrong."""
        return str(self.db.execute("PRAGMA quick_check").fetchone()[0])

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
            db.execute("INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       (m.id, m.peer, m.kind, m.path, m.size, m.priority, m.created,
                        m.expires, m.units, m.state, json.dumps(m.meta), m.whole_due,
                        m.rounds))
            self._insert_units(db, units)

    @staticmethod
    def _insert_units(db: sqlite3.Connection, units: list[Unit]) -> None:
        db.executemany("INSERT INTO units VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                       [(u.id, u.msg, u.idx, u.peer, u.size, u.state, u.name, u.attempts,
                         u.taken_at, u.next_retry, u.offset) for u in units])

    def split_unit(self, unit: Unit, halves: list[Unit]) -> None:
        """Replace a unit the link could not carry by smaller ones (new indexes)."""
        with self.tx() as db:
            db.execute("DELETE FROM units WHERE id = ?", (unit.id,))
            self._insert_units(db, halves)
            db.execute("UPDATE messages SET units = units + ? WHERE id = ?",
                       (len(halves) - 1, unit.msg))

    def next_index(self, msg_id: str) -> int:
        return int(self.q("SELECT coalesce(max(idx), -1) + 1 AS n FROM units WHERE msg = ?",
                          msg_id)[0]["n"])

    def message(self, msg_id: str) -> Message | None:
        rows = self.q("SELECT * FROM messages WHERE id = ?", msg_id)
        return _message(rows[0]) if rows else None

    def custody_holders(self, path: str) -> int:
        """Messages still sending from the custody file `path` (a shared bundle's is one
        file for all its peers)."""
        return int(self.q("SELECT count(*) FROM messages WHERE path = ? AND state = ?", path,
                          SENDING)[0][0])

    def messages(self, state: str | None = None) -> list[Message]:
        if state is None:
            return [_message(r) for r in self.q("SELECT * FROM messages ORDER BY created")]
        return [_message(r) for r in
                self.q("SELECT * FROM messages WHERE state = ? ORDER BY created", state)]

    def finished_messages(self, limit: int) -> list[Message]:
        """The newest `limit` messages no longer in custody, newest first."""
        return [_message(r) for r in self.q("SELECT * FROM messages WHERE state != ? "
                                            "ORDER BY created DESC LIMIT ?", SENDING, limit)]

    def units(self, peer: str, state: str) -> list[Unit]:
        rows = self.q(
            "SELECT units.* FROM units JOIN messages ON messages.id = units.msg "
            "WHERE units.peer = ? AND units.state = ? "
            "ORDER BY messages.priority DESC, messages.created, units.idx", peer, state)
        return [Unit(**dict(r)) for r in rows]

    def units_of(self, msg_id: str) -> list[Unit]:
        return [Unit(**dict(r)) for r in
                self.q("SELECT * FROM units WHERE msg = ? ORDER BY idx", msg_id)]

    def units_by_message(self, state: str) -> dict[str, list[Unit]]:
        """The units of every message in `state`, by message, in one query (status reads
        thousands of messages in custody)."""
        out: dict[str, list[Unit]] = {}
        for r in self.q("SELECT u.* FROM units u JOIN messages m ON m.id = u.msg "
                        "WHERE m.state = ? ORDER BY u.msg, u.idx", state):
            out.setdefault(r["msg"], []).append(Unit(**dict(r)))
        return out

    def unit(self, unit_id: str) -> Unit | None:
        rows = self.q("SELECT * FROM units WHERE id = ?", unit_id)
        return Unit(**dict(rows[0])) if rows else None

    def set_unit(self, unit_id: str, **fields: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.tx() as db:
            db.execute(f"UPDATE units SET {cols} WHERE id = ?", (*fields.values(), unit_id))

    def claim(self, unit_ids: list[str]) -> set[str]:
        """Take waiting units for the outbox, in one transaction; the ones another process
        took already are not among those returned."""
        claimed = set()
        with self.tx() as db:
            for unit_id in unit_ids:
                cur = db.execute("UPDATE units SET state = ?, attempts = attempts + 1 "
                                 "WHERE id = ? AND state = ?", (QUEUED, unit_id, NEW))
                if cur.rowcount == 1:
                    claimed.add(unit_id)
        return claimed

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

    def set_message_state(self, msg_id: str, state: str, why: str = "") -> None:
        with self.tx() as db:
            if why:
                db.execute("UPDATE messages SET state = ?, meta = json_set(meta, '$.why', ?) "
                           "WHERE id = ?", (state, why, msg_id))
            else:
                db.execute("UPDATE messages SET state = ? WHERE id = ?", (state, msg_id))

    def await_whole(self, msg_id: str, due: float | None) -> None:
        with self.tx() as db:
            db.execute("UPDATE messages SET whole_due = ? WHERE id = ?", (due, msg_id))

    def probe(self, msg_id: str, unit_id: str, due: float) -> None:
        """Send one unit again to ask for a missing ack of the whole (see Sender)."""
        with self.tx() as db:
            db.execute("UPDATE messages SET whole_due = ?, meta = json_set(meta, '$.probed', "
                       "coalesce(json_extract(meta, '$.probed'), 0) + 1) WHERE id = ?",
                       (due, msg_id))
            db.execute("UPDATE units SET state = ?, next_retry = NULL WHERE id = ? AND "
                       "state = ?", (NEW, unit_id, ACKED))

    def send_again(self, msg_id: str) -> None:
        """The peer lost the whole: every unit goes out again (not the ones in the outbox)."""
        with self.tx() as db:
            db.execute("UPDATE messages SET whole_due = NULL, rounds = rounds + 1 WHERE id = ?",
                       (msg_id,))
            db.execute("UPDATE units SET state = ?, next_retry = NULL WHERE msg = ? AND "
                       "state IN (?, ?)", (NEW, msg_id, ACKED, FLIGHT))

    def resend_unacked(self, msg_id: str) -> int:
        """A person asked: the units taken and not acknowledged go out again now."""
        with self.tx() as db:
            cur = db.execute("UPDATE units SET state = ?, next_retry = NULL WHERE msg = ? AND "
                             "state = ?", (NEW, msg_id, FLIGHT))
            return cur.rowcount

    def awaiting_whole(self, peer: str, now: float) -> list[Message]:
        rows = self.q("SELECT * FROM messages WHERE peer = ? AND state = ? AND whole_due <= ?",
                      peer, SENDING, now)
        return [_message(r) for r in rows]

    def drop_units(self, msg_id: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM units WHERE msg = ?", (msg_id,))

    def prune_messages(self, before: float) -> int:
        """Forget finished messages (delivered or expired) created before `before`."""
        with self.tx() as db:
            cur = db.execute("DELETE FROM messages WHERE state != ? AND created < ?",
                             (SENDING, before))
            return cur.rowcount

    def unacked_count(self, msg_id: str) -> int:
        row = self.q("SELECT count(*) AS n FROM units WHERE msg = ? AND state != ?",
                     msg_id, ACKED)
        return int(row[0]["n"])

    def backlog(self, peer: str) -> tuple[int, int]:
        """Messages in custody for `peer` and their bytes not yet acknowledged."""
        row = self.q("SELECT count(DISTINCT u.msg) AS m, coalesce(sum(u.size), 0) AS n "
                     "FROM units u JOIN messages m ON m.id = u.msg WHERE u.peer = ? AND "
                     "m.state = ? AND u.state != ?", peer, SENDING, ACKED)
        return int(row[0]["m"]), int(row[0]["n"])

    def queued_bytes(self, peer: str) -> int:
        row = self.q("SELECT coalesce(sum(size), 0) AS n FROM units WHERE peer = ? AND state = ?",
                     peer, QUEUED)
        return int(row[0]["n"])

    # seen
    def seen(self, src: str, bundle_id: str) -> sqlite3.Row | None:
        rows = self.q("SELECT * FROM seen WHERE src = ? AND id = ?", src, bundle_id)
        return rows[0] if rows else None

    def seen_count(self) -> int:
        return int(self.q("SELECT count(*) AS n FROM seen")[0]["n"])

    def add_seen(self, bundle_id: str, src: str, kind: str, expires: float, now: float,
                 finish: list[tuple[str, str]] | None) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO seen VALUES (?,?,?,?,?,?)",
                       (src, bundle_id, kind, expires, now,
                        json.dumps(finish) if finish else None))

    def finished(self, src: str, bundle_id: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE seen SET finish = NULL WHERE src = ? AND id = ?", (src, bundle_id))

    def unfinished(self) -> list[tuple[str, str]]:
        return [(r["src"], r["id"]) for r in
                self.q("SELECT src, id FROM seen WHERE finish IS NOT NULL")]

    def unfinished_renames(self, src: str, bundle_id: str) -> list[tuple[str, str]]:
        row = self.seen(src, bundle_id)
        if row is None or row["finish"] is None:
            return []
        return [(str(a), str(b)) for a, b in json.loads(row["finish"])]

    def prune_seen(self, before: float) -> int:
        """Forget ids that expired before `before`, remembering per sender the latest such
        expiry: a bundle expiring by then is refused as a replay even if the clock steps
        back (seen_floor)."""
        with self.tx() as db:
            db.execute("INSERT INTO seen_floor SELECT src, max(expires) FROM seen "
                       "WHERE expires < ? AND finish IS NULL GROUP BY src "
                       "ON CONFLICT (src) DO UPDATE SET expires = "
                       "max(seen_floor.expires, excluded.expires)", (before,))
            cur = db.execute("DELETE FROM seen WHERE expires < ? AND finish IS NULL", (before,))
            return cur.rowcount

    def seen_floor(self, src: str) -> float:
        rows = self.q("SELECT expires FROM seen_floor WHERE src = ?", src)
        return float(rows[0]["expires"]) if rows else float("-inf")

    # reassembly
    def reasm(self, src: str, parent: str) -> sqlite3.Row | None:
        rows = self.q("SELECT * FROM reasm WHERE src = ? AND parent = ?", src, parent)
        return rows[0] if rows else None

    def reassemblies(self) -> list[sqlite3.Row]:
        return self.q("SELECT * FROM reasm ORDER BY started")

    def has_part(self, src: str, parent: str, idx: int) -> bool:
        return bool(self.q("SELECT 1 FROM reasm_parts WHERE src = ? AND parent = ? AND idx = ? "
                           "UNION ALL SELECT 1 FROM reasm_repairs WHERE src = ? AND "
                           "parent = ? AND idx = ?", src, parent, idx, src, parent, idx))

    def part_ranges(self, src: str, parent: str) -> list[tuple[int, int]]:
        """(offset, length) of the data fragments held, by offset."""
        return [(r[0], r[1]) for r in
                self.q("SELECT offset, length FROM reasm_parts WHERE src = ? AND parent = ? "
                       "AND offset IS NOT NULL ORDER BY offset", src, parent)]

    def repairs(self, src: str, parent: str) -> list[tuple[int, int, Repair]]:
        """(index, group start, repair) of the FEC repair fragments held."""
        return [(r["idx"], r["offset"], Repair(r["first"], r["k"], r["m"], r["j"], r["block"]))
                for r in self.q("SELECT * FROM reasm_repairs WHERE src = ? AND parent = ? "
                                "ORDER BY idx", src, parent)]

    def add_parts(self, parts: list[Part], now: float) -> None:
        """Record fragments in one go; each reassembly's `received` becomes the bytes its
        fragments cover (they may overlap once a fragment was cut again)."""
        with self.tx() as db:
            for p in parts:
                db.execute("INSERT OR IGNORE INTO reasm (src, parent, kind, total, count, "
                           "expires, started) VALUES (?,?,?,?,?,?,?)",
                           (p.src, p.parent, p.kind, p.total, p.count, p.expires, now))
                db.execute("UPDATE reasm SET count = max(count, ?) WHERE src = ? AND "
                           "parent = ?", (p.count, p.src, p.parent))
                if p.repair is None:
                    db.execute("INSERT OR IGNORE INTO reasm_parts VALUES (?,?,?,?,?)",
                               (p.src, p.parent, p.idx, p.offset, p.length))
                else:
                    r = p.repair
                    db.execute("INSERT OR IGNORE INTO reasm_repairs VALUES (?,?,?,?,?,?,?,?,?)",
                               (p.src, p.parent, p.idx, p.offset, r.first, r.k, r.m, r.j,
                                r.block))
            for src, parent in {(p.src, p.parent) for p in parts}:
                ranges = db.execute("SELECT offset, length FROM reasm_parts WHERE src = ? AND "
                                    "parent = ? AND offset IS NOT NULL ORDER BY offset",
                                    (src, parent)).fetchall()
                db.execute("UPDATE reasm SET received = ? WHERE src = ? AND parent = ?",
                           (covered([(r[0], r[1]) for r in ranges]), src, parent))

    def unplaced_parts(self, src: str, parent: str) -> bool:
        """Parts recorded before fragments were reassembled by byte range (no offsets)."""
        return bool(self.q("SELECT 1 FROM reasm_parts WHERE src = ? AND parent = ? AND "
                           "offset IS NULL", src, parent))

    def drop_reasm(self, src: str, parent: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM reasm_parts WHERE src = ? AND parent = ?", (src, parent))
            db.execute("DELETE FROM reasm_repairs WHERE src = ? AND parent = ?", (src, parent))
            db.execute("DELETE FROM reasm WHERE src = ? AND parent = ?", (src, parent))

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

    def loss(self, peer: str, expected: float) -> LossEstimator:
        rows = self.q("SELECT * FROM loss WHERE peer = ?", peer)
        if not rows:
            return LossEstimator(rate=expected)
        return LossEstimator(rate=rows[0]["rate"], samples=rows[0]["samples"])

    def save_loss(self, peer: str, est: LossEstimator) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO loss VALUES (?,?,?)",
                       (peer, est.rate, est.samples))

    # traffic
    def count_traffic(self, rows: list[tuple[str, str, float, int, int, int]]) -> None:
        """Add (peer, "out" | "in", when, bytes, files, bytes resent) to the minute counters."""
        with self.tx() as db:
            db.executemany(
                "INSERT INTO traffic VALUES (?,?,?,?,?,?) ON CONFLICT (peer, dir, minute) DO "
                "UPDATE SET bytes = bytes + excluded.bytes, files = files + excluded.files, "
                "resent = resent + excluded.resent",
                [(peer, d, int(when // 60), n, files, resent)
                 for peer, d, when, n, files, resent in rows])

    def traffic(self, since: float) -> list[sqlite3.Row]:
        return self.q("SELECT * FROM traffic WHERE minute >= ? ORDER BY minute", int(since // 60))

    def prune_traffic(self, before: float) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM traffic WHERE minute < ?", (int(before // 60),))

    def save_clock(self, peer: str, offset: float, now: float) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO clocks VALUES (?,?,?)", (peer, offset, now))

    def clock_offset(self, peer: str) -> float | None:
        rows = self.q("SELECT offset FROM clocks WHERE peer = ?", peer)
        return float(rows[0]["offset"]) if rows else None

    def last_ack(self, peer: str) -> float | None:
        rows = self.q("SELECT last_ack FROM rtt WHERE peer = ?", peer)
        return rows[0]["last_ack"] if rows else None


@dataclass(frozen=True)
class Part:
    """A fragment a receiver made durable: where its bytes go in the reassembly."""

    src: str
    parent: str
    idx: int
    offset: int
    length: int
    kind: str
    total: int
    count: int
    expires: float
    repair: Repair | None = None  # an FEC repair block, kept beside the reassembly


def covered(ranges: list[tuple[int, int]]) -> int:
    """Bytes covered by (offset, length) ranges sorted by offset, overlaps counted once."""
    total, end = 0, 0
    for offset, length in ranges:
        start, stop = max(offset, end), offset + length
        if stop > start:
            total += stop - start
        end = max(end, stop)
    return total


def _message(r: sqlite3.Row) -> Message:
    d = dict(r)
    d["meta"] = json.loads(d["meta"])
    return Message(**d)
