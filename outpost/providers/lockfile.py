"""`.terraform.lock.hcl`, the dependency lock file Terraform writes (pure).

Only what Terraform itself writes is read: `provider "ADDRESS" { version = "..."
constraints = "..." hashes = ["h1:...", "zh:..."] }` blocks and comments. A file that says
anything else is refused rather than half-understood.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError
from .package import SOURCE, VERSION

_TOKEN = re.compile(r'''
    (?P<space>\s+) | (?P<comment>(\#|//)[^\n]*|/\*.*?\*/) | (?P<string>"(?:[^"\\\n]|\\.)*")
    | (?P<word>[A-Za-z_][A-Za-z0-9_-]*) | (?P<punct>[={}\[\],])''', re.VERBOSE | re.DOTALL)


@dataclass(frozen=True)
class Locked:
    """One provider the lock file pins."""

    source: str  # registry.terraform.io/hashicorp/aws
    version: str
    hashes: tuple[str, ...]


def parse_lock(text: str, where: str = ".terraform.lock.hcl") -> list[Locked]:
    tokens = _tokens(text, where)
    found: list[Locked] = []
    while tokens:
        found.append(_provider(tokens, where))
    if len({p.source for p in found}) != len(found):
        raise ConfigError(f"{where}: a provider is listed twice")
    return found


def _tokens(text: str, where: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            line = text.count("\n", 0, pos) + 1
            raise ConfigError(f"{where}: line {line}: not a lock file Terraform wrote")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind not in ("space", "comment"):
            value = m.group()
            out.append((kind, value[1:-1] if kind == "string" else value))
    out.reverse()  # popped from the end
    return out


def _provider(tokens: list[tuple[str, str]], where: str) -> Locked:
    _expect(tokens, "word", "provider", where)
    source = _expect(tokens, "string", None, where).lower()
    if not SOURCE.match(source):
        raise ConfigError(f"{where}: {source!r} is not a provider address like "
                          "registry.terraform.io/hashicorp/aws")
    _expect(tokens, "punct", "{", where)
    attrs: dict[str, str | list[str]] = {}
    while tokens and tokens[-1] != ("punct", "}"):
        name = _expect(tokens, "word", None, where)
        _expect(tokens, "punct", "=", where)
        attrs[name] = _value(tokens, where)
    _expect(tokens, "punct", "}", where)
    version, hashes = attrs.get("version"), attrs.get("hashes", [])
    if not isinstance(version, str) or not VERSION.match(version):
        raise ConfigError(f"{where}: provider {source} needs an exact version")
    if not isinstance(hashes, list) or not hashes:
        raise ConfigError(f"{where}: provider {source} lists no hashes; run `terraform "
                          "providers lock` to record them")
    return Locked(source, version, tuple(hashes))


def _value(tokens: list[tuple[str, str]], where: str) -> str | list[str]:
    if tokens and tokens[-1][0] == "string":
        return tokens.pop()[1]
    _expect(tokens, "punct", "[", where)
    items: list[str] = []
    while tokens and tokens[-1] != ("punct", "]"):
        items.append(_expect(tokens, "string", None, where))
        if tokens and tokens[-1] == ("punct", ","):
            tokens.pop()
    _expect(tokens, "punct", "]", where)
    return items


def _expect(tokens: list[tuple[str, str]], kind: str, value: str | None, where: str) -> str:
    if not tokens:
        raise ConfigError(f"{where}: ends too early; not a lock file Terraform wrote")
    got_kind, got = tokens.pop()
    if got_kind != kind or (value is not None and got != value):
        raise ConfigError(f"{where}: unexpected {got!r}; not a lock file Terraform wrote")
    return got
