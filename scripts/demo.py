"""The demo: a real release crossing a simulated slow, lossy link.

Earth and an outpost run as two `outpost-node` processes; `link-sim` between them adds
1 s of latency each way, 10% loss and 2 MiB/s. Earth's config repo (seeded from example/)
names the example app image, built here from busybox. The outpost asks for what it lacks
at start-up, Earth answers with release 1.0 (git history and the image), the gateway puts
the image into the outpost's registry; then Earth publishes 1.1, which sends only the
changed layer. Along the way, a message and a 20 MB file show the bus on its own.

Run through `scripts/demo` (which installs and starts Docker and a registry). The node
homes stay in bundles/earth and bundles/outpost for a look afterwards.
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
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
BUNDLES = ROOT / "bundles"
EARTH, OUTPOST = BUNDLES / "earth", BUNDLES / "outpost"
LINK = ["--latency", "1s", "--jitter", "200ms", "--loss", "0.1", "--duplicate", "0.02",
        "--bandwidth", "2M", "--seed", "7"]
SETTINGS = ["--set", "rtt=3s", "--set", "bandwidth=2M"]
APP = "outpost-demo/app"
TIMEOUT = 300.0


def say(text: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)


def run(*args: str) -> str:
    proc = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def status(home: Path) -> Any:
    return json.loads(run("outpost-node", "status", "--home", str(home), "--json"))


def wait(what: str, done: Any, progress: Any = None) -> None:
    t0 = time.monotonic()
    last = 0.0
    while not done():
        if time.monotonic() - t0 > TIMEOUT:
            raise SystemExit(f"FAILED: {what} did not happen in {TIMEOUT:.0f}s; "
                             "see bundles/*/node.log")
        if progress and time.monotonic() - last > 3:
            say(progress())
            last = time.monotonic()
        time.sleep(0.5)


def link_stats() -> dict[str, Any]:
    try:
        return dict(json.loads((BUNDLES / "link-stats.json").read_text()))
    except (OSError, ValueError):
        return {}


def link_line() -> str:
    d = link_stats().get("a->b", {})
    if "offered" not in d:
        return "link starting"
    return (f"earth→outpost: {d['offered']['count']} files offered, "
            f"{d['dropped']['count']} dropped, {d['duplicated']['count']} duplicated, "
            f"{d['offered']['bytes'] / 2**20:.1f} MiB")


def build_app(version: str) -> str:
    """The example app (example/app) at `version`, built FROM scratch with busybox."""
    import docker

    client = docker.from_env()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp) / "app"
        shutil.copytree(ROOT / "example" / "app", ctx)
        shutil.copy("/bin/busybox", ctx / "busybox")
        page = ctx / "www" / "index.html"
        page.write_text(page.read_text().replace("Version 1.0", f"Version {version}"))
        image, _ = client.images.build(path=str(ctx), tag=f"{APP}:{version}", rm=True)
    return str(image.id)


def reset_homes(registry: str) -> None:
    for home in (EARTH, OUTPOST):
        home.mkdir(parents=True, exist_ok=True)
        for child in home.iterdir():
            if child.name != "README.md":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    for extra in ("link-state", "demo-files"):
        shutil.rmtree(BUNDLES / extra, ignore_errors=True)
    run("outpost-node", "init", "--role", "earth", "--home", str(EARTH), "--name", "earth",
        *SETTINGS)
    run("outpost-node", "init", "--role", "outpost", "--home", str(OUTPOST), "--name",
        "outpost", "--registry", registry, *SETTINGS)
    run("outpost-node", "trust", "--home", str(EARTH), str(OUTPOST))
    run("outpost-node", "trust", "--home", str(OUTPOST), str(EARTH))


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(BIN / args[0]), *args[1:]], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT)


def released(commit: str) -> bool:
    return any(r["commit_id"] == commit and r["state"] == "ready"
               for r in status(OUTPOST).get("releases", []))


def settled() -> bool:
    both = link_stats()
    busy = any(both.get(d, {}).get("in_flight") or both.get(d, {}).get("queued")
               for d in ("a->b", "b->a"))
    return not busy and not status(EARTH)["sending"]


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(EARTH / "config"), *args], check=True,
                          capture_output=True, text=True).stdout.strip()


def docker_save_size(ref: str) -> int:
    proc = subprocess.run(["docker", "save", ref], capture_output=True, check=True)
    return len(proc.stdout)


def bus_part() -> None:
    files = BUNDLES / "demo-files"
    files.mkdir(exist_ok=True)
    (files / "hello.txt").write_text("Hello from Earth. A new release is on its way.\n")
    big = files / "survey-20MB.log"
    rng = random.Random(42)
    with open(big, "w") as f:
        while f.tell() < 20_000_000:
            f.write(f"{rng.randrange(10**9):09d} sensor={rng.choice('ABCDEF')} "
                    f"temp={rng.uniform(-80, 20):.2f} {os.urandom(12).hex()}\n")
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    for f in (files / "hello.txt", big):
        say("earth sends " + run("outpost-node", "send", "--home", str(EARTH), "--to",
                                 "outpost", str(f)).strip())
    got = OUTPOST / "received" / "earth"
    wait("the message and the 20 MB file", lambda: (got / big.name).exists()
         and (got / "hello.txt").exists(), link_line)
    same = hashlib.sha256((got / big.name).read_bytes()).hexdigest() == digest
    say(f"outpost received hello.txt: {(got / 'hello.txt').read_text().strip()!r}")
    say(f"outpost received {big.name}: sha256 {'matches' if same else 'DIFFERS'}")
    if not same:
        raise SystemExit("FAILED: the 20 MB file differs")


def release_part(registry: str) -> None:
    v1 = git("rev-parse", "HEAD")
    say(f"release 1.0 is config commit {v1[:12]}; the outpost's start-up sync asks for it")
    wait("release 1.0 at the outpost", lambda: released(v1), link_line)
    say(f"outpost: release {v1[:12]} ready; registry holds {APP}:1.0")
    wait("the link to settle", settled)

    say("building 1.1 (only the web page changes) and committing it to the config repo")
    build_app("1.1")
    toml = EARTH / "config" / "outpost.toml"
    toml.write_text(toml.read_text().replace(f"{APP}:1.0", f"{APP}:1.1"))
    git("commit", "-qam", "Release 1.1: new front page")
    v2 = git("rev-parse", "HEAD")
    before = link_stats()["a->b"]["offered"]["bytes"]
    print(run("outpost-node", "publish", "--home", str(EARTH)), end="")
    wait("release 1.1 at the outpost", lambda: released(v2), link_line)
    wait("the link to settle", settled)
    crossed = link_stats()["a->b"]["offered"]["bytes"] - before
    full = docker_save_size(f"{APP}:1.1")
    say(f"release 1.1 ready: {crossed / 1024:.1f} KiB crossed the link (retransmissions "
        f"included), where `docker save` of the image is {full / 2**20:.1f} MiB")
    check_pull(registry)


def check_pull(registry: str) -> None:
    """Pull 1.1 from the outpost's registry into the outpost's own Docker and run it."""
    import docker

    host = os.environ.get("OUTPOST_DOCKER_OUTPOST") or os.environ.get("DOCKER_HOST")
    client = docker.DockerClient(base_url=host) if host else docker.from_env()
    earth_id = docker.from_env().images.get(f"{APP}:1.1").id
    pulled = client.images.pull(f"{registry}/{APP}", tag="1.1")
    say(f"docker pull {registry}/{APP}:1.1 at the outpost: image ID {pulled.id[:19]} "
        f"({'the same as' if pulled.id == earth_id else 'DIFFERENT from'} Earth's)")
    page = client.containers.run(pulled.id, ["cat", "/www/index.html"], network_mode="none",
                                 remove=True).decode()
    say("the outpost runs it: " + " ".join(page.split())[:90])
    if pulled.id != earth_id:
        raise SystemExit("FAILED: image IDs differ")


def main() -> int:
    registry = os.environ["OUTPOST_REGISTRY"]
    say(f"building {APP}:1.0 from example/app (FROM scratch + busybox)")
    build_app("1.0")
    say("creating the nodes in bundles/earth and bundles/outpost")
    reset_homes(registry)
    procs = [
        start(["link-sim", "--a", str(EARTH), "--b", str(OUTPOST), "--state",
               str(BUNDLES / "link-state"), "--stats", str(BUNDLES / "link-stats.json"),
               *LINK], BUNDLES / "link-sim.log"),
        start(["outpost-node", "start", "--role", "earth", "--home", str(EARTH)],
              EARTH / "stderr.log"),
        start(["outpost-node", "start", "--role", "outpost", "--home", str(OUTPOST)],
              OUTPOST / "stderr.log"),
    ]
    say("link-sim " + " ".join(LINK) + f"; outpost registry {registry}")
    t0 = time.monotonic()
    try:
        release_part(registry)
        bus_part()
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)
    say(f"done in {time.monotonic() - t0:.0f}s. Look around: "
        ".venv/bin/outpost-node status --home bundles/outpost; "
        ".venv/bin/outpost-node bundles ls bundles/outpost/quarantine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
