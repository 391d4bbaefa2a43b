"""link-sim's live view: the line format, the throughput, and what is written to the terminal."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from link import cli as link_cli
from link.live import (
    CLEAR_BELOW,
    CLEAR_LINE,
    LiveLines,
    Throughput,
    direction_line,
    fit,
    terminal_width,
)
from link.sim import EventLog
from link.state import utc_text

from .test_link_cli import make_home

NOW = 1_893_456_000.0
KiB = 1024


def stats(**changes: Any) -> dict[str, Any]:
    """A direction's figures, shaped as Channel.stats_json gives them."""
    doc: dict[str, Any] = {
        "from": "earth",
        "to": "outpost",
        "delivered": {"count": 11, "bytes": 4608 * KiB},
        "dropped": {"count": 1, "bytes": 512 * KiB},
        "duplicated": {"count": 2, "bytes": 10},
        "corrupted": {"count": 3, "bytes": 10},
        "in_flight": 2,
        "in_flight_bytes": 1024 * KiB,
        "queued": 4,
        "up": True,
        "next_change": None,
    }
    return doc | changes


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_direction_line() -> None:
    line = direction_line("a->b", stats(), 12.5 * KiB, NOW)
    assert line == (
        "a->b earth->outpost  up  queued 4  in flight 2 (1.0 MiB)  12.5 KiB/s  "
        "delivered 11 (4.5 MiB)  dropped 1 dup 2 corrupt 3"
    )


def test_direction_line_with_a_plan_and_unknown_names() -> None:
    down = stats(up=False, next_change=utc_text(NOW + 45), **{"from": None, "to": None})
    line = direction_line("b->a", down, 0.0, NOW)
    assert line.startswith("b->a ?->?  DOWN, up in 45.0s  queued 4  in flight 2 (1.0 MiB)  0 B/s")
    up = direction_line("a->b", stats(next_change=utc_text(NOW + 600)), 0.0, NOW)
    assert "  up, down in 10m  " in up


def test_fit_leaves_the_last_column_free() -> None:
    assert fit("x" * 100, 80) == "x" * 79
    assert fit("short", 80) == "short"
    assert fit("abc", 0) == "a"  # a width of 0 (unknown) still shows something


def test_width_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "123")  # what shutil.get_terminal_size falls back to
    assert terminal_width(io.StringIO()) == 123


def test_throughput_over_a_sliding_window() -> None:
    rate = Throughput(window=5.0)
    assert rate.add(0.0, 0) == 0.0
    assert rate.add(1.0, 1000) == 1000.0
    assert rate.add(2.0, 1000) == 500.0
    for t in range(3, 9):
        rate.add(float(t), 1000)  # nothing more delivered
    assert rate.add(9.0, 1000) == 0.0  # the delivery at 1 s left the window
    assert rate.add(10.0, 6000) == 1000.0  # 5000 bytes over the last 5 s


def test_draw_redraw_and_erase() -> None:
    out, clock = io.StringIO(), Clock()
    live = LiveLines(out, clock, width=lambda: 10)
    assert live.due()
    live.draw(["first line, too long", "second"])
    assert out.getvalue() == f"{CLEAR_LINE}first lin\n{CLEAR_LINE}second\n"
    clock.now = 0.2
    assert not live.due()
    clock.now = 0.25
    assert live.due()
    out.truncate(0), out.seek(0)
    live.draw(["one", "two"])
    assert out.getvalue() == f"\x1b[2F{CLEAR_LINE}one\n{CLEAR_LINE}two\n"
    out.truncate(0), out.seek(0)
    live.erase()
    live.erase()  # nothing left to erase
    assert out.getvalue() == f"\x1b[2F{CLEAR_BELOW}"
    assert live.due()  # redrawn at the next tick


def test_fewer_lines_clear_the_rest() -> None:
    out = io.StringIO()
    live = LiveLines(out, Clock(), width=lambda: 80)
    live.draw(["a", "b"])
    live.draw(["a"])
    assert out.getvalue().endswith(f"\x1b[2F{CLEAR_LINE}a\n{CLEAR_BELOW}")
    assert live.shown == 1


def test_a_narrower_terminal_gets_fresh_lines_below() -> None:
    out, width = io.StringIO(), [80]
    live = LiveLines(out, Clock(), width=lambda: width[0])
    live.draw(["x" * 60, "short"])
    width[0] = 70  # wider, or narrower but still longer than every line: redrawn in place
    live.draw(["x" * 60, "short"])
    assert out.getvalue().count("\x1b[2F") == 1
    width[0] = 40  # the 60 columns may now take two rows each, or one: unknown
    out.truncate(0), out.seek(0)
    live.erase()
    live.draw(["x" * 60, "short"])
    assert out.getvalue() == f"{CLEAR_LINE}{'x' * 39}\n{CLEAR_LINE}short\n"


def test_log_lines_go_above_the_live_lines() -> None:
    out = io.StringIO()
    log = EventLog(verbose=False, quiet=False, stream=out)
    live = log.live = LiveLines(out, Clock(), width=lambda: 80)
    live.draw(["a->b", "b->a"])
    log.warn("waiting for node.toml")
    live.draw(["a->b", "b->a"])
    text = out.getvalue()
    logged = text.index("link-sim waiting for node.toml\n")
    assert text.index(f"\x1b[2F{CLEAR_BELOW}") < logged  # erased first
    assert text.rindex(f"{CLEAR_LINE}a->b\n") > logged  # then drawn again below it
    assert "\x1b[2F" not in text[logged:]  # the redraw does not move up over the log line


def run_cli(*args: str) -> str:
    result = CliRunner().invoke(link_cli.cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_live_view_replaces_the_summary_line(tmp_path: Path) -> None:
    a, b = make_home(tmp_path, "a", "b"), make_home(tmp_path, "b", "a")
    common = ["--a", str(a), "--b", str(b), "--until-idle", "--summary-every", "0"]
    common += ["--latency", "0.2"]
    (a / "outbox" / "b" / "1.opb").write_bytes(b"one")
    output = run_cli(*common, "--live")
    assert f"{CLEAR_LINE}a->b a->b  up  queued 0  in flight 1 (3 B)" in output
    assert output.count("a->b offered") == 1  # only in the final summary
    stopped = output.index("link-sim stopped: a->b offered 1")
    assert output.rindex(CLEAR_BELOW) < stopped  # erased, then the final summary
    assert CLEAR_LINE not in output[stopped:]

    (a / "outbox" / "b" / "2.opb").write_bytes(b"two")
    output = run_cli(*common)  # not a terminal: no live view, the summary line instead
    assert "\x1b" not in output
    assert output.count("a->b offered") > 1


@pytest.mark.parametrize(
    ("asked", "tty", "verbose", "quiet", "live"),
    [
        (None, True, False, False, True),
        (None, False, False, False, False),
        (None, True, True, False, False),
        (None, True, False, True, False),
        (True, False, True, False, True),
        (False, True, False, False, False),
    ],
)
def test_live_by_default_only_on_a_quiet_terminal(
    monkeypatch: pytest.MonkeyPatch, asked: bool | None, tty: bool, verbose: bool, quiet: bool,
    live: bool,
) -> None:  # fmt: skip
    monkeypatch.setattr(link_cli.sys.stderr, "isatty", lambda: tty)
    assert link_cli.live_view(asked, verbose, quiet) is live
