"""`outpost.toml`, the release description at the root of the config repo (docs/releases.md).

Pure: text in, a validated ReleaseConfig out, or a ConfigError naming the field.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..units import parse_duration
from .manifest import IMAGE_REF as _REF

APPLIERS = ("docker", "command", "terraform")
NETWORKS = ("host", "none")
_SERVICE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}\Z")
_URL = re.compile(r"^https?://[^\s/]+(/\S*)?\Z")
_PORT = re.compile(r"^([0-9]{1,5})(/(tcp|udp))?\Z")


@dataclass(frozen=True)
class Health:
    """A service's health check: a command run in its container, or an HTTP URL fetched
    from the outpost (2xx or 3xx passes). Up to `retries` tries, `interval` apart, each
    given `timeout`; the first pass makes the service healthy."""

    command: list[str] = field(default_factory=list)
    url: str = ""
    interval: float = 2.0
    retries: int = 15
    timeout: float = 10.0


@dataclass(frozen=True)
class Service:
    name: str
    image: str
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    network: str = "host"
    ports: list[str] = field(default_factory=list)
    health: Health | None = None
    init: bool = True  # an init process as PID 1: signals reach the service, zombies reaped


@dataclass(frozen=True)
class Apply:
    applier: str = "docker"
    command: list[str] = field(default_factory=list)
    workdir: str = "."
    timeout: float = 600.0
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReleaseConfig:
    images: list[str]
    apply: Apply
    services: list[Service]

    @property
    def lock_file(self) -> str | None:
        """Where the terraform applier's `.terraform.lock.hcl` is in the commit."""
        if self.apply.applier != "terraform":
            return None
        workdir = self.apply.workdir.strip("/")
        return ".terraform.lock.hcl" if workdir in ("", ".") else \
            f"{workdir}/.terraform.lock.hcl"


def parse_release_config(text: str, source: str = "outpost.toml") -> ReleaseConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    ctx = _Ctx(source)
    ctx.known(data, "outpost.toml", {"images", "apply", "services"})
    images = []
    for n, table in enumerate(ctx.tables(data, "images")):
        ctx.known(table, f"images[{n}]", {"ref"})
        images.append(ctx.ref(table, f"images[{n}]"))
    if len(set(images)) != len(images):
        raise ConfigError(f"{source}: an image is listed twice in [[images]]")
    apply = ctx.apply(data.get("apply", {}))
    services = [ctx.service(s, n) for n, s in enumerate(ctx.tables(data, "services"))]
    _check_services(source, images, apply, services)
    return ReleaseConfig(images=images, apply=apply, services=services)


def _check_services(source: str, images: list[str], apply: Apply,
                    services: list[Service]) -> None:
    names = [s.name for s in services]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: two [[services]] share a name")
    ports = [p if "/" in p else f"{p}/tcp" for s in services for p in s.ports]
    if len(set(ports)) != len(ports):
        raise ConfigError(f"{source}: two [[services]] listen on the same port")
    for s in services:
        if s.image not in images:
            raise ConfigError(f"{source}: service {s.name!r} runs {s.image!r}, which is not "
                              "in [[images]]; add it there so it crosses with the release")
    if apply.applier == "docker" and not services:
        raise ConfigError(f"{source}: the docker applier needs at least one [[services]]")
    if apply.applier == "command" and not apply.command:
        raise ConfigError(f"{source}: [apply] applier = \"command\" needs command = [...]")
    if apply.applier != "command" and apply.command:
        raise ConfigError(f"{source}: [apply] command is for applier = \"command\" (the "
                          f"{apply.applier} applier runs what it needs itself)")


class _Ctx:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, what: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {what}")

    def tables(self, data: dict[str, Any], key: str) -> list[dict[str, Any]]:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(key, f"must be an array of tables ([[{key}]])")
        return value

    def known(self, table: dict[str, Any], where: str, keys: set[str]) -> None:
        """A misspelt key would silently fall back to a default: refuse it instead."""
        unknown = sorted(set(table) - keys)
        if unknown:
            raise self.fail(where, f"unknown key {unknown[0]!r} (known: {', '.join(sorted(keys))})")

    def ref(self, table: dict[str, Any], where: str) -> str:
        ref = table.get("ref")
        if not isinstance(ref, str) or not _REF.match(ref):
            raise self.fail(where, f"ref must be an image name like 'app/web:1.0' (got {ref!r})")
        return ref if ":" in ref.rsplit("/", 1)[-1] else f"{ref}:latest"

    def strings(self, value: Any, where: str) -> list[str]:
        if isinstance(value, str):
            return value.split()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(where, "must be a list of strings")
        return value

    def env(self, value: Any, where: str) -> dict[str, str]:
        if not isinstance(value, dict):
            raise self.fail(where, "must be a table of NAME = \"value\"")
        return {str(k): str(v) for k, v in value.items()}

    def apply(self, t: Any) -> Apply:
        if not isinstance(t, dict):
            raise self.fail("apply", "must be a table")
        self.known(t, "apply", {"applier", "command", "workdir", "timeout", "env"})
        applier = t.get("applier", "docker")
        if applier not in APPLIERS:
            raise self.fail("apply.applier", f"must be one of {', '.join(APPLIERS)}")
        return Apply(applier=applier,
                     command=self.strings(t.get("command", []), "apply.command"),
                     workdir=str(t.get("workdir", ".")),
                     timeout=self.duration(t.get("timeout", "10m"), "apply.timeout"),
                     env=self.env(t.get("env", {}), "apply.env"))

    def service(self, t: dict[str, Any], n: int) -> Service:
        where = f"services[{n}]"
        self.known(t, where, {"name", "image", "command", "env", "network", "ports", "health",
                              "init"})
        name = t.get("name")
        if not isinstance(name, str) or not _SERVICE.match(name):
            raise self.fail(where, f"name must be plain (got {name!r})")
        image = self.ref({"ref": t.get("image")}, f"{where}.image")
        network = t.get("network", "host")
        if network not in NETWORKS:
            raise self.fail(where, f"network must be one of {', '.join(NETWORKS)}")
        command = t.get("command")
        return Service(
            name=name, image=image,
            command=None if command is None else self.strings(command, f"{where}.command"),
            env=self.env(t.get("env", {}), f"{where}.env"), network=network,
            ports=self.ports(t.get("ports", []), network, f"{where}.ports"),
            health=self.health(t.get("health"), where),
            init=self.flag(t.get("init", True), f"{where}.init"))

    def flag(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, "must be true or false")
        return value

    def ports(self, value: Any, network: str, where: str) -> list[str]:
        """The ports a host-network service listens on, checked free before it starts."""
        ports = self.strings(value, where)
        for p in ports:
            m = _PORT.match(p)
            if m is None or not 0 < int(m.group(1)) < 65536:
                raise self.fail(where, f"{p!r} is not a port such as \"8080\" or \"53/udp\"")
        if ports and network != "host":
            raise self.fail(where, f"a service on network \"{network}\" listens on no host port")
        return ports

    def health(self, t: Any, where: str) -> Health | None:
        if t is None:
            return None
        if not isinstance(t, dict):
            raise self.fail(f"{where}.health", "must be a table")
        where = f"{where}.health"
        self.known(t, where, {"command", "url", "interval", "retries", "timeout"})
        retries = t.get("retries", 15)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 1:
            raise self.fail(f"{where}.retries", "must be a whole number, 1 or more")
        command = self.strings(t.get("command", []), f"{where}.command")
        url = t.get("url", "")
        if not isinstance(url, str) or (url and not _URL.match(url)):
            raise self.fail(f"{where}.url", f"must be an http:// or https:// URL (got {url!r})")
        if bool(command) == bool(url):
            raise self.fail(where, "needs either command = [...] (run in the container) or "
                                   "url = \"http://...\" (fetched from the outpost), not both")
        return Health(command=command, url=url,
                      interval=self.duration(t.get("interval", "2s"), f"{where}.interval"),
                      retries=retries,
                      timeout=self.duration(t.get("timeout", "10s"), f"{where}.timeout"))

    def duration(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(where, "must be a duration such as \"30s\" or \"10m\"")
        try:
            seconds = parse_duration(value)
        except ConfigError as e:
            raise self.fail(where, str(e)) from None
        if seconds < 0:
            raise self.fail(where, "must not be negative")
        return seconds
