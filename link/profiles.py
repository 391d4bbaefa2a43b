"""Link profiles: named sets of link-sim flags, built in or read from a TOML file.

A TOML profile uses the flags' names as keys (dashes or underscores):

    description = "our ground station"
    latency = "280ms"
    jitter = "30ms"
    loss = 0.01
    bandwidth = "2M"
    contact_plan = "windows.txt"      # relative to this file
    # contact_plan_text = '''0s 10m
    # repeat 90m'''                   # or the plan inline

`resolve()` merges a profile with the flags given on the command line (flags win) and
checks every value, so the simulator only ever sees a valid `LinkConfig`.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from outpost.contact import ContactPlan, ContactPlanError, parse_contact_plan, parse_plan_duration
from outpost.errors import OutpostError
from outpost.units import parse_size

from .model import LinkParams

DURATION_KEYS = ("latency", "jitter")
PROBABILITY_KEYS = ("loss", "duplicate", "corrupt", "reorder")
OTHER_KEYS = ("bandwidth", "contact_plan", "contact_plan_text", "seed", "description")
PROFILE_KEYS = DURATION_KEYS + PROBABILITY_KEYS + OTHER_KEYS
UNLIMITED = ("unlimited", "none", "inf", "0")
NO_PLAN = ("none", "always", "")


class ProfileError(ValueError):
    """A profile or a flag value is invalid; the message says which and why."""


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    values: dict[str, Any]  # raw values as written, keyed by PROFILE_KEYS
    base_dir: Path | None = None  # where a relative contact_plan path is looked up


@dataclass(frozen=True)
class LinkConfig:
    """Everything that shapes the link, validated."""

    params: LinkParams = field(default_factory=LinkParams)
    plan: ContactPlan | None = None
    plan_source: str | None = None  # the file or profile the plan came from
    seed: int | None = None
    profile: str | None = None


# One-way figures. Sources of the orders of magnitude: a GEO hop is ~36,000 km up and down
# (~240-280 ms with ground segments); the Moon is ~1.28 light-seconds away; Mars is 3-22
# light-minutes away (12 m is a middle value) and is reached through relay orbiters passing
# a few times per sol; Antarctic stations see polar-orbiting relay satellites only during
# passes of a few minutes every ~100 minutes.
BUILTIN: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "lan",
            "local network: fast, clean, instant",
            {"latency": "1ms", "jitter": "1ms", "bandwidth": "100M"},
        ),
        Profile(
            "geo-satellite",
            "geostationary satellite hop (VSAT, ship): ~280 ms, small loss",
            {
                "latency": "280ms",
                "jitter": "30ms",
                "loss": 0.01,
                "duplicate": 0.001,
                "corrupt": 0.001,
                "reorder": 0.01,
                "bandwidth": "2M",
            },
        ),
        Profile(
            "antarctic",
            "polar station through LEO relay passes: 12 min windows every 100 min",
            {
                "latency": "250ms",
                "jitter": "150ms",
                "loss": 0.02,
                "duplicate": 0.005,
                "corrupt": 0.002,
                "reorder": 0.02,
                "bandwidth": "256k",
                "contact_plan_text": "0s 12m\nrepeat 100m\n",
            },
        ),
        Profile(
            "moon",
            "Earth-Moon direct link: 1.3 s light time, continuous contact",
            {
                "latency": "1.3s",
                "jitter": "50ms",
                "loss": 0.005,
                "duplicate": 0.001,
                "corrupt": 0.001,
                "reorder": 0.005,
                "bandwidth": "1M",
            },
        ),
        Profile(
            "mars",
            "Mars base via relay orbiters: 12 min light time, two 15 min passes per sol",
            {
                "latency": "12m",
                "jitter": "30s",
                "loss": 0.02,
                "duplicate": 0.002,
                "corrupt": 0.002,
                "reorder": 0.01,
                "bandwidth": "32k",
                # A sol is 24h39m35s; passes about half a sol apart.
                "contact_plan_text": "0s +15m\n12h20m +15m\nrepeat 24h39m35s\n",
            },
        ),
    )
}


def load_profile(name_or_path: str) -> Profile:
    """A built-in profile by name, or a TOML profile file."""
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        known = ", ".join(BUILTIN)
        raise ProfileError(f"no profile {name_or_path!r}: not a built-in ({known}) nor a file")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ProfileError(f"cannot read profile {path}: {e}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in PROFILE_KEYS:
            raise ProfileError(f"{path}: unknown key {key!r} (known: {', '.join(PROFILE_KEYS)})")
        values[name] = value
    if "contact_plan" in values and "contact_plan_text" in values:
        raise ProfileError(f"{path}: give contact_plan or contact_plan_text, not both")
    description = str(values.pop("description", ""))
    return Profile(path.stem, description, values, base_dir=path.resolve().parent)


def resolve(profile: Profile | None, flags: dict[str, Any]) -> LinkConfig:
    """Merge `profile` with command-line `flags` (None means "not given"), then validate.

    A `contact_plan` flag is a path (or 'none' to drop the profile's plan); `bandwidth`
    accepts 'unlimited' (or 0) to lift the profile's limit.
    """
    merged: dict[str, Any] = dict(profile.values) if profile else {}
    base_dir = profile.base_dir if profile else None
    explicit = {k: v for k, v in flags.items() if v is not None}
    if "contact_plan" in explicit:
        merged.pop("contact_plan_text", None)
        base_dir = None  # a path typed on the command line is relative to the cwd
    merged.update(explicit)

    params = LinkParams(
        latency=_duration(merged, "latency"),
        jitter=_duration(merged, "jitter"),
        loss=_probability(merged, "loss"),
        duplicate=_probability(merged, "duplicate"),
        corrupt=_probability(merged, "corrupt"),
        reorder=_probability(merged, "reorder"),
        bandwidth=_bandwidth(merged.get("bandwidth")),
    )
    problems = params.problems()
    if problems:
        raise ProfileError("; ".join(problems))
    plan, source = _plan(merged, base_dir, profile)
    seed = merged.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ProfileError(f"seed must be an integer (got {seed!r})")
    name = profile.name if profile else None
    return LinkConfig(params=params, plan=plan, plan_source=source, seed=seed, profile=name)


def _duration(values: dict[str, Any], key: str) -> float:
    raw = values.get(key, 0)
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ProfileError(f"{key} must be a duration like 250ms, 30s, 20m (got {raw!r})")
    try:
        seconds = float(raw) if isinstance(raw, int | float) else parse_plan_duration(raw)
    except ValueError as e:
        raise ProfileError(f"{key}: {e}") from None
    return seconds


def _probability(values: dict[str, Any], key: str) -> float:
    raw = values.get(key, 0.0)
    try:
        p = float(raw)
    except (TypeError, ValueError):
        raise ProfileError(f"{key} must be a probability between 0 and 1 (got {raw!r})") from None
    if math.isnan(p):
        raise ProfileError(f"{key} must be a probability between 0 and 1 (got {raw!r})")
    return p


def _bandwidth(raw: Any) -> int | None:
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in UNLIMITED):
        return None
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise ProfileError(f"bandwidth must be bytes per second like 64k or 2M (got {raw!r})")
    try:
        value = parse_size(raw)
    except OutpostError as e:
        raise ProfileError(f"bandwidth: {e}") from None
    return None if value == 0 else value


def _plan(
    values: dict[str, Any], base_dir: Path | None, profile: Profile | None
) -> tuple[ContactPlan | None, str | None]:
    text = values.get("contact_plan_text")
    if text is not None:
        source = f"profile {profile.name}" if profile else "contact_plan_text"
        return _parse(str(text), source), source
    raw = values.get("contact_plan")
    if raw is None or str(raw).strip().lower() in NO_PLAN:
        return None, None
    path = Path(str(raw)).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    try:
        content = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"cannot read contact plan {path}: {e}") from None
    return _parse(content, str(path)), str(path)


def _parse(text: str, source: str) -> ContactPlan:
    try:
        return parse_contact_plan(text, source)
    except ContactPlanError as e:
        raise ProfileError(str(e)) from None


def describe(profile: Profile) -> dict[str, str]:
    """One row of the `link-sim profiles` table."""
    v = profile.values
    plan = v.get("contact_plan_text") or v.get("contact_plan") or ""
    windows = "; ".join(line.strip() for line in str(plan).splitlines() if line.strip())
    return {
        "name": profile.name,
        "latency": str(v.get("latency", "0")),
        "jitter": str(v.get("jitter", "0")),
        "loss": str(v.get("loss", 0)),
        "duplicate": str(v.get("duplicate", 0)),
        "corrupt": str(v.get("corrupt", 0)),
        "reorder": str(v.get("reorder", 0)),
        "bandwidth": str(v.get("bandwidth", "unlimited")),
        "windows": windows or "always up",
        "description": profile.description,
    }
