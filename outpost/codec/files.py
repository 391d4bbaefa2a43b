"""Bundles as files: pack, fragment, verify and inspect (the I/O edge of the codec)."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import BundleError, IntegrityError, LocalError
from ..fsutil import atomic_writer, open_regular
from .header import Fragment, Header, Limits, Payload
from .wire import (
    CHUNK,
    PREFIX,
    SIG_LEN,
    Keyring,
    PayloadEncoder,
    head_bytes,
    iter_payload,
    open_verified,
)

Progress = Callable[[int], None]


def pack_bytes(header: Header, data: bytes, seed: bytes, codec: str = "none",
               level: int = 3) -> bytes:
    """A whole small bundle in memory (acks, requests)."""
    enc = PayloadEncoder(codec, level)
    body = enc.write(data) + enc.end_frame()
    return head_bytes(header.with_payload(enc.payload()), seed) + body


class PartWriter:
    """What a `fill` function writes raw payload bytes to; `end_frame` closes a zstd frame so
    each part (an image layer, say) can be checked on its own when it is read back."""

    def __init__(self, enc: PayloadEncoder, out: BinaryIO, progress: Progress | None) -> None:
        self._enc, self._out, self._progress = enc, out, progress
        self._tee: BinaryIO | None = None

    @property
    def codec(self) -> str:
        return self._enc.codec

    def write(self, raw: bytes) -> None:
        self._emit(self._enc.write(raw))
        if self._progress:
            self._progress(len(raw))

    def capture(self, into: BinaryIO) -> None:
        """Also write the compressed bytes of the frame under way to `into` until
        `end_frame`: a part packed once, kept to be added as it is (`copy_packed`) to the
        next bundle that carries it."""
        self._tee = into

    def copy_packed(self, source: BinaryIO, raw_length: int) -> int:
        """Add whole frames packed before (`capture`) that stand for `raw_length` raw bytes;
        returns the compressed bytes added."""
        done = 0
        while data := source.read(CHUNK):
            self._out.write(self._enc.packed(data, 0))
            done += len(data)
        self._enc.packed(b"", raw_length)
        if self._progress:
            self._progress(raw_length)
        return done

    def _emit(self, data: bytes) -> None:
        self._out.write(data)
        if self._tee is not None:
            self._tee.write(data)

    def copy_from(self, source: BinaryIO, limit: int = -1) -> int:
        """Stream `source` (up to `limit` bytes) into the payload; returns bytes copied."""
        done = 0
        while limit < 0 or done < limit:
            raw = source.read(CHUNK if limit < 0 else min(CHUNK, limit - done))
            if not raw:
                break
            self.write(raw)
            done += len(raw)
        return done

    def end_frame(self) -> None:
        self._emit(self._enc.end_frame())
        self._tee = None


Fill = Callable[[PartWriter], dict[str, Any] | None]


def pack_spooled(dest: Path, header: Header, fill: Fill, seed: bytes, *, codec: str = "zstd",
                 level: int = 3, progress: Progress | None = None,
                 max_header: int = Limits.max_header) -> tuple[Header, int]:
    """Sign a bundle whose payload `fill` streams in, writing each byte once; returns the
    final header and the offset in `dest` where the bundle starts.

    The head precedes the payload but carries its length and sha256 (and whatever meta
    `fill` returns, learnt while streaming), so the payload is written first, after room
    for the largest head a peer accepts (`max_header`), and the head last, at the end of
    that room. The bytes before it were never written: a hole in a sparse file, no disk.
    A node's custody copies are kept so (the custody record holds the offset); a bundle
    file of its own is `pack_parts`'s.
    """
    room = PREFIX.size + max_header + SIG_LEN
    enc = PayloadEncoder(codec, level)
    with atomic_writer(dest) as out:
        out.seek(room)
        extra = fill(PartWriter(enc, out, progress)) or {}
        out.write(enc.end_frame())
        final = replace(header, meta={**header.meta, **extra}, payload=enc.payload())
        head = head_bytes(final, seed)
        if len(head) > room:
            raise LocalError(f"the bundle's header would be {len(head) - PREFIX.size - SIG_LEN}"
                             f" bytes, over the {max_header} a peer accepts (max_header): "
                             "send its contents as several messages")
        out.seek(room - len(head))
        out.write(head)
    return final, room - len(head)


def pack_parts(dest: Path, header: Header, fill: Fill, seed: bytes, *, codec: str = "zstd",
               level: int = 3, progress: Progress | None = None) -> Header:
    """A bundle file of its own (from its first byte) whose payload `fill` streams in:
    packed as `pack_spooled` does, then copied once, by the kernel, behind its head."""
    spool = dest.with_name(f".{dest.name}.{os.getpid()}.spool")
    try:
        final, start = pack_spooled(spool, header, fill, seed, codec=codec, level=level,
                                    progress=progress)
        with open(spool, "rb") as src, atomic_writer(dest) as out:
            src.seek(start)
            _copy(src, out, spool.stat().st_size - start)
    finally:
        spool.unlink(missing_ok=True)
    return final


def source_fill(source: BinaryIO | None) -> Fill:
    """The fill that streams `source` (None: an empty payload)."""
    def fill(w: PartWriter) -> None:
        if source is not None:
            w.copy_from(source)
    return fill


def pack_file(dest: Path, header: Header, source: BinaryIO | None, seed: bytes, *,
              codec: str = "zstd", level: int = 3, progress: Progress | None = None) -> Header:
    """Stream `source` into a signed bundle at `dest` (atomically); returns the final header."""
    return pack_parts(dest, header, source_fill(source), seed, codec=codec, level=level,
                      progress=progress)


def spooled_start(f: BinaryIO) -> int:
    """Where the bundle starts in a file `pack_spooled` wrote (0 for a plain bundle file),
    leaving `f` there: the room before it was never written and reads as zeros, and a
    bundle starts with its magic."""
    f.seek(0)
    offset = 0
    while chunk := f.read(CHUNK):
        rest = chunk.lstrip(b"\0")
        if rest:
            offset += len(chunk) - len(rest)
            break
        offset += len(chunk)
    f.seek(offset)
    return offset


def _copy(src: BinaryIO, dst: BinaryIO, length: int) -> None:
    """Copy `length` bytes from src's position to dst's, in the kernel where it can."""
    dst.flush()
    copied = 0
    try:
        while copied < length:
            n = os.copy_file_range(src.fileno(), dst.fileno(), length - copied)
            if n == 0:
                raise IntegrityError("payload temp file is shorter than what was written")
            copied += n
    except OSError:
        if copied:
            raise
        shutil.copyfileobj(src, dst, CHUNK)  # filesystems without copy_file_range


def fragment_count(total: int, size: int) -> int:
    return max(1, -(-total // size))


def fragment_header(parent: Header, index: int, total: int, size: int) -> Header:
    """The header of fragment `index` of a parent bundle file of `total` bytes cut in
    fragments of `size`."""
    offset = index * size
    return fragment_at(parent, index, fragment_count(total, size), offset,
                       min(size, total - offset), total)


def fragment_at(parent: Header, index: int, count: int, offset: int, length: int,
                total: int) -> Header:
    """The header of fragment `index`: bytes [offset, offset + length) of the parent. A
    fragment the link could not carry is cut again, so indexes go on past the first count:
    the receiver reassembles by byte range."""
    frag = Fragment(parent=parent.id, index=index, count=count, offset=offset, total=total)
    return replace(parent, id=f"{parent.id}.{index}", fragment=frag, meta={},
                   payload=Payload("none", length, length))


def write_fragment(dest: Path, parent_file: Path, frag: Header, seed: bytes,
                   start: int = 0) -> None:
    """Write fragment `frag` (payload: a slice of the bundle at `start` in `parent_file`)
    to `dest` atomically."""
    assert frag.fragment is not None
    offset, length = start + frag.fragment.offset, frag.payload.length
    sha = hashlib.sha256()
    # One read of the slice: the payload goes in behind a head of the same length (the
    # digest is fixed-size), hashed on the way; the real head is written over it after.
    draft = head_bytes(frag.with_payload(Payload("none", length, length)), seed)

    def sink(data: bytes) -> None:
        sha.update(data)
        out.write(data)

    with open(parent_file, "rb") as src, atomic_writer(dest) as out:
        out.seek(len(draft))
        _slice(src, offset, length, sink)
        final = head_bytes(frag.with_payload(Payload("none", length, length, sha.digest())),
                           seed)
        if len(final) != len(draft):
            raise IntegrityError("a fragment's head changed length with its digest")
        out.seek(0)
        out.write(final)


def write_block(dest: Path, frag: Header, data: bytes, seed: bytes) -> None:
    """Write a fragment whose payload is `data` (an FEC repair block) to `dest` atomically."""
    final = frag.with_payload(Payload("none", len(data), len(data),
                                      hashlib.sha256(data).digest()))
    with atomic_writer(dest) as out:
        out.write(head_bytes(final, seed))
        out.write(data)


def _slice(f: BinaryIO, offset: int, length: int, sink: Callable[[bytes], object]) -> None:
    f.seek(offset)
    while length > 0:
        data = f.read(min(CHUNK, length))
        if not data:
            raise IntegrityError("parent bundle is shorter than its fragments say")
        sink(data)
        length -= len(data)


def read_payload(path: Path, keyring: Keyring, limits: Limits,
                 sink: Callable[[bytes], object]) -> Header:
    """Verify the bundle at `path` and stream its raw payload into `sink`.

    Raises a BundleError at the first problem; the sink may have received data by then,
    so it must be a staging area that is discarded on error.
    """
    with open_regular(path) as f:
        header = open_verified(f, keyring, limits)
        for chunk in iter_payload(f, header):
            sink(chunk)
    return header


def verify_file(path: Path, keyring: Keyring, limits: Limits) -> Header:
    return read_payload(path, keyring, limits, lambda _chunk: None)


@dataclass(frozen=True)
class Inspection:
    path: Path
    size: int
    header: Header | None
    status: str  # ok | unknown-key | bad
    reason: str | None = None
    error: str | None = None


def inspect(path: Path, keyring: Keyring, limits: Limits, *, full: bool = False) -> Inspection:
    """What a person wants to know about a bundle file; never raises for a bad bundle.

    `full` also streams and checks the payload; otherwise only the signature is checked.
    """
    from .wire import read_head, verify_signature

    size = path.lstat().st_size
    header = None
    try:
        with open_regular(path) as f:
            header, signed, signature = read_head(f, limits)
            verify_signature(header, signed, signature, keyring)
            if full:
                for _ in iter_payload(f, header):
                    pass
    except BundleError as e:
        status = "unknown-key" if e.reason == "unknown-key" else "bad"
        return Inspection(path, size, header, status, e.reason, str(e))
    return Inspection(path, size, header, "ok")
