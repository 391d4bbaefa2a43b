"""A node's home directory: its name, keys, configuration and the folders the link uses.

    HOME/node.toml            name, role and settings (see docs/configuration.md)
    HOME/keys/node.key        Ed25519 private key (hex seed, mode 0600)
    HOME/keys/node.pub        public key: "outpost-ed25519 <base64> <name>"
    HOME/inbox/               bundles arrive here (any link writes here)
    HOME/outbox/<peer>/       bundles for <peer> wait here until the link takes them
    HOME/quarantine/          rejected bundles, each with <file>.reason.json
    HOME/received/<peer>/     files sent by hand with `outpost-node send`
    HOME/spool/               custody copies and reassembly (the node's own)
    HOME/state.db             SQLite state
"""

from __future__ import annotations

import base64
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .fsutil import atomic_write_bytes
from .units import parse_duration, parse_size

ROLES = ("earth", "outpost")
PUBKEY_PREFIX = "outpost-ed25519"


@dataclass(frozen=True)
class Settings:
    """Delivery settings from node.toml's [delivery] table; the defaults suit a lab link."""

    rtt: float = 10.0  # expected round trip before any is measured, seconds
    bandwidth: int = 0  # expected link bytes/s (0: unknown); widens timers for big bundles
    outbox_window: int = 64 * 1024 * 1024  # bytes per peer waiting in the outbox at once
    fragment_size: int = 1024 * 1024
    lifetime: float = 7 * 86400.0
    ack_delay: float = 0.2
    ack_batch: int = 256
    min_rto: float = 0.5
    max_rto: float = 0.0  # 0: 16 round trips, at least a minute
    backoff: float = 2.0
    rescan: float = 2.0
    zstd_level: int = 3
    max_bundle: int = 64 * 1024**3
    max_header: int = 64 * 1024
    quarantine_max: int = 1024**3

    @property
    def rto_cap(self) -> float:
        """The longest wait for an ack before resending (a dead peer's retries end here)."""
        return self.max_rto or max(60.0, 16 * self.rtt)

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> Settings:
        durations = {"rtt", "lifetime", "ack_delay", "min_rto", "max_rto", "rescan"}
        sizes = {"fragment_size", "max_bundle", "max_header", "quarantine_max", "bandwidth",
                 "outbox_window"}
        known = {f for f in cls.__dataclass_fields__}
        values: dict[str, Any] = {}
        for key, raw in table.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"unknown setting [delivery] {key}")
            if name in durations:
                values[name] = parse_duration(raw)
            elif name in sizes:
                values[name] = parse_size(raw)
            else:
                values[name] = type(getattr(cls, name))(raw)
        return cls(**values)


@dataclass(frozen=True)
class Home:
    path: Path
    name: str
    role: str
    settings: Settings = field(default_factory=Settings)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def inbox(self) -> Path:
        return self.path / "inbox"

    @property
    def quarantine(self) -> Path:
        return self.path / "quarantine"

    @property
    def received(self) -> Path:
        return self.path / "received"

    @property
    def spool(self) -> Path:
        return self.path / "spool"

    @property
    def state_db(self) -> Path:
        return self.path / "state.db"

    @property
    def key_file(self) -> Path:
        return self.path / "keys" / "node.key"

    @property
    def pub_file(self) -> Path:
        return self.path / "keys" / "node.pub"

    def outbox(self, peer: str) -> Path:
        return self.path / "outbox" / peer

    def signing_seed(self) -> bytes:
        try:
            return bytes.fromhex(self.key_file.read_text().strip())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read the node key {self.key_file}: {e}") from e

    def public_key(self) -> bytes:
        return read_pubkey_file(self.pub_file)[1]


def node_toml(path: Path) -> Path:
    return path / "node.toml"


def is_home(path: Path) -> bool:
    return node_toml(path).is_file()


def load_home(path: Path) -> Home:
    """Read HOME/node.toml; a clear ConfigError if it is missing or invalid."""
    path = Path(path).resolve()
    toml = node_toml(path)
    try:
        data = tomllib.loads(toml.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path} is not a node home (no node.toml); run `outpost-node init --home {path}`"
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read {toml}: {e}") from e
    name, role = data.get("name"), data.get("role")
    if not isinstance(name, str) or not valid_name(name):
        raise ConfigError(f"{toml}: name must be letters, digits, - or _ (got {name!r})")
    if role not in ROLES:
        raise ConfigError(f"{toml}: role must be one of {', '.join(ROLES)} (got {role!r})")
    settings = Settings.from_table(data.get("delivery", {}))
    return Home(path=path, name=name, role=role, settings=settings, raw=data)


def valid_name(name: str) -> bool:
    return bool(name) and len(name) <= 64 and all(c.isalnum() or c in "-_" for c in name)


def format_pubkey(name: str, key: bytes) -> str:
    return f"{PUBKEY_PREFIX} {base64.b64encode(key).decode()} {name}\n"


def read_pubkey_file(path: Path) -> tuple[str, bytes]:
    """(name, 32-byte key) from a node.pub file."""
    try:
        parts = path.read_text().split()
    except OSError as e:
        raise ConfigError(f"cannot read public key {path}: {e}") from e
    if len(parts) != 3 or parts[0] != PUBKEY_PREFIX:
        raise ConfigError(f"{path} is not an Outpost public key ({PUBKEY_PREFIX} KEY NAME)")
    try:
        key = base64.b64decode(parts[1], validate=True)
    except ValueError as e:
        raise ConfigError(f"{path}: key is not base64") from e
    if len(key) != 32 or not valid_name(parts[2]):
        raise ConfigError(f"{path}: key must be 32 bytes and the name plain")
    return parts[2], key


def write_node_toml(path: Path, name: str, role: str,
                    tables: dict[str, dict[str, str]]) -> None:
    lines = [
        "# Outpost node configuration (docs/configuration.md)",
        f'name = "{name}"',
        f'role = "{role}"',
    ]
    for table, values in tables.items():
        if values or table == "delivery":
            lines += ["", f"[{table}]", *(f'{k} = "{v}"' for k, v in values.items())]
    atomic_write_bytes(node_toml(path), ("\n".join(lines) + "\n").encode())
