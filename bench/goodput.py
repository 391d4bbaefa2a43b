"""Benchmark of the bundle bus: goodput of one big file through link-sim, real processes.

    .venv/bin/python bench/goodput.py [--size 100M] [--bandwidth 2M] [--latency 100ms]
                                      [--loss 0,0.1,0.3] [--seed 1] [--json] [--keep] [-v]

For each loss rate, in a fresh temporary directory: two homes made with `outpost-node init`
(`earth`, role earth; `mars`, role outpost) that trust each other, both nodes started with
`outpost-node start`, and `link-sim` between them (`--latency --bandwidth --loss --seed
--stats`). A file of `--size` random bytes (incompressible, so zstd cannot flatter the
figure) is sent with `outpost-node send --home earth --to mars FILE`; the clock runs from
just before that command until the file is complete in mars's `received/earth/` (its final
name appears by an atomic rename after the payload was verified and fsync'ed). Earth's
custody release (nothing left "sending" in its state, what `outpost-node status --json`
shows) is timed too, and the received file's SHA-256 is checked against the original.

The figure (issue): elapsed / ideal, ideal = latency + size / (bandwidth × (1 − loss)).
Targets: <= 1.15 at loss 0, <= 1.3 at loss 0.1 (loss 0.3 is reported, with no target).

Units: sizes are powers of 1024 everywhere, as in link-sim and node.toml: `--bandwidth 2M`
is 2 MiB/s = 2 097 152 bytes/s and `--size 100M` is 100 MiB, so the ideal at loss 0 is
0.1 + 100 MiB / 2 MiB/s = 50.1 s.

Node settings (`[delivery]` in node.toml, set with `outpost-node init --set`) are what an
operator who knows the link would write; see node_settings() below and docs/benchmarks.md.
`--set KEY=VALUE` overrides or adds one (repeatable). Mars's release sync is switched off
(`[outpost] sync_on_start = false, sync_interval = "0s"`) so only the payload crosses.

Results are printed as a table (or JSON with --json) and written to
bench/results/goodput.json. A run that does not finish within 5 × ideal (at least 60 s), a
process that dies, or one that does not stop on SIGTERM fails the benchmark (exit 1).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procs import BenchError, Processes, tool  # noqa: E402
from outpost.units import format_duration, format_size, parse_duration, parse_size  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "goodput.json"
MiB = 1024 * 1024
TARGETS = {0.0: 1.15, 0.1: 1.3}
POLL = 0.05
READY_TIMEOUT = 30.0
PAYLOAD_NAME = "payload.bin"
# mars's [outpost] table: no release sync during the measurement (see quiet_outpost)
OUTPOST_TABLE: dict[str, bool | str] = {"sync_on_start": False, "sync_interval": "0s"}


def node_settings(latency: float, bandwidth: str, extra: list[str]) -> dict[str, str]:
    """What an operator who knows the link writes in both nodes' [delivery] table.

    - rtt: the round trip expected before any is measured. Two one-way latencies plus the
      receiver's ack batching delay (ack_delay, 200 ms by default): the time from the link
      finishing a fragment to its ack coming back. Timers start from this until acks refine
      it, so a loss early in the transfer is noticed after about a second, not after the
      default 10 s seed (which is 30 s of RTO).
    - bandwidth: the link's rate, so the sender's timers allow for a fragment's own
      serialisation time and RTT samples subtract it.
    Everything else keeps its default (1 MiB fragments, a 64 MiB outbox window, 200 ms ack
    delay).
    """
    rtt = 2 * latency + 0.2
    settings = {"rtt": f"{round(rtt * 1000)}ms", "bandwidth": bandwidth}
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        settings[key.strip()] = value.strip()
    return settings


def quiet_outpost(toml: Path) -> None:
    """Switch off the outpost role's sync (at start-up and every `sync_interval`), so the
    payload is all that crosses the link. Left on, mars asks Earth for a release as it
    starts; Earth answers with config and image bundles that compete with the payload (or,
    with no Docker daemon, keeps the request deferred while mars resends it), and the figure
    would no longer be the bus's."""
    text = toml.read_text()
    if "[outpost]" in text:
        raise BenchError(f"{toml} already has an [outpost] table; cannot switch sync off")
    lines = ["[outpost]", *(f"{k} = {json.dumps(v)}" for k, v in OUTPOST_TABLE.items())]
    toml.write_text(text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n")


def write_payload(path: Path, size: int, seed: int) -> str:
    """`size` pseudo-random (incompressible) bytes; returns their SHA-256."""
    rng = random.Random(f"goodput/{seed}")
    sha = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = rng.randbytes(min(MiB, left))
            f.write(block)
            sha.update(block)
            left -= len(block)
    return sha.hexdigest()


def sha256_of(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            sha.update(block)
    return sha.hexdigest()


def run_cli(*args: str) -> str:
    proc = subprocess.run([tool("outpost-node"), *args], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise BenchError(f"outpost-node {' '.join(args)} failed ({proc.returncode}): "
                         f"{proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Rig:
    """One loss rate's temporary world: two homes, two nodes, one link-sim."""

    root: Path
    verbose: bool
    processes: Processes = field(default_factory=Processes)

    @property
    def earth(self) -> Path:
        return self.root / "earth"

    @property
    def mars(self) -> Path:
        return self.root / "mars"

    @property
    def stats(self) -> Path:
        return self.root / "link-stats.json"

    def setup(self, settings: dict[str, str]) -> None:
        sets = [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]
        run_cli("init", "--role", "earth", "--home", str(self.earth), "--name", "earth", *sets)
        run_cli("init", "--role", "outpost", "--home", str(self.mars), "--name", "mars", *sets)
        quiet_outpost(self.mars / "node.toml")
        run_cli("trust", "--home", str(self.earth), str(self.mars))
        run_cli("trust", "--home", str(self.mars), str(self.earth))

    def start(self, link_flags: list[str]) -> None:
        self.processes.start_site(self.earth, self.mars, self.root, link_flags, self.verbose)
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._ready():
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"nodes or link-sim not ready after {READY_TIMEOUT:.0f}s "
                                 f"(see {self.root})")
            time.sleep(0.1)

    def check_alive(self) -> None:
        self.processes.check_alive()

    def stop(self) -> list[str]:
        return self.processes.stop()

    def _ready(self) -> bool:
        for home in (self.earth, self.mars):
            log = home / "node.log"
            if not log.exists() or " running in " not in log.read_text():
                return False
        try:
            stats = json.loads(self.stats.read_text())
        except (OSError, ValueError):
            return False
        return all(stats.get(d, {}).get("from") for d in ("a->b", "b->a"))

def sending_count(db: Path) -> int:
    """Messages earth still holds in custody (read-only; the node keeps the db in WAL)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT count(*) FROM messages WHERE state = 'sending'").fetchone()
        return int(row[0])
    finally:
        conn.close()


def count_lines(path: Path, pattern: str) -> int:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return 0
    return len(re.findall(pattern, text))


def measure(loss: float, args: argparse.Namespace, settings: dict[str, str],
            root: Path) -> dict[str, Any]:
    size, bandwidth, latency = args.size_bytes, args.bandwidth_bytes, args.latency_s
    ideal = latency + size / (bandwidth * (1 - loss))
    timeout = max(5 * ideal, 60.0)
    target = TARGETS.get(loss)
    row: dict[str, Any] = {"loss": loss, "ideal_s": ideal, "target": target,
                           "timeout_s": timeout}
    rig = Rig(root, args.verbose)
    link_flags = ["--latency", args.latency, "--bandwidth", args.bandwidth, "--loss",
                  f"{loss:g}", "--seed", str(args.seed)]
    error: str | None = None
    payload = root / PAYLOAD_NAME
    target_file = rig.mars / "received" / "earth" / PAYLOAD_NAME
    digest = ""
    try:
        rig.setup(settings)
        digest = write_payload(payload, size, args.seed)
        rig.start(link_flags)

        started_wall = time.time()
        t0 = time.monotonic()
        sent = json.loads(run_cli("send", "--home", str(rig.earth), "--to", "mars", "--json",
                                  str(payload)))
        row["send_s"] = time.monotonic() - t0
        row["bundle_bytes"], row["units"] = sent["size"], sent["units"]
        received_at = released_at = None
        while received_at is None or released_at is None:
            now = time.monotonic()
            if received_at is None and target_file.exists() \
                    and target_file.stat().st_size == size:
                received_at = now
            if released_at is None and sending_count(rig.earth / "state.db") == 0:
                released_at = now
            if now - t0 > timeout:
                raise BenchError(
                    f"loss {loss:g}: not done after {timeout:.0f}s (5 × ideal): "
                    f"received={received_at is not None}, custody released="
                    f"{released_at is not None}; see {root}")
            rig.check_alive()
            time.sleep(POLL)
        row["started_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_wall))
        row["elapsed_s"] = received_at - t0
        row["custody_released_s"] = released_at - t0
        row["ratio"] = row["elapsed_s"] / ideal
        row["pass"] = None if target is None else row["ratio"] <= target
        status = json.loads(run_cli("status", "--home", str(rig.earth), "--json"))
        peer = next(p for p in status["peers"] if p["name"] == "mars")
        row["srtt_s"], row["rtt_samples"] = peer["srtt"], peer["rtt_samples"]
        if status["sending"]:
            raise BenchError(f"status still shows {len(status['sending'])} message(s) sending")
    except BenchError as e:
        error = str(e)
    finally:
        problems = rig.stop()
    if problems and error is None:
        error = "; ".join(problems)
    elif problems:
        error = f"{error}; {'; '.join(problems)}"

    if error is None:
        got = sha256_of(target_file)
        row["sha256_ok"] = got == digest
        if got != digest:
            error = "the received file differs from the one sent"
    row.update(link_figures(rig.stats, size, bandwidth, loss))
    row["retransmissions"] = count_lines(rig.earth / "node.log", r"resending ")
    row["quarantined_at_mars"] = count_lines(rig.mars / "node.log", r"quarantined ")
    if "elapsed_s" in row and "busy_s" in row:
        row["link_utilisation"] = row["busy_s"] / row["elapsed_s"]
    row["error"] = error
    if error is not None:
        row["pass"] = False
    return row


def link_figures(stats_path: Path, size: int, bandwidth: int, loss: float) -> dict[str, Any]:
    """What crossed the link, from link-sim's final --stats (written when it stops)."""
    try:
        stats = json.loads(stats_path.read_text())
    except (OSError, ValueError):
        return {}
    ab, ba = stats["a->b"], stats["b->a"]
    offered = ab["offered"]["bytes"]
    return {
        "offered_bytes": offered,
        "offered_count": ab["offered"]["count"],
        "dropped_count": ab["dropped"]["count"],
        "dropped_bytes": ab["dropped"]["bytes"],
        "overhead": offered / size,  # link bytes per payload byte (framing + resends)
        "wire_vs_ideal": offered / (size / (1 - loss)),
        "busy_s": offered / bandwidth,  # how long a->b spent serialising
        "acks_offered_count": ba["offered"]["count"],
        "acks_offered_bytes": ba["offered"]["bytes"],
    }


def table(report: dict[str, Any]) -> str:
    p = report["params"]
    out = [f"Outpost bus goodput: {format_size(p['size'])} of random bytes earth -> mars "
           f"through link-sim, {p['bandwidth']} (= {format_size(p['bandwidth_bytes'])}/s), "
           f"latency {p['latency']}, seed {p['seed']}",
           "node [delivery]: " + ", ".join(f"{k}={v}" for k, v in report["node_settings"].items()),
           ""]
    head = (f"{'loss':>5} {'elapsed':>8} {'ideal':>7} {'ratio':>6} {'target':>7} {'pass':>5} "
            f"{'custody':>8} {'link MiB':>9} {'overhead':>8} {'vs ideal':>8} "
            f"{'resends':>7} {'drops':>5} "
            f"{'busy':>6} {'srtt':>6}")
    out += [head, "-" * len(head)]
    for r in report["rows"]:
        def f(key: str, fmt: str, unit: str = "", row: dict[str, Any] = r) -> str:
            v = row.get(key)
            width = int(re.match(r"\d*", fmt).group() or 0)  # type: ignore[union-attr]
            return ("-" + " " * len(unit)).rjust(width + len(unit)) if v is None \
                else format(v, fmt) + unit
        verdict = "-" if r["target"] is None else ("yes" if r["pass"] else "NO")
        if r.get("error"):
            verdict = "FAIL"
        out.append(
            f"{r['loss']:>5g} {f('elapsed_s', '7.1f', 's')} {r['ideal_s']:>6.1f}s "
            f"{f('ratio', '6.3f')} {f('target', '7.2f')} {verdict:>5} "
            f"{f('custody_released_s', '7.1f', 's')} "
            f"{(r['offered_bytes'] / MiB if 'offered_bytes' in r else 0):>9.1f} "
            f"{f('overhead', '8.3f')} {f('wire_vs_ideal', '8.3f')} "
            f"{r['retransmissions']:>7} {f('dropped_count', '5d')} "
            f"{f('link_utilisation', '6.0%')} "
            f"{format_duration(r['srtt_s']) if 'srtt_s' in r else '-':>6}")
    for r in report["rows"]:
        if r.get("error"):
            out.append(f"loss {r['loss']:g}: ERROR {r['error']}")
    out += [
        "",
        "elapsed: `outpost-node send` to the file complete in mars/received/earth/; "
        "custody: to earth holding nothing in 'sending'.",
        "ideal = latency + size / (bandwidth × (1 − loss)); ratio = elapsed / ideal. "
        "Sizes in MiB (2^20 bytes); link-sim's 2M = 2 MiB/s.",
        "link MiB: bytes link-sim took from earth's outbox (a->b, resends included); "
        "overhead = that / payload;",
        "vs ideal = that / (payload / (1 − loss)), the bytes the ideal assumes; "
        "busy = time the link spent serialising / elapsed.",
        "resends: 'resending' lines in earth's node.log; drops: files link-sim lost a->b; "
        "srtt: earth's smoothed RTT to mars at the end.",
        f"written to {RESULTS.relative_to(ROOT)}",
    ]
    return "\n".join(out)


def parse_losses(text: str) -> list[float]:
    losses = [float(x) for x in text.split(",") if x.strip()]
    if not losses or not all(0 <= x < 1 for x in losses):
        raise SystemExit("--loss: a comma-separated list of probabilities in [0, 1)")
    return losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="100M", help="payload size, powers of 1024 (default 100M "
                    "= 100 MiB)")
    ap.add_argument("--bandwidth", default="2M", help="link-sim --bandwidth (default 2M = 2 "
                    "MiB/s)")
    ap.add_argument("--latency", default="100ms", help="link-sim --latency, one way (default "
                    "100ms)")
    ap.add_argument("--loss", default="0,0.1,0.3", help="comma-separated loss rates (default "
                    "0,0.1,0.3)")
    ap.add_argument("--seed", type=int, default=1, help="link-sim --seed and payload seed "
                    "(default 1)")
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                    help="node [delivery] setting, added to or overriding the defaults "
                    "(rtt = 2 × latency + 200ms, bandwidth = --bandwidth); repeatable")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep each run's temporary directory "
                    "(homes, node.log, link.log, link-stats.json) for inspection")
    ap.add_argument("-v", "--verbose", action="store_true", help="run the nodes and link-sim "
                    "with -v (one log line per bundle)")
    args = ap.parse_args()
    args.size_bytes = parse_size(args.size)
    args.bandwidth_bytes = parse_size(args.bandwidth)
    args.latency_s = parse_duration(args.latency)
    if args.bandwidth_bytes <= 0 or args.size_bytes <= 0:
        raise SystemExit("--size and --bandwidth must be positive")
    losses = parse_losses(args.loss)
    settings = node_settings(args.latency_s, args.bandwidth, args.settings)

    rows = []
    for loss in losses:
        root = Path(tempfile.mkdtemp(prefix=f"outpost-goodput-{loss:g}-", dir="/tmp"))
        try:
            row = measure(loss, args, settings, root)
        except BaseException:
            print(f"loss {loss:g}: interrupted; left {root} for inspection", file=sys.stderr)
            raise
        keep = args.keep or row["error"] is not None  # a failed run is kept to be looked at
        if keep:
            row["dir"] = str(root)
        else:
            shutil.rmtree(root, ignore_errors=True)
        rows.append(row)
        if not args.json:
            print(f"loss {loss:g}: "
                  + (f"{row['elapsed_s']:.1f}s, ratio {row['ratio']:.3f}"
                     if "elapsed_s" in row else f"FAILED: {row['error']}")
                  + (f" (kept in {root})" if keep else ""), file=sys.stderr)

    report: dict[str, Any] = {
        "benchmark": "goodput",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "cpus_online": os.cpu_count(),
        "params": {"size": args.size_bytes, "size_mib": args.size_bytes / MiB,
                   "bandwidth": args.bandwidth, "bandwidth_bytes": args.bandwidth_bytes,
                   "latency": args.latency, "latency_s": args.latency_s, "losses": losses,
                   "seed": args.seed, "verbose": args.verbose},
        "units": "sizes are powers of 1024 (MiB); link-sim's 2M is 2 MiB/s",
        "node_settings": settings,
        "mars_outpost_table": OUTPOST_TABLE,
        "ideal": "latency + size / (bandwidth * (1 - loss))",
        "targets": {f"{k:g}": v for k, v in TARGETS.items()},
        "rows": rows,
    }
    report["pass"] = all(r["pass"] is not False for r in rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else table(report))
    if not report["pass"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
