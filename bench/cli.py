"""Benchmark of the everyday command line (issue 10): how long a call takes.

    .venv/bin/python bench/cli.py [--runs 15] [--files 200] [--json]

In a fresh temporary directory: two homes (`outpost-node init`, trusting each other; no
node running). Each command runs `--runs` times as a new process, as a person or a script
calls it, and the median wall time is reported: `outpost-node --help`, `outpost-node status
--home EARTH --json`, and `outpost-node send --home EARTH --to mars FILE` of a 1 KiB file.
Then `--files` files of 1 KiB in ONE `send` call (per-file time), against the same number
of single-file calls estimated from the median. Also shown: `python -X importtime` of the
CLI module (self-reported import time, microseconds summed). Targets (issue 10): `status
--json` and `send` of a small file <= 0.15 s. Results go to bench/results/cli.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procs import tool  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "cli.json"
TARGET = 0.15


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def median_of(args: list[str], runs: int) -> float:
    return round(statistics.median(timed(args) for _ in range(runs)), 3)


def import_time() -> float:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import outpost.cli.main"],
                         capture_output=True, text=True, check=True).stderr
    last = [line for line in out.splitlines() if line.rstrip().endswith("outpost.cli.main")]
    return int(last[-1].split("|")[1]) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    node = tool("outpost-node")
    work = Path(tempfile.mkdtemp(prefix="outpost-bench-cli-"))
    try:
        earth, mars = work / "earth", work / "mars"
        for home, role, name in ((earth, "earth", "earth"), (mars, "outpost", "mars")):
            subprocess.run([node, "init", "--role", role, "--home", str(home), "--name", name],
                           check=True, capture_output=True)
        subprocess.run([node, "trust", "--home", str(earth), str(mars)], check=True,
                       capture_output=True)
        small = work / "small.bin"
        small.write_bytes(os.urandom(1024))
        many = []
        for i in range(args.files):
            p = work / "many" / f"f{i:04d}.bin"
            p.parent.mkdir(exist_ok=True)
            p.write_bytes(os.urandom(1024))
            many.append(str(p))
        report: dict[str, Any] = {
            "help": median_of([node, "--help"], args.runs),
            "status_json": median_of([node, "status", "--home", str(earth), "--json"],
                                     args.runs),
            "send_1k": median_of([node, "send", "--home", str(earth), "--to", "mars",
                                  str(small)], args.runs),
            "import_s": round(import_time(), 3),
        }
        t = timed([node, "send", "--home", str(earth), "--to", "mars", *many])
        report["send_many"] = {"files": args.files, "seconds": round(t, 2),
                               "per_file": round(t / args.files, 4),
                               "one_call_each_estimate": round(args.files * report["send_1k"], 1)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["missed"] = [f"{k} {report[k]} s > {TARGET} s" for k in ("status_json", "send_1k")
                        if report[k] > TARGET]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"--help {report['help']} s · status --json {report['status_json']} s · "
              f"send 1 KiB {report['send_1k']} s (median of {args.runs}); import of the CLI "
              f"{report['import_s']} s")
        m = report["send_many"]
        print(f"send of {m['files']} files in one call: {m['seconds']} s ({m['per_file']} s "
              f"a file; one call each: about {m['one_call_each_estimate']} s)")
        for x in report["missed"]:
            print(f"target missed: {x}")
    return 1 if report["missed"] else 0


if __name__ == "__main__":
    sys.exit(main())
