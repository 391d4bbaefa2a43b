"""The command applier and the runner around it, in process: a real outpost home, a real
git mirror and real processes; no Docker, no link (the release is put in the mirror and the
state as the outpost role would, after it arrived)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from outpost.apply.loop import apply_by_hand, previous_release, resolve_release
from outpost.errors import ConfigError
from outpost.home import load_home
from outpost.node.context import Node, open_node
from outpost.node.setup import init_home
from outpost.release.manifest import Release
from outpost.store.applies import ApplyStore
from outpost.store.releases import READY, ReleaseStore


class Outpost:
    """An outpost home whose mirror receives commits straight from a work repo."""

    def __init__(self, root: Path) -> None:
        home = init_home(root / "mars", "outpost", "mars", {"rtt": "1s"})
        with open(home.path / "node.toml", "a") as f:
            f.write('\n[outpost]\nregistry = "127.0.0.1:9"\n')
        self.node: Node = open_node(load_home(home.path))
        self.work = root / "work"
        git("init", "-q", "-b", "main", str(self.work))
        git("init", "-q", "--bare", "-b", "main", str(home.path / "config.git"))
        self.settings = self.node.home.outpost
        self.lines: list[str] = []

    def release(self, command: list[str], *, timeout: str = "30s",
                files: dict[str, str] | None = None) -> str:
        toml = (f'[apply]\napplier = "command"\ncommand = {json.dumps(command)}\n'
                f'workdir = "deploy"\ntimeout = "{timeout}"\nenv = {{ STAGE = "test" }}\n')
        (self.work / "deploy").mkdir(exist_ok=True)
        (self.work / "outpost.toml").write_text(toml)
        for name, text in (files or {}).items():
            (self.work / "deploy" / name).write_text(text)
        (self.work / "deploy" / "stamp").write_text(str(time.time_ns()))
        return self.push()

    def push(self) -> str:
        """Commit the work tree, push it to the mirror, and mark the release ready."""
        git("-C", str(self.work), "add", "-A")
        git("-C", str(self.work), "-c", "user.name=t", "-c", "user.email=t@t", "commit",
            "-qm", "release")
        commit = git("-C", str(self.work), "rev-parse", "HEAD").strip()
        git("-C", str(self.work), "push", "-q", str(self.node.home.path / "config.git"),
            "main")
        ReleaseStore(self.node.state).set_release(commit, Release(commit, []).to_meta(),
                                                  READY, "", time.time())
        return commit

    def apply(self, commit: str, trigger: str = "manual") -> dict[str, object]:
        return apply_by_hand(self.node, self.settings, commit, trigger,
                             self.lines.append).to_json()


def processes_with(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def outpost(tmp_path: Path) -> Outpost:
    return Outpost(tmp_path)


def test_the_command_runs_in_a_checkout_with_the_release_in_its_environment(
        outpost: Outpost) -> None:
    first = outpost.release(["true"])
    assert outpost.apply(first)["state"] == "applied"
    script = ("import os, json, pathlib; pathlib.Path(os.environ['OUTPOST_STATE_DIR'], "
              "'env.json').write_text(json.dumps({k: v for k, v in os.environ.items() "
              "if k.startswith(('OUTPOST_', 'STAGE'))} | {'cwd': os.getcwd(), "
              "'stamp': open('stamp').read()}))")
    commit = outpost.release(["python3", "-c", script])
    done = outpost.apply(commit)
    assert done["state"] == "applied", done
    seen = json.loads((outpost.node.home.path / "apply-state" / "env.json").read_text())
    assert seen["OUTPOST_COMMIT"] == commit and seen["OUTPOST_RELEASE"] == commit[:12]
    assert seen["OUTPOST_PREVIOUS_COMMIT"] == first
    assert seen["OUTPOST_REGISTRY"] == "127.0.0.1:9" and seen["STAGE"] == "test"
    assert seen["cwd"] == str(outpost.node.home.path / "work" / commit[:12] / "deploy")
    assert seen["stamp"] == (outpost.work / "deploy" / "stamp").read_text()
    assert [p.name for p in (outpost.node.home.path / "work").iterdir()] == [commit[:12]], \
        "older checkouts are removed once a release is applied"
    assert ApplyStore(outpost.node.state).current().commit == commit  # type: ignore[union-attr]


def test_a_failing_command_fails_with_the_tail_of_its_output(outpost: Outpost) -> None:
    commit = outpost.release(["sh", "-c", "echo first line; echo 'Error: quota exceeded' >&2; "
                                          "exit 3"])
    done = outpost.apply(commit)
    assert done["state"] == "failed"
    assert "exited with 3" in str(done["reason"]) and "quota exceeded" in str(done["reason"])
    log = (outpost.node.home.path / "applies" / f"{commit[:12]}.log").read_text()
    assert "first line" in log and "quota exceeded" in log
    assert ApplyStore(outpost.node.state).current() is None


def test_a_command_that_hangs_is_killed_at_its_timeout(outpost: Outpost) -> None:
    commit = outpost.release(["sh", "-c", "echo started; sleep 61.2345 & sleep 61.2345; wait"],
                             timeout="1s")
    t0 = time.monotonic()
    done = outpost.apply(commit)
    assert time.monotonic() - t0 < 20
    assert done["state"] == "failed" and "timed out" in str(done["reason"])
    assert not processes_with("61.2345"), "the command's process group outlived its timeout"


def test_a_missing_image_in_the_output_makes_the_apply_wait_for_it(outpost: Outpost) -> None:
    commit = outpost.release(["sh", "-c", "echo \"Unable to find image "
                              "'127.0.0.1:9/app/web:1.2' locally\" >&2; exit 125"])
    done = outpost.apply(commit)
    assert done["state"] == "waiting-for-images" and done["wanted"] == ["app/web:1.2"]
    assert done["next_request"] is not None, "the first request is due at once"


def test_a_person_can_name_a_release_and_go_back_one(outpost: Outpost) -> None:
    with pytest.raises(ConfigError, match="nothing to roll back"):
        previous_release(outpost.node)
    first = outpost.release(["true"])
    second = outpost.release(["true"])
    assert resolve_release(outpost.node, None) == second, "the newest ready one by default"
    assert resolve_release(outpost.node, first[:7]) == first
    with pytest.raises(ConfigError, match="no release"):
        resolve_release(outpost.node, "ffffffff")
    outpost.apply(first)
    outpost.apply(second)
    assert previous_release(outpost.node) == first
    assert outpost.apply(previous_release(outpost.node), "rollback")["state"] == "applied"
    with pytest.raises(ConfigError, match="oldest applied"):
        previous_release(outpost.node)
    assert any("applied" in line for line in outpost.lines)


def test_an_invalid_outpost_toml_at_the_commit_fails_without_touching_anything(
        outpost: Outpost) -> None:
    commit = outpost.release(["true"])
    (outpost.work / "outpost.toml").write_text('[apply]\napplier = "teleport"\n')
    git("-C", str(outpost.work), "-c", "user.name=t", "-c", "user.email=t@t", "commit",
        "-qam", "typo")
    bad = git("-C", str(outpost.work), "rev-parse", "HEAD").strip()
    git("-C", str(outpost.work), "push", "-q", str(outpost.node.home.path / "config.git"),
        "main")
    ReleaseStore(outpost.node.state).set_release(bad, Release(bad, []).to_meta(), READY, "",
                                                 time.time())
    assert outpost.apply(commit)["state"] == "applied"
    done = outpost.apply(bad)
    assert done["state"] == "failed" and "apply.applier" in str(done["reason"])
    assert ApplyStore(outpost.node.state).current().commit == commit  # type: ignore[union-attr]


TERRAFORM = Path("/usr/local/bin/terraform")
MAIN_TF = """
variable "release" { type = string }
resource "terraform_data" "release" {
  input            = var.release
  triggers_replace = var.release
  provisioner "local-exec" {
    command = "echo applied $OUTPOST_RELEASE >> $OUTPOST_STATE_DIR/history.txt"
  }
}
output "release" { value = terraform_data.release.output }
"""
TF_APPLY = ["sh", "-c", "terraform init -input=false -no-color >/dev/null && "
            "terraform apply -auto-approve -input=false -no-color "
            "-state=$OUTPOST_STATE_DIR/terraform.tfstate -var release=$OUTPOST_RELEASE"]


@pytest.mark.skipif(not TERRAFORM.exists(), reason="no Terraform at /usr/local/bin/terraform")
def test_terraform_applies_each_release_with_its_state_kept_across_releases(
        outpost: Outpost) -> None:
    """Real Terraform, offline: the built-in terraform_data resource needs no provider."""
    first = outpost.release(TF_APPLY, timeout="2m", files={"main.tf": MAIN_TF})
    assert outpost.apply(first)["state"] == "applied"
    second = outpost.release(TF_APPLY, timeout="2m", files={"main.tf": MAIN_TF})
    done = outpost.apply(second)
    assert done["state"] == "applied", done
    state_dir = outpost.node.home.path / "apply-state"
    history = (state_dir / "history.txt").read_text().split("\n")
    assert history[:2] == [f"applied {first[:12]}", f"applied {second[:12]}"]
    state = json.loads((state_dir / "terraform.tfstate").read_text())
    assert state["outputs"]["release"]["value"] == second[:12]
    log = (outpost.node.home.path / "applies" / f"{second[:12]}.log").read_text()
    assert "Resources: 1 added, 0 changed, 1 destroyed" in log, "not replaced from the state"
