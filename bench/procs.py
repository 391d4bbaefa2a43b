"""What the benchmarks share: finding the tools, and running and stopping their processes."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

BIN = Path(sys.executable).parent
STOP_TIMEOUT = 20.0


class BenchError(Exception):
    """Something hung, died or came out wrong: the benchmark fails loudly."""


def tool(name: str) -> str:
    found = BIN / name
    if found.exists():
        return str(found)
    which = shutil.which(name)
    if which is None:
        raise SystemExit(f"{name} not found next to {sys.executable} nor on PATH")
    return which


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def log_problems(homes: list[Path]) -> list[str]:
    """Errors and tracebacks the nodes logged: our faults, never the link's."""
    problems = []
    for home in homes:
        bad = [line for line in read_text(home / "node.log").splitlines()
               if " ERROR " in line or "Traceback" in line]
        if bad:
            problems.append(f"{home.name} logged errors: {bad[:3]}")
    return problems


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(read_text(path).splitlines()[-lines:]) or "(no log)"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class Processes:
    """The nodes and link-sim of one run: started with their logs, checked, stopped."""

    env: dict[str, str] | None = None
    procs: list[Proc] = field(default_factory=list)
    _files: list[IO[bytes]] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], log: Path) -> None:
        out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self._files.append(out)
        popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=self.env)
        self.procs.append(Proc(name, popen, log))

    def start_site(self, earth: Path, mars: Path, root: Path, link_flags: list[str],
                   verbose: bool) -> None:
        """Both nodes (`outpost-node start`) and link-sim between them, stats in root."""
        v = ["-v"] if verbose else []
        for home, role in ((earth, "earth"), (mars, "outpost")):
            self.spawn(home.name, [tool("outpost-node"), "start", "--role", role, "--home",
                                   str(home), *v], home / "stderr.log")
        self.spawn("link-sim", [tool("link-sim"), "--a", str(earth), "--b", str(mars),
                                "--state", str(root / "link"), "--stats",
                                str(root / "link-stats.json"), *link_flags, *v],
                   root / "link.log")

    def check_alive(self) -> None:
        for p in self.procs:
            code = p.popen.poll()
            if code is not None:
                raise BenchError(f"{p.name} exited with {code} during the run:\n{tail(p.log)}")

    def stop(self) -> list[str]:
        """SIGTERM everything, wait; returns the problems (none when all stopped cleanly)."""
        problems = []
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                code = p.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
                problems.append(f"{p.name} did not stop within {STOP_TIMEOUT:.0f}s of SIGTERM")
                continue
            if code != 0:
                problems.append(f"{p.name} exited with {code}")
        self.procs.clear()
        for f in self._files:
            f.close()
        self._files.clear()
        return problems
