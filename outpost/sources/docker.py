"""Images from Earth's Docker daemon: `docker save`, once per image for the whole fleet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError, DockerError
from ..images.docker_source import docker_engine, image_facts, spool_save
from ..images.engine import Engine
from ..progress import Meter
from ..release.manifest import ImageFacts, split_ref
from .cache import LayerCache


class DockerSource:
    def __init__(self, url: str | None, cache: LayerCache) -> None:
        self.url, self.cache = url, cache
        self._engine: Engine | None = None
        self.where = "Earth's Docker daemon"

    @property
    def engine(self) -> Engine:
        """The daemon, checked to answer the first time it is needed (a release of config
        alone needs none)."""
        if self._engine is None:
            self._engine = docker_engine(self.url)
        return self._engine

    def facts(self, ref: str) -> ImageFacts:
        return image_facts(self.engine, ref)

    def earlier(self, facts: ImageFacts, candidates: set[str]) -> ImageFacts | None:
        name = split_ref(facts.ref)[1]
        best: dict[str, Any] | None = None
        for image_id in candidates - {facts.image_id}:
            try:
                attrs = self.engine.inspect_image(image_id)
            except (ConfigError, DockerError):
                continue  # no longer at Earth
            tags = attrs.get("RepoTags") or []
            if any(split_ref(t)[1] == name for t in tags) and (
                    best is None or str(attrs.get("Created")) > str(best.get("Created"))):
                best = attrs
        if best is None:
            return None
        tags = best.get("RepoTags") or []
        return ImageFacts(ref=str(tags[0]) if tags else facts.ref, image_id=str(best["Id"]),
                          diff_ids=list(best.get("RootFS", {}).get("Layers", [])))

    def files(self, facts: ImageFacts, wanted: set[str], meter: Meter) -> dict[str, Path]:
        need = {facts.image_id, *wanted}
        found = {d: p for d in need if (p := self.cache.blob(d)) is not None}
        if len(found) < len(need):
            saved = spool_save(self.engine, facts, need - set(found), self.cache.blob_dir(),
                               meter)
            found.update(self.cache.adopted(saved))
        return found
