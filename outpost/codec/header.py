"""The bundle header: fields, validation and msgpack encoding (pure, no I/O)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from ..errors import LimitExceeded, MalformedBundle

BULK, NORMAL, EXPEDITED = 0, 1, 2
PRIORITY_NAMES = {BULK: "bulk", NORMAL: "normal", EXPEDITED: "expedited"}
CODECS = ("zstd", "none")
SHA256_LEN = 32
# \Z, not $: `$` also matches before a trailing newline, which would let "id\n" through.
_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,79}\Z")
_NAME = re.compile(r"^[0-9A-Za-z_-]{1,64}\Z")
_KIND = re.compile(r"^[a-z][a-z0-9._-]{0,63}\Z")


def valid_node_name(name: object) -> bool:
    """Node names as bundles carry them in `src` and `dst`: the one rule for them."""
    return isinstance(name, str) and _NAME.match(name) is not None


@dataclass(frozen=True)
class Limits:
    """What a reader accepts; everything a peer declares is checked against these."""

    max_header: int = 64 * 1024
    max_depth: int = 8
    max_raw: int = 64 * 1024**3
    max_fragments: int = 1_000_000


@dataclass(frozen=True)
class Repair:
    """A repair fragment's place in its FEC group (delivery/fec.py): the group's data
    blocks are fragments `first`..`first + k - 1` from the fragment's offset on, `block`
    bytes each; this is repair `j` (k <= j < k + m), as long as a block."""

    first: int
    k: int
    m: int
    j: int
    block: int


@dataclass(frozen=True)
class Fragment:
    parent: str
    index: int
    count: int
    offset: int
    total: int
    repair: Repair | None = None


@dataclass(frozen=True)
class Payload:
    codec: str = "none"
    length: int = 0
    raw_length: int = 0
    sha256: bytes = b"\0" * SHA256_LEN


@dataclass(frozen=True)
class Header:
    id: str
    kind: str
    src: str
    dst: str
    created: float
    expires: float
    priority: int = NORMAL
    reply_to: str | None = None
    fragment: Fragment | None = None
    payload: Payload = field(default_factory=Payload)
    meta: dict[str, Any] = field(default_factory=dict)

    def with_payload(self, payload: Payload) -> Header:
        return replace(self, payload=payload)


def new_id() -> str:
    return secrets.token_hex(16)


SHARED = "m"  # the first character of a shared bundle's id (new_id's are hex)


def new_shared_id() -> str:
    """The id of a bundle addressed to several peers at once (`dst` lists them)."""
    return SHARED + secrets.token_hex(16)[1:]


def recipients(dst: str) -> list[str]:
    """The peers a bundle is for: its `dst`, one name or several separated by commas."""
    return dst.split(",")


def to_wire(h: Header) -> dict[str, Any]:
    frag = None
    if h.fragment is not None:
        f = h.fragment
        frag = {"parent": f.parent, "index": f.index, "count": f.count,
                "offset": f.offset, "total": f.total}
        if f.repair is not None:
            r = f.repair
            frag["repair"] = {"first": r.first, "k": r.k, "m": r.m, "j": r.j,
                              "block": r.block}
    p = h.payload
    return {
        "id": h.id, "kind": h.kind, "src": h.src, "dst": h.dst,
        "created": float(h.created), "expires": float(h.expires),
        "priority": h.priority, "reply_to": h.reply_to, "fragment": frag,
        "payload": {"codec": p.codec, "length": p.length, "raw_length": p.raw_length,
                    "sha256": p.sha256},
        "meta": h.meta,
    }


def encode_header(h: Header) -> bytes:
    validate(h, Limits())
    data: bytes = msgpack.packb(to_wire(h), use_bin_type=True)
    decode_header(data, Limits())  # refuse to sign what every reader would refuse
    return data


def decode_header(raw: bytes, limits: Limits) -> Header:
    """Parse and validate header bytes from an untrusted source."""
    if len(raw) > limits.max_header:
        raise LimitExceeded(f"header is {len(raw)} bytes, limit {limits.max_header}",
                            reason="header-too-large")
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise MalformedBundle(f"header is not valid msgpack: {e}", reason="bad-header") from None
    if depth(obj) > limits.max_depth:
        raise LimitExceeded(f"header nests deeper than {limits.max_depth}",
                            reason="header-too-deep")
    h = from_wire(obj)
    validate(h, limits)
    return h


def depth(obj: Any) -> int:
    """Nesting depth of maps and arrays, computed without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in item)
    return deepest


def from_wire(obj: Any) -> Header:
    if not isinstance(obj, dict):
        raise MalformedBundle("header is not a map", reason="bad-header")
    try:
        p = obj["payload"]
        f = obj.get("fragment")
        return Header(
            id=_typed(obj["id"], str, "id"),
            kind=_typed(obj["kind"], str, "kind"),
            src=_typed(obj["src"], str, "src"),
            dst=_typed(obj["dst"], str, "dst"),
            created=_number(obj["created"], "created"),
            expires=_number(obj["expires"], "expires"),
            priority=_typed(obj.get("priority", NORMAL), int, "priority"),
            reply_to=_optional_str(obj.get("reply_to"), "reply_to"),
            fragment=None if f is None else _fragment(f),
            payload=Payload(
                codec=_typed(p["codec"], str, "payload.codec"),
                length=_typed(p["length"], int, "payload.length"),
                raw_length=_typed(p["raw_length"], int, "payload.raw_length"),
                sha256=_typed(p["sha256"], bytes, "payload.sha256"),
            ),
            meta=_typed(obj.get("meta", {}), dict, "meta"),
        )
    except (KeyError, TypeError) as e:
        raise MalformedBundle(f"header lacks a field or has the wrong shape: {e}",
                              reason="bad-header") from None


def _fragment(f: Any) -> Fragment:
    if not isinstance(f, dict):
        raise MalformedBundle("fragment is not a map", reason="bad-header")
    return Fragment(
        parent=_typed(f["parent"], str, "fragment.parent"),
        index=_typed(f["index"], int, "fragment.index"),
        count=_typed(f["count"], int, "fragment.count"),
        offset=_typed(f["offset"], int, "fragment.offset"),
        total=_typed(f["total"], int, "fragment.total"),
        repair=_repair(f["repair"]) if "repair" in f else None,
    )


def _repair(r: Any) -> Repair:
    if not isinstance(r, dict):
        raise MalformedBundle("fragment.repair is not a map", reason="bad-header")
    return Repair(*(_typed(r[name], int, f"fragment.repair.{name}")
                    for name in ("first", "k", "m", "j", "block")))


def _typed(value: Any, kind: type, name: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedBundle(f"header field {name} must be {kind.__name__}",
                              reason="bad-header")
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedBundle(f"header field {name} must be a number", reason="bad-header")
    return float(value)


def _optional_str(value: Any, name: str) -> str | None:
    return None if value is None else str(_typed(value, str, name))


def validate(h: Header, limits: Limits) -> None:
    """Field ranges; raise MalformedBundle or LimitExceeded with a reason."""
    def bad(msg: str) -> MalformedBundle:
        return MalformedBundle(msg, reason="bad-header")

    if not _ID.match(h.id):
        raise bad(f"bad id {h.id!r}")
    if h.reply_to is not None and not _ID.match(h.reply_to):
        raise bad(f"bad reply_to {h.reply_to!r}")
    if not _KIND.match(h.kind):
        raise bad(f"bad kind {h.kind!r}")
    for name in (h.src, *recipients(h.dst)):
        if not valid_node_name(name):
            raise bad(f"bad node name {name!r}")
    if h.priority not in PRIORITY_NAMES:
        raise bad(f"bad priority {h.priority}")
    if not h.expires >= h.created:
        raise bad("expires before it was created")
    _validate_payload(h.payload, limits)
    if h.fragment is not None:
        validate_fragment(h.fragment, h.payload.length, limits)


def _validate_payload(p: Payload, limits: Limits) -> None:
    if p.codec not in CODECS:
        raise MalformedBundle(f"unknown payload codec {p.codec!r}", reason="bad-header")
    if len(p.sha256) != SHA256_LEN:
        raise MalformedBundle("payload sha256 must be 32 bytes", reason="bad-header")
    if p.length < 0 or p.raw_length < 0:
        raise MalformedBundle("negative payload length", reason="bad-header")
    if p.raw_length > limits.max_raw or p.length > limits.max_raw:
        raise LimitExceeded(f"payload declares {p.raw_length} bytes, limit {limits.max_raw}",
                            reason="payload-too-large")
    if p.codec == "none" and p.length != p.raw_length:
        raise MalformedBundle("uncompressed payload with length != raw_length",
                              reason="bad-header")


def validate_fragment(f: Fragment, length: int, limits: Limits) -> None:
    if f.total > limits.max_raw:
        raise LimitExceeded(f"fragment claims a bundle of {f.total} bytes, limit {limits.max_raw}",
                            reason="absurd-fragment")
    if not 0 < f.count <= min(limits.max_fragments, max(f.total, 1)):
        raise LimitExceeded(f"fragment count {f.count} is absurd for {f.total} bytes",
                            reason="absurd-fragment")
    if not (0 <= f.index < f.count and f.offset >= 0 and f.offset + length <= f.total):
        raise MalformedBundle("fragment index or offset out of range", reason="bad-fragment")
    if not _ID.match(f.parent):
        raise MalformedBundle(f"bad fragment parent {f.parent!r}", reason="bad-fragment")
    if f.repair is not None:
        _validate_repair(f, f.repair, length)


MAX_SHARES = 256  # an FEC group's data and repair blocks together (GF(2^8))
MAX_GROUP_BYTES = 64 * 1024 * 1024  # an FEC group's data, held in memory to rebuild it


def _validate_repair(f: Fragment, r: Repair, length: int) -> None:
    """A repair fragment names a group that fits its bundle: every data block starts
    inside it, the group fits the field, and its own index is the one its number says."""
    ok = (r.k >= 1 and r.m >= 1 and r.k + r.m <= MAX_SHARES and r.k <= r.j < r.k + r.m
          and r.block == length > 0 and r.k * r.block <= MAX_GROUP_BYTES
          and r.first >= 0 and f.index == r.first + r.j
          and r.first + r.k + r.m <= f.count and f.offset + (r.k - 1) * r.block < f.total)
    if not ok:
        raise MalformedBundle("repair fragment names an impossible group", reason="bad-fragment")
