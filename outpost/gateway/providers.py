"""Installing a provider bundle into the outpost's own mirror.

Each file is written to a staging folder and checked against its sha256 as it streams;
the package's h1: hash must be one the release's lock file lists (the bundle says which
lock hashes Earth read; `terraform init` checks the installed package against the
checkout's lock file again). Only then is the folder fsynced and renamed into place, so a
folder in the mirror is always a whole, checked package.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..errors import RefusedContent
from ..fsutil import fsync_path
from ..images.parts import Part, PartSplitter, Sink
from ..providers.mirror import OutpostMirror
from ..providers.package import ProviderPayload

Read = Callable[[Callable[[bytes], object]], object]


def install_provider(mirror: OutpostMirror, payload: ProviderPayload, read: Read,
                     staging: Path) -> bool:
    """Install `payload` (streamed by `read(sink)`, which verifies the bundle); False when
    the package was installed already."""
    provider = payload.provider
    if mirror.has(provider):
        read(lambda _b: None)  # still verified, so a bad bundle is quarantined
        return False
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _stage(payload, read, staging)
        if payload.h1 not in provider.hashes:
            raise RefusedContent(f"{provider}: the package's hash {payload.h1} is not one the "
                                 "release's lock file lists", reason="provider-hash")
        _place(mirror.path(provider), staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


def _stage(payload: ProviderPayload, read: Read, staging: Path) -> None:
    files = iter(payload.files)

    def open_part(_part: Part) -> Sink:
        f = next(files)
        path = staging / f.name
        path.parent.mkdir(parents=True, exist_ok=True)
        return _SyncedFile(path, 0o755 if f.executable else 0o644)

    splitter = PartSplitter([Part(f.digest, f.size) for f in payload.files], open_part,
                            what="provider", mismatch="provider-hash")
    read(splitter.feed)
    splitter.finish()


def _place(final: Path, staging: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    for folder in {p.parent for p in staging.rglob("*")} | {staging}:
        fsync_path(folder)
    os.rename(staging, final)
    fsync_path(final.parent)


class _SyncedFile:
    """A staged file: written, fsynced on close, with the package's mode."""

    def __init__(self, path: Path, mode: int) -> None:
        self.f = open(path, "wb")  # noqa: SIM115 - closed by close()
        os.chmod(path, mode)

    def write(self, data: bytes, /) -> object:
        return self.f.write(data)

    def close(self) -> object:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        return None
