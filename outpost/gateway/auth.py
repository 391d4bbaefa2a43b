"""Registry authentication: what to answer a 401 with (pure but for the token fetch).

A registry that wants credentials answers 401 with a challenge (`WWW-Authenticate`):
`Basic realm=...` (distribution with htpasswd) or `Bearer realm=URL,service=S,scope=S`
(the token protocol of Docker Hub, Harbor and the cloud registries): the client then asks
`realm?service=S&scope=S` for a token, with its basic credentials, and sends
`Authorization: Bearer TOKEN`. A credentials file holds one line: `USER:PASSWORD`, or a
token alone (no colon), sent as the bearer token as it is.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from ..errors import ConfigError, RegistryError

_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')
MAX_TOKEN_ANSWER = 1 << 20


@dataclass(frozen=True)
class Credentials:
    """A user and password, or a token."""

    user: str = ""
    password: str = ""
    token: str = ""

    @classmethod
    def from_file(cls, path: Path) -> Credentials:
        try:
            line = path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read the registry credentials {path}: {e.strerror}; "
                              "write USER:PASSWORD or a token there") from None
        if not line or "\n" in line:
            raise ConfigError(f"{path}: expected one line, USER:PASSWORD or a token")
        user, colon, password = line.partition(":")
        return cls(user, password) if colon else cls(token=line)

    def basic(self) -> str | None:
        if not self.user:
            return None
        raw = f"{self.user}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="https://a/token",service="reg"` -> ("bearer", {realm:..., service:...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in _PARAM.finditer(rest)}
    return scheme.lower(), params


def authorization(challenge: str, creds: Credentials, where: str,
                  context: ssl.SSLContext | None = None, timeout: float = 60) -> str:
    """The Authorization header that answers `challenge` (a WWW-Authenticate value)."""
    scheme, params = parse_challenge(challenge)
    if scheme == "basic":
        basic = creds.basic()
        if basic is None:
            raise RegistryError(f"{where} asks for a user and password, and the credentials "
                                "file holds a token: write USER:PASSWORD there", status=401)
        return basic
    if scheme != "bearer":
        raise RegistryError(f"{where} asks for {scheme or 'an unnamed'} authentication, "
                            "which Outpost does not speak (Basic or Bearer)", status=401)
    if creds.token:
        return f"Bearer {creds.token}"
    return f"Bearer {_fetch_token(params, creds, where, context, timeout)}"


def connection_to(url: str, timeout: float,
                  context: ssl.SSLContext | None) -> http.client.HTTPConnection:
    """A connection to the host of `url`, over HTTPS (checked against `context`, or the
    system's CAs) when it says https."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.netloc, timeout=timeout, context=context)
    return http.client.HTTPConnection(parts.netloc, timeout=timeout)


def _fetch_token(params: dict[str, str], creds: Credentials, where: str,
                 context: ssl.SSLContext | None, timeout: float) -> str:
    realm = params.get("realm", "")
    url = urlsplit(realm)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise RegistryError(f"{where} names no usable token service (realm {realm!r})")
    query = urlencode({k: v for k, v in params.items() if k in ("service", "scope")})
    conn = connection_to(realm, timeout, context)
    headers = {"User-Agent": "outpost"}
    if (basic := creds.basic()) is not None:
        headers["Authorization"] = basic
    path = (url.path or "/") + (f"?{url.query}&{query}" if url.query else f"?{query}")
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read(MAX_TOKEN_ANSWER)
    except (OSError, http.client.HTTPException) as e:
        raise RegistryError(f"the token service of {where} ({realm}) does not answer: "
                            f"{e}") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise RegistryError(f"the token service of {where} refused the credentials: HTTP "
                            f"{resp.status}; check the [earth] source_auth file", status=401)
    try:
        answer = json.loads(body)
        token = answer.get("token") or answer.get("access_token")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token:
        raise RegistryError(f"the token service of {where} answered no token")
    return token
