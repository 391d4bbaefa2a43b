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


def safe_name(name: object, fallback: str) -> str:
    """A plain file name from a peer's meta: no directories, no hidden or reserved names."""
    if not isinstance(name, str):
        return fallback
    base = os.path.basename(name.replace("\\", "/")).strip()
    if not base or base.startswith(".") or base.endswith(".part") or len(base) > 200:
        return fallback
    return base


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
        name = safe_name(header.meta.get("name"), header.id)
        folder = node.home.received / header.src
        final = folder / name
        if final.exists():
            final = folder / f"{name}.{header.id[:8]}"
        part = folder / f".{final.name}.{header.id}.part"
        stream_to_part(node, path, part)
        return [(str(part), str(final))]


def ack_ids(header: Header) -> list[str]:
    ids = header.meta.get("ids")
    if not isinstance(ids, list) or len(ids) > 10_000 or not all(
            isinstance(i, str) and len(i) <= 100 for i in ids):
        raise MalformedBundle("ack without a list of ids", reason="bad-ack")
    return ids


def default_handlers() -> dict[str, Handler]:
    return {"file": FileHandler()}
