"""Layer deltas: a new layer compressed against an earlier layer the outpost holds.

zstd's patch-from mode, run as the `zstd` program: the earlier layer is the prefix, the
window covers it and long-distance matching finds what moved, so a layer that changed a
few files of many costs about the changed bytes. Measured against the Python binding
(which can only load the base as a dictionary, indexed into hash tables): on a 64 MiB
random layer with 5% of its blocks changed the binding found nothing at level 9 (64.2 MB)
and needed hash_log 26 and chain_log 27 to match the CLI (3.35 MB), taking 2.5 s and about
1 GiB of tables, where `zstd -3 --patch-from` took 0.25 s (docs/releases.md).

Both ends stream: Earth reads the layer file, the outpost feeds the delta in and takes the
rebuilt layer out while it hashes it, and `zstd` holds the base (at most MAX_BASE; a
bigger base is not used, the layer goes whole). Without the `zstd` program no delta is
made, and one that arrives is asked for whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import threading
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path

from ..errors import OutpostError
from .parts import Sink

MAX_BASE = 512 * 1024 * 1024  # bytes of base layer zstd holds, at each end (about 3x in RSS)
MIN_LAYER = 64 * 1024  # below this a delta saves too little to be worth a base
CHUNK = 1024 * 1024
ZSTD = "zstd"


class DeltaMismatch(OutpostError):
    """The rebuilt layer is not the one meant: the base the outpost holds is not the one
    Earth used (a damaged blob), or the delta does not decode. The full layer is asked for
    instead."""


def available() -> bool:
    return shutil.which(ZSTD) is not None


def usable_base(base_size: int, layer_size: int) -> bool:
    return layer_size >= MIN_LAYER and 0 < base_size <= MAX_BASE and available()


def _memory() -> str:
    return f"--memory={2 * MAX_BASE // (1024 * 1024)}MB"


def patch(base: Path, layer: Path) -> Iterator[bytes]:
    """The delta of `layer` against `base`, in chunks, as `zstd -3 --patch-from` makes it."""
    proc = subprocess.Popen([ZSTD, "-3", "-q", "-c", f"--patch-from={base}", _memory(),
                             str(layer)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    while chunk := proc.stdout.read(CHUNK):
        yield chunk
    err = proc.stderr.read().decode(errors="replace").strip()
    if proc.wait() != 0:
        raise OutpostError(f"zstd --patch-from {layer.name} failed: {err[-300:]}")


class Rebuilder:
    """A sink for a delta: rebuilds the layer from `base` into `out` through `zstd -d
    --patch-from`, checking the layer's size and diff_id; DeltaMismatch from close() when
    they are not the layer's (then `out` is left unclosed, for the caller to cancel)."""

    def __init__(self, base: Path, out: Sink, diff_id: str, layer_size: int) -> None:
        self.out, self.diff_id, self.layer_size = out, diff_id, layer_size
        self.sha, self.size = hashlib.sha256(), 0
        self.failed: str | None = None
        self._proc = subprocess.Popen([ZSTD, "-d", "-q", "-c", f"--patch-from={base}",
                                       _memory()], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        """Read zstd's output to the end, even after a failure: a zstd blocked on a full
        pipe would block the writer of its input too."""
        assert self._proc.stdout is not None
        with self._proc.stdout:
            while chunk := self._proc.stdout.read(CHUNK):
                if self.failed is None:
                    self._take(chunk)

    def _take(self, chunk: bytes) -> None:
        if self.size + len(chunk) > self.layer_size:
            self.failed = "the rebuilt layer is longer than the layer"
            return
        self.sha.update(chunk)
        self.size += len(chunk)
        try:
            self.out.write(chunk)
        except Exception as e:  # the upload broke: close() reports it
            self.failed = f"writing the rebuilt layer failed: {e}"

    def write(self, data: bytes, /) -> None:
        assert self._proc.stdin is not None
        if self.failed is not None:
            return
        try:
            self._proc.stdin.write(data)
        except BrokenPipeError:
            self.failed = self.failed or "zstd stopped reading the delta"

    def close(self) -> None:
        assert self._proc.stdin is not None and self._proc.stderr is not None
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.close()
        self._reader.join()
        err = self._proc.stderr.read().decode(errors="replace").strip()
        if self._proc.wait() != 0 and self.failed is None:
            self.failed = f"the delta does not decode against the base held here ({err[-200:]})"
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
