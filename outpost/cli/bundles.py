"""`outpost-node bundles ls|show`: look into any folder of bundles."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from ..codec import PRIORITY_NAMES, Inspection, Limits, inspect
from ..home import is_home, load_home
from ..store.spool import bundle_files, read_reason
from ..store.state import State
from .output import age, emit_json, size, table


def find_home(start: Path) -> Path | None:
    """The node home a bundle folder belongs to (HOME/inbox, HOME/outbox/peer, ...)."""
    for p in [start, *start.resolve().parents]:
        if is_home(p):
            return p
    return None


def keyring_for(start: Path, home_opt: Path | None) -> dict[str, bytes]:
    home_path = home_opt or find_home(start)
    if home_path is None:
        return {}
    home = load_home(home_path)
    state = State(home.state_db)
    try:
        keys = state.keyring()
    finally:
        state.close()
    keys[home.name] = home.public_key()
    return keys


def describe(ins: Inspection, now: float) -> dict[str, Any]:
    h = ins.header
    q = read_reason(ins.path)
    out: dict[str, Any] = {
        "file": ins.path.name, "size": ins.size, "signature": ins.status,
        "error": ins.error, "error_reason": ins.reason,
        "quarantine_reason": q.reason if q else None,
        "quarantine_error": q.error if q else None,
    }
    if h is not None:
        out.update({
            "id": h.id, "kind": h.kind, "src": h.src, "dst": h.dst,
            "priority": PRIORITY_NAMES.get(h.priority, str(h.priority)),
            "created": h.created, "expires": h.expires, "age": now - h.created,
            "expires_in": h.expires - now, "reply_to": h.reply_to,
            "fragment": None if h.fragment is None else asdict(h.fragment),
            "payload": {"codec": h.payload.codec, "length": h.payload.length,
                        "raw_length": h.payload.raw_length,
                        "sha256": h.payload.sha256.hex()},
            "meta": h.meta,
        })
    return out


@click.group("bundles")
def bundles() -> None:
    """Inspect folders of bundles (inbox, outbox, quarantine, or any copy of them).

    Example: outpost-node bundles ls /srv/earth/outbox/mars
    """


@bundles.command("ls")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--home", type=click.Path(path_type=Path), help="Home whose trusted keys to use "
              "(default: the home DIRECTORY is in).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def ls(directory: Path, home: Path | None, as_json: bool) -> None:
    """List the bundles in DIRECTORY with their signature check.

    Example: outpost-node bundles ls /srv/mars/quarantine --json
    """
    keys, now = keyring_for(directory, home), time.time()
    rows = [describe(inspect(p, keys, Limits()), now) for p in bundle_files(directory)]
    if as_json:
        emit_json(rows)
        return
    table(["ID", "KIND", "SRC→DST", "SIZE", "AGE", "EXPIRES", "FRAG", "SIGNATURE", "REASON"],
          [_row(r) for r in rows])


def _row(r: dict[str, Any]) -> list[str]:
    reason = r["quarantine_reason"] or (r["error_reason"] if r["signature"] == "bad" else "")
    if "id" not in r:
        return [r["file"][:24], "?", "?", size(r["size"]), "", "", "", r["signature"], reason]
    f = r["fragment"]
    return [r["id"][:16], r["kind"], f"{r['src']}→{r['dst']}", size(r["size"]), age(r["age"]),
            age(r["expires_in"]) if r["expires_in"] > 0 else "expired",
            f"{f['index'] + 1}/{f['count']}" if f else "", r["signature"], reason or ""]


@bundles.command("show")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--home", type=click.Path(path_type=Path), help="Home whose trusted keys to use.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def show(file: Path, home: Path | None, as_json: bool) -> None:
    """Show one bundle's header and verify it completely (signature and payload).

    Example: outpost-node bundles show /media/usb/4f1c2e.opb
    """
    keys = keyring_for(file.parent, home)
    r = describe(inspect(file, keys, Limits(), full=True), time.time())
    if as_json:
        emit_json(r)
        return
    for key in ("file", "id", "kind", "src", "dst", "priority", "reply_to"):
        if r.get(key) is not None:
            click.echo(f"{key:>12}: {r[key]}")
    click.echo(f"{'size':>12}: {size(r['size'])}")
    if "created" in r:
        click.echo(f"{'created':>12}: {_when(r['created'])} ({age(r['age'])} ago)")
        click.echo(f"{'expires':>12}: {_when(r['expires'])}")
        p = r["payload"]
        click.echo(f"{'payload':>12}: {p['codec']}, {size(p['length'])} on the wire, "
                   f"{size(p['raw_length'])} raw, sha256 {p['sha256'][:16]}…")
    if r.get("fragment"):
        f = r["fragment"]
        click.echo(f"{'fragment':>12}: {f['index'] + 1} of {f['count']} of {f['parent']} "
                   f"(bytes {f['offset']}+ of {f['total']})")
        if f.get("repair"):
            rep = f["repair"]
            click.echo(f"{'repair':>12}: FEC block {rep['j']} of a group of {rep['k']} data + "
                       f"{rep['m']} repair blocks of {size(rep['block'])} (fragments "
                       f"{rep['first'] + 1}..{rep['first'] + rep['k']})")
    if r.get("meta"):
        click.echo(f"{'meta':>12}: {r['meta']}")
    verdict = "ok (signature and payload verified)" if r["signature"] == "ok" else (
        f"{r['signature']}: {r['error']}")
    click.echo(f"{'verified':>12}: {verdict}")
    if r["quarantine_reason"]:
        click.echo(f"{'quarantined':>12}: {r['quarantine_reason']}: {r['quarantine_error']}")


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
