"""Benchmark of applying releases (issue 6): publish to applied over a slow link, and the
docker applier's own time against the same steps by hand.

    .venv/bin/python bench/apply.py [--latency 2s] [--bandwidth 2M] [--image-mb 4,16]
                                    [--runs 3] [--hand-runs 7] [--json] [--keep] [-v]

1. Publish to applied. Real processes in a fresh temporary directory: `outpost-node init`
   makes earth and mars (an outpost with `--registry` and `--docker`: the second Docker
   daemon of `scripts/services start --outpost-docker`, as at a real site), both started
   with `outpost-node start`, and `link-sim --latency 2s --bandwidth 2M` between them (no
   loss). Node settings, what an operator who knows the link writes: `rtt = 4500ms` (two
   one-way latencies and the ack batching), `bandwidth = 2M`. A warm-up release runs one
   service from the base image (busybox-static, ONE layer, plus a page), so every later
   image is new to the outpost by one layer: `--image-mb` MiB of incompressible bytes plus a
   page (each size in the list is a case of its own). For k = 1 and k = 3 new images:
   commit an outpost.toml whose k services (busybox httpd, each on its own port, health
   check by URL every 200 ms) run those images, time from just before
   `outpost-node publish --home EARTH` until mars's apply of the commit has finished
   (`status --json`: the apply's `finished` time; both nodes share this machine's clock),
   and read link-sim's a->b bytes offered in that interval.
   ideal = one-way latency + bytes on the link / bandwidth + the apply's own local time (its
   recorded `durations.total`: registry check, pull, stop, start, healthy, clean-up);
   ratio = elapsed / ideal. Target: <= 1.2. Also counted: what crossed mars -> earth in the
   interval (link-sim b->a files, and the kinds Earth delivered: the report only) - push
   needs no round trip, where the original design needs 1 + k (a request, then one per
   image). Each case runs `--runs` times with fresh images; the median is reported.

2. The docker applier's local time for one changed service. On the same site, releases that
   change the one service between two images already in the registry (and pulled), so each
   apply is stop the old container, start the new one, wait until healthy (URL every
   100 ms), remove the old one. Its steps are the apply's recorded switch + check + commit
   (its total adds the prepare: the registry check and image inspect). By hand, on the same
   daemon, timed in this process: `docker stop OLD`, `docker run -d --init --network host
   --name NEW IMAGE httpd ...`, GET the page every 100 ms until it answers, `docker rm OLD`.
   ratio = Outpost steps / by hand, medians of `--hand-runs` alternating runs.

Results are printed (JSON with --json) and written to bench/results/apply.json. A process
that dies, an apply that does not end `applied`, or a target missed makes the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from bench.procs import BenchError, Processes, log_problems, tool  # noqa: E402
from bench.releases import git, run, shared_services, wait_for  # noqa: E402
from outpost.apply.runner import site_id  # noqa: E402
from outpost.apply.spec import SITE  # noqa: E402
from outpost.home import load_home  # noqa: E402
from outpost.units import parse_duration, parse_size  # noqa: E402
from tests.images import build_image, busybox_base, pseudo_random  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "apply.json"
RATIO_TARGET = 1.2
APPLY_TIMEOUT = 600.0
MiB = 1024 * 1024


def say(msg: str) -> None:
    print(f"[apply] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def release_text(services: list[tuple[str, str, int]], interval: str) -> str:
    """outpost.toml running (name, image, port) services, health-checked by URL."""
    images = "".join(f'[[images]]\nref = "{i}"\n\n' for i in dict.fromkeys(s[1] for s in services))
    out = images + '[apply]\napplier = "docker"\n\n'
    for name, image, port in services:
        out += (f'[[services]]\nname = "{name}"\nimage = "{image}"\n'
                f'command = ["httpd", "-f", "-p", "{port}", "-h", "/www"]\nports = ["{port}"]\n'
                f'[services.health]\nurl = "http://127.0.0.1:{port}/"\ninterval = "{interval}"\n'
                'retries = 300\n\n')
    return out


class Site:
    def __init__(self, root: Path, env: dict[str, str], registry: str, outpost_docker: str,
                 args: argparse.Namespace) -> None:
        self.root, self.env, self.args = root, env, args
        self.outpost_docker = outpost_docker
        self.publish_seconds = 0.0
        self.earth, self.mars = root / "earth", root / "mars"
        self.processes = Processes(env)
        template = root / "template"
        template.mkdir(parents=True)
        (template / "outpost.toml").write_text('[apply]\napplier = "command"\ncommand = ["true"]\n')
        rtt = 2 * parse_duration(args.latency) + 0.5
        sets = ["--set", f"rtt={rtt}s", "--set", f"bandwidth={args.bandwidth}",
                "--set", "rescan=1s"]
        node = tool("outpost-node")
        run([node, "init", "--role", "earth", "--home", str(self.earth), "--name", "earth",
             "--template", str(template), *sets], env)
        run([node, "init", "--role", "outpost", "--home", str(self.mars), "--name", "mars",
             "--registry", registry, "--docker", outpost_docker, *sets], env)
        with open(self.mars / "node.toml", "a") as f:  # [outpost] is the last table
            f.write("sync_on_start = false\n")
        run([node, "trust", "--home", str(self.earth), str(self.mars)], env)
        run([node, "trust", "--home", str(self.mars), str(self.earth)], env)

    def start(self) -> None:
        self.processes.start_site(self.earth, self.mars, self.root,
                                  ["--latency", self.args.latency, "--bandwidth",
                                   self.args.bandwidth], self.args.verbose)
        wait_for(lambda: self.link_stats().get("a->b", {}).get("from") is not None, 30,
                 "link-sim to start", self.processes.check_alive)

    def cli(self, *args: str) -> Any:
        return json.loads(run([tool("outpost-node"), *args, "--json"], self.env))

    def link_stats(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.root / "link-stats.json").read_text()))
        except (OSError, ValueError):
            return {}

    def offered(self, direction: str) -> tuple[int, int]:
        d = self.link_stats().get(direction, {}).get("offered", {})
        return int(d.get("bytes", 0)), int(d.get("count", 0))

    def commit(self, text: str, message: str) -> str:
        repo = self.earth / "config"
        (repo / "outpost.toml").write_text(text)
        git(repo, "commit", "-qam", message)
        return git(repo, "rev-parse", "HEAD").strip()

    def finished(self, commit: str) -> dict[str, Any] | None:
        for a in self.cli("status", "--home", str(self.mars))["applies"]:
            if a["commit"] == commit and a["finished"] is not None:
                return dict(a)
        return None

    def apply(self, text: str, message: str) -> tuple[float, dict[str, Any], str]:
        """Publish a release; (start time, its finished apply, commit)."""
        commit = self.commit(text, message)
        t0 = time.time()
        self.cli("publish", "--home", str(self.earth))
        self.publish_seconds = time.time() - t0
        wait_for(lambda: self.finished(commit) is not None, APPLY_TIMEOUT,
                 f"the apply of {commit[:12]}", self.processes.check_alive)
        done = self.finished(commit)
        assert done is not None
        if done["state"] != "applied":
            raise BenchError(f"release {commit[:12]} ended {done['state']}: {done['reason']}")
        return t0, done, commit

    def settle(self) -> None:
        def quiet() -> bool:
            stats = self.link_stats()
            busy = any(stats.get(d, {}).get(k) for d in ("a->b", "b->a")
                       for k in ("queued", "in_flight"))
            return not busy and not self.cli("status", "--home", str(self.earth))["sending"]
        wait_for(quiet, 120, "the link to settle", self.processes.check_alive)

    def earth_kinds_since(self, seen_before: int) -> list[str]:
        from outpost.store.state import State

        state = State(self.earth / "state.db")
        try:
            rows = state.q("SELECT kind FROM seen WHERE src = 'mars' ORDER BY at")
        finally:
            state.close()
        return [r["kind"] for r in rows][seen_before:]

    def seen_count(self) -> int:
        return len(self.earth_kinds_since(0))


def measure_publish(site: Site, client: Any, base: str, k: int, mb: int, run_no: int,
                    args: argparse.Namespace) -> dict[str, Any]:
    tags = []
    for i in range(k):
        tag = f"outpost-bench/apply-{mb}m-k{k}-r{run_no}-{i}:1"
        seed = f"apply-bench/{time.time_ns()}/{k}/{i}"
        build_image(client, tag, {"/data/blob.bin": pseudo_random(seed, mb * MiB),
                                  "/www/index.html": f"<p>{tag}</p>\n"}, base)
        tags.append(tag)
    services = [(f"svc{i}", tag, free_port()) for i, tag in enumerate(tags)]
    site.settle()
    bytes_before, _ = site.offered("a->b")
    _, back_before = site.offered("b->a")
    seen_before = site.seen_count()
    t0, done, commit = site.apply(release_text(services, "200ms"), f"{k} new image(s)")
    elapsed = done["finished"] - t0
    crossed = site.offered("a->b")[0] - bytes_before
    latency, bandwidth = parse_duration(args.latency), parse_size(args.bandwidth)
    local = float(done["durations"]["total"])
    ideal = latency + crossed / bandwidth + local
    for _name, _tag, port in services:
        if not answers(port):
            raise BenchError(f"port {port} does not answer after the apply")
    site.settle()
    kinds = site.earth_kinds_since(seen_before)
    row = {"k": k, "image_mb": mb, "run": run_no, "commit": commit, "elapsed": elapsed,
           "bytes": crossed, "publish_cli": site.publish_seconds,
           "apply_local": local, "durations": done["durations"], "ideal": ideal,
           "ratio": elapsed / ideal, "mars_to_earth_files": site.offered("b->a")[1]
           - back_before, "mars_to_earth_kinds": kinds,
           "round_trips": sum(kind in ("sync", "image-request") for kind in kinds),
           "original_round_trips": 1 + k}
    say(f"{mb} MiB, k={k}, run {run_no}: {elapsed:.2f}s (publish command "
        f"{site.publish_seconds:.2f}s), {crossed / MiB:.2f} MiB, local "
        f"{local:.2f}s, ideal {ideal:.2f}s, ratio {row['ratio']:.3f}; mars->earth {kinds}")
    return row


def measure_local(site: Site, client: Any, base: str,
                  args: argparse.Namespace) -> dict[str, Any]:
    images = []
    for v in ("a", "b"):
        tag = f"outpost-bench/apply-local:{v}"
        build_image(client, tag, {"/www/index.html": f"<p>version {v}</p>\n"}, base)
        images.append(tag)
    port = free_port()
    outpost_runs = []
    for n in range(args.hand_runs + 1):
        image = images[n % 2]
        _t0, done, _c = site.apply(release_text([("web", image, port)], "100ms"),
                                   f"local run {n}")
        if n == 0:
            continue  # the first pulls the images and starts from nothing
        d = done["durations"]
        outpost_runs.append({"steps": d["switch"] + d["check"] + d.get("commit", 0.0),
                             "total": d["total"], "durations": d})
    hand = by_hand(site, images, args.hand_runs)
    steps = statistics.median(r["steps"] for r in outpost_runs)
    total = statistics.median(r["total"] for r in outpost_runs)
    by = statistics.median(hand)
    say(f"one changed service: Outpost steps {steps:.3f}s (total {total:.3f}s), by hand "
        f"{by:.3f}s, ratio {steps / by:.2f}")
    return {"outpost_runs": outpost_runs, "hand_runs": hand, "outpost_steps": steps,
            "outpost_total": total, "by_hand": by, "ratio": steps / by,
            "ratio_total": total / by}


def by_hand(site: Site, images: list[str], runs: int) -> list[float]:
    """The same steps with the docker CLI against the outpost's daemon."""
    registry = site.env["OUTPOST_REGISTRY"]
    env = {**site.env, "DOCKER_HOST": site.outpost_docker}
    pinned = []
    for image in images:
        ref = f"{registry}/{image}"
        subprocess.run(["docker", "pull", "-q", ref], env=env, check=True, capture_output=True)
        pinned.append(ref)
    port = free_port()
    old = None
    times = []
    for n in range(runs + 1):
        name = f"outpost-bench-hand-{n}"
        t0 = time.monotonic()
        if old is not None:
            subprocess.run(["docker", "stop", old], env=env, check=True, capture_output=True)
        subprocess.run(["docker", "run", "-d", "--init", "--network", "host", "--name", name,
                        pinned[n % 2], "httpd", "-f", "-p", str(port), "-h", "/www"],
                       env=env, check=True, capture_output=True)
        while not answers(port):
            time.sleep(0.1)
        if old is not None:
            subprocess.run(["docker", "rm", old], env=env, check=True, capture_output=True)
            times.append(time.monotonic() - t0)
        old = name
    subprocess.run(["docker", "rm", "-f", old or ""], env=env, capture_output=True)
    return times


def report_text(report: dict[str, Any]) -> str:
    out = [f"Outpost apply benchmark ({report['date']}, {report['cpus']} CPUs, Python "
           f"{report['python']}); link {report['params']['latency']} one way, "
           f"{report['params']['bandwidth']}/s", "",
           "| new layer | new images | elapsed | publish command | on the link | apply local | "
           "ideal | ratio | target | round trips (original: 1 + k) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for case in report["publish"].values():
        out.append(f"| {case['image_mb']} MiB | {case['k']} | {case['elapsed']:.2f} s | "
                   f"{case['publish_cli']:.2f} s | {case['bytes'] / MiB:.2f} MiB | "
                   f"{case['apply_local']:.2f} s | {case['ideal']:.2f} s | "
                   f"**{case['ratio']:.3f}** | {RATIO_TARGET} | {case['round_trips']} "
                   f"({case['original_round_trips']}) |")
    local = report["local"]
    out += ["", "| one changed service | median |", "|---|---|",
            f"| Outpost docker applier, stop + start + healthy + remove old | "
            f"{local['outpost_steps']:.3f} s |",
            f"| Outpost, the whole apply (with registry check and image inspect) | "
            f"{local['outpost_total']:.3f} s |",
            f"| by hand with the docker CLI | {local['by_hand']:.3f} s |",
            f"| ratio steps / by hand (whole apply / by hand) | **{local['ratio']:.2f}** "
            f"({local['ratio_total']:.2f}) |"]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", default="2s")
    parser.add_argument("--bandwidth", default="2M")
    parser.add_argument("--image-mb", default="4,16",
                        help="sizes of the new layer of each image, MiB (a list)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hand-runs", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    services = shared_services()
    env = {**os.environ, **services}
    outpost_host = services.get("OUTPOST_DOCKER_OUTPOST") or services["DOCKER_HOST"]
    client = docker.DockerClient(base_url=services["DOCKER_HOST"], timeout=600)
    outpost = docker.DockerClient(base_url=outpost_host, timeout=600)
    work = Path(tempfile.mkdtemp(prefix="outpost-apply-", dir="/tmp"))
    site = Site(work, env, services["OUTPOST_REGISTRY"], outpost_host, args)
    base = "outpost-bench/apply-base:1"
    busybox_base(client, base)
    problems: list[str] = []
    try:
        site.start()
        warm = "outpost-bench/apply-warm:1"
        build_image(client, warm, {"/www/index.html": "<p>warm-up</p>\n"}, base)
        site.apply(release_text([("warm", warm, free_port())], "200ms"), "warm-up: the base")
        publish: dict[str, Any] = {}
        for mb in (int(x) for x in args.image_mb.split(",")):
            for k in (1, 3):
                rows = [measure_publish(site, client, base, k, mb, n, args)
                        for n in range(args.runs)]
                median = sorted(rows, key=lambda r: r["ratio"])[len(rows) // 2]
                publish[f"{mb}MiB-k{k}"] = {**median, "runs": rows}
        local = measure_local(site, client, base, args)
    finally:
        problems = site.processes.stop() + log_problems([site.earth, site.mars])
        mark = f"{SITE}={site_id(load_home(site.mars))}"
        for c in outpost.containers.list(all=True, filters={"label": mark}):
            c.remove(force=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report = {"benchmark": "apply", "date": time.strftime("%Y-%m-%d"),
              "cpus": os.cpu_count(), "python": platform.python_version(),
              "params": vars(args), "publish": publish, "local": local,
              "problems": problems}
    report["pass"] = not problems and all(c["ratio"] <= RATIO_TARGET
                                          for c in publish.values())
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else report_text(report))
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
