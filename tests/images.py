"""Build small test images locally with the Docker SDK: never a pull.

    base = busybox_base(client, "outpost-test/base:1", extra_mb=30)   # ONE layer
    v1 = app_image(client, "outpost-test/app:v1", "outpost-test/base:1", "v1")  # + ONE layer
    image_id, diff_ids = image_facts(client, "outpost-test/app:v1")

Content is deterministic: the same arguments give the same files, and every file and
directory in the build context gets a fixed mtime, so a layer rebuilt from scratch (even on
another daemon) has the same diff_id. App versions share the base layer and differ only in
their own layer.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import docker
from docker.models.images import Image

BUSYBOX = Path("/bin/busybox")  # Debian busybox-static
EPOCH = 946684800  # 2000-01-01: the mtime of everything in a build context
CHUNK = 1 << 20
# the default command of app images: print the version, then idle until stopped
APP_CMD = ["/bin/sh", "-c",
           "cat /app/version.txt; trap 'exit 0' TERM INT; while :; do sleep 1; done"]


def pseudo_random(seed: str, size: int) -> Iterator[bytes]:
    """`size` deterministic, incompressible bytes in chunks of at most 1 MiB."""
    for i, start in enumerate(range(0, size, CHUNK)):
        yield hashlib.shake_256(f"{seed}/{i}".encode()).digest(min(CHUNK, size - start))


def build_image(client: docker.DockerClient, tag: str,
                files: Mapping[str, bytes | str | Path | Iterator[bytes]],
                base: str | None = None, *, cmd: list[str] | None = None,
                symlinks: Mapping[str, str] | None = None, nocache: bool = False) -> Image:
    """Build `tag` as `FROM base` (or scratch) plus ONE layer holding `files`.

    `files` maps a path in the image to its content: bytes, text, a host file (Path) or an
    iterator of byte chunks (for big files). `symlinks` maps a path in the image to a link
    target, in the same layer. Never pulls: `base` must be a local image.
    """
    with tempfile.TemporaryDirectory(prefix="outpost-build-") as tmp:
        ctx = Path(tmp)
        root = ctx / "layer"
        root.mkdir()
        for name, content in files.items():
            dest = root / name.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, dest)
                dest.chmod(content.stat().st_mode & 0o7777)
            elif isinstance(content, bytes | str):
                dest.write_bytes(content.encode() if isinstance(content, str) else content)
                dest.chmod(0o644)
            else:
                with open(dest, "wb") as out:
                    for chunk in content:
                        out.write(chunk)
                dest.chmod(0o644)
        for name, target in (symlinks or {}).items():
            link = root / name.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target)
        for path in [root, *root.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
            os.utime(path, (EPOCH, EPOCH), follow_symlinks=False)
        lines = [f"FROM {base or 'scratch'}", "COPY layer/ /"]
        if cmd is not None:
            lines.append(f"CMD {json.dumps(cmd)}")
        (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
        try:
            image, _logs = client.images.build(path=str(ctx), tag=tag, rm=True, forcerm=True,
                                               pull=False, nocache=nocache)
        except docker.errors.BuildError as exc:
            log = "".join(str(line.get("stream", line)) for line in exc.build_log)
            raise AssertionError(f"building {tag} failed: {exc}\n{log}") from exc
        return image


def busybox_base(client: docker.DockerClient, tag: str, extra_mb: int = 0,
                 seed: str = "outpost-base", *, nocache: bool = False) -> Image:
    """busybox-static with its applet links, plus `extra_mb` MiB of incompressible bytes at
    /data/base.bin (seeded by `seed`): all in ONE layer."""
    if not BUSYBOX.is_file():
        raise AssertionError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    files: dict[str, Any] = {"/bin/busybox": BUSYBOX}
    if extra_mb:
        files["/data/base.bin"] = pseudo_random(seed, extra_mb * CHUNK)
    return build_image(client, tag, files, symlinks=busybox_links(), cmd=["/bin/sh"],
                       nocache=nocache)


def app_image(client: docker.DockerClient, tag: str, base_tag: str, version: str,
              size_kb: int = 200, *, nocache: bool = False) -> Image:
    """`base_tag` plus ONE small layer: /app/version.txt and `size_kb` KiB of incompressible
    bytes that depend on `version`. Its command prints the version and idles until stopped."""
    files = {"/app/version.txt": f"{version}\n",
             "/app/data.bin": b"".join(pseudo_random(f"outpost-app/{version}", size_kb * 1024))}
    return build_image(client, tag, files, base_tag, cmd=APP_CMD, nocache=nocache)


def image_facts(client: docker.DockerClient, ref: str) -> tuple[str, list[str]]:
    """(image ID, layer diff_ids) as `docker image inspect` reports them."""
    info = client.api.inspect_image(ref)
    return info["Id"], list(info["RootFS"]["Layers"])


def save_image(client: docker.DockerClient, ref: str) -> bytes:
    """`docker save REF` as bytes (fine for the small test images), tagged as REF.

    Saved by reference through the API, not `Image.save(named=True)`, which names the
    image's first tag: another test may have tagged the same image ID first."""
    buf = io.BytesIO()
    for chunk in client.api.get_image(ref):
        buf.write(chunk)
    return buf.getvalue()


_links: dict[str, str] | None = None


def busybox_links() -> dict[str, str]:
    """Every applet of the host's busybox-static as a link to /bin/busybox (what
    `busybox --install -s` does), without a RUN step and so without another layer."""
    global _links
    if _links is None:
        out = subprocess.run([str(BUSYBOX), "--list-full"], check=True, capture_output=True,
                             text=True).stdout
        _links = {f"/{p}": "/bin/busybox" for p in out.split() if p != "bin/busybox"}
    return _links
