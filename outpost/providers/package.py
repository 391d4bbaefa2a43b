"""A provider package: which one (source, version, platform), its files, and Terraform's
`h1:` hash of them (pure).

`h1:` is Go's dirhash Hash1, the hash Terraform records for a package's contents whatever
its layout (a zip or an unpacked folder): the sha256 of the lines "<sha256 hex>  <name>\\n"
of its files, sorted by name, in base64.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from ..errors import MalformedBundle

SOURCE = re.compile(r"[a-z0-9.-]+(?::[0-9]+)?/[a-z0-9_-]+/[a-z0-9_-]+\Z")
VERSION = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+(?:-[0-9A-Za-z.-]+)?\Z")
PLATFORM = re.compile(r"[a-z0-9]+_[a-z0-9]+\Z")
_FILE_PART = re.compile(r"[A-Za-z0-9_.+-]+\Z")
_SHA = re.compile(r"sha256:[0-9a-f]{64}\Z")
MAX_FILES = 1000


@dataclass(frozen=True)
class Provider:
    """A provider version for one platform, with the hashes the release's lock file gives."""

    source: str
    version: str
    platform: str
    hashes: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Its path in an unpacked mirror, and its name in holdings and status."""
        return f"{self.source}/{self.version}/{self.platform}"

    def __str__(self) -> str:
        return f"{self.source} {self.version} ({self.platform})"

    def to_meta(self) -> dict[str, Any]:
        return {"source": self.source, "version": self.version, "platform": self.platform,
                "hashes": list(self.hashes)}

    @classmethod
    def from_meta(cls, d: Any) -> Provider:
        if not isinstance(d, dict):
            raise MalformedBundle("a provider must be a map", reason="bad-provider")
        source, version, platform = d.get("source"), d.get("version"), d.get("platform")
        hashes = d.get("hashes", [])
        if not (isinstance(source, str) and SOURCE.match(source)
                and isinstance(version, str) and VERSION.match(version)
                and isinstance(platform, str) and PLATFORM.match(platform)):
            raise MalformedBundle(f"{source!r} {version!r} {platform!r} is not a provider",
                                  reason="bad-provider")
        if not isinstance(hashes, list) or not all(isinstance(h, str) and len(h) < 200
                                                   for h in hashes) or len(hashes) > 100:
            raise MalformedBundle("provider hashes must be a list of strings",
                                  reason="bad-provider")
        return cls(source, version, platform, tuple(hashes))


@dataclass(frozen=True)
class PackageFile:
    name: str  # relative, "/"-separated
    size: int
    digest: str  # sha256:<hex>
    executable: bool

    def to_meta(self) -> list[Any]:
        return [self.name, self.size, self.digest, self.executable]

    @classmethod
    def from_meta(cls, x: Any) -> PackageFile:
        if not (isinstance(x, list) and len(x) == 4 and isinstance(x[0], str)
                and safe_file_name(x[0]) and isinstance(x[1], int) and x[1] >= 0
                and isinstance(x[2], str) and _SHA.match(x[2]) and isinstance(x[3], bool)):
            raise MalformedBundle(f"bad file entry in provider bundle: {str(x)[:80]}",
                                  reason="bad-provider")
        return cls(x[0], x[1], x[2], x[3])


def safe_file_name(name: str) -> bool:
    parts = name.split("/")
    return len(name) < 256 and all(_FILE_PART.match(p) and p not in (".", "..")
                                   for p in parts)


def h1(files: list[tuple[str, str]]) -> str:
    """Terraform's h1: hash of a package from (name, sha256:<hex>) of each of its files."""
    lines = "".join(f"{digest.removeprefix('sha256:')}  {name}\n"
                    for name, digest in sorted(files))
    return "h1:" + base64.b64encode(hashlib.sha256(lines.encode()).digest()).decode()


@dataclass(frozen=True)
class ProviderPayload:
    """What a provider bundle carries: the provider, its files in order, and their h1."""

    provider: Provider
    files: list[PackageFile]

    @property
    def h1(self) -> str:
        return h1([(f.name, f.digest) for f in self.files])

    def to_meta(self) -> dict[str, Any]:
        return {"provider": self.provider.to_meta(),
                "files": [f.to_meta() for f in self.files]}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], raw_length: int) -> ProviderPayload:
        provider = Provider.from_meta(meta.get("provider"))
        files = meta.get("files")
        if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
            raise MalformedBundle("provider bundle needs a list of files", reason="bad-provider")
        parsed = [PackageFile.from_meta(f) for f in files]
        if len({f.name for f in parsed}) != len(parsed):
            raise MalformedBundle("provider bundle names a file twice", reason="bad-provider")
        if sum(f.size for f in parsed) != raw_length:
            raise MalformedBundle("provider files do not add up to the payload",
                                  reason="bad-provider")
        return cls(provider, parsed)
