"""Bundles as files: pack, fragment, verify and inspect (the I/O edge of the codec)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import BundleError, IntegrityError
from ..fsutil import atomic_writer, open_regular
from .header import Fragment, Header, Limits, Payload
from .wire import CHUNK, Keyring, PayloadEncoder, head_bytes, iter_payload, open_verified

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

    def write(self, raw: bytes) -> None:
        self._out.write(self._enc.write(raw))
        if self._progress:
            self._progress(len(raw))

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
        self._out.write(self._enc.end_frame())


Fill = Callable[[PartWriter], dict[str, Any] | None]


def pack_parts(dest: Path, header: Header, fill: Fill, seed: bytes, *, codec: str = "zstd",
               level: int = 3, progress: Progress | None = None) -> Header:
    """Sign a bundle whose payload `fill` streams in; returns the final header.

    The payload goes to an unnamed temporary file first because the header, which precedes
    it, carries its length and sha256 (and whatever meta `fill` returns, learnt while
    streaming); the copy back is done by the kernel.
    """
    enc = PayloadEncoder(codec, level)
    with tempfile.TemporaryFile(dir=dest.parent) as tmp:
        extra = fill(PartWriter(enc, tmp, progress)) or {}
        tmp.write(enc.end_frame())
        final = replace(header, meta={**header.meta, **extra}, payload=enc.payload())
        tmp.flush()
        tmp.seek(0)
        with atomic_writer(dest) as out:
            out.write(head_bytes(final, seed))
            out.flush()
            _copy(tmp, out, enc.length)
    return final


def pack_file(dest: Path, header: Header, source: BinaryIO | None, seed: bytes, *,
              codec: str = "zstd", level: int = 3, progress: Progress | None = None) -> Header:
    """Stream `source` into a signed bundle at `dest` (atomically); returns the final header."""
    def fill(w: PartWriter) -> None:
        if source is not None:
            w.copy_from(source)

    return pack_parts(dest, header, fill, seed, codec=codec, level=level, progress=progress)


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


def write_fragment(dest: Path, parent_file: Path, frag: Header, seed: bytes) -> None:
    """Write fragment `frag` (payload: a slice of `parent_file`) to `dest` atomically."""
    assert frag.fragment is not None
    offset, length = frag.fragment.offset, frag.payload.length
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
