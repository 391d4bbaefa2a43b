"""link-sim as a real process between two hand-made homes (about 20 s in all)."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from watchdog.observers.inotify_c import WATCHDOG_ALL_EVENTS

from link.sim import RESCAN_ANYWAY, SETTLE

pytestmark = pytest.mark.slow

LINK_SIM = Path(sys.executable).parent / "link-sim"
MiB = 1024 * 1024


def link_sim_command() -> str:
    if LINK_SIM.exists():
        return str(LINK_SIM)
    found = shutil.which("link-sim")
    if found is None:
        pytest.skip("link-sim is not installed (pip install -e .)")
    return found


def make_home(root: Path, name: str, peer: str, role: str) -> Path:
    home = root / name
    (home / "inbox").mkdir(parents=True)
    (home / "outbox" / peer).mkdir(parents=True)
    (home / "node.toml").write_text(f'name = "{name}"\nrole = "{role}"\n')
    return home


@pytest.fixture
def homes(tmp_path: Path) -> tuple[Path, Path]:
    return make_home(tmp_path, "a", "b", "earth"), make_home(tmp_path, "b", "a", "outpost")


def drop(home: Path, peer: str, name: str, data: bytes) -> Path:
    """Write a bundle into the outbox the way a node does: hidden .part, then rename."""
    final = home / "outbox" / peer / name
    part = final.with_name(f".{name}.part")
    part.write_bytes(data)
    os.rename(part, final)
    return final


class LinkSim:
    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.log = tmp_path / f"link-sim-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen([link_sim_command(), "-v", *args], stderr=err)

    def stderr(self) -> str:
        return self.log.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def wait(self, timeout: float = 20) -> int:
        return self.proc.wait(timeout)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Callable[..., LinkSim]]:
    started: list[LinkSim] = []

    def start(*args: str) -> LinkSim:
        sim = LinkSim(tmp_path, *args)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        if sim.proc.poll() is None:
            sim.proc.kill()
            sim.proc.wait()


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> float:
    """Poll until `predicate()` is true; the time.time() at which it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.time()
        time.sleep(0.005)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def visible(directory: Path) -> list[str]:
    try:
        return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
    except FileNotFoundError:
        return []


def read_stats(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


class InotifyEvents:
    """The raw inotify events a node's watchdog reads for one folder (its own mask). Each one
    wakes watchdog's threads, even those it then drops (a folder opened, then closed)."""

    def __init__(self, folder: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, bytes(folder), WATCHDOG_ALL_EVENTS) < 0:
            raise OSError(ctypes.get_errno(), f"cannot watch {folder}")

    def read(self) -> int:
        """How many events came since the last call."""
        count = 0
        while True:
            try:
                buffer = os.read(self.fd, 65536)
            except BlockingIOError:
                return count
            offset = 0
            while offset < len(buffer):  # struct inotify_event: wd, mask, cookie, len, name
                name_length = struct.unpack_from("iIII", buffer, offset)[3]
                offset += 16 + name_length
                count += 1

    def close(self) -> None:
        os.close(self.fd)


def test_latency_both_directions_and_stats(
    homes: tuple[Path, Path], tmp_path: Path, running: Callable[..., LinkSim]
) -> None:
    a, b = homes
    stats = tmp_path / "stats.json"
    sim = running("--a", str(a), "--b", str(b), "--latency", "200ms", "--stats", str(stats))
    wait_for(stats.exists, 10, "the stats file")
    payloads = {f"000{i}-bundle.opb": os.urandom(1000 * i) for i in (3, 1, 2)}
    dropped_at = time.time()
    for name, data in payloads.items():
        drop(a, "b", name, data)
    drop(b, "a", "reply.opb", b"ack")
    (a / "outbox" / "b" / "9999-writing.opb.part").write_bytes(b"not yet")
    (a / "outbox" / "b" / ".hidden").write_bytes(b"not mine")

    seen_at = wait_for(lambda: len(visible(b / "inbox")) == 3, 5, "3 files in B's inbox")
    assert seen_at - dropped_at >= 0.19  # not before the latency
    for name, data in payloads.items():
        assert (b / "inbox" / name).read_bytes() == data
    wait_for(lambda: visible(a / "inbox") == ["reply.opb"], 5, "the reply in A's inbox")
    assert (a / "inbox" / "reply.opb").read_bytes() == b"ack"
    # the files being written are never touched
    assert visible(a / "outbox" / "b") == ["9999-writing.opb.part"]
    assert (a / "outbox" / "b" / ".hidden").exists()

    wait_for(lambda: read_stats(stats)["a->b"]["delivered"]["count"] == 3, 3, "stats")
    assert sim.stop(signal.SIGTERM) == 0
    doc = read_stats(stats)
    assert doc["running"] is False
    ab, ba = doc["a->b"], doc["b->a"]
    assert (ab["from"], ab["to"], ba["from"], ba["to"]) == ("a", "b", "b", "a")
    total = sum(len(d) for d in payloads.values())
    assert ab["offered"] == {"count": 3, "bytes": total}
    assert ab["delivered"] == {"count": 3, "bytes": total}
    assert ba["offered"] == ba["delivered"] == {"count": 1, "bytes": 3}
    for key in ("dropped", "duplicated", "corrupted"):
        assert ab[key]["count"] == ba[key]["count"] == 0
    assert ab["in_flight"] == ba["in_flight"] == 0 and ab["up"] is True
    # taken in name order: priority, then age
    taken = [line.split()[4] for line in sim.stderr().splitlines() if " a->b taken " in line]
    assert taken == sorted(payloads)


def test_an_idle_link_leaves_the_nodes_watchers_asleep_and_takes_a_new_file_at_once(
    homes: tuple[Path, Path], running: Callable[..., LinkSim]
) -> None:
    a, b = homes
    outbox = a / "outbox" / "b"
    running("--a", str(a), "--b", str(b))
    drop(a, "b", "0001-first.opb", b"first")
    wait_for(lambda: visible(b / "inbox") == ["0001-first.opb"], 5, "the first file")
    time.sleep(SETTLE + 0.5)  # an outbox is scanned every poll for SETTLE after it changed
    events = InotifyEvents(outbox)
    try:
        time.sleep(3.0)
        idle = events.read()
        # Scanning the outbox every poll (20 ms) opened and closed it: ~300 events in 3 s.
        # Now it is only stat'ed, and scanned anyway once per RESCAN_ANYWAY (2 events).
        assert RESCAN_ANYWAY > 3.0 and idle <= 2, f"{idle} inotify events in 3 s of idling"

        dropped_at = time.time()
        drop(a, "b", "0002-second.opb", b"second")
        drop(a, "b", "0003-third.opb", b"third")  # at once, perhaps in the same mtime tick
        arrived = wait_for(lambda: len(visible(b / "inbox")) == 3, 5, "two new files")
        assert arrived - dropped_at < 0.5  # a poll or two, not a periodic rescan
        assert events.read() > 0  # the watch works: the link's own work shows
    finally:
        events.close()


def test_bandwidth_serialises_and_leaves_queued_files_in_the_outbox(
    homes: tuple[Path, Path], running: Callable[..., LinkSim]
) -> None:
    a, b = homes
    big, small = os.urandom(MiB), os.urandom(64 * 1024)
    drop(a, "b", "0001-big.opb", big)
    drop(a, "b", "0002-small.opb", small)
    started = time.time()
    sim = running("--a", str(a), "--b", str(b), "--bandwidth", "512k", "--until-idle")
    time.sleep(1.0)
    # the big file occupies the link for 2 s; the small one must still be in the outbox
    assert visible(a / "outbox" / "b") == ["0002-small.opb"]
    assert visible(b / "inbox") == []
    big_at = wait_for(lambda: (b / "inbox" / "0001-big.opb").exists(), 5, "the big file")
    assert big_at - started >= 1.95
    assert sim.wait() == 0
    assert (b / "inbox" / "0001-big.opb").read_bytes() == big
    assert (b / "inbox" / "0002-small.opb").read_bytes() == small
    assert time.time() - started >= 2.1  # 1 MiB + 64 KiB at 512 KiB/s


def test_contact_plan_gap_holds_files_until_the_window_opens(
    homes: tuple[Path, Path], tmp_path: Path, running: Callable[..., LinkSim]
) -> None:
    a, b = homes
    plan = tmp_path / "plan.txt"
    plan.write_text("# up 0-3 s, down 3-8 s, up after 8 s\n0s 3s\n8s forever\n")
    state, stats = tmp_path / "state", tmp_path / "stats.json"
    running(
        "--a", str(a), "--b", str(b), "--latency", "100ms", "--contact-plan", str(plan),
        "--state", str(state), "--stats", str(stats),
    )  # fmt: skip
    wait_for((state / "origin.json").exists, 10, "the plan's origin")
    origin = json.loads((state / "origin.json").read_text())["origin"]

    drop(a, "b", "0001-early.opb", b"early")
    wait_for(lambda: visible(b / "inbox") == ["0001-early.opb"], 3, "the file sent while up")

    time.sleep(max(0.0, origin + 3.3 - time.time()))
    assert read_stats(stats)["a->b"]["up"] is False
    late = {f"000{i}-late.opb": os.urandom(500) for i in (2, 3, 4)}
    for name, data in late.items():
        drop(a, "b", name, data)
    drop(b, "a", "0001-reply.opb", b"reply")
    time.sleep(max(0.0, origin + 7.8 - time.time()))
    # during the gap nothing is taken (the node's timers must not start) nor delivered
    assert visible(a / "outbox" / "b") == sorted(late)
    assert visible(b / "inbox") == ["0001-early.opb"]
    assert visible(a / "inbox") == []

    arrived = wait_for(lambda: len(visible(b / "inbox")) == 4, 3, "the held files")
    assert arrived >= origin + 8.09
    for name, data in late.items():
        assert (b / "inbox" / name).read_bytes() == data
    wait_for(lambda: visible(a / "inbox") == ["0001-reply.opb"], 2, "the reply")


def test_kill_9_loses_nothing_and_doubles_nothing(
    homes: tuple[Path, Path], tmp_path: Path, running: Callable[..., LinkSim]
) -> None:
    a, b = homes
    state = tmp_path / "state"
    payloads = {f"{i:04d}.opb": os.urandom(64 * 1024) for i in range(6)}
    for name, data in payloads.items():
        drop(a, "b", name, data)
    common = ["--a", str(a), "--b", str(b), "--state", str(state), "--latency", "2s"]
    # 64 KiB at 256 KiB/s: the link takes one file every 0.25 s
    first = running(*common, "--bandwidth", "256k")
    lane = state / "a-b"
    wait_for(lambda: len(list(lane.glob("*.data"))) >= 2, 5, "two files in flight")
    first.proc.kill()  # SIGKILL: no chance to clean up
    first.proc.wait()
    # in flight = a sidecar with its payload (a sidecar alone is an intent: killed just
    # before the rename, the file is still in the outbox)
    in_flight = sorted(
        json.loads(p.read_text())["name"]
        for p in lane.glob("*.json")
        if p.with_suffix(".data").exists()
    )
    queued = visible(a / "outbox" / "b")
    assert visible(b / "inbox") == []  # still propagating
    assert sorted(in_flight + queued) == sorted(payloads)  # each file in exactly one place
    assert 1 <= len(in_flight) < 6

    second = running(*common, "--bandwidth", "256k", "--until-idle")
    assert second.wait(timeout=15) == 0
    assert visible(b / "inbox") == sorted(payloads)
    for name, data in payloads.items():
        assert (b / "inbox" / name).read_bytes() == data
    assert list(lane.iterdir()) == []
    assert "recovered" in second.stderr()


def test_loss_duplicate_and_corruption(
    homes: tuple[Path, Path], tmp_path: Path, running: Callable[..., LinkSim]
) -> None:
    a, b = homes
    data = os.urandom(4096)
    source = drop(a, "b", "0001.opb", data)
    custody = tmp_path / "custody.opb"
    os.link(source, custody)  # the node's custody copy may share the inode
    stats = tmp_path / "stats.json"
    args = ["--a", str(a), "--b", str(b), "--until-idle", "--stats", str(stats), "--seed", "1"]
    sim = running(*args, "--duplicate", "1", "--corrupt", "1")
    assert sim.wait() == 0
    assert visible(b / "inbox") == ["0001.dup1.opb", "0001.opb"]
    for name in visible(b / "inbox"):
        copy = (b / "inbox" / name).read_bytes()
        assert len(copy) == len(data) and copy != data
        assert 1 <= sum(x != y for x, y in zip(copy, data, strict=True)) <= 4
    assert custody.read_bytes() == data
    ab = read_stats(stats)["a->b"]
    assert ab["offered"]["count"] == 1 and ab["delivered"]["count"] == 2
    assert ab["duplicated"]["count"] == 1 and ab["corrupted"]["count"] == 2

    drop(b, "a", "0001-lost.opb", b"lost")
    sim = running(*args, "--loss", "1")
    assert sim.wait() == 0
    assert visible(b / "outbox" / "a") == [] and visible(a / "inbox") == []
    ba = read_stats(stats)["b->a"]
    assert ba["dropped"] == {"count": 1, "bytes": 4} and ba["delivered"]["count"] == 0


def test_waits_for_homes_that_do_not_exist_yet(
    tmp_path: Path, running: Callable[..., LinkSim]
) -> None:
    a, b = tmp_path / "later-a", tmp_path / "later-b"
    sim = running("--a", str(a), "--b", str(b), "--state", str(tmp_path / "state"))
    time.sleep(0.5)
    assert sim.proc.poll() is None
    make_home(tmp_path, "later-b", "later-a", "outpost")
    (a / "inbox").mkdir(parents=True)
    (a / "node.toml").write_text('name = "later-a"\nrole = "earth"\n')
    time.sleep(0.2)
    (a / "outbox" / "later-b").mkdir(parents=True)  # the outbox folder appears last
    drop(a, "later-b", "x.opb", b"finally")
    wait_for(lambda: visible(b / "inbox") == ["x.opb"], 5, "delivery once the homes exist")
    assert sim.stop(signal.SIGINT) == 0
    log = sim.stderr()
    assert log.count("waiting for") <= 4  # said once each, not once per poll
    assert "stopped on SIGINT" in log


def test_cli_errors_and_profiles(
    homes: tuple[Path, Path], tmp_path: Path, running: Callable[..., LinkSim]
) -> None:
    a, b = homes
    exe = link_sim_command()
    out = subprocess.run([exe, "profiles"], capture_output=True, text=True, check=True).stdout
    for name in ("lan", "geo-satellite", "antarctic", "moon", "mars"):
        assert name in out
    plan = tmp_path / "bad-plan.txt"
    plan.write_text("0s 10s\n20s 15s\n")
    bad = subprocess.run(
        [exe, "--a", str(a), "--b", str(b), "--contact-plan", str(plan)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "line 2" in bad.stderr and "ends before" in bad.stderr
    state = tmp_path / "state"
    first = running("--a", str(a), "--b", str(b), "--state", str(state))
    wait_for((state / "origin.json").exists, 10, "the first link-sim")
    second = subprocess.run(
        [exe, "--a", str(a), "--b", str(b), "--state", str(state)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert second.returncode == 1 and "another link-sim" in second.stderr
    assert first.stop() == 0
