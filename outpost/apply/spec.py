"""What the docker applier runs, as plain data (pure): one container spec per service.

A spec holds everything that decides how a container is created: the image pinned by
digest in the outpost registry, the command, environment, network and ports. Its hash
names the container and labels it, so a service whose spec did not change between two
releases keeps its running container, and the applier finds its own containers again after
a restart by their labels. The health check is not part of the hash: changing it does not
restart the service.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..release.config import Health, Service

LABEL = "org.outpost"
SITE, NODE, SERVICE, RELEASE, SPEC = (f"{LABEL}.{k}" for k in (
    "site", "node", "service", "release", "spec"))


def container_spec(service: Service, pinned: str, image_id: str, site: str) -> dict[str, Any]:
    """The spec of `service` running `pinned` (REGISTRY/name@sha256:...)."""
    spec: dict[str, Any] = {
        "service": service.name, "image": pinned, "image_id": image_id,
        "command": service.command, "env": dict(sorted(service.env.items())),
        "network": service.network, "ports": list(service.ports), "init": service.init,
    }
    digest = hashlib.sha256(json.dumps([site, spec], sort_keys=True).encode()).hexdigest()
    spec["hash"] = digest[:32]
    spec["name"] = f"outpost-{service.name}-{digest[:10]}"
    spec["health"] = health_dict(service.health)
    return spec


def health_dict(health: Health | None) -> dict[str, Any] | None:
    if health is None:
        return None
    return {"command": health.command, "url": health.url, "interval": health.interval,
            "retries": health.retries, "timeout": health.timeout}


def health_of(spec: dict[str, Any]) -> Health | None:
    h = spec.get("health")
    return None if h is None else Health(**h)


def labels(spec: dict[str, Any], site: str, node: str, commit: str) -> dict[str, str]:
    return {SITE: site, NODE: node, SERVICE: spec["service"], RELEASE: commit,
            SPEC: spec["hash"]}


def parse_port(port: str) -> tuple[int, str]:
    """"8080" -> (8080, "tcp"); "53/udp" -> (53, "udp") (validated in outpost.toml)."""
    number, _, proto = port.partition("/")
    return int(number), proto or "tcp"
