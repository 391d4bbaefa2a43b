"""Earth's own Docker Engine API client (images/engine.py) against the real daemon."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import docker
import pytest

from outpost.errors import ConfigError, DockerError
from outpost.images.docker_source import docker_engine, image_facts
from outpost.images.engine import Engine

from .conftest import Services
from .images import busybox_base
from .images import image_facts as sdk_facts


def test_inspect_and_save_agree_with_the_sdk(services: Services,
                                             docker_client: docker.DockerClient) -> None:
    ref = "outpost-test/engine-base:1"
    busybox_base(docker_client, ref)
    engine = docker_engine(services.docker_host)
    facts = image_facts(engine, ref)
    assert (facts.image_id, facts.diff_ids) == sdk_facts(docker_client, ref)
    data = b"".join(engine.save(ref))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    assert "manifest.json" in names


def test_an_image_earth_lacks_is_a_clear_config_error(services: Services) -> None:
    engine = docker_engine(services.docker_host)
    with pytest.raises(ConfigError, match="not in Earth's Docker daemon"):
        engine.inspect_image("outpost-test/never-built:nope")


def test_no_daemon_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(DockerError, match="no Docker daemon answers") as info:
        docker_engine(f"unix://{tmp_path}/missing.sock")
    assert "\n" not in str(info.value)
    with pytest.raises(DockerError, match="unix:///path or tcp://"):
        Engine("ftp://nope")
