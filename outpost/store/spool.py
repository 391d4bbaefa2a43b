"""Bundle files on disk: outbox names, custody copies, reassembly files, quarantine."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..codec import EXPEDITED, NORMAL
from ..fsutil import atomic_write_bytes, fsync_path, is_transient_name

SUFFIX = ".opb"
REASON = ".reason.json"
# Outbox names sort by urgency then age: acks first, then expedited, normal, bulk.
RANK_ACK = "0"


def rank(priority: int) -> str:
    return {EXPEDITED: "1", NORMAL: "2"}.get(priority, "3")


def outbox_name(rank_char: str, created: float, unit_id: str, idx: int = -1) -> str:
    """`<rank>-<created µs>-<id>[-<index>].opb`: `ls` order is the link's sending order."""
    stamp = f"{int(created * 1_000_000):017d}"
    base = unit_id if idx < 0 else f"{unit_id.rsplit('.', 1)[0]}-{idx:06d}"
    return f"{rank_char}-{stamp}-{base}{SUFFIX}"


def bundle_files(directory: Path) -> list[Path]:
    """Entries of `directory` that are not folders, in name order; in-progress and hidden
    ones skipped. FIFOs, devices and symlinks are listed too: whoever reads them must take
    regular files only (fsutil.open_regular), and an inbox scan quarantines the rest."""
    try:
        names = sorted(e.name for e in os.scandir(directory)
                       if not e.is_dir(follow_symlinks=False) and not is_transient_name(e.name)
                       and not e.name.endswith(REASON))
    except FileNotFoundError:
        return []
    return [directory / n for n in names]


def names_in(directory: Path) -> set[str]:
    try:
        return {e.name for e in os.scandir(directory)}
    except FileNotFoundError:
        return set()


@dataclass(frozen=True)
class Quarantined:
    path: Path
    reason: str
    error: str
    at: float
    original: str


def quarantine(directory: Path, path: Path, reason: str, error: str, now: float) -> Path:
    """Move `path` into `directory` with a `<name>.reason.json` beside it; returns the new path."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{int(now * 1000):014d}-{path.name}"
    record = {"reason": reason, "error": error, "at": now, "original": path.name}
    atomic_write_bytes(target.with_name(target.name + REASON),
                       json.dumps(record, indent=1).encode())
    try:
        os.replace(path, target)
    except OSError:
        target.with_name(target.name + REASON).unlink(missing_ok=True)
        raise
    fsync_path(directory)
    return target


def read_reason(path: Path) -> Quarantined | None:
    sidecar = path.with_name(path.name + REASON)
    try:
        d = json.loads(sidecar.read_text())
        return Quarantined(path, str(d["reason"]), str(d["error"]), float(d["at"]),
                           str(d.get("original", path.name)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def prune_quarantine(directory: Path, max_bytes: int) -> int:
    """Delete the oldest quarantined files beyond `max_bytes`; returns how many went."""
    files = bundle_files(directory)
    sizes = {f: _size(f) for f in files}
    total, removed = sum(sizes.values()), 0
    for f in files:  # names start with the time, so oldest first
        if total <= max_bytes:
            break
        total -= sizes[f]
        f.unlink(missing_ok=True)
        f.with_name(f.name + REASON).unlink(missing_ok=True)
        removed += 1
    return removed


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
