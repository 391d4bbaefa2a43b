"""The I/O loop of link-sim: poll both outboxes, take files, deliver them when due.

Discovery is plain polling every `poll` seconds (20 ms by default) rather than
inotify/watchdog: a simulator must not miss a file, and polling cannot lose events (no queue
overflow, no rename pairs to match, no watch to re-arm when a home or an outbox folder
appears late). A poll only stat()s each outbox, and scans it when its stamp changed: a scan
opens the folder, which wakes the nodes' own watchers (see OutboxStamp).

All decisions come from `model.Direction`; all persistence from `state.Lane`. This module
only glues them to the clock, the directories, the stats file and the log.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from outpost.contact import Schedule
from outpost.fsutil import atomic_write_bytes, is_transient_name
from outpost.units import format_duration, format_size

from .live import LiveLines, Throughput, direction_line
from .model import Direction, Transfer, direction_rng
from .profiles import LinkConfig
from .state import Item, Lane, LostPayload, StateDir, utc_text

POLL = 0.02
STATS_EVERY = 0.5  # the stats file is rewritten at least this often while running
SUMMARY_EVERY = 10.0
# While the link cannot take a file, the outbox is only looked at this often (for the
# "queued" figure): a long backlog behind a slow link is not re-sorted every poll.
RESCAN_WHILE_BUSY = 0.5
# A folder's timestamps have a granularity (a kernel tick; 2 s on FAT): a name added in the
# same tick as the scan that saw the stamp leaves the stamp as it was. So a stamp is trusted
# only once a scan began this long after the stamp was first seen.
SETTLE = 2.0
# An outbox whose stamp is trusted is still scanned this often, for filesystems that do not
# keep a folder's timestamps (some FUSE and network mounts): late there, never lost.
RESCAN_ANYWAY = 10.0
A_TO_B = "a->b"
B_TO_A = "b->a"


@dataclass(frozen=True)
class SimOptions:
    home_a: Path
    home_b: Path
    config: LinkConfig
    state_dir: Path
    stats_path: Path | None = None
    until_idle: bool = False
    idle_grace: float = 0.0
    poll: float = POLL
    summary_every: float = SUMMARY_EVERY
    verbose: bool = False
    quiet: bool = False
    live: bool = False  # one line per direction, redrawn in place (a terminal on stderr)


def default_state_dir(home_a: Path, home_b: Path) -> Path:
    """`.link-sim-<A>-<B>` next to HOME_A: on the homes' filesystem, so moves are renames,
    and one per pair of homes, so several link-sims can share a parent folder."""
    a, b = home_a.resolve(), home_b.resolve()
    return a.parent / f".link-sim-{a.name}-{b.name}"


class EventLog:
    """Lines on stderr: events only with -v, notes unless -q, warnings always."""

    def __init__(self, verbose: bool, quiet: bool, stream: TextIO | None = None) -> None:
        self.verbose = verbose
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.live: LiveLines | None = None  # erased before each line, redrawn on the next tick

    def event(self, text: str) -> None:
        if self.verbose:
            self._write(text)

    def note(self, text: str) -> None:
        if not self.quiet or self.verbose:
            self._write(text)

    def warn(self, text: str) -> None:
        """Waits, problems and the final summary: worth a line even with -q."""
        self._write(text)

    def _write(self, text: str) -> None:
        if self.live is not None:
            self.live.erase()
        print(f"{utc_text(time.time())} link-sim {text}", file=self.stream, flush=True)


@dataclass
class Counter:
    count: int = 0
    bytes: int = 0

    def add(self, size: int) -> None:
        self.count += 1
        self.bytes += size

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "bytes": self.bytes}


@dataclass
class DirectionStats:
    offered: Counter = field(default_factory=Counter)
    delivered: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    duplicated: Counter = field(default_factory=Counter)
    corrupted: Counter = field(default_factory=Counter)
    held: Counter = field(default_factory=Counter)
    recovered: int = 0


class Endpoint:
    """One node home; its name is read from node.toml once it exists."""

    def __init__(self, label: str, home: Path, log: EventLog) -> None:
        self.label = label
        self.home = home
        self.log = log
        self.name: str | None = None
        self._complaint: str | None = None

    def ready(self) -> bool:
        if self.name is None:
            self.name = self._read_name()
        return self.name is not None

    def _read_name(self) -> str | None:
        toml = self.home / "node.toml"
        try:
            data = tomllib.loads(toml.read_text())
        except FileNotFoundError:
            self._wait(f"waiting for {toml} (node {self.label})")
            return None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            self._wait(f"waiting for a readable {toml}: {e}")
            return None
        name = data.get("name")
        if not isinstance(name, str) or not name or "/" in name or is_transient_name(name):
            self._wait(f"waiting for a valid name in {toml} (got {name!r})")
            return None
        self.log.note(f"node {self.label} is {name!r} ({self.home})")
        return name

    def _wait(self, complaint: str) -> None:
        if complaint != self._complaint:  # say it once, not every poll
            self.log.warn(complaint)
            self._complaint = complaint


Stamp = tuple[int, int, int, int]  # st_dev, st_ino, st_mtime_ns, st_ctime_ns


class OutboxStamp:
    """Says whether an outbox may have changed since it was last scanned, without opening it.

    A scan opens and closes the folder, and each open and close is an inotify event
    (IN_OPEN, IN_CLOSE_NOWRITE) for every watch on the folder and on its parent. A node
    watches its whole outbox with watchdog, which asks for both, so scanning both outboxes
    every poll kept two idle nodes' watcher threads awake (about 2 % CPU each). stat() makes
    no event, and adding, removing or renaming a name in a folder updates its mtime and ctime
    (ctime cannot be set back by utime), so an unchanged outbox is only stat'ed.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._stamp: Stamp | None = None
        self._first_seen = 0.0  # when the current stamp was first seen
        self._trusted: Stamp | None = None  # a stamp a scan saw everything under
        self._scanned_at = -math.inf

    def must_scan(self, outbox: Path) -> bool:
        try:
            st = os.stat(outbox)
        except FileNotFoundError:
            self._stamp = None
            return True  # the scan says what it waits for
        stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        now = self.clock()
        if stamp != self._stamp:
            self._stamp, self._first_seen = stamp, now
        return stamp != self._trusted or now - self._scanned_at >= RESCAN_ANYWAY

    def scanned(self, started: float) -> None:
        """A scan that began at `started` (this clock, after must_scan) went through."""
        self._scanned_at = started
        if self._stamp is not None and started - self._first_seen >= SETTLE:
            self._trusted = self._stamp


class Channel:
    """One direction of the link in the real world: an outbox, a lane, an inbox."""

    def __init__(
        self, label: str, src: Endpoint, dst: Endpoint, model: Direction, lane: Lane, log: EventLog
    ) -> None:
        self.label = label
        self.src = src
        self.dst = dst
        self.model = model
        self.lane = lane
        self.log = log
        self.has_plan = False
        self.flight: list[Item] = []
        self.stats = DirectionStats()
        self.queued = 0  # files left waiting in the outbox at the last scan
        self._backlog_at: float | None = None  # last scan time, if files were left waiting
        self._scanned_at = -math.inf
        self._outbox: Path | None = None
        self._stamp = OutboxStamp()
        self._was_up: bool | None = None
        self._complaint: str | None = None

    # -- the loop's entry points ----------------------------------------------------------

    def recover(self, now: float) -> None:
        """Pick up what a previous run left in the lane."""
        self.lane.prepare()
        flight, undecided, notes = self.lane.recover()
        for note in notes:
            self.log.warn(f"{self.label} {note}")
        for item in flight:
            self.model.occupy(item.tx_end)  # a file still serialising keeps the link busy
        self.flight = flight
        for item in undecided:  # taken just before a crash: decide now, as if taken now
            self._decide(item, self.model.offer(item.size, now), now)
        self.stats.recovered = len(flight)  # re-decided files count as offered instead
        if flight or undecided:
            self.log.note(
                f"{self.label} recovered {len(flight) + len(undecided)} file(s) in flight"
            )

    def step(self, now: float) -> None:
        """One poll: report window changes, deliver what is due, take what the link can."""
        self._watch_window(now)
        self._deliver_due(now)
        if not (self.src.ready() and self.dst.ready()):
            return
        try:
            self._take(now)
        except OSError as e:  # a full disk, a permission: say so, keep running, retry
            self._complain(f"{self.label} cannot take from {self.outbox()}: {e}; retrying")

    def idle(self, now: float) -> bool:
        """Nothing in flight, and nothing waiting that could ever be sent."""
        if self.flight:
            return False
        return self.queued == 0 or math.isinf(self.model.free_at(now))

    def next_delivery(self) -> float:
        return min((item.deliver_at for item in self.flight), default=math.inf)

    # -- taking ---------------------------------------------------------------------------

    def outbox(self) -> Path:
        if self._outbox is None:  # built once: this runs every poll
            assert self.dst.name is not None
            self._outbox = self.src.home / "outbox" / self.dst.name
        return self._outbox

    def _take(self, now: float) -> None:
        can_take = self.model.can_take(now)
        if not can_take and now - self._scanned_at < RESCAN_WHILE_BUSY:
            return
        outbox = self.outbox()
        # Files left waiting at the last scan need one as soon as the link can take them.
        if not self._stamp.must_scan(outbox) and not (can_take and self.queued):
            return
        scan_began = self._stamp.clock()
        names = self._scan(outbox)
        self._scanned_at = now
        # A file that was already waiting when the link became free started then, not at
        # this poll: the link's throughput does not depend on the polling period.
        start = self._backlog_at if self._backlog_at is not None else now
        taken = 0
        while taken < len(names) and self.model.can_take(now):
            self._take_one(outbox / names[taken], now, start)
            taken += 1
        self.queued = len(names) - taken
        self._backlog_at = now if self.queued else None
        self._stamp.scanned(scan_began)  # not before: a failed take is retried next poll

    def _scan(self, outbox: Path) -> list[str]:
        try:
            with os.scandir(outbox) as entries:
                names = [
                    e.name
                    for e in entries
                    if not is_transient_name(e.name) and e.is_file(follow_symlinks=False)
                ]
        except FileNotFoundError:
            self._complain(f"{self.label} waiting for {outbox}")
            return []
        return sorted(names)  # names sort by priority then age: most urgent first

    def _take_one(self, path: Path, now: float, start: float) -> None:
        assert self.src.name is not None and self.dst.name is not None
        inbox = self.dst.home / "inbox"
        item = self.lane.begin_take(path, self.label, self.src.name, self.dst.name, inbox)
        if item is None:
            return  # gone before we took it: the node acked or expired it
        transfer = self.model.offer(item.size, now, start)
        self._decide(item, transfer, now)

    def _decide(self, item: Item, transfer: Transfer, now: float) -> None:
        copies = self.lane.commit(item, transfer)
        self.flight.extend(copies)
        self.stats.offered.add(item.size)
        ser = transfer.tx_end - transfer.tx_start
        self.log.event(
            f"{self.label} taken {item.name} ({format_size(item.size)}), "
            f"serialising {format_duration(ser)}"
        )
        if transfer.interrupted_at is not None:
            self.stats.held.add(item.size)
            self.log.event(
                f"{self.label} held {item.name}: the window closes at "
                f"{utc_text(transfer.interrupted_at)}, restarting at {utc_text(transfer.tx_start)}"
            )
        if transfer.dropped is not None:
            self.stats.dropped.add(item.size)
            self.log.event(f"{self.label} dropped {item.name} ({transfer.dropped})")
            return
        for copy in copies:
            self.log.event(
                f"{self.label} in flight {item.name}: arrives in "
                f"{format_duration(copy.deliver_at - now)}{_traits(copy)}"
            )

    # -- delivering -----------------------------------------------------------------------

    def _deliver_due(self, now: float) -> None:
        due = sorted(
            (item for item in self.flight if item.deliver_at <= now),
            key=lambda item: (item.deliver_at, item.seq),
        )
        for item in due:
            try:
                final = self.lane.deliver(item)
            except LostPayload as e:  # someone deleted it from the state dir: the link lost it
                self.log.warn(f"{self.label} {e}")
                self.flight.remove(item)
                continue
            except OSError as e:  # e.g. the target home is gone: keep the file, retry
                self._complain(f"{self.label} cannot deliver to {item.inbox}: {e}; retrying")
                continue
            self.flight.remove(item)
            self._count_delivery(item, final, now)

    def _count_delivery(self, item: Item, final: Path, now: float) -> None:
        self.stats.delivered.add(item.size)
        late = now - item.deliver_at
        lateness = f", {format_duration(late)} late" if late >= 0.1 else ""
        if item.corrupt:
            self.stats.corrupted.add(item.size)
            self.log.event(f"{self.label} corrupted {final.name}: {len(item.corrupt)} byte(s)")
        if item.duplicate:
            self.stats.duplicated.add(item.size)
            self.log.event(f"{self.label} duplicated {item.name} as {final}{lateness}")
        else:
            self.log.event(f"{self.label} delivered {item.name} to {final}{lateness}")

    # -- reporting ------------------------------------------------------------------------

    def _watch_window(self, now: float) -> None:
        if not self.has_plan:
            return
        up = self.model.is_up(now)
        if up == self._was_up:
            return
        change = self.model.schedule.next_change(now)
        until = "for ever" if math.isinf(change) else utc_text(change)
        if up:
            self.log.event(f"{self.label} window up (until {until})")
        else:
            self.log.event(f"{self.label} window down (next up {until})")
        self._was_up = up

    def _complain(self, complaint: str) -> None:
        if complaint != self._complaint:  # once per distinct problem, not once per poll
            self.log.warn(complaint)
            self._complaint = complaint

    def stats_json(self, now: float) -> dict[str, Any]:
        s = self.stats
        change = self.model.schedule.next_change(now)
        return {
            "from": self.src.name,
            "to": self.dst.name,
            "from_home": str(self.src.home),
            "to_home": str(self.dst.home),
            "offered": s.offered.to_json(),
            "delivered": s.delivered.to_json(),
            "dropped": s.dropped.to_json(),
            "duplicated": s.duplicated.to_json(),
            "corrupted": s.corrupted.to_json(),
            "held": s.held.to_json(),
            "recovered": s.recovered,
            "in_flight": len(self.flight),
            "in_flight_bytes": sum(item.size for item in self.flight),
            "queued": self.queued,
            "up": self.model.is_up(now),
            "busy": self.model.busy_until > now,
            "next_change": None if math.isinf(change) else utc_text(change),
        }

    def summary(self) -> str:
        s = self.stats
        return (
            f"{self.label} offered {s.offered.count} ({format_size(s.offered.bytes)}), "
            f"delivered {s.delivered.count}, dropped {s.dropped.count}, "
            f"duplicated {s.duplicated.count}, corrupted {s.corrupted.count}, "
            f"in flight {len(self.flight)}, queued {self.queued}"
        )


class Simulator:
    def __init__(self, options: SimOptions, log: EventLog) -> None:
        self.options = options
        self.log = log
        self.channels: list[Channel] = []
        self.started = time.time()
        self.origin = self.started
        self._stopping: str | None = None
        self._stats_error: str | None = None
        self.live = LiveLines(log.stream) if options.live else None
        log.live = self.live
        self._rates = {A_TO_B: Throughput(), B_TO_A: Throughput()}

    def stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = signal.Signals(signum).name

    def run(self) -> int:
        state = StateDir(self.options.state_dir)
        state.open()  # StateError if another link-sim holds it
        previous = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._setup(state)
            self._loop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.live is not None:
                self.live.erase()  # the final summary takes their place
            self._final_report()
            state.close()
        return 0

    def _setup(self, state: StateDir) -> None:
        opts, config = self.options, self.options.config
        now = time.time()
        self.origin = state.origin(now)
        schedule = config.plan.bind(self.origin) if config.plan else Schedule.always_up()
        a = Endpoint("A", opts.home_a, self.log)
        b = Endpoint("B", opts.home_b, self.log)
        for label, src, dst in ((A_TO_B, a, b), (B_TO_A, b, a)):
            model = Direction(config.params, schedule, direction_rng(config.seed, label))
            channel = Channel(label, src, dst, model, state.lane(label), self.log)
            channel.has_plan = config.plan is not None
            channel.recover(now)
            self.channels.append(channel)
        self.log.note(f"started: {describe(config)}; state in {opts.state_dir}")

    def _loop(self) -> None:
        opts = self.options
        last_stats = last_summary = -math.inf
        idle_since: float | None = None
        while self._stopping is None:
            now = time.time()
            for channel in self.channels:
                channel.step(now)
            if now - last_stats >= STATS_EVERY:
                self._write_stats(now, running=True)
                last_stats = now
            self._show_live(now)
            if now - last_summary >= opts.summary_every and not opts.verbose:
                if last_summary > -math.inf and self.live is None:  # the live view replaces it
                    self.log.note(self._summary())
                last_summary = now
            if opts.until_idle:
                if all(channel.idle(now) for channel in self.channels):
                    idle_since = now if idle_since is None else idle_since
                    if now - idle_since >= opts.idle_grace:
                        return
                else:
                    idle_since = None
            time.sleep(self._pause(time.time()))

    def _show_live(self, now: float) -> None:
        if self.live is None or not self.live.due():
            return
        lines = []
        for channel in self.channels:
            stats = channel.stats_json(now)
            rate = self._rates[channel.label].add(now, stats["delivered"]["bytes"])
            lines.append(direction_line(channel.label, stats, rate, now))
        self.live.draw(lines)

    def _pause(self, now: float) -> float:
        """Sleep until the next poll, or sooner if a delivery is due before it."""
        due = min(channel.next_delivery() for channel in self.channels)
        return max(0.0, min(self.options.poll, due - now))

    def _final_report(self) -> None:
        now = time.time()
        if self.channels:
            self._write_stats(now, running=False)
            reason = f" on {self._stopping}" if self._stopping else ""
            self.log.warn(f"stopped{reason}: {self._summary()}")

    def _summary(self) -> str:
        return "; ".join(channel.summary() for channel in self.channels)

    def _write_stats(self, now: float, running: bool) -> None:
        path = self.options.stats_path
        if path is None:
            return
        try:
            atomic_write_bytes(path, _json_bytes(self.stats_json(now, running)))
        except OSError as e:
            # the error's own file name is a random temporary one: say it once by its cause
            complaint = f"cannot write stats to {path}: {e.strerror or e}"
            if complaint != self._stats_error:  # once, not twice a second
                self.log.warn(complaint)
            self._stats_error = complaint
        else:
            self._stats_error = None

    def stats_json(self, now: float, running: bool) -> dict[str, Any]:
        config = self.options.config
        p = config.params
        doc: dict[str, Any] = {
            "version": 1,
            "updated": utc_text(now),
            "updated_unix": now,
            "started": utc_text(self.started),
            "running": running,
            "origin": utc_text(self.origin),
            "state_dir": str(self.options.state_dir),
            "profile": config.profile,
            "seed": config.seed,
            "params": {
                "latency": p.latency,
                "jitter": p.jitter,
                "loss": p.loss,
                "duplicate": p.duplicate,
                "corrupt": p.corrupt,
                "reorder": p.reorder,
                "bandwidth": p.bandwidth,
                "contact_plan": config.plan_source,
            },
        }
        for channel in self.channels:
            doc[channel.label] = channel.stats_json(now)
        return doc


def _traits(item: Item) -> str:
    """ " (duplicate, 3 bytes to corrupt)": what the link decided for one copy."""
    traits = []
    if item.duplicate:
        traits.append("duplicate")
    if item.corrupt:
        traits.append(f"{len(item.corrupt)} byte(s) to corrupt")
    if item.reordered:
        traits.append("reordered")
    return f" ({', '.join(traits)})" if traits else ""


def describe(config: LinkConfig) -> str:
    p = config.params
    bandwidth = "unlimited" if p.bandwidth is None else f"{format_size(p.bandwidth)}/s"
    parts = [
        f"latency {format_duration(p.latency)}",
        f"jitter {format_duration(p.jitter)}",
        f"loss {p.loss:g}",
        f"duplicate {p.duplicate:g}",
        f"corrupt {p.corrupt:g}",
        f"reorder {p.reorder:g}",
        f"bandwidth {bandwidth}",
        f"contact plan {config.plan_source or 'none (always up)'}",
    ]
    if config.profile:
        parts.insert(0, f"profile {config.profile}")
    if config.seed is not None:
        parts.append(f"seed {config.seed}")
    return ", ".join(parts)


def _json_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2).encode() + b"\n"
