"""The services and image helpers the release tests stand on: quick checks with the real
Docker daemon(s) and registry (scripts/services)."""

from __future__ import annotations

import contextlib
import json
import urllib.request

import docker
import pytest

from .conftest import Services
from .images import app_image, busybox_base, image_facts, save_image

BASE = "outpost-test/services-base:1"


@pytest.fixture(scope="module")
def apps(docker_client: docker.DockerClient) -> dict[str, str]:
    """A base (busybox + 2 MiB) and two app versions on top of it; version -> tag."""
    busybox_base(docker_client, BASE, extra_mb=2)
    tags = {}
    for version in ("v1", "v2"):
        tags[version] = f"outpost-test/services-app:{version}"
        app_image(docker_client, tags[version], BASE, version)
    return tags


def forget(client: docker.DockerClient, ref: str) -> None:
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.remove(ref, force=True)


def test_registry_answers(registry: str) -> None:
    with urllib.request.urlopen(f"http://{registry}/v2/", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


def test_app_versions_share_the_base_layer(docker_client: docker.DockerClient,
                                           apps: dict[str, str]) -> None:
    _, base_layers = image_facts(docker_client, BASE)
    v1_id, v1_layers = image_facts(docker_client, apps["v1"])
    v2_id, v2_layers = image_facts(docker_client, apps["v2"])
    assert len(base_layers) == 1
    assert len(v1_layers) == len(v2_layers) == 2
    assert v1_layers[0] == v2_layers[0] == base_layers[0]
    assert v1_layers[1] != v2_layers[1]
    assert v1_id != v2_id


def test_layers_are_reproducible(docker_client: docker.DockerClient,
                                 apps: dict[str, str]) -> None:
    """Built again without the cache, the same content gives the same diff_ids (the image
    ID differs: the config records when it was built)."""
    busybox_base(docker_client, "outpost-test/services-base:again", extra_mb=2, nocache=True)
    app_image(docker_client, "outpost-test/services-app:v1-again",
              "outpost-test/services-base:again", "v1", nocache=True)
    assert image_facts(docker_client, "outpost-test/services-app:v1-again")[1] == \
        image_facts(docker_client, apps["v1"])[1]


def test_a_container_runs_from_a_built_image(docker_client: docker.DockerClient,
                                             apps: dict[str, str]) -> None:
    out = docker_client.containers.run(apps["v2"], ["sh", "-c", "echo hello; cat /app/version.txt"],
                                       network_mode="none", remove=True)
    assert out == b"hello\nv2\n"


def test_save_and_load_keep_the_image_id(docker_client: docker.DockerClient,
                                         outpost_docker_client: docker.DockerClient,
                                         apps: dict[str, str]) -> None:
    image_id, layers = image_facts(docker_client, apps["v1"])
    forget(outpost_docker_client, image_id)
    outpost_docker_client.images.load(save_image(docker_client, apps["v1"]))
    assert image_facts(outpost_docker_client, apps["v1"]) == (image_id, layers)


def test_a_pull_from_the_registry_keeps_the_image_id(
        docker_client: docker.DockerClient, outpost_docker_client: docker.DockerClient,
        services: Services, apps: dict[str, str]) -> None:
    """Plain-HTTP registry on loopback: Docker pushes to it and pulls from it without any
    TLS set-up, and the pulled image has the ID the source daemon has."""
    repo = f"{services.registry}/outpost-test/services-app"
    image_id, layers = image_facts(docker_client, apps["v2"])
    docker_client.images.get(apps["v2"]).tag(repo, "v2")
    for line in docker_client.images.push(repo, "v2", stream=True, decode=True):
        assert "error" not in line, json.dumps(line)
    forget(outpost_docker_client, image_id)
    outpost_docker_client.images.pull(repo, tag="v2")
    assert image_facts(outpost_docker_client, f"{repo}:v2") == (image_id, layers)
