"""The node's loop: file events are hints, a periodic rescan is the truth.

One thread does all the work (SQLite, files); watchdog's thread only posts hints.
A short tick runs while anything is in flight (timers, acks), a slow one otherwise.
"""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Protocol

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from ..codec import Header
from ..delivery import AckBatcher
from ..errors import BundleError, ConfigError, LocalError
from ..fsutil import is_transient_name, lock_holder, try_lock
from ..store.spool import bundle_files, prune_quarantine
from ..store.state import Message
from .context import Node, log
from .handlers import Handler, default_handlers
from .receiver import Receiver
from .sender import Sender, remove_stale_writes

BUSY_TICK = 0.1
HINT_BATCH = 1000  # hints handled per step, in name order; more waiting: a rescan
RESCAN_BATCH = 200  # files a rescan handles before it reads the folder again
HOUSEKEEPING = 60.0
KEEP_FINISHED = 7 * 86400.0
KEEP_TRAFFIC = 7 * 86400.0  # minute counters of the status page's chart
TRAFFIC_EVERY = 5.0
RETRY_LOCAL = 30.0


class _Hints(FileSystemEventHandler):
    """Turns file events into (place, path) hints for the loop; does no work itself.

    A "created" event may come before the writer is done; the receiver leaves a short,
    fresh file for a later rescan rather than calling it truncated.
    """

    def __init__(self, hints: queue.Queue[tuple[str, str]], outbox: Path) -> None:
        self.hints, self.outbox = hints, outbox

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            path = Path(str(raw)) if raw else None
            if path is None or is_transient_name(path.name):
                continue
            if path.parent == self.outbox or self.outbox in path.parents:
                self.hints.put(("outbox", path.parent.name))
            elif event.event_type in ("created", "moved", "closed"):
                self.hints.put(("inbox", str(path)))


class Hooks(Protocol):
    """What a role (Earth, outpost) adds to the bus; see outpost/roles."""

    def handlers(self) -> dict[str, Handler]: ...
    def bind(self, wake: Callable[[], None]) -> None: ...
    def on_start(self) -> None: ...
    def on_stop(self) -> None: ...
    def tick(self, now: float) -> None: ...
    def on_delivered(self, msg: Message) -> None: ...
    def on_refused(self, header: Header, error: BundleError) -> None: ...


class Daemon:
    def __init__(self, node: Node, handlers: dict[str, Handler] | None = None) -> None:
        s = node.home.settings
        self.node = node
        self.sender = Sender(node)
        self.acks = AckBatcher(s.ack_delay, s.ack_batch)
        self.receiver = Receiver(node, self.sender, self.acks, handlers or default_handlers())
        self.hooks: Hooks | None = None
        self.hints: queue.Queue[tuple[str, str]] = queue.Queue()
        self.stopping = threading.Event()
        self._next_rescan = 0.0
        self._next_housekeeping = 0.0
        self._next_local_retry = 0.0
        self._next_traffic = 0.0
        self._deferred: dict[str, float] = {}

    def attach(self, hooks: Hooks) -> None:
        """Give the bus a role: its message kinds, acknowledgement and refusal hooks, timer."""
        self.hooks = hooks
        self.receiver.handlers = hooks.handlers()
        self.receiver.on_refused = hooks.on_refused
        self.sender.on_delivered = hooks.on_delivered
        hooks.bind(self.wake)

    def stop(self, *_args: object) -> None:
        self.stopping.set()
        self.hints.put(("stop", ""))

    def wake(self) -> None:
        """Run the loop's timers now (from any thread: a finished apply, say)."""
        self.hints.put(("wake", ""))

    def run(self) -> None:
        home = self.node.home
        lock = try_lock(home.path / "node.lock")
        if lock is None:
            raise ConfigError(f"a node already runs on {home.path} (pid "
                              f"{lock_holder(home.path / 'node.lock')}); stop it first, or "
                              "use another home")
        try:
            self._run()
        finally:
            lock.close()

    def _run(self) -> None:
        home = self.node.home
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        (home.path / "outbox").mkdir(exist_ok=True)
        observer = Observer()
        hints = _Hints(self.hints, home.path / "outbox")
        observer.schedule(hints, str(home.inbox), recursive=False)
        observer.schedule(hints, str(home.path / "outbox"), recursive=True)
        observer.start()
        log.info("node %s (%s) running in %s; peers: %s", self.node.name, home.role, home.path,
                 ", ".join(self.node.peers()) or "none yet")
        try:
            self.receiver.resume()
            if self.hooks is not None:
                self.hooks.on_start()
            while not self.stopping.is_set():
                self.step()
        finally:
            if self.hooks is not None:
                self.hooks.on_stop()
            self.receiver.commit()
            self.flush_acks(force=True)
            self.count_traffic()
            observer.stop()
            observer.join(timeout=5)
            self.node.state.close()
            log.info("node %s stopped", self.node.name)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        self.stop()

    def step(self) -> None:
        """Wait for a hint or the next timer, then do what is due.

        A local fault (a full disk, a file another process moved) is logged and retried on
        the next step rather than ending the node: the state on disk is the truth.
        """
        try:
            hints = []
            try:
                hints.append(self.hints.get(timeout=max(0.0, self._wake() -
                                                        self.node.clock())))
                for _ in range(HINT_BATCH):
                    hints.append(self.hints.get_nowait())
            except queue.Empty:
                pass
            if self.hints.qsize():
                self._backlog()
            else:
                # Name order is priority order: acks and config before bulk fragments.
                for place, arg in sorted(hints, key=lambda h: (h[0], Path(h[1]).name)):
                    self._hint(place, arg)
            self.receiver.commit()
            self.tick()
        except (OSError, LocalError) as e:
            log.exception("error in the node loop, retrying: %s", e)
            self.stopping.wait(1.0)

    def _wake(self) -> float:
        now = self.node.clock()
        due = [self._next_rescan]
        if self.sender.busy() or self.node.state.reassemblies():
            due.append(now + BUSY_TICK)
        if (ack := self.acks.next_due()) is not None:
            due.append(ack)
        return min(due)

    def _hint(self, place: str, arg: str) -> None:
        if place == "inbox":
            path = Path(arg)
            if path.parent == self.node.home.inbox and path.exists():
                self._handle(path)
        elif place == "outbox":
            self.sender.scan_taken(arg)
            self.sender.fill(arg)

    def tick(self) -> None:
        now = self.node.clock()
        for peer in self.node.peers():
            self.sender.scan_taken(peer)
            self.sender.retry_due(peer)
            self.sender.fill(peer)
        self.sender.expire()
        if self.hooks is not None:
            self.hooks.tick(now)
        self.receiver.commit()
        self.flush_acks()
        if now >= self._next_traffic:
            self.count_traffic()
            self._next_traffic = now + TRAFFIC_EVERY
        if now >= self._next_rescan:
            self.rescan()
            self._next_rescan = now + self.node.home.settings.rescan
        if now >= self._next_housekeeping:
            self.housekeeping()
            self._next_housekeeping = now + HOUSEKEEPING
        if now >= self._next_local_retry:
            self.receiver.retry_complete()
            self._next_local_retry = now + RETRY_LOCAL

    def flush_acks(self, force: bool = False) -> None:
        for peer, ids in self.acks.due(self.node.clock(), force=force):
            self.sender.send_ack(peer, ids)

    def _backlog(self) -> None:
        """More hints than a batch: files arrive faster than they are handled, so the
        queue's order (arrival) would keep a config release behind thousands of fragments
        queued before it. The folder, read in name order, is the truth and the priority."""
        while True:
            try:
                place, arg = self.hints.get_nowait()
            except queue.Empty:
                break
            if place == "outbox":
                self._hint(place, arg)
        self.rescan()

    def rescan(self) -> None:
        """The truth behind the hints: every complete file in the inbox, in name order,
        read again every RESCAN_BATCH files so one that came meanwhile with a higher
        priority goes next."""
        seen: set[str] = set()
        while not self.stopping.is_set():
            batch = [p for p in bundle_files(self.node.home.inbox) if p.name not in seen]
            if not batch:
                break
            for path in batch[:RESCAN_BATCH]:
                if self.stopping.is_set():
                    return
                seen.add(path.name)
                self._handle(path)
                self.flush_acks()
        self.receiver.commit()
        self.flush_acks()

    def _handle(self, path: Path) -> None:
        """Handle one inbox file. One that fails for a local reason (Docker or the registry
        down, a full disk, a name the filesystem refuses) or on a fault of ours waits and is
        tried again, without holding up the others: the scan never stops at one file."""
        now = self.node.clock()
        if self._deferred.get(path.name, 0.0) > now:
            return
        try:
            self.receiver.handle(path)
            self._deferred.pop(path.name, None)
        except (LocalError, OSError) as e:
            self._defer(path, now, e)
        except Exception as e:  # a bug of ours must not stop the node: logged, tried again
            if path.name not in self._deferred:
                log.exception("unexpected error handling %s: %s", path.name, e)
            self._defer(path, now, e)

    def _defer(self, path: Path, now: float, e: Exception) -> None:
        if path.name not in self._deferred:
            log.error("cannot handle %s yet, will retry every %.0fs: %s", path.name,
                      RETRY_LOCAL, e)
        self._deferred[path.name] = now + RETRY_LOCAL

    def count_traffic(self) -> None:
        """The status page's counters, written every few seconds, not per file: each write
        is a transaction, and a transaction an fsync."""
        self.sender.count_traffic()
        self.receiver.count_traffic()

    def housekeeping(self) -> None:
        now, s = self.node.clock(), self.node.home.settings
        self._deferred = {k: t for k, t in self._deferred.items() if t > now}
        self.receiver.expire_reassemblies()
        self.node.state.prune_seen(now - 86400.0 - s.clock_skew)
        self.node.state.prune_messages(now - KEEP_FINISHED)
        self.node.state.prune_traffic(now - KEEP_TRAFFIC)
        for peer in self.node.peers():
            remove_stale_writes(self.node.home.outbox(peer))
        removed = prune_quarantine(self.node.home.quarantine, s.quarantine_max)
        if removed:
            log.info("pruned %d old quarantined file(s)", removed)
