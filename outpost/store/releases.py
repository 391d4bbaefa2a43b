"""Release bookkeeping in the node's SQLite state.

Earth: `holdings` (what each outpost holds or will hold: its config commit, layers,
images and Terraform providers, from acks of our bundles and from its own sync reports),
`reports`, and `rollouts` (each release published to the fleet: the stage, a channel's
index, it reached, and whether it is rolling, done or halted; fleet.py).
Outpost: `held_layers` / `held_images` (what the gateway put in the registry),
`pending_images` (images that came before some of their layers did) and `releases` (each
release received and how far it got).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..fleet import DONE, FAILED_EVENTS, ROLLING, Fleet
from .state import State

SCHEMA = """
CREATE TABLE IF NOT EXISTS holdings (
    peer TEXT NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (peer, kind, value));
CREATE TABLE IF NOT EXISTS reports (
    peer TEXT NOT NULL, at REAL NOT NULL, event TEXT NOT NULL, release TEXT,
    detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS held_layers (
    digest TEXT PRIMARY KEY, repo TEXT NOT NULL, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS held_images (
    image_id TEXT NOT NULL, ref TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (image_id, ref));
CREATE TABLE IF NOT EXISTS pending_images (
    image_id TEXT NOT NULL, ref TEXT NOT NULL, facts TEXT NOT NULL, src TEXT NOT NULL,
    since REAL NOT NULL, requested REAL, PRIMARY KEY (image_id, ref));
CREATE TABLE IF NOT EXISTS rollouts (
    commit_id TEXT PRIMARY KEY, release TEXT NOT NULL, started REAL NOT NULL,
    stage INTEGER NOT NULL, state TEXT NOT NULL, note TEXT NOT NULL DEFAULT '',
    changed REAL NOT NULL);
CREATE TABLE IF NOT EXISTS releases (
    commit_id TEXT PRIMARY KEY, meta TEXT NOT NULL, received REAL NOT NULL,
    state TEXT NOT NULL, note TEXT NOT NULL DEFAULT '');
"""

COMMIT, LAYER, IMAGE, PROVIDER = "commit", "layer", "image", "provider"
OUTCOMES = ("applied", *FAILED_EVENTS)  # an outpost's final word on a release
# a release at the outpost: waiting for images, ready (config and images all present), refused
WAITING, READY, REFUSED = "waiting-for-images", "ready", "refused"


class ReleaseStore:
    def __init__(self, state: State) -> None:
        self.state = state
        state.db.executescript(SCHEMA)

    # Earth: what each outpost holds
    def holding(self, peer: str, kind: str) -> set[str]:
        rows = self.state.q("SELECT value FROM holdings WHERE peer = ? AND kind = ?", peer, kind)
        return {r["value"] for r in rows}

    def commit_of(self, peer: str) -> str | None:
        values = self.holding(peer, COMMIT)
        return next(iter(values)) if values else None

    def hold(self, peer: str, kind: str, values: list[str], now: float) -> None:
        with self.state.tx() as db:
            if kind == COMMIT:
                db.execute("DELETE FROM holdings WHERE peer = ? AND kind = ?", (peer, kind))
            db.executemany("INSERT OR REPLACE INTO holdings VALUES (?,?,?,?)",
                           [(peer, kind, v, now) for v in values])

    def replace_holdings(self, peer: str, commit: str | None, layers: list[str],
                         images: list[str], now: float, providers: Sequence[str] = (), *,
                         as_of: float | None = None) -> None:
        """The outpost's own report is the truth as of when it wrote it (`as_of`): forget
        what we assumed before then, keep what its acks told us since (a sync delayed on
        the link must not undo the delivery of a release that overtook it)."""
        since = now if as_of is None else as_of
        with self.state.tx() as db:
            db.execute("DELETE FROM holdings WHERE peer = ? AND at < ?", (peer, since))
            rows = [(peer, LAYER, d, now) for d in layers] + [
                (peer, IMAGE, i, now) for i in images] + [
                (peer, PROVIDER, p, now) for p in providers]
            newer_commit = db.execute("SELECT 1 FROM holdings WHERE peer = ? AND kind = ?",
                                      (peer, COMMIT)).fetchone()
            if commit and newer_commit is None:
                rows.append((peer, COMMIT, commit, now))
            db.executemany("INSERT OR REPLACE INTO holdings VALUES (?,?,?,?)", rows)

    def add_report(self, peer: str, event: str, release: str | None, detail: dict[str, Any],
                   now: float) -> None:
        with self.state.tx() as db:
            db.execute("INSERT INTO reports VALUES (?,?,?,?,?)",
                       (peer, now, event, release, json.dumps(detail)))

    def reports(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.state.q("SELECT * FROM reports ORDER BY at DESC LIMIT ?", limit)
        return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]

    def last_report(self, peer: str, events: tuple[str, ...]) -> dict[str, Any] | None:
        marks = ",".join("?" * len(events))
        rows = self.state.q(f"SELECT * FROM reports WHERE peer = ? AND event IN ({marks}) "
                            "ORDER BY at DESC LIMIT 1", peer, *events)
        return {**dict(rows[0]), "detail": json.loads(rows[0]["detail"])} if rows else None

    def latest_report(self, peer: str) -> dict[str, Any] | None:
        rows = self.state.q("SELECT * FROM reports WHERE peer = ? ORDER BY at DESC LIMIT 1",
                            peer)
        return {**dict(rows[0]), "detail": json.loads(rows[0]["detail"])} if rows else None

    def reported(self, peer: str, release: str, event: str) -> bool:
        return bool(self.state.q(
            "SELECT 1 FROM reports WHERE peer = ? AND release = ? AND event = ?",
            peer, release, event))

    def outcome(self, peer: str, release: str) -> str | None:
        """The outpost's latest word on how `release` went there (applied, failed, ...)."""
        marks = ",".join("?" * len(OUTCOMES))
        rows = self.state.q(f"SELECT event FROM reports WHERE peer = ? AND release = ? AND "
                            f"event IN ({marks}) ORDER BY at DESC LIMIT 1",
                            peer, release, *OUTCOMES)
        return str(rows[0]["event"]) if rows else None

    # Earth: rollouts across the fleet
    def start_rollout(self, commit: str, release: dict[str, Any], now: float) -> None:
        with self.state.tx() as db:
            db.execute("INSERT OR REPLACE INTO rollouts VALUES (?,?,?,0,?,'',?)",
                       (commit, json.dumps(release), now, ROLLING, now))

    def set_rollout(self, commit: str, stage: int, state: str, note: str,
                    now: float) -> None:
        with self.state.tx() as db:
            db.execute("UPDATE rollouts SET stage = ?, state = ?, note = ?, changed = ? "
                       "WHERE commit_id = ?", (stage, state, note, now, commit))

    def rollout(self, commit: str) -> dict[str, Any] | None:
        rows = self.state.q("SELECT * FROM rollouts WHERE commit_id = ?", commit)
        return _rollout(rows[0]) if rows else None

    def rollouts(self, limit: int = 10) -> list[dict[str, Any]]:
        return [_rollout(r) for r in self.state.q(
            "SELECT * FROM rollouts ORDER BY started DESC LIMIT ?", limit)]

    def reached(self, fleet: Fleet, peer: str) -> dict[str, Any] | None:
        """The newest rollout that got as far as `peer`'s channel: the release it should
        run where there are several channels (with one, it is the config repo's head)."""
        stage = fleet.channels.index(fleet.channel_of(peer))
        rows = self.state.q("SELECT * FROM rollouts WHERE stage >= ? OR state = ? "
                            "ORDER BY started DESC LIMIT 1", stage, DONE)
        return _rollout(rows[0]) if rows else None

    def refused(self, peer: str, release: str) -> bool:
        return self.reported(peer, release, "release-refused")

    # Outpost: what the registry holds
    def held_layer(self, digest: str) -> tuple[str, int] | None:
        rows = self.state.q("SELECT repo, size FROM held_layers WHERE digest = ?", digest)
        return (rows[0]["repo"], int(rows[0]["size"])) if rows else None

    def add_layers(self, repo: str, sizes: dict[str, int]) -> None:
        with self.state.tx() as db:
            db.executemany("INSERT OR IGNORE INTO held_layers VALUES (?,?,?)",
                           [(d, repo, s) for d, s in sizes.items()])

    def forget_layer(self, digest: str) -> None:
        with self.state.tx() as db:
            db.execute("DELETE FROM held_layers WHERE digest = ?", (digest,))

    def layers(self) -> list[str]:
        return [r["digest"] for r in self.state.q("SELECT digest FROM held_layers")]

    def add_image(self, image_id: str, ref: str, now: float) -> None:
        with self.state.tx() as db:
            db.execute("INSERT OR REPLACE INTO held_images VALUES (?,?,?)", (image_id, ref, now))

    def images(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.state.q("SELECT * FROM held_images ORDER BY at")]

    def add_pending(self, facts: dict[str, Any], src: str, now: float) -> None:
        with self.state.tx() as db:
            db.execute("INSERT OR IGNORE INTO pending_images VALUES (?,?,?,?,?,NULL)",
                       (facts["image_id"], facts["ref"], json.dumps(facts), src, now))

    def pending_images(self) -> list[dict[str, Any]]:
        rows = self.state.q("SELECT * FROM pending_images ORDER BY since")
        return [{**dict(r), "facts": json.loads(r["facts"])} for r in rows]

    def pending_requested(self, image_id: str, ref: str, now: float) -> None:
        with self.state.tx() as db:
            db.execute("UPDATE pending_images SET requested = ? WHERE image_id = ? AND ref = ?",
                       (now, image_id, ref))

    def drop_pending(self, image_id: str, ref: str) -> None:
        with self.state.tx() as db:
            db.execute("DELETE FROM pending_images WHERE image_id = ? AND ref = ?",
                       (image_id, ref))

    # Outpost: releases received
    def set_release(self, commit: str, meta: dict[str, Any], state: str, note: str,
                    now: float) -> None:
        with self.state.tx() as db:
            db.execute("INSERT INTO releases VALUES (?,?,?,?,?) ON CONFLICT (commit_id) DO "
                       "UPDATE SET state = excluded.state, note = excluded.note",
                       (commit, json.dumps(meta), now, state, note))

    def releases(self) -> list[dict[str, Any]]:
        rows = self.state.q("SELECT * FROM releases ORDER BY received")
        return [{**dict(r), "meta": json.loads(r["meta"])} for r in rows]

    def release(self, commit: str) -> dict[str, Any] | None:
        rows = self.state.q("SELECT * FROM releases WHERE commit_id = ?", commit)
        return {**dict(rows[0]), "meta": json.loads(rows[0]["meta"])} if rows else None

    def ready(self) -> list[str]:
        return [r["commit_id"] for r in
                self.state.q("SELECT commit_id FROM releases WHERE state = ?", READY)]


def _rollout(row: Any) -> dict[str, Any]:
    return {**dict(row), "release": json.loads(row["release"])}
