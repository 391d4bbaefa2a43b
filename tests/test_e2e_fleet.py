"""A fleet (issue 11): one Earth, 20 outposts, each a real node process with its own
link-sim (mixed latency and loss), one of them silent (no link at all). A release rolls out
canaries first; a release the canaries reject goes no further.

The releases are config only (the command applier), so the test is about the fleet, not
images; images to many outposts are the other e2e tests' and bench/fleet's.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from outpost.home import load_home
from outpost.node.setup import init_home, trust_peer

from .procs import assert_clean_log, cli, env_int, running, start_link, start_node, tool, wait_for

pytestmark = pytest.mark.slow
SETTINGS = {"rtt": "1s", "ack_delay": "100ms", "rescan": "1s"}
CANARIES = ("o00", "o01")
SILENT = "o19"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def commit(earth: Path, command: str, message: str) -> str:
    repo = earth / "config"
    (repo / "outpost.toml").write_text(f'[apply]\napplier = "command"\n'
                                       f'command = ["sh", "-c", "{command}"]\n')
    git(repo, "commit", "-qam", message)
    return git(repo, "rev-parse", "HEAD").strip()


def make_fleet(root: Path, names: list[str]) -> Path:
    template = root / "template"
    template.mkdir()
    (template / "outpost.toml").write_text('[apply]\napplier = "command"\ncommand = ["true"]\n')
    earth = init_home(root / "earth", "earth", "earth", SETTINGS, template=template)
    toml = earth.path / "node.toml"
    toml.write_text(toml.read_text().replace(
        "[earth]\n", '[earth]\nchannels = ["canary", "stable"]\n', 1) + "".join(
        f'\n[[outposts]]\nname = "{c}"\nchannel = "canary"\ngroups = ["first"]\n'
        for c in CANARIES))
    for name in names:
        home = init_home(root / name, "outpost", name, SETTINGS)
        with open(home.path / "node.toml", "a") as f:
            f.write('\n[outpost]\nsync_interval = "1h"\n')
        trust_peer(load_home(earth.path), home.path)
        trust_peer(home, earth.path)
    return earth.path


def link_flags(i: int) -> list[str]:
    """Mixed links: latency 50 ms to 430 ms, every third lossy, some with a bandwidth."""
    flags = ["--latency", f"{50 + 20 * i}ms", "--poll", "100ms", "--seed", str(i)]
    if i % 3 == 0:
        flags += ["--loss", "0.1"]
    if i % 4 == 1:
        flags += ["--bandwidth", "256k"]
    return flags


def outposts(earth: Path) -> dict[str, Any]:
    return {o["peer"]: o for o in cli("status", "--home", str(earth))["outposts"]}


def applied(earth: Path, release: str, names: list[str]) -> bool:
    rows = outposts(earth)
    return all((rows[n]["last_report"] or {}).get("release") == release
               and rows[n]["last_report"]["event"] == "applied" for n in names)


def test_a_rollout_reaches_every_answering_outpost_canaries_first(tmp_path: Path) -> None:
    names = [f"o{i:02d}" for i in range(env_int("OUTPOST_FLEET_SIZE", 20))]
    answering = [n for n in names if n != SILENT]
    earth = make_fleet(tmp_path, names)
    v1 = commit(earth, "true", "v1")
    procs = [start_node(earth, "earth")]
    procs += [start_node(tmp_path / n, "outpost") for n in names]
    procs += [start_link(earth, tmp_path / n, tmp_path / f"link-{n}", *link_flags(i))
              for i, n in enumerate(names) if n != SILENT]
    with running(*procs):
        time.sleep(3)  # the outposts' syncs at start: no rollout yet, so nothing to send
        out = subprocess.run([tool("outpost-node"), "publish", "--home", str(earth)],
                             capture_output=True, text=True, check=True).stdout
        assert "rollout: canary (2) first; then stable (18)" in out or len(names) != 20
        wait_for(lambda: applied(earth, v1, list(CANARIES)), 60, "the canaries applied v1")
        wait_for(lambda: applied(earth, v1, answering), 120,
                 "every answering outpost applied v1")
        node_msgs = _release_messages(earth)
        canaries_done = max(r["last_report"]["at"] for n, r in outposts(earth).items()
                            if n in CANARIES)
        for name in answering:
            if name not in CANARIES:
                assert node_msgs[name] >= canaries_done - 0.5, f"{name} got v1 early"
        rows = cli("status", "--home", str(earth), "--sort", "backlog")["outposts"]
        assert rows[0]["peer"] == SILENT and rows[0]["backlog_messages"] >= 1
        assert rows[0]["behind"] and rows[0]["heard"] is None
        assert all(not r["behind"] for r in rows[1:]), [r for r in rows if r["behind"]]
        assert _rollout(earth, v1)["channel"] == "stable"

        v2 = commit(earth, "exit 3", "v2: a release that fails")
        subprocess.run([tool("outpost-node"), "publish", "--home", str(earth)],
                       capture_output=True, check=True)
        wait_for(lambda: _rollout(earth, v2)["state"] == "halted", 60,
                 "the rollout of v2 halted at the canaries")
        assert "o0" in _rollout(earth, v2)["note"]
        time.sleep(3)
        rows = outposts(earth)
        for name in answering:
            if name not in CANARIES:
                assert rows[name]["commit"] == v1, f"{name} got v2 though the canaries failed"
    for name in [*answering, "earth"]:
        assert_clean_log(tmp_path / name)


def _rollout(earth: Path, release: str) -> dict[str, Any]:
    return next(r for r in cli("status", "--home", str(earth))["rollouts"]
                if r["commit_id"] == release)


def _release_messages(earth: Path) -> dict[str, float]:
    """When Earth made the release bundle each outpost got (its custody records)."""
    db = sqlite3.connect(earth / "state.db")
    try:
        rows = db.execute("SELECT peer, max(created) FROM messages WHERE kind = 'release' "
                          "GROUP BY peer").fetchall()
    finally:
        db.close()
    return {peer: float(at) for peer, at in rows}
