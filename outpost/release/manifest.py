"""The release manifest that crosses the link: a config commit and the images it needs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import MalformedBundle
from ..providers.package import Provider

# The one place for these rules: the reference grammar of the distribution registry
# (reference/regexp.go), lowercase names only. Use them with .match (they end in \Z).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*\Z")
TAG = re.compile(rf"{_TAG}\Z")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
IMAGE_REF = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*(?::{_TAG})?\Z")
COMMIT = re.compile(r"[0-9a-f]{40}\Z")


def digest_file_name(digest: str) -> str:
    """The file name of content named by `digest`: sha256:HEX -> sha256-HEX (no colon)."""
    if not DIGEST.match(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return digest.replace(":", "-")


def split_ref(ref: str) -> tuple[str | None, str, str | None]:
    """(registry host or None, name, tag or None) of an image reference, digest left on the
    name. A first component with a dot or a colon, or `localhost`, is a registry host: the
    outpost serves every image from its own registry, so hosts are dropped where names are
    compared ("ghcr.io/x/app:1" is "x/app:1")."""
    name, tag = ref, None
    colon, slash = ref.rfind(":"), ref.rfind("/")
    if colon > slash and "@" not in ref[colon:]:  # a colon before the last / is a port
        name, tag = ref[:colon], ref[colon + 1:]
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest, tag
    return None, name, tag


@dataclass(frozen=True)
class ImageFacts:
    """An image's identity: its ID (config digest) and its layers' diff_ids, bottom first."""

    ref: str
    image_id: str
    diff_ids: list[str]

    def to_meta(self) -> dict[str, Any]:
        return {"ref": self.ref, "image_id": self.image_id, "diff_ids": self.diff_ids}

    @classmethod
    def from_meta(cls, d: Any) -> ImageFacts:
        if not isinstance(d, dict):
            raise MalformedBundle("image facts must be a map", reason="bad-release")
        ref, image_id, diff_ids = d.get("ref"), d.get("image_id"), d.get("diff_ids")
        if not isinstance(ref, str) or not IMAGE_REF.match(ref):
            raise MalformedBundle(f"image ref {ref!r} is not an image name like app/web:1.0",
                                  reason="bad-release")
        if not isinstance(image_id, str) or not DIGEST.match(image_id):
            raise MalformedBundle("image facts need a sha256 image_id", reason="bad-release")
        if not isinstance(diff_ids, list) or not all(
                isinstance(x, str) and DIGEST.match(x) for x in diff_ids):
            raise MalformedBundle("diff_ids must be sha256 digests", reason="bad-release")
        return cls(ref=ref, image_id=image_id, diff_ids=list(diff_ids))


@dataclass(frozen=True)
class Release:
    """A config commit, the images it runs and the Terraform providers its lock file pins
    (for the outpost's platform; none unless it applies with Terraform)."""

    commit: str
    images: list[ImageFacts]
    providers: list[Provider] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.commit[:12]

    def to_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"commit": self.commit,
                                "images": [i.to_meta() for i in self.images]}
        if self.providers:
            meta["providers"] = [p.to_meta() for p in self.providers]
        return meta

    @classmethod
    def from_meta(cls, d: Any) -> Release:
        if not isinstance(d, dict) or not isinstance(d.get("commit"), str) or not COMMIT.match(
                d["commit"]):
            raise MalformedBundle("release needs a 40-hex commit", reason="bad-release")
        images, providers = d.get("images"), d.get("providers", [])
        if not isinstance(images, list) or not isinstance(providers, list):
            raise MalformedBundle("release images and providers must be lists",
                                  reason="bad-release")
        return cls(commit=d["commit"], images=[ImageFacts.from_meta(i) for i in images],
                   providers=[Provider.from_meta(p) for p in providers])
