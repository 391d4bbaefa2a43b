"""The node's status page and its read-only JSON API (`outpost-node start --http`).

Served by the standard library's threading HTTP server in a thread of the node, from the
same state and spool the node uses (outpost/report): nothing of its own to keep in step.
Only GET and HEAD are answered (405 for every other method). The page is one HTML file
with a little JavaScript that polls the API; the throughput chart is SVG drawn here; it
needs nothing from the internet.

On loopback the page is open to the machine's users, as the home folder is; on any other
address every request needs the token (`Authorization: Bearer TOKEN` or `?token=TOKEN`),
kept in HOME/http.token.

    GET /                  the page
    GET /api/status        everything `outpost-node status --json` shows
    GET /api/traffic       per-minute bytes and files each way (?minutes=N, default 60)
    GET /api/registry      the outpost registry: repositories, tags, image IDs, sizes
    GET /chart.svg         that as a chart (?minutes=N)
"""

from __future__ import annotations

import secrets
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from ..errors import ConfigError
from ..fsutil import atomic_write_bytes
from ..home import Home
from ..units import is_loopback
from .app import Handler

DEFAULT_ADDRESS = "127.0.0.1:0"  # port 0: a free one, written to HOME/http.url


class StatusServer:
    def __init__(self, home: Home, address: str, token: str | None = None) -> None:
        host, port = listen_address(address)
        self.home = home
        self.token = token if token is not None else _token_for(home, host)
        handler = type("BoundHandler", (Handler,), {"home": home, "token": self.token})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as e:
            raise ConfigError(f"cannot serve the status page on {address}: {e.strerror}; "
                              "pick another --http address or use --no-http") from None
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http",
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = str(self.httpd.server_address[0]), int(self.httpd.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def start(self) -> str:
        self._thread.start()
        atomic_write_bytes(self.home.path / "http.url", (self.url + "\n").encode())
        return self.url

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        (self.home.path / "http.url").unlink(missing_ok=True)


def listen_address(text: str) -> tuple[str, int]:
    """HOST:PORT (port 0: any free one; an IPv6 host in brackets)."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"not an address to listen on: {text!r} (try 127.0.0.1:8470, or "
                          "127.0.0.1:0 for any free port)")
    return host, int(port)


def _token_for(home: Home, host: str) -> str | None:
    """No token on loopback; elsewhere the home's token, made once."""
    if is_loopback(host):
        return None
    path: Path = home.path / "http.token"
    if not path.exists():
        atomic_write_bytes(path, (secrets.token_urlsafe(24) + "\n").encode(), mode=0o600)
    return path.read_text().strip()
