"""Layer deltas: a new layer compressed against an earlier layer the outpost holds.

zstd's patch-from mode: the earlier layer is a raw-content dictionary, the window covers it
and long-distance matching finds what moved, so a layer that changed a few files of many
costs the changed bytes, not the layer (measured: docs/benchmarks.md). The rebuild streams
the layer out as it decompresses and hashes it, so only the base is held in memory; a base
above MAX_BASE is not used (the full layer is sent instead).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Set as AbstractSet
from typing import Protocol

import zstandard

from ..errors import OutpostError

MAX_BASE = 512 * 1024 * 1024  # bytes of base layer held in memory, at each end
MIN_LAYER = 64 * 1024  # below this a delta saves too little to be worth a base
# zstd's fast strategies (levels 1-5) barely look into a large dictionary; from level 9 its
# matches are found (measured on a 9.8 MB layer with 25 of 500 files changed: 3.67 MB at
# level 3, 200 KB at level 9, `zstd -3 --patch-from` 204 KB, at about 480 MB/s).
LEVEL = 9
CHUNK = 1024 * 1024


class DeltaMismatch(OutpostError):
    """The rebuilt layer is not the one meant: the base the outpost holds is not the one
    Earth used (a damaged blob). The full layer is asked for instead."""


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...
    def close(self) -> object: ...


def usable_base(base_size: int, layer_size: int) -> bool:
    return layer_size >= MIN_LAYER and 0 < base_size <= MAX_BASE


def _window_log(base_size: int, layer_size: int) -> int:
    """A window reaching over the whole base from anywhere in the new layer, as
    `zstd --patch-from` sets it."""
    need = max(base_size + min(layer_size, base_size), 1 << 20)
    return min(max(math.ceil(math.log2(need)), 20), 31)


def _dict(base: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


class Patcher:
    """Compress a new layer, chunk by chunk, against `base`."""

    def __init__(self, base: bytes, layer_size: int, level: int = LEVEL) -> None:
        params = zstandard.ZstdCompressionParameters.from_level(
            level, window_log=_window_log(len(base), layer_size), enable_ldm=True)
        self._c = zstandard.ZstdCompressor(dict_data=_dict(base), compression_params=params)
        self._obj = self._c.compressobj(size=layer_size)

    def compress(self, chunk: bytes) -> bytes:
        return self._obj.compress(chunk)

    def flush(self) -> bytes:
        return self._obj.flush()


class Rebuilder:
    """A sink for a delta: rebuilds the layer from `base` into `out`, checking the layer's
    diff_id and size; DeltaMismatch from close() when they are not the layer's."""

    def __init__(self, base: bytes, out: Sink, diff_id: str, layer_size: int) -> None:
        window = 1 << _window_log(len(base), layer_size)
        d = zstandard.ZstdDecompressor(dict_data=_dict(base), max_window_size=window)
        self._obj = d.decompressobj()
        self.out, self.diff_id, self.layer_size = out, diff_id, layer_size
        self.sha, self.size = hashlib.sha256(), 0
        self.failed: str | None = None

    def write(self, data: bytes, /) -> None:
        if self.failed is not None:
            return
        try:
            raw = self._obj.decompress(data)
        except zstandard.ZstdError as e:
            self.failed = f"the delta does not decode against the base held here ({e})"
            return
        if self.size + len(raw) > self.layer_size:
            self.failed = "the rebuilt layer is longer than the layer"
            return
        self.sha.update(raw)
        self.size += len(raw)
        self.out.write(raw)

    def close(self) -> None:
        if self.failed is None and self.size != self.layer_size:
            self.failed = f"the rebuilt layer has {self.size} of {self.layer_size} bytes"
        if self.failed is None and "sha256:" + self.sha.hexdigest() != self.diff_id:
            self.failed = "the rebuilt layer is not its diff_id"
        if self.failed is not None:
            raise DeltaMismatch(f"layer {self.diff_id[:19]}: {self.failed}")
        self.out.close()


def pick_bases(new: list[str], old: list[str], held: AbstractSet[str],
               full: AbstractSet[str] = frozenset()) -> dict[str, str]:
    """For each layer of the new image the outpost lacks, the layer at the same place in
    the outpost's earlier version of the image, when the outpost holds it: the layer it
    most likely changed from. `full`: layers to send whole (a delta of them failed)."""
    bases = {}
    for i, layer in enumerate(new):
        if layer in held or layer in full or layer in bases or i >= len(old):
            continue
        if old[i] != layer and old[i] in held:
            bases[layer] = old[i]
    return bases
