"""Hostile files dropped into a running node's inbox (a real `outpost-node start` process)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from outpost.home import load_home
from outpost.node.context import open_node
from outpost.node.sender import Sender

from .helpers import hostile_set, make_pair
from .procs import cli, files_in, running, start_node, stop, wait_for


def test_each_bad_bundle_is_quarantined_with_its_reason_and_the_node_goes_on(
        tmp_path: Path) -> None:
    earth, mars = make_pair(tmp_path)
    node = start_node(mars.path, "outpost")
    with running(node):
        cases = hostile_set(earth.signing_seed(), os.urandom(32))
        for name, (data, _reason) in cases.items():
            (mars.inbox / f".{name}.part").write_bytes(data)
            os.replace(mars.inbox / f".{name}.part", mars.inbox / name)
        wait_for(lambda: len(files_in(mars.quarantine)) >= 2 * len(cases), 30,
                 "every bad bundle in quarantine")
        rows = cli("bundles", "ls", str(mars.quarantine))
        by_name = {r["file"].split("-", 1)[1]: r for r in rows}
        assert {n: r["quarantine_reason"] for n, r in by_name.items()} == {
            n: reason for n, (_d, reason) in cases.items()}
        assert by_name["stranger"]["signature"] == "unknown-key"
        assert by_name["unsigned"]["signature"] == "bad"
        log = (mars.path / "node.log").read_text()
        for name in cases:
            assert f"quarantined {name}:" in log
        assert node.poll() is None, "node died on bad input"

        # the node still delivers a good message
        sender = Sender(open_node(load_home(earth.path)))
        sender.submit("mars", "file", None, meta={"name": "empty.txt"})
        for f in files_in(earth.outbox("mars")):
            shutil.move(f, mars.inbox / f.name)
        wait_for(lambda: (mars.received / "earth" / "empty.txt").exists(), 15, "delivery")
        assert stop(node) == 0
