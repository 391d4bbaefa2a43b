"""Forward error correction: repair fragments so a lossy link needs no resend round.

A fragmented message is cut into blocks of one size; consecutive blocks form groups of k,
and each group gets m repair blocks (Reed-Solomon over GF(2^8), by zfec, Tahoe-LAFS's
erasure code): any k of a group's k + m blocks rebuild it. m is the least number that
rebuilds a group with probability `target` when each block is lost with probability
`loss`, so overhead follows the link. A message smaller than a block is sent whole, with
m copies. Resends still cover what a group could not rebuild.

Units are numbered in the order they are sent: a group's data blocks, then its repairs,
then the next group, so a repair arrives soon after the blocks it may stand in for.

Pure: the layout is arithmetic, and encode/decode work on bytes in memory (a group is
bounded by `MAX_GROUP_BYTES`, never a whole message).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from math import comb

from ..codec.header import MAX_GROUP_BYTES, MAX_SHARES

MAX_K = 64
MIN_BLOCK = 16 * 1024  # below this, smaller blocks cost more in headers than they save
TARGET_BLOCKS = 16  # a message of one fragment is cut in this many blocks for FEC


@dataclass(frozen=True)
class Group:
    """Data blocks `first`..`first + k - 1` (bytes from `start`, `block` each, the last one
    cut short at the message's end) and repair blocks `first + k`..`first + k + m - 1`."""

    first: int
    start: int
    k: int
    m: int

    @property
    def end_index(self) -> int:
        return self.first + self.k + self.m


@dataclass(frozen=True)
class Layout:
    """How one message crosses: `block`-sized units in `groups`, or (no groups) whole with
    `copies` extra copies; plain fragments when both are empty."""

    block: int
    groups: tuple[Group, ...] = ()
    copies: int = 0

    def group_of(self, index: int) -> Group | None:
        for g in self.groups:
            if g.first <= index < g.end_index:
                return g
        return None

    def is_repair(self, index: int) -> bool:
        g = self.group_of(index)
        return g is not None and index >= g.first + g.k

    def to_meta(self) -> dict[str, object]:
        return {"block": self.block, "copies": self.copies,
                "groups": [[g.first, g.start, g.k, g.m] for g in self.groups]}

    def tag(self) -> str:
        """A short name of this layout: units of equal layouts are the same bytes."""
        text = json.dumps(self.to_meta(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @classmethod
    def from_meta(cls, meta: object) -> Layout | None:
        if not isinstance(meta, dict):
            return None
        groups = tuple(Group(*g) for g in meta.get("groups", []))
        return cls(int(meta["block"]), groups, int(meta.get("copies", 0)))


def rebuild_chance(k: int, m: int, loss: float) -> float:
    """Probability that at least k of k + m blocks arrive, each lost with `loss`."""
    n, keep = k + m, 1.0 - loss
    return sum(comb(n, i) * keep**i * loss**(n - i) for i in range(k, n + 1))


def repair_count(k: int, loss: float, target: float, max_ratio: float = 1.0) -> int:
    """The fewest repairs for k data blocks to rebuild with probability `target`."""
    if loss <= 0 or k < 1:
        return 0
    most = min(MAX_SHARES - k, max(1, int(k * max_ratio)))
    m = 0
    while m < most and rebuild_chance(k, m, loss) < target:
        m += 1
    return m


def plan(size: int, frag_size: int, loss: float, target: float,
         max_ratio: float = 1.0) -> Layout | None:
    """The FEC layout of a message of `size` bytes, or None where plain fragments do."""
    if loss <= 0:
        return None
    if size <= min(frag_size, MIN_BLOCK):
        copies = repair_count(1, loss, target, max_ratio=max(max_ratio, 2.0))
        return Layout(block=size, copies=copies) if copies else None
    block = min(frag_size, max(MIN_BLOCK, -(-size // TARGET_BLOCKS)))
    count = -(-size // block)
    per_group = min(MAX_K, MAX_GROUP_BYTES // block)
    if per_group < 4:  # fragments so big that too few fit a group in memory: none
        return None
    groups, first, done = [], 0, 0
    n_groups = -(-count // per_group)
    for g in range(n_groups):
        k = count // n_groups + (1 if g < count % n_groups else 0)
        m = repair_count(k, loss, target, max_ratio)
        groups.append(Group(first, done * block, k, m))
        first, done = first + k + m, done + k
    if not any(g.m for g in groups):
        return None
    return Layout(block=block, groups=tuple(groups))


def _padded(data: bytes, block: int) -> bytes:
    return data if len(data) == block else data + b"\0" * (block - len(data))


def encode(data: Sequence[bytes], m: int, block: int) -> list[bytes]:
    """The m repair blocks of a group's data blocks (the last may be short)."""
    import zfec  # a C extension, loaded only by nodes that send or rebuild with FEC

    k = len(data)
    blocks = tuple(_padded(d, block) for d in data)
    return [bytes(b) for b in zfec.Encoder(k, k + m).encode(blocks, tuple(range(k, k + m)))]


def decode(have: dict[int, bytes], k: int, m: int, block: int) -> list[bytes]:
    """A group's k data blocks (padded to `block`) from any k of its blocks, keyed by their
    number within the group (0..k-1 data, k..k+m-1 repair)."""
    import zfec

    if len(have) < k:
        raise ValueError(f"{len(have)} blocks cannot rebuild a group of {k}")
    nums = tuple(sorted(have)[:k])
    blocks = tuple(_padded(have[i], block) for i in nums)
    return [bytes(b) for b in zfec.Decoder(k, k + m).decode(blocks, nums)]


def missing_blocks(ranges: Sequence[tuple[int, int]], group: Group, block: int,
                   total: int) -> list[int]:
    """Data blocks of `group` (numbers within it) not wholly covered by the (offset,
    length) ranges received, sorted by offset."""
    out = []
    for i in range(group.k):
        lo = group.start + i * block
        hi = min(lo + block, total)
        if not _covers(ranges, lo, hi):
            out.append(i)
    return out


def _covers(ranges: Sequence[tuple[int, int]], lo: int, hi: int) -> bool:
    for offset, length in ranges:
        if offset > lo:
            return False
        lo = max(lo, offset + length)
        if lo >= hi:
            return True
    return lo >= hi
