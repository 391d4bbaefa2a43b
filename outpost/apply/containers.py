"""The built-in `docker` applier: runs a release's [[services]] on the outpost's own Docker
daemon, from images in the outpost registry pinned by digest.

Containers carry labels (spec.py): the site (this node's key), the service, the release
that created them and the hash of their spec. The applier only ever lists, stops, starts or
removes containers with this site's label, so it finds its own after a restart and never
touches anything else. Switching a release is a convergence, safe to repeat after a crash:

1. stop every container of ours that the new release does not run as it is (kept, stopped);
2. check the host ports the services about to start listen on are free;
3. start each service's container, reusing a stopped one of the same spec.

Only once every service is healthy are the stopped containers removed (`commit`); if one
is not, `rollback` removes what this release created and starts the previous ones again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from ..errors import ApplyFailed, DockerError, ImagesMissing
from ..home import OutpostSettings
from ..release.config import Health
from .context import Job
from .health import wait_healthy
from .spec import RELEASE, SERVICE, SITE, SPEC, container_spec, health_of, labels, parse_port

RUNNING_STATES = ("running", "restarting", "paused")
_DOCKER_FAULTS = (docker.errors.DockerException, requests.exceptions.RequestException)


@contextmanager
def docker_faults(what: str) -> Iterator[None]:
    """The Docker daemon failing (not the release): a LocalError, retried later."""
    try:
        yield
    except _DOCKER_FAULTS as e:
        raise DockerError(f"{what}: {e}") from None


def docker_client(base_url: str | None = None) -> Any:
    """The Docker SDK's client of the outpost's daemon, checked to answer."""
    try:
        client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
        client.ping()
    except _DOCKER_FAULTS as e:
        raise DockerError(f"no Docker daemon answers at {base_url or 'DOCKER_HOST'} ({e}); "
                          "start one (scripts/services start), or point [outpost] docker in "
                          "node.toml (or DOCKER_HOST) at one") from None
    return client


class DockerApplier:
    name = "docker"

    def __init__(self, settings: OutpostSettings, site: str, node: str,
                 stop: threading.Event) -> None:
        self.settings, self.site, self.node, self.stop = settings, site, node, stop
        self.client = docker_client(settings.docker)

    # phases
    def prepare(self, job: Job) -> None:
        """Pull each service's image by digest from the outpost registry; check its ID."""
        facts = {i.ref: i for i in job.release.images}
        desired = {}
        for service in job.config.services:
            pinned = job.pinned[service.image]
            image_id = self._pull(pinned, service.image, facts[service.image].image_id, job)
            desired[service.name] = container_spec(service, pinned, image_id, self.site)
        job.record(desired=desired)

    def switch(self, job: Job) -> None:
        self._converge(job.plan["desired"], job.commit, job)

    def check(self, job: Job) -> None:
        job.record(health_tries=self._healthy(job.plan["desired"], job))

    def _healthy(self, desired: dict[str, Any], job: Job) -> dict[str, int]:
        with docker_faults("docker"):
            found = {c.labels.get(SPEC): c for c in self._ours()}
        probes = {name: _Probe(found[spec["hash"]], self.settings.docker)
                  for name, spec in desired.items() if spec["hash"] in found}
        lost = sorted(set(desired) - set(probes))
        if lost:
            raise ApplyFailed(f"the container of {lost[0]} disappeared", service=lost[0])
        return wait_healthy(probes, {n: health_of(s) for n, s in desired.items()},
                            time.monotonic, self.stop, job.log.line)

    def commit(self, job: Job) -> None:
        """Remove our containers the release does not run (the previous ones, stopped)."""
        keep = {s["hash"] for s in job.plan["desired"].values()}
        with docker_faults("removing the previous containers"):
            for c in self._ours():
                if c.labels.get(SPEC) not in keep:
                    c.remove(force=True)
                    job.log.line(f"removed {c.name} ({c.labels.get(SERVICE)} of "
                                 f"{c.labels.get(RELEASE, '')[:12]})")

    def rollback(self, job: Job) -> bool:
        """Back to the previous release's containers, checked healthy again; False if
        nothing ran before."""
        previous: dict[str, Any] = job.plan.get("previous_desired") or {}
        keep = {s["hash"] for s in previous.values()}
        ours = {s["hash"] for s in job.plan.get("desired", {}).values()} - keep
        with docker_faults("rolling back"):
            for c in self._ours():
                if c.labels.get(SPEC) in ours:
                    c.remove(force=True)
                    job.log.line(f"removed {c.name} (this release's {c.labels.get(SERVICE)})")
        self._converge(previous, job.row.previous or job.commit, job)
        if previous:
            try:
                self._healthy(previous, job)
            except ApplyFailed as e:
                raise ApplyFailed(f"the previous release is not healthy either: {e}",
                                  service=e.service) from None
        return bool(previous)

    # the work
    def _pull(self, pinned: str, ref: str, image_id: str, job: Job) -> str:
        repo, digest = pinned.split("@", 1)
        with docker_faults(f"docker pull {pinned}"):
            try:
                found = self.client.api.inspect_image(pinned)["Id"]
            except docker.errors.ImageNotFound:
                try:
                    self.client.api.pull(repo, tag=digest)
                except docker.errors.NotFound:
                    raise ImagesMissing([ref]) from None
                except docker.errors.APIError as e:
                    if "manifest unknown" in str(e) or "not found" in str(e):
                        raise ImagesMissing([ref]) from None
                    raise
                found = self.client.api.inspect_image(pinned)["Id"]
                job.log.line(f"pulled {pinned}")
        if found != image_id:
            raise ApplyFailed(f"image {ref} in the outpost registry is {found[:19]}, the "
                              f"release names {image_id[:19]}")
        return str(found)

    def _ours(self) -> list[Any]:
        return list(self.client.containers.list(all=True,
                                                filters={"label": f"{SITE}={self.site}"}))

    def _converge(self, desired: dict[str, Any], commit: str, job: Job) -> None:
        keep = {s["hash"] for s in desired.values()}
        with docker_faults("docker"):
            found = {c.labels.get(SPEC): c for c in self._ours()}
            for c in found.values():
                if c.status in RUNNING_STATES and c.labels.get(SPEC) not in keep:
                    c.stop(timeout=int(self.settings.stop_timeout))
                    job.log.line(f"stopped {c.name} ({c.labels.get(SERVICE)} of "
                                 f"{c.labels.get(RELEASE, '')[:12]}), kept until the new one "
                                 "is healthy")
        starting = [s for s in desired.values()
                    if s["hash"] not in found or found[s["hash"]].status != "running"]
        for spec in starting:
            self._check_ports(spec)
        for spec in starting:
            self._start(spec, found.get(spec["hash"]), commit, job)

    def _create(self, spec: dict[str, Any], commit: str) -> Any:
        try:
            return self.client.containers.create(
                spec["image"], spec["command"], name=spec["name"], environment=spec["env"],
                network_mode=spec["network"], init=spec.get("init", True),
                labels=labels(spec, self.site, self.node, commit),
                restart_policy={"Name": "unless-stopped"}, detach=True)
        except docker.errors.APIError as e:
            if not _conflict(e):
                raise
            found = self._adopt(spec)
            if found is None:
                raise
            return found

    def _adopt(self, spec: dict[str, Any], wait: float = 120.0) -> Any:
        """The container of this very spec that a node killed during `docker create` left
        to the daemon: its name is taken at once, the container shows only once its root
        is made (seconds on vfs). None when the name is someone else's."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not self.stop.is_set():
            try:
                found = self.client.containers.get(spec["name"])
            except docker.errors.NotFound:
                time.sleep(0.2)
                continue
            return found if found.labels.get(SPEC) == spec["hash"] else None
        return None

    def _check_ports(self, spec: dict[str, Any]) -> None:
        for port in spec["ports"]:
            number, proto = parse_port(port)
            if port_in_use(number, proto):
                raise ApplyFailed(f"service {spec['service']}: port {number}/{proto} is already "
                                  "in use on the outpost by something Outpost does not run",
                                  service=spec["service"])

    def _start(self, spec: dict[str, Any], container: Any, commit: str, job: Job) -> None:
        name = spec["service"]
        try:
            if container is None:
                container = self._create(spec, commit)
            container.start()
        except docker.errors.APIError as e:  # the daemon refused what the release asks
            raise ApplyFailed(f"service {name} does not start: {_explain(e)}",
                              service=name) from None
        except _DOCKER_FAULTS as e:
            raise DockerError(f"starting {name}: {e}") from None
        job.log.line(f"started {spec['name']} ({name}, {spec['image'].rsplit('/', 1)[-1]})")


def _conflict(e: docker.errors.APIError) -> bool:
    return getattr(e, "status_code", None) == 409


class _Probe:
    """A service's container as the health loop sees it."""

    def __init__(self, container: Any, docker_host: str | None) -> None:
        self.container, self.docker_host = container, docker_host

    def failure(self) -> str | None:
        with docker_faults("docker inspect"):
            self.container.reload()
            state = self.container.attrs["State"]
            restarts = int(self.container.attrs.get("RestartCount", 0))
            if state.get("Status") == "running" and not restarts:
                return None
            if state.get("Status") == "running":
                state = self._between_runs(state)
            logs = self.container.logs(tail=5).decode(errors="replace").strip()
        what = "keeps restarting" if restarts or state.get("Restarting") else \
            f"is {state.get('Status')}"
        tail = " | ".join(logs.splitlines()[-5:]) or "no output"
        return f"its container {what} (exit code {state.get('ExitCode')}): {tail}"

    def _between_runs(self, state: dict[str, Any], wait: float = 3.0) -> dict[str, Any]:
        """A restarted container caught running shows its new run's exit code (0): wait a
        little for it to stop again, so the reason gives the code it really exits with."""
        deadline = time.monotonic() + wait
        while state.get("Status") == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
            self.container.reload()
            state = self.container.attrs["State"]
        return state

    def check(self, health: Health) -> tuple[bool, str]:
        if health.url:
            return http_check(health.url, health.timeout)
        return self._exec(health)

    def _exec(self, health: Health) -> tuple[bool, str]:
        """Run the check in the container. docker-py reads an exec's output with no socket
        timeout, so the wait happens here, and a check that hangs past its timeout is
        killed (when its process is visible from here) and its reader left behind."""
        try:
            client = docker.DockerClient(base_url=self.docker_host) if self.docker_host \
                else docker.from_env()
            exec_id = client.api.exec_create(self.container.id, health.command)["Id"]
        except _DOCKER_FAULTS as e:
            return False, str(e)
        done: dict[str, Any] = {}
        reader = threading.Thread(target=_read_exec, args=(client, exec_id, done), daemon=True)
        reader.start()
        reader.join(health.timeout)
        if reader.is_alive():
            _kill_exec(client, exec_id, health.command)
            return False, f"no answer within {health.timeout:.0f}s"
        client.close()
        if "error" in done:
            return False, str(done["error"])
        return done["code"] == 0, done["out"].strip()[-300:] or f"exit code {done['code']}"


def _read_exec(client: Any, exec_id: str, done: dict[str, Any]) -> None:
    try:
        done["out"] = client.api.exec_start(exec_id).decode(errors="replace")
        done["code"] = client.api.exec_inspect(exec_id)["ExitCode"]
    except _DOCKER_FAULTS as e:
        done["error"] = e


def _kill_exec(client: Any, exec_id: str, command: list[str]) -> None:
    """Kill a hung check, if the pid Docker reports is that very command in our view."""
    with contextlib.suppress(*_DOCKER_FAULTS, OSError, ValueError):
        pid = int(client.api.exec_inspect(exec_id).get("Pid") or 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        if pid > 1 and [a.decode() for a in cmdline] == command:
            os.kill(pid, signal.SIGKILL)


def http_check(url: str, timeout: float) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 400, f"HTTP {resp.status}"
    except urllib.error.HTTPError as e:
        return False, f"HTTP {e.code} from {url}"
    except (urllib.error.URLError, OSError) as e:
        return False, f"{url}: {getattr(e, 'reason', e)}"


def port_in_use(port: int, proto: str) -> bool:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def _explain(e: Any) -> str:
    return str(getattr(e, "explanation", None) or e)
