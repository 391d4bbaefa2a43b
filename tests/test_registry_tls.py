"""The outpost's registry over TLS with its own CA (docs/registry-tls.md): what `init
--registry-tls` makes, the node's registry client, and the real registry served with it by
`scripts/services --registry-tls`, which Docker pulls from only once the CA is installed.

Docker treats a registry on 127.0.0.0/8 as insecure and skips TLS checks there, so the
Docker tests serve the registry on a non-loopback IPv4 address of this machine."""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import docker
import docker.errors
import pytest
from cryptography import x509

from outpost import tls
from outpost.errors import ConfigError, RegistryError
from outpost.gateway.registry import Registry, outpost_registry
from outpost.home import Home, load_home
from outpost.node.setup import init_home

from .conftest import SERVICES, Services, read_env_file
from .images import busybox_base, image_facts, save_image
from .procs import tool

CERTS_D = Path("/etc/docker/certs.d")
IMAGE = "outpost-test/tls-app:1"


def host_ipv4() -> str | None:
    """A non-loopback IPv4 address of this machine, if it has one."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for line in out.splitlines():  # "2: eth0    inet 192.0.2.2/24 brd ... scope global eth0"
        words = line.split()
        if "inet" in words:
            address = words[words.index("inet") + 1].split("/")[0]
            if not address.startswith("127."):
                return address
    return None


def handshake(folder: Path, server_name: str, cafile: Path) -> None:
    """A TLS handshake in memory: the server with the registry's certificate and key, the
    client trusting `cafile` and checking `server_name` (raises ssl.SSLError if not)."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(folder / tls.SERVER_CERT, folder / tls.SERVER_KEY)
    client_ctx = ssl.create_default_context(cafile=str(cafile))
    pipes = [ssl.MemoryBIO() for _ in range(4)]  # client in/out, server in/out
    client = client_ctx.wrap_bio(pipes[0], pipes[1], server_hostname=server_name)
    server = server_ctx.wrap_bio(pipes[2], pipes[3], server_side=True)
    done = {id(client): False, id(server): False}
    for _ in range(10):
        for end, out, into in ((client, pipes[1], pipes[2]), (server, pipes[3], pipes[0])):
            with contextlib.suppress(ssl.SSLWantReadError):
                end.do_handshake()
                done[id(end)] = True
            into.write(out.read())
        if all(done.values()):
            return
    raise AssertionError("the TLS handshake did not finish")


# -------------------------------------------------------------------- tls.py, init (fast)


def test_the_ca_signs_a_registry_certificate_for_its_names(tmp_path: Path) -> None:
    names = tls.registry_tls_names("10.0.0.5:5000", ["reg.mars.local", "192.0.2.9"])
    assert names == ["localhost", "127.0.0.1", "10.0.0.5", "reg.mars.local", "192.0.2.9"]
    folder = tmp_path / "tls"
    tls.write_registry_tls(folder, tls.create_registry_tls("mars", names))
    for name in tls.FILES:
        mode = stat.S_IMODE((folder / name).stat().st_mode)
        assert mode == (0o600 if name.endswith(".key") else 0o644), name
    ca = x509.load_pem_x509_certificate((folder / tls.CA_CERT).read_bytes())
    cert = x509.load_pem_x509_certificate((folder / tls.SERVER_CERT).read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n) for n in san.get_values_for_type(x509.IPAddress)] == \
        ["127.0.0.1", "10.0.0.5", "192.0.2.9"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "reg.mars.local"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for server_name in ("10.0.0.5", "reg.mars.local", "localhost"):
        handshake(folder, server_name, folder / tls.CA_CERT)
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(folder, "10.0.0.6", folder / tls.CA_CERT)
    with pytest.raises(ConfigError, match="exists already"):
        tls.write_registry_tls(folder, tls.create_registry_tls("mars", names))


def test_another_ca_does_not_verify_the_certificate(tmp_path: Path) -> None:
    tls.write_registry_tls(tmp_path / "a", tls.create_registry_tls("a", ["10.0.0.5"]))
    tls.write_registry_tls(tmp_path / "b", tls.create_registry_tls("b", ["10.0.0.5"]))
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(tmp_path / "a", "10.0.0.5", tmp_path / "b" / tls.CA_CERT)


@pytest.mark.parametrize("name", ["1.2.3.4:5000", "https://reg", "bad_name", "-x", ""])
def test_a_bad_tls_name_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="--tls-name"):
        tls.check_tls_name(name)


def test_init_registry_tls_makes_the_ca_and_records_it(tmp_path: Path) -> None:
    home = init_home(tmp_path / "mars", "outpost", "mars", registry="10.0.0.5:5000",
                     registry_tls=True, tls_names=["reg.mars.local"])
    assert home.outpost.registry_ca == "tls/ca.crt"
    assert 'registry_ca = "tls/ca.crt"' in (home.path / "node.toml").read_text()
    assert sorted(p.name for p in (home.path / "tls").iterdir()) == sorted(tls.FILES)
    handshake(home.path / "tls", "reg.mars.local", home.path / "tls" / "ca.crt")
    # init again is a no-op that keeps the CA
    ca = (home.path / "tls" / "ca.crt").read_bytes()
    init_home(home.path, "outpost", registry_tls=True)
    assert (home.path / "tls" / "ca.crt").read_bytes() == ca


def test_init_registry_tls_mistakes_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="outpost home"):
        init_home(tmp_path / "earth", "earth", registry_tls=True)
    with pytest.raises(ConfigError, match="--tls-name"):
        init_home(tmp_path / "mars", "outpost", registry_tls=True, tls_names=["a:1"])
    with pytest.raises(ConfigError, match="needs --registry-tls"):
        init_home(tmp_path / "mars", "outpost", tls_names=["reg"])
    assert list(tmp_path.iterdir()) == []
    plain = init_home(tmp_path / "plain", "outpost")
    with pytest.raises(ConfigError, match="already a home"):
        init_home(plain.path, "outpost", registry_tls=True)


def test_the_outpost_registry_client_follows_registry_ca(tmp_path: Path) -> None:
    home = init_home(tmp_path / "mars", "outpost", registry="10.0.0.5:5000",
                     registry_tls=True)
    with outpost_registry(home.outpost, home.path) as reg:
        assert reg.url == "https://10.0.0.5:5000"
    plain = replace(home.outpost, registry_ca=None)
    with outpost_registry(plain, home.path) as reg:
        assert reg.url == "http://10.0.0.5:5000"
    with pytest.raises(ConfigError, match="no CA file"):
        outpost_registry(replace(home.outpost, registry_ca="tls/missing.crt"), home.path)
    with pytest.raises(ConfigError, match="no outpost registry"):
        outpost_registry(replace(home.outpost, registry=None), home.path)


def test_the_ca_from_the_environment_goes_with_its_registry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_home(tmp_path / "env", "outpost")
    init_home(tmp_path / "own", "outpost", registry="127.0.0.1:5000")
    monkeypatch.setenv("OUTPOST_REGISTRY", "10.0.0.5:5443")
    monkeypatch.setenv("OUTPOST_REGISTRY_CA", "/srv/tls/ca.crt")
    assert load_home(tmp_path / "env").outpost.registry_ca == "/srv/tls/ca.crt"
    assert load_home(tmp_path / "own").outpost.registry_ca is None


# -------------------------------------------------------------------- the real registry


class TlsSite(NamedTuple):
    home: Home
    address: str  # IP:PORT of the TLS registry scripts/services started
    image_id: str  # the image pushed there as IMAGE


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, services: Services,
         docker_client: docker.DockerClient) -> Iterator[TlsSite]:
    """An outpost home with its CA, its registry served by scripts/services over TLS on a
    non-loopback address (a --dir of its own, so the shared services stay as they are), and
    a small image imported into it by `outpost-node import` through the node's client."""
    ip = host_ipv4()
    if ip is None:
        pytest.skip("no non-loopback IPv4 address here: Docker checks TLS only off loopback")
    root = tmp_path_factory.mktemp("tls")
    home = init_home(root / "mars", "outpost", "mars", registry_tls=True, tls_names=[ip])
    svc = root / "svc"
    env = {**os.environ, "DOCKER_HOST": services.docker_host}  # reuse, never start, Docker
    run = subprocess.run([*SERVICES, "start", "--dir", str(svc), "--registry-tls",
                          str(home.path), "--registry-addr", ip],
                         capture_output=True, text=True, env=env)
    try:
        assert run.returncode == 0, f"scripts/services start failed: {run.stderr}"
        exports = read_env_file(svc / "env")
        assert exports["OUTPOST_REGISTRY_CA"] == str(home.path / "tls" / "ca.crt")
        address = exports["OUTPOST_REGISTRY"]
        assert address.startswith(f"{ip}:")
        image_id = _push(docker_client, home, address, root / "image.tar")
        yield TlsSite(home, address, image_id)
    finally:
        subprocess.run([*SERVICES, "stop", "--dir", str(svc)], capture_output=True, env=env,
                       check=False)
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(IMAGE, force=True)


def _push(client: docker.DockerClient, home: Home, address: str, tar: Path) -> str:
    busybox_base(client, IMAGE)
    tar.write_bytes(save_image(client, IMAGE))
    run = subprocess.run([tool("outpost-node"), "import", "--home", str(home.path),
                          "--registry", address, str(tar)], capture_output=True, text=True)
    assert run.returncode == 0, f"outpost-node import failed: {run.stderr}"
    return image_facts(client, IMAGE)[0]


@contextlib.contextmanager
def docker_trusts(address: str, ca: Path) -> Iterator[None]:
    """The CA installed where Docker looks for this registry's, removed again afterwards."""
    made_root = not CERTS_D.exists()
    folder = CERTS_D / address
    folder.mkdir(parents=True, exist_ok=False)
    try:
        shutil.copyfile(ca, folder / "ca.crt")
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if made_root:
            with contextlib.suppress(OSError):
                CERTS_D.rmdir()


def test_the_node_client_reaches_the_registry_with_its_ca(site: TlsSite) -> None:
    settings = replace(site.home.outpost, registry=site.address)
    with outpost_registry(settings, site.home.path) as reg:
        reg.ping()
        assert reg.tags("outpost-test/tls-app") == ["1"]


def test_without_the_ca_the_client_fails_clearly(site: TlsSite, tmp_path: Path) -> None:
    with Registry(f"https://{site.address}", timeout=10) as reg, \
            pytest.raises(RegistryError, match=r"TLS with registry .* failed .*certificate"):
        reg.ping()  # the system's CAs only
    other = tmp_path / "other"
    tls.write_registry_tls(other, tls.create_registry_tls("other", [site.address]))
    settings = replace(site.home.outpost, registry=site.address,
                       registry_ca=str(other / "ca.crt"))
    with outpost_registry(settings, site.home.path) as reg, \
            pytest.raises(RegistryError, match="certificate verify failed"):
        reg.ping()


def test_docker_pulls_through_tls_only_with_the_ca_installed(
        site: TlsSite, docker_client: docker.DockerClient) -> None:
    ref = f"{site.address}/{IMAGE}"
    assert not (CERTS_D / site.address).exists()
    with pytest.raises(docker.errors.APIError) as refused:
        docker_client.images.pull(ref)
    assert any(word in str(refused.value) for word in
               ("x509", "certificate", "unknown authority")), str(refused.value)
    try:
        with docker_trusts(site.address, site.home.path / "tls" / "ca.crt"):
            pulled = docker_client.images.pull(ref)
        assert pulled.id == site.image_id
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(ref)
    assert not (CERTS_D / site.address).exists()
