"""The apply loop inside the outpost node, and applies by hand (`outpost-node apply`).

The node's own thread decides (plan.py) and talks to Earth through the callbacks the role
gives; an apply itself runs in a worker thread with its own connection to the state, so
the bus keeps acknowledging and receiving while containers start or Terraform runs. One
apply runs at a time on a home: the worker and `outpost-node apply` both hold
HOME/apply.lock while they work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import BinaryIO

from ..errors import ConfigError
from ..fsutil import try_lock, waiting_lock
from ..home import OutpostSettings
from ..node.context import Node, log
from ..release import git
from ..store.applies import APPLIED, FAILED, SUPERSEDED, WAITING, ApplyRow, ApplyStore
from ..store.releases import ReleaseStore
from ..store.state import State
from . import plan
from .context import Paths
from .runner import DO_COMMIT, DO_ROLLBACK, RUN, Runner

Report = Callable[[ApplyRow], None]
WORKER_FAULT_RETRY = 60.0


class ApplyLoop:
    def __init__(self, node: Node, settings: OutpostSettings, report: Report,
                 request: Report) -> None:
        self.node, self.settings = node, settings
        self.report, self.request = report, request
        self.store = ApplyStore(node.state)
        self.releases = ReleaseStore(node.state)
        self.paths = Paths(node.home)
        self.limits = plan.Limits(settings.apply_attempts, settings.image_requests)
        self.stopping = threading.Event()
        self.wake: Callable[[], None] = lambda: None
        self._worker: threading.Thread | None = None
        self._started = False

    # called by the node's thread
    def start(self) -> None:
        """The node runs: from now on the loop applies (a CLI's role only records). An
        apply waiting out a local fault is tried at once: a restart may have fixed it."""
        self.store.retry_now(self.node.clock())
        self._started = True

    def poll(self) -> None:
        """Tell Earth what it has not heard yet, then start whatever is due."""
        if not self._started or self.stopping.is_set():
            return
        for row in self.store.unreported():
            self.report(row)
            self.store.mark_reported(row.id, row.state)
        if self.busy():
            return
        now = self.node.clock()
        self._do(self._decide(now), now)

    def busy(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def images_arrived(self, refs: list[str]) -> None:
        if self.store.images_arrived(refs, self.node.clock()):
            self.poll()

    def unavailable(self, refs: list[str], reason: str) -> None:
        """Earth answered that it does not have `refs` either: ask again after a while, or
        fail at once when the requests are used up (plan.py says which)."""
        active, now = self.store.active(), self.node.clock()
        if active is None or active.state != WAITING or not set(refs) & set(active.wanted):
            return
        later = now + self.settings.image_request_retry
        self.store.update(active.id, now, reason=f"Earth: {reason}",
                          next_request=later if active.requests < self.limits.max_requests
                          else now)
        self.poll()

    def stop(self) -> None:
        """The node is stopping: the worker stops at its next step (and carries on at the
        next start)."""
        self.stopping.set()
        if self._worker is not None:
            self._worker.join(self.settings.stop_timeout + 15)

    # deciding
    def _decide(self, now: float) -> plan.Step:
        active = self.store.active()
        tried = self.store.tried()
        ready = self.releases.ready()
        order: dict[str, int] = {}
        if set(ready) - tried:
            history = git.history(self.paths.mirror)
            order = {c: i for i, c in enumerate(reversed(history))}
        current = self.store.current()
        return plan.next_step(ready, order, tried, current.commit if current else None,
                              active, now, self.limits, auto=self.settings.apply == "auto")

    def _do(self, step: plan.Step, now: float) -> None:
        if step.action == plan.START:
            self._start(step, now)
        elif step.action == plan.RESUME:
            self._spawn(step.apply_id, RUN)
        elif step.action == plan.RETRY:
            if self._spawn(step.apply_id, RUN, resume=True):
                log.info("images arrived: applying again (apply #%d)", step.apply_id)
        elif step.action == plan.DO_ROLLBACK:
            self._spawn(step.apply_id, DO_ROLLBACK, reason=step.reason)
        elif step.action == plan.DO_COMMIT:
            self._spawn(step.apply_id, DO_COMMIT)
        elif step.action == plan.REQUEST and step.apply_id is not None:
            row = self.store.get(step.apply_id)
            self.request(row)
            self.store.update(row.id, now, requests=row.requests + 1,
                              next_request=now + self.settings.answer_wait(
                                  self.node.home.settings.rtt))
        elif step.action == plan.FAIL and step.apply_id is not None:
            log.warning("apply #%d failed: %s", step.apply_id, step.reason)
            self.store.finish(step.apply_id, FAILED, now, reason=step.reason)

    def _start(self, step: plan.Step, now: float) -> None:
        assert step.commit is not None
        why = f"superseded by {step.commit[:12]}"
        for old in step.supersede:
            row = self.store.start(old, None, "", "auto", now)
            self.store.finish(row.id, SUPERSEDED, now, reason=why)
        if step.apply_id is not None:
            self.store.finish(step.apply_id, SUPERSEDED, now, reason=why)
        lock = try_lock(self.paths.lock)
        if lock is None:
            return  # `outpost-node apply` is at work; look again at the next tick
        current = self.store.current()
        row = self.store.start(step.commit, current.commit if current else None, "", "auto",
                               now)
        log.info("applying release %s (apply #%d)", row.release, row.id)
        self._run_worker(row.id, RUN, lock)

    def _spawn(self, apply_id: int | None, mode: str, *, resume: bool = False,
               reason: str = "") -> bool:
        if apply_id is None:
            return False
        lock = try_lock(self.paths.lock)
        if lock is None:
            return False
        now = self.node.clock()
        if resume:
            self.store.resume(apply_id, now)
        if reason:
            self.store.update(apply_id, now, reason=reason)
        self._run_worker(apply_id, mode, lock)
        return True

    def _run_worker(self, apply_id: int, mode: str, lock: BinaryIO) -> None:
        self._worker = threading.Thread(target=self._work, args=(apply_id, mode, lock),
                                        name=f"apply-{apply_id}", daemon=True)
        self._worker.start()

    # the worker thread
    def _work(self, apply_id: int, mode: str, lock: BinaryIO) -> None:
        state: State | None = None
        try:
            state = State(self.node.home.state_db)
            runner = Runner(self.node.home, state, self.settings, self.stopping,
                            clock=self.node.clock)
            row = runner.run(apply_id, mode)
            log.info("apply #%d of %s: %s%s", row.id, row.release, row.state,
                     f" ({row.reason})" if row.reason and row.state != APPLIED else "")
        except Exception as e:  # a bug must not end the loop: log it, try again later
            log.exception("apply #%d: unexpected error, trying again in %.0fs: %s", apply_id,
                          WORKER_FAULT_RETRY, e)
            if state is not None:
                ApplyStore(state).update(apply_id, self.node.clock(),
                                         retry_at=self.node.clock() + WORKER_FAULT_RETRY,
                                         reason=f"unexpected error: {e}")
        finally:
            if state is not None:
                state.close()
            lock.close()
            self.wake()


# by hand
def apply_by_hand(node: Node, settings: OutpostSettings, commit: str, trigger: str,
                  echo: Callable[[str], None]) -> ApplyRow:
    """Apply `commit` now, in this process (the node may be running or not)."""
    paths = Paths(node.home)
    with waiting_lock(paths.lock, lambda: echo("another apply is running; waiting for it")):
        store = ApplyStore(node.state)
        now = node.clock()
        active = store.active()
        if active is not None:
            store.finish(active.id, SUPERSEDED, now,
                         reason=f"superseded by a {trigger} apply of {commit[:12]}")
        current = store.current()
        row = store.start(commit, current.commit if current else None, "", trigger, now)
        return Runner(node.home, node.state, settings, echo=echo).run(row.id)


def resolve_release(node: Node, prefix: str | None) -> str:
    """The release a person means: a commit (or its prefix) that reached this outpost, or
    by default the newest ready one."""
    releases = ReleaseStore(node.state)
    known = [str(r["commit_id"]) for r in releases.releases()]
    if prefix:
        found = [c for c in known if c.startswith(prefix.lower())]
        if len(found) != 1:
            what = "no release" if not found else "several releases"
            raise ConfigError(f"{what} of this outpost match {prefix!r}; see "
                              f"`outpost-node status --home {node.home.path}`")
        return found[0]
    ready = set(releases.ready())
    for commit in git.history(Paths(node.home).mirror):
        if commit in ready:
            return commit
    raise ConfigError("no release is ready at this outpost (its config or images have not "
                      "all arrived); see `outpost-node status`")


def previous_release(node: Node) -> str:
    """The release before the running one (`outpost-node rollback`): the newest release
    older than it, in the mirror's history, that was once applied here."""
    store = ApplyStore(node.state)
    current = store.current()
    if current is None:
        raise ConfigError("no release has been applied here yet: nothing to roll back")
    history = git.history(Paths(node.home).mirror)
    applied = store.applied_commits()
    older = history[history.index(current.commit) + 1:] if current.commit in history else []
    for commit in older:
        if commit in applied:
            return commit
    raise ConfigError(f"release {current.commit[:12]} is the oldest applied here: nothing "
                      "ran before it")
