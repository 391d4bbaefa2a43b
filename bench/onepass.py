"""Benchmark of the bus's own cost (issue 9, part 4): a big `send` through link-sim at
unlimited bandwidth, against the floor of compressing and hashing the same file.

    .venv/bin/python bench/onepass.py [--size 1G] [--data compressible,random] [--json]
                                      [--keep] [-v]

Per data set (bench/codec.py's generators: log-like text zstd -3 shrinks about 5 times, and
random bytes), in a fresh temporary directory on the same disk:

- floor: `zstd -3 -T1 FILE -o FILE.zst` then `sha256sum FILE`, timed one after the other
  (what any sender must at least do: compress once, hash once), measured in the same run;
- Outpost: two homes (`outpost-node init`, trusting each other, mars's release sync off),
  both nodes started, `link-sim` between them with no latency, no bandwidth limit and no
  loss. The clock runs from just before `outpost-node send --home earth --to mars FILE`
  until the file appears complete in mars's `received/earth/` (an atomic rename after its
  payload was verified and fsynced); ratio = elapsed / floor. The received file's SHA-256
  is checked.
- resends on this lossless link: link-sim's a->b bundles offered beyond the message's units,
  and the "resending" lines of earth's log (each a unit sent again).

Node settings: `rtt = 200ms` (the link has no latency: the round trip is the ack batching).
Targets (issue 9): ratio <= 1.2 for both data sets, and no resend. Results are printed
(JSON with --json) and written to bench/results/onepass.json; a failed run or a target
missed makes the exit status 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.codec import compressible_blocks, generate, random_blocks  # noqa: E402
from bench.procs import BenchError, Processes, log_problems, read_text, tool  # noqa: E402
from bench.releases import run, wait_for  # noqa: E402
from outpost.units import parse_size  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "onepass.json"
RATIO_TARGET = 1.2
GENERATORS = {"compressible": compressible_blocks, "random": random_blocks}


def say(msg: str) -> None:
    print(f"[onepass] {msg}", file=sys.stderr, flush=True)


def timed(cmd: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def floor(path: Path) -> dict[str, float]:
    out = path.with_suffix(".zst")
    subprocess.run(["sync"], check=True)
    zstd = timed(["zstd", "-3", "-T1", "-q", "-f", str(path), "-o", str(out)])
    sha = timed(["sha256sum", str(path)])
    out.unlink()
    return {"zstd": round(zstd, 2), "sha256sum": round(sha, 2), "floor": round(zstd + sha, 2)}


def sha256_of(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            sha.update(block)
    return sha.hexdigest()


def outpost(root: Path, data: Path, verbose: bool) -> dict[str, Any]:
    earth, mars = root / "earth", root / "mars"
    node = tool("outpost-node")
    sets = ["--set", "rtt=200ms"]
    run([node, "init", "--role", "earth", "--home", str(earth), "--name", "earth", *sets])
    run([node, "init", "--role", "outpost", "--home", str(mars), "--name", "mars", *sets])
    with open(mars / "node.toml", "a") as f:
        f.write('\n[outpost]\nsync_on_start = false\nsync_interval = "0s"\n')
    run([node, "trust", "--home", str(earth), str(mars)])
    run([node, "trust", "--home", str(mars), str(earth)])
    procs = Processes()
    problems: list[str] = []
    try:
        procs.start_site(earth, mars, root, [], verbose)
        wait_for(lambda: all(" running in " in read_text(h / "node.log") for h in (earth, mars)),
                 60, "the nodes to start", procs.check_alive)
        subprocess.run(["sync"], check=True)
        target = mars / "received" / "earth" / data.name
        t0 = time.monotonic()
        sent = json.loads(run([node, "send", "--home", str(earth), "--to", "mars", str(data),
                               "--json"]))
        wait_for(target.exists, 1800, "the file in mars's received/", procs.check_alive)
        elapsed = time.monotonic() - t0
        wait_for(lambda: "delivered to mars" in read_text(earth / "node.log"), 120,
                 "earth's custody released", procs.check_alive)
        time.sleep(2)  # let link-sim write its final counters
    finally:
        problems += procs.stop() + log_problems([earth, mars])
    if sha256_of(target) != sha256_of(data):
        raise BenchError("the received file differs from the one sent")
    stats = json.loads((root / "link-stats.json").read_text())["a->b"]
    log = read_text(earth / "node.log")
    units = int(sent["units"])
    return {"seconds": round(elapsed, 2), "units": units,
            "offered": stats["offered"]["count"], "offered_bytes": stats["offered"]["bytes"],
            "resent_units": stats["offered"]["count"] - units,
            "resending_lines": log.count("resending "), "problems": problems}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--data", default="compressible,random")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    size = parse_size(args.size)
    base = Path(tempfile.mkdtemp(prefix="outpost-bench-onepass-", dir="/var/tmp"))
    say(f"working in {base}")
    rows = []
    try:
        for name in args.data.split(","):
            root = base / name
            root.mkdir()
            data = root / f"{name}.bin"
            generate(data, GENERATORS[name](size))
            f = floor(data)
            o = outpost(root, data, args.verbose)
            row = {"data": name, "size": size, **f, **o,
                   "ratio": round(o["seconds"] / f["floor"], 3)}
            say(json.dumps(row))
            rows.append(row)
            shutil.rmtree(root / "earth", ignore_errors=True)
            shutil.rmtree(root / "mars", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    missed = [f"{r['data']}: ratio {r['ratio']} > {RATIO_TARGET}" for r in rows
              if r["ratio"] > RATIO_TARGET]
    missed += [f"{r['data']}: {r['resent_units']} unit(s) resent on a lossless link"
               for r in rows if r["resent_units"]]
    report = {"rows": rows, "missed": missed}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("data          zstd s  sha256 s  floor s  outpost s  ratio  units  resent")
        for r in rows:
            print(f"{r['data']:<12}  {r['zstd']:>6}  {r['sha256sum']:>8}  {r['floor']:>7}  "
                  f"{r['seconds']:>9}  {r['ratio']:>5}  {r['units']:>5}  {r['resent_units']:>6}")
        for m in missed:
            print(f"target missed: {m}")
    return 1 if missed or any(r["problems"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
