"""link-sim's state directory: in-flight files survive a kill -9.

    STATE/lock            flock'ed while a link-sim runs (one link-sim per state dir)
    STATE/origin.json     the contact plan's time origin: the first start, kept for ever
    STATE/a-b/ STATE/b-a/ one "lane" per direction:
        NNNNNNNNNNNN.json      sidecar: where the file goes, when, and what happens to it
        NNNNNNNNNNNN.data      the file as taken from the outbox (renamed, never modified)
        NNNNNNNNNNNN.corrupt   the copy to deliver when the link corrupts it

The order of operations makes every crash recoverable without losing or doubling a file:

    take:     sidecar "taking" -> rename outbox file to .data -> decide -> sidecar "flight"
              (-> duplicate: its own sidecar, then a fsync'ed copy of .data)
              (-> corruption: a fsync'ed patched copy, .corrupt; .data is never modified)
    deliver:  (corrupt: unlink .data) -> rename .data or .corrupt into the inbox -> unlink
              the sidecar

so on restart: a "taking" sidecar with its .data is re-decided; one without .data never
took the file (it is still in the outbox); a "flight" sidecar whose payload is gone was
already delivered. When the state dir and a home are on different filesystems, the renames
become copy + fsync + rename + unlink, and the sidecar remembers that the outbox copy may
still need deleting.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from outpost.fsutil import atomic_write_bytes, atomic_writer, fsync_path

from .model import Patch, Transfer, apply_patch

SIDE = ".json"
DATA = ".data"
CORRUPT = ".corrupt"
TAKING = "taking"
FLIGHT = "flight"
_CHUNK = 1024 * 1024
_SEQ_DIGITS = 12


class StateError(RuntimeError):
    """The state directory cannot be used (locked by another link-sim, unwritable)."""


class LostPayload(StateError):
    """An in-flight file was removed from the state directory behind link-sim's back."""


@dataclass
class Item:
    """One file (or one copy of a file) inside the link: the sidecar's content."""

    seq: int
    status: str  # TAKING until the link's decision is recorded, then FLIGHT
    direction: str  # "a->b" or "b->a"
    src_node: str
    dst_node: str
    name: str  # its name in the outbox
    source: str  # the outbox path it was taken from
    inbox: str  # where it is delivered
    size: int = 0
    move: str = "rename"  # "rename", "copy" (across filesystems) or "duplicate"
    taken_at: float = 0.0
    tx_start: float = 0.0
    tx_end: float = 0.0
    deliver_at: float = 0.0
    corrupt: list[list[int]] = field(default_factory=list)  # [[offset, xor mask], ...]
    duplicate: bool = False
    reordered: bool = False

    @property
    def patch(self) -> Patch:
        return tuple((int(o), int(m)) for o, m in self.corrupt)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Item:
        raw = json.loads(data)
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class StateDir:
    """The whole state directory: lock, origin, and one Lane per direction."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock: IO[bytes] | None = None

    def open(self) -> None:
        """Create the directory and take its lock; StateError if another link-sim has it."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = open(self.root / "lock", "ab")  # noqa: SIM115 - held until close()
        except OSError as e:
            raise StateError(f"cannot use state directory {self.root}: {e}") from None
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise StateError(
                f"another link-sim is using {self.root} (pass a different --state)"
            ) from None
        self._lock = lock

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    def origin(self, now: float) -> float:
        """The plan's time origin: read it, or make `now` the origin and persist it."""
        path = self.root / "origin.json"
        try:
            return float(json.loads(path.read_bytes())["origin"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StateError(f"{path} is unreadable ({e}); delete it to restart the plan") from e
        record = {"origin": now, "origin_utc": utc_text(now)}
        atomic_write_bytes(path, json.dumps(record, indent=1).encode() + b"\n")
        return now

    def lane(self, label: str) -> Lane:
        return Lane(self.root / label.replace("->", "-"))


class Lane:
    """The in-flight files of one direction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._next_seq = 1

    def prepare(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        # Every file counts, not only sidecars, so a new item never reuses a stray payload's name.
        seqs = [int(p.stem) for p in self.path.iterdir() if p.stem.isdigit()]
        self._next_seq = max(seqs, default=0) + 1

    def side_path(self, seq: int) -> Path:
        return self.path / f"{seq:0{_SEQ_DIGITS}d}{SIDE}"

    def data_path(self, seq: int) -> Path:
        return self.path / f"{seq:0{_SEQ_DIGITS}d}{DATA}"

    def corrupt_path(self, seq: int) -> Path:
        return self.path / f"{seq:0{_SEQ_DIGITS}d}{CORRUPT}"

    def _new_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _save(self, item: Item) -> None:
        atomic_write_bytes(self.side_path(item.seq), item.to_json())

    def _forget(self, item: Item) -> None:
        self.side_path(item.seq).unlink(missing_ok=True)

    # -- taking ---------------------------------------------------------------------------

    def begin_take(
        self, source: Path, direction: str, src: str, dst: str, inbox: Path
    ) -> Item | None:
        """Move `source` out of the outbox into this lane; None if it vanished first."""
        item = Item(
            seq=self._new_seq(),
            status=TAKING,
            direction=direction,
            src_node=src,
            dst_node=dst,
            name=source.name,
            source=str(source),
            inbox=str(inbox),
        )
        self._save(item)  # intent first: a crash after the rename still knows the file
        data = self.data_path(item.seq)
        try:
            item.move = _move(source, data, before_copy=lambda: self._mark_copy(item))
        except FileNotFoundError:
            self._forget(item)  # the node removed it (acked or expired) before we took it
            return None
        except BaseException:
            self._forget_unless_taken(item)
            raise
        item.size = data.stat().st_size
        return item

    def _mark_copy(self, item: Item) -> None:
        item.move = "copy"
        self._save(item)

    def _forget_unless_taken(self, item: Item) -> None:
        if not self.data_path(item.seq).exists():
            self._forget(item)

    def commit(self, item: Item, transfer: Transfer) -> list[Item]:
        """Record the link's decision; the items that will be delivered (none if dropped)."""
        if transfer.dropped is not None:
            self.data_path(item.seq).unlink(missing_ok=True)
            self._forget(item)
            return []
        items = []
        for copy in transfer.copies:
            target = self._duplicate(item) if copy.duplicate else item
            target.status = FLIGHT
            target.taken_at = transfer.taken_at
            target.tx_start = transfer.tx_start
            target.tx_end = transfer.tx_end
            target.deliver_at = copy.deliver_at
            target.corrupt = [[o, m] for o, m in copy.corrupt]
            target.duplicate = copy.duplicate
            target.reordered = transfer.reordered
            self._save(target)
            items.append(target)
        for target in items:
            if target.duplicate:
                _copy_file(self.data_path(item.seq), self.data_path(target.seq))
            if target.corrupt:
                self._write_corrupt(target)
        return items

    def _duplicate(self, item: Item) -> Item:
        twin = Item(**asdict(item))
        twin.seq = self._new_seq()
        twin.move = "duplicate"
        return twin

    def _write_corrupt(self, item: Item) -> None:
        """The corrupted copy, as a new file: the taken file's inode is never written to,
        because the node may hold a hard link to it as its custody copy."""
        _copy_file(self.data_path(item.seq), self.corrupt_path(item.seq), item.patch)

    # -- delivering -----------------------------------------------------------------------

    def deliver(self, item: Item) -> Path:
        """Move the item into its inbox under a free name; the path it was delivered to."""
        inbox = Path(item.inbox)
        inbox.mkdir(exist_ok=True)
        final = inbox / free_name(inbox, item.name, item.duplicate)
        payload = self.data_path(item.seq)
        if item.corrupt:
            if not self.corrupt_path(item.seq).exists() and payload.exists():
                self._write_corrupt(item)  # its first writing failed (disk full?)
            # .corrupt replaces .data as the payload; dropping .data first means a crash
            # between the two steps cannot deliver the file twice.
            payload.unlink(missing_ok=True)
            payload = self.corrupt_path(item.seq)
        if not payload.exists():
            self._forget(item)
            raise LostPayload(f"{payload} vanished from the state directory; {item.name} is lost")
        _move(payload, final)
        self._forget(item)
        return final

    # -- recovery -------------------------------------------------------------------------

    def recover(self) -> tuple[list[Item], list[Item], list[str]]:
        """After a restart: (items in flight, items taken but not yet decided, notes)."""
        flight: list[Item] = []
        undecided: list[Item] = []
        notes: list[str] = []
        for part in self.path.glob(".*.part"):
            part.unlink(missing_ok=True)  # an interrupted copy; its sidecar says what to redo
        for side in sorted(self.path.glob(f"*{SIDE}")):
            try:
                item = Item.from_json(side.read_bytes())
            except (OSError, ValueError, TypeError) as e:
                notes.append(f"ignoring unreadable sidecar {side}: {e}")
                continue
            state = self._recover_one(item)
            if state == FLIGHT:
                flight.append(item)
            elif state == TAKING:
                undecided.append(item)
        return flight, undecided, notes

    def _recover_one(self, item: Item) -> str | None:
        data = self.data_path(item.seq)
        corrupt = self.corrupt_path(item.seq)
        if item.status == TAKING:
            if not data.exists():
                self._forget(item)  # the move never happened: the file is still in the outbox
                return None
            if item.move == "copy":
                Path(item.source).unlink(missing_ok=True)  # finish the interrupted move
            item.size = data.stat().st_size
            return TAKING
        if item.corrupt:
            if corrupt.exists():
                data.unlink(missing_ok=True)
                return FLIGHT
            if data.exists():
                self._write_corrupt(item)
                return FLIGHT
        elif data.exists():
            return FLIGHT
        self._forget(item)  # already delivered (or a duplicate whose copy never finished)
        return None


def free_name(inbox: Path, name: str, duplicate: bool) -> str:
    """`name`, or `<stem>.dupN<suffix>` for a duplicate or when `name` is already taken."""
    stem, dot, suffix = name.rpartition(".")
    if not stem:  # no dot, or only a leading one
        stem, suffix = name, ""
    else:
        suffix = dot + suffix
    if not duplicate and not (inbox / name).exists():
        return name
    for n in range(1, 1_000_000):
        candidate = f"{stem}.dup{n}{suffix}"
        if not (inbox / candidate).exists():
            return candidate
    raise StateError(f"no free name for {name} in {inbox}")


def _move(src: Path, dst: Path, before_copy: Callable[[], None] | None = None) -> str:
    """Rename `src` to `dst` (atomic), or copy + fsync + rename + unlink across filesystems."""
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    else:
        fsync_path(dst.parent)
        return "rename"
    if before_copy is not None:
        before_copy()
    _copy_file(src, dst)
    src.unlink()
    return "copy"


def _copy_file(src: Path, dst: Path, patch: Patch = ()) -> None:
    """Copy through a hidden .part file, fsync, rename; flip the patch's bytes on the way."""
    with open(src, "rb") as reader, atomic_writer(dst) as writer:
        if not patch:
            shutil.copyfileobj(reader, writer, _CHUNK)
            return
        for base, chunk in _chunks(reader):
            writer.write(apply_patch(chunk, patch, base))


def _chunks(reader: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    base = 0
    while chunk := reader.read(_CHUNK):
        yield base, chunk
        base += len(chunk)


def utc_text(t: float) -> str:
    """ISO-8601 UTC with milliseconds, e.g. 2030-01-01T00:00:00.000Z."""
    whole = time.gmtime(t)
    millis = int((t % 1) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", whole) + f".{millis:03d}Z"
