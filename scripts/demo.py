"""The demo: releases crossing a simulated slow, lossy link and running at the outpost.

Earth and an outpost run as two `outpost-node` processes; `link-sim` between them adds
2 s of latency each way, 10% loss and 2 MiB/s. Earth's config repo (seeded from example/)
names the example app (example/app: busybox httpd serving a page that shows its version).

1. The outpost starts, asks Earth what it lacks (one sync), and runs release 1.0.
2. Releases 1.1 and 1.2 are published one after the other: each crosses as the one changed
   layer plus a git bundle, and the outpost swaps the service by itself.
3. Release 1.3 carries a typo (the port the app listens on), so its health check fails:
   the outpost rolls back to 1.2 by itself, and tells Earth why.

Each time the page is fetched over HTTP at the outpost. Run through `scripts/demo`, which
installs and starts Docker (a second daemon for the outpost) and a registry. The node homes
stay in bundles/earth and bundles/outpost for a look afterwards.

    scripts/demo [--keep] [--port N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
BUNDLES = ROOT / "bundles"
EARTH, OUTPOST = BUNDLES / "earth", BUNDLES / "outpost"
LINK = ["--latency", "2s", "--jitter", "200ms", "--loss", "0.1", "--bandwidth", "2M",
        "--seed", "7"]
SETTINGS = ["--set", "rtt=5s", "--set", "bandwidth=2M", "--set", "ack_delay=100ms",
            "--set", "rescan=1s"]
APP = "outpost-demo/app"
TIMEOUT = 240.0


def say(text: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)


def run(*args: str) -> str:
    proc = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"FAILED: {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def status(home: Path) -> Any:
    return json.loads(run("outpost-node", "status", "--home", str(home), "--json"))


def wait(what: str, done: Any) -> Any:
    deadline, last = time.monotonic() + TIMEOUT, 0.0
    while not (result := done()):
        if time.monotonic() > deadline:
            raise SystemExit(f"FAILED: {what} did not happen in {TIMEOUT:.0f}s; "
                             "see bundles/*/node.log and bundles/outpost/applies/")
        if time.monotonic() - last > 5:
            say(f"  waiting for {what}; {link_line()}")
            last = time.monotonic()
        time.sleep(0.3)
    return result


def link_stats() -> dict[str, Any]:
    try:
        return dict(json.loads((BUNDLES / "link-stats.json").read_text()))
    except (OSError, ValueError):
        return {}


def link_line() -> str:
    stats = link_stats()
    parts = []
    for key, name in (("a->b", "earth→outpost"), ("b->a", "outpost→earth")):
        d = stats.get(key, {})
        if "offered" in d:
            parts.append(f"{name}: {d['offered']['count']} files "
                         f"({d['offered']['bytes'] / 1024:.0f} KiB), "
                         f"{d['dropped']['count']} lost")
    return "; ".join(parts) or "link starting"


def link_bytes() -> int:
    return int(link_stats().get("a->b", {}).get("offered", {}).get("bytes", 0))


def build_app(version: str) -> None:
    proc = subprocess.run([str(ROOT / "scripts" / "build-example-app"), version],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"FAILED: building {APP}:{version}: {proc.stderr.strip()}")


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise SystemExit("FAILED: no free port")


def reset_homes(registry: str, docker_host: str) -> None:
    for home in (EARTH, OUTPOST):
        home.mkdir(parents=True, exist_ok=True)
        for child in home.iterdir():
            if child.name != "README.md":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    for extra in ("link-state", "demo-files", "link-stats.json", "link-sim.log"):
        path = BUNDLES / extra
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    run("outpost-node", "init", "--role", "earth", "--home", str(EARTH), "--name", "earth",
        *SETTINGS)
    run("outpost-node", "init", "--role", "outpost", "--home", str(OUTPOST), "--name",
        "outpost", "--registry", registry, "--docker", docker_host, *SETTINGS)
    run("outpost-node", "trust", "--home", str(EARTH), str(OUTPOST))
    run("outpost-node", "trust", "--home", str(OUTPOST), str(EARTH))


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(BIN / args[0]), *args[1:]], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(EARTH / "config"), *args], check=True,
                          capture_output=True, text=True).stdout.strip()


def edit_config(old: str, new: str) -> None:
    toml = EARTH / "config" / "outpost.toml"
    text = toml.read_text()
    if old not in text:
        raise SystemExit(f"FAILED: {old!r} is not in example/outpost.toml any more")
    toml.write_text(text.replace(old, new))


def commit(message: str) -> str:
    git("commit", "-qam", message)
    return git("rev-parse", "HEAD")


def page(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            text = resp.read().decode(errors="replace")
    except OSError as e:
        return f"(no page: {e})"
    return next((line.strip() for line in text.splitlines() if "Version" in line), text[:80])


def outcome(commit_id: str) -> dict[str, Any] | None:
    for a in status(OUTPOST)["applies"]:
        if a["commit"] == commit_id and a["state"] not in ("running", "waiting-for-images"):
            return dict(a)
    return None


def follow(version: str, commit_id: str, port: int, t0: float, before: int) -> dict[str, Any]:
    done = wait(f"release {version} to run at the outpost", lambda: outcome(commit_id))
    took = time.monotonic() - t0
    crossed = (link_bytes() - before) / 1024
    total = done["durations"].get("total", 0.0)
    say(f"outpost: release {version} ({commit_id[:12]}) {done['state'].upper()} "
        f"{took:.1f}s after publishing; {crossed:.0f} KiB crossed the link; the apply "
        f"itself took {total:.1f}s")
    if done["state"] != "applied":
        say(f"  reason: {done['reason']}")
    say(f"  http://127.0.0.1:{port}/ at the outpost serves: {page(port)}")
    return done


def release(version: str, old: str, port: int, *, typo: bool = False) -> dict[str, Any]:
    build_app(version)
    edit_config(f"{APP}:{old}", f"{APP}:{version}")
    if typo:
        edit_config(f'"-p", "{port}"', f'"-p", "{port + 1}"')
        message = f"Release {version}: new front page (and a typo in the port)"
    else:
        message = f"Release {version}: new front page"
    commit_id = commit(message)
    say(f"earth: {message!r} is commit {commit_id[:12]}; publishing")
    before, t0 = link_bytes(), time.monotonic()
    for line in run("outpost-node", "publish", "--home", str(EARTH)).splitlines():
        say(f"  {line.strip()}")
    return follow(version, commit_id, port, t0, before)


def remove_containers(docker_host: str) -> None:
    """What the outpost ran: its containers carry the org.outpost.node=outpost label."""
    subprocess.run(["sh", "-c", f"docker -H {docker_host} ps -aq --filter "
                    "label=org.outpost.node=outpost | xargs -r docker -H "
                    f"{docker_host} rm -f"], capture_output=True, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true",
                        help="leave the nodes, link-sim and the app running at the end")
    parser.add_argument("--port", type=int, default=8080,
                        help="the app's port at the outpost (another if it is taken)")
    args = parser.parse_args()
    registry = os.environ["OUTPOST_REGISTRY"]
    docker_host = os.environ.get("OUTPOST_DOCKER_OUTPOST") or os.environ["DOCKER_HOST"]
    remove_containers(docker_host)
    port = free_port(args.port)
    say(f"building {APP}:1.0 from example/app (FROM scratch + busybox)")
    build_app("1.0")
    say("creating the nodes in bundles/earth and bundles/outpost")
    reset_homes(registry, docker_host)
    if port != 8080:
        edit_config("8080", str(port))
        commit(f"Serve on port {port} (8080 is taken here)")
    procs = [
        start(["link-sim", "--a", str(EARTH), "--b", str(OUTPOST), "--state",
               str(BUNDLES / "link-state"), "--stats", str(BUNDLES / "link-stats.json"),
               *LINK], BUNDLES / "link-sim.log"),
        start(["outpost-node", "start", "--role", "earth", "--home", str(EARTH)],
              EARTH / "stderr.log"),
        start(["outpost-node", "start", "--role", "outpost", "--home", str(OUTPOST)],
              OUTPOST / "stderr.log"),
    ]
    say("link-sim " + " ".join(LINK) + f"; outpost registry {registry}, outpost Docker "
        f"{docker_host}")
    t0 = time.monotonic()
    try:
        pages = [wait(f"{h.name}'s status page", lambda h=h: _status_page(h))
                 for h in (EARTH, OUTPOST)]
        say(f"status pages (open them now to watch): earth {pages[0]}  outpost {pages[1]}")
        head = git("rev-parse", "HEAD")
        say(f"release 1.0 is commit {head[:12]}; the outpost's start-up sync asks for it")
        follow("1.0", head, port, t0, 0)
        release("1.1", "1.0", port)
        release("1.2", "1.1", port)
        bad = release("1.3", "1.2", port, typo=True)
        running = status(OUTPOST)["running"]["commit"]
        earth = wait("Earth to hear of the rollback", lambda: _earth_heard(bad["commit"]))
        say(f"earth: outpost reports {earth['event']} for {bad['commit'][:12]}: "
            f"{earth['detail']['reason'][:110]}")
        ok = bad["state"] == "rolled-back" and running != bad["commit"] and \
            "Version 1.2" in page(port)
    finally:
        if not args.keep:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(60)
            remove_containers(docker_host)
    say(f"done in {time.monotonic() - t0:.0f}s; {link_line()}")
    say("look around: .venv/bin/outpost-node status --home bundles/outpost   (and bundles/earth)")
    say("             bundles/outpost/applies/*.log   (what each apply did)")
    say("             .venv/bin/outpost-node bundles ls bundles/outpost/quarantine")
    if args.keep:
        say(f"still running: http://127.0.0.1:{port}/; stop with: kill "
            + " ".join(str(p.pid) for p in procs))
    if not ok:
        raise SystemExit("FAILED: the bad release was not rolled back to 1.2")
    return 0


def _status_page(home: Path) -> str | None:
    try:
        return (home / "http.url").read_text().strip() or None
    except OSError:
        return None


def _earth_heard(commit_id: str) -> dict[str, Any] | None:
    last = status(EARTH)["fleet"]["outpost"]["last_apply"]
    return last if last and last["release"] == commit_id else None


if __name__ == "__main__":
    sys.exit(main())
