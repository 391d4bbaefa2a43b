"""The terraform applier and Terraform providers carried across the link.

Real Terraform (/usr/local/bin/terraform or on PATH) and, for the provider tests, the
provider mirror at /opt/tf-plugins (hashicorp/aws 5.100.0); each test skips with the
reason where they are missing. The runner tests are in process: a real outpost home and
git mirror, the release put in the mirror and the state as the outpost role would."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from outpost.apply.terraform import JsonLines
from outpost.cli.applies import summary_text
from outpost.codec import PartWriter
from outpost.errors import ConfigError, MalformedBundle, RefusedContent
from outpost.gateway.providers import install_provider
from outpost.home import load_home
from outpost.node.context import open_node
from outpost.node.sender import Sender
from outpost.node.setup import init_home, trust_peer
from outpost.providers.lockfile import parse_lock
from outpost.providers.mirror import OutpostMirror, Unpacked, find_package, write_package
from outpost.providers.package import PackageFile, Provider, ProviderPayload, h1

from .helpers import make_pair
from .procs import running, start_node, tool, wait_for
from .test_apply_command import Outpost

TERRAFORM = shutil.which("terraform")
MIRROR = Path(os.environ.get("OUTPOST_TF_MIRROR", "/opt/tf-plugins"))
AWS = Provider("registry.terraform.io/hashicorp/aws", "5.100.0", "linux_amd64")
needs_terraform = pytest.mark.skipif(TERRAFORM is None, reason="terraform is not installed")
needs_aws = pytest.mark.skipif(not (MIRROR / AWS.key).is_dir(),
                               reason=f"hashicorp/aws 5.100.0 is not in {MIRROR}")

LOCK = '''# This file is maintained automatically by "terraform init".
# Manual edits may be lost in future updates.

provider "registry.terraform.io/hashicorp/aws" {
  version     = "5.100.0"
  constraints = "~> 5.0"
  hashes = [
    "h1:edXOJWE4ORX8Fm+dpVpICzMZJat4AX0VRCAy/xkcOc0=",
    "zh:0123",
  ]
}
'''


# --- pure: the lock file, the package hash, the bundle's description ---

def test_lock_file_as_terraform_writes_it() -> None:
    [aws] = parse_lock(LOCK)
    assert aws.source == AWS.source and aws.version == "5.100.0"
    assert aws.hashes == ("h1:edXOJWE4ORX8Fm+dpVpICzMZJat4AX0VRCAy/xkcOc0=", "zh:0123")
    assert parse_lock("# nothing locked\n") == []


@pytest.mark.parametrize("text", [
    'provider "x" {\n version = "1.0.0"\n hashes = ["h1:a"]\n}\n',  # not an address
    'provider "registry.terraform.io/a/b" {\n version = "~> 1.0"\n hashes = ["h1:a"]\n}\n',
    'provider "registry.terraform.io/a/b" {\n version = "1.0.0"\n}\n',  # no hashes
    'provider "registry.terraform.io/a/b" {\n version = "1.0.0"\n hashes = ["h1:a"]\n',
    'module "m" {}\n',
    'provider "registry.terraform.io/a/b" {\n version = "1.0.0"\n hashes = ["h1:a"]\n}\n' * 2,
])
def test_a_lock_file_terraform_did_not_write_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="lock"):
        parse_lock(text)


def test_h1_is_terraforms_hash_of_a_package_folder(tmp_path: Path) -> None:
    """Checked against the hash `terraform providers lock` recorded for the real mirror."""
    if not (MIRROR / AWS.key).is_dir():
        pytest.skip(f"hashicorp/aws 5.100.0 is not in {MIRROR}")
    payload = write_package(Unpacked(MIRROR / AWS.key),
                            Provider(AWS.source, AWS.version, AWS.platform,
                                     parse_lock(LOCK)[0].hashes), _NullWriter())
    assert payload.h1 == "h1:edXOJWE4ORX8Fm+dpVpICzMZJat4AX0VRCAy/xkcOc0="
    assert [f.name for f in payload.files] == ["LICENSE.txt",
                                               "terraform-provider-aws_v5.100.0_x5"]
    assert [f.executable for f in payload.files] == [False, True]


def test_a_mirror_copy_that_is_not_the_locked_one_is_not_sent(tmp_path: Path) -> None:
    package = _fake_package(tmp_path / "mirror", AWS)
    provider = Provider(AWS.source, AWS.version, AWS.platform, ("h1:somethingelse=",))
    with pytest.raises(ConfigError, match="does not list"):
        write_package(find_package([tmp_path / "mirror"], provider) or package, provider,
                      _NullWriter())


@pytest.mark.parametrize("meta", [
    {"provider": {"source": "x", "version": "1.0.0", "platform": "linux_amd64"}, "files": []},
    {"provider": AWS.to_meta(), "files": [["../../etc/passwd", 1, "sha256:" + "0" * 64, False]]},
    {"provider": AWS.to_meta(), "files": [["/abs", 1, "sha256:" + "0" * 64, False]]},
    {"provider": AWS.to_meta(), "files": [["a", 2, "sha256:" + "0" * 64, False]]},  # 2 != 1
    {"provider": AWS.to_meta(), "files": [["a", 1, "md5:0", False]]},
])
def test_a_provider_bundle_that_describes_itself_badly_is_refused(meta: dict[str, Any]) -> None:
    with pytest.raises(MalformedBundle):
        ProviderPayload.from_meta(meta, 1)


def test_terraform_json_lines_become_readable_and_the_summary_is_kept() -> None:
    summary: dict[str, Any] = {}
    lines = JsonLines(summary)
    assert lines('{"@message": "Plan: 1 to add, 0 to change, 1 to destroy.", "type": '
                 '"change_summary", "changes": {"add": 1, "change": 0, "remove": 1, '
                 '"operation": "plan"}}') == "Plan: 1 to add, 0 to change, 1 to destroy."
    assert lines('{"@message": "Error: boom", "type": "diagnostic", "diagnostic": '
                 '{"detail": "exit\\n status 3"}}') == "Error: boom: exit status 3"
    assert lines("not json") == "not json"
    assert summary == {"plan": {"add": 1, "change": 0, "remove": 1, "import": 0}}
    assert summary_text(summary) == "+1 ~0 -1"


# --- the outpost installs only what matches ---

def test_a_package_is_installed_whole_only_when_its_hash_is_the_locked_one(
        tmp_path: Path) -> None:
    files = {"terraform-provider-x_v1.0.0": b"#!/bin/sh\n", "LICENSE": b"free\n"}
    payload, stream = _payload(files, AWS)
    mirror = OutpostMirror(tmp_path / "providers")
    wrong = ProviderPayload(Provider(AWS.source, AWS.version, AWS.platform, ("h1:other",)),
                            payload.files)
    with pytest.raises(RefusedContent, match="lock file") as refused:
        install_provider(mirror, wrong, lambda sink: sink(stream), tmp_path / "staging")
    assert refused.value.reason == "provider-hash"
    assert mirror.keys() == [] and not (tmp_path / "staging").exists()

    tampered = stream.replace(b"free", b"fr3e")
    with pytest.raises(RefusedContent):
        install_provider(mirror, payload, lambda sink: sink(tampered), tmp_path / "staging")
    assert mirror.keys() == []

    assert install_provider(mirror, payload, lambda sink: sink(stream), tmp_path / "staging")
    assert mirror.keys() == [AWS.key]
    binary = mirror.path(AWS) / "terraform-provider-x_v1.0.0"
    assert binary.read_bytes() == b"#!/bin/sh\n" and os.access(binary, os.X_OK)
    assert not install_provider(mirror, payload, lambda sink: sink(stream), tmp_path / "s")


def test_a_provider_bundle_not_matching_the_lock_is_quarantined_with_its_reason(
        tmp_path: Path) -> None:
    """A real outpost node: the signed bundle arrives intact, its package is not the one
    the lock file pins, so it is refused, reported, and nothing is installed."""
    earth, mars = make_pair(tmp_path)
    node = start_node(mars.path, "outpost")
    with running(node):
        files = {"terraform-provider-aws_v5.100.0_x5": b"not the real one\n"}
        payload, stream = _payload(files, AWS)
        sender = Sender(open_node(load_home(earth.path)))
        lying = Provider(AWS.source, AWS.version, AWS.platform, parse_lock(LOCK)[0].hashes)

        def fill(w: PartWriter) -> dict[str, Any]:
            w.write(stream)
            return ProviderPayload(lying, payload.files).to_meta()
        sender.submit("mars", "provider", fill=fill, meta={"release": "0" * 40})
        for f in earth.outbox("mars").iterdir():
            shutil.move(f, mars.inbox / f.name)
        wait_for(lambda: any(p.name.endswith(".reason.json") for p in mars.quarantine.iterdir()),
                 20, "the bundle in quarantine")
        [reason] = [json.loads(p.read_text()) for p in mars.quarantine.iterdir()
                    if p.name.endswith(".reason.json")]
        assert reason["reason"] == "provider-hash", reason
        assert OutpostMirror(mars.provider_mirror).keys() == []
        assert node.poll() is None


# --- the applier, for real, in process ---

class TfOutpost(Outpost):
    """The command applier's test outpost (test_apply_command.py), applying Terraform."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        with open(self.node.home.path / "node.toml", "a") as f:
            f.write(f'terraform = "{TERRAFORM}"\n')  # into its [outpost] table
        self.node.home = load_home(self.node.home.path)
        self.settings = self.node.home.outpost

    def release(self, main_tf: str, lock: str = "") -> str:  # type: ignore[override]
        tf = self.work / "tf"
        tf.mkdir(exist_ok=True)
        (self.work / "outpost.toml").write_text(
            '[apply]\napplier = "terraform"\nworkdir = "tf"\ntimeout = "2m"\n')
        (tf / "main.tf").write_text(main_tf)
        (tf / ".terraform.lock.hcl").write_text(lock)
        return self.push()

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.node.home.terraform / "state/terraform.tfstate")
                               .read_text()))


def data_tf(version: str, extra: str = "") -> str:
    return ('variable "release" { type = string }\nvariable "registry" { type = string }\n'
            f'resource "terraform_data" "version" {{\n  input = "{version}"\n}}\n'
            'output "release" { value = var.release }\n' + extra)


FAILING = ('resource "terraform_data" "bad" {\n  provisioner "local-exec" {\n'
           '    command = "echo failing on purpose; exit 3"\n  }\n}\n')


def resource_input(state: dict[str, Any], name: str) -> Any:
    for r in state["resources"]:
        if r["name"] == name:
            return r["instances"][0]["attributes"]["input"]["value"]
    return None


@needs_terraform
def test_state_stays_in_the_home_across_releases_with_each_plan_summary(
        tmp_path: Path) -> None:
    site = TfOutpost(tmp_path)
    c1 = site.release(data_tf("1"))
    first = site.apply(c1)
    assert first["state"] == "applied", first
    assert first["changes"]["apply"] == {"add": 1, "change": 0, "remove": 0, "import": 0}
    c2 = site.release(data_tf("2"))
    second = site.apply(c2)
    assert second["state"] == "applied", second
    assert second["changes"]["apply"] == {"add": 0, "change": 1, "remove": 0, "import": 0}
    state = site.state()
    assert resource_input(state, "version") == "2"
    assert state["outputs"]["release"]["value"] == c2[:12]  # TF_VAR_release
    assert not list((tmp_path / "mars" / "work").rglob("terraform.tfstate*")), \
        "state in the checkout"
    log = (site.node.home.path / "applies" / f"{c2[:12]}.log").read_text()
    assert "Apply complete! Resources: 0 added, 1 changed, 0 destroyed." in log


@needs_terraform
def test_a_failed_apply_rolls_back_to_the_previous_release_with_the_same_state(
        tmp_path: Path) -> None:
    site = TfOutpost(tmp_path)
    c1 = site.release(data_tf("1"))
    assert site.apply(c1)["state"] == "applied"
    serial = site.state()["serial"]
    bad = site.release(data_tf("2", FAILING))
    outcome = site.apply(bad)
    assert outcome["state"] == "rolled-back", outcome
    assert "exit status 3" in outcome["reason"] or "exited with 1" in outcome["reason"]
    state = site.state()
    assert resource_input(state, "version") == "1", "the previous release's state is back"
    assert resource_input(state, "bad") is None
    assert state["serial"] > serial
    log = (site.node.home.path / "applies" / f"{bad[:12]}.log").read_text()
    assert f"applying release {c1[:12]} again, same state" in log


@needs_terraform
def test_a_first_release_that_fails_has_nothing_to_go_back_to(tmp_path: Path) -> None:
    site = TfOutpost(tmp_path)
    outcome = site.apply(site.release(data_tf("1", FAILING)))
    assert outcome["state"] == "failed" and "nothing ran before it" in outcome["reason"]


@needs_terraform
def test_init_looks_only_in_the_outposts_mirror(tmp_path: Path) -> None:
    """A provider the mirror lacks fails init at once; Terraform never tries a registry."""
    site = TfOutpost(tmp_path)
    main = ('terraform {\n  required_providers {\n    aws = { source = "hashicorp/aws", '
            'version = "5.100.0" }\n  }\n}\n' + data_tf("1"))
    started = time.monotonic()
    outcome = site.apply(site.release(main, LOCK))
    assert outcome["state"] == "failed", outcome
    assert "terraform init exited" in outcome["reason"]
    assert time.monotonic() - started < 60
    log = (site.node.home.path / "applies").glob("*.log")
    text = " ".join("".join(p.read_text() for p in log).split())
    assert "registry.terraform.io/hashicorp/aws was not found in any of the search" in text
    assert f"search locations - {site.node.home.provider_mirror}" in text


# helpers

class _NullWriter:
    def write(self, raw: bytes) -> None:
        pass

    def end_frame(self) -> None:
        pass


def _fake_package(mirror: Path, provider: Provider) -> Unpacked:
    folder = mirror / provider.key
    folder.mkdir(parents=True)
    (folder / "terraform-provider-aws").write_bytes(b"binary")
    return Unpacked(folder)


def _payload(files: dict[str, bytes], provider: Provider) -> tuple[ProviderPayload, bytes]:
    entries = [PackageFile(n, len(d), "sha256:" + hashlib.sha256(d).hexdigest(),
                           n.startswith("terraform-provider")) for n, d in files.items()]
    digest = h1([(e.name, e.digest) for e in entries])
    return (ProviderPayload(Provider(provider.source, provider.version, provider.platform,
                                     (digest,)), entries), b"".join(files.values()))


def test_publish_refuses_a_mirror_copy_the_lock_file_does_not_list(tmp_path: Path) -> None:
    """Earth: a stale mirror is found while the package streams; nothing is queued."""
    template = tmp_path / "template"
    (template / "tf").mkdir(parents=True)
    (template / "outpost.toml").write_text('[apply]\napplier = "terraform"\nworkdir = "tf"\n')
    (template / "tf" / "main.tf").write_text(data_tf("1"))
    (template / "tf" / ".terraform.lock.hcl").write_text(LOCK)
    _fake_package(tmp_path / "mirror", AWS)
    earth, _mars = make_pair(tmp_path / "pair")
    shutil.rmtree(earth.path)
    earth = init_home(earth.path, "earth", "earth", {"rtt": "1s"}, template=template)
    text = (earth.path / "node.toml").read_text()
    (earth.path / "node.toml").write_text(text.replace(
        "[earth]\n", f'[earth]\nterraform_mirror = "{tmp_path / "mirror"}"\n'))
    trust_peer(earth, _mars.path)
    out = subprocess.run([tool("outpost-node"), "publish", "--home", str(earth.path)],
                         capture_output=True, text=True)
    assert out.returncode == 2  # a setting to fix at Earth (docs/cli.md)
    assert "does not list" in out.stderr and "terraform providers mirror" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    custody = earth.path / "spool" / "custody"
    left = [p.name for p in custody.iterdir()] if custody.exists() else []
    assert len(left) <= 1, f"only the release itself may be in custody: {left}"
