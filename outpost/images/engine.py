"""The two Docker Engine API calls Earth needs, over the standard library.

Inspecting an image and streaming `docker save` is all a publish asks of Docker. The Docker
SDK would cost every `publish` about 0.3 s of imports (requests alone 0.25 s) for them, so
this speaks HTTP/1.1 to the daemon itself: a unix socket (`unix:///var/run/docker.sock`,
the default) or TCP (`tcp://host:2375`, with TLS when DOCKER_TLS_VERIFY is set, using
DOCKER_CERT_PATH's ca.pem, cert.pem and key.pem as the docker CLI does). Foreign errors
become DockerError here; an image the daemon does not have is a ConfigError.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from ..errors import ConfigError, DockerError

DEFAULT_HOST = "unix:///var/run/docker.sock"
CHUNK = 1024 * 1024
TIMEOUT = 300.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


class Engine:
    """One Docker daemon, one connection per request (calls are few and long)."""

    def __init__(self, base_url: str | None = None, timeout: float = TIMEOUT) -> None:
        self.url = base_url or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
        self.timeout = timeout
        parts = urlsplit(self.url)
        if parts.scheme not in ("unix", "tcp", "http", "https"):
            raise DockerError(f"Docker host {self.url!r}: use unix:///path or tcp://host:port")
        self._parts = parts

    def ping(self) -> None:
        self._json("GET", "/_ping", text=True)

    def inspect_image(self, ref: str) -> dict[str, Any]:
        found = self._json("GET", f"/images/{quote(ref, safe='/:@')}/json", missing=ref)
        if not isinstance(found, dict):
            raise DockerError(f"docker inspect {ref}: the daemon answered no image")
        return found

    def save(self, ref: str) -> Iterator[bytes]:
        """`docker save REF`: the tar stream, in chunks."""
        conn, resp = self._open("GET", f"/images/{quote(ref, safe='/:@')}/get", ref)
        try:
            while chunk := resp.read(CHUNK):
                yield chunk
        except (OSError, http.client.HTTPException) as e:
            raise DockerError(f"docker save {ref}: {e}") from None
        finally:
            conn.close()

    def _json(self, method: str, path: str, missing: str | None = None,
              text: bool = False) -> Any:
        conn, resp = self._open(method, path, missing)
        try:
            body = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise self._unreachable(e) from None
        finally:
            conn.close()
        if text:
            return body.decode(errors="replace")
        try:
            return json.loads(body)
        except ValueError:
            raise DockerError(f"{self.url}{path}: the daemon answered something that is not "
                              "JSON") from None

    def _open(self, method: str, path: str, missing: str | None
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self._connection()
        try:
            conn.request(method, path, headers={"Host": "docker"})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise self._unreachable(e) from None
        if resp.status == 404 and missing is not None:
            conn.close()
            raise ConfigError(f"image {missing} is not in Earth's Docker daemon; build or tag "
                              "it, then publish again")
        if resp.status >= 400:
            detail = resp.read(4096).decode(errors="replace").strip()
            conn.close()
            raise DockerError(f"Docker answered {method} {path} with HTTP {resp.status}: "
                              f"{_message(detail)}")
        return conn, resp

    def _connection(self) -> http.client.HTTPConnection:
        p = self._parts
        if p.scheme == "unix":
            return _UnixConnection(p.path, self.timeout)
        host, port = p.hostname or "localhost", p.port or 2375
        context = _tls_context() if p.scheme == "https" or os.environ.get(
            "DOCKER_TLS_VERIFY") else None
        if context is not None:
            return http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                               context=context)
        return http.client.HTTPConnection(host, port, timeout=self.timeout)

    def _unreachable(self, e: BaseException) -> DockerError:
        return DockerError(f"no Docker daemon answers at {self.url} ({e}); start one "
                           "(scripts/services start), or point DOCKER_HOST (at an outpost: "
                           "[outpost] docker in node.toml) at one")


def _tls_context() -> ssl.SSLContext:
    certs = Path(os.environ.get("DOCKER_CERT_PATH") or Path.home() / ".docker")
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    context.load_cert_chain(str(certs / "cert.pem"), str(certs / "key.pem"))
    return context


def _message(detail: str) -> str:
    try:
        return str(json.loads(detail).get("message", detail))
    except (ValueError, AttributeError):
        return detail
