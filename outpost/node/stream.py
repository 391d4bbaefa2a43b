"""One pass on the receiving side: decode a reassembly while its fragments arrive.

Fragments are made durable in the reassembly file as they come, in any order. Whenever
the part of it that is complete from its first byte grows, the new bytes are read back
(from the page cache: they were just written) and pushed through the bundle's head check,
its payload hash and zstd into the handler's staging file. When the last fragment lands,
only the tail is left to decode, not the whole bundle again.

A stream is only a head start: the reassembly file stays the truth. Any problem (a head
that does not verify, bad zstd, a handler that does not stream) ends the stream quietly,
and the whole bundle is then handled as before, which finds the problem again and
quarantines it with its reason. A restart forgets the streams; they start again from the
first byte. At most MAX_STREAMS run at once, each holding a zstd window.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from ..codec import Header, PayloadDecoder, open_verified
from ..codec.wire import PREFIX, SIG_LEN
from ..errors import BundleError
from .context import Node
from .handlers import Handler, Renames, Staging

MAX_STREAMS = 4
READ = 1024 * 1024


class Stream:
    def __init__(self, path: Path, src: str, parent: str) -> None:
        self.path, self.src, self.parent = path, src, parent
        self.pos = 0  # bytes of the reassembly decoded so far
        self.header: Header | None = None
        self.staging: Staging | None = None
        self.decoder: PayloadDecoder | None = None
        self.failed = False

    def advance(self, upto: int, node: Node, handlers: dict[str, Handler]) -> None:
        """Decode the reassembly up to byte `upto` (all of it before is present)."""
        if self.failed or upto <= self.pos:
            return
        try:
            with open(self.path, "rb") as f:
                if self.header is None and not self._start(f, upto, node, handlers):
                    return
                f.seek(self.pos)
                while self.pos < upto:
                    data = f.read(min(READ, upto - self.pos))
                    if not data:
                        break
                    assert self.decoder is not None
                    self.decoder.feed(data)
                    self.pos += len(data)
        except (BundleError, OSError):
            self.abort()

    def _start(self, f: BinaryIO, upto: int, node: Node, handlers: dict[str, Handler]) -> bool:
        """Check the head once it is here and open the handler's staging; False to wait."""
        prefix = f.read(PREFIX.size)
        if len(prefix) < PREFIX.size or upto < PREFIX.size + PREFIX.unpack(prefix)[1] + SIG_LEN:
            return False
        f.seek(0)
        header = open_verified(f, node.state.keyring(), node.limits)
        handler = handlers.get(header.kind)
        open_stream = getattr(handler, "open_stream", None)
        if (header.id, header.src) != (self.parent, self.src) or open_stream is None:
            self.failed = True
            return False
        self.header, self.pos = header, f.tell()
        self.staging = open_stream(node, header)
        self.decoder = PayloadDecoder(header.payload, self.staging.write)
        return True

    def result(self, total: int) -> Renames | None:
        """The staged delivery, once the whole reassembly was decoded and verified."""
        if self.failed or self.decoder is None or self.staging is None or self.pos != total:
            self.abort()
            return None
        try:
            self.decoder.finish()
        except BundleError:
            self.abort()
            return None
        renames, self.staging = self.staging.finish(), None
        return renames

    def abort(self) -> None:
        self.failed = True
        if self.staging is not None:
            self.staging.abort()
            self.staging = None


def contiguous(ranges: list[tuple[int, int]]) -> int:
    """How far (offset, length) ranges sorted by offset cover a file from its first byte."""
    end = 0
    for offset, length in ranges:
        if offset > end:
            break
        end = max(end, offset + length)
    return end

