"""Layer deltas (outpost/images/delta.py): pure, bytes in and out."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from outpost.images.delta import (
    MAX_BASE,
    MIN_LAYER,
    DeltaMismatch,
    Rebuilder,
    available,
    patch,
    pick_bases,
    usable_base,
)

needs_zstd = pytest.mark.skipif(not available(), reason="the zstd program is not installed")


class Buffer:
    def __init__(self) -> None:
        self.data, self.closed = bytearray(), False

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True


def layer(version: int, changed: set[int]) -> bytes:
    """64 blocks of 8 KiB of incompressible bytes; `changed` blocks differ in `version`."""
    return b"".join(random.Random(f"{i}/{version if i in changed else 0}").randbytes(8192)
                    for i in range(64))


def delta(tmp: Path, base: bytes, new: bytes) -> tuple[Path, bytes]:
    (tmp / "base").write_bytes(base)
    (tmp / "new").write_bytes(new)
    return tmp / "base", b"".join(patch(tmp / "base", tmp / "new"))


def rebuild(base: Path, patch_bytes: bytes, new: bytes, chunk: int = 777) -> Buffer:
    out = Buffer()
    r = Rebuilder(base, out, "sha256:" + hashlib.sha256(new).hexdigest(), len(new))
    for i in range(0, len(patch_bytes), chunk):
        r.write(patch_bytes[i:i + chunk])
    r.close()
    return out


@needs_zstd
def test_a_layer_with_few_changes_costs_the_changes_and_rebuilds_exactly(
        tmp_path: Path) -> None:
    base, new = layer(0, set()), layer(1, {3, 40})
    base_file, patch_bytes = delta(tmp_path, base, new)
    assert len(patch_bytes) < 2 * 8192 + 4096, len(patch_bytes)  # 2 blocks, not 512 KiB
    out = rebuild(base_file, patch_bytes, new)
    assert bytes(out.data) == new and out.closed


@needs_zstd
@pytest.mark.parametrize("damage", ["base", "patch", "short"])
def test_a_wrong_base_or_a_damaged_delta_is_refused_not_written_on(
        tmp_path: Path, damage: str) -> None:
    base, new = layer(0, set()), layer(1, {3})
    base_file, patch_bytes = delta(tmp_path, base, new)
    if damage == "base":
        base_file.write_bytes(base[:1000] + bytes([base[1000] ^ 1]) + base[1001:])
    elif damage == "patch":
        patch_bytes = patch_bytes[:-20] + bytes(20)
    else:
        patch_bytes = patch_bytes[: len(patch_bytes) // 2]
    out = Buffer()
    with pytest.raises(DeltaMismatch, match="layer sha256:"):
        r = Rebuilder(base_file, out, "sha256:" + hashlib.sha256(new).hexdigest(), len(new))
        r.write(patch_bytes)
        r.close()
    assert not out.closed


def test_bases_are_the_earlier_version_of_each_layer_the_outpost_holds() -> None:
    new, old = ["os", "lib2", "app2"], ["os", "lib1", "app1"]
    assert pick_bases(new, old, {"os", "lib1", "app1"}) == {"lib2": "lib1", "app2": "app1"}
    assert pick_bases(new, old, {"os", "app1"}) == {"app2": "app1"}  # lib1 not held
    assert pick_bases(new, old, {"os", "lib1", "app1"}, full={"app2"}) == {"lib2": "lib1"}
    assert pick_bases(["os", "extra", "app"], ["os"], {"os"}) == {}  # nothing to match


def test_a_base_is_used_only_when_it_fits_in_memory_and_the_layer_is_worth_it() -> None:
    assert usable_base(10 << 20, 1 << 20) == available()
    assert not usable_base(MAX_BASE + 1, 1 << 20)
    assert not usable_base(10 << 20, MIN_LAYER - 1)
    assert not usable_base(0, 1 << 20)


@needs_zstd
def test_a_delta_that_rebuilds_too_much_is_refused_without_a_hang(tmp_path: Path) -> None:
    """The rest of zstd's output is drained, so neither side of the pipe blocks."""
    base, new = layer(0, set()), layer(1, {3}) * 40  # 20 MiB out, pipes hold far less
    base_file, patch_bytes = delta(tmp_path, base, new)
    r = Rebuilder(base_file, Buffer(), "sha256:" + hashlib.sha256(new).hexdigest(), 1000)
    r.write(patch_bytes)
    with pytest.raises(DeltaMismatch, match="longer than the layer"):
        r.close()
