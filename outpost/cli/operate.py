"""`outpost-node custody ...` and `outpost-node quarantine ...`: act on what status shows.

Both work on a running node's home (the state is SQLite in WAL mode, each change one short
transaction) or a stopped one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ..codec import Limits, inspect
from ..errors import ConfigError
from ..home import Home, load_home
from ..node.context import Node, open_node
from ..node.sender import Sender
from ..report import Outlook, message_progress
from ..store.spool import REASON, bundle_files, read_reason
from ..store.state import FAILED, SENDING, Message
from ..units import parse_duration
from .bundles import describe
from .output import age, emit_json, size, table
from .releases import HOME, JSON


@click.group()
def custody() -> None:
    """Messages this node holds until their peer acknowledges them.

    Example: outpost-node custody ls --home /srv/earth
    """


@custody.command("ls")
@HOME
@JSON
def custody_ls(home: Path, as_json: bool) -> None:
    """List messages in custody: how much is acknowledged, what is left, and an ETA.

    Example: outpost-node custody ls --home /srv/earth
    """
    with _opened(home) as node:
        outlook, now = Outlook.of(node), time.time()
        rows = [{**message_progress(m, node.state.units_of(m.id), now, outlook),
                 "state": m.state}
                for m in [*node.state.messages(SENDING), *node.state.messages(FAILED)]]
    if as_json:
        emit_json(rows)
        return
    table(["ID", "KIND", "TO", "SIZE", "ACKED", "LEFT", "ETA", "STATE"],
          [[r["id"][:16], r["kind"], r["peer"], size(r["size"]), f"{r['percent']:.0f}%",
            size(r["bytes_left"]), "?" if r["eta"] is None else age(r["eta"]),
            r["state"] + (f": {r['why']}" if r["why"] else "")] for r in rows])


@custody.command("retry")
@HOME
@click.argument("ids", nargs=-1, required=True)
def custody_retry(home: Path, ids: tuple[str, ...]) -> None:
    """Send the unacknowledged parts of messages again now, without waiting for their timers.

    Example: outpost-node custody retry --home /srv/earth 3f2a9c
    """
    with _opened(home) as node:
        for msg in _messages(node, ids):
            if msg.state != SENDING:
                raise ConfigError(f"{msg.id} is {msg.state}, not in custody any more: send it "
                                  "again with `outpost-node send` or `publish`")
            n = node.state.resend_unacked(msg.id)
            click.echo(f"{msg.id}: {n} unit(s) go out again as the outbox has room")


@custody.command("drop")
@HOME
@click.argument("ids", nargs=-1, required=True)
def custody_drop(home: Path, ids: tuple[str, ...]) -> None:
    """Give up messages for good: their files leave the outbox and custody.

    Example: outpost-node custody drop --home /srv/earth 3f2a9c
    """
    with _opened(home) as node:
        sender = Sender(node)
        for msg in _messages(node, ids):
            if msg.state == SENDING:
                sender.fail(msg, "dropped by hand (outpost-node custody drop)")
            click.echo(f"{msg.id}: dropped")


@contextmanager
def _opened(home: Path) -> Iterator[Node]:
    node = open_node(load_home(home))
    try:
        yield node
    finally:
        node.state.close()


def _messages(node: Node, ids: tuple[str, ...]) -> list[Message]:
    """Messages by id or a unique prefix of one."""
    known = node.state.messages()
    out = []
    for prefix in ids:
        found = [m for m in known if m.id.startswith(prefix)]
        if len(found) != 1:
            what = "no message" if not found else f"{len(found)} messages"
            raise ConfigError(f"{what} in custody start with {prefix!r}: see `outpost-node "
                              "custody ls`")
        out.append(found[0])
    return out


@click.group()
def quarantine() -> None:
    """Files this node refused, each with the reason.

    Example: outpost-node quarantine ls --home /srv/mars
    """


@quarantine.command("ls")
@HOME
@JSON
def quarantine_ls(home: Path, as_json: bool) -> None:
    """List refused files, newest last, with why.

    Example: outpost-node quarantine ls --home /srv/mars --json
    """
    rows = [_quarantined(p) for p in bundle_files(load_home(home).quarantine)]
    if as_json:
        emit_json(rows)
        return
    table(["FILE", "SIZE", "AGE", "REASON", "ERROR"],
          [[r["file"], size(r["size"]), age(r["age"]) if r["age"] is not None else "?",
            r["reason"] or "?", (r["error"] or "")[:80]] for r in rows])


def _quarantined(path: Path) -> dict[str, Any]:
    q = read_reason(path)
    return {"file": path.name, "size": path.lstat().st_size,
            "reason": q.reason if q else None, "error": q.error if q else None,
            "at": q.at if q else None, "age": time.time() - q.at if q else None,
            "original": q.original if q else None}


@quarantine.command("show")
@HOME
@click.argument("name")
@JSON
def quarantine_show(home: Path, name: str, as_json: bool) -> None:
    """Show why FILE was refused, and check it again with the keys trusted now.

    Example: outpost-node quarantine show --home /srv/mars 01764...-bundle.opb
    """
    path = _in_quarantine(load_home(home), name)
    with _opened(home) as node:
        keys = node.state.keyring()
    now_check = describe(inspect(path, keys, Limits(), full=True), time.time())
    info = {**_quarantined(path), "now": now_check}
    if as_json:
        emit_json(info)
        return
    click.echo(f"{info['file']}: {size(info['size'])}, refused as {info['reason']}: "
               f"{info['error']}")
    verdict = "verifies now" if now_check["signature"] == "ok" else (
        f"still bad: {now_check['error']}")
    click.echo(f"checked again with the keys trusted now: {verdict}")


@quarantine.command("retry")
@HOME
@click.argument("names", nargs=-1, required=True)
def quarantine_retry(home: Path, names: tuple[str, ...]) -> None:
    """Put refused files back in the inbox to be examined again (after trusting a key).

    A file still bad is quarantined again, with the reason of the new look.

    Example: outpost-node quarantine retry --home /srv/mars 01764...-bundle.opb
    """
    h = load_home(home)
    for name in names:
        path = _in_quarantine(h, name)
        q = read_reason(path)
        target = h.inbox / (q.original if q else name)
        if target.exists():
            target = h.inbox / f"retry-{name}"
        os.replace(path, target)
        path.with_name(path.name + REASON).unlink(missing_ok=True)
        click.echo(f"{name}: back in the inbox as {target.name}")


@quarantine.command("purge")
@HOME
@click.option("--older-than", metavar="DURATION", help="Only files refused this long ago "
              "or more (e.g. 7d).")
@click.option("--all", "everything", is_flag=True, help="Every file, whatever its age.")
@click.argument("names", nargs=-1)
def quarantine_purge(home: Path, older_than: str | None, everything: bool,
                     names: tuple[str, ...]) -> None:
    """Delete refused files: those named, those --older-than, or --all.

    Example: outpost-node quarantine purge --home /srv/mars --older-than 30d
    """
    h = load_home(home)
    if not names and older_than is None and not everything:
        raise ConfigError("name the files, or give --older-than DURATION or --all")
    if names:
        files = [_in_quarantine(h, n) for n in names]
    else:
        cutoff = time.time() - (parse_duration(older_than) if older_than else 0)
        files = [p for p in bundle_files(h.quarantine)
                 if everything or ((q := read_reason(p)) is not None and q.at <= cutoff)]
    for path in files:
        path.unlink(missing_ok=True)
        path.with_name(path.name + REASON).unlink(missing_ok=True)
    click.echo(f"purged {len(files)} file(s)")


def _in_quarantine(home: Home, name: str) -> Path:
    path = home.quarantine / Path(name).name
    if not path.is_file() or path.name.endswith(REASON):
        raise ConfigError(f"no file {name!r} in {home.quarantine}: see `outpost-node "
                          "quarantine ls`")
    return path


operate_commands = [custody, quarantine]
