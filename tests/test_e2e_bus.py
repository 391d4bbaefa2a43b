"""The bus end to end: two real `outpost-node start` processes and a real `link-sim`.

Small messages are queued through the Sender API in the test process (the same code the
`send` command runs, against the same SQLite state the running node uses) because 200
CLI start-ups would take longer than the transfer itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from outpost.home import Home, load_home
from outpost.node.context import open_node
from outpost.node.sender import Sender, custody_start
from outpost.store.state import State

from .helpers import make_pair
from .procs import assert_clean_log, files_in, running, start_link, start_node, stop, wait_for

pytestmark = pytest.mark.slow
HOSTILE_LINK = ["--latency", "200ms", "--loss", "0.2", "--duplicate", "0.05", "--corrupt",
                "0.05", "--reorder", "--seed", "11"]
NODE_SETTINGS = {"rtt": "1s", "ack_delay": "100ms", "rescan": "1s"}


def random_file(path: Path, size: int) -> str:
    sha = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(size // (1 << 20)):
            block = os.urandom(1 << 20)
            f.write(block)
            sha.update(block)
    return sha.hexdigest()


def sha_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def received(home: Home) -> list[Path]:
    return files_in(home.received / "earth")


def queue_file(earth: Home, path: Path) -> str:
    node = open_node(load_home(earth.path))
    with open(path, "rb") as f:
        msg = Sender(node).submit("mars", "file", f, meta={"name": path.name})
    node.state.close()
    return msg.id


def reassembled(mars: Home, msg_id: str) -> int:
    state = State(mars.state_db)
    try:
        row = state.reasm("earth", msg_id)
        return int(row["received"]) if row is not None else 0
    finally:
        state.close()


def no_custody_left(earth: Home) -> bool:
    state = State(earth.state_db)
    try:
        return not state.messages("sending")
    finally:
        state.close()


@pytest.fixture
def homes(tmp_path: Path) -> tuple[Home, Home]:
    return make_pair(tmp_path, **NODE_SETTINGS)


def test_200_messages_and_50mb_exactly_once_through_a_hostile_link(
        tmp_path: Path, homes: tuple[Home, Home]) -> None:
    earth, mars = homes
    big = tmp_path / "big.bin"
    digest = random_file(big, 50 << 20)
    procs = [start_node(earth.path, "earth"), start_node(mars.path, "outpost"),
             start_link(earth.path, mars.path, tmp_path / "link", *HOSTILE_LINK)]
    with running(*procs):
        node = open_node(load_home(earth.path))
        sender = Sender(node)
        for i in range(200):
            sender.submit("mars", "file", io.BytesIO(f"message {i}\n".encode() * (i + 1)),
                          meta={"name": f"msg-{i:03d}.txt"})
        node.state.close()
        queue_file(earth, big)
        wait_for(lambda: len(received(mars)) >= 201 and no_custody_left(earth), 240,
                 "all 201 deliveries acknowledged")
        time.sleep(2)  # late duplicates still in flight must not show up as new files
        names = sorted(p.name for p in received(mars))
        assert names == sorted([f"msg-{i:03d}.txt" for i in range(200)] + ["big.bin"])
        for i in range(200):
            text = (mars.received / "earth" / f"msg-{i:03d}.txt").read_text()
            assert text == f"message {i}\n" * (i + 1)
        assert sha_of(mars.received / "earth" / "big.bin") == digest
        stats = json.loads((tmp_path / "link-stats.json").read_text())["a->b"]
        assert stats["dropped"]["count"] > 0 and stats["corrupted"]["count"] > 0
        assert stats["duplicated"]["count"] > 0
        assert files_in(mars.quarantine), "corrupted copies should be quarantined"
        for p in procs:
            assert stop(p) == 0
    assert_clean_log(earth.path)
    assert_clean_log(mars.path)


@pytest.mark.parametrize("victim", ["receiver", "link-sim"])
def test_kill_9_in_the_middle_of_50mb_then_restart(
        tmp_path: Path, homes: tuple[Home, Home], victim: str) -> None:
    earth, mars = homes
    big = tmp_path / "big.bin"
    digest = random_file(big, 50 << 20)
    link_args = ["--latency", "200ms", "--bandwidth", "8M", "--loss", "0.05", "--seed", "3"]
    sender = start_node(earth.path, "earth")
    receiver = start_node(mars.path, "outpost")
    link = start_link(earth.path, mars.path, tmp_path / "link", *link_args)
    with running(sender, receiver, link):
        msg_id = queue_file(earth, big)
        wait_for(lambda: reassembled(mars, msg_id) >= 15, 60, "a third of the fragments")
        if victim == "receiver":
            receiver.send_signal(signal.SIGKILL)
            receiver.wait()
            time.sleep(1)
            receiver = start_node(mars.path, "outpost")
        else:
            link.send_signal(signal.SIGKILL)
            link.wait()
            time.sleep(1)
            link = start_link(earth.path, mars.path, tmp_path / "link", *link_args)
        with running(receiver, link):
            wait_for(lambda: no_custody_left(earth), 120, "the transfer to complete")
            wait_for(lambda: bool(received(mars)), 10, "the file")
            time.sleep(1)
            assert [p.name for p in received(mars)] == ["big.bin"]
            assert sha_of(mars.received / "earth" / "big.bin") == digest
            log = (mars.path / "node.log").read_text()
            assert log.count(f"delivered file {msg_id}") == 1
    assert_clean_log(earth.path)
    assert_clean_log(mars.path)


def test_nothing_crosses_during_a_contact_gap(tmp_path: Path,
                                              homes: tuple[Home, Home]) -> None:
    earth, mars = homes
    plan = tmp_path / "plan.txt"
    plan.write_text("# up for 3 s, down until 12 s, then up\n0s 3s\n12s 1h\n")
    link = start_link(earth.path, mars.path, tmp_path / "link", "--latency", "100ms",
                      "--contact-plan", str(plan))
    procs = [link, start_node(earth.path, "earth"), start_node(mars.path, "outpost")]
    with running(*procs):
        wait_for(lambda: (tmp_path / "link-stats.json").exists(), 10, "link-sim stats")
        origin_text = json.loads((tmp_path / "link-stats.json").read_text())["origin"]
        origin = datetime.fromisoformat(origin_text.replace("Z", "+00:00")).timestamp()
        wait_for(lambda: time.time() > origin + 4, 10, "the gap")
        node = open_node(load_home(earth.path))
        for i in range(20):
            Sender(node).submit("mars", "file", io.BytesIO(b"x" * 1000 * i),
                                meta={"name": f"gap-{i}.txt"})
        node.state.close()
        wait_for(lambda: time.time() > origin + 11.5, 15, "the end of the gap")
        assert received(mars) == [], "something crossed during the gap"
        assert files_in(mars.inbox) == []
        wait_for(lambda: len(received(mars)) == 20, 30, "everything after the gap")
        arrivals = [p.stat().st_mtime for p in received(mars)]
        assert min(arrivals) >= origin + 12
    assert_clean_log(earth.path)
    assert_clean_log(mars.path)


def test_fragments_too_big_for_the_contact_windows_are_cut_until_they_fit(
        tmp_path: Path, homes: tuple[Home, Home]) -> None:
    """Windows of 1 s at 768 KiB/s: a 1 MiB fragment never fits, its halves do."""
    earth, mars = homes
    plan = tmp_path / "plan.txt"
    plan.write_text("0s 1s\nrepeat 2s\n")
    link = start_link(earth.path, mars.path, tmp_path / "link", "--latency", "50ms",
                      "--bandwidth", "768k", "--contact-plan", str(plan))
    data = tmp_path / "big.bin"
    digest = random_file(data, 2 << 20)
    procs = [link, start_node(earth.path, "earth"), start_node(mars.path, "outpost")]
    with running(*procs):
        node = open_node(load_home(earth.path))
        with open(data, "rb") as f:
            Sender(node).submit("mars", "file", f, meta={"name": "big.bin"})
        for i in range(5):  # small traffic that does get through, as a link would carry
            Sender(node).submit("mars", "file", io.BytesIO(b"ping"), meta={"name": f"p{i}"})
        node.state.close()
        wait_for(lambda: (mars.received / "earth" / "big.bin").exists(), 120,
                 "the 2 MiB file through windows shorter than a fragment")
        assert sha_of(mars.received / "earth" / "big.bin") == digest
        log = (earth.path / "node.log").read_text()
        assert "cut in two" in log
    assert_clean_log(earth.path)
    assert_clean_log(mars.path)


def test_a_transfer_cut_by_contact_gaps_resumes_where_it_stopped(tmp_path: Path) -> None:
    """Windows of 2 s every 4 s at 1 MiB/s: 6 MiB in 25 fragments spans four windows.
    Each window carries on where the last stopped: no fragment crosses twice (the node
    takes an outbox the link stopped taking from for a gap, not a loss, so it resends
    nothing), and the file arrives whole."""
    earth, mars = make_pair(tmp_path, **NODE_SETTINGS, fragment_size="256k", bandwidth="1M")
    plan = tmp_path / "plan.txt"
    plan.write_text("0s 2s\nrepeat 4s\n")
    link = start_link(earth.path, mars.path, tmp_path / "link", "--latency", "100ms",
                      "--bandwidth", "1M", "--contact-plan", str(plan))
    data = tmp_path / "big.bin"
    digest = random_file(data, 6 << 20)
    procs = [link, start_node(earth.path, "earth"), start_node(mars.path, "outpost")]
    with running(*procs):
        node = open_node(load_home(earth.path))
        with open(data, "rb") as f:
            msg = Sender(node).submit("mars", "file", f, meta={"name": "big.bin"})
        node.state.close()
        wait_for(lambda: (mars.received / "earth" / "big.bin").exists(), 90,
                 "6 MiB through four contact windows")
        assert sha_of(mars.received / "earth" / "big.bin") == digest
        wait_for(lambda: no_custody_left(earth), 30, "earth's custody released")
        time.sleep(2.5)  # link-sim rewrites its counters every second
    stats = json.loads((tmp_path / "link-stats.json").read_text())
    log = (earth.path / "node.log").read_text()
    assert "resending" not in log, [x for x in log.splitlines() if "resending" in x][:5]
    assert stats["a->b"]["offered"]["count"] == msg.units, stats["a->b"]
    assert stats["a->b"]["held"]["count"] >= 1, "no transfer was cut by a window closing"
    assert log.count(f"{msg.id} delivered") == 1
    assert_clean_log(earth.path)
    assert_clean_log(mars.path)


def test_an_exported_message_imported_by_hand_leaves_custody_once_acked(
        tmp_path: Path, homes: tuple[Home, Home]) -> None:
    """Removable media one way, the link the other: the outpost's ack of the whole message
    crosses the link and Earth's custody entry goes (it stayed IN FLIGHT for good)."""
    earth, mars = homes
    data = tmp_path / "carried.bin"
    random_file(data, 3 << 20)
    node = open_node(load_home(earth.path))
    with open(data, "rb") as f:
        msg = Sender(node).submit("mars", "file", f, meta={"name": "carried.bin"},
                                  via_link=False)
    node.state.close()
    assert msg.units > 1
    carried = Path(msg.path).read_bytes()[custody_start(msg):]  # as `export` copies it
    (mars.inbox / f"{msg.id}.opb").write_bytes(carried)
    link = start_link(earth.path, mars.path, tmp_path / "link", "--latency", "100ms")
    procs = [link, start_node(earth.path, "earth"), start_node(mars.path, "outpost")]
    with running(*procs):
        wait_for(lambda: (mars.received / "earth" / "carried.bin").exists(), 30,
                 "the carried message delivered")

        def released() -> bool:
            state = State(earth.state_db)
            try:
                found = state.message(msg.id)
                return found is not None and found.state == "delivered"
            finally:
                state.close()
        wait_for(released, 30, "Earth to let go of its custody copy")
    assert_clean_log(earth.path)
    assert_clean_log(mars.path)
