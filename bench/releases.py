"""Benchmark of releases (issue 3): link bytes of a release series, and import into a registry.

    .venv/bin/python bench/releases.py [--base-mb 30] [--big-mb 1024] [--runs 3]
                                       [--skip-big] [--skip-series] [--profile DIR]
                                       [--json] [--keep] [-v]

1. Bytes over the link for a v1 -> v2 -> v3 release series. Real processes, in a fresh
   temporary directory: two homes made with `outpost-node init` (earth; mars, an outpost
   with `--registry` and `[outpost] sync_on_start = false`, so no start-up sync blurs v1),
   trusting each other, both nodes started with `outpost-node start`, and `link-sim
   --latency 100ms --stats` between them (no loss). The images are built locally with the
   helpers of tests/images.py: a base of busybox-static plus `--base-mb` MiB of
   incompressible bytes (ONE layer) and, per version, ONE app layer (APP_LAYER below: 512 KiB
   of text that zstd -3 compresses about 5x, plus 128 KiB of random bytes). For each version:
   commit outpost.toml (naming app:vN) in earth's config repo, `outpost-node publish --home
   EARTH`, wait until mars's `status --json` shows the commit "ready", then until both nodes
   hold nothing "sending" and link-sim has nothing queued or in flight (stable for 2 s), and
   take the deltas of link-sim's `offered` counters: a->b (bundles, fragments, acks of mars's
   reports) and b->a (acks, and mars's report that the release was applied).
   Next to it: `docker save` of the whole image (what the original design sent each time)
   and `docker save | zstd -3`, and the floor: zstd -3 of what is new to the outpost (the
   config and the new layers). Target (the e2e test's budget, issue 3): Outpost a->b <=
   1.2 x zstd(new layers) + 64 KiB.

2. Import time into the registry and peak RSS, for an image of `--base-mb` MiB and one of
   `--big-mb` MiB (one layer each), next to `skopeo copy docker-archive:IMAGE.tar
   docker://REGISTRY/repo:tag --dest-tls-verify=false`. Outpost's input is the image bundle
   that `outpost-node export` writes (what crosses the link: zstd frames); skopeo's is
   `docker save` of the same image. Outpost's figure is the gateway path measured in a fresh
   Python process: open the outpost home, build `Outpost(node, Sender(node), registry)`,
   verify the bundle's head (`open_verified`) and time `role.on_image(header, path)` (stage
   and check each part against its digest, then push blobs and the manifest); peak RSS is the
   process's VmHWM read at the end. Also measured: the whole `outpost-node import` of the
   `docker save` tar (the sneakernet path, same input as skopeo) and `skopeo copy
   --preserve-digests` (skopeo without recompressing: it then stores the uncompressed layers,
   as Outpost does; plain skopeo gzips every layer on the way). Every run gets a fresh, empty
   registry (`scripts/services start --dir ...`, purged afterwards): skopeo keeps a blob-info
   cache (/var/lib/containers/cache for root) and mounts a blob it pushed before from another
   repository of the same registry, so fresh repository names alone would flatter later runs.
   External processes run under GNU time (`%e %M %U %S`): their peak RSS is their own, not
   the forking parent's; the registry's CPU time during each import is read from /proc.
   sync(2) runs before each timed run, so the dirty pages of the previous one (a gigabyte
   of blobs) do not throttle it. Each figure is the median of `--runs` runs; the tools
   alternate within a run. `--profile DIR` writes a cProfile of the first Outpost gateway
   run of each image to DIR/gateway-LABEL.prof. Targets (issue 3): import time
   Outpost / skopeo <= 1.0; importing a 1 GiB image keeps peak RSS under 150 MiB.

Docker and the registry: `scripts/services start --outpost-docker` (it reuses what runs)
gives DOCKER_HOST through `.services/env`; the registries are the bench's own (the same
`docker-registry` binary and config, started by `scripts/services start --dir TMP/...`,
which reuses that Docker daemon), so the registry the tests use is left untouched and
everything, blobs included, is deleted afterwards. The images and tags the bench built are
removed at the end (`--keep` keeps the temporary directory and the images).

Results are printed as tables (JSON with --json) and written to bench/results/releases.json.
A step that hangs, a process that dies, an image whose ID differs at the registry, or a
target missed makes the exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
import zstandard  # noqa: E402

from bench.procs import BenchError, Processes, log_problems, read_text, tool  # noqa: E402
from outpost.gateway.registry import Registry, image_ref_parts  # noqa: E402
from tests.conftest import read_env_file  # noqa: E402
from tests.images import APP_CMD, build_image, busybox_base  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "releases.json"
SERVICES = [sys.executable, str(ROOT / "scripts" / "services.py")]
GNU_TIME = "/usr/bin/time"
KiB, MiB = 1024, 1024 * 1024
LATENCY = "100ms"
NODE_SETTINGS = {"rtt": "400ms"}  # 2 x latency + ack_delay (200 ms), as goodput.py explains
VERSIONS = ("v1", "v2", "v3")
BUDGET_FACTOR, BUDGET_SLACK = 1.2, 64 * KiB
IMPORT_RATIO_TARGET = 1.0
RSS_TARGET_MIB, RSS_TARGET_FOR_MIB = 150, 1024
READY_TIMEOUT = 30.0
RELEASE_TIMEOUT = 300.0
SETTLE_TIMEOUT = 120.0
SETTLE_STABLE = 2.0
IMPORT_TIMEOUT = 1800.0
POLL = 0.2

# One app layer, rebuilt from scratch for each version (a new build of the app):
APP_LAYER = {
    "text_kib": 512,   # /app/src/*.py (pseudo source) and /app/config/settings.json
    "random_kib": 128,  # /app/bin/engine.so: incompressible, like compiled code
}

# The outpost side of the gateway path, alone in a fresh interpreter (see the docstring).
IMPORT_SNIPPET = """
import json, sys, time
from pathlib import Path
t_start = time.perf_counter()
from outpost.codec import open_verified
from outpost.home import load_home
from outpost.node.context import open_node
from outpost.node.sender import Sender
from outpost.roles.outpost import Outpost
home, bundle, registry, profile = sys.argv[1:5]
node = open_node(load_home(Path(home)))
role = Outpost(node, Sender(node), registry)
with open(bundle, "rb") as f:
    header = open_verified(f, node.state.keyring(), node.limits)
if profile:
    import cProfile
    prof = cProfile.Profile()
    prof.enable()
t0 = time.perf_counter()
role.on_image(header, Path(bundle))
t1 = time.perf_counter()
if profile:
    prof.disable()
    prof.dump_stats(profile)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status")
           if line.startswith("VmHWM:"))
print(json.dumps({"import_s": t1 - t0, "process_s": t1 - t_start, "vmhwm_kib": hwm}))
"""


def say(msg: str) -> None:
    print(f"[releases] {msg}", file=sys.stderr, flush=True)


def run(args: list[str], env: dict[str, str] | None = None, *,
        timeout: float = 600.0) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(args[:4])} ... failed ({proc.returncode}): "
                         f"{proc.stderr.strip()[-2000:]}")
    return proc.stdout


# ------------------------------------------------------------------ services


def shared_services() -> dict[str, str]:
    """Docker (and the shared registry) from `scripts/services start --outpost-docker`."""
    out = subprocess.run([*SERVICES, "start", "--outpost-docker"], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"scripts/services start failed:\n{out.stderr}{out.stdout}")
    env = read_env_file(ROOT / ".services" / "env")
    if "DOCKER_HOST" not in env:
        raise SystemExit(".services/env names no DOCKER_HOST")
    return env


@contextlib.contextmanager
def private_registry(folder: Path, docker_host: str) -> Iterator[str]:
    """A fresh, empty distribution registry of our own (its address); stopped and deleted
    afterwards. `registry_cpu(folder)` reads the CPU time its process has used.

    `scripts/services start --dir` reuses the Docker daemon DOCKER_HOST names (it never
    touches a daemon it did not start) and starts only a registry, storage in `folder`.
    """
    env = {**os.environ, "DOCKER_HOST": docker_host}
    out = subprocess.run([*SERVICES, "start", "--dir", str(folder)], capture_output=True,
                         text=True, env=env, check=False)
    try:
        if out.returncode != 0:
            raise BenchError(f"cannot start a registry: {out.stderr}{out.stdout}")
        yield read_env_file(folder / "env")["OUTPOST_REGISTRY"]
    finally:
        subprocess.run([*SERVICES, "stop", "--purge", "--dir", str(folder)],
                       capture_output=True, env=env, check=False)


def registry_cpu(folder: Path) -> float:
    """CPU seconds (user + system) the registry started in `folder` has used so far."""
    pid = int(json.loads((folder / "state.json").read_text())["registry"]["pid"])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def registry_image_id(registry: str, ref: str, repo: str | None = None) -> str | None:
    name, tag = image_ref_parts(ref)
    with Registry(registry) as reg:
        found = reg.get_manifest(repo or name, tag)
    return None if found is None else str(json.loads(found[1])["config"]["digest"])


# ------------------------------------------------------------------ images


VOCAB = ("account", "adapter", "batch", "buffer", "cache", "channel", "client", "config",
         "context", "cursor", "decode", "delta", "digest", "encode", "engine", "event",
         "fetch", "filter", "frame", "handler", "header", "index", "layer", "lease", "limit",
         "loader", "manifest", "metric", "node", "offset", "packet", "parse", "peer", "pool",
         "queue", "record", "registry", "request", "result", "retry", "route", "sample",
         "schema", "session", "signal", "socket", "source", "state", "stream", "target",
         "task", "timer", "token", "update", "value", "window", "worker", "writer")


def source_text(rng: random.Random, size: int) -> bytes:
    """Python-looking source: varied identifiers and numbers, repetitive structure."""
    out = io.StringIO()
    while out.tell() < size:
        a, b, c, d = (rng.choice(VOCAB) for _ in range(4))
        n = rng.randrange(1 << 16)
        out.write(f"def {a}_{b}_{n}({c}, {d}=None):\n"
                  f"    \"\"\"Return the {b} of {c} for {d}.\"\"\"\n"
                  f"    if {d} is None:\n        {d} = {c}.{rng.choice(VOCAB)}({n % 97})\n"
                  f"    return {c}.{a}({d}, limit={rng.randrange(1000)})\n\n\n")
    return out.getvalue().encode()[:size]


def json_text(rng: random.Random, size: int) -> bytes:
    out = io.StringIO()
    out.write("[\n")
    while out.tell() < size:
        record = {"id": rng.randrange(1 << 30), "name": f"{rng.choice(VOCAB)}-"
                  f"{rng.choice(VOCAB)}", "enabled": rng.random() < 0.5,
                  "weight": round(rng.random(), 4), "tags": rng.sample(VOCAB, 3)}
        out.write("  " + json.dumps(record) + ",\n")
    return (out.getvalue()[:size - 2] + "\n]").encode()


def app_files(version: str) -> dict[str, bytes]:
    """The app layer of one version (all of it new in each version; see APP_LAYER)."""
    rng = random.Random(f"outpost-bench/app/{version}")
    text = APP_LAYER["text_kib"] * KiB
    modules = 6
    per = (text * 3 // 4) // modules
    files = {"/app/version.txt": f"{version}\n".encode()}
    for i in range(modules):
        files[f"/app/src/{rng.choice(VOCAB)}_{i}.py"] = source_text(rng, per)
    files["/app/config/settings.json"] = json_text(rng, text - per * modules)
    files["/app/bin/engine.so"] = rng.randbytes(APP_LAYER["random_kib"] * KiB)
    return files


def image_facts(client: Any, ref: str) -> tuple[str, list[str]]:
    info = client.api.inspect_image(ref)
    return info["Id"], list(info["RootFS"]["Layers"])


def docker_save(ref: str, dest: Path, env: dict[str, str]) -> None:
    run(["docker", "save", "-o", str(dest), ref], env, timeout=1800)


def zstd_cli_size(path: Path) -> int:
    """Bytes of `zstd -3` of the file (the CLI, as `docker save | zstd -3` would run)."""
    out = path.with_suffix(path.suffix + ".zst")
    run(["zstd", "-3", "-q", "-f", str(path), "-o", str(out)])
    size = out.stat().st_size
    out.unlink()
    return size


def zstd_sizes_of_parts(tar_path: Path, digests: set[str]) -> dict[str, int]:
    """zstd -3 size of each file of a `docker save` tar whose sha256 is in `digests`."""
    found: dict[str, int] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            f = tar.extractfile(member) if member.isfile() else None
            if f is None:
                continue
            sha = hashlib.sha256()
            cctx = zstandard.ZstdCompressor(level=3).compressobj()
            size = 0
            while block := f.read(MiB):
                sha.update(block)
                size += len(cctx.compress(block))
            size += len(cctx.flush())
            digest = "sha256:" + sha.hexdigest()
            if digest in digests:
                found[digest] = size
    missing = digests - set(found)
    if missing:
        raise BenchError(f"{tar_path.name} lacks {sorted(missing)[:1]}")
    return found


# ------------------------------------------------------------------ the two nodes


def config_text(refs: list[str]) -> str:
    images = "".join(f'[[images]]\nref = "{r}"\n\n' for r in refs)
    return images + '[apply]\napplier = "command"\ncommand = ["true"]\n'


def git(repo: Path, *args: str) -> str:
    return run(["git", "-C", str(repo), *args])


@dataclass
class Site:
    """An earth home and an outpost home (mars) that trust each other, and their processes."""

    root: Path
    env: dict[str, str]
    verbose: bool = False
    processes: Processes = field(init=False)

    def __post_init__(self) -> None:
        self.processes = Processes(self.env)

    @property
    def earth(self) -> Path:
        return self.root / "earth"

    @property
    def mars(self) -> Path:
        return self.root / "mars"

    @property
    def stats(self) -> Path:
        return self.root / "link-stats.json"

    def cli(self, *args: str, timeout: float = 600.0) -> Any:
        return json.loads(run([tool("outpost-node"), *args, "--json"], self.env,
                              timeout=timeout))

    def setup(self, registry: str) -> None:
        template = self.root / "template"
        template.mkdir(parents=True)
        (template / "outpost.toml").write_text(config_text([]))
        sets = [a for k, v in NODE_SETTINGS.items() for a in ("--set", f"{k}={v}")]
        node = tool("outpost-node")
        run([node, "init", "--role", "earth", "--home", str(self.earth), "--name", "earth",
             "--template", str(template), *sets], self.env)
        run([node, "init", "--role", "outpost", "--home", str(self.mars), "--name", "mars",
             "--registry", registry, *sets], self.env)
        with open(self.mars / "node.toml", "a") as f:  # [outpost] is the last table
            f.write("sync_on_start = false\n")
        run([node, "trust", "--home", str(self.earth), str(self.mars)], self.env)
        run([node, "trust", "--home", str(self.mars), str(self.earth)], self.env)

    def commit(self, refs: list[str], message: str) -> str:
        repo = self.earth / "config"
        (repo / "outpost.toml").write_text(config_text(refs))
        git(repo, "commit", "-qam", message)
        return git(repo, "rev-parse", "HEAD").strip()

    def start(self) -> None:
        self.processes.start_site(self.earth, self.mars, self.root, ["--latency", LATENCY],
                                  self.verbose)
        wait_for(self._ready, READY_TIMEOUT, "nodes and link-sim to start", self.check_alive)

    def _ready(self) -> bool:
        for home in (self.earth, self.mars):
            log = home / "node.log"
            if not log.exists() or " running in " not in log.read_text():
                return False
        stats = self.link_stats()
        return bool(stats) and all(stats.get(d, {}).get("from") for d in ("a->b", "b->a"))

    def link_stats(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.stats.read_text()))
        except (OSError, ValueError):
            return {}

    def counters(self) -> dict[str, int]:
        stats = self.link_stats()
        return {f"{d}_{what}": int(stats[d]["offered"][what])
                for d in ("a->b", "b->a") for what in ("bytes", "count")}

    def check_alive(self) -> None:
        self.processes.check_alive()

    def status(self, home: Path) -> dict[str, Any]:
        return dict(self.cli("status", "--home", str(home)))

    def ready(self, commit: str) -> bool:
        return any(r["commit_id"] == commit and r["state"] == "ready"
                   for r in self.status(self.mars)["releases"])

    def settle(self) -> None:
        """Wait until nothing is sending, queued or in flight, and the counters stand still."""
        stable_since: float | None = None
        last: dict[str, int] | None = None
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            self.check_alive()
            stats = self.link_stats()
            quiet = all(not stats[d]["in_flight"] and not stats[d]["queued"]
                        for d in ("a->b", "b->a"))
            quiet = quiet and not self.status(self.earth)["sending"] \
                and not self.status(self.mars)["sending"]
            now_counts = self.counters()
            if quiet and now_counts == last:
                stable_since = stable_since or time.monotonic()
                if time.monotonic() - stable_since >= SETTLE_STABLE:
                    return
            else:
                stable_since = None
            last = now_counts
            if time.monotonic() > deadline:
                raise BenchError(f"the link did not settle within {SETTLE_TIMEOUT:.0f}s "
                                 f"(see {self.root})")
            time.sleep(0.5)

    def stop(self) -> list[str]:
        return self.processes.stop() + log_problems([self.earth, self.mars])


def wait_for(cond: Callable[[], bool], timeout: float, what: str,
             check: Callable[[], None] | None = None) -> float:
    start = time.monotonic()
    while not cond():
        if check is not None:
            check()
        if time.monotonic() - start > timeout:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL)
    return time.monotonic() - start


# ------------------------------------------------------------------ 1: the release series


def measure_series(args: argparse.Namespace, work: Path, client: Any, docker_host: str,
                   names: Names) -> dict[str, Any]:
    env = {**os.environ, "DOCKER_HOST": docker_host}
    root = work / "series"
    root.mkdir()
    result: dict[str, Any] = {"rows": [], "error": None}
    with private_registry(work / "registry-series", docker_host) as registry:
        site = Site(root, env, args.verbose)
        try:
            site.setup(registry)
            say(f"building {names.base} (busybox-static + {args.base_mb} MiB)")
            names.built(busybox_base(client, names.base, extra_mb=args.base_mb,
                                     seed="outpost-bench/base"), names.base)
            site.start()
            held: set[str] = set()
            for version in VERSIONS:
                row = release_one(site, client, names, version, env, held)
                result["rows"].append(row)
                held |= set(image_facts(client, row["ref"])[1])
            last = names.app(VERSIONS[-1])
            if registry_image_id(registry, last) != image_facts(client, last)[0]:
                raise BenchError(f"{last}: the registry holds another image ID than Docker")
        except BenchError as e:
            result["error"] = str(e)
        finally:
            problems = site.stop()
        if problems:
            result["error"] = "; ".join(filter(None, [result["error"], *problems]))
    if args.keep or result["error"]:
        result["dir"] = str(root)
    return result


def release_one(site: Site, client: Any, names: Names, version: str, env: dict[str, str],
                held: set[str]) -> dict[str, Any]:
    """Publish `version`; `held` are the layers earlier versions gave the outpost."""
    ref = names.app(version)
    say(f"{version}: building {ref} and publishing it")
    names.built(build_image(client, ref, app_files(version), names.base, cmd=APP_CMD), ref)
    image_id, diff_ids = image_facts(client, ref)
    commit = site.commit([ref], f"release {version}")
    site.settle()
    before = site.counters()
    resends_before = read_text(site.earth / "node.log").count("resending ")
    t0 = time.monotonic()
    published = site.cli("publish", "--home", str(site.earth))
    wait_for(lambda: site.ready(commit), RELEASE_TIMEOUT, f"{version} ready at the outpost",
             site.check_alive)
    ready_s = time.monotonic() - t0
    site.settle()
    after = site.counters()
    row: dict[str, Any] = {"version": version, "ref": ref, "commit": commit,
                           "image_id": image_id, "layers": len(diff_ids), "ready_s": ready_s}
    row.update({k: after[k] - before[k] for k in after})
    row["resends"] = read_text(site.earth / "node.log").count("resending ") - resends_before
    row["published"] = [{"kind": m["kind"], "size": m["size"], "units": m["units"],
                         "what": m["what"]} for p in published for m in p["messages"]]
    row["published_bytes"] = sum(m["size"] for m in row["published"])
    new_layers = [d for d in dict.fromkeys(diff_ids) if d not in held]
    with tempfile.TemporaryDirectory(dir=site.root) as tmp:
        tar = Path(tmp) / "image.tar"
        docker_save(ref, tar, env)
        row["docker_save_bytes"] = tar.stat().st_size
        row["docker_save_zstd_bytes"] = zstd_cli_size(tar)
        parts = zstd_sizes_of_parts(tar, {image_id, *new_layers})
    row["new_layers"] = len(new_layers)
    row["new_layers_zstd_bytes"] = sum(parts[d] for d in new_layers)
    row["floor_bytes"] = sum(parts.values())  # config + new layers, zstd -3
    row["budget_bytes"] = BUDGET_FACTOR * row["new_layers_zstd_bytes"] + BUDGET_SLACK
    row["ratio_vs_save_zstd"] = row["a->b_bytes"] / row["docker_save_zstd_bytes"]
    row["ratio_vs_floor"] = row["a->b_bytes"] / row["floor_bytes"]
    row["pass"] = row["a->b_bytes"] <= row["budget_bytes"]
    say(f"{version}: {row['a->b_bytes']} bytes a->b, {row['b->a_bytes']} b->a; "
        f"docker save | zstd -3: {row['docker_save_zstd_bytes']}")
    return row


# ------------------------------------------------------------------ 2: import vs skopeo


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run argv under GNU time: wall seconds and the peak RSS of that process alone.

    sync(2) first: the previous run left up to gigabytes of dirty pages (the registry's
    blobs, Outpost's staging files), and their writeback would throttle this run's writes.
    """
    out = cwd / ".time"
    os.sync()
    proc = subprocess.run([GNU_TIME, "-f", "%e %M %U %S", "-o", str(out), *argv], env=env,
                          capture_output=True, text=True, timeout=IMPORT_TIMEOUT, check=False)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv[:3])} failed ({proc.returncode}): "
                         f"{proc.stderr.strip()[-2000:]}")
    wall, rss, user, system = out.read_text().split()[-4:]
    return {"wall_s": float(wall), "rss_kib": int(rss), "cpu_s": float(user) + float(system),
            "stdout": proc.stdout}


@dataclass
class ImportCase:
    label: str
    mb: int
    ref: str
    image_id: str = ""
    bundle: Path = Path()
    tar: Path = Path()
    bundle_bytes: int = 0
    tar_bytes: int = 0
    export_s: float = 0.0


TOOLS = ("outpost", "skopeo", "skopeo-preserve", "outpost-import-tar")


def measure_imports(args: argparse.Namespace, work: Path, client: Any, docker_host: str,
                    names: Names) -> dict[str, Any]:
    env = {**os.environ, "DOCKER_HOST": docker_host}
    root = work / "imports"
    root.mkdir()
    site = Site(root, env)
    result: dict[str, Any] = {"cases": [], "error": None}
    sizes = [("base", args.base_mb)] + ([] if args.skip_big else [("big", args.big_mb)])
    try:
        # The homes only: no link, no daemons. mars's registry is passed per run.
        site.setup("127.0.0.1:1")
        for label, mb in sizes:
            case = prepare_case(site, client, names, label, mb, env)
            try:
                result["cases"].append(run_case(args, site, case, env, docker_host))
            finally:
                case.bundle.unlink(missing_ok=True)
                case.tar.unlink(missing_ok=True)
                if not args.keep:
                    names.remove_now(client, case.ref)
    except BenchError as e:
        result["error"] = str(e)
    if args.keep or result["error"]:
        result["dir"] = str(root)
    return result


def prepare_case(site: Site, client: Any, names: Names, label: str, mb: int,
                 env: dict[str, str]) -> ImportCase:
    ref = names.imported(label)
    say(f"import {label}: building {ref} (busybox-static + {mb} MiB, one layer)")
    names.built(busybox_base(client, ref, extra_mb=mb, seed=f"outpost-bench/import-{mb}"),
                ref)
    case = ImportCase(label, mb, ref, image_id=image_facts(client, ref)[0])
    site.commit([ref], f"import {label}")
    out = site.root / f"export-{label}"
    t0 = time.monotonic()
    exported = site.cli("export", "--home", str(site.earth), "--to", "mars", str(out),
                        timeout=IMPORT_TIMEOUT)
    case.export_s = time.monotonic() - t0
    images = [m for p in exported for m in p["messages"] if m["kind"] == "image"]
    if len(images) != 1:
        raise BenchError(f"export of {ref} wrote {len(images)} image bundles, expected 1")
    case.bundle = Path(images[0]["file"]).resolve()
    case.bundle_bytes = case.bundle.stat().st_size
    for m in exported[0]["messages"]:  # Earth's custody copies: not needed here
        Path(m["path"]).unlink(missing_ok=True)
    case.tar = site.root / f"{label}.tar"
    docker_save(ref, case.tar, env)
    case.tar_bytes = case.tar.stat().st_size
    return case


def run_case(args: argparse.Namespace, site: Site, case: ImportCase, env: dict[str, str],
             docker_host: str) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TOOLS}
    scratch = site.root / "scratch"
    scratch.mkdir(exist_ok=True)
    repo, tag = image_ref_parts(case.ref)
    for n in range(args.runs):
        for name in TOOLS:
            folder = site.root / f"registry-{case.label}-{n}-{name}"
            with private_registry(folder, docker_host) as registry:
                say(f"import {case.label} run {n + 1}/{args.runs}: {name}")
                cpu0 = registry_cpu(folder)
                one = import_once(name, site, case, registry, env, scratch, repo, tag,
                                  args.profile if n == 0 else None)
                one["registry_cpu_s"] = registry_cpu(folder) - cpu0
                got = registry_image_id(registry, case.ref, one.pop("repo"))
                if got != case.image_id:
                    raise BenchError(f"{name}: the registry holds image {got} for "
                                     f"{case.ref}, Docker has {case.image_id}")
                runs[name].append(one)
    med = {name: {k: statistics.median(r[k] for r in rs)
                  for k in ("time_s", "rss_kib", "cpu_s", "registry_cpu_s")}
           for name, rs in runs.items()}
    out: dict[str, Any] = {
        "label": case.label, "mb": case.mb, "ref": case.ref, "image_id": case.image_id,
        "bundle_bytes": case.bundle_bytes, "docker_save_bytes": case.tar_bytes,
        "export_s": case.export_s, "runs": runs, "median": med,
        "ratio_vs_skopeo": med["outpost"]["time_s"] / med["skopeo"]["time_s"],
        "ratio_vs_skopeo_preserve": med["outpost"]["time_s"] / med["skopeo-preserve"]["time_s"],
        "tar_ratio_vs_skopeo": med["outpost-import-tar"]["time_s"] / med["skopeo"]["time_s"],
    }
    out["pass_time"] = out["ratio_vs_skopeo"] <= IMPORT_RATIO_TARGET
    rss_mib = med["outpost"]["rss_kib"] / KiB
    out["rss_target_mib"] = RSS_TARGET_MIB if case.mb >= RSS_TARGET_FOR_MIB else None
    out["pass_rss"] = None if out["rss_target_mib"] is None else rss_mib < RSS_TARGET_MIB
    return out


def import_once(name: str, site: Site, case: ImportCase, registry: str, env: dict[str, str],
                scratch: Path, repo: str, tag: str, profile: str | None) -> dict[str, Any]:
    if name == "outpost":
        prof = str(Path(profile).resolve() / f"gateway-{case.label}.prof") if profile else ""
        t = timed([sys.executable, "-c", IMPORT_SNIPPET, str(site.mars), str(case.bundle),
                   registry, prof], env, scratch)
        inner = json.loads(t["stdout"].strip().splitlines()[-1])
        return {"time_s": inner["import_s"], "process_s": t["wall_s"], "cpu_s": t["cpu_s"],
                "rss_kib": inner["vmhwm_kib"], "gnu_time_rss_kib": t["rss_kib"], "repo": repo}
    if name == "outpost-import-tar":
        t = timed([tool("outpost-node"), "import", "--home", str(site.mars), "--registry",
                   registry, str(case.tar)], env, scratch)
        return {"time_s": t["wall_s"], "rss_kib": t["rss_kib"], "cpu_s": t["cpu_s"],
                "repo": repo}
    dest = f"bench/skopeo-{case.label}"
    extra = ["--preserve-digests"] if name == "skopeo-preserve" else []
    t = timed(["skopeo", "copy", "-q", *extra, f"docker-archive:{case.tar}",
               f"docker://{registry}/{dest}:{tag}", "--dest-tls-verify=false"], env, scratch)
    return {"time_s": t["wall_s"], "rss_kib": t["rss_kib"], "cpu_s": t["cpu_s"], "repo": dest}


# ------------------------------------------------------------------ names and cleanup


class Names:
    """Image names of this run (unique, so concurrent runs and the tests never collide)."""

    def __init__(self) -> None:
        self.prefix = f"outpost-bench/rel{os.getpid()}-{int(time.time()) % 100000}"
        self.refs: list[str] = []

    @property
    def base(self) -> str:
        return f"{self.prefix}-base:1"

    def app(self, version: str) -> str:
        return f"{self.prefix}-app:{version}"

    def imported(self, label: str) -> str:
        return f"{self.prefix}-import-{label}:1"

    def built(self, _image: Any, ref: str) -> None:
        if ref not in self.refs:
            self.refs.append(ref)

    def remove_now(self, client: Any, ref: str) -> None:
        with contextlib.suppress(docker.errors.DockerException):
            client.images.remove(ref, force=True)
        if ref in self.refs:
            self.refs.remove(ref)

    def cleanup(self, client: Any) -> None:
        for ref in reversed(list(self.refs)):  # apps before the base they are built on
            self.remove_now(client, ref)


# ------------------------------------------------------------------ report


def mib(n: float) -> str:
    return f"{n / MiB:.2f}"


def series_table(series: dict[str, Any]) -> list[str]:
    out = [f"1. Bytes over the link, release series (link-sim --latency {LATENCY}, no loss; "
           "sizes in bytes)",
           f"   app layer per version: {APP_LAYER['text_kib']} KiB text + "
           f"{APP_LAYER['random_kib']} KiB random; base: busybox-static + random data"]
    cols = [("ver", 4), ("docker save", 13), ("save|zstd -3", 14), ("Outpost a->b", 14),
            ("b->a", 8), ("ratio", 8), ("new zstd", 12), ("budget", 12), ("pass", 6),
            ("files", 8), ("ready", 7)]
    head = "".join(f"{n:<{w}}" if i == 0 else f"{n:>{w}}" for i, (n, w) in enumerate(cols))
    out += [head, "-" * len(head)]
    for r in series["rows"]:
        out.append(f"{r['version']:<4}{r['docker_save_bytes']:>13,}"
                   f"{r['docker_save_zstd_bytes']:>14,}{r['a->b_bytes']:>14,}"
                   f"{r['b->a_bytes']:>8,}{r['ratio_vs_save_zstd']:>8.4f}"
                   f"{r['new_layers_zstd_bytes']:>12,}{r['budget_bytes']:>12,.0f}"
                   f"{'yes' if r['pass'] else 'NO':>6}"
                   f"{str(r['a->b_count']) + '/' + str(r['b->a_count']):>8}"
                   f"{r['ready_s']:>6.1f}s")
    if series["rows"]:
        tot = {k: sum(r[k] for r in series["rows"]) for k in
               ("docker_save_bytes", "docker_save_zstd_bytes", "a->b_bytes", "b->a_bytes")}
        out.append(f"{'all':<4}{tot['docker_save_bytes']:>13,}"
                   f"{tot['docker_save_zstd_bytes']:>14,}{tot['a->b_bytes']:>14,}"
                   f"{tot['b->a_bytes']:>8,}"
                   f"{tot['a->b_bytes'] / tot['docker_save_zstd_bytes']:>8.4f}")
    out += ["ratio = Outpost a->b / (docker save | zstd -3). new zstd = zstd -3 of the layers "
            "new to the outpost;",
            f"budget = {BUDGET_FACTOR} x new zstd + 64 KiB (issue 3). files = link files "
            "a->b/b->a; ready = publish to 'ready' at mars."]
    if series.get("error"):
        out.append(f"ERROR: {series['error']}")
    return out


IMPORT_LABELS = {"outpost": "Outpost gateway (image bundle)",
                 "outpost-import-tar": "outpost-node import (save tar)",
                 "skopeo": "skopeo copy docker-archive:",
                 "skopeo-preserve": "skopeo copy --preserve-digests"}


def imports_table(imports: dict[str, Any], runs: int) -> list[str]:
    out = [f"2. Import into the registry (median of {runs}; a fresh registry each run)"]
    cols = [("image", 11), ("what", 32), ("time s", 8), ("vs skopeo", 10), ("target", 8),
            ("pass", 5), ("RSS MiB", 9), ("CPU s", 7), ("reg CPU", 8)]
    head = "".join(f"{n:<{w}}" if i < 2 else f"{n:>{w}}" for i, (n, w) in enumerate(cols))
    out += [head, "-" * len(head)]
    for c in imports["cases"]:
        med = c["median"]
        sk = med["skopeo"]["time_s"]
        for name in ("outpost", "outpost-import-tar", "skopeo", "skopeo-preserve"):
            m = med[name]
            target = verdict = ""
            if name == "outpost":
                target = f"<={IMPORT_RATIO_TARGET:g}"
                verdict = "yes" if c["pass_time"] else "NO"
            out.append(f"{c['label'] + ' ' + str(c['mb']) + 'M':<11}{IMPORT_LABELS[name]:<32}"
                       f"{m['time_s']:>8.2f}{m['time_s'] / sk:>10.2f}{target:>8}{verdict:>5}"
                       f"{m['rss_kib'] / KiB:>9.1f}{m['cpu_s']:>7.2f}{m['registry_cpu_s']:>8.2f}")
        if c["pass_rss"] is not None:
            out.append(f"{'':<11}{'Outpost peak RSS < ' + str(c['rss_target_mib']) + ' MiB':<32}"
                       f"{'':>31}{'yes' if c['pass_rss'] else 'NO':>5}")
        out.append(f"{'':<11}bundle {mib(c['bundle_bytes'])} MiB, docker save "
                   f"{mib(c['docker_save_bytes'])} MiB; export (docker save + zstd) "
                   f"{c['export_s']:.1f}s")
    out += ["time: Outpost gateway = Outpost.on_image in a fresh process (interpreter start "
            "excluded; the node is a daemon);",
            "the others = the whole process (GNU time). RSS: VmHWM (Outpost gateway), GNU time "
            "%M (the others).",
            "CPU s = user + system of the importing process (GNU time, whole process); "
            "reg CPU = the registry's, during the import."]
    if imports.get("error"):
        out.append(f"ERROR: {imports['error']}")
    return out


def report_text(report: dict[str, Any]) -> str:
    out = [f"Outpost releases benchmark ({report['date']}, {report['cpus_online']} CPUs, "
           f"Python {report['python']})", ""]
    out += [*series_table(report["series"]), ""]
    out += imports_table(report["imports"], report["params"]["runs"])
    out += ["", f"written to {RESULTS.relative_to(ROOT)}"]
    return "\n".join(out)


# ------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-mb", type=int, default=30, help="MiB of random data in the base "
                    "layer (series and the small import; default 30)")
    ap.add_argument("--big-mb", type=int, default=1024, help="MiB of the big import image "
                    "(default 1024)")
    ap.add_argument("--runs", type=int, default=3, help="runs per import figure; the median "
                    "is reported (default 3)")
    ap.add_argument("--skip-big", action="store_true", help="leave out the big import image")
    ap.add_argument("--skip-series", action="store_true", help="leave out the release series")
    ap.add_argument("--profile", metavar="DIR", help="cProfile the first Outpost gateway "
                    "run of each image into DIR/gateway-LABEL.prof")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory and "
                    "the images")
    ap.add_argument("-v", "--verbose", action="store_true", help="run nodes and link-sim "
                    "with -v")
    args = ap.parse_args()
    if args.runs < 1 or args.base_mb < 0 or args.big_mb < 1:
        raise SystemExit("--runs and --big-mb must be positive, --base-mb not negative")
    for needed in ("skopeo", "zstd", "docker", GNU_TIME):
        if shutil.which(needed) is None:
            raise SystemExit(f"{needed} is not installed (Debian: skopeo, zstd, docker.io, "
                             "time)")

    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    services = shared_services()
    docker_host = services["DOCKER_HOST"]
    client = docker.DockerClient(base_url=docker_host, timeout=1800)
    work = Path(tempfile.mkdtemp(prefix="outpost-releases-", dir="/tmp"))
    names = Names()
    say(f"working in {work}; Docker at {docker_host}")
    try:
        series = {"rows": [], "error": None, "skipped": True} if args.skip_series else \
            measure_series(args, work, client, docker_host, names)
        imports = measure_imports(args, work, client, docker_host, names)
    finally:
        if not args.keep:
            names.cleanup(client)
            shutil.rmtree(work, ignore_errors=True)
        client.close()

    report: dict[str, Any] = {
        "benchmark": "releases",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "cpus_online": os.cpu_count(),
        "skopeo": run(["skopeo", "--version"]).strip(),
        "params": {"base_mb": args.base_mb, "big_mb": None if args.skip_big else args.big_mb,
                   "runs": args.runs, "latency": LATENCY, "node_settings": NODE_SETTINGS,
                   "app_layer": APP_LAYER},
        "units": "bytes; MiB = 2^20 bytes",
        "targets": {"series": f"a->b <= {BUDGET_FACTOR} x zstd(new layers) + 64 KiB",
                    "import_time": f"Outpost / skopeo <= {IMPORT_RATIO_TARGET}",
                    "import_rss": f"peak RSS < {RSS_TARGET_MIB} MiB for a "
                                  f"{RSS_TARGET_FOR_MIB} MiB image"},
        "series": series,
        "imports": imports,
    }
    verdicts = [r["pass"] for r in series["rows"]]
    for c in imports["cases"]:
        verdicts += [c["pass_time"], c["pass_rss"]]
    report["pass"] = not series["error"] and not imports["error"] and \
        all(v is not False for v in verdicts)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else report_text(report))
    if not report["pass"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
