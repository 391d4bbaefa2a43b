"""Creating a node home and trusting peers."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..codec import public_key
from ..errors import ConfigError
from ..fsutil import atomic_write_bytes
from ..home import (
    ROLES,
    Home,
    format_pubkey,
    is_home,
    load_home,
    read_pubkey_file,
    valid_name,
    write_node_toml,
)
from ..release import git
from ..release.template import template_sources
from ..store.state import State


def init_home(path: Path, role: str, name: str | None = None,
              delivery: dict[str, str] | None = None, *, template: Path | None = None,
              registry: str | None = None, docker: str | None = None) -> Home:
    """Create a home (idempotent: an existing one is loaded and checked, never overwritten).

    An Earth home gets its config repo, seeded from `template` (default: the project's
    example); an outpost home records its registry and Docker daemon if given.
    """
    path = Path(path).resolve()
    if is_home(path):
        home = load_home(path)
        if home.role != role:
            raise ConfigError(f"{path} is already a {home.role} home, not {role}")
        return home
    if role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}")
    name = name or role
    if not valid_name(name):
        raise ConfigError(f"node name {name!r}: use letters, digits, - and _")
    for sub in ("inbox", "outbox", "quarantine", "received", "spool", "keys"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(path / "keys", 0o700)
    seed = os.urandom(32)
    atomic_write_bytes(path / "keys" / "node.key", (seed.hex() + "\n").encode(), mode=0o600)
    atomic_write_bytes(path / "keys" / "node.pub", format_pubkey(name, public_key(seed)).encode())
    tables = {"delivery": delivery or {}}
    if role == "earth":
        git.seed_config_repo(path / "config", template_sources(template))
        tables["earth"] = {"config": "config"}
    else:
        outpost = {"registry": registry, "docker": docker}
        tables["outpost"] = {k: v for k, v in outpost.items() if v}
    write_node_toml(path, name, role, tables)
    home = load_home(path)
    State(home.state_db).close()
    return home


def trust_peer(home: Home, peer: Path) -> str:
    """Trust the node whose home or public-key file is `peer`; returns its name."""
    peer = Path(peer)
    pub = peer / "keys" / "node.pub" if peer.is_dir() else peer
    name, key = read_pubkey_file(pub)
    if name == home.name:
        raise ConfigError(f"{pub} is this node's own key ({name})")
    state = State(home.state_db)
    try:
        state.add_peer(name, key, time.time())
    finally:
        state.close()
    home.outbox(name).mkdir(parents=True, exist_ok=True)
    return name
