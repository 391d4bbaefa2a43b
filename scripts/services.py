"""Services the tests, CI and the demo need: a Docker daemon and a distribution registry.

    scripts/services start [--outpost-docker] [--registry-tls HOME_OR_TLS_DIR
                           [--registry-addr IP]] [--dir DIR]   start what is missing, reuse the rest
    scripts/services stop [--purge] [--dir DIR]             stop what `start` started
    scripts/services status [--dir DIR]                     what runs
    scripts/services env [--dir DIR]                        shell exports: eval "$(... env)"

DIR defaults to `.services/` in the repository. Standard library only: `.ci/run` runs this
before the virtualenv exists.

- Docker: a daemon that already answers (DOCKER_HOST, else the default socket) is used and
  never touched. Otherwise `dockerd` (Debian docker.io, as root) is started with everything
  under DIR/docker/ and its socket at DIR/docker.sock; `stop` stops it.
- Registry: always our own `docker-registry serve DIR/registry.yml` (Debian docker-registry,
  distribution 2.8) on a free loopback port, storage in DIR/registry/. Plain HTTP, which
  Docker accepts on loopback only. `--registry-tls` serves it over TLS with the certificate
  `outpost-node init --registry-tls` made (HOME/tls/registry.crt and .key, checked against
  its ca.crt), on `--registry-addr` (default 127.0.0.1), and exports OUTPOST_REGISTRY_CA too
  (docs/registry-tls.md). A running registry served otherwise than asked is restarted.
- `--outpost-docker`: a second daemon of our own for the outpost side (DIR/outpost-docker/,
  socket DIR/outpost-docker.sock), with its own image store, so a test can show an image
  arrived through the registry rather than being already there.

`start` writes the exports to DIR/env (atomically); `stop` removes it. What was started is
recorded in DIR/state.json; a process is only ever signalled after checking it is still the
one recorded (its pid runs the same program with our DIR in its command line).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
DOCKER_TIMEOUT = float(os.environ.get("OUTPOST_SERVICES_TIMEOUT", 90))
REGISTRY_TIMEOUT = 30.0
# env var name -> state key
EXPORTS = {"DOCKER_HOST": "docker", "OUTPOST_REGISTRY": "registry",
           "OUTPOST_DOCKER_OUTPOST": "outpost_docker"}
LOOPBACK = "127.0.0.1"


class ServiceError(Exception):
    pass


# ---------------------------------------------------------------- probes


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def docker_answers(host: str, timeout: float = 3.0) -> bool:
    """True if the Docker daemon at `host` (unix://, tcp://, ...) answers."""
    if host.startswith("unix://"):
        conn = _UnixHTTPConnection(host[len("unix://"):], timeout)
        try:
            conn.request("GET", "/_ping")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()
    # tcp (maybe TLS), ssh, ...: let the CLI deal with it
    if not shutil.which("docker"):
        return False
    env = {**os.environ, "DOCKER_HOST": host}
    try:
        return subprocess.run(["docker", "info"], env=env, capture_output=True,
                              timeout=timeout + 10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def registry_answers(addr: str, timeout: float = 3.0, cafile: str | None = None) -> bool:
    return registry_problem(addr, timeout, cafile) is None


def registry_problem(addr: str, timeout: float = 3.0, cafile: str | None = None) -> str | None:
    """None if the registry at `addr` answers /v2/ (over TLS checked against `cafile`
    when given), else why not."""
    scheme, context = ("https", ssl.create_default_context(cafile=cafile)) if cafile \
        else ("http", None)
    try:
        with urllib.request.urlopen(f"{scheme}://{addr}/v2/", timeout=timeout,
                                    context=context) as resp:
            return None if resp.status == 200 else f"HTTP {resp.status}"
    except OSError as e:
        return str(getattr(e, "reason", None) or e)


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0))
        except OSError as e:
            raise ServiceError(f"cannot listen on {host}: {e.strerror or e} (an IPv4 "
                               "address of this machine?)") from None
        return int(s.getsockname()[1])


def registry_tls_dir(path: Path) -> Path:
    """The folder with ca.crt, registry.crt and registry.key: a home's tls/ or that folder."""
    folder = path / "tls" if (path / "tls").is_dir() else path
    for name in ("ca.crt", "registry.crt", "registry.key"):
        if not (folder / name).is_file():
            raise ServiceError(f"--registry-tls {path}: no {name} in {folder} (make them with "
                               "outpost-node init --role outpost --registry-tls)")
    return folder.resolve()


# ---------------------------------------------------------------- processes


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def is_ours(pid: int | None, program: str, marker: str) -> bool:
    """pid still runs `program` with `marker` (a path under DIR) in its command line."""
    if not pid_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return Path(argv[0].decode()).name == program and marker.encode() in b"\0".join(argv)


def terminate(pid: int, program: str, marker: str, timeout: float = 30.0) -> None:
    """SIGTERM, wait, then SIGKILL; only if pid is still the process we started."""
    if not is_ours(pid, program, marker):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    if is_ours(pid, program, marker):
        print(f"services: {program} (pid {pid}) ignored SIGTERM for {timeout:.0f}s; "
              "killing it", file=sys.stderr)
        os.kill(pid, signal.SIGKILL)


def spawn(argv: list[str], log: Path) -> int:
    """Start a detached daemon (own session, output appended to `log`); return its pid."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc.pid


def abandon(pid: int, timeout: float = 10.0) -> None:
    """Stop a daemon we just spawned that failed to come up, and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def log_tail(log: Path, lines: int = 25) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:]) or "    (empty)"


# ---------------------------------------------------------------- state


class Services:
    def __init__(self, root: Path) -> None:
        self.dir = root.resolve()
        self.state_file = self.dir / "state.json"
        self.env_file = self.dir / "env"

    def load(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            return {}

    def save(self, state: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.state_file, json.dumps(state, indent=2) + "\n")

    def exports(self, state: dict[str, Any]) -> dict[str, str]:
        out = {}
        for name, key in EXPORTS.items():
            if key in state:
                out[name] = state[key]["address"]
        if state.get("registry", {}).get("tls"):
            out["OUTPOST_REGISTRY_CA"] = str(Path(state["registry"]["tls"]) / "ca.crt")
        return out

    # ------------------------------------------------------------ docker

    def docker_paths(self, name: str) -> dict[str, Path]:
        base = self.dir / name
        return {"base": base, "data": base / "data", "exec": base / "exec",
                "pidfile": base / "dockerd.pid", "log": base / "dockerd.log",
                "socket": self.dir / f"{name}.sock"}

    def start_dockerd(self, name: str) -> dict[str, Any]:
        p = self.docker_paths(name)
        # containerd (started by dockerd) listens on EXEC/containerd/containerd.sock.ttrpc:
        # a unix socket path must stay under 108 bytes
        if len(str(p["exec"])) + len("/containerd/containerd.sock.ttrpc") >= 108:
            raise ServiceError(f"{self.dir} is too deep for unix socket paths; "
                               "use a shorter --dir")
        if not shutil.which("dockerd"):
            raise ServiceError("no Docker daemon answers and dockerd is not installed "
                               "(Debian: apt-get install docker.io)")
        if os.geteuid() != 0:
            raise ServiceError("no Docker daemon answers, and starting dockerd needs root")
        for key in ("data", "exec"):
            p[key].mkdir(parents=True, exist_ok=True)
        address = f"unix://{p['socket']}"
        p["socket"].unlink(missing_ok=True)
        argv = ["dockerd", "--storage-driver", "vfs", "--iptables=false", "--bridge=none",
                "--data-root", str(p["data"]), "--exec-root", str(p["exec"]),
                "--pidfile", str(p["pidfile"]), "-H", address]
        pid = spawn(argv, p["log"])
        deadline = time.monotonic() + DOCKER_TIMEOUT
        while not docker_answers(address, timeout=2):
            if not pid_alive(pid) or time.monotonic() > deadline:
                why = "exited" if not pid_alive(pid) else \
                    f"did not answer within {DOCKER_TIMEOUT:.0f}s"
                abandon(pid)
                raise ServiceError(f"dockerd for {name} {why}; tail of {p['log']}:\n"
                                   f"{log_tail(p['log'])}")
            time.sleep(0.2)
        return {"address": address, "pid": pid, "owned": True, "marker": str(p["data"])}

    def ensure_docker(self, state: dict[str, Any]) -> None:
        """The main daemon: reuse ours, else one that answers, else start one."""
        old = state.get("docker")
        alive = old and (not old.get("owned") or is_ours(old["pid"], "dockerd", old["marker"]))
        if alive and docker_answers(old["address"]):
            return
        if old and old.get("owned"):  # ours but gone or stuck
            terminate(old["pid"], "dockerd", old["marker"])
            del state["docker"]
        for host in (os.environ.get("DOCKER_HOST"), DEFAULT_SOCKET):
            if host and host != f"unix://{self.docker_paths('docker')['socket']}" \
                    and docker_answers(host):
                state["docker"] = {"address": host, "owned": False}
                return
        state["docker"] = self.start_dockerd("docker")

    def ensure_outpost_docker(self, state: dict[str, Any]) -> None:
        old = state.get("outpost_docker")
        if old and docker_answers(old["address"]) and \
                is_ours(old["pid"], "dockerd", old["marker"]):
            return
        if old:  # gone or stuck
            terminate(old["pid"], "dockerd", old["marker"])
        state["outpost_docker"] = self.start_dockerd("outpost-docker")

    # ------------------------------------------------------------ registry

    def ensure_registry(self, state: dict[str, Any], tls: Path | None = None,
                        host: str = LOOPBACK) -> None:
        """Our registry on `host`, over TLS with the files in `tls` if given."""
        old = state.get("registry")
        wanted = str(tls) if tls else None
        if old and old.get("tls") == wanted and old["address"].rpartition(":")[0] == host \
                and registry_answers(old["address"], cafile=_ca(old)) and \
                is_ours(old["pid"], "docker-registry", old["marker"]):
            return
        if not shutil.which("docker-registry"):
            raise ServiceError("docker-registry is not installed "
                               "(Debian: apt-get install docker-registry)")
        config = self.dir / "registry.yml"
        if old:
            terminate(old["pid"], "docker-registry", old["marker"])
        storage = self.dir / "registry"
        storage.mkdir(parents=True, exist_ok=True)
        log = self.dir / "registry.log"
        entry: dict[str, Any] = {"owned": True, "marker": str(config), "tls": wanted}
        for _attempt in range(3):  # the free port may be taken before the registry binds it
            address = f"{host}:{free_port(host)}"
            write_atomic(config, registry_config(storage, address, tls))
            pid = spawn(["docker-registry", "serve", str(config)], log)
            entry.update(address=address, pid=pid)
            if self._registry_up(entry):
                state["registry"] = entry
                return
            abandon(pid)
        raise ServiceError(f"docker-registry did not answer on {address}/v2/; "
                           f"tail of {log}:\n{log_tail(log)}")

    @staticmethod
    def _registry_up(entry: dict[str, Any]) -> bool:
        """Wait for the registry just spawned to answer; a certificate that does not cover
        its address fails at once, with what to do."""
        deadline = time.monotonic() + REGISTRY_TIMEOUT
        while pid_alive(entry["pid"]) and time.monotonic() < deadline:
            problem = registry_problem(entry["address"], timeout=1, cafile=_ca(entry))
            if problem is None:
                return True
            if "CERTIFICATE_VERIFY_FAILED" in problem:
                abandon(entry["pid"])
                host = entry["address"].rpartition(":")[0]
                raise ServiceError(f"the registry certificate in {entry['tls']} is not "
                                   f"good for {host} ({problem}): sign one that names it "
                                   "(docs/registry-tls.md, \"Another name\")")
            time.sleep(0.1)
        return False

    # ------------------------------------------------------------ commands

    def start(self, outpost_docker: bool, registry_tls: Path | None = None,
              registry_addr: str = LOOPBACK) -> dict[str, Any]:
        self.dir.mkdir(parents=True, exist_ok=True)
        tls = registry_tls_dir(registry_tls) if registry_tls else None
        state = self.load()
        try:
            self.ensure_docker(state)
            self.ensure_registry(state, tls, registry_addr)
            if outpost_docker:
                self.ensure_outpost_docker(state)
            elif "outpost_docker" in state and not docker_answers(
                    state["outpost_docker"]["address"]):
                del state["outpost_docker"]
        finally:
            self.save(state)  # record whatever was started, so `stop` can stop it
        write_atomic(self.env_file, render_env(self.exports(state)))
        return state

    def stop(self, purge: bool) -> None:
        state = self.load()
        self.env_file.unlink(missing_ok=True)
        for key, program in (("registry", "docker-registry"),
                             ("outpost_docker", "dockerd"), ("docker", "dockerd")):
            entry = state.pop(key, None)
            if entry and entry.get("owned"):
                terminate(entry["pid"], program, entry["marker"])
                print(f"stopped {key.replace('_', '-')} (pid {entry['pid']})")
        self.save(state)
        if purge:
            shutil.rmtree(self.dir, ignore_errors=True)

    def status(self) -> bool:
        state = self.load()
        ok = True
        for key in ("docker", "registry", "outpost_docker"):
            name = key.replace("_", "-")
            entry = state.get(key)
            if not entry:
                print(f"{name:15} not started")
                if key != "outpost_docker":
                    ok = False
                continue
            up = registry_answers(entry["address"], cafile=_ca(entry)) if key == "registry" \
                else docker_answers(entry["address"])
            ok = ok and up
            who = f"started here, pid {entry['pid']}" if entry.get("owned") else "not ours"
            print(f"{name:15} {'running' if up else 'NOT ANSWERING':14}"
                  f"{entry['address']}  ({who})")
        return ok


def _ca(entry: dict[str, Any]) -> str | None:
    """The CA file a recorded registry's TLS is checked against; None: plain HTTP."""
    return str(Path(entry["tls"]) / "ca.crt") if entry.get("tls") else None


def registry_config(storage: Path, address: str, tls: Path | None) -> str:
    text = REGISTRY_CONFIG.format(storage=storage, address=address)
    if tls:
        text += REGISTRY_TLS.format(cert=tls / "registry.crt", key=tls / "registry.key")
    return text


REGISTRY_CONFIG = """\
# written by scripts/services
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {address}
"""
REGISTRY_TLS = """\
  tls:
    certificate: {cert}
    key: {key}
"""


def render_env(exports: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in exports.items())


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/services", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop", "status", "env"])
    parser.add_argument("--dir", type=Path, default=REPO / ".services",
                        help="where state, logs, sockets and data live (default: .services/)")
    parser.add_argument("--outpost-docker", action="store_true",
                        help="start: also a second Docker daemon for the outpost side")
    parser.add_argument("--purge", action="store_true",
                        help="stop: also delete DIR (images, registry storage, logs)")
    parser.add_argument("--registry-tls", type=Path, metavar="HOME_OR_TLS_DIR",
                        help="start: serve the registry over TLS with the outpost's "
                             "certificate (HOME/tls/registry.crt, from init --registry-tls)")
    parser.add_argument("--registry-addr", metavar="IP",
                        help="start, with --registry-tls: the address the registry listens "
                             f"on (default {LOOPBACK})")
    args = parser.parse_args(argv)
    if args.registry_addr and not args.registry_tls:
        # Docker pulls plain HTTP from loopback only: anywhere else it needs TLS
        parser.error("--registry-addr needs --registry-tls")
    services = Services(args.dir)
    try:
        if args.command == "start":
            state = services.start(args.outpost_docker, args.registry_tls,
                                   args.registry_addr or LOOPBACK)
            for name, value in services.exports(state).items():
                print(f"{name}={value}")
        elif args.command == "stop":
            services.stop(args.purge)
        elif args.command == "status":
            return 0 if services.status() else 1
        else:
            state = services.load()
            if "docker" not in state or "registry" not in state:
                print("services: not started (scripts/services start)", file=sys.stderr)
                return 1
            sys.stdout.write(render_env(services.exports(state)))
    except ServiceError as exc:
        print(f"services: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
