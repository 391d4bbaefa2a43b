"""Benchmark of a fleet at Earth (issue 11): fan-out of a new image, and memory.

    .venv/bin/python bench/fleet.py [--outposts 100] [--image-mb 50] [--messages 10000]
                                    [--repeat 3] [--json] [--keep]

1. Fan-out. A fresh temporary directory; an Earth home (`outpost-node init`) whose config
   repo names one image: a busybox base plus ONE layer of `--image-mb` MiB of random bytes
   (built locally with tests/images.py, so it is new to every outpost and zstd cannot
   shrink it). N outpost homes are made (in-process: only their keys matter) and trusted at
   Earth; no node runs, so nothing drains the outboxes: this measures Earth's own work.
   `outpost-node publish --home EARTH --json` runs under GNU time with 1 outpost trusted
   and with `--outposts`, `--repeat` times each by a fresh Earth home (the run with the
   median CPU is reported, all CPU figures listed): Earth's CPU seconds (user + sys, its
   `docker save` streams included in the daemon's, which is not counted) and wall time
   until every outbox is filled (publish writes the outboxes before it returns), and the
   disk Earth then uses: the blocks allocated under spool/ (custody, the layer cache) and
   outbox/ (sparse files count what they use; a file hard-linked into many outboxes counts
   once). Ratios are N outposts against 1. Targets (issue 11): CPU <= 1.5 x, disk <= 1.2 x
   plus the signed heads.
2. Memory. The N-outpost Earth gets `--messages` small messages in custody (1 KiB each,
   spread over the outposts, written by one `send` call per outpost), then `outpost-node
   start --home EARTH --no-http` runs for 10 s: its peak RSS (VmHWM); and `outpost-node
   status --home EARTH --json` under GNU time (wall, peak RSS).

Docker: `scripts/services start` gives DOCKER_HOST through `.services/env`. Results go to
bench/results/fleet.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from bench.procs import tool  # noqa: E402
from outpost.home import load_home  # noqa: E402
from outpost.node.setup import init_home, trust_peer  # noqa: E402
from tests.conftest import read_env_file  # noqa: E402
from tests.images import build_image, busybox_base, pseudo_random  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "fleet.json"
CPU_TARGET, DISK_TARGET = 1.5, 1.2
SETTINGS = ["--set", "rtt=10s"]


def say(msg: str) -> None:
    print(f"[fleet] {msg}", file=sys.stderr, flush=True)


def env() -> dict[str, str]:
    found = read_env_file(ROOT / ".services" / "env") if (ROOT / ".services" / "env").exists() \
        else {}
    return {**os.environ, **found}


def node(*args: str, environ: dict[str, str]) -> str:
    out = subprocess.run([tool("outpost-node"), *args], capture_output=True, text=True,
                         env=environ)
    if out.returncode != 0:
        raise SystemExit(f"outpost-node {' '.join(args[:3])} failed: {out.stderr.strip()}")
    return out.stdout


def timed(args: list[str], environ: dict[str, str]) -> dict[str, float]:
    """Wall, CPU (user + sys) and peak RSS of one command, from GNU time."""
    t0 = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-f", "%U %S %M", *args], capture_output=True,
                         text=True, env=environ)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{args[1:3]} failed: {out.stderr.strip()[-500:]}")
    user, sys_, rss = out.stderr.strip().splitlines()[-1].split()
    return {"wall": round(wall, 2), "cpu": round(float(user) + float(sys_), 2),
            "rss_mib": round(int(rss) / 1024, 1)}


def allocated(*folders: Path) -> int:
    """Bytes of disk the files under `folders` take (blocks allocated, not sizes; a file
    with several names, hard-linked into several outboxes, counts once)."""
    total, seen = 0, set()
    for folder in folders:
        for path in folder.rglob("*"):
            st = path.lstat()
            if path.is_file() and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def image(client: docker.DockerClient, mb: int) -> str:
    busybox_base(client, "outpost-bench/fleet-base:1")
    ref = f"outpost-bench/fleet-app:{mb}mb"
    files = {"/app/data.bin": pseudo_random(f"fleet/{mb}", mb * 1024 * 1024)}
    build_image(client, ref, files, "outpost-bench/fleet-base:1", cmd=["/bin/sh"])
    return ref


def make_outposts(work: Path, outposts: int) -> list[Path]:
    """`outposts` outpost homes (made in-process: only their keys matter here)."""
    homes = []
    for i in range(outposts):
        home = work / f"outposts-{outposts}" / f"o{i:03d}"
        if not home.exists():
            init_home(home, "outpost", f"o{i:03d}")
        homes.append(home)
    return homes


def make_earth(work: Path, label: str, ref: str, outposts: list[Path],
               environ: dict[str, str]) -> Path:
    template = work / f"template-{label}"
    template.mkdir()
    (template / "outpost.toml").write_text(
        f'[[images]]\nref = "{ref}"\n\n[apply]\napplier = "command"\ncommand = ["true"]\n')
    earth = work / f"earth-{label}"
    node("init", "--role", "earth", "--home", str(earth), "--template", str(template),
         *SETTINGS, environ=environ)
    home = load_home(earth)
    for outpost in outposts:
        trust_peer(home, outpost)
    return earth


def fan_out(work: Path, ref: str, outposts: int, repeat: int,
            environ: dict[str, str]) -> dict[str, Any]:
    """The run with the median CPU of `repeat` publishes, each by a fresh Earth."""
    homes = make_outposts(work, outposts)
    runs = []
    for r in range(repeat):
        earth = make_earth(work, f"{outposts}-{r}", ref, homes, environ)
        say(f"publish to {outposts} outpost(s), run {r + 1} of {repeat}")
        run = timed([tool("outpost-node"), "publish", "--home", str(earth), "--json"], environ)
        runs.append({"outposts": outposts, **run,
                     "disk_bytes": allocated(earth / "spool", earth / "outbox"),
                     "earth": str(earth)})
    runs.sort(key=lambda row: row["cpu"])
    return {**runs[len(runs) // 2], "cpu_runs": [row["cpu"] for row in runs]}


def memory(earth: Path, messages: int, environ: dict[str, str],
           work: Path) -> dict[str, Any]:
    peers = sorted(p.name for p in (earth / "keys" / "peers").iterdir())
    names = [p.split(".")[0] for p in peers]
    per = max(1, messages // len(names))
    files = work / "small"
    files.mkdir()
    paths = []
    for i in range(per):
        f = files / f"m{i:05d}.bin"
        f.write_bytes(os.urandom(1024))
        paths.append(str(f))
    say(f"{per * len(names)} messages into custody")
    for name in names:
        node("send", "--home", str(earth), "--to", name, "--json", *paths, environ=environ)
    daemon = subprocess.Popen([tool("outpost-node"), "start", "--home", str(earth),
                               "--no-http"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=environ)
    try:
        time.sleep(10)
        status = (Path("/proc") / str(daemon.pid) / "status").read_text()
        hwm = next(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("VmHWM"))
    finally:
        daemon.terminate()
        daemon.wait(30)
    st = timed([tool("outpost-node"), "status", "--home", str(earth), "--json"], environ)
    return {"messages": per * len(names), "daemon_rss_mib": round(hwm / 1024, 1),
            "status": st}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outposts", type=int, default=100)
    parser.add_argument("--image-mb", type=int, default=50)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    environ = env()
    client = docker.DockerClient(base_url=environ["DOCKER_HOST"], timeout=600)
    work = Path(tempfile.mkdtemp(prefix="outpost-bench-fleet-", dir="/var/tmp"))
    say(f"working in {work}")
    try:
        ref = image(client, args.image_mb)
        one = fan_out(work, ref, 1, args.repeat, environ)
        many = fan_out(work, ref, args.outposts, args.repeat, environ)
        mem = memory(Path(many["earth"]), args.messages, environ, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    cpu_ratio = round(many["cpu"] / max(one["cpu"], 0.01), 2)
    disk_ratio = round(many["disk_bytes"] / max(one["disk_bytes"], 1), 2)
    report = {"image_mb": args.image_mb, "one": one, "many": many, "cpu_ratio": cpu_ratio,
              "disk_ratio": disk_ratio, "memory": mem,
              "missed": [f"CPU {cpu_ratio} x > {CPU_TARGET} x"] * (cpu_ratio > CPU_TARGET)
              + [f"disk {disk_ratio} x > {DISK_TARGET} x"] * (disk_ratio > DISK_TARGET)}
    for row in (one, many):
        row.pop("earth")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for row in (one, many):
            print(f"{row['outposts']:>4} outpost(s): publish {row['wall']} s wall, "
                  f"{row['cpu']} s CPU (median of {row['cpu_runs']}), peak "
                  f"{row['rss_mib']} MiB; disk "
                  f"{row['disk_bytes'] / 1e6:.1f} MB")
        print(f"ratios: CPU {cpu_ratio} x (target {CPU_TARGET}), disk {disk_ratio} x "
              f"(target {DISK_TARGET})")
        print(f"{mem['messages']} messages in custody: daemon peak {mem['daemon_rss_mib']} "
              f"MiB; status --json {mem['status']['wall']} s, {mem['status']['rss_mib']} MiB")
        for m in report["missed"]:
            print(f"target missed: {m}")
    return 1 if report["missed"] else 0


if __name__ == "__main__":
    sys.exit(main())
