"""An image bundle's payload written from files: the config and each layer a frame, or a
layer as a delta against an earlier one the outpost holds (delta.py).

Where a store of packed parts is given (Earth's layer cache), each part is compressed once
for the whole fleet: the frame is kept as it was written and added as it is to the next
bundle that carries the same part (a layer whole, or the same delta from the same base).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from ..codec import PartWriter
from ..progress import Advance, Meter, MeteredReader, silent
from ..release.manifest import ImageFacts, digest_file_name
from .delta import patch, usable_base
from .parts import ImagePayload, Part


class PackedParts(Protocol):
    """Parts packed before, by key: a file of whole zstd frames and the part it holds."""

    def packed(self, key: str) -> tuple[Path, dict[str, Any]] | None: ...
    def keep_packed(self, key: str, frame: Path, meta: dict[str, Any]) -> None: ...
    def scratch(self) -> Path: ...


def write_image(facts: ImageFacts, files: dict[str, Path], held: set[str], w: PartWriter, *,
                bases: dict[str, str] | None = None, base_files: dict[str, Path] | None = None,
                store: PackedParts | None = None, meter: Meter = silent) -> ImagePayload:
    """Write the config and the layers not in `held` into the payload, a frame each, from
    `files` (digest -> file: the config by image ID, layers by diff_id); a layer with a
    base in `bases` (layer -> an earlier layer the outpost holds, in `base_files`) as a
    delta against it where that pays (delta.py)."""
    wanted = [d for d in dict.fromkeys(facts.diff_ids) if d not in held]
    base_files = base_files or {}
    bases = {d: b for d, b in (bases or {}).items() if d in wanted and b in base_files}
    advance = meter(f"packing {facts.ref}", sum(files[d].stat().st_size
                                                for d in {facts.image_id, *wanted}))
    packer = _Packer(w, store, advance)
    config = packer.whole(facts.image_id, files[facts.image_id])
    layers = []
    for d in wanted:
        base = base_files.get(bases.get(d, ""))
        if base is not None and usable_base(base.stat().st_size, files[d].stat().st_size):
            layers.append(packer.delta(d, files[d], bases[d], base))
        else:
            layers.append(packer.whole(d, files[d]))
    return ImagePayload(facts=facts, config_size=config.size, layers=layers)


class _Packer:
    """Parts into one payload: each added as packed before, or packed now (and kept, with
    a store). `advance` counts the layer's bytes either way."""

    def __init__(self, w: PartWriter, store: PackedParts | None, advance: Advance) -> None:
        self.w, self.advance = w, advance
        self.store = store if w.codec == "zstd" else None

    def whole(self, digest: str, path: Path) -> Part:
        return self._part(digest_file_name(digest), path, lambda: Part(digest, _copy_part(
            path, self.w, self.advance)))

    def delta(self, digest: str, path: Path, base_id: str, base: Path) -> Part:
        key = f"{digest_file_name(digest)}-from-{digest_file_name(base_id)}"
        return self._part(key, path, lambda: _write_delta(path, digest, base, base_id, self.w,
                                                          self.advance))

    def _part(self, key: str, layer: Path, make: Callable[[], Part]) -> Part:
        if self.store is None:
            return make()
        found = self.store.packed(key)
        if found is not None:
            path, meta = found
            with open(path, "rb") as f:
                self.w.copy_packed(f, int(meta["size"]))
            self.advance(layer.stat().st_size)
            return Part(**meta)
        tmp = self.store.scratch() / f".{key}.{os.getpid()}.part"
        try:
            with open(tmp, "wb") as f:
                self.w.capture(f)
                part = make()
                f.flush()
                os.fsync(f.fileno())
            self.store.keep_packed(key, tmp, {"digest": part.digest, "size": part.size,
                                              "layer": part.layer, "base": part.base,
                                              "layer_size": part.layer_size})
        finally:
            tmp.unlink(missing_ok=True)
        return part


def _copy_part(path: Path, w: PartWriter, advance: Advance) -> int:
    with open(path, "rb") as f:
        size = w.copy_from(cast(BinaryIO, MeteredReader(f, advance)))
    w.end_frame()
    return size


def _write_delta(layer: Path, diff_id: str, base: Path, base_id: str, w: PartWriter,
                 advance: Advance) -> Part:
    sha, written = hashlib.sha256(), 0
    for chunk in patch(base, layer):
        sha.update(chunk)
        w.write(chunk)
        written += len(chunk)
    w.end_frame()
    advance(layer.stat().st_size)
    return Part("sha256:" + sha.hexdigest(), written, diff_id, base_id, layer.stat().st_size)
