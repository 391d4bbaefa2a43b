"""Shared bundles (issue 11, part 3): one bundle addressed to several outposts, packed and
kept once at Earth, its files hard-linked into each outbox, each outpost's custody its own.

Earth and three outposts run in this process on a fake clock; the links between them are
`helpers.Link` (files moved, dropped or duplicated on the test's say): the far planets are
the simulated part, the nodes' code, SQLite state and files are real.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from outpost.home import Home, load_home
from outpost.node.context import open_node
from outpost.node.daemon import Daemon
from outpost.node.sender import custody_id
from outpost.node.setup import init_home, trust_peer
from outpost.store.spool import bundle_files, read_reason
from outpost.store.state import DELIVERED, SENDING

from .helpers import FakeClock, Link

OUTPOSTS = ("mars", "moon", "venus")


class Fleet:
    def __init__(self, root: Path) -> None:
        self.clock = FakeClock()
        settings = {"rtt": "1s", "ack_delay": "0s", "fragment_size": "64k"}
        earth = init_home(root / "earth", "earth", "earth", settings)
        homes: dict[str, Home] = {}
        for name in OUTPOSTS:
            h = init_home(root / name, "outpost", name, settings)
            with open(h.path / "node.toml", "a") as f:
                f.write('\n[outpost]\nsync_on_start = false\nsync_interval = "0s"\n')
            trust_peer(earth, h.path)
            trust_peer(h, earth.path)
            homes[name] = load_home(h.path)
        self.earth_home = load_home(earth.path)
        self.earth = Daemon(open_node(self.earth_home, self.clock))
        self.outposts = {n: Daemon(open_node(h, self.clock)) for n, h in homes.items()}
        self.links = {n: Link(self.earth_home, h) for n, h in homes.items()}

    def step(self) -> None:
        for d in (self.earth, *self.outposts.values()):
            d.tick()
            d.rescan()
            d.tick()
        for link in self.links.values():
            link.carry()
        self.clock.advance(0.1)

    def run(self, until: object, steps: int = 300) -> None:
        for _ in range(steps):
            if until():  # type: ignore[operator]
                return
            self.step()
        raise AssertionError("condition not reached")

    def state(self, msg_id: str) -> str | None:
        m = self.earth.node.state.message(msg_id)
        return None if m is None else m.state

    def received(self, name: str) -> dict[str, bytes]:
        folder = self.outposts[name].node.home.received / "earth"
        return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path)


def test_a_shared_bundle_is_packed_once_and_its_files_linked_into_each_outbox(
        fleet: Fleet) -> None:
    data = os.urandom(600_000)
    msgs = fleet.earth.sender.submit_to(["mars", "moon"], "file", io.BytesIO(data),
                                        meta={"name": "f.bin"})
    assert [m.peer for m in msgs] == ["mars", "moon"] and msgs[0].path == msgs[1].path
    assert len(list(fleet.earth_home.custody.glob("*.opb"))) == 1
    mars, moon = (bundle_files(fleet.earth_home.outbox(n)) for n in ("mars", "moon"))
    assert len(mars) == msgs[0].units > 5 and [p.name for p in mars] == [p.name for p in moon]
    for a, b in zip(mars, moon, strict=True):
        assert a.stat().st_ino == b.stat().st_ino  # one file, two names
    fleet.run(lambda: all(fleet.state(m.id) == DELIVERED for m in msgs))
    assert fleet.received("mars") == fleet.received("moon") == {"f.bin": data}
    assert fleet.received("venus") == {}
    assert not Path(msgs[0].path).exists()
    assert not list(fleet.earth_home.custody.iterdir())  # nor its unit files


def test_each_outposts_custody_is_its_own(fleet: Fleet) -> None:
    """An outpost that hears nothing keeps its copy in custody, and its resends come from
    the shared files, after the other outpost's ack released its own custody."""
    fleet.links["moon"].fate = lambda _p: "drop"
    data = os.urandom(300_000)
    mars, moon = fleet.earth.sender.submit_to(["mars", "moon"], "file", io.BytesIO(data),
                                              meta={"name": "g.bin"})
    fleet.run(lambda: fleet.state(mars.id) == DELIVERED)
    assert fleet.state(moon.id) == SENDING and Path(moon.path).exists()
    fleet.links["moon"].fate = lambda _p: "duplicate"
    fleet.run(lambda: fleet.state(moon.id) == DELIVERED, steps=2000)
    assert fleet.received("moon") == {"g.bin": data}
    assert not Path(moon.path).exists()


def test_a_shared_bundle_is_refused_by_an_outpost_it_does_not_name(fleet: Fleet) -> None:
    fleet.earth.sender.submit_to(["mars", "moon"], "file", io.BytesIO(b"for two"),
                                 meta={"name": "h.txt"})
    stray = bundle_files(fleet.earth_home.outbox("mars"))[0]
    copy = fleet.outposts["venus"].node.home.inbox / stray.name
    shutil.copy(stray, copy)
    os.utime(copy, (0, 0))  # old enough not to look half-written
    fleet.outposts["venus"].rescan()
    quarantined = bundle_files(fleet.outposts["venus"].node.home.quarantine)
    assert len(quarantined) == 1
    rec = read_reason(quarantined[0])
    assert rec is not None and rec.reason == "misaddressed"
    assert fleet.received("venus") == {}


def test_custody_ids_of_a_shared_bundle_name_the_peer() -> None:
    assert custody_id("mars", "m" + "1" * 31) == "m" + "1" * 31 + "@mars"
    assert custody_id("mars", "m" + "1" * 31 + ".7") == "m" + "1" * 31 + "@mars.7"
    assert custody_id("mars", "0" * 32 + ".7") == "0" * 32 + ".7"  # not shared: as it is
