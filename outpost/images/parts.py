"""An image bundle's payload: the image config, then each layer the outpost lacks.

Each part is its own zstd frame and is checked against its digest as it is read (the
config against the image ID, a layer against its diff_id). Pure: chunks in, files out
through the sink the caller gives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import MalformedBundle, RefusedContent
from ..release.manifest import DIGEST, ImageFacts

MAX_CONFIG = 8 * 1024 * 1024


class Sink(Protocol):
    """Where a part's bytes go: a file, a registry upload, or nowhere."""

    def write(self, data: bytes, /) -> object: ...
    def close(self) -> object: ...


@dataclass(frozen=True)
class Part:
    """A part of the payload: `size` bytes whose sha256 is `digest`. A delta part holds
    layer `layer` (of `layer_size` bytes) compressed against layer `base` (delta.py)."""

    digest: str
    size: int
    layer: str | None = None
    base: str | None = None
    layer_size: int = 0

    @property
    def diff_id(self) -> str:
        return self.layer or self.digest


@dataclass(frozen=True)
class ImagePayload:
    """What an image bundle carries: the image's facts, its config and some layers."""

    facts: ImageFacts
    config_size: int
    layers: list[Part]

    def parts(self) -> list[Part]:
        return [Part(self.facts.image_id, self.config_size), *self.layers]

    def to_meta(self) -> dict[str, Any]:
        return {"image": self.facts.to_meta(), "config_size": self.config_size,
                "layers": [_part_meta(p) for p in self.layers]}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], raw_length: int) -> ImagePayload:
        facts = ImageFacts.from_meta(meta.get("image"))
        size, layers = meta.get("config_size"), meta.get("layers")
        if not isinstance(size, int) or not 0 < size <= MAX_CONFIG:
            raise MalformedBundle("image bundle needs a config_size", reason="bad-image")
        if not isinstance(layers, list):
            raise MalformedBundle("image bundle needs a list of layers", reason="bad-image")
        parts = [_part(x) for x in layers]
        for p in parts:
            if p.diff_id not in facts.diff_ids:
                raise MalformedBundle(f"layer {p.digest} is not one of the image's",
                                      reason="bad-image")
        if size + sum(p.size for p in parts) != raw_length:
            raise MalformedBundle("image parts do not add up to the payload",
                                  reason="bad-image")
        return cls(facts=facts, config_size=size, layers=parts)


def _part_meta(p: Part) -> dict[str, Any]:
    if p.layer is None:
        return {"diff_id": p.digest, "size": p.size}
    return {"diff_id": p.layer, "size": p.size,
            "delta": {"base": p.base, "sha256": p.digest, "layer_size": p.layer_size}}


def _part(x: Any) -> Part:
    if not isinstance(x, dict) or not isinstance(x.get("diff_id"), str) or not DIGEST.match(
            x["diff_id"]) or not isinstance(x.get("size"), int) or x["size"] < 0:
        raise MalformedBundle("bad layer entry in image bundle", reason="bad-image")
    delta = x.get("delta")
    if delta is None:
        return Part(x["diff_id"], x["size"])
    if not isinstance(delta, dict) or not all(
            isinstance(delta.get(k), str) and DIGEST.match(delta[k]) for k in ("base", "sha256")
    ) or not isinstance(delta.get("layer_size"), int) or delta["layer_size"] < 0:
        raise MalformedBundle("bad delta entry in image bundle", reason="bad-image")
    return Part(delta["sha256"], x["size"], x["diff_id"], delta["base"], delta["layer_size"])


class PartSplitter:
    """Feed it the raw payload; it writes each part to `open_part(part)` and checks it.

    A part whose digest differs is remembered, not raised at once, so the caller can first
    learn whether the whole payload arrived intact (then the sender is at fault, not the
    link) by letting the bundle's own sha256 check finish.
    """

    def __init__(self, parts: list[Part], open_part: Callable[[Part], Sink], *,
                 what: str = "image", mismatch: str = "layer-digest") -> None:
        self.parts, self.open_part = parts, open_part
        self.what, self.mismatch = what, mismatch
        self.index, self.left = -1, 0
        self.sha = hashlib.sha256()
        self.out: Sink | None = None
        self.bad: list[str] = []
        self._next()

    def _next(self) -> None:
        while True:
            if self.out is not None:
                self._close()
            self.index += 1
            if self.index >= len(self.parts):
                return
            part = self.parts[self.index]
            self.out, self.left, self.sha = self.open_part(part), part.size, hashlib.sha256()
            if self.left:
                return

    def _close(self) -> None:
        assert self.out is not None
        self.out.close()
        self.out = None
        digest = "sha256:" + self.sha.hexdigest()
        if digest != self.parts[self.index].digest:
            self.bad.append(self.parts[self.index].digest)

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.out is None:
                raise MalformedBundle(f"{self.what} payload is longer than its parts",
                                      reason=f"bad-{self.what}")
            take = bytes(view[: self.left])
            self.out.write(take)
            self.sha.update(take)
            self.left -= len(take)
            view = view[len(take):]
            if self.left == 0:
                self._next()

    def finish(self) -> None:
        if self.out is not None:
            raise MalformedBundle(f"{self.what} payload ends inside a part",
                                  reason=f"bad-{self.what}")
        if self.bad:
            raise RefusedContent(f"{len(self.bad)} part(s) of the {self.what} do not match "
                                 f"their digest: {', '.join(d[:19] for d in self.bad)}",
                                 reason=self.mismatch)
