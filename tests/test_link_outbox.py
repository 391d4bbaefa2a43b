"""When link-sim scans an outbox: when its stamp says it changed (fast, with a fake clock)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from link.sim import RESCAN_ANYWAY, SETTLE, OutboxStamp

POLL = 0.02
# Longer than a kernel tick, the granularity of a local folder's timestamps: the fake clock
# can say SETTLE has passed, but only real time gives the next change a newer stamp.
TICK = 0.05


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def poll(stamp: OutboxStamp, outbox: Path, clock: Clock) -> bool:
    """One poll a little after the last: whether it scanned the outbox."""
    clock.now += POLL
    if not stamp.must_scan(outbox):
        return False
    stamp.scanned(clock())
    return True


def settle(stamp: OutboxStamp, outbox: Path, clock: Clock) -> None:
    """Poll until the stamp trusts the outbox as it is now."""
    time.sleep(TICK)
    while poll(stamp, outbox, clock):
        pass


def settled(tmp_path: Path) -> tuple[OutboxStamp, Path, Clock]:
    clock, outbox = Clock(), tmp_path / "outbox"
    outbox.mkdir()
    stamp = OutboxStamp(clock)
    settle(stamp, outbox, clock)
    return stamp, outbox, clock


def test_an_outbox_is_scanned_until_its_stamp_settles_then_no_more(tmp_path: Path) -> None:
    clock, outbox = Clock(), tmp_path / "outbox"
    outbox.mkdir()
    stamp = OutboxStamp(clock)
    first_seen = clock.now + POLL
    scanned_at = []
    while poll(stamp, outbox, clock):
        scanned_at.append(clock.now)
    # A name renamed in within the same timestamp tick as a scan leaves the stamp as it
    # was: every poll scans until a scan began SETTLE after the stamp was first seen.
    ages = [at - first_seen for at in scanned_at]
    assert len(ages) > 1 and ages[-2] < SETTLE <= ages[-1]
    assert not any(poll(stamp, outbox, clock) for _ in range(100))


def test_a_name_added_removed_or_renamed_is_seen_at_the_next_poll(tmp_path: Path) -> None:
    stamp, outbox, clock = settled(tmp_path)
    (outbox / ".0001.opb.part").write_bytes(b"x")
    assert poll(stamp, outbox, clock)
    settle(stamp, outbox, clock)
    os.rename(outbox / ".0001.opb.part", outbox / "0001.opb")
    assert poll(stamp, outbox, clock)
    settle(stamp, outbox, clock)
    (outbox / "0001.opb").unlink()
    assert poll(stamp, outbox, clock)


def test_an_mtime_set_back_does_not_hide_a_new_name(tmp_path: Path) -> None:
    stamp, outbox, clock = settled(tmp_path)
    before = os.stat(outbox)
    (outbox / "0001.opb").write_bytes(b"x")
    os.utime(outbox, ns=(before.st_atime_ns, before.st_mtime_ns))  # as rsync -t might
    assert poll(stamp, outbox, clock)  # the ctime still moved


def test_a_trusted_outbox_is_still_scanned_every_rescan_anyway(tmp_path: Path) -> None:
    stamp, outbox, clock = settled(tmp_path)
    clock.now += RESCAN_ANYWAY
    assert poll(stamp, outbox, clock)
    assert not poll(stamp, outbox, clock)


def test_an_outbox_that_is_missing_or_replaced_is_scanned(tmp_path: Path) -> None:
    stamp, outbox, clock = settled(tmp_path)
    outbox.rename(tmp_path / "old")
    assert poll(stamp, outbox, clock)  # the scan says what it waits for
    outbox.mkdir()
    assert poll(stamp, outbox, clock)


def test_a_scan_that_did_not_go_through_is_not_trusted(tmp_path: Path) -> None:
    clock, outbox = Clock(), tmp_path / "outbox"
    outbox.mkdir()
    stamp = OutboxStamp(clock)
    clock.now += SETTLE
    for _ in range(10):  # e.g. taking a file fails: no scanned(), so the next poll scans again
        clock.now += 1
        assert stamp.must_scan(outbox)
