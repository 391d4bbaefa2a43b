"""Plain `docker save` archives (from removable media): read, verify, stage for the gateway."""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import IO

from ..errors import ConfigError
from ..progress import Advance, Meter, silent
from ..release.manifest import ImageFacts, digest_file_name

CHUNK = 1024 * 1024


def stage_archive(archive: Path, into: Path,
                  meter: Meter = silent) -> list[tuple[ImageFacts, dict[str, Path]]]:
    """Every tagged image in a `docker save` tar, its parts copied into `into` and checked."""
    try:
        with tarfile.open(archive, "r:") as tar:
            manifest = json.load(_member(tar, "manifest.json"))
            names = {str(n) for e in manifest for n in [e["Config"], *e["Layers"]]}
            advance = meter(f"reading {archive.name}",
                            sum(tar.getmember(n).size for n in names))
            staged = [_stage_image(tar, entry, into, advance) for entry in manifest]
    except (tarfile.TarError, OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{archive} is not a readable `docker save` archive: {e}") from None
    # One image saved under several tags is one entry listing them all: import each tag.
    return [(replace(facts, ref=tag), files) for facts, files, tags in staged for tag in tags]


def _member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    f = tar.extractfile(name)
    if f is None:
        raise ConfigError(f"archive has no file {name}")
    return f


def _stage_image(tar: tarfile.TarFile, entry: dict[str, object], into: Path,
                 advance: Advance) -> tuple[ImageFacts, dict[str, Path], list[str]]:
    tags = entry.get("RepoTags") or []
    if not isinstance(tags, list) or not tags:
        raise ConfigError("an image in the archive has no tag; save it as name:tag")
    config_digest, config_path = _copy(tar, str(entry["Config"]), into, advance)
    doc = json.loads(config_path.read_bytes())
    diff_ids = list(doc["rootfs"]["diff_ids"])
    files = {config_digest: config_path}
    layers = entry["Layers"]
    assert isinstance(layers, list)
    for name, expected in zip(layers, diff_ids, strict=True):
        digest, path = _copy(tar, str(name), into, advance)
        if digest != expected:
            raise ConfigError(f"layer {name} of {tags[0]} is not its diff_id {expected}")
        files[digest] = path
    facts = ImageFacts(ref=str(tags[0]), image_id=config_digest, diff_ids=diff_ids)
    return facts, files, [str(t) for t in tags]


def _copy(tar: tarfile.TarFile, name: str, into: Path, advance: Advance) -> tuple[str, Path]:
    src = _member(tar, name)
    sha = hashlib.sha256()
    tmp = into / f".{hashlib.sha256(name.encode()).hexdigest()[:16]}.part"
    with open(tmp, "wb") as out:
        while block := src.read(CHUNK):
            sha.update(block)
            out.write(block)
            advance(len(block))
    digest = "sha256:" + sha.hexdigest()
    target = into / digest_file_name(digest)
    tmp.replace(target)
    return digest, target
