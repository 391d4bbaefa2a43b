"""Benchmark of forward error correction (issue 9): publish to ready over a Mars-like link,
with and without FEC.

    .venv/bin/python bench/fec.py [--runs-fec-005 20] [--runs 5] [--parallel 12]
                                  [--blob-kb 96] [--json] [--keep] [-v]

Each run is real processes in a fresh temporary directory: `outpost-node init` makes earth
(its config repo seeded from a template: an outpost.toml with no images and a command
applier, and `data/blob.bin`, `--blob-kb` KiB of random bytes: about a patch release's
delta, bench/delta.py's v1->v2 88 KB) and mars (an outpost with `apply = "manual"`, so the
release stays "ready"); both started with `outpost-node start`, and between them
`link-sim --profile mars --latency 60s --jitter 2.5s --contact-plan none --loss P --seed S`:
the Mars profile's bandwidth (32k), duplication, corruption and reordering, its latency and
jitter scaled down 12 times, no contact plan (so a run takes minutes, not sols).

Node settings, what an operator who knows the link writes: `rtt = 125s`, `bandwidth = 32k`,
and with FEC `expected_loss = P` (`fec = "auto"`, the default: the sender sizes repairs
from the loss it then observes); without FEC `fec = "off"`.

Per run: time from just before `outpost-node publish --home EARTH` until mars's `status
--json` would list the release commit ready (its state read every 0.2 s); bytes = the sizes of the
bundles Earth queued for the release (its custody messages: git bundle, release manifest),
so ideal = one-way latency + bytes / bandwidth and ratio = elapsed / ideal. Resends: the
units Earth sent more than once (its log's "resending" lines: data whose ack did not come
in time, probes for a lost ack of the whole). A run has "zero resend rounds" when there
are none. Cases: FEC at loss 0.05 (`--runs-fec-005` seeds), no FEC at 0.05, FEC at 0.2 and
no FEC at 0.2 (`--runs` seeds each); `--parallel` runs at once (their link-sims run at 32
KiB/s each, so they do not compete for this machine). Seeds are 1..N for every case.
Targets (issue 9): median ratio with FEC <= 1.2 at both losses; zero resend rounds in at
least 19 of 20 seeded runs at 0.05.

Results are printed (JSON with --json) and written to bench/results/fec.json; a run that
fails or a target missed makes the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procs import BenchError, Processes, log_problems, read_text, tool  # noqa: E402
from bench.releases import git, run, wait_for  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "fec.json"
LATENCY, JITTER, BANDWIDTH = 60.0, "2.5s", 32 * 1024
RATIO_TARGET = 1.2
READY_TIMEOUT = 1800.0
OUTPOST_TOML = """\
[apply]
applier = "command"
command = ["true"]
"""


def say(msg: str) -> None:
    print(f"[fec] {msg}", file=sys.stderr, flush=True)


class Run:
    def __init__(self, root: Path, loss: float, fec: bool, seed: int,
                 args: argparse.Namespace) -> None:
        self.root, self.loss, self.fec, self.seed, self.args = root, loss, fec, seed, args
        self.earth, self.mars = root / "earth", root / "mars"
        self.env = dict(os.environ)
        self.processes = Processes(self.env)

    def setup(self) -> None:
        template = self.root / "template"
        (template / "data").mkdir(parents=True)
        (template / "outpost.toml").write_text(OUTPOST_TOML)
        rng = __import__("random").Random(self.seed)
        (template / "data" / "blob.bin").write_bytes(rng.randbytes(self.args.blob_kb * 1024))
        fec = [f"expected_loss={self.loss}"] if self.fec else ["fec=off"]
        sets = [x for s in ["rtt=125s", f"bandwidth={BANDWIDTH}", "rescan=1s", *fec]
                for x in ("--set", s)]
        node = tool("outpost-node")
        run([node, "init", "--role", "earth", "--home", str(self.earth), "--name", "earth",
             "--template", str(template), *sets], self.env)
        run([node, "init", "--role", "outpost", "--home", str(self.mars), "--name", "mars",
             *sets], self.env)
        with open(self.mars / "node.toml", "a") as f:
            f.write('\n[outpost]\napply = "manual"\nsync_on_start = false\n')
        run([node, "trust", "--home", str(self.earth), str(self.mars)], self.env)
        run([node, "trust", "--home", str(self.mars), str(self.earth)], self.env)

    def start(self) -> None:
        link = ["--profile", "mars", "--latency", f"{LATENCY:g}s", "--jitter", JITTER,
                "--contact-plan", "none", "--loss", str(self.loss), "--seed", str(self.seed)]
        self.processes.start_site(self.earth, self.mars, self.root, link, self.args.verbose)
        wait_for(self._started, 60, "nodes and link-sim to start",
                 self.processes.check_alive)

    def _started(self) -> bool:
        return all(" running in " in read_text(h / "node.log") for h in (self.earth, self.mars))

    def cli(self, *args: str) -> Any:
        return json.loads(run([tool("outpost-node"), *args, "--json"], self.env))

    def ready(self, commit: str) -> bool:
        """Read from mars's state, as `status` does, without a process per poll (a dozen
        runs poll at once)."""
        rows = query(self.mars / "state.db", "SELECT state FROM releases WHERE commit_id = ?",
                     commit)
        return bool(rows) and rows[0][0] == "ready"

    def measure(self) -> dict[str, Any]:
        commit = git(self.earth / "config", "rev-parse", "HEAD").strip()
        t0 = time.time()
        self.cli("publish", "--home", str(self.earth))
        wait_for(lambda: self.ready(commit), READY_TIMEOUT, "the release ready at mars",
                 self.processes.check_alive)
        elapsed = time.time() - t0
        size = self.release_bytes(t0)
        ideal = LATENCY + size / BANDWIDTH
        log = read_text(self.earth / "node.log")
        return {"loss": self.loss, "fec": self.fec, "seed": self.seed,
                "seconds": round(elapsed, 1), "bytes": size, "ideal": round(ideal, 1),
                "ratio": round(elapsed / ideal, 3), "resends": log.count("resending "),
                "probes": log.count("no ack of the whole yet")}

    def release_bytes(self, since: float) -> int:
        return int(query(self.earth / "state.db", "SELECT coalesce(sum(size), 0) FROM "
                         "messages WHERE created >= ?", since - 1)[0][0])


def query(db_path: Path, sql: str, *args: Any) -> list[Any]:
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return []
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # the node has not made the table yet
        return []
    finally:
        db.close()


def one(base: Path, loss: float, fec: bool, seed: int,
        args: argparse.Namespace) -> dict[str, Any]:
    root = base / f"{'fec' if fec else 'plain'}-{loss}-{seed}"
    root.mkdir()
    r = Run(root, loss, fec, seed, args)
    problems: list[str] = []
    try:
        r.setup()
        r.start()
        result = r.measure()
    except BenchError as e:
        result = {"loss": loss, "fec": fec, "seed": seed, "error": str(e)}
    finally:
        problems += r.processes.stop() + log_problems([r.earth, r.mars])
    result["problems"] = problems
    say(f"loss {loss} fec {fec} seed {seed}: " + (
        f"{result['seconds']} s, ratio {result['ratio']}, resends {result['resends']}"
        if "seconds" in result else result["error"]))
    return result


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for loss in sorted({r["loss"] for r in runs}):
        for fec in (True, False):
            case = [r for r in runs if r["loss"] == loss and r["fec"] == fec and "ratio" in r]
            if not case:
                continue
            out.append({"loss": loss, "fec": fec, "runs": len(case),
                        "median_ratio": statistics.median(r["ratio"] for r in case),
                        "worst_ratio": max(r["ratio"] for r in case),
                        "median_seconds": statistics.median(r["seconds"] for r in case),
                        "bytes": statistics.median(r["bytes"] for r in case),
                        "zero_resend_runs": sum(1 for r in case if r["resends"] == 0)})
    return out


def report_text(report: dict[str, Any]) -> str:
    lines = [f"link: mars profile, latency {LATENCY:g}s, jitter {JITTER}, "
             f"bandwidth {BANDWIDTH // 1024} KiB/s, no contact plan",
             "loss  FEC  runs  release bytes  median s  median ratio  worst  zero-resend runs"]
    for c in report["summary"]:
        lines.append(f"{c['loss']:>4}  {'on' if c['fec'] else 'off':>3}  {c['runs']:>4}  "
                     f"{c['bytes']:>13,.0f}  {c['median_seconds']:>8.1f}  "
                     f"{c['median_ratio']:>12.3f}  {c['worst_ratio']:>5.2f}  "
                     f"{c['zero_resend_runs']:>5} of {c['runs']}")
    lines += [f"target missed: {m}" for m in report["missed"]]
    return "\n".join(lines)


def targets(report: dict[str, Any]) -> list[str]:
    missed = []
    for c in report["summary"]:
        if c["fec"] and c["median_ratio"] > RATIO_TARGET:
            missed.append(f"loss {c['loss']} with FEC: ratio {c['median_ratio']} > 1.2")
        if c["fec"] and c["loss"] == 0.05 and c["runs"] >= 20 and c["zero_resend_runs"] < 19:
            missed.append(f"loss 0.05: zero resends in {c['zero_resend_runs']} of 20 runs")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs-fec-005", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--parallel", type=int, default=12)
    parser.add_argument("--blob-kb", type=int, default=96)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="outpost-bench-fec-"))
    say(f"working in {base}")
    cases = [(0.05, True, s) for s in range(1, args.runs_fec_005 + 1)]
    cases += [(loss, fec, s) for loss, fec in ((0.05, False), (0.2, True), (0.2, False))
              for s in range(1, args.runs + 1)]
    try:
        with ThreadPoolExecutor(args.parallel) as pool:
            runs = list(pool.map(lambda c: one(base, *c, args), cases))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    report: dict[str, Any] = {"runs": runs, "summary": summary(runs)}
    report["missed"] = targets(report)
    failed = [r for r in runs if "error" in r or r["problems"]]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else report_text(report))
    for r in failed:
        say(f"run failed: {r}")
    return 1 if failed or report["missed"] else 0


if __name__ == "__main__":
    sys.exit(main())
