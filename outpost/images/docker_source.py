"""Earth's side: images from its Docker daemon (`docker save`, engine.py), streamed.

`docker save` names layers by legacy ids or blob paths, not diff_ids, so each file in the
stream is hashed while it is spooled to a temporary file; the ones the outpost lacks then
go into the bundle, each in its own zstd frame.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

from ..codec import PartWriter
from ..errors import DockerError
from ..progress import Advance, Meter, MeteredReader, silent
from ..release.manifest import ImageFacts
from .delta import patch, usable_base
from .engine import Engine
from .parts import ImagePayload, Part

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
    """Stream `docker save` of the image; keep the config and the `wanted` layers as files
    named by digest in `into`. Returns digest -> path for what was kept."""
    return _spool(engine, facts.image_id, facts.ref, {facts.image_id, *wanted}, into, meter)


def _spool(engine: Engine, image: str, name: str, wanted: set[str],
           into: Path, meter: Meter = silent) -> dict[str, Path]:
    kept: dict[str, Path] = {}
    saved = MeteredReader(ChunkReader(engine.save(image)), meter(f"docker save {name}"))
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
    with tempfile.NamedTemporaryFile(dir=into, delete=False) as tmp:
        while block := src.read(SAVE_CHUNK):
            sha.update(block)
            tmp.write(block)
    digest = "sha256:" + sha.hexdigest()
    if digest in wanted and digest not in kept:
        target = into / digest.replace(":", "-")
        shutil.move(tmp.name, target)
        kept[digest] = target
    else:
        Path(tmp.name).unlink()


def write_image(engine: Engine, facts: ImageFacts, held: set[str], w: PartWriter,
                scratch: Path, bases: dict[str, str] | None = None,
                base_image: str | None = None, meter: Meter = silent) -> ImagePayload:
    """Write the config and the layers not in `held` into the payload, a frame each; a
    layer with a base in `bases` (layer -> a layer of `base_image` the outpost holds) as a
    delta against it where that pays (delta.py)."""
    wanted = [d for d in dict.fromkeys(facts.diff_ids) if d not in held]
    bases = {d: b for d, b in (bases or {}).items() if d in wanted}
    with tempfile.TemporaryDirectory(dir=scratch) as tmpdir:
        files = spool_save(engine, facts, set(wanted), Path(tmpdir), meter)
        base_files = _spool(engine, base_image, f"{facts.ref}'s earlier version",
                            set(bases.values()), Path(tmpdir), meter) if bases and base_image \
            else {}
        advance = meter(f"packing {facts.ref}", sum(p.stat().st_size for p in files.values()))
        config_size = _copy_part(files[facts.image_id], w, advance)
        layers = []
        for d in wanted:
            base = base_files.get(bases.get(d, ""))
            if base is not None and usable_base(base.stat().st_size, files[d].stat().st_size):
                layers.append(_write_delta(files[d], d, base, bases[d], w))
                advance(files[d].stat().st_size)
            else:
                layers.append(Part(d, _copy_part(files[d], w, advance)))
    return ImagePayload(facts=facts, config_size=config_size, layers=layers)


def _copy_part(path: Path, w: PartWriter, advance: Advance) -> int:
    with open(path, "rb") as f:
        size = w.copy_from(cast(BinaryIO, MeteredReader(f, advance)))
    w.end_frame()
    return size


def _write_delta(layer: Path, diff_id: str, base: Path, base_id: str, w: PartWriter) -> Part:
    sha, written = hashlib.sha256(), 0
    for chunk in patch(base, layer):
        sha.update(chunk)
        w.write(chunk)
        written += len(chunk)
    w.end_frame()
    return Part("sha256:" + sha.hexdigest(), written, diff_id, base_id, layer.stat().st_size)
