"""`outpost-node custody` and `outpost-node quarantine`, run through click against two
in-process nodes (helpers.Pair: the far planet is a hand-driven link)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from outpost.cli.main import cli
from outpost.codec import public_key
from outpost.errors import ConfigError

from .helpers import Pair, good


def write_still(path: Path, data: bytes) -> None:
    """A file the link finished writing a while ago (a fresh bad one is given time to
    settle, in case it is still being written)."""
    path.write_bytes(data)
    old = path.stat().st_mtime - 10
    os.utime(path, (old, old))


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return Pair(tmp_path, fragment_size="64k")


def send(pair: Pair, size: int = 400_000):  # type: ignore[no-untyped-def]
    return pair.a.sender.submit("mars", "file", io.BytesIO(os.urandom(size)),
                                meta={"name": "f.bin"}, codec="none")


def test_custody_ls_shows_progress_and_parses_as_json(pair: Pair) -> None:
    msg = send(pair)
    home = str(pair.a_home.path)
    rows = json.loads(run("custody", "ls", "--home", home, "--json").output)
    assert [(r["id"], r["percent"], r["state"]) for r in rows] == [(msg.id, 0.0, "sending")]
    assert rows[0]["bytes_left"] >= 400_000
    pair.link.carry()  # every fragment crosses; mars acks them
    pair.step()
    pair.step()
    rows = json.loads(run("custody", "ls", "--home", home, "--json").output)
    assert not rows or rows[0]["percent"] > 0
    text = run("custody", "ls", "--home", home).output
    assert "ACKED" in text


def test_custody_retry_sends_unacked_units_now_and_drop_gives_up(pair: Pair) -> None:
    msg = send(pair)
    pair.a.tick()
    for path in pair.a_home.outbox("mars").iterdir():  # the link takes them and loses them
        path.unlink()
    pair.a.tick()
    home = str(pair.a_home.path)
    out = run("custody", "retry", "--home", home, msg.id[:8])
    assert out.exit_code == 0, out.output
    assert f"{msg.units} unit(s)" in out.output
    pair.a.tick()
    assert len(list(pair.a_home.outbox("mars").iterdir())) == msg.units
    out = run("custody", "drop", "--home", home, msg.id[:8])
    assert out.exit_code == 0
    assert pair.a.node.state.message(msg.id).state == "failed"
    assert list(pair.a_home.outbox("mars").iterdir()) == []
    assert not Path(msg.path).exists()
    out = run("custody", "retry", "--home", home, msg.id[:8])
    assert isinstance(out.exception, ConfigError) and "failed" in str(out.exception)


def test_an_unknown_or_ambiguous_id_is_a_clear_error(pair: Pair) -> None:
    out = run("custody", "drop", "--home", str(pair.a_home.path), "zzzz")
    assert isinstance(out.exception, ConfigError) and "custody ls" in str(out.exception)


def test_quarantine_ls_show_retry_after_trusting_the_key(pair: Pair) -> None:
    """A bundle from a node not yet trusted is refused; once its key is trusted, `retry`
    puts it back and it is delivered."""
    venus_seed = os.urandom(32)
    write_still(pair.b_home.inbox / "from-venus.opb", good(venus_seed, b"hi", src="venus"))
    pair.step()
    home = str(pair.b_home.path)
    rows = json.loads(run("quarantine", "ls", "--home", home, "--json").output)
    assert [(r["reason"], r["original"]) for r in rows] == [("unknown-key", "from-venus.opb")]
    name = rows[0]["file"]
    shown = json.loads(run("quarantine", "show", "--home", home, name, "--json").output)
    assert shown["now"]["signature"] == "unknown-key"
    pair.b.node.state.add_peer("venus", public_key(venus_seed), 0.0)
    assert "verifies now" in run("quarantine", "show", "--home", home, name).output
    out = run("quarantine", "retry", "--home", home, name)
    assert out.exit_code == 0, out.output
    pair.step()
    assert (pair.b_home.received / "venus" / "x.txt").read_bytes() == b"hi"
    assert json.loads(run("quarantine", "ls", "--home", home, "--json").output) == []


def test_quarantine_purge_needs_a_choice_and_removes_files_with_their_reasons(
        pair: Pair) -> None:
    for i in range(3):
        write_still(pair.b_home.inbox / f"junk-{i}", os.urandom(100))
    pair.step()
    home = str(pair.b_home.path)
    rows = json.loads(run("quarantine", "ls", "--home", home, "--json").output)
    assert len(rows) == 3
    assert isinstance(run("quarantine", "purge", "--home", home).exception, ConfigError)
    assert "purged 0" in run("quarantine", "purge", "--home", home, "--older-than", "1d").output
    assert "purged 1" in run("quarantine", "purge", "--home", home, rows[0]["file"]).output
    assert "purged 2" in run("quarantine", "purge", "--home", home, "--all").output
    assert list(pair.b_home.quarantine.iterdir()) == []


def test_status_watch_prints_one_json_object_a_line(pair: Pair) -> None:
    import subprocess

    from .procs import tool

    proc = subprocess.Popen([tool("outpost-node"), "status", "--home", str(pair.a_home.path),
                             "--json", "--watch", "0.2"], stdout=subprocess.PIPE, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(json.loads(line))
        if len(lines) == 3:
            break
    proc.terminate()
    proc.wait(10)
    assert [x["name"] for x in lines] == ["earth"] * 3


def test_json_logs_carry_the_bundle_fields(pair: Pair, tmp_path: Path) -> None:
    """`start --log-format json`: each line an object; an event about a bundle has its id,
    kind and peer as fields (here the formatter the node installs, fed by the sender)."""
    import logging

    from outpost.cli.output import setup_logging

    log_file = tmp_path / "node.log"
    setup_logging("earth", log_file, False, "json")
    try:
        msg = send(pair, 1000)
        pair.run(lambda: pair.a.node.state.message(msg.id).state == "delivered")
    finally:
        logging.getLogger("outpost").handlers.clear()
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    queued = [e for e in events if e["message"].startswith("queued")]
    assert queued and queued[0]["bundle"] == msg.id and queued[0]["kind"] == "file"
    assert queued[0]["peer"] == "mars" and queued[0]["node"] == "earth"
    assert any(e.get("bundle") == msg.id and "delivered" in e["message"] for e in events)


def test_earth_takes_an_outposts_latest_report_by_when_it_was_made(pair: Pair) -> None:
    """Reports that arrive out of order (a lost one resent later): Earth's view of the
    outpost's last apply is the one the outpost made last, not the last to arrive."""
    import time

    from outpost.roles.earth import Earth
    from outpost.store.releases import ReleaseStore

    from .helpers import header

    earth = Earth(pair.a.node, pair.a.sender)
    now = time.time()
    newer = header(src="mars", dst="earth", kind="report", created=now,
                   meta={"event": "applied", "release": "b" * 40})
    older = header(src="mars", dst="earth", kind="report", created=now - 30,
                   meta={"event": "failed", "release": "a" * 40, "reason": "old"})
    earth.on_report(newer, Path("unused"))
    pair.clock.advance(5)
    earth.on_report(older, Path("unused"))  # arrives last
    last = ReleaseStore(pair.a.node.state).last_report("mars", ("applied", "failed"))
    assert last is not None and last["event"] == "applied" and last["release"] == "b" * 40


def test_the_eta_is_what_is_left_at_the_links_bandwidth_plus_a_round_trip(
        tmp_path: Path) -> None:
    pair = Pair(tmp_path, fragment_size="64k", bandwidth="100k")
    msg = send(pair, 400_000)
    [row] = json.loads(run("custody", "ls", "--home", str(pair.a_home.path), "--json").output)
    assert row["id"] == msg.id
    assert row["eta"] == pytest.approx(row["bytes_left"] / 102_400 + 1.0)
    from outpost.report import status_info

    [bundle] = status_info(pair.a_home)["bundles"]
    assert bundle["eta"] == pytest.approx(row["eta"])


def _commands(group: click.Group, path: list[str]) -> list[list[str]]:
    found = [path]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, [*path, name])
        else:
            found.append([*path, name])
    return found


def test_every_command_has_help_with_an_example_and_h_works() -> None:
    for path in _commands(cli, []):
        out = run(*path, "-h")
        assert out.exit_code == 0, (path, out.output)
        assert "Example:" in out.output, f"outpost-node {' '.join(path)} -h has no example"


def test_link_sim_help_has_examples_too() -> None:
    from link.cli import cli as link_cli

    for path in _commands(link_cli, []):
        out = CliRunner().invoke(link_cli, [*path, "-h"])
        assert out.exit_code == 0 and "Example:" in out.output, (path, out.output)
