"""The outpost's gateway: verified image parts into the registry, no Docker daemon needed.

Nothing unverified becomes a blob: an image bundle's layers stream into uploads committed
only once the bundle and every digest checked out (`import_bundle`); staged files handed
to `import_image` were checked by the caller; and the config's layer list is checked
against the image's before anything is pushed.
Layers are stored uncompressed, so a blob's digest is its diff_id and the registry itself
says which layers the outpost holds.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import RefusedContent, RegistryError
from ..images.delta import MAX_BASE, DeltaMismatch, Rebuilder
from ..images.delta import available as delta_available
from ..images.parts import ImagePayload, Part, PartSplitter, Sink
from ..node.context import log
from ..progress import Meter, running_total, silent
from ..release.manifest import ImageFacts, digest_file_name
from ..store.releases import ReleaseStore
from .registry import OCI_MANIFEST, Registry, Upload, image_ref_parts, oci_manifest

Read = Callable[[Callable[[bytes], object]], object]


class Gateway:
    def __init__(self, registry: Registry, store: ReleaseStore) -> None:
        self.registry, self.store = registry, store
        self.failed_deltas: list[str] = []  # layers the last bundle's deltas did not rebuild

    def import_bundle(self, payload: ImagePayload, read: Read, staging: Path,
                      src: str) -> list[str]:
        """Import an image bundle, decoded once: `read(sink)` verifies the bundle while it
        streams its payload into `sink`. Returns the layers still missing (see
        import_image). Staging files live in `staging` only while this runs."""
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            files = self._stage(payload, read, staging)
            return self.import_image(payload.facts, files, src)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _stage(self, payload: ImagePayload, read: Read, staging: Path) -> dict[str, Path]:
        """The config to a file, each layer the registry lacks straight into an upload,
        each checked against its digest on the way (a delta is rebuilt against its base,
        read from the registry, and checked against the layer's diff_id).

        Uploads become blobs only after the bundle's sha256 and every part's digest have
        checked out; on any failure they are cancelled, so nothing refused ever becomes a
        blob, a manifest or a tag. A delta whose base is missing or damaged here is left
        out (`failed_deltas`): the image waits for the full layer. Returns the files staged
        (the config).
        """
        facts = payload.facts
        repo, _tag = image_ref_parts(facts.ref)
        config = staging / digest_file_name(facts.image_id)
        uploads: dict[str, Upload] = {}
        rebuilt: dict[str, _Rebuilt] = {}
        checked = False

        def open_part(part: Part) -> Sink:
            nonlocal checked
            if part.digest == facts.image_id:
                return open(config, "wb")
            if not checked:  # the config part is complete before any layer
                check_config(facts, config)
                checked = True
            layer = part.diff_id
            if layer in uploads or self.registry.has_blob(repo, layer):
                return _Discard()
            if part.base is None:
                uploads[layer] = self.registry.open_upload(repo, part.size)
                return uploads[layer]
            base = self._base(part.base, staging)
            if base is None:
                self.failed_deltas.append(layer)
                return _Discard()
            uploads[layer] = self.registry.open_upload(repo, part.layer_size)
            rebuilt[layer] = _Rebuilt(Rebuilder(base, uploads[layer], layer, part.layer_size))
            return rebuilt[layer]

        self.failed_deltas = []
        try:
            splitter = PartSplitter(payload.parts(), open_part)
            read(splitter.feed)
            splitter.finish()
            check_config(facts, config)
            for layer, upload in uploads.items():
                if layer in rebuilt and rebuilt[layer].failed:
                    upload.cancel()
                    self.failed_deltas.append(layer)
                else:
                    upload.commit(layer)
        except BaseException:
            for upload in uploads.values():
                upload.cancel()
            raise
        return {facts.image_id: config}

    def _base(self, digest: str, staging: Path) -> Path | None:
        """A delta's base layer from the registry into a staging file, checked against its
        digest; None when it is not here, too big, or damaged, or zstd is missing."""
        held = self.store.held_layer(digest)
        if held is None or held[1] > MAX_BASE or not delta_available():
            return None
        dest = staging / f"base-{digest[7:]}"
        try:
            self.registry.fetch_blob(held[0], digest, dest, MAX_BASE)
        except RegistryError as e:
            log.warning("cannot use layer %s as a delta's base: %s", digest[:19], e)
            return None
        return dest

    def import_image(self, facts: ImageFacts, files: dict[str, Path], src: str = "",
                     meter: Meter = silent) -> list[str]:
        """Push the image; returns the layers it still lacks. Then nothing is tagged, but
        the verified config and layers are kept, and the image waits in `pending_images`
        until the rest arrives (a bundle with the shared layers may come after this one)."""
        check_config(facts, files[facts.image_id])
        repo, _tag = image_ref_parts(facts.ref)
        sizes, missing = self._place_layers(repo, facts, files, meter)
        config = files[facts.image_id]
        with open(config, "rb") as f:
            self.registry.push_blob(repo, facts.image_id, f, config.stat().st_size)
        if missing:
            self.store.add_pending(facts.to_meta(), src, time.time())
            return missing
        self._tag(facts, config.stat().st_size, sizes)
        return []

    def complete_pending(self) -> list[ImageFacts]:
        """Tag the pending images whose layers have all arrived since; returns them."""
        done = []
        for row in self.store.pending_images():
            facts = ImageFacts.from_meta(row["facts"])
            repo, _tag = image_ref_parts(facts.ref)
            sizes, missing = self._place_layers(repo, facts, {})
            config_size = self.registry.blob_size(repo, facts.image_id)
            if missing or config_size is None:
                continue
            self._tag(facts, config_size, sizes)
            done.append(facts)
        return done

    def _place_layers(self, repo: str, facts: ImageFacts, files: dict[str, Path],
                      meter: Meter = silent) -> tuple[dict[str, int], list[str]]:
        sizes: dict[str, int] = {}
        missing: list[str] = []
        for digest in dict.fromkeys(facts.diff_ids):
            size = self._place_layer(repo, digest, files.get(digest), meter)
            if size is None:
                missing.append(digest)
            else:
                sizes[digest] = size
        self.store.add_layers(repo, sizes)
        return sizes, missing

    def _tag(self, facts: ImageFacts, config_size: int, sizes: dict[str, int]) -> None:
        repo, tag = image_ref_parts(facts.ref)
        manifest = oci_manifest(facts.image_id, config_size,
                                [(d, sizes[d]) for d in facts.diff_ids])
        self.registry.put_manifest(repo, tag, manifest, OCI_MANIFEST)
        self.store.add_image(facts.image_id, facts.ref, time.time())
        self.store.drop_pending(facts.image_id, facts.ref)

    def _place_layer(self, repo: str, digest: str, staged: Path | None,
                     meter: Meter = silent) -> int | None:
        """Make `repo` hold layer `digest`: upload it, find it, or mount it from another repo."""
        if staged is not None:
            length = staged.stat().st_size
            advance = running_total(meter(f"pushing {repo}@{digest[:19]}", length))
            with open(staged, "rb") as f:
                self.registry.push_blob(repo, digest, f, length, advance)
            return length
        size = self.registry.blob_size(repo, digest)
        if size is not None:
            return size
        held = self.store.held_layer(digest)
        if held is not None and self.registry.mount_blob(repo, digest, held[0]):
            return held[1]
        if held is not None:
            self.store.forget_layer(digest)  # gone from the registry (garbage-collected)
        return None

    def present_layers(self) -> list[str]:
        """Layers the registry really holds (checked, not just remembered)."""
        out = []
        for digest in self.store.layers():
            held = self.store.held_layer(digest)
            if held and self.registry.has_blob(held[0], digest):
                out.append(digest)
            else:
                self.store.forget_layer(digest)
        return out


class _Rebuilt:
    """A delta's sink: a layer that does not rebuild is noted, its upload cancelled later,
    rather than failing the bundle (which is intact: the base here is not Earth's)."""

    def __init__(self, rebuilder: Rebuilder) -> None:
        self.rebuilder, self.failed = rebuilder, False

    def write(self, data: bytes) -> None:
        self.rebuilder.write(data)

    def close(self) -> None:
        try:
            self.rebuilder.close()
        except DeltaMismatch as e:
            log.warning("%s; asking Earth for the full layer", e)
            self.failed = True


class _Discard:
    """Where a layer the registry already holds goes: checked, then dropped."""

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def check_config(facts: ImageFacts, config: Path) -> None:
    try:
        doc = json.loads(config.read_bytes())
        diff_ids = doc["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError):
        raise RefusedContent(f"image {facts.ref}: its config is not an image config",
                             reason="bad-image-config") from None
    if diff_ids != facts.diff_ids:
        raise RefusedContent(f"image {facts.ref}: the config's layers differ from the "
                             "release's", reason="config-mismatch")
