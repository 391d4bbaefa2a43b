"""Earth's image sources: where a release's images come from, read through one cache.

`DockerSource` (docker.py) reads Earth's Docker daemon; `RegistrySource` (registry.py) any
registry speaking the Registry HTTP API v2, with its credentials, and then Earth needs no
Docker daemon. Both keep what they read in the layer cache (cache.py), so a layer is read,
decompressed and packed once however many outposts lack it. `open_source` picks one from
node.toml ([earth] source_registry): the one place that rule lives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..home import Home
from ..progress import Meter
from ..release.manifest import ImageFacts
from .cache import LayerCache


class ImageSource(Protocol):
    where: str  # for messages: "Earth's Docker daemon", "registry at HOST"
    cache: LayerCache

    def facts(self, ref: str) -> ImageFacts:
        """The image `ref` names now (ConfigError when the source has none)."""

    def earlier(self, facts: ImageFacts, candidates: set[str]) -> ImageFacts | None:
        """The newest of the images `candidates` (image IDs) with the same name as
        `facts`, as far as the source still knows them: the base of layer deltas."""

    def files(self, facts: ImageFacts, wanted: set[str], meter: Meter) -> dict[str, Path]:
        """The image's config and its `wanted` layers as files in the cache (digest ->
        path; layers by diff_id), read from the source where the cache lacks them."""


def open_source(home: Home) -> ImageSource:
    e = home.earth
    cache = LayerCache(home.cache, e.layer_cache)
    if e.source_registry:
        from .registry import RegistrySource
        return RegistrySource.configured(home, cache)
    from .docker import DockerSource
    return DockerSource(e.docker, cache)
