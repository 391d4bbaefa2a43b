"""Earth's layer cache: what a publish reads and packs, kept once for the whole fleet.

    blobs/sha256-HEX           layers (uncompressed tars, by diff_id) and image configs
    packed/KEY, packed/KEY.json  a part as it was packed (whole zstd frames) and what it
                               holds: a layer whole, or as a delta from a base (images/pack.py)
    images/sha256-HEX.json     where a registry image's layers come from (sources/registry.py)

Every file is written beside its name, fsynced and renamed, so a reader never sees half
of one; a blob is checked against its digest as it is written. Bounded by `[earth]
layer_cache`: after a publish the least recently used blobs and packed parts go until the
cache fits, never one that publish used (the image records are a few KB each and stay).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..fsutil import atomic_write_bytes, atomic_writer
from ..release.manifest import digest_file_name


class DigestMismatch(Exception):
    """What was written is not what its digest names (the source's fault: the caller
    says which source)."""


class LayerCache:
    def __init__(self, root: Path, limit: int) -> None:
        self.root, self.limit = root, limit
        self.blobs, self.packs, self.images = root / "blobs", root / "packed", root / "images"
        self._used: set[Path] = set()

    # blobs
    def blob(self, digest: str) -> Path | None:
        """The cached file of `digest`, marked used, or None."""
        return self._use(self.blobs / digest_file_name(digest))

    def blob_dir(self) -> Path:
        """Where a source writes blobs itself (named sha256-HEX, written whole, then
        renamed: images/docker_source.py's spool)."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        return self.blobs

    def adopted(self, found: dict[str, Path]) -> dict[str, Path]:
        """Blobs a source wrote into `blob_dir()`, marked used."""
        self._used.update(found.values())
        return found

    @contextlib.contextmanager
    def writing(self, digest: str) -> Iterator[BinaryIO]:
        """A file that becomes blob `digest` when the block ends, if its content hashes to
        it; DigestMismatch (and nothing kept) otherwise."""
        target = self.blob_dir() / digest_file_name(digest)
        with atomic_writer(target) as out:
            checked = _Hashing(out)
            yield checked  # type: ignore[misc]
            if "sha256:" + checked.sha.hexdigest() != digest:
                raise DigestMismatch(f"content hashes to sha256:{checked.sha.hexdigest()}")
        self._use(target)

    # packed parts (images/pack.py's PackedParts)
    def packed(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        meta_file = self.packs / f"{key}.json"
        frame = self._use(self.packs / key)
        if frame is None or not meta_file.is_file():
            return None
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            return None
        return frame, meta

    def keep_packed(self, key: str, frame: Path, meta: dict[str, Any]) -> None:
        os.replace(frame, self.packs / key)
        atomic_write_bytes(self.packs / f"{key}.json", json.dumps(meta).encode())
        self._use(self.packs / key)

    def scratch(self) -> Path:
        self.packs.mkdir(parents=True, exist_ok=True)
        return self.packs

    # image records
    def record(self, image_id: str) -> dict[str, Any] | None:
        try:
            found = json.loads((self.images / f"{digest_file_name(image_id)}.json").read_text())
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None

    def keep_record(self, image_id: str, record: dict[str, Any]) -> None:
        self.images.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.images / f"{digest_file_name(image_id)}.json",
                     json.dumps(record, sort_keys=True).encode())

    # the bound
    def size(self) -> int:
        return sum(size for _p, size, _t in self._entries())

    def trim(self) -> int:
        """Drop the least recently used entries until the cache fits its bound, keeping
        what was used since the last trim (the publish that ends with it); returns the
        bytes freed."""
        entries = sorted(self._entries(), key=lambda e: e[2])
        total, freed = sum(size for _p, size, _t in entries), 0
        for path, size, _t in entries:
            if total - freed <= self.limit:
                break
            if path in self._used:
                continue
            path.unlink(missing_ok=True)
            if path.parent == self.packs:
                path.with_name(path.name + ".json").unlink(missing_ok=True)
            freed += size
        self._used.clear()
        return freed

    def _entries(self) -> list[tuple[Path, int, float]]:
        found = []
        for folder in (self.blobs, self.packs):
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(folder):
                    if entry.name.startswith(".") or entry.name.endswith(".json"):
                        continue
                    st = entry.stat()
                    found.append((Path(entry.path), st.st_blocks * 512, st.st_mtime))
        return found

    def _use(self, path: Path) -> Path | None:
        """`path` if it exists, its time set to now: the eviction order is by last use
        (access times are not kept by every mount)."""
        try:
            os.utime(path, (time.time(), time.time()))
        except FileNotFoundError:
            return None
        self._used.add(path)
        return path


class _Hashing:
    def __init__(self, out: BinaryIO) -> None:
        self.out, self.sha = out, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.out.write(data)
