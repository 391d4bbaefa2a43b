"""Sending under custody: pack, cut into units, feed the outbox, resend until acked."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

from ..codec import (
    EXPEDITED,
    NORMAL,
    Header,
    Limits,
    fragment_count,
    fragment_header,
    new_id,
    pack_bytes,
    pack_file,
    pack_parts,
    read_head,
    write_fragment,
)
from ..codec.files import Fill, Progress
from ..delivery import peer_alive, retry_delay
from ..errors import ConfigError
from ..fsutil import atomic_write_bytes, atomic_writer
from ..home import Settings
from ..store.spool import RANK_ACK, names_in, outbox_name, rank
from ..store.state import ACKED, CARRIED, FLIGHT, NEW, QUEUED, Message, Unit
from .context import Node, log

SENDING, DELIVERED, EXPIRED = "sending", "delivered", "expired"
ACK_LIFETIME = 86400.0


class Sender:
    def __init__(self, node: Node,
                 on_delivered: Callable[[Message], None] | None = None) -> None:
        self.node, self.on_delivered = node, on_delivered
        self._heads: dict[str, Header] = {}

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
        size = path.stat().st_size
        msg = Message(id=header.id, peer=peer, kind=kind, path=str(path), size=size,
                      priority=priority, created=now, expires=header.expires,
                      units=fragment_count(size, s.fragment_size), state=SENDING,
                      meta={"fragment_size": s.fragment_size, **(custody or {})})
        units = self._units(msg, s.fragment_size)
        if not via_link:
            units = [replace(u, state=CARRIED) for u in units]
        self.node.state.add_message(msg, units)
        log.info("queued %s %s for %s: %d bytes in %d unit(s)", kind, header.id, peer, size,
                 msg.units)
        self.fill(peer)
        return msg

    def _units(self, msg: Message, frag_size: int) -> list[Unit]:
        r = rank(msg.priority)
        if msg.units == 1:
            return [Unit(msg.id, msg.id, -1, msg.peer, msg.size, NEW,
                         outbox_name(r, msg.created, msg.id), 0, None, None)]
        return [Unit(f"{msg.id}.{i}", msg.id, i, msg.peer,
                     min(frag_size, msg.size - i * frag_size), NEW,
                     outbox_name(r, msg.created, f"{msg.id}.{i}", i), 0, None, None)
                for i in range(msg.units)]

    def fill(self, peer: str) -> None:
        """Move waiting units into the outbox while it holds less than the window."""
        queued = self.node.state.queued_bytes(peer)
        for unit in self.node.state.units(peer, NEW):
            if queued and queued + unit.size > self.settings.outbox_window:
                break
            self._materialise(unit)
            queued += unit.size

    def _materialise(self, unit: Unit) -> None:
        msg = self.node.state.message(unit.msg)
        if msg is None or not self.node.state.claim(unit.id):
            return
        # Claimed first, written second: a crash in between looks like a unit the link took
        # and lost, which the retry timer repairs.
        dest = self.node.home.outbox(unit.peer) / unit.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        custody = Path(msg.path)
        if unit.idx < 0:
            with open(custody, "rb") as src, atomic_writer(dest) as out:
                shutil.copyfileobj(src, out, 1024 * 1024)
        else:
            frag = fragment_header(self._head(msg), unit.idx, msg.size,
                                   int(msg.meta["fragment_size"]))
            write_fragment(dest, custody, frag, self.node.seed)
        if unit.attempts:
            log.info("resending %s to %s (attempt %d)", unit.id, unit.peer, unit.attempts + 1)

    def _head(self, msg: Message) -> Header:
        if msg.id not in self._heads:
            with open(msg.path, "rb") as f:
                self._heads[msg.id] = read_head(f, Limits())[0]
        return self._heads[msg.id]

    def scan_taken(self, peer: str) -> None:
        """Units whose files left the outbox were taken by the link: start their timers."""
        present = names_in(self.node.home.outbox(peer))
        now = self.node.clock()
        taken = [u for u in self.node.state.units(peer, QUEUED) if u.name not in present]
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
            self.node.state.set_units([(u.id, {"state": NEW}) for u in due])

    def expire(self) -> None:
        now = self.node.clock()
        for msg in self.node.state.messages(SENDING):
            if msg.expires <= now:
                log.warning("%s %s to %s expired before it was acknowledged", msg.kind, msg.id,
                            msg.peer)
                self._release(msg, EXPIRED)

    def _release(self, msg: Message, state: str) -> None:
        for unit in self.node.state.units_of(msg.id):
            if unit.state == QUEUED:
                (self.node.home.outbox(msg.peer) / unit.name).unlink(missing_ok=True)
        self.node.state.set_message_state(msg.id, state)
        self.node.state.drop_units(msg.id)
        Path(msg.path).unlink(missing_ok=True)
        self._heads.pop(msg.id, None)

    def on_ack(self, peer: str, ids: list[str]) -> None:
        now = self.node.clock()
        units = [u for u in self._units_acked_by(ids) if u.peer == peer and u.state != ACKED]
        # Karn's rule: only a bundle sent once gives an unambiguous round trip.
        self._observe(peer, now, [now - u.taken_at - self._serialisation(u.size) for u in units
                                  if u.state == FLIGHT and u.attempts == 1 and u.taken_at])
        for unit in units:
            if unit.state == QUEUED:
                (self.node.home.outbox(peer) / unit.name).unlink(missing_ok=True)
        self.node.state.set_units([(u.id, {"state": ACKED}) for u in units])
        for msg_id in {u.msg for u in units}:
            msg = self.node.state.message(msg_id)
            if msg and msg.state == SENDING and self.node.state.unacked_count(msg_id) == 0:
                log.info("%s %s delivered to %s", msg.kind, msg.id, peer)
                self._release(msg, DELIVERED)
                if self.on_delivered is not None:
                    self.on_delivered(msg)

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

    def send_ack(self, peer: str, ids: list[str]) -> None:
        """Acks are not kept in custody: a lost ack is repaired by the resent bundle."""
        now = self.node.clock()
        header = Header(id=new_id(), kind="ack", src=self.node.name, dst=peer, created=now,
                        expires=now + ACK_LIFETIME, priority=EXPEDITED, meta={"ids": ids})
        dest = self.node.home.outbox(peer) / outbox_name(RANK_ACK, now, header.id)
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(dest, pack_bytes(header, b"", self.node.seed))

    def busy(self) -> bool:
        return bool(self.node.state.messages(SENDING))
