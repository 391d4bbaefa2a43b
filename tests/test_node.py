"""Two nodes in one process on a fake clock, with a link the test drives by hand.

The far planet is simulated by `helpers.Link` (files moved, dropped or duplicated on the
test's say); the nodes' code, SQLite state and files are real.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from outpost.node.receiver import Receiver
from outpost.store.spool import bundle_files, read_reason

from .helpers import Pair, hostile_set


def send(pair: Pair, data: bytes, name: str = "f.bin", **kw: object):  # type: ignore[no-untyped-def]
    return pair.a.sender.submit("mars", "file", io.BytesIO(data), meta={"name": name}, **kw)


def received(pair: Pair) -> dict[str, bytes]:
    folder = pair.b_home.received / "earth"
    if not folder.exists():
        return {}
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}


def delivered(pair: Pair, msg_id: str) -> bool:
    m = pair.a.node.state.message(msg_id)
    return m is not None and m.state == "delivered"


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return Pair(tmp_path, fragment_size="64k")


def test_small_message_delivered_once_and_custody_released(pair: Pair) -> None:
    msg = send(pair, b"hello mars", "hello.txt")
    pair.run(lambda: delivered(pair, msg.id))
    assert received(pair) == {"hello.txt": b"hello mars"}
    assert not Path(msg.path).exists(), "custody copy kept after the ack"
    assert pair.a.node.state.units_of(msg.id) == []


def test_fragments_duplicated_and_reordered_arrive_once(pair: Pair) -> None:
    data = os.urandom(1_000_000)
    pair.link.fate = lambda _p: "duplicate"
    msg = send(pair, data)
    assert msg.units > 10
    pair.run(lambda: delivered(pair, msg.id))
    assert received(pair) == {"f.bin": data}


def test_only_lost_fragments_are_resent(pair: Pair) -> None:
    data = os.urandom(1_000_000)
    first_time: set[str] = set()

    def lose_every_third_once(path: Path) -> str:
        if path.name.startswith("0-") or path.name in first_time or hash(path.name) % 3:
            return "deliver"
        first_time.add(path.name)
        return "drop"

    pair.link.fate = lose_every_third_once
    msg = send(pair, data)
    pair.run(lambda: delivered(pair, msg.id), steps=400)
    assert received(pair) == {"f.bin": data}
    sent = [m.split(":", 1)[1] for m in pair.link.moved if "-" + msg.id[:8] in m or msg.id in m]
    resent = {n for n in sent if sent.count(n) > 1}
    assert resent == first_time, "a fragment that arrived was sent again"


def test_lost_ack_means_resend_but_one_delivery(pair: Pair) -> None:
    dropped = []

    def drop_first_ack(path: Path) -> str:
        if path.name.startswith("0-") and not dropped:
            dropped.append(path.name)
            return "drop"
        return "deliver"

    pair.link.fate = drop_first_ack
    msg = send(pair, b"once only", "once.txt")
    pair.run(lambda: delivered(pair, msg.id), steps=400)
    assert dropped
    assert received(pair) == {"once.txt": b"once only"}


def test_crash_between_record_and_rename_finishes_on_restart(pair: Pair,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    class Killed(BaseException):
        pass

    def die(self: Receiver, src: str, bundle_id: str) -> None:
        raise Killed

    send(pair, b"survives", "s.txt")
    pair.a.tick()
    pair.link.carry()
    monkeypatch.setattr(Receiver, "finish", die)
    with pytest.raises(Killed):
        pair.b.rescan()
    monkeypatch.undo()
    assert received(pair) == {}
    pair.restart("b")
    assert received(pair) == {"s.txt": b"survives"}
    pair.run(lambda: not pair.a.sender.busy())
    assert received(pair) == {"s.txt": b"survives"}


def test_reassembly_resumes_after_restart(pair: Pair) -> None:
    data = os.urandom(800_000)
    msg = send(pair, data)
    pair.a.tick()
    files = bundle_files(pair.a_home.outbox("mars"))
    for f in files[: len(files) // 2]:
        os.replace(f, pair.b_home.inbox / f.name)
    pair.b.rescan()
    row = pair.b.node.state.reasm("earth", msg.id)
    assert row["received"] == (len(files) // 2) * 64 * 1024, "bytes of the fragments stored"
    pair.restart("b")
    pair.run(lambda: delivered(pair, msg.id), steps=600)
    assert received(pair) == {"f.bin": data}


def test_message_expires_when_link_never_takes_it(pair: Pair) -> None:
    msg = send(pair, b"too late", lifetime=5.0)
    pair.a.tick()
    assert bundle_files(pair.a_home.outbox("mars"))
    pair.clock.advance(6)
    pair.a.tick()
    assert pair.a.node.state.message(msg.id).state == "expired"
    assert bundle_files(pair.a_home.outbox("mars")) == []
    assert not Path(msg.path).exists()


def test_expedited_overtakes_bulk_in_the_outbox(pair: Pair) -> None:
    from outpost.codec import BULK, EXPEDITED
    send(pair, os.urandom(300_000), "bulk.bin", priority=BULK)
    urgent = send(pair, b"now", "urgent.txt", priority=EXPEDITED)
    first = bundle_files(pair.a_home.outbox("mars"))[0]
    assert urgent.id in first.name


def test_hostile_inbox_files_are_quarantined_and_node_goes_on(pair: Pair) -> None:
    stranger = os.urandom(32)
    cases = hostile_set(pair.a.node.seed, stranger)
    for name, (data, _reason) in cases.items():
        path = pair.b_home.inbox / name
        path.write_bytes(data)
        os.utime(path, (0, 0))  # old enough not to look half-written
    pair.b.rescan()
    reasons = {}
    for q in bundle_files(pair.b_home.quarantine):
        rec = read_reason(q)
        assert rec is not None
        reasons[rec.original] = rec.reason
    assert reasons == {name: reason for name, (_d, reason) in cases.items()}
    msg = send(pair, b"still alive", "alive.txt")
    pair.run(lambda: delivered(pair, msg.id))
    assert received(pair)["alive.txt"] == b"still alive"


def test_seen_ids_survive_restart(pair: Pair) -> None:
    msg = send(pair, b"one", "one.txt")
    pair.a.tick()
    copy = {p.name: p.read_bytes() for p in bundle_files(pair.a_home.outbox("mars"))}
    pair.run(lambda: delivered(pair, msg.id))
    pair.restart("b")
    for name, data in copy.items():
        (pair.b_home.inbox / name).write_bytes(data)
    pair.b.rescan()
    assert sorted(received(pair)) == ["one.txt"]
    digest = hashlib.sha256(b"one").hexdigest()
    assert hashlib.sha256(received(pair)["one.txt"]).hexdigest() == digest


def test_timers_come_forward_when_the_round_trip_drops(pair: Pair) -> None:
    """A timer set while the peer was slow is shortened once acks show it is fast again."""
    st = pair.a.node.state
    from outpost.delivery import RttEstimator
    st.save_rtt("mars", RttEstimator(srtt=60.0, rttvar=30.0, samples=5), last_ack=None)
    lost = send(pair, b"lost once", "lost.txt")
    pair.a.tick()
    for f in bundle_files(pair.a_home.outbox("mars")):
        f.unlink()  # the link took it and lost it
    pair.a.tick()
    (unit,) = st.units_of(lost.id)
    assert unit.next_retry is not None and unit.next_retry - pair.clock.t >= 59
    first_wait = unit.next_retry - pair.clock.t
    for i in range(20):  # fast round trips from other messages
        msg = send(pair, b"x", f"x{i}.txt")
        pair.run(lambda m=msg: delivered(pair, m.id), steps=50, seconds=0.1)
    (unit,) = st.units_of(lost.id)
    assert unit.taken_at is not None and unit.next_retry is not None
    assert unit.next_retry - unit.taken_at < first_wait - 15
    pair.run(lambda: delivered(pair, lost.id), steps=200, seconds=0.5)


def test_units_taken_just_before_a_gap_wait_for_the_link_not_their_timers(
        tmp_path: Path) -> None:
    """The link takes two fragments, a third of a second apart, then a contact gap stops
    it in both directions (the rest wait in the outbox, the acks in mars's). Their timers
    run out many times over during the gap; neither is sent again, and once the link moves
    the message completes with every unit sent once. (Before: the first was resent in the
    gap, when its timer ran out before the node took the silence for a gap.)"""
    pair = Pair(tmp_path, fragment_size="64k", bandwidth="64k")
    msg = send(pair, os.urandom(300_000))
    pair.a.tick()
    outbox = pair.a_home.outbox("mars")
    taken = sorted(bundle_files(outbox))[:2]
    for path in taken:  # the link takes one, and the next after a third of a second
        os.replace(path, pair.b_home.inbox / path.name)
        for d in (pair.a, pair.b):
            d.tick()
            d.rescan()
        pair.clock.advance(0.3)
    for _ in range(100):  # 10 s of gap: the timers (about 2.5 s) run out several times
        for d in (pair.a, pair.b):
            d.tick()
            d.rescan()
        pair.clock.advance(0.1)
    assert [u.attempts for u in pair.a.node.state.units_of(msg.id)] == [1] * msg.units
    assert not {p.name for p in taken} & {p.name for p in bundle_files(outbox)}
    pair.run(lambda: delivered(pair, msg.id))
    assert not any(p.name in m for p in taken for m in pair.link.moved), "resent"
