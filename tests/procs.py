"""Running real node and link-sim processes in tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    return str(BIN / name)


def start_node(home: Path, role: str, *, verbose: bool = False,
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    args = [tool("outpost-node"), "start", "--role", role, "--home", str(home)]
    if verbose:
        args.append("-v")
    log = open(home / "stderr.log", "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})


def start_link(a: Path, b: Path, state: Path, *flags: str) -> subprocess.Popen[bytes]:
    args = [tool("link-sim"), "--a", str(a), "--b", str(b), "--state", str(state),
            "--stats", str(state.parent / "link-stats.json"), *flags]
    log = open(state.parent / "link.log", "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout)


@contextmanager
def running(*procs: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def wait_for(cond: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    """Run `outpost-node ARGS --json` and parse its output."""
    out = subprocess.run([tool("outpost-node"), *args, "--json"], capture_output=True,
                         text=True, env={**os.environ, **(env or {})})
    if out.returncode != 0:
        raise AssertionError(f"outpost-node {' '.join(args)} failed: {out.stderr}")
    return json.loads(out.stdout)


def files_in(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def assert_clean_log(home: Path) -> None:
    """No node error or traceback: those would be our faults, not the link's."""
    text = (home / "stderr.log").read_text() if (home / "stderr.log").exists() else ""
    bad = [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line]
    assert not bad, f"{home.name} logged errors: {bad[:3]}"
