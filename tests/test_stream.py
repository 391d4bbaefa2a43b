"""One pass on the receiving side: a reassembly is decoded while its fragments arrive.

The payload decoder is pure; the receiver's use of it runs two in-process nodes whose
link (helpers.Link: the far planet) delivers, holds back or reorders files on the test's
say."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest
import zstandard

from outpost.codec import Payload, PayloadDecoder, PayloadEncoder, iter_payload
from outpost.errors import IntegrityError, LimitExceeded, MalformedBundle, TruncatedBundle
from outpost.node.stream import contiguous

from .helpers import Pair


def encoded(raw: bytes, frames: int = 3) -> tuple[bytes, Payload]:
    enc = PayloadEncoder("zstd", 3)
    step = max(1, len(raw) // frames)
    wire = b"".join(enc.write(raw[i:i + step]) + enc.end_frame()
                    for i in range(0, len(raw), step))
    return wire, enc.payload()


def decode(wire: bytes, payload: Payload, cuts: list[int]) -> bytes:
    out: list[bytes] = []
    d = PayloadDecoder(payload, out.append)
    last = 0
    for cut in [*cuts, len(wire)]:
        d.feed(wire[last:cut])
        last = cut
    d.finish()
    return b"".join(out)


def test_decoding_in_any_pieces_gives_what_iter_payload_gives() -> None:
    rng = random.Random(5)
    raw = rng.randbytes(200_000) + b"z" * 3_000_000
    wire, payload = encoded(raw)
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, len(wire)), 20))
        assert decode(wire, payload, cuts) == raw
    from outpost.codec.header import Header
    h = Header(id="x", kind="file", src="a", dst="b", created=0, expires=1, payload=payload)
    assert b"".join(iter_payload(io.BytesIO(wire), h)) == raw


def test_a_bomb_stops_before_its_output_is_held() -> None:
    big = zstandard.ZstdCompressor(level=3).compress(b"\0" * (64 << 20))
    payload = Payload("zstd", len(big), 1000, __import__("hashlib").sha256(big).digest())
    seen: list[int] = []
    d = PayloadDecoder(payload, lambda b: seen.append(len(b)))
    with pytest.raises(LimitExceeded):
        d.feed(big)
    assert sum(seen) <= 1000


@pytest.mark.parametrize("damage", ["flip", "short", "long"])
def test_damage_is_found_by_finish_or_feed(damage: str) -> None:
    wire, payload = encoded(os.urandom(50_000) + b"a" * 100_000)
    d = PayloadDecoder(payload, lambda _b: None)
    with pytest.raises((IntegrityError, MalformedBundle, TruncatedBundle)):
        if damage == "flip":
            bad = bytearray(wire)
            bad[len(bad) // 2] ^= 0xFF
            d.feed(bytes(bad))
        elif damage == "short":
            d.feed(wire[:-10])
        else:
            d.feed(wire + b"x")
        d.finish()


def test_contiguous_is_what_is_complete_from_the_first_byte() -> None:
    assert contiguous([]) == 0
    assert contiguous([(0, 10), (10, 5), (20, 5)]) == 15
    assert contiguous([(5, 10)]) == 0
    assert contiguous([(0, 10), (5, 10), (15, 1)]) == 16


# --- two nodes ---

def send(pair: Pair, data: bytes):  # type: ignore[no-untyped-def]
    return pair.a.sender.submit("mars", "file", io.BytesIO(data), meta={"name": "f.bin"})


def delivered(pair: Pair, msg_id: str) -> bool:
    m = pair.a.node.state.message(msg_id)
    return m is not None and m.state == "delivered"


def staged(pair: Pair, msg_id: str) -> int:
    part = pair.b_home.received / "earth" / f".{msg_id}.part"
    return part.stat().st_size if part.exists() else 0


def compressible(size: int) -> bytes:
    rng = random.Random(size)
    words = [rng.randbytes(6).hex() for _ in range(500)]
    return " ".join(rng.choice(words) for _ in range(size // 13)).encode()[:size]


def test_the_payload_is_decoded_while_the_last_fragment_is_still_missing(tmp_path: Path) -> None:
    pair = Pair(tmp_path, fragment_size="64k")
    data = compressible(3_000_000)
    msg = send(pair, data)
    last = f"-{msg.units - 1:06d}.opb"
    held: list[Path] = []

    def hold_last(path: Path) -> str:
        if path.name.endswith(last) and not held:
            held.append(path)
            return "drop"
        return "deliver"

    pair.link.fate = hold_last
    pair.run(lambda: pair.b.node.state.reasm("earth", msg.id) is not None and
             pair.b.node.state.reasm("earth", msg.id)["received"] >= msg.size - 65536)
    pair.step()
    assert staged(pair, msg.id) > len(data) // 2, "nothing decoded before the last fragment"
    pair.run(lambda: delivered(pair, msg.id), steps=400)
    assert (pair.b_home.received / "earth" / "f.bin").read_bytes() == data


def test_fragments_in_reverse_order_and_a_restart_still_deliver_once(tmp_path: Path) -> None:
    pair = Pair(tmp_path, fragment_size="64k")
    data = compressible(2_000_000)
    msg = send(pair, data)
    files = sorted(pair.a_home.outbox("mars").iterdir(), reverse=True)
    half = len(files) // 2
    for path in files[:half]:  # the second half of the message first
        os.replace(path, pair.b_home.inbox / path.name)
    for _ in range(3):
        pair.b.tick()
        pair.b.rescan()
        pair.b.tick()
    assert staged(pair, msg.id) == 0, "decoded without the first fragment"
    first = files[-1]
    os.replace(first, pair.b_home.inbox / first.name)
    for _ in range(3):
        pair.b.tick()
        pair.b.rescan()
        pair.b.tick()
    pair.restart("b")  # streams are forgotten; the next fragments start one again
    pair.run(lambda: delivered(pair, msg.id), steps=400)
    assert (pair.b_home.received / "earth" / "f.bin").read_bytes() == data
    assert [p.name for p in (pair.b_home.received / "earth").iterdir()] == ["f.bin"]


def test_a_reassembly_damaged_on_disk_is_refused_and_sent_again(tmp_path: Path) -> None:
    """A bit flips in the reassembly file where the stream has not read yet: the stream's
    check fails, the whole bundle fails the same check, it is quarantined and sent again."""
    pair = Pair(tmp_path, fragment_size="64k")
    data = os.urandom(1_000_000)
    msg = send(pair, data)
    files = sorted(pair.a_home.outbox("mars").iterdir())
    for path in [files[0], *files[2:]]:  # the second fragment held back
        os.replace(path, pair.b_home.inbox / path.name)
    for _ in range(2):
        pair.b.tick()
        pair.b.rescan()
        pair.b.tick()
    assert 0 < staged(pair, msg.id) < 65536
    reasm = pair.b.receiver.reasm_path("earth", msg.id)
    with open(reasm, "r+b") as f:
        f.seek(500_000)
        byte = f.read(1)
        f.seek(500_000)
        f.write(bytes([byte[0] ^ 1]))
    os.replace(files[1], pair.b_home.inbox / files[1].name)
    pair.run(lambda: delivered(pair, msg.id), steps=600)
    assert (pair.b_home.received / "earth" / "f.bin").read_bytes() == data
    assert list(pair.b_home.quarantine.glob("*.reason.json")), "the damage was not quarantined"
