"""The bus demo: two nodes and link-sim with latency and loss; a message and a 20 MB file.

Run through `scripts/demo`. The homes are bundles/earth and bundles/outpost, so the
bundle folders stay there to inspect afterwards (`outpost-node bundles ls ...`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
BUNDLES = ROOT / "bundles"
EARTH, OUTPOST = BUNDLES / "earth", BUNDLES / "outpost"
LINK = ["--latency", "1s", "--jitter", "200ms", "--loss", "0.1", "--duplicate", "0.02",
        "--bandwidth", "4M", "--seed", "7"]
SETTINGS = ["--set", "rtt=2500ms", "--set", "bandwidth=4M"]
TIMEOUT = 180.0


def run(*args: str) -> str:
    return subprocess.run([str(BIN / args[0]), *args[1:]], check=True, capture_output=True,
                          text=True).stdout


def say(text: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)


def reset_homes() -> None:
    for home in (EARTH, OUTPOST):
        home.mkdir(parents=True, exist_ok=True)
        for child in home.iterdir():
            if child.name != "README.md":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    shutil.rmtree(BUNDLES / "link-state", ignore_errors=True)
    run("outpost-node", "init", "--role", "earth", "--home", str(EARTH), "--name", "earth",
        *SETTINGS)
    run("outpost-node", "init", "--role", "outpost", "--home", str(OUTPOST), "--name",
        "outpost", *SETTINGS)
    run("outpost-node", "trust", "--home", str(EARTH), str(OUTPOST))
    run("outpost-node", "trust", "--home", str(OUTPOST), str(EARTH))


def make_payload(path: Path, size: int) -> str:
    """20 MB of log-like text with random bytes mixed in: compressible, like real data."""
    rng = random.Random(42)
    sha = hashlib.sha256()
    with open(path, "wb") as f:
        written = 0
        while written < size:
            line = (f"{rng.randrange(10**9):09d} sensor={rng.choice('ABCDEF')} "
                    f"temp={rng.uniform(-80, 20):.2f} ").encode() + os.urandom(24).hex().encode()
            line = line[: size - written - 1] + b"\n"
            f.write(line)
            sha.update(line)
            written += len(line)
    return sha.hexdigest()


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(BIN / args[0]), *args[1:]], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT)


def link_stats() -> dict[str, object]:
    try:
        return json.loads((BUNDLES / "link-stats.json").read_text())
    except (OSError, ValueError):
        return {}


def main() -> int:
    say("resetting bundles/earth and bundles/outpost and creating both nodes")
    reset_homes()
    work = BUNDLES / "demo-files"
    work.mkdir(exist_ok=True)
    message = work / "hello.txt"
    message.write_text("Hello from Earth. The new release is on its way.\n")
    big = work / "survey-20MB.log"
    digest = make_payload(big, 20 * 1000 * 1000)
    procs = [
        start(["link-sim", "--a", str(EARTH), "--b", str(OUTPOST), "--state",
               str(BUNDLES / "link-state"), "--stats", str(BUNDLES / "link-stats.json"),
               *LINK], BUNDLES / "link-sim.log"),
        start(["outpost-node", "start", "--role", "earth", "--home", str(EARTH)],
              EARTH / "stderr.log"),
        start(["outpost-node", "start", "--role", "outpost", "--home", str(OUTPOST)],
              OUTPOST / "stderr.log"),
    ]
    say("link-sim: " + " ".join(LINK))
    t0 = time.monotonic()
    try:
        return exchange(message, big, digest, t0)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(20)


def exchange(message: Path, big: Path, digest: str, t0: float) -> int:
    for f in (message, big):
        say("earth sends " + run("outpost-node", "send", "--home", str(EARTH), "--to",
                                 "outpost", str(f)).strip())
    say("earth's outbox right now (outpost-node bundles ls bundles/earth/outbox/outpost):")
    print(run("outpost-node", "bundles", "ls", str(EARTH / "outbox" / "outpost")), end="")
    inbox = OUTPOST / "received" / "earth"
    while time.monotonic() - t0 < TIMEOUT:
        status = json.loads(run("outpost-node", "status", "--home", str(EARTH), "--json"))
        if not status["sending"] and (inbox / big.name).exists():
            break
        acked = sum(m["acked"] for m in status["sending"])
        units = sum(m["units"] for m in status["sending"])
        stats = link_stats().get("a->b", {})
        say(f"acked {acked}/{units} units; link earth→outpost: {_fmt(stats)}")
        time.sleep(2)
    else:
        say("FAILED: not delivered in time; see bundles/*/node.log")
        return 1
    got = hashlib.sha256((inbox / big.name).read_bytes()).hexdigest()
    text = (inbox / message.name).read_text()
    ok = got == digest and text == message.read_text()
    elapsed = time.monotonic() - t0
    say(f"outpost received {message.name}: {text.strip()!r}")
    say(f"outpost received {big.name}: sha256 {'matches' if got == digest else 'DIFFERS'}")
    for direction, stats in sorted(link_stats().items()):
        if isinstance(stats, dict) and "offered" in stats:
            say(f"link {direction}: {_fmt(stats)}")
    say(f"{'done' if ok else 'FAILED'} in {elapsed:.1f}s; look around: "
        "outpost-node bundles ls bundles/outpost/quarantine, "
        "outpost-node status --home bundles/earth")
    return 0 if ok else 1


def _fmt(stats: object) -> str:
    if not isinstance(stats, dict) or "offered" not in stats:
        return "starting"
    parts = []
    for key in ("offered", "delivered", "dropped", "duplicated", "corrupted"):
        v = stats.get(key)
        n = v.get("count") if isinstance(v, dict) else v
        parts.append(f"{key} {n}")
    return ", ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
