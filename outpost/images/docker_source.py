"""Earth's side: images from its Docker daemon (`docker save`, engine.py), streamed.

`docker save` names layers by legacy ids or blob paths, not diff_ids, so each file in the
stream is hashed while it is spooled to a temporary file; the wanted ones are kept, named
by digest (Earth's layer cache, sources/cache.py, is where they go).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

from ..errors import DockerError
from ..progress import Meter, MeteredReader, silent
from ..release.manifest import ImageFacts, digest_file_name
from .engine import Engine

SAVE_CHUNK = 1024 * 1024


def docker_engine(base_url: str | None = None) -> Engine:
    """Earth's Docker daemon, checked to answer."""
    engine = Engine(base_url)
    engine.ping()
    return engine


def image_facts(engine: Engine, ref: str) -> ImageFacts:
    attrs = engine.inspect_image(ref)
    try:
        return ImageFacts(ref=ref, image_id=attrs["Id"],
                          diff_ids=list(attrs["RootFS"]["Layers"]))
    except (KeyError, TypeError):
        raise DockerError(f"docker inspect {ref}: no image ID or layers in the answer") \
            from None


class ChunkReader:
    """A read()-able view of an iterator of byte chunks (the SDK's `docker save` stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it: Iterator[bytes] = iter(chunks)
        self._chunk = b""
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            if self._pos >= len(self._chunk):
                chunk = next(self._it, None)
                if chunk is None:
                    break
                self._chunk, self._pos = chunk, 0
            want = len(self._chunk) - self._pos if n < 0 else n - len(out)
            out += self._chunk[self._pos:self._pos + want]
            self._pos += want
        return bytes(out)


def spool_save(engine: Engine, facts: ImageFacts, wanted: set[str],
               into: Path, meter: Meter = silent) -> dict[str, Path]:
    """Stream `docker save` of the image; keep the `wanted` files (layers by diff_id, the
    config by image ID) as `into`/sha256-HEX, each written whole before it is named.
    Returns digest -> path for what was kept."""
    kept: dict[str, Path] = {}
    name = facts.ref
    saved = MeteredReader(ChunkReader(engine.save(facts.image_id)),
                          meter(f"docker save {name}"))
    reader = cast(BinaryIO, saved)
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                if member.isfile():
                    _spool_member(tar, member, wanted, into, kept)
    except tarfile.TarError as e:
        raise DockerError(f"docker save {name}: not a tar stream ({e})") from None
    missing = wanted - set(kept)
    if missing:
        raise DockerError(f"docker save of {name} lacks {sorted(missing)[:2]}")
    return kept


def _spool_member(tar: tarfile.TarFile, member: tarfile.TarInfo, wanted: set[str], into: Path,
                  kept: dict[str, Path]) -> None:
    src = tar.extractfile(member)
    if src is None:
        return
    sha = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=into, prefix=".", suffix=".part",
                                     delete=False) as tmp:
        while block := src.read(SAVE_CHUNK):
            sha.update(block)
            tmp.write(block)
        digest = "sha256:" + sha.hexdigest()
        if digest in wanted:
            tmp.flush()
            os.fsync(tmp.fileno())
    if digest in wanted and digest not in kept:
        target = into / digest_file_name(digest)
        os.replace(tmp.name, target)
        kept[digest] = target
    else:
        Path(tmp.name).unlink()
