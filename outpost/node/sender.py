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
    fragment_at,
    fragment_count,
    new_id,
    pack_bytes,
    pack_file,
    pack_parts,
    read_head,
    write_fragment,
)
from ..codec.files import Fill, Progress
from ..delivery import peer_alive, resend_now, retry_delay, too_big
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
from .context import Node, log

ACK_LIFETIME = 86400.0
MAX_ROUNDS = 3  # times a whole message is sent again because the peer lost it
WRITING = ".writing"  # a unit's hidden name while it is written, before its claim
WRITE_GRACE = 60.0  # a hidden file untouched this long was left by a writer that died


class Sender:
    def __init__(self, node: Node,
                 on_delivered: Callable[[Message], None] | None = None) -> None:
        self.node, self.on_delivered = node, on_delivered
        self._heads: dict[str, Header] = {}
        self._acked_after: dict[str, float] = {}  # per peer: latest take of a unit acked
        self._deferred: set[str] | None = None  # peers to fill after deferring_fill()

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
        if peer not in self.node.state.keyring():
            raise ConfigError(f"{peer!r} is not a trusted peer; run `outpost-node trust` first")
        s, now = self.settings, self.node.clock()
        header = Header(id=new_id(), kind=kind, src=self.node.name, dst=peer, created=now,
                        expires=now + (lifetime or s.lifetime), priority=priority,
                        reply_to=reply_to, meta=meta or {})
        path = self.node.home.spool / "custody" / f"{header.id}.opb"
        if fill is None:
            pack_file(path, header, source, self.node.seed, codec=codec, level=s.zstd_level,
                      progress=progress)
        else:
            pack_parts(path, header, fill, self.node.seed, codec=codec, level=s.zstd_level,
                       progress=progress)
        msg, units = custody_message(header, path, s.fragment_size, custody)
        if not via_link:
            units = [replace(u, state=CARRIED) for u in units]
        self.node.state.add_message(msg, units)
        log.info("queued %s %s for %s: %d bytes in %d unit(s)", kind, header.id, peer, msg.size,
                 msg.units)
        if self._deferred is None:
            self.fill(peer)
        else:
            self._deferred.add(peer)
        return msg

    @contextmanager
    def deferring_fill(self) -> Iterator[None]:
        """Submit without writing the outbox, then fill it after the block: a publisher
        holding a lock writes custody only, not thousands of fragments, while others wait."""
        self._deferred = set()
        try:
            yield
        finally:
            peers, self._deferred = self._deferred, None
        for peer in sorted(peers):
            self.fill(peer)

    def fill(self, peer: str) -> None:
        """Move waiting units into the outbox while it holds less than the window."""
        queued = self.node.state.queued_bytes(peer)
        for unit in self.node.state.units(peer, NEW):
            if queued and queued + unit.size > self.settings.outbox_window:
                break
            self._materialise(unit)
            queued += unit.size

    def _materialise(self, unit: Unit) -> None:
        """Write the unit under a hidden name, claim it, then give it its outbox name.

        Written first, claimed second: while the hidden file is there, the unit is being
        written, not taken by the link (scan_taken), even by another process. A crash after
        the claim leaves a hidden file that goes stale: the unit then counts as taken and
        lost, and the retry timer repairs it."""
        msg = self.node.state.message(unit.msg)
        if msg is None or msg.state != SENDING:
            return
        dest = self.node.home.outbox(unit.peer) / unit.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        hidden = dest.with_name(f".{dest.name}.{os.getpid()}{WRITING}")
        custody = Path(msg.path)
        try:
            if unit.idx < 0:
                with open(custody, "rb") as src, atomic_writer(hidden) as out:
                    shutil.copyfileobj(src, out, 1024 * 1024)
            else:
                frag = fragment_at(self._head(msg), unit.idx, max(msg.units, unit.idx + 1),
                                   unit.offset, unit.size, msg.size)
                write_fragment(hidden, custody, frag, self.node.seed)
        except FileNotFoundError:
            self.fail(msg, f"its custody copy {custody} is gone")
            return
        if not self.node.state.claim(unit.id):
            hidden.unlink(missing_ok=True)  # another process took it first
            return
        os.replace(hidden, dest)
        if unit.attempts:
            log.info("resending %s to %s (attempt %d)", unit.id, unit.peer, unit.attempts + 1)

    def _head(self, msg: Message) -> Header:
        if msg.id not in self._heads:
            with open(msg.path, "rb") as f:
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
        taken = [u for u in self.node.state.units(peer, QUEUED) if u.name not in present
                 and not being_written(outbox, u.name, present)]
        if not taken:
            return
        s = self.settings
        rto = self.node.state.rtt(peer, s.rtt).rto(s.min_rto, s.rto_cap)
        alive = peer_alive(self.node.state.last_ack(peer), now, rto)
        self.node.state.set_units([
            (u.id, {"state": FLIGHT, "taken_at": now,
                    "next_retry": now + retry_delay(rto, u.attempts, s.backoff, s.rto_cap,
                                                    self._serialisation(u.size), alive)})
            for u in taken])

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
            last_ack, after = self.node.state.last_ack(peer), self._acked_after.get(peer, 0.0)
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
        log.warning("sending %s %s to %s again, all of it: %s", msg.kind, msg.id, msg.peer, why)
        self.node.state.send_again(msg.id)

    def fail(self, msg: Message, why: str) -> None:
        """Give up on a message for good, once, saying why (status shows it)."""
        log.error("%s %s to %s failed: %s", msg.kind, msg.id, msg.peer, why)
        self._release(msg, FAILED, why)

    def expire(self) -> None:
        now = self.node.clock()
        for msg in self.node.state.messages(SENDING):
            if msg.expires <= now:
                log.warning("%s %s to %s expired before it was acknowledged", msg.kind, msg.id,
                            msg.peer)
                self._release(msg, EXPIRED)

    def _release(self, msg: Message, state: str, why: str = "") -> None:
        for unit in self.node.state.units_of(msg.id):
            if unit.state == QUEUED:
                (self.node.home.outbox(msg.peer) / unit.name).unlink(missing_ok=True)
        self.node.state.set_message_state(msg.id, state, why)
        self.node.state.drop_units(msg.id)
        Path(msg.path).unlink(missing_ok=True)
        self._heads.pop(msg.id, None)

    def on_ack(self, peer: str, ids: list[str], lost: list[str] | tuple[()] = ()) -> None:
        """Units the peer holds durably, and (`lost`) messages it lost and wants again.

        A message is delivered when the peer acks it whole: its own id (a fragmented one's
        id is acked once the peer rebuilt and delivered it). Until then its custody copy
        stays, so a reassembly the peer loses is sent again."""
        now = self.node.clock()
        units = [u for u in self._units_acked_by(ids) if u.peer == peer and u.state != ACKED]
        # Karn's rule: only a bundle sent once gives an unambiguous round trip.
        self._observe(peer, now, [now - u.taken_at - self._serialisation(u.size) for u in units
                                  if u.state == FLIGHT and u.attempts == 1 and u.taken_at])
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
        log.info("%s %s delivered to %s", msg.kind, msg.id, msg.peer)
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

    def _shorten_timers(self, peer: str, rto: float) -> None:
        """The round trip came down (a backlog at the peer cleared): bring forward timers set
        under the old estimate, so a bundle lost meanwhile is not waited for needlessly.
        The peer is acking, so its retries are treated as random loss. Never postpones."""
        s = self.settings
        changes = []
        for u in self.node.state.units(peer, FLIGHT):
            if u.taken_at is None or u.next_retry is None:
                continue
            due = u.taken_at + retry_delay(rto, u.attempts, s.backoff, s.rto_cap,
                                           self._serialisation(u.size), peer_alive=True)
            if due < u.next_retry:
                changes.append((u.id, {"next_retry": due}))
        if changes:
            self.node.state.set_units(changes)

    def send_ack(self, peer: str, ids: list[str], *, lost: list[str] | None = None) -> None:
        """Acks are not kept in custody: a lost ack is repaired by the resent bundle.
        `lost` names messages whose reassembly this node lost (send them again)."""
        now = self.node.clock()
        meta: dict[str, Any] = {"ids": ids}
        if lost:
            meta["lost"] = lost
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


def custody_message(header: Header, path: Path, frag_size: int,
                    custody: dict[str, Any] | None = None) -> tuple[Message, list[Unit]]:
    """The custody record of the bundle `header` packed at `path`, and the units it crosses
    as (a whole bundle, or fragments of `frag_size`), all waiting to go."""
    size = path.stat().st_size
    msg = Message(id=header.id, peer=header.dst, kind=header.kind, path=str(path), size=size,
                  priority=header.priority, created=header.created, expires=header.expires,
                  units=fragment_count(size, frag_size), state=SENDING,
                  meta={"fragment_size": frag_size, **(custody or {})})
    r = rank(msg.priority)
    if msg.units == 1:
        return msg, [Unit(msg.id, msg.id, -1, msg.peer, msg.size, NEW,
                          outbox_name(r, msg.created, msg.id), 0, None, None)]
    return msg, [Unit(f"{msg.id}.{i}", msg.id, i, msg.peer,
                      min(frag_size, msg.size - i * frag_size), NEW,
                      outbox_name(r, msg.created, f"{msg.id}.{i}", i), 0, None, None,
                      i * frag_size)
                 for i in range(msg.units)]
