"""Registries of a test's own (docker-registry on a free loopback port): one that wants a
password, Earth's image source, and plain ones for extra outposts."""

from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

from .conftest import probes

CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {storage}
http:
  addr: {address}
"""
AUTH = """\
auth:
  htpasswd:
    realm: outpost-source
    path: {htpasswd}
"""


def bcrypt_hash(password: str) -> str:
    """The bcrypt hash htpasswd files hold (distribution takes only bcrypt), from the C
    library's crypt(3)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))


@contextlib.contextmanager
def auth_registry(folder: Path, user: str, password: str) -> Iterator[str]:
    """A registry that answers only `user`:`password` (its address), stopped afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "htpasswd").write_text(f"{user}:{bcrypt_hash(password)}\n")
    with served(folder, AUTH.format(htpasswd=folder / "htpasswd")) as address:
        yield address


@contextlib.contextmanager
def served(folder: Path, extra: str = "") -> Iterator[str]:
    """A registry of its own in `folder` (its address), stopped afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    address = f"127.0.0.1:{probes.free_port()}"
    config = folder / "registry.yml"
    config.write_text(CONFIG.format(storage=folder / "storage", address=address) + extra)
    with open(folder / "registry.log", "wb") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        _wait_up(address, proc, folder / "registry.log")
        yield address
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_up(address: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://{address}/v2/", timeout=1):
                return  # up, open to all
        except urllib.error.HTTPError as e:
            if e.code == 401:  # up, and asking for the password
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"docker-registry did not come up on {address}: {log.read_text()[-500:]}")
