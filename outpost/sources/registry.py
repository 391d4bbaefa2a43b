"""Images from a registry (Registry HTTP API v2: distribution, Harbor, a cloud registry).

`[earth] source_registry = "HOST:PORT"` names it; the refs in outpost.toml are names in it.
A tag is read as the registry serves it: a manifest, or an index (a manifest list) from
which the outposts' platform is taken ([earth] terraform_platform, linux_amd64). The
config blob is the image config, so its digest is the image ID Docker shows, and the
config's diff_ids name the layers as the outposts hold them. Layers arrive compressed
(gzip or zstd, as pushed); each is decompressed once into the layer cache, checked
against both its blob digest and its diff_id.

Scheme: an address with http:// or https:// is taken as written; without one, loopback is
spoken to over HTTP and anything else over HTTPS (checked against [earth] source_ca if
set, else the system's CAs). Credentials: [earth] source_auth (gateway/auth.py).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import zlib
from pathlib import Path
from typing import Any, BinaryIO, cast

import zstandard

from ..errors import ConfigError, RegistryError
from ..gateway.auth import Credentials
from ..gateway.registry import (
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    Registry,
    check_digest,
    image_ref_parts,
)
from ..home import Home
from ..images.parts import MAX_CONFIG
from ..progress import Meter, MeteredReader
from ..release.manifest import DIGEST, ImageFacts, split_ref
from ..units import is_loopback
from .cache import DigestMismatch, LayerCache

CHUNK = 1 << 20
GZIP, ZSTD, PLAIN = "gzip", "zstd", "tar"
LAYER_TYPES = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip": GZIP,
    "application/vnd.oci.image.layer.v1.tar+gzip": GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": GZIP,
    "application/vnd.oci.image.layer.v1.tar+zstd": ZSTD,
    "application/vnd.oci.image.layer.v1.tar": PLAIN,
    "application/vnd.docker.image.rootfs.diff.tar": PLAIN,
}


class RegistrySource:
    def __init__(self, registry: Registry, platform: str, cache: LayerCache) -> None:
        self.registry, self.cache = registry, cache
        self.os, _, self.arch = platform.partition("_")
        self.where = f"registry at {registry.url}"
        self._checked = False

    @classmethod
    def configured(cls, home: Home, cache: LayerCache) -> RegistrySource:
        e = home.earth
        assert e.source_registry is not None
        creds = Credentials.from_file(home.path / e.source_auth) if e.source_auth else None
        ca = home.path / e.source_ca if e.source_ca else None
        if ca is not None and not ca.is_file():
            raise ConfigError(f"[earth] source_ca: no CA file at {ca}")
        address, scheme = _address(e.source_registry, ca is not None)
        registry = Registry(address, scheme=scheme, cafile=str(ca) if ca else None, auth=creds)
        return cls(registry, e.terraform_platform, cache)

    def facts(self, ref: str) -> ImageFacts:
        repo, tag = image_ref_parts(ref)
        manifest = self._manifest(repo, tag, ref)
        config = manifest.get("config") or {}
        image_id = check_digest(str(config.get("digest", "")))
        doc = json.loads(self._config(repo, image_id, ref).read_bytes())
        diff_ids = (doc.get("rootfs") or {}).get("diff_ids") if isinstance(doc, dict) else None
        layers = manifest.get("layers")
        if not isinstance(diff_ids, list) or not all(
                isinstance(d, str) and DIGEST.match(d) for d in diff_ids) or \
                not isinstance(layers, list) or len(layers) != len(diff_ids):
            raise RegistryError(f"{ref} in the {self.where}: its config and manifest do not "
                                "list the same layers")
        self.cache.keep_record(image_id, {
            "ref": ref, "repo": repo, "created": str(doc.get("created", "")),
            "layers": [{"diff_id": d, "blob": str(x.get("digest")),
                        "media_type": str(x.get("mediaType")), "size": int(x.get("size", 0))}
                       for d, x in zip(diff_ids, layers, strict=True)]})
        return ImageFacts(ref=ref, image_id=image_id, diff_ids=list(diff_ids))

    def earlier(self, facts: ImageFacts, candidates: set[str]) -> ImageFacts | None:
        name, best = split_ref(facts.ref)[1], None
        for image_id in candidates - {facts.image_id}:
            rec = self.cache.record(image_id)
            if rec is None or split_ref(str(rec.get("ref", "")))[1] != name:
                continue  # an image this source never served, or another one's
            if best is None or str(rec.get("created")) > str(best[1].get("created")):
                best = (image_id, rec)
        if best is None:
            return None
        image_id, rec = best
        return ImageFacts(ref=str(rec["ref"]), image_id=image_id,
                          diff_ids=[x["diff_id"] for x in rec["layers"]])

    def files(self, facts: ImageFacts, wanted: set[str], meter: Meter) -> dict[str, Path]:
        rec = self.cache.record(facts.image_id)
        if rec is None:
            raise RegistryError(f"no record of {facts.ref} ({facts.image_id[:19]}) in the "
                                "layer cache: publish again")
        repo = str(rec["repo"])
        found = {facts.image_id: self._config(repo, facts.image_id, facts.ref)}
        for layer in rec["layers"]:
            d = layer["diff_id"]
            if d in wanted and d not in found:
                found[d] = self.cache.blob(d) or self._pull_layer(repo, layer, meter)
        return found

    # reading the registry
    def _manifest(self, repo: str, reference: str, ref: str) -> dict[str, Any]:
        self._check()
        got = self.registry.get_manifest(repo, reference)
        if got is None:
            raise ConfigError(f"image {ref} is not in the {self.where} (no {repo}:{reference})"
                              ": push it there, then publish again")
        media_type, body, _digest = got
        doc = _json(body, f"manifest of {ref}")
        if media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST) or "manifests" in doc:
            return self._manifest(repo, self._platform(doc, ref), ref)
        return doc

    def _platform(self, index: dict[str, Any], ref: str) -> str:
        for m in index.get("manifests") or []:
            p = m.get("platform") or {}
            if p.get("os") == self.os and p.get("architecture") == self.arch:
                return check_digest(str(m.get("digest")))
        raise ConfigError(f"image {ref} in the {self.where} has no {self.os}/{self.arch} "
                          "manifest (set [earth] terraform_platform to the outposts' os_arch)")

    def _check(self) -> None:
        if not self._checked:
            self.registry.ping()
            self._checked = True

    def _config(self, repo: str, image_id: str, ref: str) -> Path:
        found = self.cache.blob(image_id)
        if found is not None:
            return found
        self._check()
        try:
            with self.registry.open_blob(repo, image_id) as src, \
                    self.cache.writing(image_id) as out:
                _copy(src, out, MAX_CONFIG, f"the config of {ref}")
        except DigestMismatch as e:
            raise RegistryError(f"the config of {ref} in the {self.where} is damaged: {e}") \
                from None
        path = self.cache.blob(image_id)
        assert path is not None
        return path

    def _pull_layer(self, repo: str, layer: dict[str, Any], meter: Meter) -> Path:
        """Layer `layer` (a record entry) into the cache: fetched, decompressed, checked
        against its blob digest and its diff_id on the way."""
        blob, diff_id = check_digest(layer["blob"]), layer["diff_id"]
        kind = LAYER_TYPES.get(layer["media_type"])
        if kind is None:
            raise RegistryError(f"layer {blob[:19]} of {repo} is a {layer['media_type']}, "
                                "which Outpost cannot carry (foreign or unknown layer type)")
        self._check()
        advance = meter(f"pull {repo} {diff_id[:19]}", layer.get("size") or None)
        try:
            with self.registry.open_blob(repo, blob) as src, \
                    self.cache.writing(diff_id) as out:
                hashed = _HashingReader(cast(BinaryIO, MeteredReader(src, advance)))
                _copy(_decompressing(hashed, kind), out, -1, f"layer {blob[:19]}")
                hashed.drain()
                if hashed.digest() != blob:
                    raise RegistryError(f"layer {blob[:19]} of {repo} in the {self.where} is "
                                        f"damaged: its bytes hash to {hashed.digest()[:19]}")
        except DigestMismatch as e:
            raise RegistryError(f"layer {blob[:19]} of {repo} does not decompress to its "
                                f"diff_id {diff_id[:19]}: {e}") from None
        except (gzip.BadGzipFile, EOFError, zlib.error, zstandard.ZstdError) as e:
            raise RegistryError(f"layer {blob[:19]} of {repo} is not valid {kind}: {e}") \
                from None
        except (OSError, http.client.HTTPException) as e:
            raise RegistryError(f"reading layer {blob[:19]} of {repo} from the {self.where} "
                                f"broke off ({e}): publish again") from None
        path = self.cache.blob(diff_id)
        assert path is not None
        return path


class _HashingReader:
    def __init__(self, src: BinaryIO) -> None:
        self.src, self.sha = src, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.sha.update(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def _decompressing(src: _HashingReader, kind: str) -> BinaryIO:
    if kind == GZIP:
        return cast(BinaryIO, gzip.GzipFile(fileobj=cast(BinaryIO, src), mode="rb"))
    if kind == ZSTD:
        return cast(BinaryIO, zstandard.ZstdDecompressor().stream_reader(
            cast(BinaryIO, src), read_across_frames=True))
    return cast(BinaryIO, src)


def _copy(src: BinaryIO, out: BinaryIO, limit: int, what: str) -> None:
    done = 0
    while data := src.read(CHUNK):
        done += len(data)
        if 0 <= limit < done:
            raise RegistryError(f"{what} is over {limit >> 20} MiB: not an image config")
        out.write(data)


def _json(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise RegistryError(f"the {what} is not a JSON object")
    return doc


def _address(address: str, tls: bool) -> tuple[str, str]:
    """(host:port, scheme) of `source_registry` (the module's doc says the rule)."""
    if "://" in address:
        scheme, _, rest = address.partition("://")
        return rest.rstrip("/"), scheme
    host = address.rsplit(":", 1)[0].strip("[]") if address.count(":") <= 1 or \
        address.startswith("[") else address
    return address, "https" if tls or not is_loopback(host) else "http"
