"""Parse and format the durations and sizes people type (250ms, 30s, 20m, 1h; 64k, 2M, 1G),
and judge the addresses they give."""

from __future__ import annotations

import ipaddress
import re

from .errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kKmMgGtT]?)(i?[bB])?\s*$")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


_COMPOUND = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$")
_COMPOUND_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str | float | int) -> float:
    """Seconds in `text`: a bare number is seconds; units ms, s, m, h, d, also combined
    (1h30m, 24h39m35s)."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ConfigError(f"not a duration: {text!r} (try 250ms, 30s, 20m, 1h)")
    if isinstance(text, int | float):
        return float(text)
    compact = text.strip()
    if _COMPOUND.match(compact):
        return sum(float(n) * _DURATION_UNITS[u] for n, u in _COMPOUND_PART.findall(compact))
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(f"not a duration: {text!r} (try 250ms, 30s, 20m, 1h, 1h30m)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]


def parse_size(text: str | int) -> int:
    """Bytes in `text`: a bare number is bytes; k, M, G, T are powers of 1024."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"not a size: {text!r} (try 512, 64k, 2M, 1G)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


_ADDRESS = re.compile(r"^(?:(https?)://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})/?\Z")


def parse_address(text: str) -> tuple[str, str, int]:
    """(scheme, host, port) of "HOST:PORT" or "http(s)://HOST:PORT"; http by default."""
    m = _ADDRESS.match(text.strip()) if isinstance(text, str) else None
    if m is None or not 0 < int(m.group(3)) < 65536:
        raise ConfigError(f"not an address: {text!r} (try 127.0.0.1:5000 or "
                          "https://registry.local:5000)")
    return m.group(1) or "http", m.group(2), int(m.group(3))


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_duration(seconds: float) -> str:
    s = abs(seconds)
    sign = "-" if seconds < 0 else ""
    if s < 1:
        return f"{sign}{s * 1000:.0f}ms"
    if s < 120:
        return f"{sign}{s:.1f}s"
    if s < 7200:
        return f"{sign}{s / 60:.0f}m"
    if s < 172800:
        return f"{sign}{s / 3600:.1f}h"
    return f"{sign}{s / 86400:.1f}d"


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
