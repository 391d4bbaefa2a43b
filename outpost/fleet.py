"""A fleet of outposts at Earth: channels, groups, and the rule a rollout follows (pure).

Earth's node.toml names its outposts' channels in rollout order and puts each outpost in
one (an outpost not listed is in the last):

    [earth]
    channels = ["canary", "stable"]

    [[outposts]]
    name = "ship-1"
    channel = "canary"
    groups = ["atlantic"]

A plain `publish` starts a rollout: the release goes to the outposts of the first channel;
once every one of them reported it applied, to the next channel's; and so on (a channel
without outposts is passed at once). An outpost
of the channel being rolled out that reports the release failed or rolled back halts the
rollout there (the later channels never get it, until a person sends it on with `publish
--channel` or `--to`). No I/O here: the caller brings the reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .errors import ConfigError

ROLLING, DONE, HALTED = "rolling", "done", "halted"
FAILED_EVENTS = ("failed", "rolled-back", "release-refused")


@dataclass(frozen=True)
class Member:
    """One `[[outposts]]` entry."""

    name: str
    channel: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fleet:
    channels: tuple[str, ...] = ("stable",)
    members: tuple[Member, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.channels or len(set(self.channels)) != len(self.channels):
            raise ConfigError(f"[earth] channels must name each channel once "
                              f"(got {list(self.channels)})")
        seen: set[str] = set()
        for m in self.members:
            if m.name in seen:
                raise ConfigError(f"[[outposts]] names {m.name!r} twice")
            seen.add(m.name)
            if m.channel not in self.channels:
                raise ConfigError(f"[[outposts]] {m.name}: channel {m.channel!r} is not one "
                                  f"of [earth] channels ({', '.join(self.channels)})")

    def channel_of(self, peer: str) -> str:
        for m in self.members:
            if m.name == peer:
                return m.channel
        return self.channels[-1]

    def groups_of(self, peer: str) -> tuple[str, ...]:
        return next((m.groups for m in self.members if m.name == peer), ())

    def stages(self, peers: Iterable[str]) -> list[tuple[str, list[str]]]:
        """The rollout's stages over `peers` (the trusted outposts): each channel with its
        outposts, in the channels' order (stage i is channel i, with outposts or not)."""
        peers = sorted(peers)
        return [(c, [p for p in peers if self.channel_of(p) == c]) for c in self.channels]

    def select(self, peers: Iterable[str], *, names: Iterable[str] = (),
               groups: Iterable[str] = (), channels: Iterable[str] = ()) -> list[str]:
        """The trusted outposts a person named: by name, by group, by channel (ConfigError
        for a name, group or channel that matches none)."""
        peers = sorted(peers)
        chosen: list[str] = []
        for name in names:
            if name not in peers:
                raise ConfigError(f"{name!r} is not a trusted outpost")
            chosen.append(name)
        for group in groups:
            found = [p for p in peers if group in self.groups_of(p)]
            if not found:
                raise ConfigError(f"no trusted outpost is in group {group!r}")
            chosen += found
        for channel in channels:
            if channel not in self.channels:
                raise ConfigError(f"{channel!r} is not one of [earth] channels "
                                  f"({', '.join(self.channels)})")
            chosen += [p for p in peers if self.channel_of(p) == channel]
        return sorted(set(chosen))


@dataclass(frozen=True)
class Step:
    """What a rollout does next: `stage` is the index of the stage it is at after the step,
    `send` the outposts to send the release to now, `state` rolling, done or halted."""

    stage: int
    state: str
    send: list[str] = field(default_factory=list)
    why: str = ""


def advance(stages: list[tuple[str, list[str]]], stage: int,
            outcome: Callable[[str], str | None]) -> Step:
    """The next step of a rollout at `stage`, from each outpost's outcome for its release
    (`outcome(peer)`: "applied", one of FAILED_EVENTS, or None while it has not said). A
    stage without outposts is passed at once: call again while it sends no one."""
    if stage >= len(stages):
        return Step(stage, DONE)
    channel, members = stages[stage]
    for peer in members:
        event = outcome(peer)
        if event in FAILED_EVENTS:
            return Step(stage, HALTED, why=f"{peer} ({channel}) reported it {event}")
    if not all(outcome(p) == "applied" for p in members):
        return Step(stage, ROLLING)
    if stage + 1 >= len(stages):
        return Step(stage + 1, DONE)
    return Step(stage + 1, ROLLING, send=list(stages[stage + 1][1]))
