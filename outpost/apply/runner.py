"""One apply, phase by phase, each recorded in the node's state before it runs.

    prepare   read outpost.toml at the commit, find every image in the outpost registry
              (checked against the release's image IDs), pull or check out
    switch    make the release run (docker: converge the containers; command: run it)
    check     health checks
    commit    clean up what the previous release left; the release is now the running one
    rollback  (instead of commit) back to the previous release

What can go wrong, and what becomes of the apply:

    ImagesMissing     waiting-for-images: the loop asks Earth and runs it again
    ApplyFailed       in prepare: failed (nothing was touched); later: rolled back, or
                      failed when there is nothing to go back to
    LocalError        stays in its phase, tried again after a delay (Docker or the registry
                      down is not the release's fault)
    Stopping          stays in its phase; the next start carries on (plan.py)
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import ApplyFailed, ConfigError, GitError, ImagesMissing, LocalError
from ..gateway.registry import image_ref_parts, outpost_registry
from ..home import Home, OutpostSettings
from ..release import git
from ..release.config import parse_release_config
from ..release.manifest import Release
from ..store.applies import (
    APPLIED,
    CHECK,
    COMMIT,
    FAILED,
    PREPARE,
    ROLLBACK,
    ROLLED_BACK,
    SWITCH,
    ApplyRow,
    ApplyStore,
)
from ..store.releases import ReleaseStore
from ..store.state import State
from .command import CommandApplier
from .containers import DockerApplier
from .context import ApplyLog, Job, Paths, Stopping
from .terraform import TerraformApplier

LOCAL_RETRY = (30.0, 600.0)  # first and longest wait after a local fault
RUN, DO_ROLLBACK, DO_COMMIT = "run", "rollback", "commit"


class Applier(Protocol):
    name: str

    def prepare(self, job: Job) -> None: ...
    def switch(self, job: Job) -> None: ...
    def check(self, job: Job) -> None: ...
    def commit(self, job: Job) -> None: ...
    def rollback(self, job: Job) -> bool: ...


def site_id(home: Home) -> str:
    """This node's mark on the containers it runs (its key's digest, not its name)."""
    return hashlib.sha256(home.public_key()).hexdigest()[:12]


class Runner:
    def __init__(self, home: Home, state: State, settings: OutpostSettings,
                 stop: threading.Event | None = None, *,
                 echo: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.home, self.settings, self.clock, self.echo = home, settings, clock, echo
        self.stop = stop or threading.Event()
        self.paths = Paths(home)
        self.store = ApplyStore(state)
        self.releases = ReleaseStore(state)

    def run(self, apply_id: int, mode: str = RUN) -> ApplyRow:
        row = self.store.get(apply_id)
        log = ApplyLog(self.paths.log_file(row.commit_id), self.echo)
        log.line(f"apply #{row.id} of {row.release} ({row.trigger}): {mode}, phase {row.phase}")
        job: Job | None = None
        try:
            job = self._job(row, log)
            applier = self._applier(job)
            if mode == DO_ROLLBACK:
                self._rollback(job, applier, ApplyFailed(row.reason, service=row.service))
            elif mode == DO_COMMIT:
                self._commit(job, applier)
            else:
                self._apply(job, applier)
        except ImagesMissing as e:
            log.line(f"waiting for images: {e}")
            self.store.wait_for(apply_id, e.refs, self.clock(), str(e))
        except ApplyFailed as e:
            self._failed(row, job, log, e)
        except Stopping:
            log.line("the node is stopping: the apply carries on at the next start")
        except LocalError as e:
            self._local_fault(apply_id, log, e)
        finally:
            log.close()
        return self.store.get(apply_id)

    # phases
    def _apply(self, job: Job, applier: Applier) -> None:
        times = job.times
        self._phase(job, PREPARE)
        with _timed(times, "prepare"):
            job.pinned = self._pinned(job.release)
            applier.prepare(job)
        self._phase(job, SWITCH, attempts=job.row.attempts + 1)
        with _timed(times, "switch"):
            applier.switch(job)
        self._phase(job, CHECK)
        with _timed(times, "check"):
            applier.check(job)
        self._commit(job, applier)

    def _commit(self, job: Job, applier: Applier) -> None:
        times = job.times
        self._phase(job, COMMIT)
        with _timed(times, "commit"):
            applier.commit(job)
        times["total"] = sum(times.values())
        self.store.finish(job.row.id, APPLIED, self.clock(), durations=times)
        job.log.line(f"applied {job.row.release} in {times['total']:.1f}s")

    def _failed(self, row: ApplyRow, job: Job | None, log: ApplyLog, e: ApplyFailed) -> None:
        phase = self.store.get(row.id).phase
        if job is None or phase == PREPARE:
            log.line(f"failed before anything changed: {e}")
            self.store.finish(row.id, FAILED, self.clock(), reason=str(e), service=e.service)
            return
        try:
            self._rollback(job, self._applier(job), e)
        except ApplyFailed as again:
            log.line(f"rollback failed too: {again}")
            self.store.finish(row.id, FAILED, self.clock(), service=e.service,
                              reason=f"{e}; rolling back failed too: {again}")

    def _rollback(self, job: Job, applier: Applier, cause: ApplyFailed) -> None:
        self._phase(job, ROLLBACK, reason=str(cause), service=cause.service)
        job.log.line(f"rolling back: {cause}")
        times = job.times
        with _timed(times, "rollback"):
            back = applier.rollback(job)
        times["total"] = sum(times.values())
        state = ROLLED_BACK if back else FAILED
        note = "" if back else " (nothing ran before it to go back to)"
        job.log.line(f"{state}: {cause}{note}")
        self.store.finish(job.row.id, state, self.clock(), reason=f"{cause}{note}",
                          service=cause.service, durations=times)

    def _local_fault(self, apply_id: int, log: ApplyLog, e: LocalError) -> None:
        row = self.store.get(apply_id)
        faults = int(row.plan.get("local_faults", 0)) + 1
        wait = min(LOCAL_RETRY[1], LOCAL_RETRY[0] * 2 ** (faults - 1))
        log.line(f"local fault, trying again in {wait:.0f}s: {e}")
        self.store.update(apply_id, self.clock(), retry_at=self.clock() + wait,
                          reason=f"local fault: {e}", plan={**row.plan, "local_faults": faults})

    def _phase(self, job: Job, phase: str, **fields: object) -> None:
        job.row = self.store.update(job.row.id, self.clock(), phase=phase, retry_at=None,
                                    **fields)

    # what the phases work with
    def _job(self, row: ApplyRow, log: ApplyLog) -> Job:
        release = self._release(row.commit_id)
        try:
            text = git.show(self.paths.mirror, row.commit_id, "outpost.toml")
            config = parse_release_config(text, f"outpost.toml at {row.release}")
        except (ConfigError, GitError) as e:
            raise ApplyFailed(str(e)) from None
        plan = dict(row.plan)
        if "previous_desired" not in plan:
            plan["previous_desired"] = self._previous_desired()
        job = Job(row=row, config=config, release=release, pinned={}, log=log,
                  save=lambda p: self._save_plan(row.id, p), plan=plan)
        if row.applier != config.apply.applier:
            job.row = self.store.update(row.id, self.clock(), applier=config.apply.applier)
        return job

    def _save_plan(self, apply_id: int, plan: dict[str, Any]) -> None:
        self.store.update(apply_id, self.clock(), plan=plan)

    def _release(self, commit: str) -> Release:
        found = self.releases.release(commit)
        if found is None:
            raise ApplyFailed(f"no release of commit {commit[:12]} reached this outpost")
        return Release.from_meta(found["meta"])

    def _previous_desired(self) -> object:
        """What the running release runs: the docker applier goes back to it on failure."""
        current = self.store.current()
        return None if current is None else self.store.get(current.apply_id).plan.get("desired")

    def _pinned(self, release: Release) -> dict[str, str]:
        """Each image by manifest digest, once the registry shows it is the release's."""
        if not release.images:
            return {}
        pinned, missing = {}, []
        with outpost_registry(self.settings, self.home.path) as registry:
            for facts in release.images:
                repo, tag = image_ref_parts(facts.ref)
                found = registry.get_manifest(repo, tag)
                if found is None or _config_digest(found[1]) != facts.image_id:
                    missing.append(facts.ref)
                    continue
                pinned[facts.ref] = f"{self.settings.registry}/{repo}@{found[2]}"
        if missing:
            raise ImagesMissing(missing)
        return pinned

    def _applier(self, job: Job) -> Applier:
        if job.config.apply.applier == "docker":
            return DockerApplier(self.settings, site_id(self.home), self.home.name, self.stop)
        if job.config.apply.applier == "terraform":
            return TerraformApplier(self.settings, self.paths, self.stop)
        return CommandApplier(self.settings, self.paths, self.stop)


def _config_digest(manifest: bytes) -> str | None:
    try:
        return str(json.loads(manifest)["config"]["digest"])
    except (ValueError, KeyError, TypeError):
        return None


class _timed:
    """Adds the seconds its block took to `times[key]`."""

    def __init__(self, times: dict[str, float], key: str) -> None:
        self.times, self.key = times, key

    def __enter__(self) -> None:
        self.start = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.times[self.key] = self.times.get(self.key, 0.0) + time.monotonic() - self.start
