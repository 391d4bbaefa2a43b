"""An image bundle's payload, pure: ImagePayload metadata, PartSplitter (outpost/images/
parts.py) and ChunkReader (outpost/images/docker_source.py), plus one trip through the codec.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outpost.codec import Header, Limits, new_id, pack_parts, public_key, read_payload
from outpost.codec.files import PartWriter
from outpost.errors import IntegrityError, MalformedBundle, RefusedContent
from outpost.images.docker_source import ChunkReader
from outpost.images.parts import MAX_CONFIG, ImagePayload, Part, PartSplitter
from outpost.release.manifest import ImageFacts


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Sinks:
    """open_part for the splitter: every part opened, in order, and what it received."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.data: list[bytes] = []
        self.closed: list[bool] = []

    def __call__(self, part: Part) -> BinaryIO:
        self.opened.append(part.digest)
        index = len(self.data)
        self.data.append(b"")
        self.closed.append(False)
        sinks = self

        class Sink(io.BytesIO):
            def close(self) -> None:
                if not self.closed:
                    sinks.data[index] = self.getvalue()
                    sinks.closed[index] = True
                super().close()

        return Sink()


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """`data` in pieces at `points` (any order, repeats allowed: empty pieces)."""
    edges = sorted(min(p, len(data)) for p in points)
    out, last = [], 0
    for e in edges:
        out.append(data[last:e])
        last = e
    out.append(data[last:])
    return out


def split(contents: list[bytes], chunks: list[bytes],
          digests: list[str] | None = None) -> tuple[Sinks, PartSplitter]:
    parts = [Part(d, len(c)) for d, c in
             zip(digests or [digest(c) for c in contents], contents, strict=True)]
    sinks = Sinks()
    splitter = PartSplitter(parts, sinks)
    for chunk in chunks:
        splitter.feed(chunk)
    return sinks, splitter


# --- PartSplitter ---

@settings(max_examples=200, deadline=None)
@given(contents=st.lists(st.binary(max_size=300), min_size=1, max_size=6),
       points=st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_parts_cut_anywhere_come_out_whole(contents: list[bytes], points: list[int]) -> None:
    sinks, splitter = split(contents, cut(b"".join(contents), points))
    splitter.finish()
    assert sinks.data == contents
    assert sinks.opened == [digest(c) for c in contents]
    assert all(sinks.closed)


def test_one_byte_at_a_time() -> None:
    contents = [b"config", os.urandom(1000), b"", os.urandom(77)]
    data = b"".join(contents)
    sinks, splitter = split(contents, [data[i:i + 1] for i in range(len(data))])
    splitter.finish()
    assert sinks.data == contents


@pytest.mark.parametrize("contents", [
    [b""], [b"", b""], [b"", b"a"], [b"a", b""], [b"", b"abc", b"", b"", b"de", b""],
])
def test_zero_size_parts(contents: list[bytes]) -> None:
    sinks, splitter = split(contents, [b"".join(contents)])
    splitter.finish()
    assert sinks.data == contents and all(sinks.closed)
    assert len(sinks.opened) == len(contents)


def test_no_parts_and_no_bytes() -> None:
    sinks, splitter = split([], [b""])
    splitter.finish()
    assert sinks.opened == []


def test_a_wrong_digest_is_raised_at_finish_not_before() -> None:
    contents = [b"config", b"layer one", b"layer two"]
    digests = [digest(contents[0]), digest(b"something else"), digest(contents[2])]
    data = b"".join(contents)
    sinks, splitter = split(contents, cut(data, [3, 9, 15]), digests)
    assert sinks.data == contents, "every part is still written out"
    with pytest.raises(RefusedContent) as info:
        splitter.finish()
    assert info.value.reason == "layer-digest"
    assert digests[1][:19] in str(info.value)
    assert digests[0][:19] not in str(info.value)


def test_every_wrong_digest_is_named() -> None:
    contents = [b"a", b"", b"c"]
    digests = [digest(b"x"), digest(b"y"), digest(b"c")]
    _, splitter = split(contents, [b"ac"], digests)
    with pytest.raises(RefusedContent, match="2 part"):
        splitter.finish()


@given(contents=st.lists(st.binary(min_size=1, max_size=50), min_size=1, max_size=4),
       extra=st.binary(min_size=1, max_size=20),
       points=st.lists(st.integers(min_value=0, max_value=250), max_size=5))
def test_too_many_bytes_are_malformed(contents: list[bytes], extra: bytes,
                                      points: list[int]) -> None:
    with pytest.raises(MalformedBundle) as info:
        split(contents, cut(b"".join(contents) + extra, points))
    assert info.value.reason == "bad-image"


@given(contents=st.lists(st.binary(min_size=1, max_size=50), min_size=1, max_size=4),
       short=st.integers(min_value=1, max_value=50))
def test_too_few_bytes_are_malformed_at_finish(contents: list[bytes], short: int) -> None:
    data = b"".join(contents)
    _, splitter = split(contents, [data[: max(0, len(data) - short)]])
    with pytest.raises(MalformedBundle) as info:
        splitter.finish()
    assert info.value.reason == "bad-image"


def test_too_few_bytes_wins_over_a_wrong_digest() -> None:
    contents = [b"abc", b"defg"]
    _, splitter = split(contents, [b"abcde"], [digest(b"no"), digest(contents[1])])
    with pytest.raises(MalformedBundle):
        splitter.finish()


# --- ImagePayload metadata ---

D = [digest(bytes([i])) for i in range(4)]
FACTS = ImageFacts(ref="app/web:1", image_id=digest(b"config"), diff_ids=[D[0], D[1], D[2]])


def meta(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"image": FACTS.to_meta(), "config_size": 100,
                            "layers": [{"diff_id": D[1], "size": 50},
                                       {"diff_id": D[2], "size": 0}]}
    return {**base, **over}


def test_payload_round_trip() -> None:
    payload = ImagePayload(FACTS, 100, [Part(D[1], 50), Part(D[2], 0)])
    assert ImagePayload.from_meta(payload.to_meta(), 150) == payload
    assert payload.parts() == [Part(FACTS.image_id, 100), Part(D[1], 50), Part(D[2], 0)]
    assert ImagePayload.from_meta(meta(layers=[]), 100).layers == []
    assert ImagePayload.from_meta(meta(config_size=MAX_CONFIG, layers=[]),
                                  MAX_CONFIG).config_size == MAX_CONFIG


@pytest.mark.parametrize(("m", "raw_length"), [
    (meta(layers=[{"diff_id": D[3], "size": 50}]), 150),  # not one of the image's layers
    (meta(layers=[{"diff_id": FACTS.image_id, "size": 50}]), 150),  # the config, as a layer
    (meta(), 149),
    (meta(), 151),
    (meta(), 0),
    (meta(config_size=0, layers=[]), 0),
    (meta(config_size=-1), 49),
    (meta(config_size=MAX_CONFIG + 1, layers=[]), MAX_CONFIG + 1),
    (meta(config_size="100"), 150),
    (meta(config_size=100.0), 150),
    ({k: v for k, v in meta().items() if k != "config_size"}, 150),
    (meta(layers={"diff_id": D[1], "size": 50}), 150),
    ({k: v for k, v in meta().items() if k != "layers"}, 100),
    (meta(layers=[{"diff_id": D[1]}]), 100),
    (meta(layers=[{"diff_id": D[1], "size": -1}]), 99),
    (meta(layers=[{"diff_id": D[1], "size": "50"}]), 150),
    (meta(layers=[{"diff_id": "sha256:nope", "size": 50}]), 150),
    (meta(layers=[[D[1], 50]]), 150),
])
def test_bad_payload_meta_is_malformed(m: dict[str, Any], raw_length: int) -> None:
    with pytest.raises(MalformedBundle) as info:
        ImagePayload.from_meta(m, raw_length)
    assert info.value.reason == "bad-image"


@pytest.mark.parametrize("image", [None, {}, {**FACTS.to_meta(), "image_id": "x"}])
def test_bad_image_facts_in_payload_meta(image: Any) -> None:
    with pytest.raises(MalformedBundle) as info:
        ImagePayload.from_meta(meta(image=image), 150)
    assert info.value.reason == "bad-release"


# --- one trip through the codec: frames per part, split back on the other side ---

def test_parts_through_a_signed_bundle(tmp_path: Path) -> None:
    seed = os.urandom(32)
    config = b'{"rootfs": {"diff_ids": []}}' * 10
    layers = [os.urandom(200_000), b"", b"z" * 300_000]
    facts = ImageFacts("app:1", digest(config), [digest(x) for x in layers])
    payload = ImagePayload(facts, len(config), [Part(digest(x), len(x)) for x in layers])

    def fill(w: PartWriter) -> dict[str, Any]:
        for data in (config, *layers):
            w.copy_from(io.BytesIO(data))
            w.end_frame()
        return payload.to_meta()

    now = time.time()
    header = Header(id=new_id(), kind="image", src="earth", dst="mars", created=now,
                    expires=now + 60)
    path = tmp_path / "image.opb"
    final = pack_parts(path, header, fill, seed)
    assert path.stat().st_size < len(config) + sum(map(len, layers)) - 250_000  # compressed
    got = ImagePayload.from_meta(final.meta, final.payload.raw_length)
    assert got == payload
    sinks = Sinks()
    splitter = PartSplitter(got.parts(), sinks)
    read_payload(path, {"earth": public_key(seed)}, Limits(), splitter.feed)
    splitter.finish()
    assert sinks.data == [config, *layers]

    # a flipped payload byte never reaches a part unnoticed: the bundle's sha256 fails
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises((IntegrityError, MalformedBundle)):
        read_payload(path, {"earth": public_key(seed)}, Limits(),
                     PartSplitter(got.parts(), Sinks()).feed)


# --- ChunkReader ---

@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=64), max_size=12),
       sizes=st.lists(st.integers(min_value=-1, max_value=100), max_size=20))
def test_chunk_reader_reproduces_the_stream(chunks: list[bytes], sizes: list[int]) -> None:
    stream = b"".join(chunks)
    reader = ChunkReader(iter(chunks))
    out, pos = [], 0
    for n in sizes:
        got = reader.read(n)
        want = stream[pos:] if n < 0 else stream[pos:pos + n]
        assert got == want, f"read({n}) at {pos}"
        out.append(got)
        pos += len(got)
    out.append(reader.read())
    assert b"".join(out) == stream
    assert reader.read(10) == b"" and reader.read() == b""


def test_chunk_reader_from_a_generator_with_empty_chunks() -> None:
    def gen() -> Any:
        yield b""
        yield b"abc"
        yield b""
        yield b""
        yield b"defgh"
        yield b""

    reader = ChunkReader(gen())
    assert reader.read(0) == b""
    assert reader.read(2) == b"ab"
    assert reader.read(4) == b"cdef"
    assert reader.read(100) == b"gh"
    assert reader.read(1) == b""


@settings(max_examples=30, deadline=None)
@given(points=st.lists(st.integers(min_value=0, max_value=40_000), max_size=30))
def test_a_tar_streamed_through_a_chunk_reader(points: list[int]) -> None:
    files = {"manifest.json": b"[]", "blobs/sha256/a": os.urandom(5000), "empty": b"",
             "blobs/sha256/b": b"b" * 20_000}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    got = {}
    reader: Any = ChunkReader(cut(buf.getvalue(), points))
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            f = tar.extractfile(member)
            assert f is not None
            got[member.name] = f.read()
    assert got == files
