"""What a hostile peer, a crash and a confused operator found (issue 7), one test each.

Most run two nodes in one process on a fake clock with a link the test drives by hand
(helpers.Pair): the nodes' code, SQLite state and files are real; the far planet is not.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from outpost.codec import new_id, pack_bytes
from outpost.errors import ConfigError, StateError
from outpost.fsutil import try_lock
from outpost.home import load_home
from outpost.node.context import open_node
from outpost.node.daemon import Daemon
from outpost.node.handlers import FileHandler, safe_name
from outpost.node.setup import init_home, repair_home, trust_peer
from outpost.store.spool import bundle_files, read_reason
from outpost.store.state import FAILED

from .helpers import Pair, header
from .procs import tool
from .test_node import delivered, received, send


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return Pair(tmp_path, fragment_size="64k")


def quarantined(pair: Pair) -> dict[str, str]:
    out = {}
    for q in bundle_files(pair.b_home.quarantine):
        rec = read_reason(q)
        assert rec is not None
        out[rec.original] = rec.reason
    return out


def deliver_file(pair: Pair, name: str, bundle: bytes) -> Path:
    path = pair.b_home.inbox / name
    path.write_bytes(bundle)
    os.utime(path, (0, 0))  # old enough not to look half-written
    return path


# 1. a local failure at the final assembly is retried by the node's own timer

def test_a_whole_reassembly_held_up_by_a_full_disk_is_delivered_without_a_restart(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(300_000)
    real = FileHandler.prepare
    calls = {"n": 0}

    def disk_full_once(self: FileHandler, node, hdr, path):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, node, hdr, path)

    monkeypatch.setattr(FileHandler, "prepare", disk_full_once)
    msg = send(pair, data)
    pair.run(lambda: calls["n"] >= 1, steps=200)
    assert not delivered(pair, msg.id), "acked as a whole before it was made durable"
    pair.run(lambda: delivered(pair, msg.id), steps=600)  # 60 s: two local retry periods
    assert received(pair) == {"f.bin": data}


# 2. two nodes on one home

def test_a_second_node_on_a_home_is_refused(pair: Pair) -> None:
    lock = try_lock(pair.b_home.path / "node.lock")
    assert lock is not None
    try:
        with pytest.raises(ConfigError, match="already runs"):
            Daemon(open_node(pair.b_home)).run()
    finally:
        lock.close()


# 3. long names, and one file that fails does not stop the scan

def test_a_legal_long_utf8_name_is_delivered_and_never_too_long_for_the_disk(
        pair: Pair) -> None:
    name = "€" * 82 + ".x"  # 84 characters, 248 bytes: legal, but no room for a suffix
    msg = send(pair, b"long", name)
    pair.run(lambda: delivered(pair, msg.id))
    (got,) = received(pair)
    assert received(pair)[got] == b"long"
    assert len(got.encode()) <= 255 and got.endswith(".x") and got.startswith("€")


def test_one_file_that_cannot_be_handled_does_not_stop_the_others(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    real = FileHandler.prepare

    def refuse_one(self: FileHandler, node, hdr, path):  # type: ignore[no-untyped-def]
        if hdr.meta.get("name") == "stuck.txt":
            raise OSError(errno.ENAMETOOLONG, "File name too long")
        return real(self, node, hdr, path)

    monkeypatch.setattr(FileHandler, "prepare", refuse_one)
    send(pair, b"x", "stuck.txt")
    after = [send(pair, str(i).encode(), f"after-{i}.txt") for i in range(3)]
    pair.run(lambda: all(delivered(pair, m.id) for m in after), steps=100)
    assert sorted(received(pair)) == ["after-0.txt", "after-1.txt", "after-2.txt"]


# 4. nothing delivered is overwritten

def test_files_of_one_name_whose_ids_share_a_prefix_are_all_kept(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    import outpost.node.sender as sender_module

    real_new_id = sender_module.new_id
    ids = iter(f"aaaaaaaa{i:024x}" for i in range(3))
    monkeypatch.setattr(sender_module, "new_id", lambda: next(ids, None) or real_new_id())
    msgs = [send(pair, f"copy {i}".encode(), "same.txt") for i in range(3)]
    pair.run(lambda: all(delivered(pair, m.id) for m in msgs))
    assert sorted(received(pair).values()) == [b"copy 0", b"copy 1", b"copy 2"]


# 5. a lost or damaged state is refused, and repair rebuilds what it can

def test_a_truncated_state_is_refused_and_repair_brings_custody_back(pair: Pair) -> None:
    msg = send(pair, os.urandom(200_000))
    pair.a.node.state.close()
    pair.a_home.state_db.write_bytes(b"")
    for wal in ("state.db-wal", "state.db-shm"):
        (pair.a_home.path / wal).unlink(missing_ok=True)
    with pytest.raises(StateError, match="repair"):
        open_node(pair.a_home)
    done = repair_home(pair.a_home, time.time())
    assert done["peers"] == ["mars"] and done["custody"] == [msg.id]
    pair.a = Daemon(open_node(pair.a_home, pair.clock))
    pair.run(lambda: delivered(pair, msg.id), steps=400)
    assert len(received(pair)) == 1


def test_a_receiver_whose_state_was_lost_refuses_to_start_rather_than_refuse_bundles(
        pair: Pair) -> None:
    pair.b.node.state.close()
    pair.b_home.state_db.unlink()
    with pytest.raises(StateError, match="was in use"):
        open_node(pair.b_home)


def test_a_damaged_state_file_is_refused_at_start(tmp_path: Path) -> None:
    home = init_home(tmp_path / "h", "earth")
    with open(home.state_db, "r+b") as f:
        f.seek(100)
        f.write(os.urandom(4000))
    with pytest.raises(StateError):
        open_node(home, check=True)


# 6. nothing is acked that was not made durable and verified

def test_a_reassembly_file_deleted_half_way_is_sent_again_not_lost(pair: Pair) -> None:
    data = os.urandom(600_000)
    msg = send(pair, data)
    pair.a.tick()
    files = bundle_files(pair.a_home.outbox("mars"))
    for f in files[: len(files) // 2]:
        os.replace(f, pair.b_home.inbox / f.name)
    pair.b.rescan()
    for f in (pair.b_home.reasm).iterdir():
        f.unlink()
    pair.run(lambda: delivered(pair, msg.id), steps=2000, seconds=0.5)
    assert received(pair) == {"f.bin": data}


# 8. only regular files are read from the inbox

def test_a_fifo_in_the_inbox_neither_blocks_the_node_nor_stops_it(pair: Pair) -> None:
    fifo = pair.b_home.inbox / "trap.opb"
    os.mkfifo(fifo)
    os.utime(fifo, (0, 0))
    done = threading.Event()

    def handle() -> None:
        pair.b._handle(fifo)
        done.set()

    threading.Thread(target=handle, daemon=True).start()
    assert done.wait(5), "the node blocked opening a FIFO"
    assert quarantined(pair) == {"trap.opb": "not-a-file"}
    msg = send(pair, b"still here", "x.txt")
    pair.run(lambda: delivered(pair, msg.id))


# 9. one bad bundle never stops a node

def test_a_name_with_a_nul_byte_is_delivered_under_a_safe_name(pair: Pair) -> None:
    bundle = pack_bytes(header(meta={"name": "evil\x00.txt"}), b"payload",
                        pair.a.node.seed)
    deliver_file(pair, "nul.opb", bundle)
    pair.b.rescan()
    assert list(received(pair).values()) == [b"payload"]
    assert safe_name("a\x00b", "fallback") == "fallback"


# 10. ids are unique per sender only

def test_two_peers_may_use_one_id_and_both_are_delivered(pair: Pair, tmp_path: Path) -> None:
    venus = init_home(tmp_path / "venus", "earth", "venus")
    trust_peer(pair.b_home, venus.path)
    shared = new_id()
    from_earth = pack_bytes(header(id=shared, meta={"name": "earth.txt"}), b"from earth",
                            pair.a.node.seed)
    from_venus = pack_bytes(header(id=shared, src="venus", meta={"name": "venus.txt"}),
                            b"from venus", venus.signing_seed())
    deliver_file(pair, "1-venus.opb", from_venus)
    deliver_file(pair, "2-earth.opb", from_earth)
    pair.b.rescan()
    assert received(pair) == {"earth.txt": b"from earth"}
    assert (pair.b_home.received / "venus" / "venus.txt").read_bytes() == b"from venus"


# 11. a replay after its id was forgotten is refused, whatever the clock does

def test_a_replay_after_the_seen_window_is_refused_even_with_the_clock_stepped_back(
        pair: Pair) -> None:
    now = pair.clock()
    bundle = pack_bytes(header(created=now, expires=now + 3600, meta={"name": "once.txt"}),
                        b"once", pair.a.node.seed)
    deliver_file(pair, "first.opb", bundle)
    pair.b.rescan()
    pair.clock.advance(3 * 86400)
    pair.b.housekeeping()
    assert pair.b.node.state.seen_count() == 0, "the id was not pruned"
    pair.clock.advance(-3 * 86400)  # someone set the clock back
    (pair.b_home.received / "earth" / "once.txt").unlink()
    deliver_file(pair, "replay.opb", bundle)
    pair.b.rescan()
    assert received(pair) == {}
    assert quarantined(pair) == {"replay.opb": "replay"}


# 12. and 17. a file still being written is waited for, by our clock, not its mtime

def test_a_truncated_file_stamped_in_the_future_is_quarantined_after_settling(
        pair: Pair) -> None:
    bundle = pack_bytes(header(meta={"name": "t.txt"}), b"x" * 500, pair.a.node.seed)
    path = pair.b_home.inbox / "future.opb"
    path.write_bytes(bundle[:-100])
    ahead = time.time() + 10 * 365 * 86400
    os.utime(path, (ahead, ahead))
    pair.b.rescan()
    assert quarantined(pair) == {}, "refused at once: it may still be growing"
    pair.clock.advance(3)
    pair.b.rescan()
    assert quarantined(pair) == {"future.opb": "truncated"}


def test_a_bundle_written_in_pieces_is_delivered_not_quarantined(pair: Pair) -> None:
    bundle = pack_bytes(header(meta={"name": "slow.txt"}), b"y" * 5000, pair.a.node.seed)
    path = pair.b_home.inbox / "slow.opb"
    for end in (0, 2, 300, len(bundle)):
        with open(path, "wb") as f:
            f.write(bundle[:end])
        pair.b.rescan()
        if end < len(bundle):
            assert quarantined(pair) == {}, f"refused after {end} bytes"
    assert received(pair) == {"slow.txt": b"y" * 5000}


# 13. a peer's clock far off

def test_acks_from_a_peer_two_days_behind_release_custody_and_status_says_so(
        tmp_path: Path) -> None:
    pair = Pair(tmp_path)
    behind = Daemon(open_node(pair.b_home, lambda: pair.clock() - 2 * 86400))
    pair.b = behind
    msg = send(pair, b"hello", "h.txt")
    pair.run(lambda: delivered(pair, msg.id))
    offset = pair.a.node.state.clock_offset("mars")
    assert offset is not None and offset > 86400


# 14. contact windows shorter than a fragment

def test_a_fragment_the_link_never_carries_whole_is_cut_smaller(tmp_path: Path) -> None:
    pair = Pair(tmp_path, fragment_size="256k")
    data = os.urandom(600_000)

    def short_windows(path: Path) -> str:
        return "drop" if path.stat().st_size > 100_000 else "deliver"

    pair.link.fate = short_windows
    msg = send(pair, data)
    pair.run(lambda: delivered(pair, msg.id), steps=3000, seconds=0.5)
    assert received(pair) == {"f.bin": data}


# 15. no spurious resends while the receiver works through a backlog

def test_a_receiver_backlog_costs_almost_no_resends(tmp_path: Path) -> None:
    pair = Pair(tmp_path, ack_delay="100ms", rescan="1h")
    msgs = [send(pair, f"m{i}".encode(), f"m{i}.txt") for i in range(300)]
    moved = 0
    for _ in range(2000):
        if all(delivered(pair, m.id) for m in msgs):
            break
        pair.a.tick()
        pair.a.rescan()  # the sender takes in every ack at once
        for f in bundle_files(pair.b_home.inbox)[:10]:  # a slow receiver: 10 per 100 ms
            pair.b._handle(f)
        pair.b.receiver.commit()
        pair.b.tick()
        moved += pair.link.carry()
        pair.clock.advance(0.1)
    assert all(delivered(pair, m.id) for m in msgs)
    sent = sum(1 for m in pair.link.moved if not m.split(":", 1)[1].startswith("0-"))
    assert sent <= 1.05 * len(msgs), f"{sent} bundles for {len(msgs)} messages"


# 16. a custody copy that disappears

def test_a_lost_custody_copy_fails_the_message_once_with_the_reason(
        pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    pair.link.fate = lambda _p: "drop"  # so the units must be made again from custody
    msg = send(pair, os.urandom(200_000))
    pair.step()
    pair.link.fate = lambda _p: "deliver"
    Path(msg.path).unlink()
    for _ in range(100):
        pair.step()
    failed = pair.a.node.state.messages(FAILED)
    assert [m.id for m in failed] == [msg.id] and "custody copy" in failed[0].meta["why"]
    assert sum("failed" in r.message and msg.id in r.message for r in caplog.records) == 1
    assert not any(r.exc_info for r in caplog.records)


# 18. and 19. init either completes or leaves nothing; bad addresses are refused

@pytest.mark.parametrize("args", [
    ["--role", "earth", "--set", "rtt=soon"],
    ["--role", "earth", "--set", "no_such_setting=1"],
    ["--role", "outpost", "--registry", "notaport"],
    ["--role", "outpost", "--docker", "not a url"],
    ["--role", "outpost", "--name", "mārs"],
])
def test_a_failed_init_leaves_nothing_behind(tmp_path: Path, args: list[str]) -> None:
    fresh, used = tmp_path / "fresh", tmp_path / "used"
    used.mkdir()
    (used / "README.md").write_text("mine\n")
    for target in (fresh, used):
        out = subprocess.run([tool("outpost-node"), "init", "--home", str(target), *args],
                             capture_output=True, text=True)
        assert out.returncode == 2 and out.stderr.startswith("error: "), out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not fresh.exists()
    assert sorted(p.name for p in used.iterdir()) == ["README.md"]


def test_a_bad_setting_in_node_toml_names_the_file_and_key(tmp_path: Path) -> None:
    home = init_home(tmp_path / "h", "outpost", "mars")
    with open(home.path / "node.toml", "a") as f:
        f.write('\n[outpost]\nimage_requests = "many"\n')
    with pytest.raises(ConfigError, match=r"node.toml: \[outpost\]: image_requests"):
        load_home(home.path)


# 22. small things

def test_send_on_a_full_disk_is_one_line_not_a_traceback(pair: Pair, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2_000_000))

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    out = subprocess.run([tool("outpost-node"), "send", "--home", str(pair.a_home.path),
                          "--to", "mars", str(big)], capture_output=True, text=True,
                         preexec_fn=small_files)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("error: File too large")


def test_start_reads_the_role_from_the_home_and_h_is_help(pair: Pair) -> None:
    out = subprocess.run([tool("outpost-node"), "start", "-h"], capture_output=True, text=True)
    assert out.returncode == 0 and "--role" in out.stdout
    pair.b.node.state.close()
    proc = subprocess.Popen([tool("outpost-node"), "start", "--home", str(pair.b_home.path)],
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.terminate()
        proc.wait(20)
    busy = subprocess.run([tool("outpost-node"), "status", "--home", "/nonexistent"],
                          capture_output=True, text=True)
    assert "is not a node home" in busy.stderr


def test_messages_say_an_earth_home(tmp_path: Path) -> None:
    init_home(tmp_path / "e", "earth")
    out = subprocess.run([tool("outpost-node"), "sync", "--home", str(tmp_path / "e")],
                         capture_output=True, text=True)
    assert "is an Earth home" in out.stderr and "a earth" not in out.stderr


def test_an_outpost_without_a_registry_says_so_when_it_starts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from outpost.node.sender import Sender
    from outpost.roles import make_role

    monkeypatch.delenv("OUTPOST_REGISTRY", raising=False)
    home = init_home(tmp_path / "mars", "outpost", "mars")
    node = open_node(home)
    role = make_role(node, Sender(node))
    role.on_start()
    role.on_stop()
    assert any("no registry configured" in r.message and r.levelname == "WARNING"
               for r in caplog.records)
