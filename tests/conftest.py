"""Session fixtures for tests that need Docker and a registry (see scripts/services).

Where the services come from, in order:
1. the environment, when OUTPOST_REGISTRY is set (`.ci/run` exports what it started);
2. `.services/env`, written by `scripts/services start`;
3. otherwise this session runs `scripts/services start --outpost-docker` itself, and stops
   them again at the end if it was the first to use `.services/` (start them once yourself
   to keep them between runs).

A test that needs them never skips because Docker is missing: it fails with the reason.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

REPO = Path(__file__).resolve().parent.parent
SERVICES_DIR = REPO / ".services"
SERVICES = [sys.executable, str(REPO / "scripts" / "services.py")]
NAMES = ("DOCKER_HOST", "OUTPOST_REGISTRY", "OUTPOST_DOCKER_OUTPOST")


def _load_script() -> Any:
    """scripts/services.py as a module, for its probes (docker_answers, registry_answers)."""
    spec = importlib.util.spec_from_file_location("outpost_services", SERVICES[1])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probes = _load_script()


@dataclass(frozen=True)
class Services:
    docker_host: str  # DOCKER_HOST, e.g. unix:///…/.services/docker.sock
    registry: str  # OUTPOST_REGISTRY, "127.0.0.1:PORT" (plain HTTP)
    outpost_docker_host: str | None  # OUTPOST_DOCKER_OUTPOST: a second daemon, if started

    def client(self, host: str | None = None) -> docker.DockerClient:
        env = {**os.environ, "DOCKER_HOST": host or self.docker_host}
        return docker.from_env(environment=env, timeout=300)


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            values[key] = value
    return values


def answering(values: dict[str, str]) -> Services | None:
    """Services from these values if the Docker daemon(s) and the registry answer."""
    registry = values.get("OUTPOST_REGISTRY")
    host = values.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    outpost = values.get("OUTPOST_DOCKER_OUTPOST") or None
    if not registry or not probes.registry_answers(registry) or \
            not probes.docker_answers(host):
        return None
    if outpost and not probes.docker_answers(outpost):
        outpost = None
    return Services(host, registry, outpost)


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    if os.environ.get("OUTPOST_REGISTRY"):
        found = answering({k: os.environ[k] for k in NAMES if k in os.environ})
        if found is None:
            pytest.fail("OUTPOST_REGISTRY is set, but the registry or Docker it names does "
                        "not answer (scripts/services status)", pytrace=False)
        yield found
        return
    env_file = SERVICES_DIR / "env"
    had_env = env_file.exists()
    if had_env and (found := answering(read_env_file(env_file))) is not None:
        yield found
        return
    run = subprocess.run([*SERVICES, "start", "--outpost-docker", "--dir", str(SERVICES_DIR)],
                         capture_output=True, text=True)
    if run.returncode != 0:
        pytest.fail(f"cannot start Docker and the registry (scripts/services start):\n"
                    f"{run.stderr}{run.stdout}", pytrace=False)
    found = answering(read_env_file(env_file))
    if found is None:
        pytest.fail(f"scripts/services started, but its services do not answer:\n"
                    f"{run.stdout}", pytrace=False)
    try:
        yield found
    finally:
        if not had_env:
            subprocess.run([*SERVICES, "stop", "--dir", str(SERVICES_DIR)],
                           capture_output=True, check=False)


@pytest.fixture(scope="session")
def docker_client(services: Services) -> Iterator[docker.DockerClient]:
    client = services.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def registry(services: Services) -> str:
    return services.registry


@pytest.fixture(scope="session")
def outpost_docker_client(services: Services) -> Iterator[docker.DockerClient]:
    """The outpost's own daemon; skips (with the reason) where no second daemon runs."""
    if services.outpost_docker_host is None:
        pytest.skip("no second Docker daemon: scripts/services start --outpost-docker")
    client = services.client(services.outpost_docker_host)
    yield client
    client.close()
