"""Forward error correction: the layout and code are pure; the nodes' use of them runs two
in-process nodes whose link (helpers.Link: the far planet) drops files on a seeded die."""

from __future__ import annotations

import io
import itertools
import os
import random
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outpost.codec import Fragment, Repair, decode_header, encode_header
from outpost.delivery import LossEstimator, fec
from outpost.errors import MalformedBundle

from .helpers import Pair, header


def blocks_of(data: bytes, group: fec.Group, block: int) -> list[bytes]:
    return [data[group.start + i * block:group.start + (i + 1) * block] for i in range(group.k)]


@pytest.mark.parametrize(("k", "m", "tail"), [(4, 3, 0), (5, 2, 17), (2, 1, 1), (1, 2, 0)])
def test_every_k_of_n_blocks_rebuild_the_group(k: int, m: int, tail: int) -> None:
    block = 64
    size = k * block - tail  # the last data block may be short
    data = os.urandom(size)
    group = fec.Group(first=0, start=0, k=k, m=m)
    parts = blocks_of(data, group, block)
    repairs = fec.encode(parts, m, block)
    every = {i: fec._padded(p, block) for i, p in enumerate(parts)}
    every.update({k + j: r for j, r in enumerate(repairs)})
    for chosen in itertools.combinations(range(k + m), k):
        out = fec.decode({i: every[i] for i in chosen}, k, m, block)
        assert b"".join(out)[:size] == data, chosen


def test_fewer_than_k_blocks_cannot_rebuild() -> None:
    with pytest.raises(ValueError):
        fec.decode({0: b"x" * 8}, 2, 1, 8)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 3_000_000), frag=st.sampled_from([4096, 65536, 1 << 20]),
       loss=st.floats(0.001, 0.5))
def test_plan_covers_every_byte_once_and_fits_the_field(size: int, frag: int,
                                                        loss: float) -> None:
    layout = fec.plan(size, frag, loss, 0.995)
    if layout is None:
        return
    if not layout.groups:
        assert size <= min(frag, fec.MIN_BLOCK) and layout.copies >= 1
        return
    assert layout.block <= frag
    index, offset = 0, 0
    for g in layout.groups:
        assert g.first == index and g.start == offset
        assert 2 <= g.k <= fec.MAX_K and g.k + g.m <= 256
        assert g.k * layout.block <= fec.MAX_GROUP_BYTES
        index, offset = g.end_index, offset + g.k * layout.block
    assert offset - layout.block < size <= offset
    assert fec.Layout.from_meta(layout.to_meta()) == layout


@pytest.mark.parametrize("loss", [0.02, 0.05, 0.2])
@pytest.mark.parametrize("k", [1, 4, 16, 64])
def test_repairs_meet_the_target_and_are_the_fewest_that_do(k: int, loss: float) -> None:
    m = fec.repair_count(k, loss, 0.995, max_ratio=3.0)
    assert fec.rebuild_chance(k, m, loss) >= 0.995
    assert m == 0 or fec.rebuild_chance(k, m - 1, loss) < 0.995


def test_no_loss_means_no_repairs_nor_do_fragments_too_big_for_a_group() -> None:
    assert fec.plan(10_000_000, 1 << 20, 0.0, 0.995) is None
    assert fec.plan(1 << 30, 32 << 20, 0.2, 0.995) is None  # 32 MiB blocks: 2 a group
    assert fec.repair_count(16, 0.0, 0.995) == 0


def test_missing_blocks_reads_coverage_by_byte_range() -> None:
    g = fec.Group(first=10, start=100, k=3, m=1)
    # block 0 whole, block 1 only half (a fragment cut in two, one half here), block 2 none
    ranges = [(100, 50), (150, 25)]
    assert fec.missing_blocks(ranges, g, 50, 1000) == [1, 2]
    assert fec.missing_blocks([(100, 150)], g, 50, 1000) == []
    assert fec.missing_blocks([(100, 100), (200, 30)], g, 50, 230) == []  # short last block


def test_loss_estimate_moves_from_the_expectation_to_the_link() -> None:
    est = LossEstimator(rate=0.0)
    rng = random.Random(1)
    for _ in range(2000):
        est.observe(rng.random() < 0.2)
    assert 0.13 < est.rate < 0.27


def test_repair_fragment_header_round_trips_and_impossible_groups_are_refused() -> None:
    r = Repair(first=0, k=4, m=2, j=5, block=1000)
    good = header(fragment=Fragment("p" * 32, 5, 6, 0, 3900, r))
    good = replace(good, id="p" * 32 + ".5",
                   payload=replace(good.payload, length=1000, raw_length=1000))
    assert decode_header(encode_header(good), _limits()).fragment == good.fragment
    bad = [replace(r, j=3), replace(r, j=6), replace(r, k=200, m=57, j=200),
           replace(r, block=999), replace(r, first=1), replace(r, m=0, j=4)]
    for b in bad:
        f = replace(good.fragment, repair=b)
        with pytest.raises(MalformedBundle):
            encode_header(replace(good, fragment=f))
    huge = replace(good.fragment, repair=replace(r, k=4, block=20 * 1024 * 1024), count=6,
                   total=90 * 1024 * 1024)  # 80 MiB of group to hold in memory
    with pytest.raises(MalformedBundle):
        encode_header(replace(good, fragment=huge, payload=replace(
            good.payload, length=20 * 1024 * 1024, raw_length=20 * 1024 * 1024)))
    far = replace(good.fragment, total=3000)  # block 3 would start at the end
    with pytest.raises(MalformedBundle):
        encode_header(replace(good, fragment=far))


def _limits():  # type: ignore[no-untyped-def]
    from outpost.codec import Limits

    return Limits()


# --- two nodes ---

def send(pair: Pair, data: bytes):  # type: ignore[no-untyped-def]
    return pair.a.sender.submit("mars", "file", io.BytesIO(data), meta={"name": "f.bin"},
                                codec="none")


def delivered(pair: Pair, msg_id: str) -> bool:
    m = pair.a.node.state.message(msg_id)
    return m is not None and m.state == "delivered"


def received(pair: Pair) -> bytes | None:
    path = pair.b_home.received / "earth" / "f.bin"
    return path.read_bytes() if path.exists() else None


def lossy(seed: int, loss: float, duplicate: float = 0.0):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)

    def fate(_path: Path) -> str:
        x = rng.random()
        if x < loss:
            return "drop"
        return "duplicate" if x < loss + duplicate else "deliver"
    return fate


def sent_twice(pair: Pair) -> list[str]:
    """Files the sender put in its outbox more than once (resends), by name."""
    names = [m.split(":", 1)[1] for m in pair.link.moved]
    return sorted({n for n in names if names.count(n) > 1 and not n.startswith("0-")})


def test_twenty_mb_at_loss_0_2_with_duplicates_completes_with_no_resend(tmp_path: Path) -> None:
    pair = Pair(tmp_path, fragment_size="1M", expected_loss="0.2", fec="on")
    pair.link.fate = lossy(seed=7, loss=0.2, duplicate=0.05)
    data = os.urandom(20_000_000)
    msg = send(pair, data)
    layout = fec.Layout.from_meta(msg.meta["fec"])
    assert layout is not None and sum(g.m for g in layout.groups) > 0
    pair.run(lambda: delivered(pair, msg.id), steps=400)
    assert received(pair) == data
    assert sent_twice(pair) == [], "a fragment was resent though FEC should have covered it"
    assert any(m.startswith("drop:2-") for m in pair.link.moved), "the link lost nothing"
    assert list(pair.b_home.reasm.iterdir()) == [], "reassembly or repair files left behind"


def test_loss_beyond_the_repairs_is_covered_by_resends(tmp_path: Path) -> None:
    pair = Pair(tmp_path, fragment_size="256k", expected_loss="0.05", fec="on")
    pair.link.fate = lossy(seed=3, loss=0.5)
    data = os.urandom(3_000_000)
    msg = send(pair, data)
    pair.run(lambda: delivered(pair, msg.id), steps=2000)
    assert received(pair) == data
    assert sent_twice(pair), "at half the files lost, some had to be resent"


def test_small_message_goes_with_copies_and_arrives_once(tmp_path: Path) -> None:
    pair = Pair(tmp_path, expected_loss="0.2", fec="on")
    msg = send(pair, b"x" * 1000)
    units = pair.a.node.state.units_of(msg.id)
    assert len(units) == 1 + fec.repair_count(1, 0.2, 0.995, 2.0) and len(units) > 1
    pair.link.fate = lambda p: "drop" if p.name.endswith(f"{msg.id}.opb") else "deliver"
    pair.run(lambda: delivered(pair, msg.id))
    assert received(pair) == b"x" * 1000
    assert len(list((pair.b_home.received / "earth").iterdir())) == 1


def test_a_lossy_link_teaches_the_sender_to_add_repairs(tmp_path: Path) -> None:
    pair = Pair(tmp_path, fragment_size="64k", fec="on")
    pair.link.fate = lossy(seed=11, loss=0.2)
    first = send(pair, os.urandom(2_000_000))
    assert "fec" not in first.meta, "no loss seen yet, no repairs"
    pair.run(lambda: delivered(pair, first.id), steps=2000)
    rate = pair.a.node.state.loss("mars", 0.0).rate
    assert 0.05 < rate < 0.5
    second = send(pair, os.urandom(2_000_000))
    assert "fec" in second.meta
    pair.run(lambda: delivered(pair, second.id), steps=2000)


def test_repairs_held_at_a_crash_rebuild_on_restart(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The receiver dies after it made the repairs durable and before it rebuilt (the
    rebuild is switched off, then the node restarts): the restart rebuilds, no resend."""
    from outpost.node.receiver import Receiver

    pair = Pair(tmp_path, fragment_size="64k", expected_loss="0.2", fec="on")
    data = os.urandom(1_000_000)
    msg = send(pair, data)
    dropped: list[str] = []

    def drop_two_data(path: Path) -> str:
        if path.name.startswith("2-") and "-00000" in path.name and len(dropped) < 2:
            dropped.append(path.name)
            return "drop"
        return "deliver"

    pair.link.fate = drop_two_data
    monkeypatch.setattr(Receiver, "_rebuild", lambda *_a: None)
    pair.run(lambda: len(pair.b.node.state.repairs("earth", msg.id)) >= 2, steps=50)
    for _ in range(5):
        pair.step()
    assert not delivered(pair, msg.id)
    monkeypatch.undo()
    pair.restart("b")
    pair.run(lambda: delivered(pair, msg.id), steps=400, seconds=0.01)
    assert received(pair) == data and len(dropped) == 2
    assert sent_twice(pair) == []


def test_auto_adds_repairs_only_where_the_round_trip_is_long(tmp_path: Path) -> None:
    short = Pair(tmp_path / "short", expected_loss="0.2")  # rtt 1s: a resend is cheap
    assert "fec" not in send(short, os.urandom(500_000)).meta
    long = Pair(tmp_path / "long", expected_loss="0.2", rtt="30s")
    assert "fec" in send(long, os.urandom(500_000)).meta
    off = Pair(tmp_path / "off", expected_loss="0.2", rtt="30s", fec="off")
    assert "fec" not in send(off, os.urandom(500_000)).meta


def test_bundles_show_describes_a_repair_fragment(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from outpost.cli.main import cli

    pair = Pair(tmp_path, fragment_size="64k", expected_loss="0.2", fec="on")
    msg = send(pair, os.urandom(300_000))
    pair.a.tick()
    repairs = [u for u in pair.a.node.state.units_of(msg.id)
               if fec.Layout.from_meta(msg.meta["fec"]).is_repair(u.idx)]
    path = pair.a_home.outbox("mars") / repairs[0].name
    out = CliRunner().invoke(cli, ["bundles", "show", str(path), "--home",
                                    str(pair.a_home.path), "--json"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert shown["signature"] == "ok" and shown["fragment"]["repair"]["j"] >= 1
    text = CliRunner().invoke(cli, ["bundles", "show", str(path), "--home",
                                     str(pair.a_home.path)]).output
    assert "FEC block" in text
