"""Provider mirrors: where Earth finds packages, and the outpost's own mirror.

Earth reads the two layouts `terraform providers mirror` and `-plugin-dir` use:

    HOST/NAMESPACE/TYPE/VERSION/PLATFORM/...                         unpacked
    HOST/NAMESPACE/TYPE/terraform-provider-TYPE_VERSION_PLATFORM.zip packed

The outpost keeps the unpacked layout (HOME/terraform/providers), so `terraform init`
links the package instead of copying it, and a folder there is a package checked
against its release's lock file (it is renamed into place only after that).
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from ..codec import PartWriter
from ..errors import ConfigError
from .package import PackageFile, Provider, ProviderPayload, safe_file_name

CHUNK = 1 << 20


def standard_mirrors() -> list[Path]:
    """The folders Terraform searches for providers by itself on Linux, that exist."""
    home = Path.home()
    data = os.environ.get("XDG_DATA_HOME") or str(home / ".local/share")
    dirs = [home / ".terraform.d/plugins", Path(data) / "terraform/plugins"]
    dirs += [Path(d) / "terraform/plugins" for d in
             (os.environ.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share").split(":")]
    return [d for d in dirs if d.is_dir()]


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    executable: bool


class Package(Protocol):
    """A provider package found in a mirror: its files, each opened as a stream."""

    where: Path

    def files(self) -> list[FileEntry]: ...
    def open(self, name: str) -> AbstractContextManager[BinaryIO]: ...


class Unpacked:
    def __init__(self, where: Path) -> None:
        self.where = where

    def files(self) -> list[FileEntry]:
        out = []
        for path in sorted(self.where.rglob("*")):
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                name = path.relative_to(self.where).as_posix()
                out.append(FileEntry(name, st.st_size, bool(st.st_mode & 0o111)))
        return out

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        with open(self.where / name, "rb") as f:
            yield f


class Packed:
    def __init__(self, where: Path) -> None:
        self.where = where

    def files(self) -> list[FileEntry]:
        with zipfile.ZipFile(self.where) as z:
            return [FileEntry(i.filename, i.file_size, bool((i.external_attr >> 16) & 0o111))
                    for i in z.infolist() if not i.is_dir()]

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        with zipfile.ZipFile(self.where) as z, z.open(name) as f:
            yield f  # type: ignore[misc]


def find_package(mirrors: list[Path], provider: Provider) -> Package | None:
    """The first mirror's copy of `provider`, unpacked or packed."""
    host, namespace, kind = provider.source.split("/")
    for mirror in mirrors:
        unpacked = mirror / provider.key
        if unpacked.is_dir():
            return Unpacked(unpacked)
        packed = (mirror / host / namespace / kind /
                  f"terraform-provider-{kind}_{provider.version}_{provider.platform}.zip")
        if packed.is_file():
            return Packed(packed)
    return None


class OutpostMirror:
    """The outpost's own filesystem mirror: one folder per installed package."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, provider: Provider) -> Path:
        return self.root / provider.key

    def has(self, provider: Provider) -> bool:
        return self.path(provider).is_dir()

    def keys(self) -> list[str]:
        """Every installed package, as Provider.key."""
        if not self.root.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.glob("*/*/*/*/*")
                      if p.is_dir() and safe_file_name(p.relative_to(self.root).as_posix()))


def write_package(package: Package, provider: Provider, w: PartWriter) -> ProviderPayload:
    """Stream each of the package's files into the payload (a zstd frame each), hashing it
    on the way; refuse a copy whose h1 is not one the lock file gives."""
    files = []
    for entry in package.files():
        sha, size = hashlib.sha256(), 0
        with package.open(entry.name) as src:
            while chunk := src.read(CHUNK):
                sha.update(chunk)
                w.write(chunk)
                size += len(chunk)
        w.end_frame()
        files.append(PackageFile(entry.name, size, "sha256:" + sha.hexdigest(),
                                 entry.executable))
    payload = ProviderPayload(provider, files)
    if payload.h1 not in provider.hashes:
        raise ConfigError(f"Earth's copy of {provider} ({package.where}) has hash "
                          f"{payload.h1}, which the release's lock file does not list; "
                          "refresh the mirror (terraform providers mirror) or the lock file")
    return payload
