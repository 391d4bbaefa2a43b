"""The `link-sim` command: a simulated link between two Outpost node homes.

    link-sim --a HOME_A --b HOME_B [--profile NAME|FILE] [link flags] [--state DIR]
             [--stats FILE] [--until-idle] [--live/--no-live] [-v|-q]
    link-sim profiles            (or --list-profiles)

See docs/link-sim.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from outpost.contact import parse_plan_duration

from .profiles import BUILTIN, ProfileError, describe, load_profile, resolve
from .sim import EventLog, SimOptions, Simulator, default_state_dir
from .state import StateError

if TYPE_CHECKING:
    _ParamType = click.ParamType[float, Any]
else:  # click < 8.2 has no generic ParamType to subscript at run time
    _ParamType = click.ParamType


class Duration(_ParamType):
    """250ms, 30s, 20m, 1h30m; a bare number is seconds."""

    name = "DURATION"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            seconds = parse_plan_duration(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)
        if seconds < 0:
            self.fail("must not be negative", param, ctx)
        return seconds


DURATION = Duration()
PROBABILITY = click.FloatRange(0.0, 1.0)


def _list_profiles(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        print_profiles()
        ctx.exit(0)


@click.group(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("--a", "home_a", type=click.Path(path_type=Path), help="Home of node A.")
@click.option("--b", "home_b", type=click.Path(path_type=Path), help="Home of node B.")
@click.option("--profile", metavar="NAME|FILE", help="Start from a built-in or TOML profile.")
@click.option("--latency", type=DURATION, help="One-way propagation delay (250ms, 30s, 20m).")
@click.option("--jitter", type=DURATION, help="Random extra delay, uniform in 0..JITTER.")
@click.option("--loss", type=PROBABILITY, metavar="P", help="Probability a file is dropped.")
@click.option("--duplicate", type=PROBABILITY, metavar="P", help="Probability of a 2nd copy.")
@click.option("--corrupt", type=PROBABILITY, metavar="P", help="Probability a copy is corrupted.")
@click.option(
    "--reorder",
    type=PROBABILITY,
    metavar="[P]",
    is_flag=False,
    flag_value=0.25,
    help="Probability a file is held back so later ones overtake it (bare flag: 0.25).",
)
@click.option(
    "--bandwidth",
    metavar="SIZE",
    help="Bytes/s per direction (64k, 2M; powers of 1024). Default or 'unlimited': no limit.",
)
@click.option(
    "--contact-plan",
    metavar="FILE",
    help="Windows when the link is up (docs/link-sim.md); 'none' drops a profile's plan.",
)
@click.option("--seed", type=int, help="Make every random decision reproducible.")
@click.option(
    "--stats",
    "stats_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="JSON counters, rewritten atomically at least every second and on exit.",
)
@click.option(
    "--state",
    "state_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="State directory for in-flight files [default: .link-sim-A-B next to HOME_A].",
)
@click.option(
    "--until-idle",
    is_flag=True,
    help="Exit once both outboxes are empty and nothing is in flight.",
)
@click.option(
    "--idle-grace",
    type=DURATION,
    default="0s",
    show_default=True,
    help="With --until-idle: stay idle this long before exiting.",
)
@click.option(
    "--poll", type=DURATION, default="20ms", show_default=True, help="Outbox poll period."
)
@click.option(
    "--summary-every",
    type=DURATION,
    default="10s",
    show_default=True,
    help="Period of the summary line (without -v, and not with the live view).",
)
@click.option(
    "--live/--no-live",
    default=None,
    help="One line per direction, redrawn 4 times a second in place of the summary line "
    "[default: on when stderr is a terminal and neither -v nor -q is given].",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every event (taken, delivered, ...).")
@click.option("-q", "--quiet", is_flag=True, help="Log only problems and the final summary.")
@click.option(
    "--list-profiles",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_list_profiles,
    help="Print the built-in profiles and exit.",
)
@click.pass_context
def cli(ctx: click.Context, /, **opts: Any) -> None:
    """Simulate a DTN-style link between two Outpost node homes.

    Moves files from HOME_A/outbox/<B's name>/ to HOME_B/inbox/ and from
    HOME_B/outbox/<A's name>/ to HOME_A/inbox/, with latency, jitter, loss, duplication,
    corruption, reordering, a bandwidth limit and contact windows.

    Example: link-sim --a /srv/earth --b /srv/mars --profile mars --latency 60s
    """
    if ctx.invoked_subcommand is not None:
        return
    if opts["home_a"] is None or opts["home_b"] is None:
        raise click.UsageError("--a HOME_A and --b HOME_B are required")
    try:
        config = resolve(
            load_profile(opts["profile"]) if opts["profile"] else None,
            {
                key: opts[key]
                for key in (
                    "latency",
                    "jitter",
                    "loss",
                    "duplicate",
                    "corrupt",
                    "reorder",
                    "bandwidth",
                    "contact_plan",
                    "seed",
                )
            },
        )
    except ProfileError as e:
        raise click.UsageError(str(e)) from None
    home_a, home_b = Path(opts["home_a"]).absolute(), Path(opts["home_b"]).absolute()
    state_dir = opts["state_dir"] or default_state_dir(home_a, home_b)
    options = SimOptions(
        home_a=home_a,
        home_b=home_b,
        config=config,
        state_dir=Path(state_dir).absolute(),
        stats_path=Path(opts["stats_path"]).absolute() if opts["stats_path"] else None,
        until_idle=opts["until_idle"],
        idle_grace=opts["idle_grace"],
        poll=max(0.001, opts["poll"]),
        summary_every=opts["summary_every"],
        verbose=opts["verbose"],
        quiet=opts["quiet"],
        live=live_view(opts["live"], opts["verbose"], opts["quiet"]),
    )
    try:
        Simulator(options, EventLog(options.verbose, options.quiet)).run()
    except StateError as e:
        raise click.ClickException(str(e)) from None


def live_view(asked: bool | None, verbose: bool, quiet: bool) -> bool:
    """--live/--no-live, or by default only where a person watches and no log scrolls."""
    if asked is not None:
        return asked
    return sys.stderr.isatty() and not (verbose or quiet)


@cli.command()
def profiles() -> None:
    """Print the built-in profiles.

    Example: link-sim profiles
    """
    print_profiles()


def print_profiles() -> None:
    rows = [describe(p) for p in BUILTIN.values()]
    columns = ["name", "latency", "jitter", "loss", "duplicate", "corrupt", "reorder"]
    columns += ["bandwidth", "windows"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        click.echo("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())
        click.echo(f"  {row['description']}")


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="link-sim")
