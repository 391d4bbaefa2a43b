"""The bundle codec (outpost/codec): round trips, corruption, limits, fragments, streaming.

Everything here is in memory (io.BytesIO) or under tmp_path; the memory-bound checks run
in a fresh interpreter (`python -c`) so its peak RSS measures them and nothing else.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import nacl.signing
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outpost.codec import (
    BULK,
    EXPEDITED,
    MAGIC,
    NORMAL,
    Fragment,
    Header,
    Limits,
    Payload,
    PayloadEncoder,
    decode_header,
    encode_header,
    fragment_count,
    fragment_header,
    head_bytes,
    inspect,
    iter_payload,
    open_verified,
    pack_bytes,
    pack_file,
    pack_spooled,
    public_key,
    read_payload,
    source_fill,
    spooled_start,
    validate_fragment,
    verify_file,
    write_fragment,
)
from outpost.codec.header import depth, to_wire
from outpost.codec.wire import CHUNK, PREFIX, SIG_LEN
from outpost.errors import (
    BadSignature,
    BundleError,
    IntegrityError,
    LimitExceeded,
    LocalError,
    MalformedBundle,
    TruncatedBundle,
    UnknownKey,
)

ROOT = Path(__file__).resolve().parents[1]
EARTH_SEED = bytes(range(32))
MOON_SEED = bytes(range(100, 132))
STRANGER_SEED = bytes(range(200, 232))
SEEDS = {"earth": EARTH_SEED, "moon": MOON_SEED}
KEYRING = {name: public_key(seed) for name, seed in SEEDS.items()}
LIMITS = Limits()
GiB = 1024**3

# Every `reason` the codec and errors.py can produce; docs/bundle-format.md lists the same.
REASONS = {
    "bad-bundle", "malformed", "truncated", "limit-exceeded", "unknown-key", "bad-signature",
    "integrity", "expired", "misaddressed",
    "bad-magic", "bad-header", "header-too-large", "header-too-deep", "payload-too-large",
    "absurd-fragment", "bad-fragment", "trailing-bytes", "bad-zstd", "zstd-bomb",
}
FAST = settings(deadline=None, max_examples=60)
FILES = settings(deadline=None, max_examples=30,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


# ---------------------------------------------------------------------------------------------
# helpers


def header(**kw: Any) -> Header:
    base: dict[str, Any] = {
        "id": "0123456789abcdef0123456789abcdef", "kind": "test", "src": "earth",
        "dst": "moon", "created": 1_700_000_000.0, "expires": 1_700_086_400.0,
    }
    base.update(kw)
    return Header(**base)


def read_bundle(data: bytes, keyring: Any = KEYRING, limits: Limits = LIMITS,
                chunk: int = CHUNK) -> tuple[Header, bytes]:
    f = io.BytesIO(data)
    h = open_verified(f, keyring, limits)
    out = bytearray()
    for part in iter_payload(f, h, chunk):
        assert 0 < len(part) <= chunk
        out += part
    return h, bytes(out)


def reject(data: bytes, **kw: Any) -> BundleError:
    """Read `data`, expecting a BundleError (a foreign exception fails the test)."""
    with pytest.raises(BundleError) as info:
        read_bundle(data, **kw)
    err = info.value
    assert err.reason in REASONS, err.reason
    return err


def multi_frame(h: Header, parts: list[bytes], codec: str, seed: bytes = EARTH_SEED,
                level: int = 3) -> bytes:
    """A bundle whose payload is one zstd frame per part (PayloadEncoder.end_frame)."""
    enc = PayloadEncoder(codec, level)
    body = b"".join(enc.write(p) + enc.end_frame() for p in parts)
    return head_bytes(h.with_payload(enc.payload()), seed) + body


def split_bundle(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(signed head: magic+length+header, signature, payload) of a well-formed bundle."""
    (length,) = struct.unpack(">I", data[4:8])
    end = PREFIX.size + length
    return data[:end], data[end:end + SIG_LEN], data[end + SIG_LEN:]


def count_frames(payload: bytes) -> int:
    n = 0
    while payload:
        d = zstandard.ZstdDecompressor().decompressobj()
        d.decompress(payload)
        payload = d.unused_data
        n += 1
    return n


def forge(obj: Any, payload: bytes = b"", seed: bytes = EARTH_SEED,
          signature: bytes | None = None) -> bytes:
    """A correctly signed bundle around any msgpack object, bypassing encode_header's checks,
    so a reader's refusal is about the header and not the signature."""
    raw: bytes = msgpack.packb(obj, use_bin_type=True)
    signed = PREFIX.pack(MAGIC, len(raw)) + raw
    if signature is None:
        signature = nacl.signing.SigningKey(seed).sign(signed).signature
    return signed + signature + payload


def wire_for(payload: bytes = b"", codec: str = "none", raw_length: int | None = None,
             **kw: Any) -> dict[str, Any]:
    """The wire dict of a valid header whose payload fields describe `payload`."""
    p = Payload(codec, len(payload), len(payload) if raw_length is None else raw_length,
                hashlib.sha256(payload).digest())
    return to_wire(header(**kw).with_payload(p))


def rle_zstd_frame(raw_size: int, window_log: int = 17) -> bytes:
    """A valid zstd frame of RLE blocks: 4 bytes per 128 KiB of zeros, so 1 GiB is 32 KiB.

    Frame header: magic, descriptor 0 (no content size, no checksum, not single-segment),
    window descriptor (exponent = window_log - 10, mantissa 0).
    """
    block = 128 * 1024
    out = bytearray(struct.pack("<I", 0xFD2FB528))
    out += bytes([0x00, (window_log - 10) << 3])
    left = raw_size
    while left > 0:
        n = min(block, left)
        left -= n
        out += (int(left == 0) | (1 << 1) | (n << 3)).to_bytes(3, "little") + b"\0"
    return bytes(out)


def bomb_bundle(decompressed: int = GiB, declared: int = 1024, window_log: int = 17) -> bytes:
    bomb = rle_zstd_frame(decompressed, window_log)
    p = Payload("zstd", len(bomb), declared, hashlib.sha256(bomb).digest())
    return head_bytes(header().with_payload(p), EARTH_SEED) + bomb


# Prepended to the subprocess scripts. growth = peak_kib() after - reset_peak().
# Not ru_maxrss: Linux carries the forking parent's RSS into the child's ru_maxrss across
# exec, so a child of a big pytest process would report pytest's size. VmHWM is the
# child's own peak, and writing "5" to /proc/self/clear_refs resets it.
PEAK = """
import os, re, resource


def peak_kib():
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1))
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # growth is then pessimistic: it includes earlier peaks
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
"""


def run_python(script: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run `script` in a fresh interpreter from the repo root; it prints one JSON line."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------------------------
# strategies

ids = st.from_regex(r"[0-9A-Za-z][0-9A-Za-z._-]{0,79}", fullmatch=True)
short_ids = st.from_regex(r"[0-9A-Za-z][0-9A-Za-z._-]{0,60}", fullmatch=True)
kinds = st.from_regex(r"[a-z][a-z0-9._-]{0,63}", fullmatch=True)
names = st.from_regex(r"[0-9A-Za-z_-]{1,64}", fullmatch=True)
scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20))


def meta_values(levels: int) -> st.SearchStrategy[Any]:
    if levels == 0:
        return scalars
    inner = meta_values(levels - 1)
    return (scalars | st.lists(inner, max_size=3)
            | st.dictionaries(st.text(max_size=8), inner, max_size=3))


# header (1) > meta (2) > six more levels = 8, exactly Limits.max_depth
metas = st.dictionaries(st.text(max_size=12), meta_values(6), max_size=5).filter(
    lambda m: len(msgpack.packb(m, use_bin_type=True)) < 32 * 1024)


@st.composite
def fragments(draw: st.DrawFn) -> Fragment:
    """Fragment info valid for any payload up to 1 MiB on the wire."""
    offset = draw(st.integers(0, 2**35))
    total = offset + draw(st.integers(1024**2, 2**30))  # room for any payload drawn here
    count = draw(st.integers(1, min(LIMITS.max_fragments, total)))
    index = draw(st.integers(0, count - 1))
    return Fragment(parent=draw(short_ids), index=index, count=count, offset=offset,
                    total=total)


@st.composite
def headers(draw: st.DrawFn) -> Header:
    created = draw(st.floats(0, 4e9))
    return Header(
        id=draw(ids), kind=draw(kinds), src=draw(st.sampled_from(sorted(SEEDS))),
        dst=draw(names), created=created, expires=created + draw(st.floats(0, 1e9)),
        priority=draw(st.sampled_from([BULK, NORMAL, EXPEDITED])),
        reply_to=draw(st.none() | ids), fragment=draw(st.none() | fragments()),
        meta=draw(metas),
    )


def compressible(seed: int, size: int) -> bytes:
    line = f"{seed:08d} INFO request path=/api/v1/items status=200 latency_ms={seed % 997}\n"
    return (line.encode() * (size // len(line) + 1))[:size]


payload_parts = st.one_of(
    st.binary(max_size=8192),
    st.builds(compressible, st.integers(0, 10**6), st.integers(0, 40_000)),
)
codecs = st.sampled_from(["zstd", "none"])


# ---------------------------------------------------------------------------------------------
# round trips


@FAST
@given(headers(), st.lists(payload_parts, max_size=5), codecs, st.integers(1, 70_000))
def test_round_trip_frames(h: Header, parts: list[bytes], codec: str, chunk: int) -> None:
    data = b"".join(parts)
    bundle = multi_frame(h, parts, codec, SEEDS[h.src])
    got, raw = read_bundle(bundle, chunk=chunk)
    assert raw == data
    assert got == h.with_payload(got.payload)
    assert (got.payload.codec, got.payload.raw_length) == (codec, len(data))
    _, _, payload = split_bundle(bundle)
    assert got.payload.length == len(payload)
    assert got.payload.sha256 == hashlib.sha256(payload).digest()
    if codec == "zstd":
        assert count_frames(payload) == len(parts)  # one frame per part, empty ones too


@FAST
@given(headers(), payload_parts, codecs)
def test_round_trip_pack_bytes(h: Header, data: bytes, codec: str) -> None:
    got, raw = read_bundle(pack_bytes(h, data, SEEDS[h.src], codec=codec))
    assert raw == data
    assert got == h.with_payload(got.payload)


@FILES
@given(h=headers(), data=payload_parts, codec=codecs, level=st.sampled_from([1, 3, 9]))
def test_round_trip_pack_file(tmp_path: Path, h: Header, data: bytes, codec: str,
                              level: int) -> None:
    dest = tmp_path / "bundle"
    seen: list[int] = []
    source = io.BytesIO(data) if data else None
    final = pack_file(dest, h, source, SEEDS[h.src], codec=codec, level=level,
                      progress=seen.append)
    assert sum(seen) == len(data)
    assert final == h.with_payload(final.payload)
    assert dest.stat().st_size == len(head_bytes(final, SEEDS[h.src])) + final.payload.length
    out = bytearray()
    assert read_payload(dest, KEYRING, LIMITS, out.extend) == final
    assert bytes(out) == data
    assert verify_file(dest, KEYRING, LIMITS) == final
    assert inspect(dest, KEYRING, LIMITS, full=True).status == "ok"
    assert not [p for p in tmp_path.iterdir() if p.name != "bundle"]  # no temp files left


def test_a_spooled_bundle_writes_its_payload_once_with_its_head_before_it(
        tmp_path: Path) -> None:
    """pack_spooled (how a node keeps its custody copies): the payload is written once,
    after room for the head; the room before the head is never written (a hole), and the
    bundle from `start` on is the same bundle pack_file makes."""
    data = os.urandom(3 * CHUNK)
    h = header(meta={"name": "f"})
    path = tmp_path / "custody.opb"
    final, start = pack_spooled(path, h, source_fill(io.BytesIO(data)), EARTH_SEED,
                                codec="none")
    head = head_bytes(final, EARTH_SEED)
    assert path.stat().st_size == start + len(head) + len(data)
    with open(path, "rb") as f:
        assert f.read(start) == bytes(start)
        assert spooled_start(f) == start and f.read(len(head)) == head
    allocated = path.stat().st_blocks * 512
    assert allocated <= len(data) + 3 * 4096, "the room before the head took disk space"
    plain = tmp_path / "plain.opb"
    with open(path, "rb") as f, open(plain, "wb") as out:
        f.seek(start)
        out.write(f.read())
    out_data = bytearray()
    assert read_payload(plain, KEYRING, LIMITS, out_data.extend) == final
    assert bytes(out_data) == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["custody.opb", "plain.opb"]


def test_a_head_larger_than_a_peer_accepts_is_refused_at_the_sender(tmp_path: Path) -> None:
    h = header(meta={"big": "x" * 5000})
    with pytest.raises(LocalError, match="max_header"):
        pack_spooled(tmp_path / "c.opb", h, source_fill(None), EARTH_SEED, max_header=4096)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_round_trip_frames_larger_than_a_chunk(tmp_path: Path) -> None:
    parts = [compressible(1, 3 * CHUNK // 2), bytes(range(256)) * 5000, b"",
             compressible(2, CHUNK + 1)]
    bundle = multi_frame(header(meta={"layers": 3}), parts, "zstd")
    got, raw = read_bundle(bundle)
    assert raw == b"".join(parts)
    assert count_frames(split_bundle(bundle)[2]) == 4
    path = tmp_path / "b"
    path.write_bytes(bundle)
    out = bytearray()
    assert read_payload(path, KEYRING, LIMITS, out.extend) == got
    assert bytes(out) == raw


@pytest.mark.parametrize("codec", ["zstd", "none"])
def test_empty_payloads(tmp_path: Path, codec: str) -> None:
    for bundle in (pack_bytes(header(), b"", EARTH_SEED, codec=codec),
                   multi_frame(header(), [], codec), multi_frame(header(), [b"", b""], codec)):
        got, raw = read_bundle(bundle)
        assert raw == b"" and got.payload.raw_length == 0
    final = pack_file(tmp_path / "e", header(), None, EARTH_SEED, codec=codec)
    assert final.payload.length == 0 and final.payload.raw_length == 0
    assert verify_file(tmp_path / "e", KEYRING, LIMITS) == final


def test_header_encoding_is_deterministic() -> None:
    h = header(meta={"b": [1, 2.5, None], "a": {"x": b"\0"}})
    assert encode_header(h) == encode_header(h)
    assert decode_header(encode_header(h), LIMITS) == h


# ---------------------------------------------------------------------------------------------
# corruption: flips, truncation, appended bytes


SMALL = {
    "zstd": multi_frame(header(meta={"k": [1, "v"]}), [b"hello " * 40, b"world"], "zstd"),
    "none": pack_bytes(header(reply_to="ab12", priority=EXPEDITED), b"hello outpost " * 8,
                       EARTH_SEED),
    "fragment": pack_bytes(
        header(id="ab.3", fragment=Fragment("ab", 3, 9, 300, 1000)), b"x" * 100, EARTH_SEED),
}
LARGE = {
    "zstd": multi_frame(header(), [compressible(i, 60_000) + bytes(range(256)) * 40
                                   for i in range(5)], "zstd"),
    "none": pack_bytes(header(), bytes(range(256)) * 1000, EARTH_SEED),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_single_bit_flip_is_detected(name: str) -> None:
    bundle = SMALL[name]
    read_bundle(bundle)  # the pristine one reads
    for pos in range(len(bundle)):
        for bit in range(8):
            damaged = bytearray(bundle)
            damaged[pos] ^= 1 << bit
            reject(bytes(damaged))


@settings(deadline=None, max_examples=300)
@given(st.sampled_from(sorted(LARGE)), st.data())
def test_flipped_bit_is_detected(name: str, data: st.DataObject) -> None:
    bundle = LARGE[name]
    pos = data.draw(st.integers(0, len(bundle) - 1), label="position")
    bit = data.draw(st.integers(0, 7), label="bit")
    damaged = bytearray(bundle)
    damaged[pos] ^= 1 << bit
    err = reject(bytes(damaged))
    head, _, _ = split_bundle(bundle)
    if pos >= len(head) + SIG_LEN:  # inside the payload: the signed sha256 has the last word
        assert type(err) is IntegrityError and err.reason == "integrity"


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_truncation_is_detected(name: str) -> None:
    bundle = SMALL[name]
    for cut in range(len(bundle)):
        err = reject(bundle[:cut])
        assert isinstance(err, TruncatedBundle) or err.reason == "bad-magic"
        if cut >= len(MAGIC):
            assert isinstance(err, TruncatedBundle)


@FAST
@given(st.sampled_from(sorted(LARGE)), st.data())
def test_truncation_is_detected(name: str, data: st.DataObject) -> None:
    bundle = LARGE[name]
    cut = data.draw(st.integers(len(MAGIC), len(bundle) - 1), label="cut")
    assert isinstance(reject(bundle[:cut]), TruncatedBundle)


ALL = {**{f"small-{k}": v for k, v in SMALL.items()},
       **{f"large-{k}": v for k, v in LARGE.items()}}


@FAST
@given(st.sampled_from(sorted(ALL)), st.binary(min_size=1, max_size=64))
def test_appended_bytes_are_detected(name: str, extra: bytes) -> None:
    err = reject(ALL[name] + extra)
    assert isinstance(err, MalformedBundle) and err.reason == "trailing-bytes"


@FAST
@given(st.binary(max_size=300) | st.binary(max_size=300).map(lambda b: MAGIC + b))
def test_garbage_is_refused(garbage: bytes) -> None:
    reject(garbage)


def test_damaged_file_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "b"
    damaged = bytearray(LARGE["zstd"])
    damaged[-100] ^= 0x20
    path.write_bytes(bytes(damaged))
    staged = bytearray()
    with pytest.raises(IntegrityError):
        read_payload(path, KEYRING, LIMITS, staged.extend)
    found = inspect(path, KEYRING, LIMITS, full=True)
    assert (found.status, found.reason) == ("bad", "integrity")
    assert found.header is not None  # the head itself was fine
    assert inspect(path, KEYRING, LIMITS).status == "ok"  # signature only


# ---------------------------------------------------------------------------------------------
# each refusal has its class and reason


def test_bad_magic() -> None:
    bundle = SMALL["none"]
    for bad in (b"OPB2" + bundle[4:], b"opb1" + bundle[4:], b"X", b"PK\x03\x04" + bundle[4:]):
        err = reject(bad)
        assert isinstance(err, MalformedBundle) and err.reason == "bad-magic"


def test_a_file_that_is_only_the_start_of_the_magic_is_truncated_not_bad() -> None:
    """A writer that does not write atomically has just created it: wait, do not refuse."""
    for start in (b"", b"O", b"OPB"):
        err = reject(start)
        assert isinstance(err, TruncatedBundle), (start, err)


@pytest.mark.parametrize("declared", [LIMITS.max_header + 1, 2**32 - 1])
def test_header_too_large_is_refused_before_reading_it(declared: int) -> None:
    err = reject(PREFIX.pack(MAGIC, declared) + b"\x80" * 10)  # short file: limit comes first
    assert isinstance(err, LimitExceeded) and err.reason == "header-too-large"


def test_header_limit_is_configurable() -> None:
    bundle = pack_bytes(header(meta={"pad": "x" * 500}), b"", EARTH_SEED)
    read_bundle(bundle)
    err = reject(bundle, limits=Limits(max_header=400))
    assert err.reason == "header-too-large"
    with pytest.raises(LimitExceeded):
        decode_header(split_bundle(bundle)[0][8:], Limits(max_header=400))


def nested(levels: int) -> Any:
    value: Any = "leaf"
    for i in range(levels):
        value = {"k": value} if i % 2 else [value]
    return value


def test_nesting_limit() -> None:
    # header map (1) > meta (2) > 6 containers: depth 8 is accepted, 9 is not
    assert depth(wire_for(meta={"a": nested(6)})) == 8
    read_bundle(forge(wire_for(meta={"a": nested(6)})))
    for levels in (7, 30, 500):
        err = reject(forge(wire_for(meta={"a": nested(levels)})))
        assert isinstance(err, LimitExceeded) and err.reason == "header-too-deep"


def test_unknown_key() -> None:
    bundle = pack_bytes(header(src="mars"), b"hi", STRANGER_SEED)
    err = reject(bundle)
    assert isinstance(err, UnknownKey) and err.reason == "unknown-key"
    assert read_bundle(bundle, keyring={**KEYRING, "mars": public_key(STRANGER_SEED)})[1] == b"hi"


@pytest.mark.parametrize("case", ["unsigned", "other-key", "stranger", "flipped"])
def test_bad_signature(case: str) -> None:
    # src is "earth" in every case; "unsigned" is an all-zero signature
    signature = bytes(SIG_LEN) if case == "unsigned" else None
    seed = {"other-key": MOON_SEED, "stranger": STRANGER_SEED}.get(case, EARTH_SEED)
    bundle = bytearray(forge(wire_for(b"hi"), b"hi", seed=seed, signature=signature))
    if case == "flipped":
        bundle[-3] ^= 1  # last signature byte
    err = reject(bytes(bundle))
    assert isinstance(err, BadSignature) and err.reason == "bad-signature"


@pytest.mark.parametrize("codec", ["zstd", "none"])
def test_payload_sha_mismatch(codec: str) -> None:
    body = zstandard.ZstdCompressor().compress(b"data" * 100) if codec == "zstd" else b"d" * 400
    w = wire_for(body, codec, raw_length=400)
    w["payload"]["sha256"] = hashlib.sha256(b"something else").digest()
    err = reject(forge(w, body))
    assert type(err) is IntegrityError and err.reason == "integrity"


def test_signed_payload_that_is_not_zstd() -> None:
    body = b"this is not a zstd frame at all"
    err = reject(forge(wire_for(body, "zstd", raw_length=100), body))
    assert isinstance(err, IntegrityError) and err.reason == "bad-zstd"


def test_zstd_shorter_than_declared() -> None:
    body = zstandard.ZstdCompressor().compress(b"x" * 100)
    err = reject(forge(wire_for(body, "zstd", raw_length=101), body))
    assert type(err) is IntegrityError and err.reason == "integrity"


def test_zstd_window_too_large() -> None:
    # a frame asking for a 2 GiB window is refused by the decoder, not allocated
    body = rle_zstd_frame(1024, window_log=31)
    err = reject(forge(wire_for(body, "zstd", raw_length=1024), body))
    assert err.reason == "bad-zstd"


def test_rle_bomb_is_a_real_gibibyte() -> None:
    small = rle_zstd_frame(3 * 128 * 1024 + 5)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(small) == bytes(393221)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(rle_zstd_frame(GiB)))
    total = 0
    while chunk := reader.read(16 * 1024 * 1024):
        total += len(chunk)
    assert total == GiB


@pytest.mark.parametrize("window_log", [17, 27])
def test_zstd_bomb_is_refused_quickly_in_little_memory(window_log: int) -> None:
    bundle = bomb_bundle(GiB, 1024, window_log)
    assert len(bundle) < 64 * 1024
    tracemalloc.start()
    try:
        start = time.perf_counter()
        err = reject(bundle)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(err, LimitExceeded) and err.reason == "zstd-bomb"
    assert elapsed < 2.0
    assert peak < 50 * 1024**2


BOMB_SCRIPT = PEAK + """
import hashlib, io, json, os, resource, struct, sys, time
from outpost.codec import Limits, iter_payload, open_verified, public_key, head_bytes
from outpost.codec.header import Header, Payload
from outpost.errors import BundleError

window_log, seed = int(sys.argv[1]), bytes(range(32))
frame = bytearray(struct.pack("<I", 0xFD2FB528)) + bytes([0, (window_log - 10) << 3])
for i in range(8192):  # 8192 RLE blocks of 128 KiB: 1 GiB of zeros
    frame += (int(i == 8191) | 2 | (128 * 1024) << 3).to_bytes(3, "little") + b"\\0"
bomb = bytes(frame)
h = Header(id="bomb", kind="test", src="earth", dst="moon", created=0.0, expires=1.0)
bundle = head_bytes(h.with_payload(
    Payload("zstd", len(bomb), 1024, hashlib.sha256(bomb).digest())), seed) + bomb
keyring = {"earth": public_key(seed)}
before = reset_peak()
start = time.perf_counter()
reason = None
try:
    f = io.BytesIO(bundle)
    header = open_verified(f, keyring, Limits())
    for _ in iter_payload(f, header):
        pass
except BundleError as e:
    reason = e.reason
elapsed = time.perf_counter() - start
after = peak_kib()
print(json.dumps({"reason": reason, "seconds": elapsed, "grew_kib": after - before,
                  "bomb_bytes": len(bomb)}))
"""


@pytest.mark.parametrize("window_log", [17, 27])
def test_zstd_bomb_peak_rss(window_log: int) -> None:
    result = run_python(BOMB_SCRIPT, str(window_log))
    assert result["reason"] == "zstd-bomb"
    assert result["seconds"] < 2.0
    assert result["grew_kib"] < 50 * 1024


def test_zstd_bomb_under_a_truncation_or_bad_sha_reports_that() -> None:
    # corruption in transit explains a runaway decompression better than malice
    bundle = bomb_bundle(64 * 1024**2, 1024)
    assert isinstance(reject(bundle[:-10]), TruncatedBundle)
    damaged = bytearray(bundle)
    damaged[-10] ^= 1
    assert type(reject(bytes(damaged))) is IntegrityError


FRAGMENT_CASES: list[tuple[dict[str, Any], str]] = [
    ({"total": 2**62}, "absurd-fragment"),
    ({"total": LIMITS.max_raw + 1}, "absurd-fragment"),
    ({"count": 0}, "absurd-fragment"),
    ({"count": LIMITS.max_fragments + 1, "total": 2**30}, "absurd-fragment"),
    ({"count": 5000, "total": 4000, "offset": 0}, "absurd-fragment"),
    ({"offset": 1000 - 99}, "bad-fragment"),  # 100-byte payload past the end
    ({"offset": -1}, "bad-fragment"),
    ({"index": 9}, "bad-fragment"),
    ({"index": -1}, "bad-fragment"),
    ({"parent": "../etc"}, "bad-fragment"),
]


@pytest.mark.parametrize(("change", "reason"), FRAGMENT_CASES)
def test_fragment_limits(change: dict[str, Any], reason: str) -> None:
    body = b"x" * 100
    w = wire_for(body, id="ab.3")
    w["fragment"] = {"parent": "ab", "index": 3, "count": 9, "offset": 300, "total": 1000,
                     **change}
    err = reject(forge(w, body))
    assert err.reason == reason
    assert isinstance(err, LimitExceeded if reason == "absurd-fragment" else MalformedBundle)
    frag = Fragment(**w["fragment"])
    with pytest.raises(BundleError):
        validate_fragment(frag, 100, LIMITS)


def test_fragment_limits_are_configurable() -> None:
    frag = Fragment("ab", 0, 11, 0, 1000)
    validate_fragment(frag, 10, LIMITS)
    with pytest.raises(LimitExceeded):
        validate_fragment(frag, 10, Limits(max_fragments=10))
    with pytest.raises(LimitExceeded):
        validate_fragment(frag, 10, Limits(max_raw=999))


@pytest.mark.parametrize("obj", [[1, 2, 3], 7, "header", b"header", None, 1.5, True])
def test_non_map_header(obj: Any) -> None:
    err = reject(forge(obj))
    assert isinstance(err, MalformedBundle) and err.reason == "bad-header"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(w: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            w = w[p]
        w[last] = value
    return change


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def change(w: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            w = w[p]
        del w[last]
    return change


BAD_HEADERS: dict[str, Callable[[dict[str, Any]], None]] = {
    # wrong types
    "id int": _set("id", 7),
    "kind bytes": _set("kind", b"test"),
    "src none": _set("src", None),
    "dst int": _set("dst", 1),
    "created str": _set("created", "now"),
    "expires bool": _set("expires", True),
    "priority bool": _set("priority", True),
    "priority float": _set("priority", 1.0),
    "priority str": _set("priority", "normal"),
    "reply_to int": _set("reply_to", 5),
    "fragment list": _set("fragment", [1, 2, 3, 4, 5]),
    "fragment str": _set("fragment", "ab.1"),
    "fragment index str": _set("fragment", {"parent": "a", "index": "0", "count": 1,
                                            "offset": 0, "total": 10}),
    "fragment total float": _set("fragment", {"parent": "a", "index": 0, "count": 1,
                                              "offset": 0, "total": 10.0}),
    "payload list": _set("payload", ["none", 0, 0, b""]),
    "payload none": _set("payload", None),
    "payload int": _set("payload", 3),
    "codec int": _set("payload.codec", 1),
    "length str": _set("payload.length", "0"),
    "raw_length float": _set("payload.raw_length", 0.0),
    "sha256 str": _set("payload.sha256", "e3b0c442" * 8),
    "meta list": _set("meta", []),
    "meta str": _set("meta", "x"),
    "meta int key": _set("meta", {1: "x"}),
    # missing fields
    "no id": _drop("id"),
    "no kind": _drop("kind"),
    "no created": _drop("created"),
    "no payload": _drop("payload"),
    "no sha256": _drop("payload.sha256"),
    "no codec": _drop("payload.codec"),
    # values out of range
    "priority 3": _set("priority", 3),
    "priority -1": _set("priority", -1),
    "codec gzip": _set("payload.codec", "gzip"),
    "short sha256": _set("payload.sha256", bytes(31)),
    "negative length": _set("payload.length", -1),
    "none with raw_length != length": _set("payload.raw_length", 5),
    "expires before created": _set("expires", 1.0),
    "created nan": _set("created", float("nan")),
    "id empty": _set("id", ""),
    "id slash": _set("id", "a/b"),
    "id dotdot first": _set("id", "../x"),
    "id newline": _set("id", "abc\n"),
    "id 81 chars": _set("id", "a" * 81),
    "kind upper": _set("kind", "Test"),
    "kind newline": _set("kind", "test\n"),
    "src space": _set("src", "ea rth"),
    "dst newline": _set("dst", "moon\n"),
    "dst 65 chars": _set("dst", "m" * 65),
    "reply_to slash": _set("reply_to", "x/y"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_bad_header_fields(case: str) -> None:
    w = wire_for()
    BAD_HEADERS[case](w)
    err = reject(forge(w))
    assert isinstance(err, MalformedBundle) and err.reason == "bad-header", err


@pytest.mark.parametrize("raw", [b"", b"\xc1", b"\x81", b"\x80\x80", b"\xa3ab"])
def test_header_bytes_that_are_not_msgpack(raw: bytes) -> None:
    signed = PREFIX.pack(MAGIC, len(raw)) + raw
    err = reject(signed + nacl.signing.SigningKey(EARTH_SEED).sign(signed).signature)
    assert isinstance(err, MalformedBundle) and err.reason == "bad-header"


def test_payload_too_large() -> None:
    for length, raw in ((0, LIMITS.max_raw + 1), (2**63, 10), (LIMITS.max_raw + 1, 0)):
        w = wire_for(b"", "zstd")
        w["payload"].update(length=length, raw_length=raw)
        err = reject(forge(w))
        assert isinstance(err, LimitExceeded) and err.reason == "payload-too-large"
    w = wire_for(b"abc")
    assert reject(forge(w, b"abc"), limits=Limits(max_raw=2)).reason == "payload-too-large"


def test_truncated_reasons() -> None:
    bundle = SMALL["none"]
    head, _, _ = split_bundle(bundle)
    for cut, where in ((6, "header length"), (20, "header"), (len(head) + 5, "signature"),
                       (len(bundle) - 1, "payload")):
        err = reject(bundle[:cut])
        assert type(err) is TruncatedBundle and err.reason == "truncated"
        assert where.split()[0] in str(err)


def test_encode_refuses_what_readers_refuse() -> None:
    for h in (header(id="abc\n"), header(kind="ack\n"), header(meta={"a": nested(7)}),
              header(meta={"pad": "x" * LIMITS.max_header}), header(meta={1: "x"}),
              header(fragment=Fragment("ab", 0, 1, 0, 10)), header(priority=5)):
        with pytest.raises(BundleError):
            pack_bytes(h, b"0123456789ab", EARTH_SEED)


def test_inspect_never_raises(tmp_path: Path) -> None:
    cases = {
        "ok": (SMALL["zstd"], "ok", None),
        "stranger": (pack_bytes(header(src="mars"), b"", STRANGER_SEED), "unknown-key",
                     "unknown-key"),
        "garbage": (b"\0" * 50, "bad", "bad-magic"),
        "cut": (SMALL["zstd"][:-1], "bad", "truncated"),
    }
    for name, (data, status, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        found = inspect(tmp_path / name, KEYRING, LIMITS, full=True)
        assert (found.status, found.reason) == (status, reason)
        assert found.size == len(data)


# ---------------------------------------------------------------------------------------------
# fragments


def cut_into_fragments(parent_file: Path, parent: Header, size: int, out: Path) -> list[Path]:
    total = parent_file.stat().st_size
    paths = []
    for index in range(fragment_count(total, size)):
        frag = fragment_header(parent, index, total, size)
        path = out / f"{frag.id}.frag"
        write_fragment(path, parent_file, frag, EARTH_SEED)
        paths.append(path)
    return paths


@FILES
@given(data=st.binary(max_size=20_000) | st.builds(compressible, st.integers(0, 99),
                                                   st.integers(0, 200_000)),
       codec=codecs, pieces=st.integers(1, 12), extra=st.integers(0, 50))
def test_fragments_reassemble_to_the_parent(tmp_path: Path, data: bytes, codec: str,
                                            pieces: int, extra: int) -> None:
    for old in tmp_path.iterdir():
        old.unlink()
    parent_file = tmp_path / "parent"
    parent = pack_file(parent_file, header(meta={"name": "img"}), io.BytesIO(data),
                       EARTH_SEED, codec=codec)
    whole = parent_file.read_bytes()
    size = -(-len(whole) // pieces) + extra
    paths = cut_into_fragments(parent_file, parent, size, tmp_path)
    assert len(paths) == fragment_count(len(whole), size)
    joined = bytearray()
    for index, path in enumerate(paths):
        part = bytearray()
        got = read_payload(path, KEYRING, LIMITS, part.extend)  # verifies on its own
        assert got.id == f"{parent.id}.{index}"
        assert got.fragment == Fragment(parent.id, index, len(paths), len(joined), len(whole))
        assert got.payload.codec == "none" and got.payload.length == len(part) <= size
        assert (got.kind, got.src, got.dst, got.meta) == (parent.kind, "earth", "moon", {})
        joined += part
    assert bytes(joined) == whole  # byte for byte
    rebuilt = tmp_path / "rebuilt"
    rebuilt.write_bytes(bytes(joined))
    out = bytearray()
    assert read_payload(rebuilt, KEYRING, LIMITS, out.extend) == parent
    assert bytes(out) == data


def test_fragment_edge_sizes(tmp_path: Path) -> None:
    parent_file = tmp_path / "parent"
    parent = pack_file(parent_file, header(), io.BytesIO(b"tiny"), EARTH_SEED, codec="none")
    total = parent_file.stat().st_size
    for size in (1, 7, total - 1, total, total + 1, 10 * total):
        out = tmp_path / f"s{size}"
        out.mkdir()
        paths = cut_into_fragments(parent_file, parent, size, out)
        assert len(paths) == -(-total // size)
        joined = b"".join(read_bundle(p.read_bytes())[1] for p in paths)
        assert joined == parent_file.read_bytes()


def test_damaged_fragment_is_detected(tmp_path: Path) -> None:
    parent_file = tmp_path / "parent"
    parent = pack_file(parent_file, header(), io.BytesIO(b"z" * 5000), EARTH_SEED,
                       codec="none")
    paths = cut_into_fragments(parent_file, parent, 1000, tmp_path)
    damaged = bytearray(paths[2].read_bytes())
    damaged[-1] ^= 4
    assert type(reject(bytes(damaged))) is IntegrityError


def test_fragment_ids_must_fit() -> None:
    # a fragment's id is "<parent>.<index>" and must itself be a valid id (<= 80 chars)
    long_parent = header(id="p" * 78)
    frag = fragment_header(long_parent, 12, 10_000, 100)
    with pytest.raises(MalformedBundle):
        encode_header(frag)


# ---------------------------------------------------------------------------------------------
# streaming: a 256 MiB generated stream in bounded memory

STREAM_SCRIPT = PEAK + """
import hashlib, json, os, random, resource, sys, time
from pathlib import Path
from outpost.codec import Limits, pack_file, public_key, read_payload
from outpost.codec.header import Header

TOTAL, DEST = int(sys.argv[1]), Path(sys.argv[2])
BLOCK = 1024 * 1024
rng = random.Random(1)


def make_block():
    lines = []
    size = 0
    while size < BLOCK * 9 // 10:
        line = (f"2024-06-{rng.randrange(1, 29):02d}T{rng.randrange(24):02d}:"
                f"{rng.randrange(60):02d}:{rng.randrange(60):02d}Z INFO api "
                f"req={rng.getrandbits(48):012x} status={rng.choice((200, 200, 304, 404))} "
                f"ms={rng.randrange(900)}\\n")
        lines.append(line)
        size += len(line)
    data = "".join(lines).encode() + rng.randbytes(BLOCK)
    return data[:BLOCK]


POOL = [make_block() for _ in range(8)]


def blocks():
    for i in range(TOTAL // BLOCK):
        yield i.to_bytes(8, "big") + POOL[i % len(POOL)][8:]


class GeneratedStream:
    # a reader over a generator: the stream never exists whole
    def __init__(self, it):
        self.it, self.buf, self.sha, self.n = it, b"", hashlib.sha256(), 0

    def read(self, n=-1):
        n = sys.maxsize if n is None or n < 0 else n
        while len(self.buf) < n:
            more = next(self.it, None)
            if more is None:
                break
            self.buf += more
        out, self.buf = self.buf[:n], self.buf[n:]
        self.sha.update(out)
        self.n += len(out)
        return out


seed = bytes(range(32))
h = Header(id="stream", kind="test", src="earth", dst="moon", created=0.0, expires=1.0)
base = reset_peak()
start = time.perf_counter()
source = GeneratedStream(blocks())
final = pack_file(DEST, h, source, seed)
packed = time.perf_counter()
after_pack = peak_kib()
read_base = reset_peak()
sha, count = hashlib.sha256(), 0


def sink(chunk):
    global count
    sha.update(chunk)
    count += len(chunk)


read_payload(DEST, {"earth": public_key(seed)}, Limits(), sink)
done = time.perf_counter()
after_read = peak_kib()
print(json.dumps({
    "raw": source.n, "read": count, "same": sha.digest() == source.sha.digest(),
    "wire": final.payload.length, "pack_s": packed - start, "read_s": done - packed,
    "base_kib": base, "pack_grew_kib": after_pack - base, "read_grew_kib": after_read - read_base,
}))
"""


def test_streaming_256_mib_in_bounded_memory(tmp_path: Path) -> None:
    total = 256 * 1024**2
    result = run_python(STREAM_SCRIPT, str(total), str(tmp_path / "big.bundle"), timeout=120)
    assert result["raw"] == result["read"] == total
    assert result["same"]
    assert result["wire"] < total  # it did compress
    assert result["pack_grew_kib"] < 100 * 1024, result
    assert result["read_grew_kib"] < 100 * 1024, result


# ---------------------------------------------------------------------------------------------
# docs/bundle-format.md's hex dump is what the code produces


def example_bundle() -> bytes:
    """The example of docs/bundle-format.md (fixed seed and fields: reproducible)."""
    seed = bytes(range(32))
    h = Header(id="0f1e2d3c", kind="ack", src="earth", dst="moon",
               created=1_700_000_000.0, expires=1_700_003_600.0, priority=EXPEDITED,
               meta={"n": 1})
    return pack_bytes(h, b"hi", seed, codec="none")


def test_docs_hex_dump_matches_the_code() -> None:
    doc = (ROOT / "docs" / "bundle-format.md").read_text()
    block = re.search(r"<!-- hexdump -->\s*```\n(.*?)```", doc, re.S)
    assert block, "docs/bundle-format.md lacks the hexdump block"
    dumped = bytearray()
    for line in block.group(1).splitlines():
        hexpart = line.split("  ")[1] if "  " in line else ""
        dumped += bytes.fromhex(hexpart)
    assert bytes(dumped) == example_bundle()
