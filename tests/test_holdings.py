"""Earth's record of what an outpost holds (outpost/store/releases.py)."""

from __future__ import annotations

from pathlib import Path

from outpost.store.releases import COMMIT, IMAGE, LAYER, ReleaseStore
from outpost.store.state import State


def test_a_sync_written_before_a_delivery_does_not_undo_it(tmp_path: Path) -> None:
    """Seen: the outpost's start-up sync, delayed on a lossy link, arrived after release v1
    was delivered and wiped it from the record, so v1 was sent again and v2 went whole."""
    store = ReleaseStore(State(tmp_path / "state.db"))
    store.hold("mars", LAYER, ["old-layer"], now=5.0)
    store.hold("mars", COMMIT, ["c1"], now=20.0)
    store.hold("mars", IMAGE, ["v1"], now=20.0)
    store.hold("mars", LAYER, ["v1-layer"], now=20.0)
    # written by the outpost at t=10 (it then held only "base"), handled at t=30
    store.replace_holdings("mars", "c0", ["base"], [], 30.0, as_of=10.0)
    assert store.holding("mars", LAYER) == {"base", "v1-layer"}  # old-layer: it says gone
    assert store.holding("mars", IMAGE) == {"v1"}
    assert store.commit_of("mars") == "c1", "an older commit must not replace a newer one"
    # a report written after everything we learned replaces it all
    store.replace_holdings("mars", "c1", ["base"], ["v1"], 40.0, as_of=35.0)
    assert store.holding("mars", LAYER) == {"base"}
