"""The terraform applier end to end: real Earth and outpost node processes, a real
link-sim, real Terraform with the hashicorp/aws provider from /opt/tf-plugins.

The outpost runs in a network namespace of its own with no interface up (`unshare
--net`), so its `terraform init` and `apply` cannot reach any network: the provider must
come across the link. Skips with the reason where Terraform, the mirror or unshare are
missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from outpost.node.setup import init_home, trust_peer
from outpost.store.state import State

from .procs import assert_clean_log, cli, running, start_link, start_node, tool, wait_for

MIRROR = Path(os.environ.get("OUTPOST_TF_MIRROR", "/opt/tf-plugins"))
AWS = "registry.terraform.io/hashicorp/aws/5.100.0/linux_amd64"
TERRAFORM = shutil.which("terraform")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(TERRAFORM is None, reason="terraform is not installed"),
    pytest.mark.skipif(not (MIRROR / AWS).is_dir(), reason=f"{AWS} is not in {MIRROR}"),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                       reason="needs root and unshare for a network-less outpost"),
]
SETTINGS = {"rtt": "1s", "ack_delay": "100ms", "rescan": "1s", "fragment_size": "4M"}

MAIN_TF = '''terraform {
  required_providers {
    aws = { source = "hashicorp/aws", version = "5.100.0" }
  }
}

# Offline: no credentials to look up, no account or region to check.
provider "aws" {
  region                      = "us-east-1"
  access_key                  = "offline"
  secret_key                  = "offline"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
}

variable "release" { type = string }

data "aws_partition" "current" {}

resource "terraform_data" "version" {
  input = "VERSION"
}

output "partition" { value = data.aws_partition.current.partition }
output "release" { value = var.release }
'''


def lock_file(folder: Path) -> str:
    """What `terraform providers lock` writes for the mirror's package (real Terraform)."""
    (folder / "main.tf").write_text(MAIN_TF)
    rc = folder / "empty.tfrc"
    rc.write_text("")
    subprocess.run([str(TERRAFORM), "providers", "lock", f"-fs-mirror={MIRROR}",
                    "-platform=linux_amd64"], cwd=folder, check=True, capture_output=True,
                   env={**os.environ, "TF_CLI_CONFIG_FILE": str(rc), "CHECKPOINT_DISABLE": "1"})
    return (folder / ".terraform.lock.hcl").read_text()


def write_template(root: Path) -> Path:
    """Earth's first config: the terraform applier on tf/ (version 1), with its lock file."""
    template = root / "template"
    (template / "tf").mkdir(parents=True)
    (template / "outpost.toml").write_text(
        '[apply]\napplier = "terraform"\nworkdir = "tf"\ntimeout = "10m"\n')
    (template / "tf" / "main.tf").write_text(MAIN_TF.replace("VERSION", "1"))
    (template / "tf" / ".terraform.lock.hcl").write_text(lock_file(root))
    return template


class TfSite:
    def __init__(self, root: Path) -> None:
        self.root = root
        template = write_template(root)
        self.earth = init_home(root / "earth", "earth", "earth", SETTINGS, template=template)
        add_setting(self.earth.path, "earth", f'terraform_mirror = "{MIRROR}"')
        self.mars = init_home(root / "mars", "outpost", "mars", SETTINGS)
        add_setting(self.mars.path, "outpost", f'terraform = "{TERRAFORM}"\nsync_interval = "1h"')
        trust_peer(self.earth, self.mars.path)
        trust_peer(self.mars, self.earth.path)

    def start(self) -> list[subprocess.Popen[bytes]]:
        log = open(self.mars.path / "stderr.log", "ab")  # noqa: SIM115 - the child owns it
        mars = subprocess.Popen(["unshare", "--net", tool("outpost-node"), "start", "--home",
                                 str(self.mars.path)], stdout=log, stderr=subprocess.STDOUT)
        return [start_link(self.earth.path, self.mars.path, self.root / "link", "--latency",
                           "200ms"),
                start_node(self.earth.path, "earth"), mars]

    def commit(self, version: str) -> str:
        repo = self.earth.path / "config"
        (repo / "tf" / "main.tf").write_text(MAIN_TF.replace("VERSION", version))
        git(repo, "commit", "-qam", f"version {version}")
        return git(repo, "rev-parse", "HEAD").strip()

    def head(self) -> str:
        return git(self.earth.path / "config", "rev-parse", "HEAD").strip()

    def outcome(self, commit: str) -> dict[str, Any] | None:
        for a in cli("status", "--home", str(self.mars.path))["applies"]:
            if a["commit"] == commit and a["state"] in ("applied", "failed", "rolled-back"):
                return dict(a)
        return None

    def link_bytes(self) -> int:
        stats = json.loads((self.root / "link-stats.json").read_text())
        return int(stats["a->b"]["offered"]["bytes"])

    def state(self, name: str) -> dict[str, Any]:
        return dict(json.loads((self.mars.path / "terraform" / "state" / name).read_text()))


def add_setting(home: Path, table: str, lines: str) -> None:
    toml = home / "node.toml"
    text = toml.read_text()
    header = f"[{table}]\n"
    toml.write_text(text.replace(header, header + lines + "\n") if header in text
                    else f"{text}\n{header}{lines}\n")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def version_in(state: dict[str, Any]) -> str:
    [res] = [r for r in state["resources"] if r["type"] == "terraform_data"]
    return str(res["instances"][0]["attributes"]["input"]["value"])


def test_the_provider_crosses_once_and_terraform_applies_offline(tmp_path: Path) -> None:
    site = TfSite(tmp_path)
    with running(*site.start()):
        c1 = site.head()
        cli("publish", "--home", str(site.earth.path))
        wait_for(lambda: site.outcome(c1) is not None, 300, "release 1 applied")
        first = site.outcome(c1)
        assert first is not None and first["state"] == "applied", first
        assert first["changes"]["apply"]["add"] == 1
        wait_for(lambda: not cli("status", "--home", str(site.earth.path))["sending"], 60,
                 "Earth's custody to empty")
        crossed_first = site.link_bytes()
        assert crossed_first > 50_000_000, "the provider did not cross the link"

        c2 = site.commit("2")
        cli("publish", "--home", str(site.earth.path))
        wait_for(lambda: site.outcome(c2) is not None, 120, "release 2 applied")
        second = site.outcome(c2)
        assert second is not None and second["state"] == "applied", second
        assert second["changes"]["apply"]["change"] == 1
        crossed_second = site.link_bytes() - crossed_first
        assert crossed_second < 100_000, f"release 2 sent {crossed_second} bytes"

    earth = State(site.earth.state_db)
    kinds = [r["kind"] for r in earth.q("SELECT kind FROM messages WHERE peer = 'mars'")]
    earth.close()
    assert kinds.count("provider") == 1
    now, before = site.state("terraform.tfstate"), site.state("terraform.tfstate.backup")
    assert (version_in(before), version_in(now)) == ("1", "2")
    assert now["lineage"] == before["lineage"] and now["serial"] > before["serial"]
    assert now["outputs"]["release"]["value"] == c2[:12]
    assert now["outputs"]["partition"]["value"] == "aws"
    assert (site.mars.path / "terraform" / "providers" / AWS).is_dir()
    assert_clean_log(site.earth.path)
    assert_clean_log(site.mars.path)
