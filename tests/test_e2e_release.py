"""Releases end to end: real `outpost-node` processes for Earth and the outpost, a real
link-sim, the real Docker daemon(s) and distribution registry (tests/conftest.py).

Images are built locally (tests/images.py), never pulled.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import pytest
import zstandard

from outpost.codec import Header, new_id, pack_parts
from outpost.codec.files import PartWriter
from outpost.gateway.registry import Registry, image_ref_parts
from outpost.home import Home, load_home
from outpost.images.parts import ImagePayload, Part
from outpost.node.setup import init_home, trust_peer
from outpost.release.manifest import ImageFacts

from .conftest import SERVICES_DIR, Services
from .images import app_image, build_image, busybox_base, image_facts, pseudo_random
from .procs import assert_clean_log, cli, files_in, running, start_link, start_node, wait_for

pytestmark = pytest.mark.slow
LOSS = 0.1
LINK = ["--latency", "300ms", "--loss", str(LOSS), "--duplicate", "0.02", "--seed", "5"]
SETTINGS = {"rtt": "1500ms", "ack_delay": "100ms", "rescan": "1s", "fragment_size": "16k"}


class Site:
    """An Earth home and an outpost home, trusting each other, plus their processes."""

    def __init__(self, root: Path, services: Services, prefix: str, *,
                 earth_settings: dict[str, str] | None = None, sync_on_start: bool = True,
                 trust: bool = True) -> None:
        self.root, self.services, self.prefix = root, services, prefix
        template = root / "template"
        template.mkdir()
        (template / "outpost.toml").write_text(config_text([]))
        self.earth = init_home(root / "earth", "earth", "earth",
                               {**SETTINGS, **(earth_settings or {})}, template=template)
        mars = init_home(root / "mars", "outpost", "mars", SETTINGS,
                         registry=services.registry)
        with open(mars.path / "node.toml", "a") as f:
            f.write(f'sync_interval = "1h"\nsync_on_start = {str(sync_on_start).lower()}\n')
        self.mars = load_home(mars.path)
        if trust:
            self.trust()
        self.env = {"DOCKER_HOST": services.docker_host}
        self.procs: list[subprocess.Popen[bytes]] = []

    def trust(self) -> None:
        trust_peer(self.earth, self.mars.path)
        trust_peer(self.mars, self.earth.path)

    def start(self, *link_flags: str) -> None:
        self.procs = [start_link(self.earth.path, self.mars.path, self.root / "link",
                                 *(link_flags or LINK)),
                      start_node(self.earth.path, "earth", env=self.env),
                      start_node(self.mars.path, "outpost", env=self.env)]

    def commit(self, refs: list[str], message: str) -> str:
        repo = self.earth.path / "config"
        (repo / "outpost.toml").write_text(config_text(refs))
        git(repo, "commit", "-qam", message)
        return git(repo, "rev-parse", "HEAD").strip()

    def publish(self) -> Any:
        return cli("publish", "--home", str(self.earth.path), env=self.env)

    def status(self, home: Home) -> Any:
        return cli("status", "--home", str(home.path), env=self.env)

    def released(self, commit: str) -> bool:
        return any(r["commit_id"] == commit and r["state"] == "ready"
                   for r in self.status(self.mars)["releases"])

    def link_bytes(self) -> int:
        stats = json.loads((self.root / "link-stats.json").read_text())
        return int(stats["a->b"]["offered"]["bytes"])

    def link_idle(self) -> bool:
        stats = json.loads((self.root / "link-stats.json").read_text())
        both = (stats["a->b"], stats["b->a"])
        busy = any(d["in_flight"] or d["queued"] for d in both)
        return not busy and not self.status(self.earth)["sending"]

    def check_logs(self) -> None:
        assert_clean_log(self.earth.path)
        assert_clean_log(self.mars.path)


def config_text(refs: list[str]) -> str:
    images = "".join(f'[[images]]\nref = "{r}"\n\n' for r in refs)
    return images + '[apply]\napplier = "command"\ncommand = ["true"]\n'


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def site(tmp_path: Path, services: Services, request: pytest.FixtureRequest) -> Iterator[Site]:
    s = Site(tmp_path, services, f"outpost-test/{request.node.name[5:30].lower()}")
    yield s
    for p in s.procs:
        if p.poll() is None:
            p.terminate()
            p.wait(20)


def registry_image_id(registry: str, ref: str) -> str | None:
    repo, tag = image_ref_parts(ref)
    with Registry(registry) as reg:
        found = reg.get_manifest(repo, tag)
    if found is None:
        return None
    return str(json.loads(found[1])["config"]["digest"])


def zstd_size_of_layer(client: docker.DockerClient, ref: str, diff_id: str) -> int:
    data = b"".join(client.images.get(ref).save())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            f = tar.extractfile(m) if m.isfile() else None
            if f is None:
                continue
            blob = f.read()
            if "sha256:" + hashlib.sha256(blob).hexdigest() == diff_id:
                return len(zstandard.ZstdCompressor(level=3).compress(blob))
    raise AssertionError(f"{diff_id} not in docker save of {ref}")


def test_v1_then_v2_crosses_only_the_new_app_layer(site: Site, docker_client: docker.DockerClient,
                                                   services: Services) -> None:
    base, app = f"{site.prefix}-base:1", f"{site.prefix}-app"
    busybox_base(docker_client, base, extra_mb=10)
    app_image(docker_client, f"{app}:v1", base, "v1")
    v1 = site.commit([f"{app}:v1"], "release v1")
    site.start()
    with running(*site.procs):
        site.publish()
        wait_for(lambda: site.released(v1), 240, "v1 ready at the outpost")
        v1_id, _ = image_facts(docker_client, f"{app}:v1")
        assert registry_image_id(services.registry, f"{app}:v1") == v1_id
        assert site.status(site.mars)["mirror_head"] == v1
        if services.outpost_docker_host:
            other = services.client(services.outpost_docker_host)
            pulled = other.images.pull(f"{services.registry}/{app}", tag="v1")
            assert pulled.id == v1_id, "the outpost's Docker sees another image ID"
        wait_for(site.link_idle, 60, "the link to settle after v1")

        app_image(docker_client, f"{app}:v2", base, "v2")
        v2_id, v2_layers = image_facts(docker_client, f"{app}:v2")
        v2 = site.commit([f"{app}:v2"], "release v2")
        before = site.link_bytes()
        site.publish()
        wait_for(lambda: site.released(v2), 120, "v2 ready at the outpost")
        wait_for(site.link_idle, 60, "the link to settle after v2")
        crossed = site.link_bytes() - before
        # Offered bytes count what the link lost and was sent again: the layer over (1 - loss).
        layer = zstd_size_of_layer(docker_client, f"{app}:v2", v2_layers[-1])
        budget = 1.2 * layer / (1 - LOSS) + 65536
        assert crossed <= budget, f"v2 sent {crossed} bytes, budget {budget:.0f}"
        assert registry_image_id(services.registry, f"{app}:v2") == v2_id
        assert site.status(site.mars)["mirror_head"] == v2
    site.check_logs()


def family_files(seed: str, version: int, changed: range) -> dict[str, bytes]:
    """An app layer of 64 files of 8 KiB (incompressible, new for each `seed`); version
    `version` changes the files in `changed` from version 1's."""
    return {f"/app/f{i:02d}.bin": b"".join(pseudo_random(
        f"{seed}/{i}/{version if i in changed else 1}", 8192)) for i in range(64)}


def blob_file(digest: str) -> Path | None:
    """Where the tests' registry keeps blob `digest` on disk (its filesystem storage)."""
    config = SERVICES_DIR / "registry.yml"
    if not config.exists():
        return None
    root = next((line.split(":", 1)[1].strip() for line in config.read_text().splitlines()
                 if line.strip().startswith("rootdirectory:")), None)
    hexd = digest.removeprefix("sha256:")
    found = Path(root or "/nonexistent") / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd
    return found / "data" if (found / "data").exists() else None


def test_a_patch_release_crosses_as_a_delta_and_a_damaged_base_gets_the_full_layer(
        site: Site, docker_client: docker.DockerClient, services: Services) -> None:
    base, app, seed = f"{site.prefix}-base:1", f"{site.prefix}-family", new_id()
    busybox_base(docker_client, base)
    build_image(docker_client, f"{app}:v1", family_files(seed, 1, range(0)), base)
    v1 = site.commit([f"{app}:v1"], "v1")
    site.start()
    with running(*site.procs):
        site.publish()
        wait_for(lambda: site.released(v1), 240, "v1 ready at the outpost")
        wait_for(site.link_idle, 60, "the link to settle after v1")

        build_image(docker_client, f"{app}:v2", family_files(seed, 2, range(0, 3)), base)
        v2_id, v2_layers = image_facts(docker_client, f"{app}:v2")
        v2 = site.commit([f"{app}:v2"], "v2: 3 of 64 files changed")
        before = site.link_bytes()
        sent = site.publish()
        wait_for(lambda: site.released(v2), 120, "v2 ready at the outpost")
        wait_for(site.link_idle, 60, "the link to settle after v2")
        crossed = site.link_bytes() - before
        assert "1 as deltas" in json.dumps(sent)
        # 3 changed files of 8 KiB against a 512 KiB layer: the delta, not the layer
        assert crossed < (3 * 8192 * 1.5 + 32768) / (1 - LOSS), f"v2 sent {crossed} bytes"
        assert registry_image_id(services.registry, f"{app}:v2") == v2_id

        damaged = blob_file(v2_layers[-1])
        if damaged is None:
            pytest.skip("the tests' registry storage is not where .services says")
        data = bytearray(damaged.read_bytes())
        data[len(data) // 2] ^= 0xFF
        damaged.write_bytes(bytes(data))
        assert hashlib.sha256(damaged.read_bytes()).hexdigest() != v2_layers[-1][7:]
        build_image(docker_client, f"{app}:v3", family_files(seed, 3, range(3, 6)), base)
        v3_id, _ = image_facts(docker_client, f"{app}:v3")
        v3 = site.commit([f"{app}:v3"], "v3: against a base damaged at the outpost")
        site.publish()
        wait_for(lambda: site.released(v3), 120, "v3 ready at the outpost (full layer)")
        assert registry_image_id(services.registry, f"{app}:v3") == v3_id
        asked = [r for r in site.status(site.earth)["reports"] if r["event"] == "image-request"]
        assert asked and asked[0]["detail"]["refs"] == [f"{app}:v3"]
    log = (site.mars.path / "node.log").read_text()
    assert "is damaged" in log, "the outpost did not notice its damaged base"
    site.check_logs()


def test_a_config_release_overtakes_a_big_image_already_crossing(
        tmp_path: Path, services: Services, docker_client: docker.DockerClient) -> None:
    """A narrow link (2 MiB/s) busy with a 40 MiB layer: a release published after it, the
    same image with another config, overtakes what is still in Earth's outbox and is in
    the outpost's mirror long before the image (what link-sim already took, a few seconds'
    worth, goes first)."""
    site = Site(tmp_path, services, "outpost-test/overtakes",
                earth_settings={"fragment_size": "1M"})
    big = f"{site.prefix}-big:1"
    busybox_base(docker_client, big, extra_mb=40, seed=new_id())
    v1 = site.commit([big], "v1: a big image")
    site.start("--latency", "100ms", "--bandwidth", "2M")
    with running(*site.procs):
        site.publish()
        wait_for(lambda: site.link_bytes() > 1024 * 1024, 60, "the image to be crossing")
        repo = site.earth.path / "config"
        (repo / "notes.txt").write_text("config only\n")
        git(repo, "add", "notes.txt")
        git(repo, "commit", "-qm", "v2: a config change")
        v2 = git(repo, "rev-parse", "HEAD").strip()
        site.publish()
        wait_for(lambda: site.status(site.mars)["mirror_head"] == v2, 60,
                 "the config release to arrive")
        assert not site.released(v1), "the config waited for the image"
        assert site.link_bytes() < 30 * 1024 * 1024, "the config waited for the image"
        wait_for(lambda: site.released(v2), 120, "v2 ready once the image is in")
    site.check_logs()


def test_history_rewrite_is_refused_and_reported(site: Site,
                                                 docker_client: docker.DockerClient) -> None:
    base = f"{site.prefix}-base:1"
    busybox_base(docker_client, base)
    v1 = site.commit([base], "release v1")
    site.start("--latency", "100ms")
    with running(*site.procs):
        site.publish()
        wait_for(lambda: site.released(v1), 120, "v1 ready")
        wait_for(site.link_idle, 60, "the link to settle")
        repo = site.earth.path / "config"
        (repo / "notes.txt").write_text("rewritten\n")
        git(repo, "add", "notes.txt")
        git(repo, "commit", "-q", "--amend", "-m", "release v1, rewritten")
        rewritten = git(repo, "rev-parse", "HEAD").strip()
        site.publish()
        wait_for(lambda: any(r["event"] == "release-refused"
                             for r in site.status(site.earth)["reports"]), 60,
                 "Earth to hear of the refusal")
        assert site.status(site.mars)["mirror_head"] == v1
        reasons = [r["quarantine_reason"] for r in
                   cli("bundles", "ls", str(site.mars.quarantine))]
        assert "history-rewrite" in reasons
        assert rewritten != v1
    site.check_logs()


def test_outpost_joining_after_several_releases_catches_up_with_one_sync(
        tmp_path: Path, services: Services, docker_client: docker.DockerClient) -> None:
    s = Site(tmp_path, services, "outpost-test/late", trust=False)
    base = f"{s.prefix}-base:1"
    busybox_base(docker_client, base, extra_mb=2)
    commits = []
    for v in ("v1", "v2", "v3"):
        app_image(docker_client, f"{s.prefix}-app:{v}", base, v)
        commits.append(s.commit([f"{s.prefix}-app:{v}"], f"release {v}"))
    s.trust()
    s.start()
    with running(*s.procs):
        wait_for(lambda: s.released(commits[-1]), 180, "v3 ready after the start-up sync")
        log = (s.mars.path / "node.log").read_text()
        assert log.count("sync sent to earth") == 1
        assert int(git(s.mars.path / "config.git", "rev-list", "--count", "main")) == 4
        v3_id, _ = image_facts(docker_client, f"{s.prefix}-app:v3")
        assert registry_image_id(services.registry, f"{s.prefix}-app:v3") == v3_id
    s.check_logs()


def test_pushed_bundles_that_expired_on_the_way_heal_with_one_sync(
        tmp_path: Path, services: Services, docker_client: docker.DockerClient) -> None:
    s = Site(tmp_path, services, "outpost-test/expired", sync_on_start=False,
             earth_settings={"lifetime": "6s"})
    base = f"{s.prefix}-base:1"
    busybox_base(docker_client, base, extra_mb=2)
    v1 = s.commit([base], "release v1")
    plan = tmp_path / "plan.txt"
    plan.write_text("# down for the first 15 s\n15s forever\n")
    s.start("--latency", "200ms", "--contact-plan", str(plan))
    with running(*s.procs):
        sent = s.publish()
        assert sent[0]["messages"], "nothing was published"
        wait_for(lambda: not s.status(s.earth)["sending"], 30, "the push to expire")
        origin = start_time(s)
        wait_for(lambda: time.time() > origin + 16, 30, "the link to come up")
        assert not s.released(v1)
        cli("sync", "--home", str(s.mars.path), env=s.env)
        wait_for(lambda: s.released(v1), 120, "v1 ready after one sync")
    s.check_logs()


def start_time(s: Site) -> float:
    stats = json.loads((s.root / "link-stats.json").read_text())
    return datetime.fromisoformat(stats["origin"].replace("Z", "+00:00")).timestamp()


def test_a_layer_that_is_not_its_diff_id_never_reaches_the_registry(
        site: Site, docker_client: docker.DockerClient, services: Services) -> None:
    ref = f"{site.prefix}-base:1"
    busybox_base(docker_client, ref)
    image_id, diff_ids = image_facts(docker_client, ref)
    config = docker_client.api.inspect_image(ref)
    raw_config = b"".join(docker_client.images.get(ref).save())
    with tarfile.open(fileobj=io.BytesIO(raw_config)) as tar:
        cfg_bytes = next(tar.extractfile(m).read() for m in tar  # type: ignore[union-attr]
                         if m.name.endswith(".json") and m.name != "manifest.json"
                         and "/" not in m.name)
    assert config["Id"] == image_id
    bogus = b"this is not the layer the config names\n" * 1000
    facts = ImageFacts(ref=ref, image_id=image_id, diff_ids=diff_ids)
    payload = ImagePayload(facts, len(cfg_bytes), [Part(diff_ids[0], len(bogus))])

    def fill(w: PartWriter) -> dict[str, Any]:
        w.write(cfg_bytes)
        w.end_frame()
        w.write(bogus)
        w.end_frame()
        return payload.to_meta()

    now = time.time()
    header = Header(id=new_id(), kind="image", src="earth", dst="mars", created=now,
                    expires=now + 3600, meta={"release": "0" * 40})
    target = site.mars.inbox / "bad-image.opb"
    pack_parts(target, header, fill, site.earth.signing_seed())
    proc = start_node(site.mars.path, "outpost", env=site.env)
    site.procs = [proc]
    with running(proc):
        wait_for(lambda: bool(files_in(site.mars.quarantine)), 30, "the bad image quarantined")
        rows = cli("bundles", "ls", str(site.mars.quarantine))
        assert [r["quarantine_reason"] for r in rows] == ["layer-digest"]
        repo, tag = image_ref_parts(ref)
        with Registry(services.registry) as reg:
            assert reg.get_manifest(repo, tag) is None
            assert not reg.has_blob(repo, diff_ids[0])
            assert not reg.has_blob(repo, image_id)
        wait_for(lambda: any("report" in p.name or p.suffix == ".opb"
                             for p in files_in(site.mars.outbox("earth"))), 15,
                 "a report for Earth")
        assert proc.poll() is None
