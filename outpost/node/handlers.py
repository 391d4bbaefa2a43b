"""Application handlers: turn a verified bundle into files, staged then renamed.

A handler's `prepare` streams the payload into hidden `.part` files and returns the
renames that make it visible. The receiver records those renames with the bundle's id
before running them, so a crash in between is finished on restart and nothing is
delivered twice.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from ..codec import Header, read_payload
from ..errors import MalformedBundle
from .context import Node

Renames = list[tuple[str, str]]


class Handler(Protocol):
    def prepare(self, node: Node, header: Header, path: Path) -> Renames: ...


class Staging(Protocol):
    """Where a handler that streams takes a payload as it arrives (node/stream.py): raw
    bytes, not yet verified; `finish` once they are, `abort` if they are not."""

    def write(self, raw: bytes) -> None: ...
    def finish(self) -> Renames: ...
    def abort(self) -> None: ...


class StagingFile:
    """A payload staged in a hidden `.part` file, fsynced when finished."""

    def __init__(self, part: Path, final: Path) -> None:
        part.parent.mkdir(parents=True, exist_ok=True)
        self.part, self.final = part, final
        self._out = open(part, "wb")  # noqa: SIM115 - closed by finish or abort

    def write(self, raw: bytes) -> None:
        self._out.write(raw)

    def finish(self) -> Renames:
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
        return [(str(self.part), str(self.final))]

    def abort(self) -> None:
        self._out.close()
        self.part.unlink(missing_ok=True)


MAX_NAME_BYTES = 240  # leaves room for a ".<n>" suffix within a filesystem's 255 bytes


def safe_name(name: object, fallback: str) -> str:
    """A plain file name from a peer's meta: no directories, no hidden or reserved names,
    no control characters (a NUL would break every path call); one longer than
    MAX_NAME_BYTES bytes of UTF-8 (filesystems count bytes, not characters) is shortened."""
    if not isinstance(name, str):
        return fallback
    base = os.path.basename(name.replace("\\", "/")).strip()
    if not base or base.startswith(".") or base.endswith(".part") or base in ("..",):
        return fallback
    if any(ord(c) < 32 or ord(c) == 127 for c in base):
        return fallback
    try:
        encoded = base.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return fallback
    return base if len(encoded) <= MAX_NAME_BYTES else shorten(base, MAX_NAME_BYTES)


def shorten(name: str, limit: int) -> str:
    """`name` cut to `limit` bytes of UTF-8 at a character boundary, its extension kept:
    'a-very-long-report.pdf' -> 'a-very-lo….pdf'."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext.encode()) > 16:
        stem, ext = name, ""
    tail = ("…" + (f".{ext}" if ext else "")).encode()
    head = stem.encode()[: limit - len(tail)].decode("utf-8", errors="ignore")
    return head + tail.decode()


def stream_to_part(node: Node, path: Path, part: Path) -> Header:
    """Verify the bundle at `path` while writing its payload to `part` (fsynced)."""
    part.parent.mkdir(parents=True, exist_ok=True)
    with open(part, "wb") as out:
        try:
            header = read_payload(path, node.state.keyring(), node.limits, out.write)
            out.flush()
            os.fsync(out.fileno())
        except BaseException:
            out.close()
            part.unlink(missing_ok=True)
            raise
    return header


class FileHandler:
    """`outpost-node send`: the payload lands in received/<src>/<name>."""

    def prepare(self, node: Node, header: Header, path: Path) -> Renames:
        part, final = self._places(node, header)
        stream_to_part(node, path, part)
        return [(str(part), str(final))]

    def open_stream(self, node: Node, header: Header) -> Staging:
        return StagingFile(*self._places(node, header))

    @staticmethod
    def _places(node: Node, header: Header) -> tuple[Path, Path]:
        name = safe_name(header.meta.get("name"), header.id)
        folder = node.home.received / header.src
        # the part's name is short, whatever the name: see MAX_NAME_BYTES
        return folder / f".{header.id}.part", folder / name


def ack_lists(header: Header) -> tuple[list[str], list[str], list[str]]:
    """(ids acknowledged, ids of bundles the peer lost and wants again, ids it rebuilt
    from FEC repairs) of an ack."""
    return (_ids(header.meta.get("ids")), _ids(header.meta.get("lost", [])),
            _ids(header.meta.get("recovered", [])))


def _ids(value: object) -> list[str]:
    if not isinstance(value, list) or len(value) > 10_000 or not all(
            isinstance(i, str) and len(i) <= 100 for i in value):
        raise MalformedBundle("ack without a list of ids", reason="bad-ack")
    return [str(i) for i in value]


def default_handlers() -> dict[str, Handler]:
    return {"file": FileHandler()}
