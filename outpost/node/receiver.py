"""Receiving: verify, drop duplicates, reassemble fragments, deliver exactly once, ack.

Everything kept about received bundles is keyed by (sender, id): ids are unique per sender
only. What is acknowledged has been made durable first: a fragment once it is written and
fsynced into its reassembly file, a whole bundle (or a reassembled one, whose id the
sender waits for before it lets go of its custody copy) once it was delivered. A
reassembly that does not verify as a whole is reported lost, so the sender sends it all
again.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from ..codec import Header, open_verified, read_payload, recipients, validate_fragment
from ..delivery import AckBatcher, fec
from ..errors import (
    BundleError,
    ExpiredBundle,
    LocalError,
    MalformedBundle,
    MisaddressedBundle,
    RefusedContent,
)
from ..fsutil import fsync_path, open_regular, publish
from ..store.spool import quarantine
from ..store.state import Part
from .context import Node, about, log
from .handlers import Handler, Renames, ack_lists
from .sender import Sender
from .stream import MAX_STREAMS, Stream, contiguous

SETTLE = 2.0
COMMIT_BATCH = 64


class Receiver:
    def __init__(self, node: Node, sender: Sender, acks: AckBatcher,
                 handlers: dict[str, Handler],
                 on_refused: Callable[[Header, BundleError], None] | None = None) -> None:
        self.node, self.sender, self.acks, self.handlers = node, sender, acks, handlers
        self.on_refused = on_refused
        self._stored: list[tuple[Path, Header]] = []
        self._stored_keys: set[tuple[str, str, int]] = set()
        self._changing: dict[str, tuple[int, int, float]] = {}  # name -> size, mtime, since
        self._streams: dict[tuple[str, str], Stream] = {}  # reassemblies decoded as they come
        self._arrived: dict[str, list[int]] = {}  # per peer: bytes, files not yet counted

    def handle(self, path: Path) -> None:
        """Handle one file from the inbox; a bad one is quarantined, never raised."""
        try:
            header = self._open(path)
            self._count(header.src, path)
            if header.fragment is not None:
                self._fragment(path, header)
            elif header.kind == "ack":
                ids, lost, recovered = ack_lists(header)
                self.sender.on_ack(header.src, ids, lost, recovered)
                path.unlink(missing_ok=True)
            else:
                self._whole(path, header, ack=True)
            self._changing.pop(path.name, None)
        except FileNotFoundError:
            self._changing.pop(path.name, None)  # taken by another pass of the loop
        except BundleError as e:
            if not self._settling(path):
                self.quarantine(path, e)

    def _count(self, src: str, path: Path) -> None:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        counted = self._arrived.setdefault(src, [0, 0])
        counted[0] += size
        counted[1] += 1

    def count_traffic(self) -> None:
        """Add what arrived since the last call to the traffic counters (one transaction)."""
        if self._arrived:
            now, arrived, self._arrived = self.node.clock(), self._arrived, {}
            self.node.state.count_traffic([(src, "in", now, n, files, 0)
                                           for src, (n, files) in arrived.items()])

    def _settling(self, path: Path) -> bool:
        """A file still being written (a link that does not write atomically) looks bad
        until it is complete: one modified in the last SETTLE seconds, or stamped in the
        future, is refused only once it has stood still for SETTLE seconds of our clock (a
        file from the future would otherwise wait forever)."""
        try:
            st = path.lstat()
        except FileNotFoundError:
            return True
        now = self.node.clock()
        if now - st.st_mtime >= SETTLE:
            self._changing.pop(path.name, None)
            return False
        seen = self._changing.get(path.name)
        if seen is None or seen[:2] != (st.st_size, st.st_mtime_ns):
            self._changing[path.name] = (st.st_size, st.st_mtime_ns, now)
            return True
        if now - seen[2] < SETTLE:
            return True
        del self._changing[path.name]
        return False

    def _open(self, path: Path) -> Header:
        with open_regular(path) as f:
            header = open_verified(f, self.node.state.keyring(), self.node.limits)
        if self.node.name not in recipients(header.dst):
            raise MisaddressedBundle(f"bundle for {header.dst!r}, this node is "
                                     f"{self.node.name!r}")
        self.node.observe_clock(header.src, header.created)
        if header.kind == "ack" and header.fragment is None:
            return header  # an ack only names ids: an old or replayed one changes nothing
        if header.expires + self.node.home.settings.clock_skew <= self.node.clock():
            raise ExpiredBundle(f"bundle {header.id} from {header.src} expired before it "
                                "arrived")
        if header.expires <= self.node.state.seen_floor(header.src):
            raise ExpiredBundle(f"bundle {header.id} from {header.src} is older than every id "
                                "still remembered: a replay", reason="replay")
        return header

    def quarantine(self, path: Path, e: BundleError) -> None:
        if not os.path.lexists(path):
            return
        target = quarantine(self.node.home.quarantine, path, e.reason, str(e), self.node.clock())
        log.warning("quarantined %s: %s (%s)", path.name, e, target.name,
                    extra={"file": target.name, "reason": e.reason})

    def _whole(self, path: Path, header: Header, *, ack: bool) -> None:
        row = self.node.state.seen(header.src, header.id)
        if row is not None:
            log.debug("duplicate %s %s dropped", header.kind, header.id)
            self.finish(header.src, header.id)
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
            renames = self._streamed(header, path)
            if renames is None:
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
        self.finish(header.src, header.id)
        log.info("delivered %s %s from %s (%d bytes)", header.kind, header.id, header.src,
                 header.payload.raw_length, extra=about(header.id, header.kind, header.src))

    def _record(self, header: Header, renames: Renames) -> None:
        self.node.state.add_seen(header.id, header.src, header.kind, header.expires,
                                 self.node.clock(), renames)

    def finish(self, src: str, bundle_id: str) -> None:
        """Publish a delivered bundle's files under their names (again, after a crash);
        idempotent, and never over a file that is already there."""
        for part, final in self.node.state.unfinished_renames(src, bundle_id):
            if os.path.exists(part):
                name = publish(Path(part), Path(final))
                if name != Path(final):
                    log.info("%s exists: delivered as %s", final, name.name)
        self.node.state.finished(src, bundle_id)

    # fragments
    def _fragment(self, path: Path, header: Header) -> None:
        frag = header.fragment
        assert frag is not None
        key = (header.src, frag.parent, frag.index)
        if key in self._stored_keys:
            path.unlink(missing_ok=True)  # its twin is stored; acked once that is durable
            return
        if self.node.state.seen(header.src, frag.parent) is not None:
            # The whole was delivered; the sender may have missed our ack of it.
            self.acks.add(header.src, header.id, self.node.clock())
            self.acks.add(header.src, frag.parent, self.node.clock())
            path.unlink(missing_ok=True)
            return
        if self.node.state.has_part(*key):
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
        row = self.node.state.reasm(header.src, frag.parent)
        if row is not None and row["total"] != frag.total:
            raise MalformedBundle("fragment disagrees with the others of its bundle",
                                  reason="fragment-mismatch")
        validate_fragment(frag, header.payload.length, self.node.limits)
        target = self.reasm_path(header.src, frag.parent)
        if row is not None and not target.exists():
            self._lost(header.src, frag.parent, "its reassembly file vanished")
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
        if frag.repair is not None:
            # kept beside the reassembly until its group is rebuilt or whole
            os.close(fd)
            with open(self._repair_path(header.src, frag.parent, frag.index), "wb") as out:
                read_payload(path, self.node.state.keyring(), self.node.limits, out.write)
            return
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
        parents = {(h.src, h.fragment.parent) for _, h in batch if h.fragment}
        written = {self._written(h) for _, h in batch}
        for target in written:
            fsync_path(target, data_only=True)
        now = self.node.clock()
        self.node.state.add_parts([
            Part(h.src, h.fragment.parent, h.fragment.index, h.fragment.offset,
                 h.payload.length, h.kind, h.fragment.total, h.fragment.count, h.expires,
                 h.fragment.repair)
            for _, h in batch if h.fragment], now)
        for path, h in batch:
            self.acks.add(h.src, h.id, now)
            path.unlink(missing_ok=True)
        for src, parent in parents:
            if not self._whole_here(src, parent):
                self._rebuild(src, parent, now)
        full = [(src, parent) for src, parent in parents if self._whole_here(src, parent)]
        if full:
            # Ack the last fragments before the (long) verification of the whole bundle,
            # or the sender's timers run out meanwhile and it resends them.
            for peer, ids in self.acks.due(now, force=True):
                self.sender.send_ack(peer, ids)
        for src, parent in full:
            self.complete(src, parent)
        for src, parent in parents - set(full):
            self._stream(src, parent)

    def _stream(self, src: str, parent: str) -> None:
        """Decode what is complete of a reassembly from its first byte (node/stream.py)."""
        stream = self._streams.get((src, parent))
        if stream is None:
            if sum(not s.failed for s in self._streams.values()) >= MAX_STREAMS:
                return
            stream = self._streams[(src, parent)] = Stream(self.reasm_path(src, parent), src,
                                                           parent)
        stream.advance(contiguous(self.node.state.part_ranges(src, parent)), self.node,
                       self.handlers)

    def _streamed(self, header: Header, path: Path) -> Renames | None:
        """The staged delivery of a reassembly decoded while it arrived, if it was."""
        stream = self._streams.pop((header.src, header.id), None)
        if stream is None or path != stream.path:
            if stream is not None:
                stream.abort()
            return None
        size = path.stat().st_size
        stream.advance(size, self.node, self.handlers)
        renames = stream.result(size)
        if renames is not None:
            log.debug("%s %s from %s was decoded as it arrived", header.kind, header.id,
                      header.src)
        return renames

    def _written(self, h: Header) -> Path:
        assert h.fragment is not None
        if h.fragment.repair is not None:
            return self._repair_path(h.src, h.fragment.parent, h.fragment.index)
        return self.reasm_path(h.src, h.fragment.parent)

    def _rebuild(self, src: str, parent: str, now: float) -> None:
        """Rebuild the data blocks of each FEC group that has enough blocks, write them
        into the reassembly durably, record them and ack them as rebuilt (the sender
        then resends none of them, and counts them as lost for its estimate)."""
        repairs = self.node.state.repairs(src, parent)
        row = self.node.state.reasm(src, parent)
        if not repairs or row is None:
            return
        ranges = self.node.state.part_ranges(src, parent)
        groups: dict[tuple[int, int, fec.Group], list[int]] = {}
        for idx, start, r in repairs:
            group = fec.Group(r.first, start, r.k, r.m)
            groups.setdefault((r.block, start, group), []).append(idx)
        rebuilt: list[Part] = []
        for (block, _, group), held in groups.items():
            missing = fec.missing_blocks(ranges, group, block, row["total"])
            if missing and len(held) >= len(missing):
                try:
                    rebuilt += self._rebuild_group(src, parent, row, group, block, missing,
                                                   held)
                except OSError as e:  # resends still bring what was not rebuilt
                    log.error("cannot rebuild %s from %s from its repairs: %s", parent, src, e)
        if not rebuilt:
            return
        fsync_path(self.reasm_path(src, parent), data_only=True)
        self.node.state.add_parts(rebuilt, now)
        ids = [f"{parent}.{p.idx}" for p in rebuilt]
        for unit_id in ids:
            self.acks.add(src, unit_id, now)
        self.sender.send_ack(src, ids, recovered=ids)
        log.info("rebuilt %d fragment(s) of %s from %s from FEC repairs", len(ids), parent,
                 src)

    def _rebuild_group(self, src: str, parent: str, row: sqlite3.Row, group: fec.Group,
                       block: int, missing: list[int], held: list[int]) -> list[Part]:
        total, target = row["total"], self.reasm_path(src, parent)
        have: dict[int, bytes] = {}
        with open(target, "r+b") as f:
            for i in range(group.k):
                if i not in missing:
                    f.seek(group.start + i * block)
                    have[i] = f.read(block)
            for idx in held[:len(missing)]:
                have[idx - group.first] = self._repair_path(src, parent, idx).read_bytes()
            data = fec.decode(have, group.k, group.m, block)
            parts = []
            for i in missing:
                offset = group.start + i * block
                length = min(block, total - offset)
                f.seek(offset)
                f.write(data[i][:length])
                parts.append(Part(src, parent, group.first + i, offset, length, row["kind"],
                                  total, row["count"], row["expires"]))
        return parts

    def _repair_path(self, src: str, parent: str, index: int) -> Path:
        return self.node.home.reasm / f"{src}.{parent}.opb.r{index}"

    def _drop(self, src: str, parent: str) -> None:
        """Forget a reassembly: its file, its repair blocks, its stream and its records."""
        stream = self._streams.pop((src, parent), None)
        if stream is not None:
            stream.abort()
        self.reasm_path(src, parent).unlink(missing_ok=True)
        for idx, _, _ in self.node.state.repairs(src, parent):
            self._repair_path(src, parent, idx).unlink(missing_ok=True)
        self.node.state.drop_reasm(src, parent)

    def _whole_here(self, src: str, parent: str) -> bool:
        row = self.node.state.reasm(src, parent)
        return row is not None and row["received"] == row["total"]

    def reasm_path(self, src: str, parent: str) -> Path:
        return self.node.home.reasm / f"{src}.{parent}.opb"

    def complete(self, src: str, parent: str) -> None:
        """All fragments are here: the reassembled file is a bundle; handle it like one.

        A local fault (a full disk, the registry down) leaves it to be tried again by the
        node's timer (`retry_complete`). A reassembly that does not verify is quarantined
        and reported lost: the sender still holds its custody copy and sends it again."""
        row = self.node.state.reasm(src, parent)
        if row is None:
            return
        path = self.reasm_path(src, parent)
        try:
            header = self._open(path)
            if (header.id, header.src) != (parent, src) or path.stat().st_size != row["total"]:
                raise MalformedBundle("reassembled bundle is not the one its fragments named",
                                      reason="fragment-mismatch")
            self._whole(path, header, ack=True)
        except FileNotFoundError:
            if self.node.state.seen(src, parent) is None:
                self._lost(src, parent, "its reassembly file vanished")
                return
        except BundleError as e:
            self.quarantine(path, e)
            self._lost(src, parent, f"it did not verify as a whole ({e.reason})")
            return
        except (LocalError, OSError) as e:
            log.error("cannot deliver %s from %s yet, will retry: %s", parent, src, e)
            return
        self._drop(src, parent)

    def _lost(self, src: str, parent: str, why: str) -> None:
        """Forget a broken reassembly and ask the sender for all of it again."""
        log.warning("reassembly of %s from %s is lost (%s): asking for it again", parent, src,
                    why)
        self._drop(src, parent)
        self.sender.send_ack(src, [], lost=[parent])

    def retry_complete(self) -> None:
        """Deliver the reassemblies that are whole but were held up by a local fault."""
        for row in self.node.state.reassemblies():
            if row["received"] == row["total"]:
                self.complete(row["src"], row["parent"])

    def resume(self) -> None:
        """After a restart: finish recorded deliveries and complete full reassemblies."""
        for src, bundle_id in self.node.state.unfinished():
            self.finish(src, bundle_id)
        for row in self.node.state.reassemblies():
            if self.node.state.unplaced_parts(row["src"], row["parent"]):
                # kept by an older version, which did not record where fragments go
                (self.node.home.reasm / f"{row['parent']}.opb").unlink(missing_ok=True)
                self._lost(row["src"], row["parent"], "kept by an older version")
            elif row["received"] < row["total"]:
                self._rebuild(row["src"], row["parent"], self.node.clock())
        self.retry_complete()

    def expire_reassemblies(self) -> None:
        now = self.node.clock()
        for row in self.node.state.reassemblies():
            if row["expires"] + self.node.home.settings.clock_skew <= now:
                log.warning("reassembly of %s from %s expired with %d of %d fragments",
                            row["parent"], row["src"], row["received"], row["count"])
                self._drop(row["src"], row["parent"])
