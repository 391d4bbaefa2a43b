"""The link-sim command line, run in-process with --until-idle (fast)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from link.cli import cli


def make_home(root: Path, name: str, peer: str) -> Path:
    home = root / name
    (home / "inbox").mkdir(parents=True)
    (home / "outbox" / peer).mkdir(parents=True)
    (home / "node.toml").write_text(f'name = "{name}"\nrole = "earth"\n')
    return home


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_profile_file_and_flag_overrides(tmp_path: Path) -> None:
    a, b = make_home(tmp_path, "a", "b"), make_home(tmp_path, "b", "a")
    (tmp_path / "ground.toml").write_text(
        'latency = "5s"\njitter = "1s"\nbandwidth = "64k"\nloss = 0.5\n'
    )
    stats = tmp_path / "stats.json"
    code, output = run(
        "--a", str(a), "--b", str(b), "--profile", str(tmp_path / "ground.toml"),
        "--latency", "0", "--jitter", "0", "--loss", "0", "--reorder", "--until-idle",
        "--stats", str(stats), "-q",
    )  # fmt: skip
    assert code == 0, output
    params = json.loads(stats.read_text())["params"]
    assert params["latency"] == 0 and params["loss"] == 0 and params["reorder"] == 0.25
    assert params["bandwidth"] == 64 * 1024  # from the profile
    assert (tmp_path / ".link-sim-a-b" / "origin.json").exists()  # the default state dir


def test_until_idle_moves_everything(tmp_path: Path) -> None:
    a, b = make_home(tmp_path, "a", "b"), make_home(tmp_path, "b", "a")
    (a / "outbox" / "b" / "1.opb").write_bytes(b"one")
    (b / "outbox" / "a" / "2.opb").write_bytes(b"two")
    code, output = run("--a", str(a), "--b", str(b), "--until-idle", "--reorder", "0.5", "-v")
    assert code == 0, output
    assert (b / "inbox" / "1.opb").read_bytes() == b"one"
    assert (a / "inbox" / "2.opb").read_bytes() == b"two"
    assert "a->b delivered 1.opb" in output and "b->a delivered 2.opb" in output


def test_usage_errors(tmp_path: Path) -> None:
    code, output = run("--a", str(tmp_path))
    assert code == 2 and "--b HOME_B" in output
    code, output = run("--a", "x", "--b", "y", "--profile", "jupiter")
    assert code == 2 and "no profile 'jupiter'" in output
    code, output = run("--a", "x", "--b", "y", "--latency", "soon")
    assert code == 2 and "not a duration" in output
    code, output = run("--a", "x", "--b", "y", "--bandwidth", "fast")
    assert code == 2 and "bandwidth" in output
    code, output = run("--a", "x", "--b", "y", "--contact-plan", str(tmp_path / "none.txt"))
    assert code == 2 and "cannot read contact plan" in output


def test_list_profiles() -> None:
    for args in (["profiles"], ["--list-profiles"]):
        code, output = run(*args)
        assert code == 0
        assert "geo-satellite" in output and "repeat 24h39m35s" in output
