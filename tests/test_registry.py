"""The Registry HTTP API v2 client against a real distribution registry (no mocks)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import docker
import docker.errors
import pytest

from outpost.gateway.registry import (
    OCI_CONFIG,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    Registry,
    RegistryError,
    image_ref_parts,
    oci_manifest,
    sha256_digest,
)

from .images import build_image, busybox_base

ROOT = Path(__file__).resolve().parent.parent
REGISTRY_BIN = shutil.which("docker-registry")


class RunningRegistry(NamedTuple):
    address: str  # host:port
    root: Path  # its storage directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def own_registry() -> Iterator[RunningRegistry]:
    """A private `docker-registry serve` on a free loopback port, storage in a temp dir."""
    if REGISTRY_BIN is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    # Not tmp_path_factory: pytest keeps old temp dirs, and the streaming test stores 512 MiB.
    root = Path(tempfile.mkdtemp(prefix="outpost-regtest-"))
    port = free_port()
    config = root / "config.yml"
    config.write_text(textwrap.dedent(f"""\
        version: 0.1
        log:
          level: warn
        storage:
          filesystem:
            rootdirectory: {root / "data"}
        http:
          addr: 127.0.0.1:{port}
        """))
    log = open(root / "registry.log", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while not _answers(f"http://127.0.0.1:{port}/v2/"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("docker-registry did not start: "
                                   + (root / "registry.log").read_text()[-2000:])
            time.sleep(0.05)
        yield RunningRegistry(f"127.0.0.1:{port}", root / "data")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def reg(own_registry: RunningRegistry) -> Iterator[Registry]:
    with Registry(own_registry.address, timeout=30) as r:
        yield r


def unique_repo(prefix: str = "t") -> str:
    return f"regtest/{prefix}-{uuid.uuid4().hex[:10]}"


def push_bytes(reg: Registry, repo: str, data: bytes) -> str:
    digest = sha256_digest(data)
    reg.push_blob(repo, digest, io.BytesIO(data), len(data))
    return digest


def upload_data_files(storage: Path, repo: str) -> list[Path]:
    """Upload sessions of `repo` still holding bytes in the registry's storage."""
    uploads = storage / "docker/registry/v2/repositories" / repo / "_uploads"
    return [p for p in uploads.glob("*/data")] if uploads.exists() else []


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


# -- ping -----------------------------------------------------------------------------------


def test_ping_ok(reg: Registry) -> None:
    reg.ping()


def test_ping_closed_port_says_what_to_do() -> None:
    port = free_port()  # nothing listens there once the probe socket closed
    with Registry(f"http://127.0.0.1:{port}", timeout=5) as r, \
            pytest.raises(RegistryError) as info:
        r.ping()
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "does not answer" in message and "refused" in message.lower()
    assert "scripts/services start" in message and "--registry" in message
    assert "\n" not in message


def test_ping_something_that_is_not_a_registry() -> None:
    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        with Registry(f"127.0.0.1:{server.server_address[1]}", timeout=5) as r, \
                pytest.raises(RegistryError, match=r"HTTP 501, not a Registry v2 API"):
            r.ping()
    finally:
        server.shutdown()
        server.server_close()


def test_bad_addresses_are_refused() -> None:
    with pytest.raises(RegistryError, match="unsupported scheme"):
        Registry("ftp://127.0.0.1:5000")
    with pytest.raises(RegistryError, match="expected host:port"):
        Registry("127.0.0.1:5000/v2")
    assert Registry("https://reg.example:5443/").url == "https://reg.example:5443"


# -- blobs ----------------------------------------------------------------------------------


def test_push_blob_then_has_blob(reg: Registry) -> None:
    repo = unique_repo()
    data = os.urandom(3 * 1024 * 1024 + 17)  # several chunks and a partial one
    digest = sha256_digest(data)
    assert not reg.has_blob(repo, digest)
    seen: list[int] = []
    assert reg.push_blob(repo, digest, io.BytesIO(data), len(data), progress=seen.append)
    assert seen[-1] == len(data) and seen == sorted(seen) and len(seen) == 4
    assert reg.has_blob(repo, digest)
    assert reg.blob_size(repo, digest) == len(data)
    # Present: not sent again.
    assert reg.push_blob(repo, digest, io.BytesIO(data), len(data)) is False


def test_push_blob_reads_exactly_size_from_the_current_position(reg: Registry) -> None:
    # As when a layer is a slice of a bigger file: bytes before and after are not sent.
    repo = unique_repo()
    blob = b"the layer itself"
    source = io.BytesIO(b"HEADER" + blob + b"TRAILER")
    source.seek(6)
    assert reg.push_blob(repo, sha256_digest(blob), source, len(blob))
    assert source.tell() == 6 + len(blob)


def test_empty_blob(reg: Registry) -> None:
    repo = unique_repo()
    assert push_bytes(reg, repo, b"") == sha256_digest(b"")
    assert reg.blob_size(repo, sha256_digest(b"")) == 0


def test_wrong_digest_is_refused_with_digest_invalid(
        reg: Registry, own_registry: RunningRegistry) -> None:
    repo = unique_repo()
    data = b"what the bundle really held"
    claimed = sha256_digest(b"what the header said it held")
    with pytest.raises(RegistryError) as info:
        reg.push_blob(repo, claimed, io.BytesIO(data), len(data))
    assert "DIGEST_INVALID" in str(info.value)
    assert info.value.codes == ("DIGEST_INVALID",) and info.value.status == 400
    assert not reg.has_blob(repo, claimed)
    assert not reg.has_blob(repo, sha256_digest(data))
    # The refused bytes do not linger in the registry's upload area.
    assert upload_data_files(own_registry.root, repo) == []
    # And the connection is still good for the next request.
    reg.ping()


def test_source_shorter_than_size_is_refused(reg: Registry) -> None:
    repo = unique_repo()
    data = b"x" * 1000
    with pytest.raises(RegistryError, match="source ended after 1000 of 2000 bytes"):
        reg.push_blob(repo, sha256_digest(data), io.BytesIO(data), 2000)
    assert not reg.has_blob(repo, sha256_digest(data))
    reg.ping()  # a new connection replaces the one left mid-request


def test_invalid_names_never_reach_the_wire(reg: Registry) -> None:
    with pytest.raises(RegistryError, match="invalid digest"):
        reg.has_blob("regtest/x", "sha256:../../etc")
    with pytest.raises(RegistryError, match="invalid repository name"):
        reg.has_blob("Regtest/X", sha256_digest(b""))
    with pytest.raises(RegistryError, match="invalid manifest reference"):
        reg.get_manifest("regtest/x", "a/b")


def test_blob_in_one_repo_is_not_visible_in_another_until_mounted(
        reg: Registry, own_registry: RunningRegistry) -> None:
    src, dst = unique_repo("src"), unique_repo("dst")
    digest = push_bytes(reg, src, b"a shared base layer")
    # Quirk of the per-repo API: distribution stores the blob once, yet answers 404 here.
    assert not reg.has_blob(dst, digest)
    assert reg.mount_blob(dst, digest, src) is True
    assert reg.has_blob(dst, digest)
    # Mounting what the source repo does not hold falls back to an upload session (202),
    # which the client cancels.
    missing = sha256_digest(b"never pushed")
    other = unique_repo("other")
    assert reg.mount_blob(other, missing, src) is False
    assert not reg.has_blob(other, missing)
    assert upload_data_files(own_registry.root, other) == []
    # Quirk: the blob exists in storage, but a from-repo that never linked it cannot lend it.
    assert reg.mount_blob(unique_repo("third"), digest, unique_repo("stranger")) is False


def test_connection_is_reused_and_reopened_once_when_dropped(reg: Registry) -> None:
    reg.ping()
    conn = reg._conn
    assert conn is not None and conn.sock is not None
    sock = conn.sock
    reg.ping()
    assert reg._conn is conn and conn.sock is sock  # keep-alive: the same socket
    # As if the registry had closed the idle connection: the next request must still work.
    sock.shutdown(socket.SHUT_RDWR)
    repo = unique_repo()
    digest = push_bytes(reg, repo, b"after a dropped connection")
    assert reg.has_blob(repo, digest)


class DropsConnectionOnce(io.BytesIO):
    """A source that cuts the client's connection after its first chunk, once."""

    def __init__(self, data: bytes, reg: Registry) -> None:
        super().__init__(data)
        self.reg, self.dropped = reg, False

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        if not self.dropped and self.tell() > 0:
            self.dropped = True
            conn = self.reg._conn
            assert conn is not None and conn.sock is not None
            conn.sock.shutdown(socket.SHUT_RDWR)
        return chunk


def test_upload_broken_midway_is_retried_from_the_start(reg: Registry) -> None:
    repo = unique_repo()
    data = os.urandom(5 * 1024 * 1024)
    source = DropsConnectionOnce(data, reg)
    seen: list[int] = []
    assert reg.push_blob(repo, sha256_digest(data), source, len(data), progress=seen.append)
    # Without the retry the cut would have raised; the second session was committed.
    assert source.dropped and seen[-1] == len(data)
    assert reg.blob_size(repo, sha256_digest(data)) == len(data)


# -- manifests and images -------------------------------------------------------------------


def test_manifest_round_trip(reg: Registry) -> None:
    repo = unique_repo()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    config_digest = push_bytes(reg, repo, config)
    body = oci_manifest(config_digest, len(config), [])
    digest = reg.put_manifest(repo, "v1", body, OCI_MANIFEST)
    assert digest == "sha256:" + hashlib.sha256(body).hexdigest()
    assert reg.get_manifest(repo, "v1") == (OCI_MANIFEST, body, digest)
    assert reg.get_manifest(repo, digest) == (OCI_MANIFEST, body, digest)
    assert reg.get_manifest(repo, "v2") is None
    assert reg.get_manifest(unique_repo("none"), "v1") is None


def test_manifest_naming_a_missing_blob_is_refused(reg: Registry) -> None:
    repo = unique_repo()
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    config_digest = push_bytes(reg, repo, config)
    body = oci_manifest(config_digest, len(config), [(sha256_digest(b"absent"), 6)])
    with pytest.raises(RegistryError) as info:
        reg.put_manifest(repo, "v1", body, OCI_MANIFEST)
    assert info.value.codes == ("MANIFEST_BLOB_UNKNOWN",)
    assert reg.tags(repo) == []


def test_push_an_image(reg: Registry) -> None:
    repo = unique_repo("app")
    layers = [layer_tar({"bin/tool": os.urandom(200_000)}),
              layer_tar({"etc/app.conf": b"greeting = hello\n"})]
    diff_ids = [sha256_digest(t) for t in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/bin/tool"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}},
                        separators=(",", ":")).encode()
    config_digest = sha256_digest(config)
    assert reg.tags(repo) == []
    assert reg.push_blob(repo, config_digest, io.BytesIO(config), len(config))
    for tar, diff_id in zip(layers, diff_ids, strict=True):
        assert reg.push_blob(repo, diff_id, io.BytesIO(tar), len(tar))
    body = oci_manifest(config_digest, len(config),
                        [(d, len(t)) for d, t in zip(diff_ids, layers, strict=True)])
    digest = reg.put_manifest(repo, "1.0", body, OCI_MANIFEST)
    assert reg.put_manifest(repo, "latest", body, OCI_MANIFEST) == digest
    assert reg.tags(repo) == ["1.0", "latest"]
    media_type, got, _ = reg.get_manifest(repo, "latest") or ("", b"", "")
    assert media_type == OCI_MANIFEST
    manifest = json.loads(got)
    assert manifest["config"] == {"mediaType": OCI_CONFIG, "digest": config_digest,
                                  "size": len(config)}
    assert [layer["digest"] for layer in manifest["layers"]] == diff_ids
    assert {layer["mediaType"] for layer in manifest["layers"]} == {OCI_LAYER_TAR}
    # A second image sharing the base: nothing to send for it.
    assert reg.push_blob(repo, diff_ids[0], io.BytesIO(layers[0]), len(layers[0])) is False


def test_oci_manifest_is_canonical() -> None:
    c, a, b = sha256_digest(b"c"), sha256_digest(b"a"), sha256_digest(b"b")
    body = oci_manifest(c, 1, [(a, 1), (b, 1)])
    assert b" " not in body and b"\n" not in body
    assert body == json.dumps(json.loads(body), separators=(",", ":"),
                              sort_keys=True).encode()
    parsed = json.loads(body)
    assert parsed["schemaVersion"] == 2 and parsed["mediaType"] == OCI_MANIFEST
    assert [x["digest"] for x in parsed["layers"]] == [a, b]
    with pytest.raises(RegistryError, match="invalid digest"):
        oci_manifest("sha256:abc", 1, [])


@pytest.mark.parametrize(("ref", "parts"), [
    ("outpost-demo/app:1.0", ("outpost-demo/app", "1.0")),
    ("outpost-demo/app", ("outpost-demo/app", "latest")),
    ("busybox", ("busybox", "latest")),
    ("a/c_d__e/f-g.h:v1.2-rc_3", ("a/c_d__e/f-g.h", "v1.2-rc_3")),
    ("a.b/c", ("c", "latest")),  # a first component with a dot is a registry host
    ("localhost:5000/app:2", ("app", "2")),
    ("127.0.0.1:5000/team/app", ("team/app", "latest")),
    ("ghcr.io/org/app:Tag_1", ("org/app", "Tag_1")),
])
def test_image_ref_parts(ref: str, parts: tuple[str, str]) -> None:
    assert image_ref_parts(ref) == parts


@pytest.mark.parametrize(("ref", "why"), [
    ("app@sha256:" + "0" * 64, "names a digest"),
    ("app:1.0@sha256:" + "0" * 64, "names a digest"),
    ("Outpost/App:1", "must be lowercase"),
    ("app:", "invalid tag"),
    ("app:.hidden", "invalid tag"),
    ("app/:1", "invalid repository name"),
    ("-app:1", "invalid repository name"),
    ("", "invalid repository name"),
])
def test_image_ref_parts_rejects(ref: str, why: str) -> None:
    with pytest.raises(RegistryError, match=why):
        image_ref_parts(ref)


# -- streaming ------------------------------------------------------------------------------

STREAM_SIZE = 512 * 1024 * 1024

STREAM_CHILD = """
import json, sys, time
from outpost.gateway.registry import Registry
address, path, digest, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
calls = []
t0 = time.monotonic()
with Registry(address) as reg, open(path, "rb") as f:
    uploaded = reg.push_blob("regtest/stream", digest, f, size,
                             progress=lambda n: calls.append(n))
    present = reg.has_blob("regtest/stream", digest)
elapsed = time.monotonic() - t0
hwm = next(int(line.split()[1]) for line in open("/proc/self/status")
           if line.startswith("VmHWM:"))
print(json.dumps({"uploaded": uploaded, "present": present, "last": calls[-1],
                  "calls": len(calls), "seconds": elapsed, "hwm_kib": hwm}))
"""


def test_push_512_mib_streams_in_bounded_memory(own_registry: RunningRegistry) -> None:
    source = own_registry.root.parent / "big.blob"
    with open(source, "wb") as f:
        # Sparse: costs no disk for the source, reads back as zeros.
        f.truncate(STREAM_SIZE)
    try:
        h = hashlib.sha256()
        zeros = bytes(1 << 20)
        for _ in range(STREAM_SIZE >> 20):
            h.update(zeros)
        digest = "sha256:" + h.hexdigest()
        out = subprocess.run(
            [sys.executable, "-c", STREAM_CHILD, own_registry.address, str(source), digest,
             str(STREAM_SIZE)],
            capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
        assert out.returncode == 0, out.stderr
        result: dict[str, Any] = json.loads(out.stdout)
    finally:
        source.unlink()
    print(f"512 MiB push: {result['seconds']:.1f}s, peak RSS {result['hwm_kib'] // 1024} MiB")
    assert result["uploaded"] and result["present"]
    assert result["last"] == STREAM_SIZE and result["calls"] == STREAM_SIZE >> 20
    assert result["hwm_kib"] < 100 * 1024, f"peak RSS {result['hwm_kib']} KiB"


# -- Docker round trip ----------------------------------------------------------------------


def test_docker_pull_of_pushed_image_keeps_the_image_id(
        docker_client: docker.DockerClient, registry: str, tmp_path: Path) -> None:
    """`docker save`, each blob pushed by our client, then `docker pull`: the same image ID.

    Docker and the registry it pulls from are the session's (tests/conftest.py), like every
    other test that needs Docker: where none answers, this fails with the reason.
    """
    token = uuid.uuid4().hex[:12]
    repo = "regtest/registry-client"
    local_tag = f"{repo}:{token}"
    pulled_ref = f"{registry}/{repo}:{token}"
    base = "outpost-test/registry-client-base:1"
    busybox_base(docker_client, base)
    # A fresh top layer every run, on a base layer the registry already holds after the first.
    image = build_image(docker_client, local_tag, {"/hello.txt": f"hello {token}\n"}, base,
                        cmd=["/bin/busybox", "cat", "/hello.txt"])
    original_id = image.id
    try:
        saved = tmp_path / "image.tar"
        with open(saved, "wb") as f:
            for chunk in image.save(named=False):
                f.write(chunk)

        with tarfile.open(saved) as tar, Registry(registry, timeout=30) as reg:
            (entry,) = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
            config = tar.extractfile(entry["Config"]).read()  # type: ignore[union-attr]
            config_digest = sha256_digest(config)
            assert config_digest == original_id
            diff_ids = json.loads(config)["rootfs"]["diff_ids"]
            assert len(diff_ids) == len(entry["Layers"]) == 2
            reg.push_blob(repo, config_digest, io.BytesIO(config), len(config))
            layers = []
            for name, diff_id in zip(entry["Layers"], diff_ids, strict=True):
                member = tar.getmember(name)
                # docker save's layer.tar is the uncompressed layer: its digest is the diff_id.
                reg.push_blob(repo, diff_id, tar.extractfile(member),  # type: ignore[arg-type]
                              member.size)
                layers.append((diff_id, member.size))
            reg.put_manifest(repo, token, oci_manifest(config_digest, len(config), layers),
                             OCI_MANIFEST)

        docker_client.images.remove(local_tag)
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(original_id)
        pulled = docker_client.images.pull(f"{registry}/{repo}", tag=token)
        assert pulled.id == original_id
    finally:
        for ref in (pulled_ref, local_tag):
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(ref)
