"""`outpost-node apply | rollback`, and what `status` shows of applies (docs/apply.md)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from ..apply.context import Paths
from ..node.context import Node
from ..store.applies import APPLIED
from .output import age, emit_json, table
from .releases import HOME, JSON, node_of_role


@click.command("apply")
@HOME
@click.option("--commit", help="The release to apply: a commit or its prefix (default: the "
                               "newest ready release).")
@JSON
def apply_(home: Path, commit: str | None, as_json: bool) -> None:
    """Apply a release now, by hand: also one that failed or was rolled back.

    Example: outpost-node apply --home /srv/mars --commit 3f2a9c1
    """
    from ..apply.loop import resolve_release

    node = node_of_role(home, "outpost")
    target = resolve_release(node, commit)
    _run(node, target, "manual", as_json)


@click.command()
@HOME
@JSON
def rollback(home: Path, as_json: bool) -> None:
    """Go back one release: apply again the release that ran before the running one.

    Example: outpost-node rollback --home /srv/mars
    """
    from ..apply.loop import previous_release

    node = node_of_role(home, "outpost")
    _run(node, previous_release(node), "rollback", as_json)


def _run(node: Node, commit: str, trigger: str, as_json: bool) -> None:
    from ..apply.loop import apply_by_hand

    def echo(line: str) -> None:
        if not as_json:
            click.echo(f"  {line}", err=True)

    if not as_json:
        click.echo(f"applying {commit[:12]} ({trigger}); log: "
                   f"{Paths(node.home).log_file(commit)}", err=True)
    row = apply_by_hand(node, node.home.outpost, commit, trigger, echo)
    if as_json:
        emit_json(row.to_json())
    else:
        took = f" in {row.durations['total']:.1f}s" if "total" in row.durations else ""
        click.echo(f"{row.release}: {row.state}{took}"
                   + (f": {row.reason}" if row.reason and row.state != APPLIED else ""))
    if row.state != APPLIED:
        sys.exit(1)


apply_commands = [apply_, rollback]


def print_apply_status(info: dict[str, Any]) -> None:
    now = time.time()
    if info.get("role") == "earth":
        rows = []
        for peer, a in info["fleet"].items():
            last = a["last_apply"] or {}
            detail = last.get("detail", {})
            rows.append([peer, (a["running"] or "none")[:12], last.get("event", "-"),
                         (last.get("release") or "")[:12],
                         age(now - last["at"]) + " ago" if last else "-",
                         summary_text(detail.get("changes")) or "-", _why(detail)])
        click.echo("\napplies at the outposts:")
        table(["OUTPOST", "RUNNING", "LAST REPORT", "RELEASE", "WHEN", "CHANGES", "REASON"],
              rows)
        return
    running = info.get("running")
    since = f" since {age(now - running['since'])} ago" if running else ""
    click.echo(f"\nrunning release: {running['commit'][:12] if running else 'none yet'}{since}")
    table(["APPLY", "RELEASE", "STATE", "TRIGGER", "STARTED", "TOOK", "CHANGES", "REASON"],
          [[a["id"], a["commit"][:12], a["state"], a["trigger"],
            age(now - a["started"]) + " ago",
            f"{a['durations']['total']:.1f}s" if "total" in a["durations"] else "-",
            summary_text(a.get("changes")) or "-", _why(a)] for a in info["applies"][:10]])
    waiting = info.get("waiting")
    if waiting:
        click.echo(f"apply #{waiting['apply']} waits for {', '.join(waiting['images'])} "
                   f"(asked Earth {waiting['requests']} time(s))")
    click.echo(f"apply logs: {info['apply_logs']}")


def _why(d: dict[str, Any]) -> str:
    """The reason, which names the failing service, cut to fit a line."""
    reason = str(d.get("reason") or "")
    return reason if len(reason) <= 90 else reason[:87] + "..."


def summary_text(summary: Any) -> str:
    """"+1 ~0 -0" for the terraform applier's apply (or else plan) change summary."""
    if not isinstance(summary, dict):
        return ""
    counts = summary.get("apply") or summary.get("plan")
    if not isinstance(counts, dict):
        return ""
    return f"+{counts.get('add', 0)} ~{counts.get('change', 0)} -{counts.get('remove', 0)}"
