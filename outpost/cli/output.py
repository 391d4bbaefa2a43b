"""Printing for people (tables, one-line errors) and for scripts (--json)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ..units import format_duration, format_size


def emit_json(obj: Any) -> None:
    """Indented for a person at a terminal; compact down a pipe, where the encoder runs in
    C (a fleet's status is megabytes: indenting it cost 0.5 s of 0.7)."""
    indent = 2 if sys.stdout.isatty() else None
    click.echo(json.dumps(obj, indent=indent, default=str))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def age(seconds: float) -> str:
    return format_duration(seconds)


def size(n: float) -> str:
    return format_size(n)


def window_text(w: dict[str, Any] | None, now: float) -> str:
    """A peer's contact window for people: "up, 4m left", "down, up in 2h for 10m"."""
    if w is None:
        return "no plan"
    if w["up"]:
        return "up, always" if w["until"] is None else f"up, {age(w['until'] - now)} left"
    if w["next_start"] is None:
        return "down, no window ahead"
    length = "" if w["next_end"] is None else f" for {age(w['next_end'] - w['next_start'])}"
    return f"down, up in {age(w['next_start'] - now)}{length}"


class _Formatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__("%(asctime)s " + node + " %(levelname)s %(message)s",
                         "%Y-%m-%dT%H:%M:%S")


FIELDS = ("bundle", "kind", "peer", "file", "reason")  # what log calls add as `extra`


class _JsonFormatter(logging.Formatter):
    """One JSON object a line: time, node, level, message, and the bundle's fields."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "node": self.node, "level": record.levelname.lower(),
            "message": record.getMessage()}
        out.update({k: getattr(record, k) for k in FIELDS if getattr(record, k, None)})
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(node: str, logfile: Path | None, verbose: bool,
                  fmt: str = "text") -> None:
    root = logging.getLogger("outpost")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.handlers.clear()
    formatter = _JsonFormatter(node) if fmt == "json" else _Formatter(node)
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(formatter)
    root.addHandler(err)
    if logfile is not None:
        f = logging.FileHandler(logfile)
        f.setFormatter(formatter)
        root.addHandler(f)
