"""Sneakernet (issue 3, item 8): releases carried on removable media instead of the link.

Real `outpost-node` processes, the real Docker daemon(s) and registry (tests/conftest.py),
images built locally (tests/images.py). There is no link-sim here: every file that crosses
is carried by the test, by hand.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from outpost.gateway.importer import Gateway
from outpost.gateway.registry import Registry, image_ref_parts
from outpost.images.archive import stage_archive
from outpost.node.context import open_node
from outpost.node.setup import init_home
from outpost.store.releases import ReleaseStore

from .conftest import Services
from .images import app_image, busybox_base, image_facts
from .procs import cli, files_in, running, start_node, stop, tool, wait_for

pytestmark = pytest.mark.slow
SETTINGS = ["rtt=1s", "ack_delay=100ms", "rescan=500ms", "fragment_size=16k"]


def node_cli(*args: str, env: dict[str, str] | None = None,
             ok: bool = True) -> subprocess.CompletedProcess[str]:
    """`outpost-node ARGS` (no --json: `import` and `init` print text)."""
    out = subprocess.run([tool("outpost-node"), *args], capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    if ok and out.returncode != 0:
        raise AssertionError(f"outpost-node {' '.join(args)} failed ({out.returncode}): "
                             f"{out.stderr}{out.stdout}")
    return out


def registry_manifest(registry: str, ref: str) -> dict[str, Any] | None:
    repo, tag = image_ref_parts(ref)
    with Registry(registry) as reg:
        found = reg.get_manifest(repo, tag)
    return None if found is None else json.loads(found[1])


def unique() -> str:
    return f"outpost-test/sneaker-{uuid.uuid4().hex[:8]}"


def build(client: docker.DockerClient, version: str) -> str:
    """The fixed local tag of a busybox base + small app layer (cached between runs)."""
    busybox_base(client, "outpost-test/sneakernet-base:1")
    ref = f"outpost-test/sneakernet-app:{version}"
    app_image(client, ref, "outpost-test/sneakernet-base:1", version, size_kb=64)
    return ref


@pytest.fixture
def tags(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Tags a test adds to a cached image, under names of its own (so the registry starts
    without them); untagged again at the end."""
    added: list[str] = []
    yield added
    for ref in added:
        docker_client.images.remove(ref)


def tag_as(client: docker.DockerClient, image: str, ref: str, tags: list[str]) -> None:
    repo, tag = ref.rsplit(":", 1)
    assert client.images.get(image).tag(repo, tag)
    tags.append(ref)


def save(client: docker.DockerClient, ref: str) -> bytes:
    """`docker save REF` with REF as the only tag in it (the image has other tags)."""
    return b"".join(client.images.get(ref).save(named=ref))


@pytest.fixture
def two_layer_image(docker_client: docker.DockerClient,
                    tags: list[str]) -> tuple[str, str, list[str]]:
    """(ref, image ID, diff_ids) of a locally built image, under a tag new to the registry."""
    ref = f"{unique()}:v1"
    tag_as(docker_client, build(docker_client, "v1"), ref, tags)
    image_id, diff_ids = image_facts(docker_client, ref)
    assert len(diff_ids) == 2
    return ref, image_id, diff_ids


# --- (a) a plain `docker save` tar ---

def test_a_docker_save_tar_goes_straight_into_the_registry(
        tmp_path: Path, services: Services, docker_client: docker.DockerClient,
        two_layer_image: tuple[str, str, list[str]]) -> None:
    ref, image_id, diff_ids = two_layer_image
    home = tmp_path / "mars"
    node_cli("init", "--role", "outpost", "--home", str(home), "--name", "mars")
    archive = tmp_path / "media" / "app.tar"
    archive.parent.mkdir()
    archive.write_bytes(save(docker_client, ref))

    out = node_cli("import", "--home", str(home), "--registry", services.registry,
                   str(archive))
    assert f"imported {ref}" in out.stdout
    manifest = registry_manifest(services.registry, ref)
    assert manifest is not None, "the tag is not in the registry"
    assert manifest["config"]["digest"] == image_id
    assert [layer["digest"] for layer in manifest["layers"]] == diff_ids
    status = cli("status", "--home", str(home))
    assert {"ref": ref, "image_id": image_id} in [
        {"ref": i["ref"], "image_id": i["image_id"]} for i in status["images"]]
    assert status["layers_held"] == 2

    # again, from the same media: nothing breaks, the same image
    node_cli("import", "--home", str(home), "--registry", services.registry, str(archive))
    again = registry_manifest(services.registry, ref)
    assert again is not None and again["config"]["digest"] == image_id

    if services.outpost_docker_host:
        other = services.client(services.outpost_docker_host)
        try:
            repo, tag = image_ref_parts(ref)
            pulled = other.images.pull(f"{services.registry}/{repo}", tag=tag)
            assert pulled.id == image_id, "the outpost's Docker sees another image ID"
            other.images.remove(f"{services.registry}/{repo}:{tag}")
        finally:
            other.close()


def test_an_image_that_comes_before_its_shared_layer_is_tagged_once_the_layer_arrives(
        tmp_path: Path, services: Services, docker_client: docker.DockerClient,
        tags: list[str]) -> None:
    """Bundles cross out of order: v2's bundle (without the base layer, which Earth put in
    v1's) is imported first, then v1's. v2 waits, its config and own layer kept, and is
    tagged as soon as the base layer is in the registry."""
    name = unique()
    v1, v2 = f"{name}:v1", f"{name}:v2"
    tag_as(docker_client, build(docker_client, "v1"), v1, tags)
    tag_as(docker_client, build(docker_client, "v2"), v2, tags)
    node = open_node(init_home(tmp_path / "mars", "outpost", "mars"))
    store = ReleaseStore(node.state)
    gateway = Gateway(Registry(services.registry), store)
    staged = {}
    for ref in (v1, v2):
        archive = tmp_path / f"{ref.rsplit(':', 1)[1]}.tar"
        archive.write_bytes(save(docker_client, ref))
        (tmp_path / archive.stem).mkdir()
        (staged[ref],) = stage_archive(archive, tmp_path / archive.stem)
    facts2, files2 = staged[v2]
    base = facts2.diff_ids[0]
    without_base = {d: p for d, p in files2.items() if d != base}
    assert gateway.import_image(facts2, without_base, "earth") == [base]
    assert registry_manifest(services.registry, v2) is None, "v2 was tagged without a layer"
    assert gateway.complete_pending() == [], "completed before the layer came"
    assert gateway.import_image(*staged[v1]) == []
    assert [f.ref for f in gateway.complete_pending()] == [v2]
    manifest = registry_manifest(services.registry, v2)
    assert manifest is not None and manifest["config"]["digest"] == facts2.image_id
    assert [layer["digest"] for layer in manifest["layers"]] == facts2.diff_ids
    assert store.pending_images() == []
    assert {i["ref"] for i in store.images()} == {v1, v2}


def _tamper_layer(archive: bytes, diff_id: str) -> bytes:
    """The same `docker save` tar with one byte of layer `diff_id` changed."""
    out = io.BytesIO()
    done = False
    with tarfile.open(fileobj=io.BytesIO(archive)) as src, \
            tarfile.open(fileobj=out, mode="w") as dst:
        for member in src:
            f = src.extractfile(member) if member.isfile() else None
            data = f.read() if f is not None else None
            if data is not None and not done and \
                    "sha256:" + hashlib.sha256(data).hexdigest() == diff_id:
                data = data[:1024] + bytes([data[1024] ^ 1]) + data[1025:]
                done = True
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    assert done, "layer not found in the archive"
    return out.getvalue()


def test_a_docker_save_tar_with_a_bad_layer_pushes_nothing(
        tmp_path: Path, services: Services, docker_client: docker.DockerClient,
        tags: list[str]) -> None:
    ref = f"{unique()}:bad"
    tag_as(docker_client, build(docker_client, "bad"), ref, tags)
    image_id, diff_ids = image_facts(docker_client, ref)
    home = tmp_path / "mars"
    node_cli("init", "--role", "outpost", "--home", str(home), "--name", "mars",
             "--registry", services.registry)
    archive = tmp_path / "bad.tar"
    archive.write_bytes(_tamper_layer(save(docker_client, ref), diff_ids[-1]))
    out = node_cli("import", "--home", str(home), str(archive), ok=False)
    assert out.returncode != 0
    assert "diff_id" in out.stderr and "Traceback" not in out.stderr
    assert registry_manifest(services.registry, ref) is None
    repo, _tag = image_ref_parts(ref)
    with Registry(services.registry) as reg:
        assert not reg.has_blob(repo, image_id)
        assert not any(reg.has_blob(repo, d) for d in diff_ids)


def test_every_tag_in_a_docker_save_tar_reaches_the_registry(
        tmp_path: Path, services: Services, docker_client: docker.DockerClient,
        two_layer_image: tuple[str, str, list[str]], tags: list[str]) -> None:
    ref, image_id, _ = two_layer_image
    other = f"{unique()}:latest"
    tag_as(docker_client, ref, other, tags)
    # what `docker save REF OTHER` writes for two tags of one image: one manifest entry
    # listing both (checked against the docker CLI), here made from a save of REF
    archive = tmp_path / "two-tags.tar"
    archive.write_bytes(_retag(save(docker_client, ref), [ref, other]))
    home = tmp_path / "mars"
    node_cli("init", "--role", "outpost", "--home", str(home), "--name", "mars",
             "--registry", services.registry)
    node_cli("import", "--home", str(home), str(archive))
    for r in (ref, other):
        manifest = registry_manifest(services.registry, r)
        assert manifest is not None, f"{r} is not in the registry"
        assert manifest["config"]["digest"] == image_id


def _retag(archive: bytes, repo_tags: list[str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(archive)) as src, \
            tarfile.open(fileobj=out, mode="w") as dst:
        for member in src:
            f = src.extractfile(member) if member.isfile() else None
            data = f.read() if f is not None else None
            if member.name == "manifest.json" and data is not None:
                (entry,) = json.loads(data)
                entry["RepoTags"] = repo_tags
                data = json.dumps([entry]).encode()
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def test_importing_a_file_that_is_neither_is_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "mars"
    node_cli("init", "--role", "outpost", "--home", str(home), "--name", "mars",
             "--registry", "127.0.0.1:9")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a tar, not a bundle\n" * 100)
    out = node_cli("import", "--home", str(home), str(junk), ok=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "docker save" in out.stderr
    assert files_in(home / "inbox") == []


# --- (b) whole bundles exported at Earth, imported at the outpost, acks carried back ---

def _config_text(ref: str) -> str:
    return f'[[images]]\nref = "{ref}"\n\n[apply]\napplier = "command"\ncommand = ["true"]\n'


def _sets() -> list[str]:
    return [arg for s in SETTINGS for arg in ("--set", s)]


def test_export_then_import_releases_and_acks_release_custody(
        tmp_path: Path, services: Services, two_layer_image: tuple[str, str, list[str]]) -> None:
    ref, image_id, diff_ids = two_layer_image
    env = {"DOCKER_HOST": services.docker_host}
    template = tmp_path / "template"
    template.mkdir()
    (template / "outpost.toml").write_text(_config_text(ref))
    earth, mars = tmp_path / "earth", tmp_path / "mars"
    node_cli("init", "--role", "earth", "--home", str(earth), "--template", str(template),
             *_sets())
    node_cli("init", "--role", "outpost", "--home", str(mars), "--name", "mars",
             "--registry", services.registry, *_sets())
    with open(mars / "node.toml", "a") as f:  # the [outpost] table is the last one
        f.write('sync_on_start = false\nsync_interval = "1h"\n')
    node_cli("trust", "--home", str(earth), str(mars))
    node_cli("trust", "--home", str(mars), str(earth))
    head = subprocess.run(["git", "-C", str(earth / "config"), "rev-parse", "HEAD"],
                          check=True, capture_output=True, text=True).stdout.strip()

    media = tmp_path / "usb-stick"
    (result,) = cli("export", "--home", str(earth), "--to", "mars", str(media), env=env)
    messages = result["messages"]
    assert sorted(m["kind"] for m in messages) == ["image", "release"]
    assert any(m["units"] > 1 for m in messages), "nothing was big enough to be fragmented"
    exported = files_in(media)
    assert sorted(p.name for p in exported) == sorted(f"{m['id']}.opb" for m in messages)
    assert files_in(earth / "outbox" / "mars") == [], "an export must not feed the link"
    sending = cli("status", "--home", str(earth))["sending"]
    assert sorted(m["id"] for m in sending) == sorted(m["id"] for m in messages)
    again = tmp_path / "second-stick"
    (result,) = cli("export", "--home", str(earth), "--to", "mars", str(again), env=env)
    assert result["messages"] == [], "what is already on its way must not be exported twice"

    for path in exported:
        out = node_cli("import", "--home", str(mars), str(path))
        assert "inbox" in out.stdout
    assert len(files_in(mars / "inbox")) == len(exported)

    proc = start_node(mars, "outpost", env=env)
    with running(proc):
        def applied() -> bool:
            running = cli("status", "--home", str(mars))["running"]
            return running is not None and running["commit"] == head
        wait_for(applied, 60, "the release applied at the outpost")
        manifest = registry_manifest(services.registry, ref)
        assert manifest is not None and manifest["config"]["digest"] == image_id
        assert [layer["digest"] for layer in manifest["layers"]] == diff_ids
        st = cli("status", "--home", str(mars))
        assert st["mirror_head"] == head and st["quarantine"] == []
        assert stop(proc) == 0  # a clean stop flushes the pending acks
    assert files_in(mars / "inbox") == []

    carried = files_in(mars / "outbox" / "earth")
    assert carried, "the outpost wrote nothing for Earth"
    for path in carried:
        os.replace(path, earth / "inbox" / path.name)

    proc = start_node(earth, "earth", env=env)
    with running(proc):
        wait_for(lambda: not cli("status", "--home", str(earth))["sending"], 30,
                 "Earth's custody of the exported messages to be released")
        st = cli("status", "--home", str(earth))
        (mars_row,) = st["outposts"]
        assert mars_row["commit"] == head
        assert mars_row["images"] == 1 and mars_row["layers"] == len(diff_ids)
        assert [r["event"] for r in st["reports"]] == ["applied"]
        assert st["fleet"]["mars"]["running"] == head
        assert st["quarantine"] == []
        assert stop(proc) == 0
    (result,) = cli("export", "--home", str(earth), "--to", "mars", str(again), env=env)
    assert result["messages"] == [], "the outpost holds it all: nothing to export"
    for home in (earth, mars):
        log = (home / "stderr.log").read_text()
        assert " ERROR " not in log and "Traceback" not in log, log[-2000:]
