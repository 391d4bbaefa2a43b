"""`outpost-node`: run a node and work with its home."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..codec import BULK, EXPEDITED, NORMAL
from ..errors import BundleError, ConfigError, OutpostError
from ..fsutil import lock_holder, try_lock
from ..home import ROLES, is_home, load_home
from ..node.context import open_node
from ..node.sender import Sender
from ..node.setup import init_home, repair_home, trust_peer
from ..progress import Meter
from ..report import SORTS, sort_outposts, status_info
from ..store.state import Message
from ..units import parse_duration
from .applies import apply_commands, print_apply_status
from .bundles import bundles
from .operate import operate_commands
from .output import age, emit_json, setup_logging, size, table, window_text
from .progress import progress_bars
from .releases import print_release_status, release_commands

HOME = click.option("--home", required=True, type=click.Path(path_type=Path),
                    help="The node's home directory.")
BIG_SEND = 8 * 1024 * 1024  # bars below this would only flash by
PRIORITIES = {"bulk": BULK, "normal": NORMAL, "expedited": EXPEDITED}
DOCKER = click.option("--docker", metavar="URL",
                      help="Outpost: the Docker daemon releases run on (default: DOCKER_HOST), "
                           "e.g. unix:///var/run/docker.sock.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="outpost")
def cli() -> None:
    """Outpost node: keep a remote site's services up to date over a slow, lossy link.

    Example: outpost-node start --home /srv/mars (docs/cli.md has them all)
    """


cli.add_command(bundles)
for _command in [*release_commands, *apply_commands, *operate_commands]:
    cli.add_command(_command)


@cli.command()
@click.option("--role", required=True, type=click.Choice(ROLES))
@HOME
@click.option("--name", help="Node name (default: the role).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="A [delivery] setting for node.toml, e.g. rtt=2s (repeatable).")
@click.option("--template", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Earth: seed the config repo from this folder (default: the example).")
@click.option("--registry", metavar="HOST:PORT", help="Outpost: the registry to import into.")
@DOCKER
@click.option("--registry-tls", is_flag=True,
              help="Outpost: make a CA and a certificate for the registry in HOME/tls/ and "
                   "speak HTTPS to it (docs/registry-tls.md).")
@click.option("--tls-name", "tls_names", multiple=True, metavar="NAME",
              help="A host name or IP the registry certificate also covers, besides "
                   "localhost, 127.0.0.1 and the --registry host (repeatable).")
def init(role: str, home: Path, name: str | None, settings: tuple[str, ...],
         template: Path | None, registry: str | None, docker: str | None,
         registry_tls: bool, tls_names: tuple[str, ...]) -> None:
    """Create a node home: keys, folders, state (and Earth's config repo).

    Example: outpost-node init --role outpost --home /srv/mars --registry 127.0.0.1:5000
    """
    h = init_home(home, role, name, _pairs(settings), template=template, registry=registry,
                  docker=docker, registry_tls=registry_tls, tls_names=tls_names)
    click.echo(f"{h.role} node {h.name!r} at {h.path}; public key {h.pub_file}")
    if registry_tls:
        click.echo(f"registry CA {h.path / 'tls' / 'ca.crt'}: install it where Docker and "
                   "Terraform look (docs/registry-tls.md)")


def _pairs(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


@cli.command()
@HOME
@click.argument("peer", type=click.Path(exists=True, path_type=Path))
def trust(home: Path, peer: Path) -> None:
    """Trust PEER (its home directory or its node.pub file).

    Example: outpost-node trust --home /srv/mars /media/usb/earth.pub
    """
    name = trust_peer(load_home(home), peer)
    click.echo(f"trusting {name}; its bundles go to {home / 'outbox' / name}")


@cli.command()
@click.option("--role", type=click.Choice(ROLES),
              help="earth or outpost: needed only to create the home (node.toml records it).")
@HOME
@click.option("--name", help="Node name, if the home is created now.")
@click.option("--trust", "peers", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Also trust this peer home or key file (repeatable).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="[delivery] setting for a home created now.")
@click.option("--registry", metavar="HOST:PORT",
              help="Outpost: the registry the gateway imports images into.")
@DOCKER
@click.option("--http", "http", metavar="HOST:PORT", default="127.0.0.1:0", show_default=True,
              help="Serve the status page here (port 0: any free port; the URL is written "
                   "to HOME/http.url). Off loopback, requests need HOME/http.token.")
@click.option("--no-http", is_flag=True, help="No status page.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one object a line, with each bundle's id, kind "
                                      "and peer as fields (node.log too).")
@click.option("-v", "--verbose", is_flag=True, help="Log every bundle.")
def start(role: str | None, home: Path, name: str | None, peers: tuple[Path, ...],
          settings: tuple[str, ...], registry: str | None, docker: str | None, http: str,
          no_http: bool, log_format: str, verbose: bool) -> None:
    """Run the node in the foreground until SIGINT or SIGTERM.

    Example: outpost-node start --home /srv/mars --http 127.0.0.1:8470
    """
    from ..node.daemon import Daemon  # the daemon's libraries only where it runs
    from ..roles import make_role
    from ..web import StatusServer

    if role is None:
        if not is_home(home):
            raise ConfigError(f"{home} is not a node home yet: pass --role earth|outpost to "
                              "create it, or `outpost-node init` it first")
        role = load_home(home).role
    h = init_home(home, role, name, _pairs(settings), registry=registry, docker=docker)
    for p in peers:
        trust_peer(h, p)
    setup_logging(h.name, h.path / "node.log", verbose, log_format)
    daemon = Daemon(open_node(h, check=True))
    daemon.attach(make_role(daemon.node, daemon.sender, registry, docker))
    server = None if no_http else StatusServer(h, http)
    if server is not None:
        logging.getLogger("outpost").info("status page at %s", server.start())
    try:
        daemon.run()
    finally:
        if server is not None:
            server.stop()


@cli.command()
@HOME
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def repair(home: Path, as_json: bool) -> None:
    """Rebuild a lost or damaged state.db from the home (peers, messages in custody).

    Run it with the node stopped. A damaged database is kept aside as state.db.damaged-TIME.
    The ids of what was delivered here cannot be rebuilt: a peer's resend of something
    already delivered may be delivered once more.

    Example: outpost-node repair --home /srv/mars
    """
    h = load_home(home)
    lock = try_lock(h.path / "node.lock")
    if lock is None:
        raise ConfigError(f"a node runs on {h.path} (pid {lock_holder(h.path / 'node.lock')}): "
                          "stop it before repairing its state")
    try:
        done = repair_home(h, time.time())
    finally:
        lock.close()
    if as_json:
        emit_json(done)
        return
    click.echo(f"rebuilt {done['state']}" + (f"; the damaged one is {done['kept_aside']}"
                                              if done["kept_aside"] else ""))
    click.echo(f"peers: {', '.join(done['peers']) or 'none (trust them again)'}")
    click.echo(f"messages back in custody, to be sent again: {len(done['custody'])}")
    for line in done["custody_skipped"]:
        click.echo(f"  skipped {line}")


@cli.command()
@HOME
@click.option("--to", "peer", required=True, help="Name of the peer node.")
@click.option("--priority", type=click.Choice(list(PRIORITIES)), default="normal")
@click.option("--lifetime", help="How long the message may take to arrive (e.g. 2h, 7d).")
@click.option("--json", "as_json", is_flag=True)
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
def send(home: Path, peer: str, priority: str, lifetime: str | None, as_json: bool,
         files: tuple[Path, ...]) -> None:
    """Send FILES to a peer, one message each; they land in the peer's
    received/<this node>/ folder.

    Example: outpost-node send --home /srv/earth --to mars notes.txt logs/*.gz

    With --json: one object for one file, a list for several.
    """
    node = open_node(load_home(home))
    sender = Sender(node)
    sent: list[dict[str, Any]] = []
    big = sum(f.stat().st_size for f in files) >= BIG_SEND
    # the outbox is written once, after every file is packed
    with sender.deferring_fill(), progress_bars(show=big and not as_json) as meter:
        for file in files:
            msg = _send_one(sender, file, peer, PRIORITIES[priority],
                            parse_duration(lifetime) if lifetime else None, meter)
            sent.append({"id": msg.id, "file": str(file), "peer": peer, "size": msg.size,
                         "units": msg.units})
    if as_json:
        emit_json(sent[0] if len(sent) == 1 else sent)
        return
    for m in sent:
        click.echo(f"{m['id']}: {Path(m['file']).name} for {peer}, {size(m['size'])} in "
                   f"{m['units']} unit(s)")


def _send_one(sender: Sender, file: Path, peer: str, priority: int, lifetime: float | None,
              meter: Meter) -> Message:
    with open(file, "rb") as src:
        return sender.submit(peer, "file", src, meta={"name": file.name}, priority=priority,
                             lifetime=lifetime,
                             progress=meter(f"packing {file.name}", file.stat().st_size))


@cli.command()
@HOME
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts (with "
              "--watch: one object a line).")
@click.option("--watch", type=float, is_flag=False, flag_value=2.0, default=None,
              metavar="[SECONDS]", help="Show it again every SECONDS (2 if not given) until "
                                        "Ctrl-C.")
@click.option("--sort", type=click.Choice(sorted(SORTS)), default="name", show_default=True,
              help="Earth: order of the outposts (release: behind first; report: newest "
                   "first; heard: silent longest first; backlog: largest first).")
def status(home: Path, as_json: bool, watch: float | None, sort: str) -> None:
    """What the node holds: custody, reassembly, link queues, quarantine; at Earth,
    every outpost with its channel, release, last report, when it was last heard from and
    what waits for it.

    Example: outpost-node status --home /srv/earth --watch --sort backlog
    """
    h = load_home(home)
    while True:
        info = status_info(h)
        if "outposts" in info:
            info["outposts"] = sort_outposts(info["outposts"], sort)
        if as_json:
            if watch:
                click.echo(json.dumps(info, default=str))
            else:
                emit_json(info)
        else:
            if watch:
                click.clear()
            _print_status(info)
            if watch:
                click.echo(f"\nevery {watch:g}s; Ctrl-C to stop")
        if not watch:
            return
        time.sleep(max(watch, 0.1))


def _print_status(info: dict[str, Any]) -> None:
    click.echo(f"{info['role']} node {info['name']} at {info['home']}")
    if info["status_page"]:
        click.echo(f"status page: {info['status_page']}")
    table(["PEER", "RTT", "SAMPLES", "OUTBOX", "CLOCK", "WINDOW"],
          [[p["name"], age(p["srtt"]), p["rtt_samples"], p["outbox_files"],
            p["clock"] or ("ok" if p["clock_offset"] is not None else "-"),
            window_text(p["window"], info["now"])]
           for p in info["peers"]])
    click.echo(f"\nsending ({len(info['sending'])}):")
    table(["ID", "KIND", "TO", "SIZE", "ACKED", "IN FLIGHT", "AGE", "EXPIRES IN"],
          [[m["id"][:16], m["kind"], m["peer"], size(m["size"]), f"{m['acked']}/{m['units']}",
            m["in_flight"], age(m["age"]), age(m["expires_in"])] for m in info["sending"]])
    for m in info["failed"]:
        click.echo(f"  FAILED {m['id'][:16]} {m['kind']} to {m['peer']}: {m['why']}")
    click.echo(f"\nreassembling ({len(info['reassembling'])}):")
    table(["PARENT", "FROM", "KIND", "SIZE", "RECEIVED"],
          [[r["parent"][:16], r["src"], r["kind"], size(r["total"]),
            f"{100 * r['received'] / max(r['total'], 1):.0f}%"] for r in info["reassembling"]])
    click.echo(f"\ninbox: {info['inbox_files']} file(s); delivered ids remembered: "
               f"{info['delivered_seen']}; quarantined: {len(info['quarantine'])}")
    for q in info["quarantine"][-5:]:
        click.echo(f"  {q['file']}: {q['reason']}: {q['error']}")
    print_release_status(info)
    print_apply_status(info)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except BundleError as e:
        click.echo(f"error: bad bundle ({e.reason}): {e}", err=True)
        sys.exit(1)
    except OutpostError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    except OSError as e:  # a full disk, a file that went away: one line, not a traceback
        where = f" ({e.filename})" if e.filename else ""
        click.echo(f"error: {e.strerror or e}{where}", err=True)
        sys.exit(1)

