"""The apply loop's pure parts: its rules (apply/plan.py), reading missing images from a
command's output (apply/missing.py), the health wait (apply/health.py) with fake probes and
a fake clock, container specs (apply/spec.py), and the apply bookkeeping in SQLite.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from outpost.apply import plan
from outpost.apply.health import wait_healthy
from outpost.apply.missing import missing_images, normalise
from outpost.apply.spec import container_spec
from outpost.errors import ApplyFailed
from outpost.release.config import Health, Service
from outpost.store.applies import (
    APPLIED,
    CHECK,
    COMMIT,
    FAILED,
    PREPARE,
    ROLLBACK,
    RUNNING,
    SWITCH,
    WAITING,
    ApplyRow,
    ApplyStore,
)
from outpost.store.state import State

A, B, C, D = ("a" * 40, "b" * 40, "c" * 40, "d" * 40)
ORDER = {A: 0, B: 1, C: 2, D: 3}  # A is the oldest commit


def row(commit: str = C, state: str = RUNNING, phase: str = PREPARE, **kw: object) -> ApplyRow:
    base = ApplyRow(id=7, commit_id=commit, previous=None, applier="docker", trigger="auto",
                    state=state, phase=phase, attempts=0, started=0.0, updated=0.0,
                    finished=None, service=None, reason="", durations={}, plan={},
                    wanted=[], requests=0, next_request=None, arrived=False, retry_at=None,
                    reported="")
    return replace(base, **kw)  # type: ignore[arg-type]


def step(ready: list[str], tried: set[str] | None = None, current: str | None = None,
         active: ApplyRow | None = None, now: float = 100.0, auto: bool = True) -> plan.Step:
    return plan.next_step(ready, ORDER, tried or set(), current, active, now, plan.Limits(),
                          auto)


# --- which release, when ---

def test_the_newest_ready_release_applies_and_supersedes_the_older_ones() -> None:
    s = step([B, A, C])
    assert (s.action, s.commit, s.supersede) == (plan.START, C, (A, B))


def test_nothing_older_than_the_running_release_applies() -> None:
    assert step([A, B], current=C).action == plan.IDLE
    s = step([A, D], current=C)
    assert (s.action, s.commit, s.supersede) == (plan.START, D, ())


def test_a_release_is_never_taken_up_twice() -> None:
    assert step([C], tried={C}).action == plan.IDLE
    assert step([B, C], tried={C}).action == plan.IDLE, "B is older than the tried C"


def test_a_commit_unknown_to_the_mirror_is_ignored() -> None:
    assert step(["e" * 40]).action == plan.IDLE


def test_manual_mode_starts_nothing_by_itself() -> None:
    assert step([C], auto=False).action == plan.IDLE
    assert step([C], auto=False, active=row(phase=CHECK, attempts=1)).action == plan.RESUME


# --- an apply found half-way ---

@pytest.mark.parametrize(("phase", "attempts", "action"), [
    (PREPARE, 0, plan.RESUME), (PREPARE, 9, plan.RESUME),
    (SWITCH, 1, plan.RESUME), (CHECK, 2, plan.RESUME),
    (SWITCH, 3, plan.DO_ROLLBACK), (CHECK, 3, plan.DO_ROLLBACK),
    (COMMIT, 5, plan.DO_COMMIT), (ROLLBACK, 0, plan.DO_ROLLBACK),
])
def test_an_interrupted_apply_resumes_then_rolls_back(phase: str, attempts: int,
                                                       action: str) -> None:
    s = step([D], active=row(phase=phase, attempts=attempts))
    assert (s.action, s.apply_id) == (action, 7), "a running apply comes before a newer one"


def test_the_rollback_after_too_many_attempts_says_why() -> None:
    s = step([], active=row(phase=CHECK, attempts=3, reason="the node stopped"))
    assert "interrupted 3 times" in s.reason


def test_a_local_fault_waits_for_its_retry_time() -> None:
    s = step([], active=row(phase=SWITCH, attempts=1, retry_at=130.0))
    assert (s.action, s.at) == (plan.WAIT, 130.0)
    assert step([], active=row(phase=SWITCH, attempts=1, retry_at=90.0)).action == plan.RESUME


# --- waiting for images ---

def waiting(**kw: object) -> ApplyRow:
    return row(state=WAITING, phase=SWITCH, wanted=["app/web:2"], **kw)


def test_a_waiting_apply_asks_then_waits_then_retries_when_images_arrive() -> None:
    assert step([C], tried={C}, active=waiting(next_request=100.0)).action == plan.REQUEST
    s = step([C], tried={C}, active=waiting(requests=1, next_request=700.0))
    assert (s.action, s.at) == (plan.WAIT, 700.0)
    s = step([C], tried={C}, active=waiting(requests=1, next_request=700.0, arrived=True))
    assert (s.action, s.apply_id) == (plan.RETRY, 7)


def test_requests_are_bounded() -> None:
    s = step([C], tried={C}, active=waiting(requests=3, next_request=50.0, reason="Earth: no"))
    assert s.action == plan.FAIL
    assert "app/web:2" in s.reason and "3 request(s)" in s.reason and "Earth: no" in s.reason


def test_a_newer_ready_release_supersedes_a_waiting_apply() -> None:
    s = step([C, D], tried={C}, active=waiting(next_request=900.0))
    assert (s.action, s.commit, s.apply_id) == (plan.START, D, 7)
    assert "superseded by" in s.reason


# --- missing images in a command's output ---

OUTPUTS = {
    "docker run": "Unable to find image '127.0.0.1:5000/app/web:1.2' locally\n"
                  "docker: Error response from daemon: manifest for 127.0.0.1:5000/app/web:1.2 "
                  "not found: manifest unknown: manifest unknown.",
    "docker pull, no repository": "Error response from daemon: pull access denied for "
                                  "localhost:5000/app/web, repository does not exist",
    "terraform": "Error: Unable to read Docker image into resource: unable to pull image "
                 "127.0.0.1:5000/app/web:1.2: error pulling image 127.0.0.1:5000/app/web:1.2: "
                 "Error response from daemon: manifest unknown",
    "terraform, find or pull": '  with docker_image.app,\nError: Unable to find or pull image '
                               '"registry.local/app/web:1.2"',
    "no such image": "Error: No such image: app/web:1.2",
}


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_missing_images_are_found_in_a_commands_output(name: str) -> None:
    expected = ["app/web:latest"] if "no repository" in name else ["app/web:1.2"]
    assert missing_images(OUTPUTS[name]) == expected


def test_other_failures_name_no_image() -> None:
    assert missing_images("Error: exit status 1\nconnection refused\nmanifest written") == []


def test_references_are_named_as_earth_names_them() -> None:
    assert normalise("'127.0.0.1:5000/a/b:1'") == "a/b:1"
    assert normalise("registry.example.org/team/app") == "team/app:latest"
    assert normalise("app@sha256:" + "0" * 64) is None, "a digest names no tag to ask for"
    assert normalise("NOT_A_REF!") is None


# --- the health wait ---

class FakeTime(threading.Event):
    """A clock that moves only when the health loop waits."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def wait(self, timeout: float | None = None) -> bool:
        self.now += timeout or 0.0
        return False


class FakeProbe:
    def __init__(self, results: list[bool], failure_after: int | None = None) -> None:
        self.results, self.tries, self.failure_after = results, 0, failure_after

    def failure(self) -> str | None:
        if self.failure_after is not None and self.tries >= self.failure_after:
            return "its container is exited (exit code 1): boom"
        return None

    def check(self, health: Health) -> tuple[bool, str]:
        self.tries += 1
        return (self.results.pop(0) if self.results else False), "not yet"


def test_every_service_must_pass_within_its_budget() -> None:
    t = FakeTime()
    checks = {"web": Health(command=["true"], interval=2.0, retries=5),
              "api": Health(url="http://x/", interval=1.0, retries=3), "cron": None}
    tries = wait_healthy({"web": FakeProbe([False, False, True]), "api": FakeProbe([True]),
                          "cron": FakeProbe([])}, checks, t.clock, t)
    assert tries == {"web": 3, "api": 1, "cron": 0}
    assert t.now == pytest.approx(1004.0), "web passed on its third try, 2 s apart"


def test_a_check_that_never_passes_names_the_service_and_its_last_words() -> None:
    t = FakeTime()
    with pytest.raises(ApplyFailed) as info:
        wait_healthy({"web": FakeProbe([])}, {"web": Health(command=["x"], retries=3)},
                     t.clock, t)
    assert info.value.service == "web" and "3 times" in str(info.value)
    assert "not yet" in str(info.value)


def test_a_container_that_exits_fails_at_once() -> None:
    t = FakeTime()
    with pytest.raises(ApplyFailed, match="exit code 1"):
        wait_healthy({"web": FakeProbe([False] * 9, failure_after=1)},
                     {"web": Health(command=["x"], retries=10)}, t.clock, t)
    assert t.now < 1010.0


def test_the_wait_ends_when_the_node_stops() -> None:
    from outpost.apply.context import Stopping

    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopping):
        wait_healthy({"web": FakeProbe([False])}, {"web": Health(command=["x"], retries=9)},
                     lambda: 0.0, stop)


# --- container specs ---

def service(**kw: object) -> Service:
    return replace(Service(name="web", image="app/web:1", command=["httpd"],
                           env={"B": "2", "A": "1"}, ports=["8080"]), **kw)  # type: ignore


def test_a_spec_changes_with_what_decides_the_container_and_not_the_health_check() -> None:
    base = container_spec(service(), "r:5000/app/web@sha256:1", "sha256:i", "site1")
    same = container_spec(service(env={"A": "1", "B": "2"},
                                  health=Health(command=["true"])),
                          "r:5000/app/web@sha256:1", "sha256:i", "site1")
    assert same["hash"] == base["hash"] and same["name"] == base["name"]
    for changed in (service(env={"A": "1"}), service(command=["sh"]), service(ports=[]),
                    service(init=False)):
        assert container_spec(changed, "r:5000/app/web@sha256:1", "sha256:i",
                              "site1")["hash"] != base["hash"]
    assert container_spec(service(), "r:5000/app/web@sha256:2", "sha256:i",
                          "site1")["hash"] != base["hash"]
    assert container_spec(service(), "r:5000/app/web@sha256:1", "sha256:i",
                          "site2")["name"] != base["name"], "two sites on one daemon"


# --- the bookkeeping ---

def test_an_applied_apply_becomes_the_running_release_and_is_reported_once(
        tmp_path: Path) -> None:
    store = ApplyStore(State(tmp_path / "state.db"))
    first = store.start(A, None, "docker", "auto", 1.0)
    assert store.active() == first and store.current() is None
    store.finish(first.id, APPLIED, 2.0, durations={"total": 1.0})
    assert store.current() is not None and store.current().commit == A  # type: ignore
    assert [r.id for r in store.unreported()] == [first.id]
    store.mark_reported(first.id, APPLIED)
    assert store.unreported() == []
    second = store.start(B, A, "docker", "auto", 3.0)
    store.finish(second.id, FAILED, 4.0, reason="boom", service="web")
    assert store.current().commit == A  # type: ignore[union-attr]
    assert store.tried() == {A, B} and store.applied_commits() == {A}


def test_new_wanted_images_are_asked_for_at_once(tmp_path: Path) -> None:
    store = ApplyStore(State(tmp_path / "state.db"))
    r = store.start(A, None, "command", "auto", 1.0)
    store.wait_for(r.id, ["x:1"], 10.0, "missing")
    assert store.get(r.id).next_request == 10.0
    store.update(r.id, 11.0, requests=1, next_request=600.0)
    store.wait_for(r.id, ["x:1"], 20.0, "missing")
    assert store.get(r.id).next_request == 600.0, "asked already: wait for the answer"
    store.wait_for(r.id, ["x:1", "y:1"], 30.0, "missing")
    assert store.get(r.id).next_request == 30.0, "y:1 was never asked for"
    assert not store.images_arrived(["z:1"], 31.0)
    assert store.images_arrived(["y:1"], 32.0) and store.get(r.id).arrived
