"""Soak: two nodes and link-sim under a hostile link and kill -9, with mixed traffic.

    .venv/bin/python bench/soak.py [--minutes 10] [--loss 0.2] [--seed 1]
                                   [--kills-per-minute 3] [--max-file 20M] [--no-releases]
                                   [--rss-bound 200M] [--json] [--keep] [-v]

Real processes in a fresh temporary directory: earth and mars (`outpost-node init`, trusting
each other, `rtt = 1s`, `ack_delay = 100ms`, `rescan = 1s`, 256 KiB fragments so big files
cross as many fragments) and `link-sim --latency 100ms --loss LOSS --duplicate 0.05
--corrupt 0.02 --reorder --seed SEED` between them. For `--minutes`:

- files go both ways, queued through the Sender API against the running nodes' state (the
  code `outpost-node send` runs), one every second or so, sizes log-uniform from 1 KB to
  `--max-file`, each with its SHA-256 recorded;
- unless `--no-releases` (which needs Docker and a registry: `scripts/services start`),
  Earth commits a release every two minutes (an image built here, `applier = "command"`
  running `true`) and publishes it;
- once a minute a hostile file (garbage, truncated, unsigned, a stranger's, expired, an
  oversized header, a zstd bomb, an absurd fragment, misaddressed, a FIFO) is dropped into a
  node's inbox;
- at random moments (`--kills-per-minute` on average) one of the three processes is killed
  with SIGKILL and started again after up to 2 s.

Then traffic stops and the run waits (up to 10 minutes) until both nodes hold nothing in
custody or reassembly and the link is idle. It passes when every file is in the peer's
`received/` exactly once and byte-identical, nothing else is there, nothing is left in
custody, every quarantined file is either a hostile one or a bundle the link corrupted
(integrity, signature, truncation, zstd, magic or header reasons), the last release is
applied at mars, no node logged an error, and each node's RSS (sampled every 2 s) stayed
under `--rss-bound`. Results go to bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procs import BenchError, log_problems, tool  # noqa: E402
from bench.releases import git, run, shared_services, wait_for  # noqa: E402
from outpost.home import load_home  # noqa: E402
from outpost.node.context import open_node  # noqa: E402
from outpost.node.sender import Sender  # noqa: E402
from outpost.store.spool import bundle_files, read_reason  # noqa: E402
from outpost.store.state import SENDING, State  # noqa: E402
from outpost.units import parse_size  # noqa: E402
from tests.helpers import hostile_set  # noqa: E402
from tests.images import build_image, busybox_base, pseudo_random  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "soak.json"
SETTINGS = {"rtt": "1s", "ack_delay": "100ms", "rescan": "1s", "fragment_size": "256k"}
# what a corrupting link makes of a bundle (the bundles are resent and delivered anyway)
LINK_REASONS = {"integrity", "bad-signature", "truncated", "bad-zstd", "bad-magic",
                "bad-header", "trailing-bytes", "header-too-large", "header-too-deep",
                "payload-too-large", "absurd-fragment", "bad-fragment", "unknown-key",
                "misaddressed", "zstd-bomb"}
DRAIN_TIMEOUT = 600.0
COUNTERS = ("offered", "delivered", "dropped", "duplicated", "corrupted")


def say(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None
    peak_rss: int = 0
    kills: int = 0

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=self.env)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
            self.kills += 1

    def sample_rss(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.peak_rss = max(self.peak_rss, int(line.split()[1]) * 1024)
        except OSError:
            pass

    def check(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.popen.returncode} on its own; "
                             f"see {self.log}")

    def stop(self) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                return self.popen.wait()
        return self.popen.returncode


@dataclass
class Soak:
    root: Path
    args: argparse.Namespace
    env: dict[str, str]
    rng: random.Random
    sent: dict[str, dict[str, str]] = field(default_factory=dict)  # dst -> name -> sha
    bytes_sent: int = 0
    attacks: list[str] = field(default_factory=list)
    releases: list[str] = field(default_factory=list)
    procs: dict[str, Proc] = field(default_factory=dict)
    link_totals: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    @property
    def earth(self) -> Path:
        return self.root / "earth"

    @property
    def mars(self) -> Path:
        return self.root / "mars"

    def setup(self, registry: str | None) -> None:
        node = tool("outpost-node")
        sets = [a for k, v in SETTINGS.items() for a in ("--set", f"{k}={v}")]
        template = self.root / "template"
        template.mkdir(parents=True)
        (template / "outpost.toml").write_text(release_text([]))
        run([node, "init", "--role", "earth", "--home", str(self.earth), "--name", "earth",
             "--template", str(template), *sets], self.env)
        extra = ["--registry", registry] if registry else []
        run([node, "init", "--role", "outpost", "--home", str(self.mars), "--name", "mars",
             *extra, *sets], self.env)
        with open(self.mars / "node.toml", "a") as f:
            f.write("\n[outpost]\n" if not registry else "")
            f.write('sync_interval = "1m"\n')
        run([node, "trust", "--home", str(self.earth), str(self.mars)], self.env)
        run([node, "trust", "--home", str(self.mars), str(self.earth)], self.env)
        link = ["--latency", "100ms", "--loss", str(self.args.loss), "--duplicate", "0.05",
                "--corrupt", "0.02", "--reorder", "--seed", str(self.args.seed)]
        self.procs = {
            "earth": Proc("earth", [node, "start", "--home", str(self.earth)],
                          self.earth / "stderr.log", self.env),
            "mars": Proc("mars", [node, "start", "--home", str(self.mars)],
                         self.mars / "stderr.log", self.env),
            "link-sim": Proc("link-sim", [tool("link-sim"), "--a", str(self.earth), "--b",
                                          str(self.mars), "--state", str(self.root / "link"),
                                          "--stats", str(self.root / "link-stats.json"),
                                          *link], self.root / "link.log", self.env)}
        for p in self.procs.values():
            p.start()

    # traffic
    def send_file(self, n: int) -> None:
        src, dst = (self.earth, "mars") if self.rng.random() < 0.6 else (self.mars, "earth")
        size = int(math.exp(self.rng.uniform(math.log(1000), math.log(self.args.max_file))))
        name = f"soak-{n:05d}.bin"
        data = b"".join(pseudo_random(f"soak/{self.args.seed}/{n}", size))
        node = open_node(load_home(src))
        try:
            Sender(node).submit(dst, "file", io.BytesIO(data), meta={"name": name})
        finally:
            node.state.close()
        self.sent.setdefault(dst, {})[name] = hashlib.sha256(data).hexdigest()
        self.bytes_sent += size

    def release(self, client: Any, n: int) -> None:
        tag = f"outpost-soak/app:{self.args.seed}-{n}"
        build_image(client, tag, {"/data/v.txt": f"{n}\n",
                                  "/data/blob.bin": pseudo_random(f"soak-img/{n}", 300_000)},
                    "outpost-soak/base:1")
        repo = self.earth / "config"
        (repo / "outpost.toml").write_text(release_text([tag]))
        git(repo, "commit", "-qam", f"soak release {n}")
        self.releases.append(git(repo, "rev-parse", "HEAD").strip())
        run([tool("outpost-node"), "publish", "--home", str(self.earth)], self.env)

    def attack(self, seeds: dict[str, bytes]) -> None:
        kind, (data, _reason) = self.rng.choice(sorted(hostile_set(seeds["earth"],
                                                                   os.urandom(32)).items()))
        target = self.mars / "inbox" / f"attack-{len(self.attacks):03d}-{kind}"
        if self.rng.random() < 0.1:
            os.mkfifo(target)
            kind = "fifo"
        else:
            target.write_bytes(data)
        self.attacks.append(target.name)

    def kill_one(self) -> str:
        name = self.rng.choice(sorted(self.procs))
        if name == "link-sim":
            self.add_link_stats()  # a new link-sim counts from zero
        self.procs[name].kill()
        time.sleep(self.rng.uniform(0, 2))
        self.procs[name].start()
        return name

    def tick(self) -> None:
        for p in self.procs.values():
            p.check()
            p.sample_rss()

    # the end
    def drained(self) -> bool:
        self.tick()
        stats = self.link_stats()
        busy = any(stats.get(d, {}).get(k) for d in ("a->b", "b->a")
                   for k in ("queued", "in_flight"))
        return not busy and all(self.idle(h) for h in (self.earth, self.mars)) and \
            all(self.arrived(dst) for dst in self.sent)

    def idle(self, home: Path) -> bool:
        state = State(home / "state.db")
        try:
            return not state.messages(SENDING) and not state.reassemblies()
        finally:
            state.close()

    def arrived(self, dst: str) -> bool:
        folder = (self.mars if dst == "mars" else self.earth) / "received" / \
            ("earth" if dst == "mars" else "mars")
        return len(list(folder.glob("soak-*"))) >= len(self.sent[dst]) if folder.exists() \
            else not self.sent[dst]

    def add_link_stats(self) -> None:
        stats = self.link_stats()
        for d in ("a->b", "b->a"):
            for what in COUNTERS:
                got = stats.get(d, {}).get(what) or {}
                total = self.link_totals.setdefault(d, {}).setdefault(what, {"count": 0,
                                                                             "bytes": 0})
                total["count"] += int(got.get("count", 0))
                total["bytes"] += int(got.get("bytes", 0))

    def link_stats(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.root / "link-stats.json").read_text()))
        except (OSError, ValueError):
            return {}

    def verify(self) -> list[str]:
        problems = []
        for dst, files in self.sent.items():
            home = self.mars if dst == "mars" else self.earth
            folder = home / "received" / ("earth" if dst == "mars" else "mars")
            present = {p.name: p for p in folder.iterdir()} if folder.exists() else {}
            for name, sha in files.items():
                if name not in present:
                    problems.append(f"{dst}: {name} missing")
                elif hashlib.sha256(present[name].read_bytes()).hexdigest() != sha:
                    problems.append(f"{dst}: {name} differs")
            extra = sorted(set(present) - set(files))
            if extra:
                problems.append(f"{dst}: unexpected files {extra[:5]} (duplicates?)")
        for home in (self.earth, self.mars):
            for q in bundle_files(home / "quarantine"):
                rec = read_reason(q)
                if rec is None:
                    problems.append(f"{q} has no reason")
                elif rec.original not in self.attacks and rec.reason not in LINK_REASONS:
                    problems.append(f"{home.name} quarantined {rec.original}: {rec.reason}")
        problems += log_problems([self.earth, self.mars])
        return problems

    def quarantine_reasons(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for home in (self.earth, self.mars):
            for q in bundle_files(home / "quarantine"):
                rec = read_reason(q)
                key = f"{'attack' if rec and rec.original in self.attacks else 'link'}:" \
                      f"{rec.reason if rec else '?'}"
                out[key] = out.get(key, 0) + 1
        return out


def release_text(refs: list[str]) -> str:
    images = "".join(f'[[images]]\nref = "{r}"\n\n' for r in refs)
    return images + '[apply]\napplier = "command"\ncommand = ["true"]\n'


def mars_running(home: Path) -> str | None:
    out = json.loads(run([tool("outpost-node"), "status", "--home", str(home), "--json"]))
    running = out.get("running")
    return running["commit"] if running else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--loss", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kills-per-minute", type=float, default=3.0)
    parser.add_argument("--max-file", type=parse_size, default=parse_size("20M"))
    parser.add_argument("--no-releases", action="store_true")
    parser.add_argument("--rss-bound", type=parse_size, default=parse_size("200M"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    env = dict(os.environ)
    client, registry = None, None
    if not args.no_releases:
        services = shared_services()
        env.update(services)
        registry = services["OUTPOST_REGISTRY"]
        import docker

        client = docker.DockerClient(base_url=services["DOCKER_HOST"], timeout=600)
        busybox_base(client, "outpost-soak/base:1")
    root = Path(tempfile.mkdtemp(prefix="outpost-soak-", dir="/tmp"))
    rng = random.Random(args.seed)
    soak = Soak(root, args, env, rng)
    say(f"in {root}: {args.minutes} min, loss {args.loss}, kills {args.kills_per_minute}/min")
    t0 = time.monotonic()
    problems: list[str] = []
    kills: list[str] = []
    drain = None
    try:
        soak.setup(registry)
        seeds = {"earth": load_home(soak.earth).signing_seed()}
        end = t0 + args.minutes * 60
        next_file = next_attack = next_release = next_kill = time.monotonic()
        n = 0
        while time.monotonic() < end:
            now = time.monotonic()
            soak.tick()
            if now >= next_file:
                soak.send_file(n)
                n += 1
                next_file = now + rng.uniform(0.5, 1.5)
            if now >= next_attack:
                soak.attack(seeds)
                next_attack = now + 60
            if client is not None and now >= next_release:
                soak.release(client, len(soak.releases))
                next_release = now + 120
            if now >= next_kill + 5:
                kills.append(soak.kill_one())
                next_kill = now + rng.expovariate(args.kills_per_minute / 60)
            time.sleep(0.2)
        say(f"traffic done: {n} files, {soak.bytes_sent / 2**20:.0f} MiB, {len(kills)} kills;"
            " draining")
        t1 = time.monotonic()
        wait_for(soak.drained, DRAIN_TIMEOUT, "custody and the link to drain")
        if soak.releases:
            wait_for(lambda: mars_running(soak.mars) == soak.releases[-1], 300,
                     "the last release applied at mars")
        drain = time.monotonic() - t1
        problems = soak.verify()
    except BenchError as e:
        problems.append(str(e))
    finally:
        codes = {name: p.stop() for name, p in soak.procs.items()}
    problems += [f"{name} exited {code} on SIGTERM" for name, code in codes.items()
                 if code not in (0, None)]
    rss = {name: p.peak_rss for name, p in soak.procs.items()}
    soak.add_link_stats()
    problems += [f"{name} peak RSS {v / 2**20:.0f} MiB over the bound"
                 for name, v in rss.items() if name != "link-sim" and v > args.rss_bound]
    report = {"benchmark": "soak", "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
              "python": platform.python_version(), "params": {
                  k: v for k, v in vars(args).items()},
              "files": sum(len(v) for v in soak.sent.values()), "bytes": soak.bytes_sent,
              "releases": len(soak.releases), "attacks": len(soak.attacks),
              "kills": {k: kills.count(k) for k in sorted(set(kills))},
              "drain_seconds": drain, "peak_rss": rss, "link": soak.link_totals,
              "quarantine": soak.quarantine_reasons(), "problems": problems,
              "pass": not problems}
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if not args.keep and not problems:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
