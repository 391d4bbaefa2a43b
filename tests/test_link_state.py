"""link-sim's state directory: taking, delivering, and recovering after a crash at each step."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from link.model import Copy, Transfer
from link.state import (
    CORRUPT,
    FLIGHT,
    TAKING,
    Item,
    Lane,
    LostPayload,
    StateDir,
    StateError,
    free_name,
)


@pytest.fixture
def homes(tmp_path: Path) -> tuple[Path, Path, Lane]:
    outbox = tmp_path / "a" / "outbox" / "b"
    inbox = tmp_path / "b" / "inbox"
    outbox.mkdir(parents=True)
    inbox.mkdir(parents=True)
    lane = StateDir(tmp_path / "state").lane("a->b")
    lane.prepare()
    return outbox, inbox, lane


def transfer(size: int, *copies: Copy) -> Transfer:
    return Transfer(size=size, taken_at=1.0, tx_start=1.0, tx_end=1.0, copies=copies)


def put(outbox: Path, name: str, data: bytes) -> Path:
    path = outbox / name
    path.write_bytes(data)
    return path


def take(lane: Lane, source: Path, inbox: Path) -> Item:
    item = lane.begin_take(source, "a->b", "a", "b", inbox)
    assert item is not None
    return item


def test_take_and_deliver(homes: tuple[Path, Path, Lane]) -> None:
    outbox, inbox, lane = homes
    source = put(outbox, "0001.opb", b"hello")
    item = take(lane, source, inbox)
    assert not source.exists() and lane.data_path(item.seq).read_bytes() == b"hello"
    assert item.status == TAKING and item.size == 5 and item.move == "rename"
    [flying] = lane.commit(item, transfer(5, Copy(2.0)))
    assert flying.status == FLIGHT and flying.deliver_at == 2.0
    final = lane.deliver(flying)
    assert final == inbox / "0001.opb" and final.read_bytes() == b"hello"
    assert list(lane.path.iterdir()) == []


def test_vanished_file_is_not_taken(homes: tuple[Path, Path, Lane]) -> None:
    outbox, inbox, lane = homes
    assert lane.begin_take(outbox / "gone.opb", "a->b", "a", "b", inbox) is None
    assert list(lane.path.iterdir()) == []


def test_dropped_file_leaves_nothing(homes: tuple[Path, Path, Lane]) -> None:
    outbox, inbox, lane = homes
    item = take(lane, put(outbox, "x", b"data"), inbox)
    lost = Transfer(size=4, taken_at=1, tx_start=1, tx_end=1, dropped="loss")
    assert lane.commit(item, lost) == []
    assert list(lane.path.iterdir()) == [] and list(outbox.iterdir()) == []


def test_duplicate_and_corruption_never_touch_the_source_inode(
    homes: tuple[Path, Path, Lane], tmp_path: Path
) -> None:
    outbox, inbox, lane = homes
    data = bytes(range(256)) * 8
    source = put(outbox, "0002.opb", data)
    custody = tmp_path / "custody"
    os.link(source, custody)  # the node may keep its custody copy as a hard link
    item = take(lane, source, inbox)
    copies = lane.commit(item, transfer(len(data), Copy(2.0, ((3, 0xFF),)), Copy(2.1, (), True)))
    for copy in copies:
        lane.deliver(copy)
    assert custody.read_bytes() == data
    delivered = (inbox / "0002.opb").read_bytes()
    assert delivered[3] == data[3] ^ 0xFF and delivered[4:] == data[4:] and len(delivered) == 2048
    assert (inbox / "0002.dup1.opb").read_bytes() == data
    assert list(lane.path.iterdir()) == []


def test_free_name() -> None:
    assert free_name(Path("/nonexistent"), "a.opb", duplicate=False) == "a.opb"
    assert free_name(Path("/nonexistent"), "a.opb", duplicate=True) == "a.dup1.opb"
    assert free_name(Path("/nonexistent"), "plain", duplicate=True) == "plain.dup1"


def test_name_clash_in_the_inbox_keeps_both(homes: tuple[Path, Path, Lane]) -> None:
    outbox, inbox, lane = homes
    (inbox / "same.opb").write_bytes(b"first")
    item = take(lane, put(outbox, "same.opb", b"second"), inbox)
    [flying] = lane.commit(item, transfer(6, Copy(2.0)))
    assert lane.deliver(flying).name == "same.dup1.opb"
    assert (inbox / "same.opb").read_bytes() == b"first"


# -- recovery: a crash between any two steps loses nothing and doubles nothing ------------


def reopen(lane: Lane) -> tuple[list[Item], list[Item]]:
    fresh = Lane(lane.path)
    fresh.prepare()
    flight, undecided, notes = fresh.recover()
    assert notes == []
    return flight, undecided


def test_crash_before_the_move(homes: tuple[Path, Path, Lane]) -> None:
    outbox, inbox, lane = homes
    source = put(outbox, "x", b"data")
    item = take(lane, source, inbox)
    os.rename(lane.data_path(item.seq), source)  # as if the rename had not happened yet
    assert reopen(lane) == ([], [])
    assert source.read_bytes() == b"data" and list(lane.path.iterdir()) == []


def test_crash_after_the_move_before_the_decision(homes: tuple[Path, Path, Lane]) -> None:
    outbox, inbox, lane = homes
    take(lane, put(outbox, "x", b"data"), inbox)
    flight, undecided = reopen(lane)
    assert flight == [] and [i.name for i in undecided] == ["x"] and undecided[0].size == 4


def test_crash_before_the_corrupt_copy_is_written(homes: tuple[Path, Path, Lane]) -> None:
    outbox, inbox, lane = homes
    item = take(lane, put(outbox, "x", b"abcd"), inbox)
    [flying] = lane.commit(item, transfer(4, Copy(2.0, ((0, 1),))))
    lane.corrupt_path(flying.seq).unlink()
    (lane.path / f".{flying.seq:012d}{CORRUPT}.part").write_bytes(b"half")
    [recovered], _ = reopen(lane)
    assert lane.corrupt_path(recovered.seq).read_bytes() == b"`bcd"
    assert not list(lane.path.glob(".*.part"))
    assert lane.deliver(recovered).read_bytes() == b"`bcd"


def test_crash_in_the_middle_of_delivering_a_corrupt_copy(homes: tuple[Path, Path, Lane]) -> None:
    outbox, inbox, lane = homes
    item = take(lane, put(outbox, "x", b"abcd"), inbox)
    [flying] = lane.commit(item, transfer(4, Copy(2.0, ((0, 1),))))
    lane.data_path(flying.seq).unlink()  # step 1 of deliver done, step 2 not
    [recovered], _ = reopen(lane)
    assert lane.deliver(recovered).read_bytes() == b"`bcd"


def test_crash_after_delivery_before_the_sidecar_is_removed(
    homes: tuple[Path, Path, Lane],
) -> None:
    outbox, inbox, lane = homes
    item = take(lane, put(outbox, "x", b"abcd"), inbox)
    [flying] = lane.commit(item, transfer(4, Copy(2.0)))
    os.rename(lane.data_path(flying.seq), inbox / "x")
    assert reopen(lane) == ([], [])
    assert list(inbox.iterdir()) == [inbox / "x"] and list(lane.path.iterdir()) == []


def test_duplicate_whose_copy_never_finished_is_forgotten(
    homes: tuple[Path, Path, Lane],
) -> None:
    outbox, inbox, lane = homes
    item = take(lane, put(outbox, "x", b"abcd"), inbox)
    original, twin = lane.commit(item, transfer(4, Copy(2.0), Copy(2.0, (), True)))
    lane.data_path(twin.seq).unlink()
    [recovered], _ = reopen(lane)
    assert recovered.seq == original.seq and not recovered.duplicate


def test_move_across_filesystems_copies_then_deletes(
    homes: tuple[Path, Path, Lane], monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox, inbox, lane = homes
    real_rename = os.rename

    def no_cross_device(src: str | Path, dst: str | Path) -> None:
        if ".part" not in str(src):  # atomic_writer's own rename stays in one directory
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", no_cross_device)
    source = put(outbox, "x", b"abcd")
    item = take(lane, source, inbox)
    assert item.move == "copy" and not source.exists()
    [flying] = lane.commit(item, transfer(4, Copy(2.0)))
    assert lane.deliver(flying).read_bytes() == b"abcd"
    assert not list(inbox.glob(".*")) and list(lane.path.iterdir()) == []


def test_interrupted_cross_filesystem_move_finishes_on_recovery(
    homes: tuple[Path, Path, Lane],
) -> None:
    outbox, inbox, lane = homes
    source = put(outbox, "x", b"abcd")
    item = take(lane, source, inbox)
    # as if the copy completed but the outbox file was not yet deleted
    item.move = "copy"
    lane.side_path(item.seq).write_bytes(item.to_json())
    source.write_bytes(b"abcd")
    _flight, undecided = reopen(lane)
    assert len(undecided) == 1 and not source.exists()


def test_state_dir_lock_and_origin(tmp_path: Path) -> None:
    first = StateDir(tmp_path / "s")
    first.open()
    second = StateDir(tmp_path / "s")
    with pytest.raises(StateError, match="another link-sim"):
        second.open()
    assert first.origin(100.0) == 100.0
    assert first.origin(200.0) == 100.0  # the timeline survives restarts
    first.close()
    second.open()
    second.close()


def test_payload_deleted_behind_our_back_is_reported(homes: tuple[Path, Path, Lane]) -> None:
    outbox, inbox, lane = homes
    item = take(lane, put(outbox, "x", b"abcd"), inbox)
    [flying] = lane.commit(item, transfer(4, Copy(2.0)))
    lane.data_path(flying.seq).unlink()
    with pytest.raises(LostPayload, match="x is lost"):
        lane.deliver(flying)
    assert list(lane.path.iterdir()) == [] and list(inbox.iterdir()) == []
