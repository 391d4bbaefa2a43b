"""What an apply works with: the outpost's apply settings, the job and its log."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..home import Home
from ..release.config import ReleaseConfig
from ..release.manifest import Release
from ..store.applies import ApplyRow


class Stopping(Exception):
    """The node is stopping: the apply stays where it is and carries on at the next start."""


@dataclass(frozen=True)
class Paths:
    """Where applies keep their things in the node's home."""

    home: Home

    @property
    def mirror(self) -> Path:
        return self.home.mirror

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
