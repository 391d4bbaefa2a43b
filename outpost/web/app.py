"""Requests of the status page: routes, the token check and read-only methods."""

from __future__ import annotations

import hmac
import json
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from ..errors import OutpostError
from ..home import Home
from ..node.context import open_node
from ..report import registry_view, status_info
from .chart import traffic_svg
from .page import PAGE

MAX_MINUTES = 7 * 24 * 60


class Handler(BaseHTTPRequestHandler):
    home: ClassVar[Home]
    token: ClassVar[str | None]
    server_version = "outpost"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _refuse(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only: GET and HEAD only\n",
                   "text/plain", True, {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _answer(self, body: bool) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if not self._allowed(query):
            self._send(HTTPStatus.UNAUTHORIZED, b"a token is needed: see HOME/http.token\n",
                       "text/plain", body, {"WWW-Authenticate": "Bearer"})
            return
        route = ROUTES.get(url.path)
        if route is None:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain", body)
            return
        try:
            data, kind = route(self.home, query)
        except OutpostError as e:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, _json({"error": str(e)}),
                       "application/json", body)
            return
        self._send(HTTPStatus.OK, data, kind, body)

    def _allowed(self, query: dict[str, list[str]]) -> bool:
        if self.token is None:
            return True
        given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        given = given or (query.get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), self.token.encode())

    def _send(self, status: HTTPStatus, data: bytes, kind: str, body: bool,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the node's log is for what crosses the link, not page polls."""


def _json(obj: object) -> bytes:
    """Compact: the encoder then runs in C (a fleet's status is megabytes)."""
    return json.dumps(obj, default=str).encode()


def _minutes(query: dict[str, list[str]]) -> int:
    raw = (query.get("minutes") or ["60"])[0]
    return max(1, min(MAX_MINUTES, int(raw))) if raw.isdigit() else 60


def status(home: Home, _query: dict[str, list[str]]) -> tuple[bytes, str]:
    return _json(status_info(home)), "application/json"


def traffic(home: Home, query: dict[str, list[str]]) -> tuple[bytes, str]:
    return _json(traffic_rows(home, _minutes(query))), "application/json"


def chart(home: Home, query: dict[str, list[str]]) -> tuple[bytes, str]:
    minutes = _minutes(query)
    return traffic_svg(traffic_rows(home, minutes), minutes, time.time()).encode(), \
        "image/svg+xml"


def registry(home: Home, _query: dict[str, list[str]]) -> tuple[bytes, str]:
    return _json(registry_view(home)), "application/json"


def page(_home: Home, _query: dict[str, list[str]]) -> tuple[bytes, str]:
    return PAGE.encode(), "text/html"


def traffic_rows(home: Home, minutes: int) -> list[dict[str, Any]]:
    node = open_node(home)
    try:
        rows = node.state.traffic(time.time() - minutes * 60)
        return [{"peer": r["peer"], "dir": r["dir"], "minute": r["minute"] * 60,
                 "bytes": r["bytes"], "files": r["files"], "resent": r["resent"]}
                for r in rows]
    finally:
        node.state.close()


ROUTES = {"/": page, "/api/status": status, "/api/traffic": traffic, "/api/registry": registry,
          "/chart.svg": chart}
