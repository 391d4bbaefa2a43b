"""Creating a node home and trusting peers."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..codec import Limits, open_verified, public_key, recipients, spooled_start
from ..errors import BundleError, ConfigError
from ..fsutil import atomic_write_bytes, open_regular
from ..home import (
    ROLES,
    Home,
    OutpostSettings,
    Settings,
    format_pubkey,
    is_home,
    load_home,
    read_pubkey_file,
    role_phrase,
    valid_name,
    write_node_toml,
)
from ..release import git
from ..release.template import template_sources
from ..store.state import State
from .sender import custody_message


def init_home(path: Path, role: str, name: str | None = None,
              delivery: dict[str, str] | None = None, *, template: Path | None = None,
              registry: str | None = None, docker: str | None = None,
              registry_tls: bool = False, tls_names: Sequence[str] = ()) -> Home:
    """Create a home (idempotent: an existing one is loaded and checked, never overwritten).

    An Earth home gets its config repo, seeded from `template` (default: the project's
    example); an outpost home records its registry and Docker daemon if given, and with
    `registry_tls` gets a CA of its own and a certificate for its registry (HOME/tls/, for
    `tls_names` besides loopback and the registry's host; docs/registry-tls.md). Everything
    is checked before anything is written, node.toml (what makes a folder a home) is
    written last, and a failure removes what this call made: `init` either completes or
    leaves nothing behind.
    """
    path = Path(path).resolve()
    if is_home(path):
        home = load_home(path)
        if home.role != role:
            raise ConfigError(f"{path} is already {role_phrase(home.role)} home, not "
                              f"{role_phrase(role)} one")
        if registry_tls and home.outpost.registry_ca is None:
            raise ConfigError(f"{path} is already a home: --registry-tls only applies when "
                              "one is created (docs/registry-tls.md)")
        return home
    tables = _checked_tables(role, name, delivery, registry, docker)
    tls_files = _checked_tls(path, role, name or role, registry, registry_tls, tls_names,
                             tables)
    sources = template_sources(template) if role == "earth" else []
    before = set(os.listdir(path)) if path.is_dir() else None
    try:
        _create(path, name or role, role, tables, sources, tls_files)
    except BaseException:
        _remove_new(path, before)
        raise
    return load_home(path)


def _checked_tables(role: str, name: str | None, delivery: dict[str, str] | None,
                    registry: str | None, docker: str | None) -> dict[str, dict[str, str]]:
    if role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}")
    if not valid_name(name or role):
        raise ConfigError(f"node name {name!r}: use ASCII letters, digits, - and _ "
                          "(64 at most)")
    tables = {"delivery": dict(delivery or {})}
    Settings.from_table(tables["delivery"], "--set")
    if role == "earth":
        tables["earth"] = {"config": "config"}
    else:
        outpost = {k: v for k, v in (("registry", registry), ("docker", docker)) if v}
        OutpostSettings.from_table(outpost, "--registry/--docker")
        tables["outpost"] = outpost
    return tables


def _checked_tls(path: Path, role: str, name: str, registry: str | None, wanted: bool,
                 names: Sequence[str], tables: dict[str, dict[str, str]]) -> dict[str, bytes]:
    """The registry's TLS files to write (none unless `wanted`), made up front so init still
    writes nothing when a name is wrong; records registry_ca in `tables`."""
    if not wanted:
        if names:
            raise ConfigError("--tls-name needs --registry-tls")
        return {}
    if role != "outpost":
        raise ConfigError("--registry-tls is for an outpost home: the registry it secures "
                          "is the outpost's")
    from .. import tls  # cryptography costs every command 60 ms: only when asked for

    tls.refuse_existing(path / tls.TLS_DIR)
    files = tls.create_registry_tls(name, tls.registry_tls_names(registry, names))
    tables["outpost"]["registry_ca"] = f"{tls.TLS_DIR}/{tls.CA_CERT}"
    return files


def _create(path: Path, name: str, role: str, tables: dict[str, dict[str, str]],
            sources: list[tuple[Path, str]], tls_files: Mapping[str, bytes]) -> None:
    for sub in ("inbox", "outbox", "quarantine", "received", "spool", "keys"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(path / "keys", 0o700)
    seed = os.urandom(32)
    atomic_write_bytes(path / "keys" / "node.key", (seed.hex() + "\n").encode(), mode=0o600)
    atomic_write_bytes(path / "keys" / "node.pub", format_pubkey(name, public_key(seed)).encode())
    if role == "earth":
        git.seed_config_repo(path / "config", sources)
    if tls_files:
        from .. import tls

        tls.write_registry_tls(path / tls.TLS_DIR, tls_files)
    State(path / "state.db").close()
    write_node_toml(path, name, role, tables)


def _remove_new(path: Path, before: set[str] | None) -> None:
    """Undo a failed init: what it added to `path`, or `path` itself if it made it."""
    if before is None:
        shutil.rmtree(path, ignore_errors=True)
        return
    for entry in set(os.listdir(path)) - before if path.is_dir() else ():
        target = path / entry
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)


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
    # a copy beside our own key, so `repair` can restore trust if the state is lost
    atomic_write_bytes(peer_key_file(home, name), format_pubkey(name, key).encode())
    return name


def peer_key_file(home: Home, name: str) -> Path:
    folder = home.path / "keys" / "peers"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.pub"


def repair_home(home: Home, now: float) -> dict[str, Any]:
    """Rebuild a lost or damaged state from what the home still holds: the peers from
    keys/peers/, the messages in custody from their custody copies (each is sent again from
    the start; the peer drops what it already has... as long as it still remembers it).
    A damaged database is kept aside. What was delivered here (the ids that stop
    duplicates) cannot be rebuilt: a bundle the peer resends may be delivered once more."""
    db = home.state_db
    kept = None
    if db.exists() and db.stat().st_size:
        kept = db.with_name(f"state.db.damaged-{int(now)}")
        for suffix in ("", "-wal", "-shm"):
            src = db.with_name(db.name + suffix)
            if src.exists():
                os.replace(src, kept.with_name(kept.name + suffix))
    state = State(db)
    try:
        peers = _restore_peers(home, state, now)
        messages, skipped = _restore_custody(home, state, now)
    finally:
        state.close()
    return {"state": str(db), "kept_aside": str(kept) if kept else None, "peers": peers,
            "custody": messages, "custody_skipped": skipped}


def _restore_peers(home: Home, state: State, now: float) -> list[str]:
    names = []
    for pub in sorted((home.path / "keys" / "peers").glob("*.pub")):
        name, key = read_pubkey_file(pub)
        state.add_peer(name, key, now)
        names.append(name)
    return names


def _restore_custody(home: Home, state: State, now: float) -> tuple[list[str], list[str]]:
    restored, skipped = [], []
    peers = state.keyring()
    size = home.settings.fragment_size
    for path in sorted(home.custody.glob("*.opb")):
        try:
            with open_regular(path) as f:
                start = spooled_start(f)
                header = open_verified(f, {home.name: home.public_key()}, Limits())
        except (BundleError, OSError) as e:
            skipped.append(f"{path.name}: {e}")
            continue
        known = [p for p in recipients(header.dst) if p in peers]
        if not known or header.expires <= now:
            skipped.append(f"{path.name}: " + ("expired" if header.expires <= now else
                                               f"for {header.dst}, not a known peer"))
            continue
        for peer in known:
            state.add_message(*custody_message(header, path, size, {"repaired": True},
                                               start=start, peer=peer))
        restored.append(header.id)
    return restored, skipped
