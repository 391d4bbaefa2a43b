"""Applying releases end to end: real `outpost-node` processes for Earth and the outpost,
link-sim with loss between them, Earth's Docker daemon and the outpost's own (a second
daemon), the real registry and git (tests/conftest.py). The services are busybox httpd
pages on host ports, fetched over HTTP as a person at the outpost would.

Images are built locally (tests/images.py), never pulled.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from outpost.apply.containers import DockerApplier
from outpost.apply.runner import site_id
from outpost.apply.spec import SERVICE, SITE, container_spec, labels
from outpost.home import OutpostSettings, load_home
from outpost.release.config import Service
from outpost.store.applies import FINAL
from outpost.store.state import State

from .conftest import Services
from .images import build_image, busybox_base
from .procs import cli, running, start_node, stop, tool, wait_for
from .test_e2e_release import Site, git

pytestmark = pytest.mark.slow
LINK = ["--latency", "300ms", "--loss", "0.1", "--seed", "11"]


class ApplySite(Site):
    """Earth and an outpost whose releases run on the outpost's own Docker daemon."""

    def __init__(self, root: Path, services: Services, prefix: str) -> None:
        super().__init__(root, services, prefix, sync_on_start=False)
        self.outpost_docker = services.outpost_docker_host or services.docker_host
        with open(self.mars.path / "node.toml", "a") as f:  # [outpost] is the last table
            f.write(f'docker = "{self.outpost_docker}"\nimage_requests = 2\n'
                    'image_request_retry = "1s"\n')
        self.mars = load_home(self.mars.path)
        self.site = site_id(self.mars)

    def release(self, text: str, message: str) -> str:
        repo = self.earth.path / "config"
        (repo / "outpost.toml").write_text(text)
        git(repo, "commit", "-qam", message)
        return git(repo, "rev-parse", "HEAD").strip()

    def outcome(self, commit: str) -> dict[str, Any] | None:
        """The apply of `commit` once it has ended."""
        for a in self.status(self.mars)["applies"]:
            if a["commit"] == commit and a["state"] in FINAL:
                return dict(a)
        return None

    def wait_outcome(self, commit: str, timeout: float = 120) -> dict[str, Any]:
        wait_for(lambda: self.outcome(commit) is not None, timeout, f"the apply of {commit[:12]}")
        found = self.outcome(commit)
        assert found is not None
        return found

    def earth_view(self) -> dict[str, Any]:
        return dict(self.status(self.earth)["fleet"]["mars"])

    def containers(self, client: docker.DockerClient, all_: bool = False) -> list[Any]:
        return list(client.containers.list(all=all_, filters={"label": f"{SITE}={self.site}"}))

    def restart_mars(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        new = start_node(self.mars.path, "outpost", env=self.env)
        self.procs[self.procs.index(proc)] = new
        return new


@pytest.fixture
def site(tmp_path: Path, services: Services, request: pytest.FixtureRequest
         ) -> Iterator[ApplySite]:
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name[5:30].lower()).strip("-")
    s = ApplySite(tmp_path, services, f"outpost-test/apply-{name}")
    yield s
    for p in s.procs:
        if p.poll() is None:
            p.terminate()
            p.wait(30)
    client = services.client(s.outpost_docker)
    for c in s.containers(client, all_=True):  # what the outpost ran stops with the test
        c.remove(force=True)
    client.close()


@pytest.fixture
def outpost_docker(site: ApplySite, services: Services) -> Iterator[docker.DockerClient]:
    client = services.client(site.outpost_docker)
    yield client
    client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def web_image(client: docker.DockerClient, tag: str, base: str, version: str) -> str:
    build_image(client, tag, {"/www/index.html": f"<p>version {version}</p>\n"}, base)
    return tag


def web_images(site: ApplySite, client: docker.DockerClient, *versions: str) -> list[str]:
    """`prefix-web:VERSION` for each version: busybox plus a page that names the version."""
    base = f"{site.prefix}-base:1"
    busybox_base(client, base)
    return [web_image(client, f"{site.prefix}-web:{v}", base, v) for v in versions]


def page(port: int, path: str = "/") -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return str(resp.read().decode())
    except OSError as e:
        return f"unreachable: {e}"


def images_toml(*refs: str) -> str:
    return "".join(f'[[images]]\nref = "{r}"\n\n' for r in dict.fromkeys(refs))


def service_toml(name: str, image: str, port: int, *, command: str | None = None,
                 health: str | None = None, extra: str = "") -> str:
    cmd = command or json.dumps(["httpd", "-f", "-p", str(port), "-h", "/www"])
    check = health if health is not None else \
        f'url = "http://127.0.0.1:{port}/"\ninterval = "500ms"\nretries = 20\n'
    return (f'[[services]]\nname = "{name}"\nimage = "{image}"\ncommand = {cmd}\n'
            f'ports = ["{port}"]\n{extra}[services.health]\n{check}\n')


def pull_release(ref: str) -> str:
    pull = json.dumps(["sh", "-c", f"docker pull $OUTPOST_REGISTRY/{ref}"])
    return f'[apply]\napplier = "command"\ncommand = {pull}\n'


def docker_release(refs: list[str], *services: str) -> str:
    return images_toml(*refs) + '[apply]\napplier = "docker"\n\n' + "".join(services)


def test_releases_run_update_only_what_changed_and_a_bad_one_rolls_back(
        site: ApplySite, docker_client: docker.DockerClient,
        outpost_docker: docker.DockerClient) -> None:
    v1, v2 = web_images(site, docker_client, "v1", "v2")
    app, side = free_port(), free_port()
    wget = json.dumps(["wget", "-q", "-O", "-", f"http://127.0.0.1:{side}/"])
    side_service = service_toml("side", v1, side, health=f"command = {wget}\n")
    c1 = site.release(docker_release([v1], service_toml("app", v1, app), side_service), "v1")
    site.start(*LINK)
    with running(*site.procs):
        site.publish()
        assert site.wait_outcome(c1)["state"] == "applied"
        assert "version v1" in page(app) and "version v1" in page(side)
        before = {c.labels[SERVICE]: c.id for c in site.containers(outpost_docker)}
        assert sorted(before) == ["app", "side"]

        c2 = site.release(docker_release([v1, v2], service_toml("app", v2, app), side_service),
                          "v2: a new app, the same side")
        # v1's report may still be on the link: count what crosses for v2 only after it came
        wait_for(lambda: site.earth_view()["running"] == c1, 30, "Earth to hear of v1")
        earth_db = State(site.earth.state_db)
        seen_before = len(earth_db.q("SELECT id FROM seen WHERE src = 'mars'"))
        site.publish()
        done = site.wait_outcome(c2)
        assert done["state"] == "applied", done
        assert "version v2" in page(app) and "version v1" in page(side)
        after = {c.labels[SERVICE]: c.id for c in site.containers(outpost_docker, all_=True)}
        assert after["side"] == before["side"], "the unchanged service was recreated"
        assert after["app"] != before["app"] and len(after) == 2, "the old app was kept"
        wait_for(lambda: site.earth_view()["running"] == c2, 30, "Earth to hear of v2")
        crossed = earth_db.q("SELECT kind FROM seen WHERE src = 'mars'")[seen_before:]
        assert [r["kind"] for r in crossed] == ["report"], \
            "in push mode the outpost sends Earth acks and its report, nothing else"
        earth_db.close()

        check = f'url = "http://127.0.0.1:{app}/missing"\ninterval = "300ms"\nretries = 3\n'
        bad = service_toml("app", v2, app, health=check, extra='env = { V = "3" }\n')
        c3 = site.release(docker_release([v1, v2], bad, side_service), "v3: a bad health check")
        site.publish()
        done = site.wait_outcome(c3)
        assert done["state"] == "rolled-back" and done["service"] == "app", done
        assert "404" in done["reason"]
        assert "version v2" in page(app), "the previous version does not serve again"
        assert site.status(site.mars)["running"]["commit"] == c2
        wait_for(lambda: (site.earth_view()["last_apply"] or {}).get("event") == "rolled-back",
                 30, "Earth to hear of the rollback")
        last = site.earth_view()["last_apply"]
        assert last["release"] == c3 and last["detail"]["service"] == "app"
        assert "404" in last["detail"]["reason"] and site.earth_view()["running"] == c2
        assert len(site.containers(outpost_docker, all_=True)) == 2

        back = cli("rollback", "--home", str(site.mars.path), env=site.env)
        assert (back["commit"], back["state"], back["trigger"]) == (c1, "applied", "rollback")
        assert "version v1" in page(app) and "version v1" in page(side)
        again = cli("apply", "--home", str(site.mars.path), "--commit", c2[:8], env=site.env)
        assert (again["commit"], again["state"], again["trigger"]) == (c2, "applied", "manual")
        assert "version v2" in page(app)
        wait_for(lambda: site.earth_view()["running"] == c2, 30, "Earth to hear of the apply")

        app_id = {c.labels[SERVICE]: c.id for c in site.containers(outpost_docker)}["app"]
        c4 = site.release(docker_release([v2], service_toml("app", v2, app)), "v4: no side")
        site.publish()
        assert site.wait_outcome(c4)["state"] == "applied"
        assert [c.labels[SERVICE] for c in site.containers(outpost_docker, all_=True)] == ["app"]
        assert page(side).startswith("unreachable"), "the dropped service still serves"
        assert app_id in {c.id for c in site.containers(outpost_docker)}, \
            "the unchanged app was recreated when side was dropped"
    site.check_logs()


def test_kill_9_in_the_middle_of_an_apply_ends_with_one_version_running(
        site: ApplySite, docker_client: docker.DockerClient,
        outpost_docker: docker.DockerClient) -> None:
    v1, v2 = web_images(site, docker_client, "v1", "v2")
    port = free_port()
    c1 = site.release(docker_release([v1], service_toml("app", v1, port)), "v1")
    site.start(*LINK)
    with running(*site.procs):
        site.publish()
        assert site.wait_outcome(c1)["state"] == "applied"
        slow = json.dumps(["sh", "-c", f"sleep 3; exec httpd -f -p {port} -h /www"])
        c2 = site.release(docker_release([v2], service_toml("app", v2, port, command=slow)),
                          "v2: takes 3 s to come up")
        site.publish()

        def in_the_middle() -> bool:
            applies = site.status(site.mars)["applies"]
            return any(a["commit"] == c2 and a["phase"] in ("switch", "check")
                       for a in applies)
        wait_for(in_the_middle, 120, "the apply of v2 to be under way", interval=0.05)
        mars = site.procs[2]
        assert stop(mars, signal.SIGKILL) == -signal.SIGKILL
        mars = site.restart_mars(mars)
        done = site.wait_outcome(c2)
        assert done["state"] in ("applied", "rolled-back"), done
        version = "v2" if done["state"] == "applied" else "v1"
        (alive,) = site.containers(outpost_docker)
        assert alive.labels["org.outpost.release"] == (c2 if version == "v2" else c1)
        wait_for(lambda: f"version {version}" in page(port), 20, f"{version} to serve")
        assert len(site.containers(outpost_docker, all_=True)) == 1, "a leftover container"
        assert mars.poll() is None
    site.check_logs()


def test_an_image_the_config_forgot_is_asked_for_and_requests_are_bounded(
        site: ApplySite, docker_client: docker.DockerClient, services: Services) -> None:
    base = f"{site.prefix}-base:1"
    busybox_base(docker_client, base)
    run = uuid.uuid4().hex[:8]  # the registry outlives the test: names of this run only
    forgotten = web_image(docker_client, f"{site.prefix}-forgotten:{run}", base, "f1")
    c1 = site.release(pull_release(forgotten), "a command needs an image outpost.toml forgot")
    site.start(*LINK)
    with running(*site.procs):
        site.publish()
        done = site.wait_outcome(c1)
        assert done["state"] == "applied", done
        requests = [r for r in site.status(site.earth)["reports"] if r["event"] == "image-request"]
        assert len(requests) == 1 and requests[0]["detail"]["sent"] == [forgotten]
        assert (site.mars.path / "applies" / f"{c1[:12]}.log").read_text().count(
            "manifest unknown") >= 1, "the first run did not fail for the missing image"

        never = f"{site.prefix}-neverbuilt:{run}"
        c2 = site.release(pull_release(never), "an image nobody has")
        site.publish()
        done = site.wait_outcome(c2, timeout=180)
        assert done["state"] == "failed" and never in done["reason"], done
        assert "Earth" in done["reason"]
        reports = site.status(site.earth)["reports"]
        asked = [r for r in reports if r["event"] == "image-request" and r["release"] == c2]
        assert len(asked) == 2, "the outpost asked more often than image_requests allows"
        assert all(r["detail"]["unavailable"] == [never] for r in asked)
        wait_for(lambda: (site.earth_view()["last_apply"] or {}).get("event") == "failed",
                 30, "Earth to hear of the failure")
        assert never in site.earth_view()["last_apply"]["detail"]["reason"]
        assert site.status(site.mars)["running"]["commit"] == c1
    site.check_logs()


def test_bad_releases_fail_with_their_reason_and_the_node_keeps_running(
        site: ApplySite, docker_client: docker.DockerClient,
        outpost_docker: docker.DockerClient) -> None:
    (v1,) = web_images(site, docker_client, "v1")
    app, taken = free_port(), free_port()
    good = service_toml("app", v1, app)
    c1 = site.release(docker_release([v1], good), "v1")
    site.start(*LINK)
    holder = socket.socket()
    holder.bind(("0.0.0.0", taken))
    holder.listen()
    with running(*site.procs), holder:
        nothing = subprocess.run([tool("outpost-node"), "rollback", "--home",
                                  str(site.mars.path)], capture_output=True, text=True)
        assert nothing.returncode == 2 and "nothing to roll back" in nothing.stderr
        assert len(nothing.stderr.strip().splitlines()) == 1, nothing.stderr
        site.publish()
        assert site.wait_outcome(c1)["state"] == "applied"
        bad_releases = [
            (docker_release([v1], good, service_toml("extra", v1, taken)),
             "extra", f"port {taken}/tcp is already in use"),
            (docker_release([v1], service_toml("app", v1, app, command='["sh", "-c", "exit 3"]')),
             "app", "exit code 3"),
            (docker_release([v1], service_toml(
                "app", v1, app, health='command = ["sleep", "600"]\ntimeout = "1s"\n'
                                       'retries = 2\ninterval = "200ms"\n')),
             "app", "no answer within 1s"),
        ]
        for n, (text, service, reason) in enumerate(bad_releases):
            commit = site.release(text, f"bad release {n}")
            site.publish()
            done = site.wait_outcome(commit)
            assert done["state"] == "rolled-back", done
            assert done["service"] == service and reason in done["reason"], done
            assert "version v1" in page(app), f"v1 stopped serving after bad release {n}"
            assert site.status(site.mars)["running"]["commit"] == c1
        assert len(site.containers(outpost_docker, all_=True)) == 1
        assert all(p.poll() is None for p in site.procs), "a process ended"
    site.check_logs()


def test_a_container_a_killed_create_left_is_adopted_not_a_conflict(
        docker_client: docker.DockerClient, services: Services) -> None:
    """Seen: a node killed during `docker create` (slow on vfs) restarted, created the same
    container again, got 409 Conflict and rolled back, leaving the first one behind. The
    container the killed run made (same name, same spec) is taken as this run's."""
    base = f"outpost-test/adopt-{uuid.uuid4().hex[:8]}:1"
    busybox_base(docker_client, base)
    applier = DockerApplier(OutpostSettings(docker=services.docker_host), "adopt-test", "mars",
                            threading.Event())
    image_id = docker_client.images.get(base).id
    spec = container_spec(Service("app", base, ["sleep", "60"]), base, image_id, "adopt-test")
    left = docker_client.containers.create(base, ["sleep", "60"], name=spec["name"],
                                           labels=labels(spec, "adopt-test", "mars", "c1"))
    try:
        assert applier._create(spec, "c1").id == left.id
        other = container_spec(Service("app", base, ["sleep", "61"]), base, image_id,
                               "adopt-test")
        foreign = {**other, "name": spec["name"]}  # our name, another spec: not ours
        with pytest.raises(docker.errors.APIError):
            applier._create(foreign, "c1")
    finally:
        left.remove(force=True)
        docker_client.images.remove(base, force=True)
