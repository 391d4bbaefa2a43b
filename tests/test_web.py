"""The status page's server and JSON API: real HTTP on loopback against real homes."""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from outpost.errors import ConfigError
from outpost.web import StatusServer, listen_address

from .helpers import Pair

# the API's shape: key -> type (a dict: nested object; a list of one dict: list of those)
PEER = {"name": str, "srtt": float, "rtt_samples": int, "outbox_files": int,
        "window": (dict, type(None))}
SENDING = {"id": str, "kind": str, "peer": str, "size": int, "units": int, "acked": int,
           "in_flight": int, "age": float, "expires_in": float}
BUNDLE = {"id": str, "kind": str, "peer": str, "size": int, "stage": str, "units": int,
          "bytes_left": int, "eta": (float, int, type(None)),
          "percent": float, "age": float}
STATUS = {"name": str, "role": str, "home": str, "now": float, "peers": [PEER],
          "sending": [SENDING], "bundles": [BUNDLE], "failed": list, "reassembling": list,
          "inbox_files": int, "delivered_seen": int, "quarantine": list}
EARTH = {**STATUS, "outposts": list, "reports": list, "fleet": dict}
OUTPOST = {**STATUS, "releases": list, "applies": list, "running": (dict, type(None)),
           "mirror_head": (str, type(None))}


def conforms(value: Any, schema: Any, where: str = "$") -> None:
    if isinstance(schema, dict):
        assert isinstance(value, dict), where
        for key, sub in schema.items():
            assert key in value, f"{where}.{key} missing"
            conforms(value[key], sub, f"{where}.{key}")
    elif isinstance(schema, list):
        assert isinstance(value, list), where
        for i, item in enumerate(value):
            conforms(item, schema[0], f"{where}[{i}]")
    elif schema is float:
        assert isinstance(value, int | float) and not isinstance(value, bool), where
    else:
        assert isinstance(value, schema), f"{where}: {type(value).__name__}"


def get(url: str, method: str = "GET",
        headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return Pair(tmp_path, fragment_size="64k")


@pytest.fixture
def served(pair: Pair) -> Iterator[tuple[Pair, str, str]]:
    a, b = StatusServer(pair.a_home, "127.0.0.1:0"), StatusServer(pair.b_home, "127.0.0.1:0")
    urls = a.start(), b.start()
    try:
        yield pair, *urls
    finally:
        a.stop()
        b.stop()


def test_status_api_matches_its_schema_at_both_ends_while_a_file_crosses(
        served: tuple[Pair, str, str]) -> None:
    pair, earth, mars = served
    msg = pair.a.sender.submit("mars", "file", io.BytesIO(b"x" * 300_000),
                               meta={"name": "f"}, codec="none")
    status, kind, body = get(earth + "api/status")
    assert status == 200 and kind.startswith("application/json")
    data = json.loads(body)
    conforms(data, EARTH)
    assert [m["id"] for m in data["sending"]] == [msg.id]
    assert [(b["id"], b["stage"]) for b in data["bundles"]] == [(msg.id, "queued")]
    pair.run(lambda: pair.a.node.state.message(msg.id).state == "delivered")
    conforms(json.loads(get(mars + "api/status")[2]), OUTPOST)
    done = json.loads(get(earth + "api/status")[2])["bundles"]
    assert [(b["id"], b["stage"], b["percent"]) for b in done] == [(msg.id, "acked", 100.0)]
    for daemon in (pair.a, pair.b):
        daemon.count_traffic()  # the running node does this every few seconds
    traffic = json.loads(get(earth + "api/traffic?minutes=5")[2])
    assert sum(r["bytes"] for r in traffic if r["dir"] == "out") >= 300_000
    assert sum(r["bytes"] for r in json.loads(get(mars + "api/traffic")[2])
               if r["dir"] == "in") >= 300_000


def test_page_and_chart_are_served_and_the_chart_is_svg(served: tuple[Pair, str, str]) -> None:
    _, earth, _ = served
    status, kind, body = get(earth)
    assert status == 200 and kind.startswith("text/html") and b"api/status" in body
    assert b"http://" not in body.replace(b"http://www.w3.org", b""), "the page fetches "\
        "something from elsewhere"
    status, kind, body = get(earth + "chart.svg?minutes=30")
    assert status == 200 and kind.startswith("image/svg+xml")
    assert ET.fromstring(body).tag.endswith("svg")
    assert get(earth + "nothing-here")[0] == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_only_get_and_head_are_answered(served: tuple[Pair, str, str], method: str) -> None:
    _, earth, _ = served
    status, _, _ = get(earth + "api/status", method=method)
    assert status == 405
    assert get(earth + "api/status", method="HEAD")[0] == 200


def test_off_loopback_every_request_needs_the_token(pair: Pair) -> None:
    server = StatusServer(pair.a_home, "0.0.0.0:0")
    url = server.start().replace("0.0.0.0", "127.0.0.1")
    try:
        token = (pair.a_home.path / "http.token").read_text().strip()
        assert (pair.a_home.path / "http.token").stat().st_mode & 0o077 == 0
        assert get(url + "api/status")[0] == 401
        assert get(url + "api/status?token=wrong")[0] == 401
        assert get(url + f"api/status?token={token}")[0] == 200
        assert get(url + "api/status", headers={"Authorization": f"Bearer {token}"})[0] == 200
    finally:
        server.stop()
    assert not (pair.a_home.path / "http.url").exists()


def test_addresses_are_checked(pair: Pair) -> None:
    assert listen_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert listen_address("[::1]:8470") == ("::1", 8470)
    for bad in ("8470", "host:", "host:99999"):
        with pytest.raises(ConfigError):
            listen_address(bad)
    taken = StatusServer(pair.a_home, "127.0.0.1:0")
    port = taken.start().rsplit(":", 1)[1].strip("/")
    try:
        with pytest.raises(ConfigError, match="--no-http"):
            StatusServer(pair.b_home, f"127.0.0.1:{port}")
    finally:
        taken.stop()




def test_the_registry_section_lists_what_the_outpost_registry_holds(pair: Pair,
                                                                   registry: str) -> None:
    """Against the real registry of scripts/services: an image pushed by the Registry API
    is listed with its tag, image ID and size; Earth has no registry section."""
    import hashlib
    import uuid
    from dataclasses import replace

    from outpost.gateway.registry import Registry, oci_manifest

    repo, layer, config = f"webtest/app-{uuid.uuid4().hex[:8]}", os.urandom(3000), b"{}"
    digests = {}
    with Registry(registry) as reg:
        for blob in (layer, config):
            digests[blob] = "sha256:" + hashlib.sha256(blob).hexdigest()
            reg.push_blob(repo, digests[blob], io.BytesIO(blob), len(blob))
        body = oci_manifest(digests[config], len(config), [(digests[layer], len(layer))])
        reg.put_manifest(repo, "v2", body, "application/vnd.oci.image.manifest.v1+json")
    mars = replace(pair.b_home, outpost=replace(pair.b_home.outpost, registry=registry))
    server = StatusServer(mars, "127.0.0.1:0")
    url = server.start()
    try:
        view = json.loads(get(url + "api/registry")[2])
    finally:
        server.stop()
    assert view["registry"].endswith(registry)
    [ours] = [r for r in view["repositories"] if r["name"] == repo]
    assert ours["tags"] == [{"tag": "v2", "digest": "sha256:" + hashlib.sha256(body).hexdigest(),
                             "image_id": digests[config], "size": len(config) + len(layer)}]
    earth = StatusServer(pair.a_home, "127.0.0.1:0")
    try:
        assert json.loads(get(earth.start() + "api/registry")[2])["registry"] is None
    finally:
        earth.stop()
