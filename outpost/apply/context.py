"""What an apply works with: the outpost's apply settings, the job and its log."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..errors import ConfigError
from ..home import Home
from ..release.config import ReleaseConfig
from ..release.manifest import Release
from ..store.applies import ApplyRow
from ..units import parse_duration

MODES = ("auto", "manual")


class Stopping(Exception):
    """The node is stopping: the apply stays where it is and carries on at the next start."""


@dataclass(frozen=True)
class ApplySettings:
    """The apply keys of node.toml's [outpost] table (docs/configuration.md)."""

    mode: str = "auto"  # auto: apply each release once ready; manual: only `outpost-node apply`
    docker: str | None = None  # the outpost's Docker daemon (default: DOCKER_HOST)
    registry: str | None = None  # the outpost registry, as the Docker daemon pulls from it
    max_attempts: int = 3  # runs of one interrupted apply before it is rolled back
    image_requests: int = 3  # requests to Earth for the images one apply lacks
    request_retry: float = 300.0  # ask again this long after Earth said it lacks an image
    answer_timeout: float = 0.0  # ask again when nothing came (0: 4 round trips, >= 10 min)
    stop_timeout: float = 10.0  # a container's grace between SIGTERM and SIGKILL

    @classmethod
    def from_home(cls, home: Home, registry: str | None = None,
                  docker: str | None = None) -> ApplySettings:
        table = home.raw.get("outpost", {})
        mode = table.get("apply", "auto")
        if mode not in MODES:
            raise ConfigError(f"{home.path / 'node.toml'}: [outpost] apply must be one of "
                              f"{', '.join(MODES)} (got {mode!r})")
        timeout = parse_duration(table.get("answer_timeout", 0))
        return cls(
            mode=mode,
            docker=docker or table.get("docker") or os.environ.get("OUTPOST_DOCKER") or None,
            registry=registry or table.get("registry") or os.environ.get("OUTPOST_REGISTRY"),
            max_attempts=_count(table, "apply_attempts", cls.max_attempts, home),
            image_requests=_count(table, "image_requests", cls.image_requests, home),
            request_retry=parse_duration(table.get("image_request_retry", cls.request_retry)),
            answer_timeout=timeout or max(600.0, 4 * home.settings.rtt),
            stop_timeout=parse_duration(table.get("stop_timeout", cls.stop_timeout)))


def _count(table: dict[str, Any], key: str, default: int, home: Home) -> int:
    value = table.get(key, default)
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{home.path / 'node.toml'}: [outpost] {key} must be a whole "
                          f"number, 1 or more (got {value!r})")
    return value


@dataclass(frozen=True)
class Paths:
    """Where applies keep their things in the node's home."""

    home: Home

    @property
    def mirror(self) -> Path:
        return self.home.path / "config.git"

    @property
    def logs(self) -> Path:
        return self.home.path / "applies"

    @property
    def work(self) -> Path:
        return self.home.path / "work"

    @property
    def state(self) -> Path:
        """A folder kept across releases, for commands that keep state of their own."""
        return self.home.path / "apply-state"

    @property
    def lock(self) -> Path:
        return self.home.path / "apply.lock"

    def log_file(self, commit: str) -> Path:
        return self.logs / f"{commit[:12]}.log"

    def checkout(self, commit: str) -> Path:
        return self.work / commit[:12]


class ApplyLog:
    """The per-release log under HOME/applies/: what each apply did, and commands' output."""

    def __init__(self, path: Path, echo: Callable[[str], None] | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.echo = echo
        self.file: TextIO = open(path, "a")  # noqa: SIM115 - closed by close()

    def line(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.file.write(f"{stamp} {text}\n")
        self.file.flush()
        if self.echo is not None:
            self.echo(text)

    def close(self) -> None:
        self.file.close()


@dataclass
class Job:
    """One apply as the appliers see it; `plan` is their progress, kept in the state."""

    row: ApplyRow
    config: ReleaseConfig
    release: Release
    pinned: dict[str, str]  # image ref -> REGISTRY/name@sha256:... (the manifest)
    log: ApplyLog
    save: Callable[[dict[str, Any]], None]
    plan: dict[str, Any] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)  # seconds per phase, this run

    @property
    def commit(self) -> str:
        return self.row.commit_id

    def record(self, **values: Any) -> None:
        """Keep progress in the node's state (it survives kill -9)."""
        self.plan.update(values)
        self.save(self.plan)
