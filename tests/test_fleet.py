"""A fleet's channels and the rule a rollout follows (pure: outpost/release/fleet.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from outpost.errors import ConfigError
from outpost.fleet import DONE, HALTED, ROLLING, Fleet, Member, advance
from outpost.home import load_home
from outpost.node.setup import init_home

FLEET = Fleet(("canary", "beta", "stable"),
              (Member("ship-1", "canary", ("atlantic",)), Member("ship-2", "beta"),
               Member("ship-3", "stable", ("atlantic", "north"))))
PEERS = ["ship-1", "ship-2", "ship-3", "ship-4"]


def test_outposts_not_listed_are_in_the_last_channel_and_a_stage_is_a_channel() -> None:
    assert FLEET.channel_of("ship-4") == "stable"
    assert FLEET.stages(PEERS) == [("canary", ["ship-1"]), ("beta", ["ship-2"]),
                                   ("stable", ["ship-3", "ship-4"])]
    assert FLEET.stages(["ship-2", "ship-4"]) == [("canary", []), ("beta", ["ship-2"]),
                                                  ("stable", ["ship-4"])]
    assert Fleet().stages(PEERS) == [("stable", PEERS)]


def test_select_by_name_group_and_channel() -> None:
    assert FLEET.select(PEERS, groups=["atlantic"]) == ["ship-1", "ship-3"]
    assert FLEET.select(PEERS, channels=["stable"], names=["ship-2"]) == [
        "ship-2", "ship-3", "ship-4"]
    for bad in ({"names": ["ship-9"]}, {"groups": ["pacific"]}, {"channels": ["nightly"]}):
        with pytest.raises(ConfigError):
            FLEET.select(PEERS, **bad)  # type: ignore[arg-type]


def test_a_fleet_refuses_unknown_channels_and_twice_named_outposts() -> None:
    with pytest.raises(ConfigError, match="not one of"):
        Fleet(("stable",), (Member("a", "canary"),))
    with pytest.raises(ConfigError, match="twice"):
        Fleet(("stable",), (Member("a", "stable"), Member("a", "stable")))
    with pytest.raises(ConfigError, match="once"):
        Fleet(("a", "a"))


def test_a_rollout_moves_on_once_every_outpost_of_a_stage_applied() -> None:
    stages = FLEET.stages(PEERS)
    outcomes: dict[str, str] = {}
    assert advance(stages, 0, outcomes.get) == advance(stages, 0, lambda _p: None)
    assert advance(stages, 0, outcomes.get).state == ROLLING
    outcomes["ship-1"] = "applied"
    step = advance(stages, 0, outcomes.get)
    assert (step.stage, step.state, step.send) == (1, ROLLING, ["ship-2"])
    outcomes["ship-2"] = "applied"
    assert advance(stages, 1, outcomes.get).send == ["ship-3", "ship-4"]
    outcomes["ship-3"] = "applied"
    assert advance(stages, 2, outcomes.get).state == ROLLING  # ship-4 has not said yet
    outcomes["ship-4"] = "applied"
    assert advance(stages, 2, outcomes.get).state == DONE


def test_a_channel_without_outposts_is_passed_at_once() -> None:
    stages = FLEET.stages(["ship-2"])
    step = advance(stages, 0, lambda _p: None)
    assert (step.stage, step.state, step.send) == (1, ROLLING, ["ship-2"])


def test_a_failure_in_the_stage_halts_the_rollout_and_names_who() -> None:
    stages = FLEET.stages(PEERS)
    step = advance(stages, 0, {"ship-1": "rolled-back"}.get)
    assert step.state == HALTED and step.send == [] and "ship-1" in step.why


def _earth(tmp_path: Path, extra: str) -> Path:
    home = init_home(tmp_path / "earth", "earth", "earth")
    toml = home.path / "node.toml"
    toml.write_text(toml.read_text().replace(
        "[earth]\n", '[earth]\nchannels = ["canary", "stable"]\n', 1) + extra)
    return home.path


def test_earth_reads_its_channels_and_outposts_from_node_toml(tmp_path: Path) -> None:
    path = _earth(tmp_path, '\n[[outposts]]\nname = "ship-1"\nchannel = "canary"\n'
                            'groups = ["atlantic"]\n\n[[outposts]]\nname = "ship-2"\n')
    fleet = load_home(path).fleet
    assert fleet.channels == ("canary", "stable")
    assert fleet.members == (Member("ship-1", "canary", ("atlantic",)),
                             Member("ship-2", "stable"))


@pytest.mark.parametrize(("extra", "error"), [
    ('\n[[outposts]]\nname = "ship-1"\nchannel = "nightly"\n', "not one of"),
    ('\n[[outposts]]\nname = "ship 1"\n', "name must be"),
    ('\n[[outposts]]\nname = "ship-1"\nspeed = 3\n', "unknown setting 'speed'"),
    ('\n[[outposts]]\nname = "ship-1"\ngroups = "atlantic"\n', "groups must be a list"),
    ('\n[[outposts]]\nname = "a"\n\n[[outposts]]\nname = "a"\n', "twice"),
])
def test_a_wrong_outposts_entry_is_refused_with_the_file_named(
        tmp_path: Path, extra: str, error: str) -> None:
    path = _earth(tmp_path, extra)
    with pytest.raises(ConfigError, match=error) as e:
        load_home(path)
    assert "node.toml" in str(e.value)


def test_outposts_belong_in_earths_node_toml_only(tmp_path: Path) -> None:
    home = init_home(tmp_path / "mars", "outpost", "mars")
    with open(home.path / "node.toml", "a") as f:
        f.write('\n[[outposts]]\nname = "x"\n')
    with pytest.raises(ConfigError, match=r"Earth's node\.toml"):
        load_home(home.path)
