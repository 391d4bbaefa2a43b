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
again once it is there. The command runs in its own process group, which is killed at the
timeout, when the node stops, and (if still alive) when a killed node starts again.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import ApplyFailed, GitError, ImagesMissing
from ..home import OutpostSettings
from ..release import git
from ..units import format_duration
from .context import Job, Paths, Stopping
from .missing import missing_images

TAIL_LINES = 15
KILL_GRACE = 10.0


class CommandApplier:
    name = "command"

    def __init__(self, settings: OutpostSettings, paths: Paths, stop: threading.Event) -> None:
        self.settings, self.paths, self.stop = settings, paths, stop

    def prepare(self, job: Job) -> None:
        kill_leftover(job.plan.get("process"))
        dest = self.paths.checkout(job.commit)
        try:
            git.checkout(self.paths.mirror, job.commit, dest)
        except GitError as e:
            raise ApplyFailed(f"cannot check out {job.commit[:12]}: {e}") from None
        workdir = (dest / job.config.apply.workdir).resolve()
        if not workdir.is_dir() or not workdir.is_relative_to(dest.resolve()):
            raise ApplyFailed(f"[apply] workdir {job.config.apply.workdir!r} is not a folder "
                              f"of release {job.commit[:12]}")
        job.record(workdir=str(workdir))

    def switch(self, job: Job) -> None:
        cmd = job.config.apply.command
        job.log.line(f"$ {shlex.join(cmd)}   (in {job.plan['workdir']}, timeout "
                     f"{format_duration(job.config.apply.timeout)})")
        offset = os.fstat(job.log.file.fileno()).st_size
        try:
            proc = subprocess.Popen(cmd, cwd=job.plan["workdir"], env=self._env(job),
                                    stdin=subprocess.DEVNULL, stdout=job.log.file,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            raise ApplyFailed(f"cannot run {cmd[0]}: {e.strerror or e}") from None
        job.record(process={"pid": proc.pid, "started": _start_time(proc.pid)})
        code = self._wait(proc, job.config.apply.timeout)
        job.record(process=None)
        output = read_from(job.log.path, offset)
        if code == 0:
            job.log.line(f"{cmd[0]} exited with 0")
            return
        missing = missing_images(output)
        if missing:
            raise ImagesMissing(missing, f"{cmd[0]} could not find " + ", ".join(missing))
        why = "timed out" if code is None else f"exited with {code}"
        raise ApplyFailed(f"{cmd[0]} {why}: {tail(output)}")

    def check(self, job: Job) -> None:
        """The command's exit status is its check."""

    def commit(self, job: Job) -> None:
        """Keep only this release's checkout."""
        keep = self.paths.checkout(job.commit).name
        if self.paths.work.is_dir():
            for old in self.paths.work.iterdir():
                if old.name != keep:
                    git.remove_checkout(self.paths.mirror, old)

    def rollback(self, job: Job) -> bool:
        """A command's effects are its own: a failed one is not undone here."""
        return False

    def _env(self, job: Job) -> dict[str, str]:
        self.paths.state.mkdir(parents=True, exist_ok=True)
        docker = {"DOCKER_HOST": self.settings.docker} if self.settings.docker else {}
        return {**os.environ, **docker, **job.config.apply.env,
                "OUTPOST_REGISTRY": self.settings.registry or "",
                "OUTPOST_RELEASE": job.commit[:12], "OUTPOST_COMMIT": job.commit,
                "OUTPOST_PREVIOUS_COMMIT": job.row.previous or "",
                "OUTPOST_STATE_DIR": str(self.paths.state)}

    def _wait(self, proc: subprocess.Popen[bytes], timeout: float) -> int | None:
        """The exit code, or None at the timeout (the process group is then killed)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            if self.stop.is_set():
                kill_group(proc)
                raise Stopping("the node is stopping")
            if time.monotonic() > deadline:
                kill_group(proc)
                return None


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(KILL_GRACE)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()


def kill_leftover(process: Any) -> None:
    """Kill the process group a killed node left running, if it is still that one."""
    if not isinstance(process, dict) or not isinstance(process.get("pid"), int):
        return
    pid = process["pid"]
    if _start_time(pid) is None or _start_time(pid) != process.get("started"):
        return
    _signal_group(pid, signal.SIGKILL)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: a pid with another start time
    is another process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def read_from(path: Path, offset: int, limit: int = 1 << 20) -> str:
    """What was written to `path` after `offset` (its last `limit` bytes at most)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(offset, size - limit))
        return f.read().decode(errors="replace")


def tail(output: str, lines: int = TAIL_LINES) -> str:
    kept = [line for line in output.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) if kept else "no output"
