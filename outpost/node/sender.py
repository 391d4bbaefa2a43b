"""Sending under custody: pack, cut into units, feed the outbox, resend until acked."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

from ..codec import (
    EXPEDITED,
    NORMAL,
    Header,
    Limits,
    Repair,
    fragment_at,
    fragment_count,
    new_id,
    new_shared_id,
    pack_bytes,
    pack_spooled,
    read_head,
    source_fill,
    write_block,
    write_fragment,
)
from ..codec.files import Fill, Progress
from ..codec.header import SHARED
from ..delivery import fec, peer_alive, resend_now, retry_delay, too_big
from ..errors import ConfigError
from ..fsutil import atomic_write_bytes, atomic_writer
from ..home import Settings
from ..store.spool import RANK_ACK, names_in, outbox_name, rank
from ..store.state import (
    ACKED,
    CARRIED,
    DELIVERED,
    EXPIRED,
    FAILED,
    FLIGHT,
    NEW,
    QUEUED,
    SENDING,
    Message,
    Unit,
)
from .context import Node, about, log

ACK_LIFETIME = 86400.0
MAX_ROUNDS = 3  # times a whole message is sent again because the peer lost it
WRITING = ".writing"  # a unit's hidden name while it is written, before its claim
WRITE_GRACE = 60.0  # a hidden file untouched this long was left by a writer that died
CLAIM_BATCH = 512  # units written before they are claimed in one transaction


class Sender:
    def __init__(self, node: Node,
                 on_delivered: Callable[[Message], None] | None = None) -> None:
        self.node, self.on_delivered = node, on_delivered
        self._heads: dict[str, Header] = {}
        self._acked_after: dict[str, float] = {}  # per peer: latest take of a unit acked
        self._deferred: set[str] | None = None  # peers to fill after deferring_fill()
        self._layouts: dict[str, fec.Layout | None] = {}
        self._stalled: dict[str, float] = {}  # per peer: the outbox waits, nothing taken since
        self._moved: dict[str, float] = {}  # per peer: when the link took again after a stall
        self._sent: dict[str, list[int]] = {}  # per peer: bytes, files, resent not yet counted
        self._repairs: tuple[tuple[str, int], list[bytes]] | None = None  # last group's

    @property
    def settings(self) -> Settings:
        return self.node.home.settings

    def submit(self, peer: str, kind: str, source: BinaryIO | None = None, *,
               fill: Fill | None = None, meta: dict[str, Any] | None = None,
               priority: int = NORMAL, lifetime: float | None = None, codec: str = "zstd",
               reply_to: str | None = None, progress: Progress | None = None,
               custody: dict[str, Any] | None = None, via_link: bool = True) -> Message:
        """Take a message into custody for `peer`; it goes out as the outbox has room.

        The payload is `source` or whatever `fill` writes (its returned dict joins the
        header's meta). `custody` is kept with the message for the role's own use when it
        is acknowledged; `via_link=False` keeps it out of the outbox (carried by hand).
        """
        return self.submit_to([peer], kind, source, fill=fill, meta=meta, priority=priority,
                              lifetime=lifetime, codec=codec, reply_to=reply_to,
                              progress=progress, custody=custody, via_link=via_link)[0]

    def submit_to(self, peers: list[str], kind: str, source: BinaryIO | None = None, *,
                  fill: Fill | None = None, meta: dict[str, Any] | None = None,
                  priority: int = NORMAL, lifetime: float | None = None,
                  codec: str = "zstd", reply_to: str | None = None,
                  progress: Progress | None = None, custody: dict[str, Any] | None = None,
                  via_link: bool = True) -> list[Message]:
        """`submit` to several peers at once: one bundle addressed to all of them (a shared
        id, `dst` listing them), packed and kept once; each peer's custody of it is its
        own (its units, timers and acks), and the files the link carries are written once
        and hard-linked into each peer's outbox (docs/architecture.md, "Shared bundles")."""
        trusted = self.node.state.keyring()
        for peer in peers:
            if peer not in trusted:
                raise ConfigError(f"{peer!r} is not a trusted peer; run `outpost-node trust` "
                                  "first")
        s, now = self.settings, self.node.clock()
        header = Header(id=new_id() if len(peers) == 1 else new_shared_id(), kind=kind,
                        src=self.node.name, dst=",".join(peers), created=now,
                        expires=now + (lifetime or s.lifetime), priority=priority,
                        reply_to=reply_to, meta=meta or {})
        path = self.node.home.custody / f"{header.id}.opb"
        header, start = pack_spooled(path, header, fill or source_fill(source), self.node.seed,
                                     codec=codec, level=s.zstd_level, progress=progress,
                                     max_header=s.max_header)
        size = path.stat().st_size - start
        msgs = []
        for peer in peers:
            layout = self._plan(peer, size) if via_link else None
            msg, units = custody_message(header, path, s.fragment_size, custody, layout, start,
                                         peer=peer)
            if not via_link:
                units = [replace(u, state=CARRIED) for u in units]
            self.node.state.add_message(msg, units)
            msgs.append(msg)
        log.info("queued %s %s for %s: %d bytes in %d unit(s)", kind, header.id,
                 peers_text(peers), size, msgs[0].units, extra=about(header.id, kind, peers[0]))
        if self._deferred is None:
            self.fill_all(peers)
        else:
            self._deferred.update(peers)
        return msgs

    def _plan(self, peer: str, size: int) -> fec.Layout | None:
        """Repairs for a message of `size` bytes, as many as the link's loss calls for."""
        s = self.settings
        if s.fec == "off" or (s.fec == "auto" and
                              self.node.state.rtt(peer, s.rtt).srtt < s.fec_min_rtt):
            return None
        loss = self.node.state.loss(peer, s.expected_loss).rate
        return fec.plan(size, s.fragment_size, loss, s.fec_target, s.fec_max)

    def layout(self, msg: Message) -> fec.Layout | None:
        if msg.id not in self._layouts:
            self._layouts[msg.id] = fec.Layout.from_meta(msg.meta.get("fec"))
        return self._layouts[msg.id]

    def _extra(self, msg: Message, unit: Unit) -> bool:
        """A repair or a copy: sent once, never waited for (resends cover the data)."""
        layout = self.layout(msg)
        if layout is None:
            return False
        return unit.idx < -1 if unit.idx < 0 else layout.is_repair(unit.idx)

    @contextmanager
    def deferring_fill(self) -> Iterator[None]:
        """Submit without writing the outbox, then fill it after the block: a publisher
        holding a lock writes custody only, not thousands of fragments, while others wait."""
        self._deferred = set()
        try:
            yield
        finally:
            peers, self._deferred = self._deferred, None
        self.fill_all(sorted(peers))

    def fill(self, peer: str) -> None:
        """Move waiting units into the outbox while it holds less than the window."""
        self.fill_all([peer])

    def fill_all(self, peers: list[str]) -> None:
        """`fill` each of `peers`, claiming what was written in few transactions (a shared
        bundle's units for a hundred outboxes are a few thousand)."""
        written: list[tuple[Unit, Path, str]] = []
        for peer in peers:
            for item in self._window(peer):
                written.append(item)
                if len(written) >= CLAIM_BATCH:
                    self._claim(written)
                    written = []
        self._claim(written)

    def _window(self, peer: str) -> Iterator[tuple[Unit, Path, str]]:
        """Write the waiting units of `peer` that fit in its outbox window, hidden."""
        queued = self.node.state.queued_bytes(peer)
        self.node.home.outbox(peer).mkdir(parents=True, exist_ok=True)
        messages: dict[str, Message | None] = {}
        for unit in self.node.state.units(peer, NEW):
            if queued and queued + unit.size > self.settings.outbox_window:
                break
            if unit.msg not in messages:
                messages[unit.msg] = self.node.state.message(unit.msg)
            msg = messages[unit.msg]
            hidden = self._materialise(unit, msg)
            if msg is not None and hidden is not None:
                yield unit, hidden, msg.kind
            elif msg is not None:
                messages[unit.msg] = self.node.state.message(unit.msg)  # failed just now
            queued += unit.size

    def _materialise(self, unit: Unit, msg: Message | None) -> Path | None:
        """Write the unit under a hidden name (`_claim` then claims it and gives it its
        outbox name).

        Written first, claimed second: while the hidden file is there, the unit is being
        written, not taken by the link (scan_taken), even by another process. A crash after
        the claim leaves a hidden file that goes stale: the unit then counts as taken and
        lost, and the retry timer repairs it."""
        if msg is None or msg.state != SENDING:
            return None
        hidden = self.node.home.outbox(unit.peer) / f".{unit.name}.{os.getpid()}{WRITING}"
        try:
            if is_shared(msg.id):
                os.link(self._shared_unit(msg, unit), hidden)
                os.utime(hidden)  # a link keeps the file's old time: not a stale write
            else:
                self._write_unit(hidden, msg, unit)
        except FileNotFoundError as e:
            if Path(msg.path).exists():  # not the custody copy: the next fill tries again
                log.warning("cannot write %s for %s yet: %s", unit.id, unit.peer, e)
                return None
            self.fail(msg, f"its custody copy {msg.path} is gone")
            return None
        return hidden

    def _claim(self, written: list[tuple[Unit, Path, str]]) -> None:
        """Claim the units written, in one transaction, and name their files for the link;
        one another process claimed first is dropped."""
        claimed = self.node.state.claim([u.id for u, _h, _k in written]) if written else set()
        for unit, hidden, kind in written:
            if unit.id not in claimed:
                hidden.unlink(missing_ok=True)
                continue
            os.replace(hidden, self.node.home.outbox(unit.peer) / unit.name)
            if unit.attempts:
                log.info("resending %s to %s (attempt %d)", unit.id, unit.peer,
                         unit.attempts + 1, extra=about(unit.id, kind, unit.peer))

    def _write_unit(self, dest: Path, msg: Message, unit: Unit) -> None:
        """The file of `unit` (the whole bundle, a repair or a fragment), atomically."""
        custody = Path(msg.path)
        if unit.idx < 0:
            with open(custody, "rb") as src, atomic_writer(dest) as out:
                src.seek(custody_start(msg))
                shutil.copyfileobj(src, out, 1024 * 1024)
        elif self._extra(msg, unit):
            self._write_repair(dest, msg, unit)
        else:
            frag = fragment_at(self._head(msg), unit.idx, max(msg.units, unit.idx + 1),
                               unit.offset, unit.size, msg.size)
            write_fragment(dest, custody, frag, self.node.seed, custody_start(msg))

    def _shared_unit(self, msg: Message, unit: Unit) -> Path:
        """The file of a shared bundle's unit, written the first time a peer's custody needs
        it and kept beside the custody copy for the others (the same unit of the same
        layout is the same bytes for every peer: signatures are deterministic)."""
        layout = self.layout(msg)
        tag = "whole" if unit.idx < 0 else (
            f"{unit.idx}-{max(msg.units, unit.idx + 1)}-{unit.offset}-{unit.size}-"
            f"{'plain' if layout is None else layout.tag()}")
        path = shared_units(msg) / f"{tag}.opb"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            # Another process (the node, a publish) may write the same unit at once: each
            # writes its own file, and the last rename wins (the bytes are the same).
            mine = path.with_name(f".{tag}.{os.getpid()}.opb")
            self._write_unit(mine, msg, unit)
            os.replace(mine, path)
        return path

    def _write_repair(self, dest: Path, msg: Message, unit: Unit) -> None:
        """Write repair fragment `unit`, encoding its group once for all its repairs."""
        layout = self.layout(msg)
        assert layout is not None
        group = layout.group_of(unit.idx)
        assert group is not None
        key = (msg.id, group.first)
        if self._repairs is None or self._repairs[0] != key:
            with open(msg.path, "rb") as f:
                f.seek(custody_start(msg) + group.start)
                data = [f.read(layout.block) for _ in range(group.k)]
            self._repairs = (key, fec.encode(data, group.m, layout.block))
        j = unit.idx - group.first
        frag = fragment_at(self._head(msg), unit.idx, max(msg.units, unit.idx + 1),
                           group.start, layout.block, msg.size)
        assert frag.fragment is not None
        repair = Repair(group.first, group.k, group.m, j, layout.block)
        frag = replace(frag, fragment=replace(frag.fragment, repair=repair))
        write_block(dest, frag, self._repairs[1][j - group.k], self.node.seed)

    def _head(self, msg: Message) -> Header:
        if msg.id not in self._heads:
            with open(msg.path, "rb") as f:
                f.seek(custody_start(msg))
                self._heads[msg.id] = read_head(f, Limits())[0]
        return self._heads[msg.id]

    def scan_taken(self, peer: str) -> None:
        """Units whose files left the outbox were taken by the link: start their timers.

        A unit whose hidden file is there is still being written (by `send` in another
        process, say), not taken; one whose writer died is counted as taken once that file
        went stale, and its timer resends it."""
        outbox = self.node.home.outbox(peer)
        present = names_in(outbox)
        now = self.node.clock()
        queued = self.node.state.units(peer, QUEUED)
        taken = [u for u in queued if u.name not in present
                 and not being_written(outbox, u.name, present)]
        self._note_stall(peer, now, waiting=len(queued) > len(taken), took=bool(taken))
        if not taken:
            return
        s = self.settings
        rto = self.node.state.rtt(peer, s.rtt).rto(s.min_rto, s.rto_cap)
        alive = peer_alive(self.node.state.last_ack(peer), now, rto)
        changes: list[tuple[str, dict[str, Any]]] = []
        messages = self._messages_of(taken)
        for u in taken:
            msg = messages.get(u.msg)
            if msg is not None and self._extra(msg, u):
                changes.append((u.id, {"state": ACKED, "taken_at": now}))
                continue
            wait = self._serialisation(self._behind(msg, u))
            changes.append((u.id, {"state": FLIGHT, "taken_at": now, "next_retry": now +
                                   retry_delay(rto, u.attempts, s.backoff, s.rto_cap, wait,
                                               alive)}))
        self.node.state.set_units(changes)
        sent = self._sent.setdefault(peer, [0, 0, 0])
        sent[0] += sum(u.size for u in taken)
        sent[1] += len(taken)
        sent[2] += sum(u.size for u in taken if u.attempts > 1)

    def _messages_of(self, units: list[Unit]) -> dict[str, Message | None]:
        """The messages of `units`, one lookup each (a window holds many of one message)."""
        return {m: self.node.state.message(m) for m in {u.msg for u in units}}

    def count_traffic(self) -> None:
        """Add what the link took since the last call to the traffic counters."""
        if self._sent:
            now, sent, self._sent = self.node.clock(), self._sent, {}
            self.node.state.count_traffic([(peer, "out", now, n, files, resent)
                                           for peer, (n, files, resent) in sent.items()])

    def _note_stall(self, peer: str, now: float, *, waiting: bool, took: bool) -> None:
        if took and peer in self._stalled:
            self._moved[peer] = now
        if took or not waiting:
            self._stalled.pop(peer, None)
        if waiting:
            self._stalled.setdefault(peer, now)

    def link_down(self, peer: str, now: float, rto: float) -> bool:
        """Taken = sent: an outbox that has files waiting and that the link took nothing
        from for an RTO (and a fragment's serialisation) means the link is down, a contact
        gap, say. What is in flight is then not lost but held up with its acks, and a
        resend would only queue behind it: timers wait for the link to move again."""
        since = self._stalled.get(peer)
        slack = rto + self._serialisation(self.settings.fragment_size)
        return since is not None and now - since >= slack

    def _held(self, peer: str, unit: Unit) -> bool:
        """Files wait in the outbox and the link has taken none since `stalled`: a unit
        it took less than a round trip before that may be crossing still, or acked with
        the ack held up on the way back (a window that closed cuts both directions). It is
        not lost until the link moves again and its ack still does not come."""
        stalled = self._stalled.get(peer)
        if stalled is None or unit.taken_at is None:
            return False
        s = self.settings
        return unit.taken_at + self.node.state.rtt(peer, s.rtt).srtt + s.ack_delay >= stalled

    def _behind(self, msg: Message | None, unit: Unit) -> int:
        """Bytes the link sends before the peer can ack `unit`: itself, and in an FEC
        group the rest of the group with its repairs (it may be rebuilt from those)."""
        layout = None if msg is None else self.layout(msg)
        group = None if layout is None or unit.idx < 0 else layout.group_of(unit.idx)
        if group is None or layout is None:
            return unit.size
        return (group.end_index - unit.idx) * layout.block

    def _serialisation(self, size: int) -> float:
        bw = self.settings.bandwidth
        return size / bw if bw else 0.0

    def retry_due(self, peer: str) -> None:
        now = self.node.clock()
        due = [u for u in self.node.state.units(peer, FLIGHT)
               if u.next_retry is not None and u.next_retry <= now]
        if due:
            s = self.settings
            rto = self.node.state.rtt(peer, s.rtt).rto(s.min_rto, s.rto_cap)
            if self.link_down(peer, now, rto):
                due = []
            due = [u for u in due if not self._held(peer, u)]
            last_ack, after = self.node.state.last_ack(peer), self._acked_after.get(peer, 0.0)
            if peer in self._moved:  # the peer's acks were held up by the gap too
                last_ack = max(last_ack or 0.0, self._moved[peer])
            due = [u for u in due if resend_now(u.taken_at, after, last_ack, now, rto)]
        again = []
        last_ack = self.node.state.last_ack(peer)
        for u in due:
            msg = self.node.state.message(u.msg)
            if msg is not None and too_big(u.size, u.attempts, msg.created, last_ack,
                                           self.settings.fragment_size):
                self._split(u, msg)
            else:
                again.append(u)
        if again:
            self.node.state.set_units([(u.id, {"state": NEW}) for u in again])
            self._observe_loss(peer, [True for u in again if self._sampled(u)])
        for msg in self.node.state.awaiting_whole(peer, now):
            self._whole_overdue(msg, now)

    def _whole_overdue(self, msg: Message, now: float) -> None:
        """Every fragment acked, no ack of the whole yet: first send one fragment again (a
        peer that delivered the whole acks it again when a fragment of it comes, so a lost
        ack costs one fragment); only if that brings nothing either, all of it."""
        if msg.meta.get("probed", 0) > msg.rounds:
            self._send_again(msg, "its ack of the whole did not come")
            return
        last = self.node.state.units_of(msg.id)[-1]
        log.info("%s %s to %s: no ack of the whole yet; sending %s again to ask", msg.kind,
                 msg.id, msg.peer, last.id)
        self.node.state.probe(msg.id, last.id, now + self._whole_wait(msg.peer, msg))

    def _split(self, unit: Unit, msg: Message) -> None:
        first, half = self.node.state.next_index(msg.id), unit.size // 2
        pieces = [(unit.offset, half), (unit.offset + half, unit.size - half)]
        r = rank(msg.priority)
        halves = [Unit(f"{msg.id}.{first + i}", msg.id, first + i, unit.peer, size, NEW,
                       outbox_name(r, msg.created, f"{msg.id}.{first + i}", first + i), 0,
                       None, None, offset) for i, (offset, size) in enumerate(pieces)]
        self.node.state.split_unit(unit, halves)
        log.info("%s to %s: %d bytes did not get through in %d sends; cut in two (contact "
                 "windows shorter than it, perhaps)", unit.id, unit.peer, unit.size,
                 unit.attempts)

    def _send_again(self, msg: Message, why: str) -> None:
        """The peer has every fragment acked but not the whole (it lost its reassembly)."""
        if msg.rounds >= MAX_ROUNDS:
            self.fail(msg, f"{msg.peer} could not rebuild it from its fragments "
                           f"{MAX_ROUNDS + 1} times ({why})")
            return
        log.warning("sending %s %s to %s again, all of it: %s", msg.kind, msg.id, msg.peer, why,
                    extra=about(msg.id, msg.kind, msg.peer))
        self.node.state.send_again(msg.id)

    def fail(self, msg: Message, why: str) -> None:
        """Give up on a message for good, once, saying why (status shows it)."""
        log.error("%s %s to %s failed: %s", msg.kind, msg.id, msg.peer, why,
                  extra=about(msg.id, msg.kind, msg.peer))
        self._release(msg, FAILED, why)

    def expire(self) -> None:
        now = self.node.clock()
        for msg in self.node.state.messages(SENDING):
            if msg.expires <= now:
                log.warning("%s %s to %s expired before it was acknowledged", msg.kind, msg.id,
                            msg.peer, extra=about(msg.id, msg.kind, msg.peer))
                self._release(msg, EXPIRED)

    def _release(self, msg: Message, state: str, why: str = "") -> None:
        for unit in self.node.state.units_of(msg.id):
            if unit.state == QUEUED:
                (self.node.home.outbox(msg.peer) / unit.name).unlink(missing_ok=True)
        self.node.state.set_message_state(msg.id, state, why)
        self.node.state.drop_units(msg.id)
        if not is_shared(msg.id) or not self.node.state.custody_holders(msg.path):
            Path(msg.path).unlink(missing_ok=True)
            if is_shared(msg.id):
                shutil.rmtree(shared_units(msg), ignore_errors=True)
        self._heads.pop(msg.id, None)
        self._layouts.pop(msg.id, None)

    def on_ack(self, peer: str, ids: list[str], lost: list[str] | tuple[()] = (),
               recovered: list[str] | tuple[()] = ()) -> None:
        """Units the peer holds durably, and (`lost`) messages it lost and wants again;
        `recovered` names the units among `ids` it rebuilt from FEC repairs (they count as
        lost on the link, for the loss estimate).

        A message is delivered when the peer acks it whole: its own id (a fragmented one's
        id is acked once the peer rebuilt and delivered it). Until then its custody copy
        stays, so a reassembly the peer loses is sent again."""
        now = self.node.clock()
        ids, lost, recovered = ([custody_id(peer, i) for i in x] for x in (ids, lost, recovered))
        units = [u for u in self._units_acked_by(ids) if u.peer == peer and u.state != ACKED]
        # Karn's rule: only a bundle sent once gives an unambiguous round trip.
        self._observe(peer, now, [now - u.taken_at - self._serialisation(u.size) for u in units
                                  if u.state == FLIGHT and u.attempts == 1 and u.taken_at])
        rebuilt = set(recovered)
        self._observe_loss(peer, [u.id in rebuilt for u in units
                                  if u.state == FLIGHT and self._sampled(u)])
        for unit in units:
            if unit.state == QUEUED:
                (self.node.home.outbox(peer) / unit.name).unlink(missing_ok=True)
        self.node.state.set_units([(u.id, {"state": ACKED}) for u in units])
        taken = [u.taken_at for u in units if u.taken_at is not None]
        if taken:
            self._acked_after[peer] = max(self._acked_after.get(peer, 0.0), *taken)
        whole = set(ids)
        for msg_id in {u.msg for u in units} | (whole & self._sending_ids(peer, ids)):
            msg = self.node.state.message(msg_id)
            if msg is None or msg.state != SENDING or msg.peer != peer:
                continue
            if msg.id in whole:
                self._delivered(msg)
            elif self.node.state.unacked_count(msg_id) == 0 and msg.whole_due is None:
                self.node.state.await_whole(msg.id, now + self._whole_wait(peer, msg))
        for msg_id in lost:
            msg = self.node.state.message(msg_id)
            if msg is not None and msg.state == SENDING and msg.peer == peer:
                self._send_again(msg, f"{peer} lost its reassembly")

    def _delivered(self, msg: Message) -> None:
        log.info("%s %s delivered to %s", msg.kind, msg.id, msg.peer,
                 extra=about(msg.id, msg.kind, msg.peer))
        self._release(msg, DELIVERED)
        if self.on_delivered is not None:
            self.on_delivered(msg)

    def _sending_ids(self, peer: str, ids: list[str]) -> set[str]:
        """Which of `ids` name whole messages of ours to `peer` (not units)."""
        return {i for i in ids if "." not in i and (m := self.node.state.message(i)) is not None
                and m.peer == peer}

    def _whole_wait(self, peer: str, msg: Message) -> float:
        """How long the peer may take to ack the whole once it holds every fragment: verify
        and deliver it (allowing 10 MB/s) and the ack's round trip, twice over, doubled per
        round; it acks at once in the usual case, so this only bounds a lost ack (or a lost
        reassembly whose report was lost too)."""
        s = self.settings
        rto = self.node.state.rtt(peer, s.rtt).rto(s.min_rto, s.rto_cap)
        return float((2 * rto + msg.size / 10e6) * 2 ** msg.rounds)

    def _units_acked_by(self, ids: list[str]) -> list[Unit]:
        """Units named by an ack: unit ids, or a message id for the whole of it (a message
        that arrived whole by another path, say on removable media)."""
        units = {u.id: u for u in self.node.state.units_by_id(ids)}
        for msg_id in ids:
            if "." not in msg_id and msg_id not in units:
                units.update((u.id, u) for u in self.node.state.units_of(msg_id))
        return list(units.values())

    def _observe(self, peer: str, now: float, samples: list[float]) -> None:
        s = self.settings
        est = self.node.state.rtt(peer, s.rtt)
        old_rto = est.rto(s.min_rto, s.rto_cap)
        for sample in samples:
            est.observe(sample)
        self.node.state.save_rtt(peer, est, last_ack=now)
        rto = est.rto(s.min_rto, s.rto_cap)
        if rto < old_rto:
            self._shorten_timers(peer, rto)

    def _sampled(self, unit: Unit) -> bool:
        """Whether a unit's fate tells the link's loss: a first transmission, and not a
        whole bundle sent with copies (a copy may have stood in for it, unseen)."""
        if unit.attempts != 1:
            return False
        msg = self.node.state.message(unit.msg) if unit.idx < 0 else None
        layout = None if msg is None else self.layout(msg)
        return layout is None or layout.copies == 0

    def _observe_loss(self, peer: str, lost: list[bool]) -> None:
        """First transmissions: arrived (False) or not (True)."""
        if not lost:
            return
        est = self.node.state.loss(peer, self.settings.expected_loss)
        for sample in lost:
            est.observe(sample)
        self.node.state.save_loss(peer, est)

    def _shorten_timers(self, peer: str, rto: float) -> None:
        """The round trip came down (a backlog at the peer cleared): bring forward timers set
        under the old estimate, so a bundle lost meanwhile is not waited for needlessly.
        The peer is acking, so its retries are treated as random loss. Never postpones."""
        s = self.settings
        changes = []
        flying = self.node.state.units(peer, FLIGHT)
        messages = self._messages_of(flying)
        for u in flying:
            if u.taken_at is None or u.next_retry is None:
                continue
            wait = self._serialisation(self._behind(messages[u.msg], u))
            due = u.taken_at + retry_delay(rto, u.attempts, s.backoff, s.rto_cap, wait,
                                           peer_alive=True)
            if due < u.next_retry:
                changes.append((u.id, {"next_retry": due}))
        if changes:
            self.node.state.set_units(changes)

    def send_ack(self, peer: str, ids: list[str], *, lost: list[str] | None = None,
                 recovered: list[str] | None = None) -> None:
        """Acks are not kept in custody: a lost ack is repaired by the resent bundle.
        `lost` names messages whose reassembly this node lost (send them again);
        `recovered` the fragments among `ids` it rebuilt from FEC repairs."""
        now = self.node.clock()
        meta: dict[str, Any] = {"ids": ids}
        if lost:
            meta["lost"] = lost
        if recovered:
            meta["recovered"] = recovered
        header = Header(id=new_id(), kind="ack", src=self.node.name, dst=peer, created=now,
                        expires=now + ACK_LIFETIME, priority=EXPEDITED, meta=meta)
        dest = self.node.home.outbox(peer) / outbox_name(RANK_ACK, now, header.id)
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(dest, pack_bytes(header, b"", self.node.seed))

    def busy(self) -> bool:
        return bool(self.node.state.messages(SENDING))


def being_written(outbox: Path, name: str, present: set[str]) -> bool:
    """A fresh hidden file of the unit `name` is in `outbox` (see _materialise)."""
    prefix = f".{name}."
    for entry in present:
        if entry.startswith(prefix) and entry.endswith(WRITING):
            try:
                age = time.time() - (outbox / entry).stat().st_mtime
            except FileNotFoundError:
                continue
            return age < WRITE_GRACE
    return False


def remove_stale_writes(outbox: Path) -> None:
    """Hidden files a writer that died left in an outbox (their units are resent)."""
    for entry in names_in(outbox):
        if entry.startswith(".") and (entry.endswith(WRITING) or entry.endswith(".part")):
            path = outbox / entry
            try:
                if time.time() - path.stat().st_mtime > WRITE_GRACE:
                    path.unlink()
            except FileNotFoundError:
                pass


def peers_text(peers: list[str]) -> str:
    """Peers for a person: "mars", or "mars and 99 more"."""
    return peers[0] if len(peers) == 1 else f"{peers[0]} and {len(peers) - 1} more"


def is_shared(msg_id: str) -> bool:
    return msg_id.startswith(SHARED)


def custody_id(peer: str, wire_id: str) -> str:
    """The id under which this node keeps a bundle (or unit: `ID.N`) it sends to `peer`:
    its own id, but for a shared bundle, kept in custody once per peer, `ID@PEER[.N]`."""
    if not is_shared(wire_id):
        return wire_id
    head, dot, rest = wire_id.partition(".")
    return f"{head}@{peer}{dot}{rest}"


def shared_units(msg: Message) -> Path:
    """Where a shared bundle's unit files wait to be linked into its peers' outboxes."""
    return Path(msg.path).with_suffix(".units")


def custody_start(msg: Message) -> int:
    """Where the message's bundle starts in its custody file (pack_spooled's room)."""
    return int(msg.meta.get("start", 0))


def custody_message(header: Header, path: Path, frag_size: int,
                    custody: dict[str, Any] | None = None,
                    layout: fec.Layout | None = None,
                    start: int = 0, peer: str | None = None) -> tuple[Message, list[Unit]]:
    """The custody record of the bundle `header` packed at `start` in `path` (for `peer`,
    one of a shared bundle's), and the units it crosses as (a whole bundle, or fragments
    of `frag_size`; with an FEC `layout`, its blocks and repairs, or copies of the whole),
    all waiting to go."""
    size = path.stat().st_size - start
    meta: dict[str, Any] = {"fragment_size": frag_size, "start": start, **(custody or {})}
    if layout is not None:
        meta["fec"] = layout.to_meta()
    peer = peer or header.dst
    msg = Message(id=custody_id(peer, header.id), peer=peer, kind=header.kind, path=str(path),
                  size=size, priority=header.priority, created=header.created,
                  expires=header.expires, units=fragment_count(size, frag_size), state=SENDING,
                  meta=meta)
    r = rank(msg.priority)

    def unit(idx: int, offset: int, length: int) -> Unit:
        return Unit(f"{msg.id}.{idx}", msg.id, idx, msg.peer, length, NEW,
                    outbox_name(r, msg.created, f"{header.id}.{idx}", idx), 0, None, None,
                    offset)

    if layout is not None and layout.groups:
        units = []
        for g in layout.groups:
            for i in range(g.k):
                offset = g.start + i * layout.block
                units.append(unit(g.first + i, offset, min(layout.block, size - offset)))
            units += [unit(g.first + g.k + j, g.start, layout.block) for j in range(g.m)]
        return replace(msg, units=len(units)), units
    if msg.units == 1 or layout is not None:
        copies = 0 if layout is None else layout.copies
        whole = Unit(msg.id, msg.id, -1, msg.peer, msg.size, NEW,
                     outbox_name(r, msg.created, header.id), 0, None, None)
        return replace(msg, units=1 + copies), [whole] + [
            replace(whole, id=f"{msg.id}.copy{n}", idx=-2 - n,
                    name=outbox_name(r, msg.created, f"{header.id}.copy{n}"))
            for n in range(copies)]
    return msg, [unit(i, i * frag_size, min(frag_size, msg.size - i * frag_size))
                 for i in range(msg.units)]
