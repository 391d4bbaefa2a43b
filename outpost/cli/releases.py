"""`outpost-node publish | sync | export | import`: releases over the bus (docs/releases.md)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

from ..codec import MAGIC
from ..errors import ConfigError
from ..fsutil import atomic_writer
from ..home import load_home, role_phrase
from ..node.context import Node, open_node
from ..node.sender import Sender
from ..progress import Meter, MeteredReader
from .output import age, emit_json, size, table
from .progress import progress_bars

HOME = click.option("--home", required=True, type=click.Path(path_type=Path),
                    help="The node's home directory.")
JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def node_of_role(home: Path, role: str) -> Node:
    h = load_home(home)
    if h.role != role:
        raise ConfigError(f"{h.path} is {role_phrase(h.role)} home; this command needs "
                          f"{role_phrase(role)} home")
    return open_node(h)


@click.command()
@HOME
@click.option("--to", "peers", multiple=True, help="This outpost, now (repeatable).")
@click.option("--group", "groups", multiple=True,
              help="The outposts of this [[outposts]] group, now (repeatable).")
@click.option("--channel", "channels", multiple=True,
              help="The outposts of this channel, now: sends a rollout on by hand "
                   "(repeatable).")
@JSON
def publish(home: Path, peers: tuple[str, ...], groups: tuple[str, ...],
            channels: tuple[str, ...], as_json: bool) -> None:
    """Send the release at the head of the config repo to the outposts.

    Without --to, --group or --channel it is a rollout through [earth] channels: the
    first channel's outposts now, each next channel's once every outpost before it
    reported the release applied (docs/releases.md). Each outpost gets only what it lacks.

    Example: outpost-node publish --home /srv/earth --to mars
    """
    from ..roles.earth import Earth

    node = node_of_role(home, "earth")
    with progress_bars(show=not as_json) as meter:
        results = Earth(node, Sender(node), meter).publish(
            list(peers) or None, groups=groups, channels=channels)
    _print_sent([r.to_json() for r in results], as_json)
    stages = [(c, m) for c, m in node.home.fleet.stages(node.peers()) if m]
    if not (as_json or peers or groups or channels) and len(stages) > 1:
        later = "; ".join(f"{c} ({len(m)})" for c, m in stages[1:])
        click.echo(f"rollout: {stages[0][0]} ({len(stages[0][1])}) first; then {later}, "
                   "each once the channel before it applied the release")


@click.command()
@HOME
@click.option("--to", "peer", required=True, help="The outpost the media is for.")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@JSON
def export(home: Path, peer: str, directory: Path, as_json: bool) -> None:
    """Write what would cross the link to DIRECTORY (for removable media) instead.

    Example: outpost-node export --home /srv/earth --to mars /media/usb
    """
    from ..roles.earth import Earth

    node = node_of_role(home, "earth")
    with progress_bars(show=not as_json) as meter:
        sent = Earth(node, Sender(node), meter).publish([peer], via_link=False)
        results = [r.to_json() for r in sent]
        directory.mkdir(parents=True, exist_ok=True)
        for r in results:
            for m in r["messages"]:
                target = directory / f"{m['id']}.opb"
                m["file"] = str(_copy(Path(m["path"]), target, meter, m.pop("start")))
    _print_sent(results, as_json)


def _copy(src: Path, target: Path, meter: Meter, start: int = 0) -> Path:
    """Copy the bundle at `start` in `src` (a custody copy's room before it stays behind)."""
    advance = meter(f"writing {target.name}", src.stat().st_size - start)
    with open(src, "rb") as f, atomic_writer(target) as out:
        f.seek(start)
        shutil.copyfileobj(MeteredReader(f, advance), out, 1024 * 1024)
    return target


def _print_sent(results: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        emit_json(results)
        return
    for r in results:
        if not r["messages"]:
            click.echo(f"{r['peer']}: up to date, nothing to send")
            continue
        click.echo(f"{r['peer']}: {len(r['messages'])} message(s), {size(r['bytes'])}")
        for m in r["messages"]:
            click.echo(f"  {m['id'][:16]}  {m['kind']:<8} {size(m['size']):>10}  {m['what']}")


@click.command()
@HOME
@JSON
def sync(home: Path, as_json: bool) -> None:
    """Tell Earth what this outpost holds; Earth answers with everything it lacks.

    Example: outpost-node sync --home /srv/mars
    """
    from ..roles.outpost import Outpost

    node = node_of_role(home, "outpost")
    role = Outpost(node, Sender(node))
    ids = {peer: role.send_sync(peer) for peer in node.peers()}
    if as_json:
        emit_json(ids)
    else:
        for peer, msg_id in ids.items():
            click.echo(f"sync {msg_id} queued for {peer}")


@click.command("import")
@HOME
@click.option("--registry", metavar="HOST:PORT", help="Registry for a `docker save` archive.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_(home: Path, registry: str | None, file: Path) -> None:
    """Take a bundle, or a plain `docker save` tar, from removable media.

    Example: outpost-node import --home /srv/mars /media/usb/app-v2.tar
    """
    from ..images.archive import stage_archive
    from ..roles.outpost import Outpost

    node = node_of_role(home, "outpost")
    with open(file, "rb") as f:
        is_bundle = f.read(len(MAGIC)) == MAGIC
    with progress_bars() as meter:
        if is_bundle:
            _copy(file, node.home.inbox / file.name, meter)
            click.echo(f"{file.name} is in the inbox; the running node takes it from there")
            return
        role = Outpost(node, Sender(node), registry)
        if role.gateway is None:
            raise ConfigError("no registry: pass --registry HOST:PORT or set [outpost] "
                              "registry")
        with tempfile.TemporaryDirectory(dir=node.home.spool) as tmp:
            for facts, files in stage_archive(file, Path(tmp), meter):
                missing = role.gateway.import_image(facts, files, meter=meter)
                if missing:
                    raise ConfigError(f"{facts.ref}: the archive lacks {len(missing)} "
                                      "layer(s)")
                click.echo(f"imported {facts.ref} ({facts.image_id[:19]})")
    role.check_ready()


release_commands = [publish, export, sync, import_]


def _outpost_row(o: dict[str, Any]) -> list[Any]:
    config = (o["commit"] or "none")[:12] + (" (behind)" if o["behind"] else "")
    last = o["last_report"]
    report = f"{last['event']} {(last['release'] or '')[:12]}" if last else "-"
    heard = "never" if o["heard_ago"] is None else f"{age(o['heard_ago'])} ago"
    backlog = f"{o['backlog_messages']} msg, {size(o['backlog_bytes'])}" \
        if o["backlog_messages"] else "-"
    return [o["peer"], o["channel"], config, (o["running"] or "-")[:12], report, heard,
            backlog]


def print_release_status(info: dict[str, Any]) -> None:
    if "outposts" in info:
        click.echo(f"\nconfig repo head: {(info['config_head'] or 'none')[:12]}")
        table(["OUTPOST", "CHANNEL", "CONFIG", "RUNNING", "LAST REPORT", "HEARD", "BACKLOG"],
              [_outpost_row(o) for o in info["outposts"]])
        for r in info["rollouts"][:3]:
            note = f": {r['note']}" if r["note"] else ""
            click.echo(f"  rollout of {r['commit_id'][:12]}: {r['state']} at {r['channel']}"
                       f"{note}")
        for r in info["reports"][:5]:
            click.echo(f"  report from {r['peer']}: {r['event']} {(r['release'] or '')[:12]}")
    elif "releases" in info:
        click.echo(f"\nconfig mirror head: {(info['mirror_head'] or 'none')[:12]}; "
                   f"layers held: {info['layers_held']}")
        table(["RELEASE", "STATE", "NOTE"],
              [[r["commit_id"][:12], r["state"], r["note"]] for r in info["releases"]])
        for i in info["images"]:
            click.echo(f"  image {i['ref']} {i['image_id'][:19]}")

