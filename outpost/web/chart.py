"""Throughput over time as a small SVG (pure: rows in, markup out)."""

from __future__ import annotations

from html import escape
from typing import Any

from ..units import format_size

WIDTH, HEIGHT, PAD = 600, 160, 34
COLOURS = {"out": "#2b6cb0", "in": "#c05621"}


def traffic_svg(rows: list[dict[str, Any]], minutes: int, now: float) -> str:
    """Bytes per minute sent ("out") and received ("in"), all peers, the last `minutes`."""
    last = int(now // 60)
    first = last - minutes + 1
    per: dict[str, list[int]] = {d: [0] * minutes for d in COLOURS}
    for r in rows:
        i = int(r["minute"] // 60) - first
        if 0 <= i < minutes and r["dir"] in per:
            per[r["dir"]][i] += int(r["bytes"])
    top = max(1, *per["out"], *per["in"])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="throughput">',
             f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>',
             _axis(top, minutes)]
    for direction, values in per.items():
        parts.append(f'<polyline fill="none" stroke="{COLOURS[direction]}" stroke-width="2" '
                     f'points="{_points(values, top)}"><title>{direction}</title></polyline>')
    parts.append(_legend())
    parts.append("</svg>")
    return "\n".join(parts)


def _points(values: list[int], top: int) -> str:
    n = len(values)
    step = (WIDTH - 2 * PAD) / max(n - 1, 1)
    return " ".join(f"{PAD + i * step:.1f},{HEIGHT - PAD - v / top * (HEIGHT - 2 * PAD):.1f}"
                    for i, v in enumerate(values))


def _axis(top: int, minutes: int) -> str:
    y0, y1 = HEIGHT - PAD, PAD
    return (f'<line x1="{PAD}" y1="{y0}" x2="{WIDTH - PAD}" y2="{y0}" stroke="#999"/>'
            f'<line x1="{PAD}" y1="{y0}" x2="{PAD}" y2="{y1}" stroke="#999"/>'
            f'<text x="{PAD}" y="{y1 - 6}" font-size="11">'
            f'{escape(format_size(top))}/min</text>'
            f'<text x="{PAD}" y="{HEIGHT - 10}" font-size="11">{minutes} min ago</text>'
            f'<text x="{WIDTH - PAD}" y="{HEIGHT - 10}" font-size="11" '
            f'text-anchor="end">now</text>')


def _legend() -> str:
    x = WIDTH - PAD - 140
    return "".join(
        f'<rect x="{x + i * 70}" y="8" width="10" height="10" fill="{c}"/>'
        f'<text x="{x + i * 70 + 14}" y="17" font-size="11">{"sent" if d == "out" else "received"}'
        f"</text>" for i, (d, c) in enumerate(COLOURS.items()))
