"""compose.yaml: docker-compose accepts it, and the stack it describes carries a release.

The slow test builds the node image (scripts/build-node-image: a debootstrapped base, made
once per Docker daemon, then wheels and `docker build`), brings the whole stack up on the
tests' Docker daemon with its own project name, registry port and volumes, publishes a
release from Earth's config repo inside the earth volume and waits until the outpost runs
it; `docker-compose down -v` removes it all again, whatever happened.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from .conftest import REPO, Services, probes
from .images import busybox_base
from .test_e2e_release import config_text, registry_image_id

COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="docker-compose is not installed (scripts/system-deps)")
SERVICES = {"setup", "registry", "earth", "outpost", "link"}
VOLUMES = {"earth-home", "outpost-home", "link-state", "registry-data"}
# the node image the test builds: a tag of its own, so a stack of yours keeps its image
IMAGE = "outpost-test/node:compose"
BUILD_TIMEOUT = 600  # a fresh base image: debootstrap from the mirror, about a minute here
EARTH_CONFIG = "/homes/earth/config"


def compose(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
            stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert COMPOSE is not None
    run = subprocess.run([COMPOSE, "-f", str(REPO / "compose.yaml"), *args], cwd=REPO,
                         env=env, input=stdin, capture_output=True, text=True,
                         timeout=timeout)
    if check and run.returncode != 0:
        raise AssertionError(f"docker-compose {' '.join(args)} failed:\n"
                             f"{run.stderr}{run.stdout}")
    return run


@needs_compose
def test_docker_compose_accepts_compose_yaml() -> None:
    compose("config", "--quiet")
    assert set(compose("config", "--services").stdout.split()) == SERVICES
    assert set(compose("config", "--volumes").stdout.split()) == VOLUMES


@needs_compose
def test_every_service_has_host_networking_or_none() -> None:
    """The Docker daemons here have no bridge (dockerd --bridge=none)."""
    text = compose("config").stdout
    modes = [line.split(":", 1)[1].strip() for line in text.splitlines()
             if line.strip().startswith("network_mode:")]
    assert len(modes) == len(SERVICES), text
    assert set(modes) <= {"host", "none"}


def socket_path(docker_host: str) -> str:
    if not docker_host.startswith("unix://"):
        pytest.skip(f"the stack mounts the Docker socket, and DOCKER_HOST is {docker_host}, "
                    "not unix://")
    return docker_host[len("unix://"):]


def build_node_image(services: Services) -> float:
    """Build the base (skip if debootstrap cannot: no mirror) and the node image; seconds."""
    env = {**os.environ, "DOCKER_HOST": services.docker_host, "OUTPOST_IMAGE": IMAGE}
    start = time.monotonic()
    base = subprocess.run([str(REPO / "scripts" / "build-base-image")], env=env,
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    if base.returncode != 0:
        if "debootstrap" in base.stderr:
            pytest.skip("cannot build the base image (scripts/build-base-image): "
                        + base.stderr.strip().splitlines()[-1])
        raise AssertionError(f"scripts/build-base-image failed:\n{base.stderr}")
    node = subprocess.run([str(REPO / "scripts" / "build-node-image")], env=env,
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert node.returncode == 0, f"scripts/build-node-image failed:\n{node.stderr}"
    return time.monotonic() - start


class Stack:
    """One project of compose.yaml on the tests' Docker daemon."""

    def __init__(self, services: Services) -> None:
        self.project = f"outposttest{uuid.uuid4().hex[:10]}"
        self.port = probes.free_port()
        outpost_docker = services.outpost_docker_host or services.docker_host
        self.env = {**os.environ,
                    "DOCKER_HOST": services.docker_host,
                    "OUTPOST_IMAGE": IMAGE,
                    "EARTH_DOCKER_SOCKET": socket_path(services.docker_host),
                    "OUTPOST_DOCKER_SOCKET": socket_path(outpost_docker),
                    "OUTPOST_REGISTRY_PORT": str(self.port),
                    "LINK_LATENCY": "200ms",
                    "NODE_SETTINGS": "rtt=1s ack_delay=100ms rescan=1s"}

    def __call__(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return compose("-p", self.project, *args, env=self.env, **kw)

    def exec(self, service: str, *args: str, stdin: str | None = None) -> str:
        return self("exec", "-T", service, *args, stdin=stdin).stdout

    def outpost_status(self) -> Any:
        return json.loads(self.exec("outpost", "outpost-node", "status", "--home",
                                    "/homes/outpost", "--json"))

    def logs(self) -> str:
        run = self("logs", "--no-color", "--tail", "40", check=False)
        return run.stdout + run.stderr

    def down(self) -> None:
        self("down", "--volumes", "--timeout", "10", check=False)


@pytest.fixture
def stack(services: Services) -> Iterator[Stack]:
    s = Stack(services)
    try:
        yield s
    finally:
        s.down()


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
@needs_compose
def test_a_release_crosses_the_compose_stack(services: Services, stack: Stack,
                                             docker_client: docker.DockerClient) -> None:
    built = build_node_image(services)
    ref = "outpost-test/compose-app:1"
    busybox_base(docker_client, ref)
    start = time.monotonic()
    stack("up", "--detach", timeout=180)
    assert set(stack("ps", "--services", "--filter", "status=running").stdout.split()) == \
        SERVICES - {"setup"}, stack.logs()

    stack.exec("earth", "sh", "-c", f"cat > {EARTH_CONFIG}/outpost.toml",
               stdin=config_text([ref]))
    stack.exec("earth", "git", "-C", EARTH_CONFIG, "commit", "-qam", "release 1")
    commit = stack.exec("earth", "git", "-C", EARTH_CONFIG, "rev-parse", "HEAD").strip()
    stack.exec("earth", "outpost-node", "publish", "--home", "/homes/earth")

    deadline = time.monotonic() + 120
    status = stack.outpost_status()
    while (status["running"] or {}).get("commit") != commit:
        assert time.monotonic() < deadline, \
            f"release {commit[:12]} not running at the outpost after 120 s: {status}\n" \
            f"{stack.logs()}"
        time.sleep(1)
        status = stack.outpost_status()
    crossed = time.monotonic() - start
    assert registry_image_id(f"127.0.0.1:{stack.port}", ref) == \
        docker_client.images.get(ref).id, "the outpost's registry holds another image"
    # `pytest -s` shows where the time went
    print(f"\ncompose stack: images built in {built:.0f}s, up to release running "
          f"{crossed:.0f}s")
