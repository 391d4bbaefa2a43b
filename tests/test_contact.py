"""The node's own contact plan ([delivery] contact_plan, issue 10): the status shows the
link's window now and the next one, and ETAs count only the time the link is up."""

from __future__ import annotations

import io
import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from outpost.cli.main import cli
from outpost.contact import Schedule, parse_contact_plan
from outpost.errors import ConfigError
from outpost.home import load_home
from outpost.node.context import open_node
from outpost.node.sender import Sender
from outpost.report import status_info

from .helpers import make_pair


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def test_up_time_skips_the_gaps_between_windows() -> None:
    s = Schedule(((0.0, 10.0), (20.0, 30.0)))
    assert s.after_up_time(5, 3) == 8
    assert s.after_up_time(5, 10) == 25  # 5 s in the first window, 5 in the second
    assert s.after_up_time(12, 4) == 24  # waits for the next window
    assert math.isinf(s.after_up_time(5, 100))  # the plan ends first
    repeating = parse_contact_plan("0s +10m\nrepeat 1h").bind(0.0)
    assert repeating.after_up_time(0, 25 * 60) == 2 * 3600 + 5 * 60
    assert Schedule.always_up().after_up_time(7, 3) == 10


def test_a_bad_or_missing_plan_is_a_clear_error(tmp_path: Path) -> None:
    earth, _ = make_pair(tmp_path, contact_plan="plan.txt")
    with pytest.raises(ConfigError, match="cannot read"):
        earth.contact_schedule()
    (earth.path / "plan.txt").write_text("0s\n")
    with pytest.raises(ConfigError, match="line 1"):
        earth.contact_schedule()
    (earth.path / "plan.txt").write_text("0s 10m\n")
    with pytest.raises(ConfigError, match="contact_origin"):
        earth.contact_schedule()
    with pytest.raises(ConfigError, match="contact_origin"):
        make_pair(tmp_path / "other", contact_origin="yesterday")


def test_status_shows_the_window_and_the_eta_waits_for_it(tmp_path: Path) -> None:
    now = time.time()
    earth, _ = make_pair(tmp_path, bandwidth="1k", contact_plan="plan.txt")
    (earth.path / "plan.txt").write_text(f"{iso(now + 100)} {iso(now + 200)}\n"
                                         f"{iso(now + 1000)} +1h\n")
    node = open_node(earth)
    msg = Sender(node).submit("mars", "file", io.BytesIO(b"x" * 50 * 1024),
                              meta={"name": "f"}, codec="none")
    node.state.close()
    info = status_info(load_home(earth.path))
    (peer,) = info["peers"]
    w = peer["window"]
    assert w["up"] is False and w["until"] is None
    assert w["next_start"] == pytest.approx(now + 100, abs=1)
    assert w["next_end"] == pytest.approx(now + 200, abs=1)
    (bundle,) = [b for b in info["bundles"] if b["id"] == msg.id]
    # the wait for the window (100 s), 50 KiB and more at 1 KiB/s, and a round trip (1 s)
    left = bundle["bytes_left"]
    assert left >= 50 * 1024
    assert bundle["eta"] == pytest.approx(100 + left / 1024 + 1, abs=2)
    text = CliRunner().invoke(cli, ["status", "--home", str(earth.path)]).output
    assert "down, up in 9" in text and "for 100" in text, text


def test_a_transfer_longer_than_the_window_finishes_in_the_next(tmp_path: Path) -> None:
    now = time.time()
    earth, _ = make_pair(tmp_path, bandwidth="1k", contact_plan="plan.txt",
                         contact_origin=iso(now))
    (earth.path / "plan.txt").write_text("0s +30s\n300s +1h\n")  # up now, for 30 s
    node = open_node(earth)
    Sender(node).submit("mars", "file", io.BytesIO(b"x" * 60 * 1024), meta={"name": "f"},
                        codec="none")
    node.state.close()
    rows = CliRunner().invoke(cli, ["custody", "ls", "--home", str(earth.path), "--json"])
    (row,) = json.loads(rows.output)
    # 30 s in this window, the rest from 300 s on, then a round trip
    expected = 300 + (row["bytes_left"] / 1024 - 30) + 1
    assert row["eta"] == pytest.approx(expected, abs=2)
    info = status_info(load_home(earth.path))
    assert info["peers"][0]["window"]["up"] is True
    assert info["peers"][0]["window"]["until"] == pytest.approx(now + 30, abs=1)
