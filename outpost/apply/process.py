"""Running a program for an applier: its output to the release's log, a timeout, its own
process group (killed at the timeout, when the node stops, and, if a killed node left it
running, at the next start), its pid kept in the apply's progress."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ApplyFailed
from .context import Job, Stopping

TAIL_LINES = 15
KILL_GRACE = 10.0

LineFilter = Callable[[str], str | None]


def run_logged(job: Job, cmd: list[str], cwd: str, env: dict[str, str], timeout: float,
               stop: threading.Event, lines: LineFilter | None = None) -> tuple[int | None, str]:
    """Run `cmd`; its exit code (None at the timeout) and what it wrote to the log.

    With `lines`, its output is read line by line and each line is logged as `lines` turns
    it (None drops it): Terraform's `-json` lines become their readable messages."""
    offset = os.fstat(job.log.file.fileno()).st_size
    out = subprocess.PIPE if lines is not None else job.log.file
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as e:
        raise ApplyFailed(f"cannot run {cmd[0]}: {e.strerror or e}") from None
    job.record(process={"pid": proc.pid, "started": start_time(proc.pid)})
    reader = None
    if lines is not None:
        reader = threading.Thread(target=_copy_lines, args=(proc, job, lines), daemon=True)
        reader.start()
    try:
        code = _wait(proc, timeout, stop)
    finally:
        if reader is not None:
            reader.join(KILL_GRACE)
    job.record(process=None)
    return code, read_from(job.log.path, offset)


def _copy_lines(proc: subprocess.Popen[bytes], job: Job, lines: LineFilter) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        text = lines(raw.decode(errors="replace").rstrip("\n"))
        if text is not None:
            job.log.file.write(text + "\n")
            job.log.file.flush()


def _wait(proc: subprocess.Popen[bytes], timeout: float, stop: threading.Event) -> int | None:
    """The exit code, or None at the timeout (the process group is then killed)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        if stop.is_set():
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
    if start_time(pid) is None or start_time(pid) != process.get("started"):
        return
    _signal_group(pid, signal.SIGKILL)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def start_time(pid: int) -> int | None:
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
