"""The `command` applier: runs `[apply] command` in a checkout of the release commit.

The checkout is a worktree of the outpost's git mirror (HOME/work/<commit>); the command
runs in its `[apply] workdir` with a timeout, and with, besides `[apply] env`:

    OUTPOST_REGISTRY         the outpost registry (host:port) holding the release's images
    OUTPOST_RELEASE          the release (the commit's first 12 hex digits)
    OUTPOST_COMMIT           the full commit
    OUTPOST_PREVIOUS_COMMIT  the release running before ("" for the first)
    OUTPOST_STATE_DIR        a folder kept across releases (HOME/apply-state)
    DOCKER_HOST              the outpost's Docker daemon, when [outpost] docker names one

Its output goes to the release's log (HOME/applies/<release>.log). A non-zero exit fails
the apply with the tail of that output as the reason, unless the output says an image
could not be found (missing.py): then the outpost asks Earth for it and runs the command
again once it is there. The command runs in its own process group (process.py).
"""

from __future__ import annotations

import os
import shlex
import threading
from pathlib import Path

from ..errors import ApplyFailed, GitError, ImagesMissing
from ..home import OutpostSettings
from ..release import git
from ..units import format_duration
from .context import Job, Paths
from .missing import missing_images
from .process import kill_leftover, run_logged, tail


class CommandApplier:
    name = "command"

    def __init__(self, settings: OutpostSettings, paths: Paths, stop: threading.Event) -> None:
        self.settings, self.paths, self.stop = settings, paths, stop

    def prepare(self, job: Job) -> None:
        kill_leftover(job.plan.get("process"))
        job.record(workdir=str(check_out(self.paths, job.commit, job.config.apply.workdir)))

    def switch(self, job: Job) -> None:
        cmd = job.config.apply.command
        job.log.line(f"$ {shlex.join(cmd)}   (in {job.plan['workdir']}, timeout "
                     f"{format_duration(job.config.apply.timeout)})")
        code, output = run_logged(job, cmd, job.plan["workdir"],
                                  release_env(self.settings, self.paths, job, job.commit),
                                  job.config.apply.timeout, self.stop)
        if code == 0:
            job.log.line(f"{cmd[0]} exited with 0")
            return
        raise failure(cmd[0], code, output)

    def check(self, job: Job) -> None:
        """The command's exit status is its check."""

    def commit(self, job: Job) -> None:
        keep_only_checkout(self.paths, job.commit)

    def rollback(self, job: Job) -> bool:
        """A command's effects are its own: a failed one is not undone here."""
        return False



def release_env(settings: OutpostSettings, paths: Paths, job: Job,
                commit: str) -> dict[str, str]:
    """The environment a program applying `commit` runs with (the module's docstring)."""
    paths.state.mkdir(parents=True, exist_ok=True)
    docker = {"DOCKER_HOST": settings.docker} if settings.docker else {}
    return {**os.environ, **docker, **job.config.apply.env,
            "OUTPOST_REGISTRY": settings.registry or "",
            "OUTPOST_RELEASE": commit[:12], "OUTPOST_COMMIT": commit,
            "OUTPOST_PREVIOUS_COMMIT": job.row.previous or "",
            "OUTPOST_STATE_DIR": str(paths.state)}


def check_out(paths: Paths, commit: str, workdir_name: str) -> Path:
    """A checkout of `commit`, and the `[apply] workdir` in it (which must be inside)."""
    dest = paths.checkout(commit)
    try:
        git.checkout(paths.mirror, commit, dest)
    except GitError as e:
        raise ApplyFailed(f"cannot check out {commit[:12]}: {e}") from None
    workdir = (dest / workdir_name).resolve()
    if not workdir.is_dir() or not workdir.is_relative_to(dest.resolve()):
        raise ApplyFailed(f"[apply] workdir {workdir_name!r} is not a folder "
                          f"of release {commit[:12]}")
    return workdir


def keep_only_checkout(paths: Paths, commit: str) -> None:
    """The release is running: the other releases' checkouts go."""
    keep = paths.checkout(commit).name
    if paths.work.is_dir():
        for old in paths.work.iterdir():
            if old.name != keep:
                git.remove_checkout(paths.mirror, old)


def failure(program: str, code: int | None, output: str) -> ApplyFailed:
    """A failed run: waiting for images when its output says some were not found."""
    missing = missing_images(output)
    if missing:
        return ImagesMissing(missing, f"{program} could not find " + ", ".join(missing))
    why = "timed out" if code is None else f"exited with {code}"
    return ApplyFailed(f"{program} {why}: {tail(output)}")
