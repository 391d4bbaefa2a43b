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
import dataclasses
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from .codec.header import valid_node_name
from .contact import ContactPlanError, Schedule, parse_contact_plan, parse_iso_time
from .errors import ConfigError
from .fleet import Fleet, Member
from .fsutil import atomic_write_bytes
from .units import parse_address, parse_duration, parse_size

ROLES = ("earth", "outpost")
PUBKEY_PREFIX = "outpost-ed25519"
APPLY_MODES = ("auto", "manual")
FEC_MODES = ("auto", "on", "off")
T = TypeVar("T")


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
    clock_skew: float = 600.0  # how far a peer's clock may be off before its bundles expire
    # forward error correction (delivery/fec.py): repairs sized from the loss seen on the
    # link, starting from expected_loss; "auto" adds them where the round trip is at least
    # fec_min_rtt (a resend round costs more there than repairs), "on" always, "off" never
    fec: str = "auto"
    fec_min_rtt: float = 10.0
    expected_loss: float = 0.0
    fec_target: float = 0.995  # chance a group rebuilds with no resend
    fec_max: float = 1.0  # repairs at most this many times a group's data
    # when the link is up (docs/link-sim.md's format; relative to the home or absolute),
    # for every peer; relative windows count from contact_origin (an ISO-8601 time)
    contact_plan: str | None = None
    contact_origin: str | None = None

    def __post_init__(self) -> None:
        if self.fec not in FEC_MODES:
            raise ConfigError(f"fec must be one of {', '.join(FEC_MODES)} (got {self.fec!r})")
        if not 0.0 <= self.expected_loss < 1.0:
            raise ConfigError(f"expected_loss must be at least 0 and below 1 "
                              f"(got {self.expected_loss})")
        if not 0.0 < self.fec_target < 1.0:
            raise ConfigError(f"fec_target must be between 0 and 1 (got {self.fec_target})")
        if self.fec_max <= 0:
            raise ConfigError(f"fec_max must be positive (got {self.fec_max})")
        if self.contact_origin is not None:
            try:
                parse_iso_time(self.contact_origin)
            except ValueError as e:
                raise ConfigError(f"contact_origin: {e}") from None

    @property
    def rto_cap(self) -> float:
        """The longest wait for an ack before resending (a dead peer's retries end here)."""
        return self.max_rto or max(60.0, 16 * self.rtt)

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str = "[delivery]") -> Settings:
        return _typed(cls, table, where,
                      durations={"rtt", "lifetime", "ack_delay", "min_rto", "max_rto", "rescan",
                                 "clock_skew", "fec_min_rtt"},
                      sizes={"fragment_size", "max_bundle", "max_header", "quarantine_max",
                             "bandwidth", "outbox_window"})


@dataclass(frozen=True)
class EarthSettings:
    """node.toml's [earth] table."""

    config: str = "config"  # the config repo, relative to the home
    docker: str | None = None  # the Docker daemon images come from (default: DOCKER_HOST)
    # Terraform provider mirrors, ":"-separated (default: Terraform's own plugin folders)
    terraform_mirror: str | None = None
    terraform_platform: str = "linux_amd64"  # the outposts' os_arch
    channels: tuple[str, ...] = ("stable",)  # release channels in rollout order (fleet.py)
    # images from a registry (HOST:PORT, or https://HOST) instead of the Docker daemon
    source_registry: str | None = None
    source_auth: str | None = None  # a file: USER:PASSWORD, or a token (relative to the home)
    source_ca: str | None = None  # the CA the source registry's certificate is checked against
    layer_cache: int = 20 * 1024**3  # bytes of layers and packed parts kept for the fleet

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str = "[earth]") -> EarthSettings:
        return _typed(cls, table, where, sizes={"layer_cache"})


@dataclass(frozen=True)
class OutpostSettings:
    """node.toml's [outpost] table (docs/configuration.md)."""

    registry: str | None = None  # the outpost registry, host:port (default: OUTPOST_REGISTRY)
    # its CA (relative to the home, or absolute): set, the registry is spoken to over
    # HTTPS (docs/registry-tls.md); default: OUTPOST_REGISTRY_CA, else plain HTTP
    registry_ca: str | None = None
    docker: str | None = None  # the Docker daemon releases run on (default: DOCKER_HOST)
    sync_interval: float = 6 * 3600.0  # ask Earth for what is missing this often (0: never)
    sync_on_start: bool = True
    apply: str = "auto"  # auto: apply each release once ready; manual: `outpost-node apply`
    apply_attempts: int = 3  # runs of one interrupted apply before it is rolled back
    image_requests: int = 3  # requests to Earth for the images one apply lacks
    image_request_retry: float = 300.0  # ask again this long after Earth said it lacks one
    answer_timeout: float = 0.0  # ask again when nothing came (0: 4 round trips, >= 10 min)
    stop_timeout: float = 10.0  # a container's grace between SIGTERM and SIGKILL
    terraform: str = "terraform"  # the terraform applier's program (or tofu)
    terraform_lock_timeout: float = 300.0  # how long terraform waits for its state lock

    def __post_init__(self) -> None:
        if self.apply not in APPLY_MODES:
            raise ConfigError(f"apply must be one of {', '.join(APPLY_MODES)} "
                              f"(got {self.apply!r})")
        for name in ("apply_attempts", "image_requests"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be 1 or more")
        if self.registry is not None:
            parse_address(self.registry)
        if self.docker is not None and "://" not in self.docker:
            raise ConfigError(f"docker must be a URL such as unix:///var/run/docker.sock "
                              f"(got {self.docker!r})")

    def answer_wait(self, rtt: float) -> float:
        return self.answer_timeout or max(600.0, 4 * rtt)

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str = "[outpost]") -> OutpostSettings:
        return _typed(cls, table, where, durations={
            "sync_interval", "image_request_retry", "answer_timeout", "stop_timeout",
            "terraform_lock_timeout"})


@dataclass(frozen=True)
class Home:
    path: Path
    name: str
    role: str
    settings: Settings = field(default_factory=Settings)
    earth: EarthSettings = field(default_factory=EarthSettings)
    outpost: OutpostSettings = field(default_factory=OutpostSettings)
    fleet: Fleet = field(default_factory=Fleet)  # Earth: [earth] channels, [[outposts]]

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
    def custody(self) -> Path:
        return self.spool / "custody"

    @property
    def reasm(self) -> Path:
        return self.spool / "reasm"

    @property
    def staging(self) -> Path:
        return self.spool / "staging"

    @property
    def cache(self) -> Path:
        """Earth's layer cache (sources/cache.py), beside custody so a file can move in."""
        return self.spool / "cache"

    @property
    def config_repo(self) -> Path:
        """Earth's config repository."""
        return self.path / self.earth.config

    @property
    def mirror(self) -> Path:
        """The outpost's bare mirror of Earth's config repository."""
        return self.path / "config.git"

    @property
    def terraform(self) -> Path:
        """The terraform applier's own: providers (a filesystem mirror), state, CLI config."""
        return self.path / "terraform"

    @property
    def provider_mirror(self) -> Path:
        """The outpost's filesystem mirror of provider packages (unpacked layout)."""
        return self.terraform / "providers"

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

    def contact_schedule(self) -> Schedule | None:
        """When the link is up, from [delivery] contact_plan; None without a plan (as far
        as the node knows, then, the link is always up). Read each time: an operator may
        update the plan while the node runs."""
        s = self.settings
        if not s.contact_plan:
            return None
        path = self.path / s.contact_plan
        try:
            plan = parse_contact_plan(path.read_text(), str(path))
        except OSError as e:
            raise ConfigError(f"[delivery] contact_plan: cannot read {path}: "
                              f"{e.strerror or e}") from None
        except ContactPlanError as e:
            raise ConfigError(f"[delivery] contact_plan: {e}") from None
        if plan.uses_origin and s.contact_origin is None:
            raise ConfigError(f"{path} has windows relative to an origin: set [delivery] "
                              "contact_origin to the time they count from (ISO-8601; "
                              "link-sim's is \"origin\" in its --stats file)")
        return plan.bind(parse_iso_time(s.contact_origin) if s.contact_origin else 0.0)

    def signing_seed(self) -> bytes:
        try:
            return bytes.fromhex(self.key_file.read_text().strip())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read the node key {self.key_file}: {e}") from e

    def public_key(self) -> bytes:
        return read_pubkey_file(self.pub_file)[1]


def role_phrase(role: str) -> str:
    """"an Earth" / "an outpost", for messages about homes."""
    return "an Earth" if role == "earth" else "an outpost"


def node_toml(path: Path) -> Path:
    return path / "node.toml"


def is_home(path: Path) -> bool:
    return node_toml(path).is_file()


def load_home(path: Path) -> Home:
    """Read HOME/node.toml; a clear ConfigError naming the file and key if it is missing or
    invalid. The outpost's registry and Docker daemon default to OUTPOST_REGISTRY and
    OUTPOST_DOCKER from the environment."""
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
    unknown = sorted(set(data) - {"name", "role", "delivery", "earth", "outpost", "outposts"})
    if unknown:
        raise ConfigError(f"{toml}: unknown setting {unknown[0]!r} (known: name, role, "
                          "[delivery], [earth], [outpost], [[outposts]])")
    if "outposts" in data and role != "earth":
        raise ConfigError(f"{toml}: [[outposts]] belongs in Earth's node.toml")
    outpost = OutpostSettings.from_table(_table(data, "outpost", toml), f"{toml}: [outpost]")
    outpost = replace(outpost, registry=outpost.registry or os.environ.get("OUTPOST_REGISTRY"),
                      # the CA from the environment goes with the registry from it only
                      registry_ca=outpost.registry_ca or (None if outpost.registry else
                                                          os.environ.get("OUTPOST_REGISTRY_CA")),
                      docker=outpost.docker or os.environ.get("OUTPOST_DOCKER"))
    earth = EarthSettings.from_table(_table(data, "earth", toml), f"{toml}: [earth]")
    return Home(path=path, name=name, role=role,
                settings=Settings.from_table(_table(data, "delivery", toml),
                                             f"{toml}: [delivery]"),
                earth=earth, outpost=outpost, fleet=_fleet(data.get("outposts", []), earth, toml))


def _fleet(entries: Any, earth: EarthSettings, toml: Path) -> Fleet:
    """Earth's [[outposts]] tables: each outpost's channel and groups."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{toml}: outposts must be [[outposts]] tables")
    members = []
    for e in entries:
        where = f"{toml}: [[outposts]] {e.get('name', '?')}"
        unknown = sorted(set(e) - {"name", "channel", "groups"})
        if unknown:
            raise ConfigError(f"{where}: unknown setting {unknown[0]!r} (known: name, "
                              "channel, groups)")
        name, channel, groups = e.get("name"), e.get("channel", earth.channels[-1]), \
            e.get("groups", [])
        if not isinstance(name, str) or not valid_name(name):
            raise ConfigError(f"{where}: name must be an outpost's name (got {name!r})")
        if not isinstance(channel, str):
            raise ConfigError(f"{where}: channel must be a name (got {channel!r})")
        if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
            raise ConfigError(f"{where}: groups must be a list of names (got {groups!r})")
        members.append(Member(name, channel, tuple(groups)))
    try:
        return Fleet(earth.channels, tuple(members))
    except ConfigError as e:
        raise ConfigError(f"{toml}: {e}") from None


def _table(data: dict[str, Any], name: str, toml: Path) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{toml}: {name} must be a table ([{name}])")
    return table


def _typed(cls: type[T], table: dict[str, Any], where: str, *,
           durations: Iterable[str] = (), sizes: Iterable[str] = ()) -> T:
    """A settings dataclass from a TOML table: each key known, each value of its type
    (durations such as "30s", sizes such as "2M"); a ConfigError names the key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, raw in table.items():
        name = key.replace("-", "_")
        if name not in fields:
            raise ConfigError(f"{where}: unknown setting {key!r} (known: "
                              f"{', '.join(sorted(fields))})")
        try:
            values[name] = _value(raw, fields[name].default, name in set(durations),
                                  name in set(sizes))
        except (ConfigError, ValueError, TypeError) as e:
            raise ConfigError(f"{where}: {key} = {raw!r}: {e}") from None
    try:
        return cls(**values)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _value(raw: Any, default: Any, duration: bool, size: bool) -> Any:
    if duration:
        return parse_duration(raw)
    if size:
        return parse_size(raw)
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("true", "false"):
            return str(raw).lower() == "true"
        raise ValueError("must be true or false")
    if isinstance(default, int):
        if isinstance(raw, bool) or not str(raw).strip().lstrip("-").isdigit():
            raise ValueError("must be a whole number")
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, tuple):
        if not isinstance(raw, list) or not raw or not all(isinstance(x, str) and x
                                                           for x in raw):
            raise ValueError("must be a list of names, e.g. [\"canary\", \"stable\"]")
        return tuple(raw)
    if not isinstance(raw, str):
        raise ValueError("must be a string")
    return raw


def valid_name(name: str) -> bool:
    """A node name: what the bundle header accepts (ASCII letters, digits, - and _)."""
    return valid_node_name(name)


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
