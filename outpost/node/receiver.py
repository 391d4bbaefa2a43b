"""Receiving: verify, drop duplicates, reassemble fragments, deliver exactly once, ack."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..codec import Header, open_verified, read_payload, validate_fragment
from ..delivery import AckBatcher
from ..errors import (
    BundleError,
    ExpiredBundle,
    MalformedBundle,
    MisaddressedBundle,
    RefusedContent,
    TruncatedBundle,
)
from ..store.spool import quarantine
from .context import Node, log
from .handlers import Handler, Renames, ack_ids
from .sender import Sender

SETTLE = 2.0
COMMIT_BATCH = 64


class Receiver:
    def __init__(self, node: Node, sender: Sender, acks: AckBatcher,
                 handlers: dict[str, Handler],
                 on_refused: Callable[[Header, BundleError], None] | None = None) -> None:
        self.node, self.sender, self.acks, self.handlers = node, sender, acks, handlers
        self.on_refused = on_refused
        self._stored: list[tuple[Path, Header]] = []
        self._stored_keys: set[tuple[str, int]] = set()

    def handle(self, path: Path) -> None:
        """Handle one file from the inbox; a bad one is quarantined, never raised."""
        try:
            header = self._open(path)
            if header.fragment is not None:
                self._fragment(path, header)
            elif header.kind == "ack":
                self.sender.on_ack(header.src, ack_ids(header))
                path.unlink(missing_ok=True)
            else:
                self._whole(path, header, ack=True)
        except FileNotFoundError:
            pass  # taken by another pass of the loop
        except TruncatedBundle as e:
            if not self._settling(path):
                self.quarantine(path, e)
        except BundleError as e:
            self.quarantine(path, e)

    def _settling(self, path: Path) -> bool:
        """A short file written in the last moments may still be growing (a link that does
        not write atomically); the next rescan looks again before calling it truncated."""
        try:
            return self.node.clock() - path.stat().st_mtime < SETTLE
        except FileNotFoundError:
            return True

    def _open(self, path: Path) -> Header:
        with open(path, "rb") as f:
            header = open_verified(f, self.node.state.keyring(), self.node.limits)
        if header.dst != self.node.name:
            raise MisaddressedBundle(f"bundle for {header.dst!r}, this node is "
                                     f"{self.node.name!r}")
        if header.expires <= self.node.clock():
            raise ExpiredBundle(f"bundle {header.id} expired before it arrived")
        return header

    def quarantine(self, path: Path, e: BundleError) -> None:
        if not path.exists():
            return
        target = quarantine(self.node.home.quarantine, path, e.reason, str(e), self.node.clock())
        log.warning("quarantined %s: %s (%s)", path.name, e, target.name)

    def _whole(self, path: Path, header: Header, *, ack: bool) -> None:
        row = self.node.state.seen(header.id)
        if row is not None:
            log.debug("duplicate %s %s dropped", header.kind, header.id)
            self.finish(header.id)
        else:
            self._deliver(path, header)
        if ack:
            self.acks.add(header.src, header.id, self.node.clock())
        path.unlink(missing_ok=True)

    def _deliver(self, path: Path, header: Header) -> None:
        handler = self.handlers.get(header.kind)
        if handler is None:
            # Well formed but not ours to handle: keep it for a person and stop the resends.
            err = MalformedBundle(f"no handler for kind {header.kind!r}", reason="unknown-kind")
            self._record(header, [])
            self.quarantine(path, err)
            return
        try:
            renames = handler.prepare(self.node, header, path)
        except RefusedContent as e:
            # Intact but refused for good: remember and ack it (resending cannot help),
            # keep it for a person, and let the role tell the sender.
            self._record(header, [])
            self.quarantine(path, e)
            if self.on_refused is not None:
                self.on_refused(header, e)
            return
        self._record(header, renames)
        self.finish(header.id)
        log.info("delivered %s %s from %s (%d bytes)", header.kind, header.id, header.src,
                 header.payload.raw_length)

    def _record(self, header: Header, renames: Renames) -> None:
        self.node.state.add_seen(header.id, header.src, header.kind, header.expires,
                                 self.node.clock(), renames)

    def finish(self, bundle_id: str) -> None:
        """Run a delivered bundle's recorded renames (again, after a crash); idempotent."""
        row = self.node.state.seen(bundle_id)
        if row is None or row["finish"] is None:
            return
        for part, final in self.node.state.unfinished_renames(bundle_id):
            if os.path.exists(part):
                os.replace(part, final)
        self.node.state.finished(bundle_id)

    def _fragment(self, path: Path, header: Header) -> None:
        frag = header.fragment
        assert frag is not None
        key = (frag.parent, frag.index)
        if key in self._stored_keys:
            path.unlink(missing_ok=True)  # its twin is stored; acked once that is durable
            return
        if self.node.state.seen(frag.parent) is not None or self.node.state.has_part(*key):
            self.acks.add(header.src, header.id, self.node.clock())
            path.unlink(missing_ok=True)
            return
        self._store_fragment(path, header)
        self._stored.append((path, header))
        self._stored_keys.add(key)
        if len(self._stored) >= COMMIT_BATCH:
            self.commit()

    def _store_fragment(self, path: Path, header: Header) -> None:
        """Write the fragment into its place in the reassembly file (not yet durable)."""
        frag = header.fragment
        assert frag is not None
        row = self.node.state.reasm(frag.parent)
        if row is not None and (row["total"], row["count"], row["src"]) != (
                frag.total, frag.count, header.src):
            raise MalformedBundle("fragment disagrees with the others of its bundle",
                                  reason="fragment-mismatch")
        validate_fragment(frag, header.payload.length, self.node.limits)
        fd = os.open(self.reasm_path(frag.parent), os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+b") as out:
            out.seek(frag.offset)
            read_payload(path, self.node.state.keyring(), self.node.limits, out.write)

    def commit(self) -> None:
        """Make the fragments stored since the last commit durable in one go (group commit):
        fsync their files, record them in one transaction, then ack them and drop their inbox
        copies. A crash before this leaves the inbox files, which are simply handled again."""
        if not self._stored:
            return
        batch, self._stored = self._stored, []
        self._stored_keys.clear()
        parents = {h.fragment.parent for _, h in batch if h.fragment}
        for parent in parents:
            fd = os.open(self.reasm_path(parent), os.O_RDONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        now = self.node.clock()
        self.node.state.add_parts([
            (h.fragment.parent, h.fragment.index, h.src, h.kind, h.fragment.total,
             h.fragment.count, h.expires) for _, h in batch if h.fragment], now)
        for path, h in batch:
            self.acks.add(h.src, h.id, now)
            path.unlink(missing_ok=True)
        full = [p for p in parents if (row := self.node.state.reasm(p)) is not None
                and row["received"] == row["count"]]
        if full:
            # Ack the last fragments before the (long) verification of the whole bundle,
            # or the sender's timers run out meanwhile and it resends them.
            for peer, ids in self.acks.due(now, force=True):
                self.sender.send_ack(peer, ids)
        for parent in full:
            self.complete(parent)

    def reasm_path(self, parent: str) -> Path:
        return self.node.home.spool / "reasm" / f"{parent}.opb"

    def complete(self, parent: str) -> None:
        """All fragments are here: the reassembled file is a bundle; handle it like one."""
        row = self.node.state.reasm(parent)
        if row is None:
            return
        path = self.reasm_path(parent)
        try:
            header = self._open(path)
            if header.id != parent or path.stat().st_size != row["total"]:
                raise MalformedBundle("reassembled bundle is not the one its fragments named",
                                      reason="fragment-mismatch")
            self._whole(path, header, ack=False)
        except FileNotFoundError:
            pass  # delivered before a restart; the seen record says so
        except BundleError as e:
            # The sender holds every fragment as acked: remember the id so no resend of a
            # stray fragment starts the same broken reassembly again.
            self.node.state.add_seen(parent, row["src"], row["kind"], row["expires"],
                                     self.node.clock(), None)
            self.quarantine(path, e)
        self.node.state.drop_reasm(parent)

    def resume(self) -> None:
        """After a restart: finish recorded deliveries and complete full reassemblies."""
        for bundle_id in self.node.state.unfinished_ids():
            self.finish(bundle_id)
        for row in self.node.state.reassemblies():
            if row["received"] == row["count"]:
                self.complete(row["parent"])

    def expire_reassemblies(self) -> None:
        now = self.node.clock()
        for row in self.node.state.reassemblies():
            if row["expires"] <= now:
                log.warning("reassembly of %s from %s expired with %d of %d fragments",
                            row["parent"], row["src"], row["received"], row["count"])
                self.reasm_path(row["parent"]).unlink(missing_ok=True)
                self.node.state.drop_reasm(row["parent"])

