"""Bundle bytes on the wire: magic, header, signature, payload (pure: readers in, data out).

    "OPB1" | header length (u32 BE) | header (msgpack) | Ed25519 signature (64) | payload

The signature covers everything before it; the header carries the payload's length and
sha256, so it covers the payload too. See docs/bundle-format.md.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO, cast

import nacl.exceptions
import nacl.signing
import zstandard

from ..errors import (
    BadSignature,
    BundleError,
    IntegrityError,
    LimitExceeded,
    MalformedBundle,
    TruncatedBundle,
    UnknownKey,
)
from .header import Header, Limits, Payload, decode_header, encode_header

MAGIC = b"OPB1"
PREFIX = struct.Struct(">4sI")
SIG_LEN = 64
CHUNK = 1024 * 1024

Keyring = Mapping[str, bytes]


def head_bytes(header: Header, seed: bytes) -> bytes:
    """Magic, length, header and signature: everything that precedes the payload."""
    raw = encode_header(header)
    signed = PREFIX.pack(MAGIC, len(raw)) + raw
    return signed + nacl.signing.SigningKey(seed).sign(signed).signature


def public_key(seed: bytes) -> bytes:
    key: bytes = nacl.signing.SigningKey(seed).verify_key.encode()
    return key


def read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TruncatedBundle(f"file ends inside the {what} ({len(data)} of {n} bytes)")
    return data


def read_head(f: BinaryIO, limits: Limits) -> tuple[Header, bytes, bytes]:
    """Parse the head without checking the signature: (header, signed bytes, signature)."""
    prefix = f.read(PREFIX.size)
    if prefix[: len(MAGIC)] != MAGIC[: len(prefix)]:
        raise MalformedBundle("not an Outpost bundle (bad magic)", reason="bad-magic")
    if len(prefix) < len(MAGIC):
        raise TruncatedBundle("file ends inside the magic")
    if len(prefix) < PREFIX.size:
        raise TruncatedBundle("file ends inside the header length")
    _, length = PREFIX.unpack(prefix)
    if length > limits.max_header:
        raise LimitExceeded(f"header declares {length} bytes, limit {limits.max_header}",
                            reason="header-too-large")
    raw = read_exact(f, length, "header")
    header = decode_header(raw, limits)
    signature = read_exact(f, SIG_LEN, "signature")
    return header, prefix + raw, signature


def verify_signature(header: Header, signed: bytes, signature: bytes, keyring: Keyring) -> None:
    key = keyring.get(header.src)
    if key is None:
        raise UnknownKey(f"signed as {header.src!r}, a node we do not trust")
    try:
        nacl.signing.VerifyKey(key).verify(signed, signature)
    except nacl.exceptions.BadSignatureError:
        raise BadSignature(f"signature of bundle {header.id} does not verify with "
                           f"{header.src}'s key") from None


def open_verified(f: BinaryIO, keyring: Keyring, limits: Limits) -> Header:
    """Read the head and check its signature; the payload is next in `f`."""
    header, signed, signature = read_head(f, limits)
    verify_signature(header, signed, signature, keyring)
    return header


class _HashedSource:
    """Reads exactly `length` payload bytes from `f`, hashing them; short reads are truncation."""

    def __init__(self, f: BinaryIO, length: int) -> None:
        self.f, self.left, self.sha = f, length, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        if n == 0:
            return b""
        data = self.f.read(n)
        if not data:
            raise TruncatedBundle(f"file ends {self.left} bytes before the payload does")
        self.left -= len(data)
        self.sha.update(data)
        return data

    def finish(self, payload: Payload, f: BinaryIO) -> None:
        while self.left:
            self.read(CHUNK)
        if f.read(1):
            raise MalformedBundle("bytes after the end of the payload", reason="trailing-bytes")
        if self.sha.digest() != payload.sha256:
            raise IntegrityError("payload sha256 differs from the signed header")


def iter_payload(f: BinaryIO, header: Header, chunk: int = CHUNK) -> Iterator[bytes]:
    """Raw payload chunks (decompressed), at most `chunk` bytes each.

    The last step checks length and sha256 and raises if they differ, so a consumer must
    stage what it receives and act only once the iterator is exhausted without error.
    """
    p = header.payload
    source = _HashedSource(f, p.length)
    produced = 0
    if p.codec == "none":
        while data := source.read(chunk):
            produced += len(data)
            yield data
    else:
        try:
            yield from _unzstd(source, p, chunk)
        except BundleError:
            source.finish(p, f)  # corruption in transit explains it better than a bomb
            raise
        produced = p.raw_length
    source.finish(p, f)
    if produced != p.raw_length:
        raise IntegrityError("payload length differs from the signed header")


def _unzstd(source: _HashedSource, p: Payload, chunk: int) -> Iterator[bytes]:
    produced = 0
    reader = zstandard.ZstdDecompressor().stream_reader(
        cast(BinaryIO, source), read_size=chunk, read_across_frames=True
    )
    while True:
        try:
            data = reader.read(chunk)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"payload is not valid zstd: {e}", reason="bad-zstd") from None
        if not data:
            break
        produced = _no_bomb(produced + len(data), p)
        yield data
    _whole_length(produced, p)


def _no_bomb(produced: int, p: Payload) -> int:
    if produced > p.raw_length:
        raise LimitExceeded(f"payload decompresses past its declared {p.raw_length} bytes "
                            "(zstd bomb?)", reason="zstd-bomb")
    return produced


def _whole_length(produced: int, p: Payload) -> None:
    if produced != p.raw_length:
        raise IntegrityError(f"payload decompresses to {produced} bytes, header says "
                             f"{p.raw_length}")


class PayloadDecoder:
    """Wire payload bytes in, raw bytes out to `sink`, pushed as they arrive (the twin of
    iter_payload for a payload that comes piece by piece, fragments in order, say).
    `finish()` checks length and sha256 against the signed header; until then the sink's
    bytes are unverified and must be staged. Memory is bounded: zstd writes its output to
    the sink in pieces of CHUNK, and decompressing past `raw_length` stops at once."""

    def __init__(self, payload: Payload, sink: Callable[[bytes], object]) -> None:
        self.payload, self._sink = payload, sink
        self.sha, self.length, self.produced = hashlib.sha256(), 0, 0
        self._writer: Any = None
        if payload.codec != "none":
            self._writer = zstandard.ZstdDecompressor().stream_writer(
                cast(BinaryIO, _Out(self._emit)), write_size=CHUNK, write_return_read=True)

    def feed(self, data: bytes) -> None:
        if self.length + len(data) > self.payload.length:
            raise MalformedBundle("bytes after the end of the payload", reason="trailing-bytes")
        self.length += len(data)
        self.sha.update(data)
        if self._writer is None:
            self._emit(data)
            return
        try:
            self._writer.write(data)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"payload is not valid zstd: {e}", reason="bad-zstd") from None

    def _emit(self, raw: bytes) -> None:
        self.produced = _no_bomb(self.produced + len(raw), self.payload)
        self._sink(raw)

    def finish(self) -> None:
        if self.length != self.payload.length:
            raise TruncatedBundle(f"payload ends {self.payload.length - self.length} bytes "
                                  "early")
        if self.sha.digest() != self.payload.sha256:
            raise IntegrityError("payload sha256 differs from the signed header")
        _whole_length(self.produced, self.payload)


class _Out:
    def __init__(self, emit: Callable[[bytes], None]) -> None:
        self.write_to = emit

    def write(self, data: bytes) -> int:
        self.write_to(bytes(data))
        return len(data)


class PayloadEncoder:
    """Raw bytes in, wire payload bytes out; tracks length and sha256 for the header.

    `end_frame()` closes the current zstd frame so each part (for example each image
    layer) can be decompressed and checked on its own.
    """

    def __init__(self, codec: str = "zstd", level: int = 3) -> None:
        self.codec, self.level = codec, level
        self.sha = hashlib.sha256()
        self.length = self.raw_length = 0
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._obj: zstandard.ZstdCompressionObj | None = None

    def write(self, raw: bytes) -> bytes:
        self.raw_length += len(raw)
        if self.codec == "none":
            return self._out(raw)
        if self._obj is None:
            self._obj = self._compressor.compressobj()
        return self._out(self._obj.compress(raw))

    def end_frame(self) -> bytes:
        if self._obj is None:
            return b""
        data = self._obj.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
        self._obj = None
        return self._out(data)

    def packed(self, data: bytes, raw_length: int) -> bytes:
        """Take bytes compressed before (whole frames of this codec, standing for
        `raw_length` raw bytes) as they are, between frames."""
        if self._obj is not None:
            raise ValueError("a frame is open: end it before adding packed frames")
        self.raw_length += raw_length
        return self._out(data)

    def payload(self) -> Payload:
        return Payload(codec=self.codec, length=self.length, raw_length=self.raw_length,
                       sha256=self.sha.digest())

    def _out(self, data: bytes) -> bytes:
        self.length += len(data)
        self.sha.update(data)
        return data
