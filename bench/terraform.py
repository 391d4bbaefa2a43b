"""Benchmark of the terraform applier with its provider carried across the link (issue 8).

    .venv/bin/python bench/terraform.py [--latency 2s] [--bandwidth 0] [--json] [--keep] [-v]

Real processes in a fresh temporary directory: `outpost-node init` makes earth (with
`[earth] terraform_mirror = /opt/tf-plugins`) and mars (the terraform applier), both
started with `outpost-node start` (mars inside `unshare --net`, so it has no network at
all, where run as root), and `link-sim --latency 2s` between them (no loss; bandwidth
unlimited unless given). Node settings: `rtt` = two one-way latencies + 0.5 s.

The release is the one tests/test_e2e_terraform.py applies: the hashicorp/aws 5.100.0
provider (an `aws_partition` data source, offline provider settings) and a
`terraform_data` whose value is the release's version; its lock file is what `terraform
providers lock -fs-mirror=/opt/tf-plugins` writes. Release 1 needs the provider, release 2
changes only the value.

For each release: bytes a->b that link-sim was offered between the publish and the end of
the apply (against the provider's own size and its `zstd -3` size, for the first), and the
time from just before `outpost-node publish` to the apply's end, split into:
    publish    the publish command (Earth reads the lock file, packs and signs: for release
               1 that is zstd -3 of the provider)
    link       from the publish's end to the apply's start: the link's latency and transfer,
               the outpost's checks and install, the release becoming ready
    terraform  the apply's own recorded time (`terraform init` + `terraform apply`)

Results are printed (JSON with --json) and written to bench/results/terraform.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zstandard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procs import BenchError, Processes, log_problems, tool  # noqa: E402
from bench.releases import git, run, wait_for  # noqa: E402
from outpost.units import parse_duration  # noqa: E402
from tests.test_e2e_terraform import (  # noqa: E402
    AWS,
    MAIN_TF,
    MIRROR,
    add_setting,
    write_template,
)

RESULTS = ROOT / "bench" / "results" / "terraform.json"


def say(msg: str) -> None:
    print(f"[terraform] {msg}", file=sys.stderr, flush=True)


class Site:
    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root, self.args = root, args
        self.earth, self.mars = root / "earth", root / "mars"
        self.env = {**os.environ, "CHECKPOINT_DISABLE": "1"}
        self.processes = Processes(self.env)
        template = write_template(root)
        rtt = 2 * parse_duration(args.latency) + 0.5
        sets = ["--set", f"rtt={rtt}s", "--set", f"bandwidth={args.bandwidth}",
                "--set", "rescan=1s"]
        node = tool("outpost-node")
        run([node, "init", "--role", "earth", "--home", str(self.earth), "--name", "earth",
             "--template", str(template), *sets], self.env)
        run([node, "init", "--role", "outpost", "--home", str(self.mars), "--name", "mars",
             *sets], self.env)
        add_setting(self.earth, "earth", f'terraform_mirror = "{MIRROR}"')
        add_setting(self.mars, "outpost", f'terraform = "{shutil.which("terraform")}"\n'
                                          "sync_on_start = false")
        run([node, "trust", "--home", str(self.earth), str(self.mars)], self.env)
        run([node, "trust", "--home", str(self.mars), str(self.earth)], self.env)

    def start(self) -> None:
        link = ["--latency", self.args.latency, "--bandwidth", self.args.bandwidth]
        v = ["-v"] if self.args.verbose else []
        offline = ["unshare", "--net"] if os.geteuid() == 0 and shutil.which("unshare") else []
        self.processes.spawn("earth", [tool("outpost-node"), "start", "--home",
                                       str(self.earth), *v], self.earth / "stderr.log")
        self.processes.spawn("mars", [*offline, tool("outpost-node"), "start", "--home",
                                      str(self.mars), *v], self.mars / "stderr.log")
        self.processes.spawn("link-sim", [tool("link-sim"), "--a", str(self.earth), "--b",
                                          str(self.mars), "--state", str(self.root / "link"),
                                          "--stats", str(self.root / "link-stats.json"),
                                          *link, *v], self.root / "link.log")
        self.offline = bool(offline)

    def cli(self, *args: str) -> Any:
        return json.loads(run([tool("outpost-node"), *args, "--json"], self.env))

    def offered(self) -> int:
        try:
            stats = json.loads((self.root / "link-stats.json").read_text())
        except (OSError, ValueError):
            return 0
        return int(stats.get("a->b", {}).get("offered", {}).get("bytes", 0))

    def finished(self, commit: str) -> dict[str, Any] | None:
        for a in self.cli("status", "--home", str(self.mars))["applies"]:
            if a["commit"] == commit and a["finished"] is not None:
                return dict(a)
        return None

    def release(self, version: str) -> dict[str, Any]:
        repo = self.earth / "config"
        if version != "1":
            (repo / "tf" / "main.tf").write_text(MAIN_TF.replace("VERSION", version))
            git(repo, "commit", "-qam", f"version {version}")
        commit = git(repo, "rev-parse", "HEAD").strip()
        before, t0 = self.offered(), time.time()
        self.cli("publish", "--home", str(self.earth))
        published = time.time()
        wait_for(lambda: self.finished(commit) is not None, 900, f"release {version} applied",
                 self.processes.check_alive)
        done = self.finished(commit)
        assert done is not None
        if done["state"] != "applied":
            raise BenchError(f"release {version} ended {done['state']}: {done['reason']}")
        wait_for(self.settled, 120, "the link to settle", self.processes.check_alive)
        return {"version": version, "bytes": self.offered() - before,
                "seconds": round(done["finished"] - t0, 2),
                "publish": round(published - t0, 2),
                "link": round(done["started"] - published, 2),
                "terraform": round(done["finished"] - done["started"], 2),
                "changes": done["changes"]}

    def settled(self) -> bool:
        return not self.cli("status", "--home", str(self.earth))["sending"]


def provider_sizes() -> dict[str, int]:
    """The package's own bytes and their zstd -3 size (each file a frame, as on the link)."""
    raw = packed = 0
    for f in sorted((MIRROR / AWS).iterdir()):
        cctx = zstandard.ZstdCompressor(level=3)
        with open(f, "rb") as src:
            out = cctx.compressobj()
            while chunk := src.read(1 << 20):
                raw += len(chunk)
                packed += len(out.compress(chunk))
            packed += len(out.flush())
    return {"raw": raw, "zstd3": packed}


def report_text(r: dict[str, Any]) -> str:
    p = r["provider"]
    lines = [f"provider {AWS}: {p['raw'] / 1e6:.1f} MB, zstd -3 {p['zstd3'] / 1e6:.1f} MB",
             f"link: latency {r['latency']}, bandwidth {r['bandwidth'] or 'unlimited'}; "
             f"outpost without network: {r['offline']}",
             "release  bytes on link  x zstd-3   total s  publish s  link s  terraform s"]
    for x in r["releases"]:
        lines.append(f"{x['version']:>7}  {x['bytes']:>13,}  {x['bytes'] / p['zstd3']:>8.3f}"
                     f"  {x['seconds']:>8.1f}  {x['publish']:>9.1f}  {x['link']:>6.1f}"
                     f"  {x['terraform']:>11.1f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", default="2s")
    parser.add_argument("--bandwidth", default="0")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    if shutil.which("terraform") is None or not (MIRROR / AWS).is_dir():
        raise SystemExit(f"needs terraform on PATH and {AWS} in {MIRROR}")
    root = Path(tempfile.mkdtemp(prefix="outpost-bench-tf-"))
    say(f"working in {root}")
    site = Site(root, args)
    problems: list[str] = []
    try:
        site.start()
        report = {"latency": args.latency, "bandwidth": args.bandwidth,
                  "provider": provider_sizes(),
                  "releases": [site.release("1"), site.release("2")]}
    finally:
        problems += site.processes.stop()
        problems += log_problems([site.earth, site.mars])
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report["offline"] = site.offline
    report["problems"] = problems
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else report_text(report))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
