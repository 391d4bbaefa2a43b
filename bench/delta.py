"""Benchmark of layer deltas (issue 9): bytes on the link for patch releases, and the
delta's own speed and memory.

    .venv/bin/python bench/delta.py [--skip-link] [--skip-speed] [--json] [--keep] [-v]

1. Link bytes. Real processes, as bench/releases.py runs them (two homes, both nodes,
   `link-sim --latency 100ms`, no loss). An image family of 3 layers built locally: a
   busybox-static base, a deps layer (40 files, 4 MiB of source-like text) and an app layer
   of 506 files (8.6 MB: source-like text and JSON, 30 binary files). v2 changes 25 of the
   506 app files, v3 changes 3 of them (each changed file regenerated). For v1 -> v2 and
   v2 -> v3: link-sim's a->b bytes offered from the publish until the link settles, next to
   `zstd -3 --patch-from=OLD NEW` of the changed layer (the CLI, on the layer tars of
   `docker save`) and `zstd -3` of the layer alone (what Outpost sent before deltas:
   about 1.04 x that). Target: a->b <= 1.5 x patch-from + 32 KiB.

2. Speed and memory, in a fresh process: build (`patch`, zstd --patch-from) and rebuild
   (Rebuilder: zstd -d --patch-from, with the sha256 of the layer) of a layer of
   `--speed-mb` MiB (default 512, MAX_BASE: a bigger base is not used, the layer goes
   whole) against a base of the same size that differs in 5% of its 64 KiB blocks, files on
   disk; MB/s of layer, the Python process's peak RSS (VmHWM) and zstd's (its children's
   ru_maxrss).

Results are printed (JSON with --json) and written to bench/results/delta.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from bench.procs import BenchError  # noqa: E402
from bench.releases import (  # noqa: E402
    Names,
    Site,
    docker_save,
    json_text,
    run,
    shared_services,
    source_text,
    wait_for,
)
from tests.images import build_image, busybox_base  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "delta.json"
MiB = 1024 * 1024
TARGET_FACTOR, TARGET_SLACK = 1.5, 32 * 1024
CHANGES = {"v2": 25, "v3": 3}


def say(msg: str) -> None:
    print(f"[delta] {msg}", file=sys.stderr, flush=True)


def app_files(version: str) -> dict[str, bytes]:
    """506 files: v2 regenerates 25 of v1's, v3 regenerates 3 more of v2's (a fixed shuffle
    picks which)."""
    order = list(range(506))
    random.Random("delta/order").shuffle(order)
    v2 = dict.fromkeys(order[:25], "v2")
    gens = {"v1": {}, "v2": v2, "v3": {**v2, **dict.fromkeys(order[25:28], "v3")}}
    files = {}
    for i in range(506):
        rng = random.Random(f"delta/app/{i}/{gens[version].get(i, 'v1')}")
        if i % 17 == 0:
            files[f"/app/bin/mod{i}.so"] = rng.randbytes(16 * 1024)
        elif i % 5 == 0:
            files[f"/app/conf/c{i}.json"] = json_text(rng, 12 * 1024)
        else:
            files[f"/app/src/m{i}.py"] = source_text(rng, 17 * 1024)
    return files


def deps_files() -> dict[str, bytes]:
    rng = random.Random("delta/deps")
    return {f"/deps/lib{i}.py": source_text(rng, 100 * 1024) for i in range(40)}


def layer_tar(ref: str, diff_id: str, dest: Path, env: dict[str, str]) -> Path:
    """The layer `diff_id` of `ref`, as a file (from `docker save`)."""
    tar_path = dest / "save.tar"
    docker_save(ref, tar_path, env)
    out = dest / diff_id.replace(":", "-")
    with tarfile.open(tar_path) as tar:
        for member in tar:
            f = tar.extractfile(member) if member.isfile() else None
            if f is None:
                continue
            data = f.read()
            if "sha256:" + hashlib.sha256(data).hexdigest() == diff_id:
                out.write_bytes(data)
                tar_path.unlink()
                return out
    raise BenchError(f"{diff_id} not in docker save of {ref}")


def zstd_size(args: list[str]) -> int:
    with tempfile.NamedTemporaryFile(suffix=".zst") as out:
        run(["zstd", "-3", "-q", "-f", *args, "-o", out.name])
        return Path(out.name).stat().st_size


def measure_link(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    services = shared_services()
    env = {**services}
    client = docker.DockerClient(base_url=services["DOCKER_HOST"])
    names = Names()
    site = Site(work / "site", env, args.verbose)
    rows: list[dict[str, Any]] = []
    try:
        busybox_base(client, names.base)
        names.built(None, names.base)
        deps = f"{names.prefix}-deps:1"
        build_image(client, deps, deps_files(), names.base)
        names.built(None, deps)
        site.setup(services["OUTPOST_REGISTRY"])
        site.start()
        previous: tuple[str, str] | None = None
        for version in ("v1", "v2", "v3"):
            ref = names.app(version)
            build_image(client, ref, app_files(version), deps)
            names.built(None, ref)
            info = client.api.inspect_image(ref)
            app_layer = info["RootFS"]["Layers"][-1]
            commit = site.commit([ref], version)
            site.settle()
            before = site.counters()
            published = site.cli("publish", "--home", str(site.earth))
            wait_for(lambda c=commit: site.ready(c), 300, f"{version} ready", site.check_alive)
            site.settle()
            after = site.counters()
            row: dict[str, Any] = {"version": version, "a->b_bytes": after["a->b_bytes"] -
                                   before["a->b_bytes"],
                                   "what": [m["what"] for p in published for m in p["messages"]]}
            new = layer_tar(ref, app_layer, work, env)
            row["layer_bytes"] = new.stat().st_size
            row["layer_zstd3"] = zstd_size([str(new)])
            if previous is not None:
                old = layer_tar(previous[0], previous[1], work, env)
                row["patch_from"] = zstd_size([f"--patch-from={old}", str(new)])
                row["target"] = TARGET_FACTOR * row["patch_from"] + TARGET_SLACK
                row["pass"] = row["a->b_bytes"] <= row["target"]
                old.unlink()
            new.unlink()
            previous = (ref, app_layer)
            say(f"{version}: {row['a->b_bytes']:,} bytes a->b; layer zstd -3 "
                f"{row['layer_zstd3']:,}; patch-from {row.get('patch_from', '-')}")
            rows.append(row)
    finally:
        problems = site.stop()
        names.cleanup(client)
    if problems:
        raise BenchError("; ".join(problems))
    return rows


SPEED_CODE = '''
import hashlib, os, random, resource, sys, tempfile, time
from pathlib import Path
from outpost.images.delta import Rebuilder, patch
size = int(sys.argv[1]) * 1024 * 1024
block = 64 * 1024
tmp = Path(tempfile.mkdtemp(dir=sys.argv[2]))
rng = random.Random(1)
changed = set(rng.sample(range(size // block), size // block // 20))
sha = hashlib.sha256()
with open(tmp / "base", "wb") as b, open(tmp / "new", "wb") as n:
    for i in range(size // block):
        data = rng.randbytes(block)
        b.write(data)
        data = rng.randbytes(block) if i in changed else data
        n.write(data)
        sha.update(data)
t = time.perf_counter()
delta = tmp / "delta"
with open(delta, "wb") as f:
    for chunk in patch(tmp / "base", tmp / "new"):
        f.write(chunk)
build = time.perf_counter() - t
class Null:
    def write(self, b): pass
    def close(self): pass
t = time.perf_counter()
r = Rebuilder(tmp / "base", Null(), "sha256:" + sha.hexdigest(), size)
with open(delta, "rb") as f:
    while chunk := f.read(1 << 20):
        r.write(chunk)
r.close()
rebuild = time.perf_counter() - t
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(delta.stat().st_size, build, rebuild, int(hwm) * 1024, kids)
for p in tmp.iterdir():
    p.unlink()
tmp.rmdir()
'''


def measure_speed(mb: int, work: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", SPEED_CODE, str(mb), str(work)],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()
    delta, build, rebuild = int(out[0]), float(out[1]), float(out[2])
    layer = mb * MiB
    return {"layer_mib": mb, "delta_bytes": delta, "build_mb_s": layer / build / 1e6,
            "rebuild_mb_s": layer / rebuild / 1e6, "python_peak_rss_mib": int(out[3]) / MiB,
            "zstd_peak_rss_mib": int(out[4]) / MiB}


def report_text(r: dict[str, Any]) -> str:
    lines = []
    if r.get("link"):
        lines.append("release  a->b bytes   layer zstd -3  patch-from  target      pass")
        for x in r["link"]:
            lines.append(f"{x['version']:>7}  {x['a->b_bytes']:>10,}  {x['layer_zstd3']:>13,}"
                         f"  {x.get('patch_from', 0):>10,}  {x.get('target', 0):>10,.0f}"
                         f"  {x.get('pass', '-')}")
    if r.get("speed"):
        s = r["speed"]
        lines.append(f"delta of a {s['layer_mib']} MiB layer (5% changed): {s['delta_bytes']:,}"
                     f" bytes; build {s['build_mb_s']:.0f} MB/s, rebuild "
                     f"{s['rebuild_mb_s']:.0f} MB/s; peak RSS: Python "
                     f"{s['python_peak_rss_mib']:.0f} MiB, zstd {s['zstd_peak_rss_mib']:.0f} MiB")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-link", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--speed-mb", type=int, default=512)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="outpost-bench-delta-"))
    report: dict[str, Any] = {}
    try:
        if not args.skip_link:
            report["link"] = measure_link(args, work)
        if not args.skip_speed:
            report["speed"] = measure_speed(args.speed_mb, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else report_text(report))
    ok = all(x.get("pass", True) for x in report.get("link", []))
    return 0 if ok else 1


if __name__ == "__main__":
    started = time.time()
    code = main()
    say(f"done in {time.time() - started:.0f}s")
    sys.exit(code)
