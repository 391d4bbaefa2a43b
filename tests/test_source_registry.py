"""Earth's images from a registry (issue 11, part 2): credentials, the layer cache, and a
release published from a real distribution registry with basic auth by an Earth that has
no Docker daemon, through link-sim, into the outpost's registry with the same image IDs."""

from __future__ import annotations

import http.server
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import docker
import pytest

from outpost.errors import ConfigError, RegistryError
from outpost.gateway.auth import Credentials, authorization, parse_challenge
from outpost.gateway.registry import Registry
from outpost.home import Home
from outpost.node.setup import init_home, trust_peer
from outpost.progress import silent
from outpost.sources.cache import DigestMismatch, LayerCache
from outpost.sources.registry import RegistrySource, _address

from .conftest import Services
from .images import app_image, busybox_base, image_facts
from .procs import assert_clean_log, cli, start_link, start_node, wait_for
from .source_registry import auth_registry, served
from .test_e2e_release import SETTINGS, Site, registry_image_id

USER, PASSWORD = "ci", "s3cret pass"
NO_DOCKER = "unix:///nonexistent/docker.sock"


# ------------------------------------------------------------------- pure parts

def test_challenges_and_credentials(tmp_path: Path) -> None:
    assert parse_challenge('Bearer realm="https://auth.example/token",service="reg",'
                           'scope="repository:a/b:pull"') == (
        "bearer", {"realm": "https://auth.example/token", "service": "reg",
                   "scope": "repository:a/b:pull"})
    assert parse_challenge('Basic realm="outpost-source"') == ("basic",
                                                               {"realm": "outpost-source"})
    (tmp_path / "basic").write_text("ci:pa:ss\n")
    (tmp_path / "token").write_text("abc.def.ghi\n")
    assert Credentials.from_file(tmp_path / "basic") == Credentials("ci", "pa:ss")
    assert Credentials.from_file(tmp_path / "token") == Credentials(token="abc.def.ghi")
    assert authorization('Basic realm="x"', Credentials("ci", "pa:ss"), "r") == \
        "Basic Y2k6cGE6c3M="
    assert authorization('Bearer realm="https://a/t"', Credentials(token="T"), "r") == \
        "Bearer T"
    with pytest.raises(RegistryError, match="holds a token"):
        authorization('Basic realm="x"', Credentials(token="T"), "r")
    with pytest.raises(ConfigError, match="cannot read"):
        Credentials.from_file(tmp_path / "missing")


class _TokenService(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization", "")))
        ok = self.headers.get("Authorization") == "Basic Y2k6cHc="
        body = json.dumps({"token": "tok-1"}).encode() if ok else b"{}"
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def token_service() -> Iterator[str]:
    """A token service of the Docker token protocol: a stand-in, because the one registry
    this machine has (distribution) serves tokens only with a signing CA and an issuer we
    would have to write; the protocol is small and checked here end to end over HTTP."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _TokenService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/token"
    server.shutdown()


def test_a_bearer_challenge_is_answered_with_a_token_from_its_realm(token_service: str) -> None:
    challenge = f'Bearer realm="{token_service}",service="reg",scope="repository:a/b:pull"'
    assert authorization(challenge, Credentials("ci", "pw"), "r") == "Bearer tok-1"
    path, sent = _TokenService.seen[-1]
    assert path == "/token?service=reg&scope=repository%3Aa%2Fb%3Apull" and sent.startswith(
        "Basic ")
    with pytest.raises(RegistryError, match="refused the credentials"):
        authorization(challenge, Credentials("ci", "wrong"), "r")


def test_the_source_address_says_its_scheme() -> None:
    assert _address("127.0.0.1:5000", False) == ("127.0.0.1:5000", "http")
    assert _address("localhost:5000", False) == ("localhost:5000", "http")
    assert _address("registry.example:443", False) == ("registry.example:443", "https")
    assert _address("127.0.0.1:5000", True) == ("127.0.0.1:5000", "https")
    assert _address("http://10.0.0.5:5000/", False) == ("10.0.0.5:5000", "http")


def _put(cache: LayerCache, data: bytes) -> str:
    import hashlib
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with cache.writing(digest) as out:
        out.write(data)
    return digest


def test_the_layer_cache_keeps_what_matches_and_drops_the_least_recently_used(
        tmp_path: Path) -> None:
    cache = LayerCache(tmp_path, limit=3 * 4096)
    a, b, c = (_put(cache, bytes([i]) * 4096) for i in range(3))
    other = a[:-1] + ("0" if a[-1] != "0" else "1")
    with pytest.raises(DigestMismatch), cache.writing(other) as out:
        out.write(b"not it")
    assert not list((tmp_path / "blobs").glob(".*"))  # nothing half-written is left
    cache.trim()  # the publish that wrote them is over: its files may go from now on
    for path, age in ((cache.blobs / a.replace(":", "-"), 30), (cache.blobs /
                      b.replace(":", "-"), 20), (cache.blobs / c.replace(":", "-"), 10)):
        os.utime(path, (time.time() - age, time.time() - age))
    assert cache.blob(a) is not None  # used now: the newest
    d = _put(cache, b"d" * 4096)
    assert cache.trim() == 4096
    assert cache.blob(b) is None and all(cache.blob(x) for x in (a, c, d))
    assert cache.size() <= 3 * 4096
    cache.trim()  # a long-lived node's cache: what one publish used may go after the next
    for x, age in ((a, 30), (c, 20), (d, 10)):
        os.utime(cache.blobs / x.replace(":", "-"), (time.time() - age, time.time() - age))
    _put(cache, b"e" * 4096)
    assert cache.trim() == 4096 and cache.blob(a) is None


# ------------------------------------------------------------------- the real registry

@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with auth_registry(tmp_path_factory.mktemp("source"), USER, PASSWORD) as address:
        yield address


def push(client: docker.DockerClient, address: str, ref: str) -> None:
    repo, tag = ref.rsplit(":", 1)
    client.images.get(ref).tag(f"{address}/{repo}", tag)
    out = client.images.push(f"{address}/{repo}", tag,
                             auth_config={"username": USER, "password": PASSWORD})
    assert '"error"' not in out, out[-500:]


def test_the_source_reads_what_docker_pushed(source: str, docker_client: docker.DockerClient,
                                             tmp_path: Path) -> None:
    base, ref = "outpost-test/src-base:1", "outpost-test/src-app:1"
    busybox_base(docker_client, base)
    app_image(docker_client, ref, base, "src1", size_kb=200)
    push(docker_client, source, ref)
    cache = LayerCache(tmp_path / "cache", 1 << 30)
    reg = RegistrySource(Registry(source, auth=Credentials(USER, PASSWORD)), "linux_amd64",
                         cache)
    facts = reg.facts(ref)
    assert (facts.image_id, facts.diff_ids) == image_facts(docker_client, ref)
    files = reg.files(facts, set(facts.diff_ids), silent)
    assert set(files) == {facts.image_id, *facts.diff_ids}
    import hashlib
    for digest, path in files.items():  # gzip as pushed, decompressed to the diff_id
        assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == digest
    offline = RegistrySource(Registry("127.0.0.1:9", auth=Credentials(USER, PASSWORD)),
                             "linux_amd64", LayerCache(tmp_path / "cache", 1 << 30))
    assert offline.files(facts, set(facts.diff_ids), silent) == files  # from the cache
    with pytest.raises(RegistryError, match="refused the credentials"):
        RegistrySource(Registry(source, auth=Credentials(USER, "wrong")), "linux_amd64",
                       cache).facts(ref)
    with pytest.raises(ConfigError, match=r"is not in the registry .* push it there"):
        reg.facts("outpost-test/src-app:nope")


def test_earth_publishes_from_the_registry_with_no_docker_daemon(
        tmp_path: Path, services: Services, source: str,
        docker_client: docker.DockerClient) -> None:
    """Two outposts (mars on the shared registry, moon on one of its own), each behind its
    own lossy link-sim: both get v1, then v2 as a delta, as one shared bundle each time."""
    site = Site(tmp_path, services, "outpost-test/src-e2e")
    base, app = f"{site.prefix}-base:1", f"{site.prefix}-app"
    busybox_base(docker_client, base)
    for v in ("v1", "v2"):
        app_image(docker_client, f"{app}:{v}", base, v, size_kb=400)
        push(docker_client, source, f"{app}:{v}")
    (site.earth.path / "source-auth").write_text(f"{USER}:{PASSWORD}\n")
    toml = site.earth.path / "node.toml"
    text = toml.read_text()
    table = f'source_registry = "{source}"\nsource_auth = "source-auth"\n'
    toml.write_text(text.replace("[earth]\n", f"[earth]\n{table}", 1) if "[earth]\n" in text
                    else f"{text}\n[earth]\n{table}")
    site.env = {"DOCKER_HOST": NO_DOCKER}  # Earth's commands and node: no daemon at all
    outpost_env = {"DOCKER_HOST": services.docker_host}
    with served(tmp_path / "moon-registry") as moon_registry:
        moon = init_home(tmp_path / "moon" / "home", "outpost", "moon", SETTINGS,
                         registry=moon_registry)
        with open(moon.path / "node.toml", "a") as f:
            f.write('sync_interval = "1h"\n')
        trust_peer(site.earth, moon.path)
        trust_peer(moon, site.earth.path)
        site.procs = [start_link(site.earth.path, site.mars.path, tmp_path / "link",
                                 "--latency", "200ms", "--loss", "0.05", "--seed", "3"),
                      start_link(site.earth.path, moon.path, tmp_path / "moon" / "link",
                                 "--latency", "350ms", "--loss", "0.1", "--seed", "4"),
                      start_node(site.earth.path, "earth", env=site.env),
                      start_node(site.mars.path, "outpost", env=outpost_env),
                      start_node(moon.path, "outpost", env=outpost_env)]
        for v in ("v1", "v2"):
            commit = site.commit([f"{app}:{v}"], v)
            sent = site.publish()
            for home in (site.mars, moon):
                wait_for(lambda c=commit, h=home: ready(h, c), 120,
                         f"{v} ready at {home.name}")
            wait_for(lambda: not site.status(site.earth)["sending"], 60,
                     "Earth's custody empty (the outposts' acks home)")
            image_id = image_facts(docker_client, f"{app}:{v}")[0]
            assert registry_image_id(services.registry, f"{app}:{v}") == image_id
            assert registry_image_id(moon_registry, f"{app}:{v}") == image_id
            images = {r["peer"]: m["id"] for r in sent for m in r["messages"]
                      if m["kind"] == "image"}
            assert images["mars"].split("@")[0] == images["moon"].split("@")[0], images
    what = " ".join(m["what"] for r in sent for m in r["messages"])
    assert re.search(r"1 of \d layers, 1 as deltas", what), what  # v2 against v1, cached
    assert list((site.earth.path / "spool" / "cache" / "blobs").iterdir())
    for p in site.procs:
        p.terminate()
        p.wait(20)
    assert_clean_log(site.earth.path)


def ready(home: Home, commit: str) -> bool:
    return any(r["commit_id"] == commit and r["state"] == "ready"
               for r in cli("status", "--home", str(home.path))["releases"])
