"""Shared test helpers: homes, a fake clock, a hand-driven link, and hostile bundles."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import msgpack
import nacl.signing
import zstandard

from outpost.codec import Fragment, Header, Payload, head_bytes, new_id, pack_bytes
from outpost.codec.header import to_wire
from outpost.codec.wire import MAGIC, PREFIX, SIG_LEN
from outpost.home import Home, load_home
from outpost.node.context import open_node
from outpost.node.daemon import Daemon
from outpost.node.setup import init_home, trust_peer
from outpost.store.spool import bundle_files


class FakeClock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def make_pair(root: Path, **delivery: str) -> tuple[Home, Home]:
    settings = {"rtt": "1s", "ack_delay": "0s", **delivery}
    a = init_home(root / "earth", "earth", "earth", settings)
    b = init_home(root / "mars", "outpost", "mars", settings)
    with open(b.path / "node.toml", "a") as f:  # the bus alone: no release sync to Earth
        f.write('\n[outpost]\nsync_on_start = false\nsync_interval = "0s"\n')
    trust_peer(a, b.path)
    trust_peer(b, a.path)
    return load_home(a.path), load_home(b.path)


@dataclass
class Link:
    """Moves files between two homes when told to; `fate` decides per file (tests only)."""

    a: Home
    b: Home
    fate: Callable[[Path], str] = field(default=lambda _p: "deliver")
    moved: list[str] = field(default_factory=list)

    def carry(self) -> int:
        n = 0
        for src, dst in ((self.a, self.b), (self.b, self.a)):
            for path in bundle_files(src.outbox(dst.name)):
                n += 1
                self._one(path, dst.inbox)
        return n

    def _one(self, path: Path, inbox: Path) -> None:
        fate = self.fate(path)
        self.moved.append(f"{fate}:{path.name}")
        if fate == "drop":
            path.unlink()
        elif fate == "duplicate":
            shutil.copy(path, inbox / f"dup-{path.name}")
            os.replace(path, inbox / path.name)
        else:
            os.replace(path, inbox / path.name)


class Pair:
    """Two in-process nodes on a fake clock, driven step by step."""

    def __init__(self, root: Path, **delivery: str) -> None:
        self.clock = FakeClock()
        self.a_home, self.b_home = make_pair(root, **delivery)
        self.a = Daemon(open_node(self.a_home, self.clock))
        self.b = Daemon(open_node(self.b_home, self.clock))
        self.link = Link(self.a_home, self.b_home)

    def step(self, seconds: float = 0.1) -> None:
        for d in (self.a, self.b):
            d.tick()
            d.rescan()
            d.tick()
        self.link.carry()
        self.clock.advance(seconds)

    def run(self, until: Callable[[], bool], steps: int = 200, seconds: float = 0.1) -> None:
        for _ in range(steps):
            if until():
                return
            self.step(seconds)
        raise AssertionError("condition not reached")

    def restart(self, which: str) -> None:
        old = getattr(self, which)
        old.node.state.close()
        home = self.a_home if which == "a" else self.b_home
        new = Daemon(open_node(home, self.clock))
        new.receiver.resume()
        setattr(self, which, new)


# --- hostile bundles (each signed correctly unless the point is the signature) ---

def header(src: str = "earth", dst: str = "mars", **kw: object) -> Header:
    now = time.time()
    base = Header(id=new_id(), kind="file", src=src, dst=dst, created=now,
                  expires=now + 3600, meta={"name": "x.txt"})
    return replace(base, **kw)  # type: ignore[arg-type]


def good(seed: bytes, data: bytes = b"hello", **kw: object) -> bytes:
    return pack_bytes(header(**kw), data, seed, codec="zstd")


def signed_raw(seed: bytes, h: Header, body: bytes) -> bytes:
    """Sign a header without the encoder's validation, to build what a broken peer sends."""
    raw = msgpack.packb(to_wire(h), use_bin_type=True)
    signed = PREFIX.pack(MAGIC, len(raw)) + raw
    return signed + nacl.signing.SigningKey(seed).sign(signed).signature + body


def zstd_bomb(seed: bytes, size: int = 1024**3) -> bytes:
    """A correctly signed bundle declaring 1 KiB raw that decompresses to `size`."""
    comp = zstandard.ZstdCompressor(level=19).compressobj()
    body = b"".join(comp.compress(b"\0" * (1 << 24)) for _ in range(size >> 24))
    body += comp.flush()
    p = Payload("zstd", len(body), 1024, hashlib.sha256(body).digest())
    return head_bytes(header().with_payload(p), seed) + body


def absurd_fragment(seed: bytes) -> bytes:
    body = b"x" * 10
    h = header(fragment=Fragment(parent=new_id(), index=0, count=2, offset=0, total=2**62),
               payload=Payload("none", 10, 10, hashlib.sha256(body).digest()))
    return signed_raw(seed, h, body)


def oversized_header() -> bytes:
    return PREFIX.pack(MAGIC, 10 * 1024 * 1024) + b"\x80" * 100


def unsigned(seed: bytes) -> bytes:
    data = good(seed)
    hlen = PREFIX.unpack(data[:8])[1]
    return data[: 8 + hlen] + b"\0" * SIG_LEN + data[8 + hlen + SIG_LEN:]


def hostile_set(earth_seed: bytes, stranger_seed: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, the quarantine reason expected for it)."""
    full = good(earth_seed, os.urandom(4000))
    return {
        "garbage": (os.urandom(3000), "bad-magic"),
        "truncated": (full[: len(full) - 1000], "truncated"),
        "unsigned": (unsigned(earth_seed), "bad-signature"),
        "stranger": (good(stranger_seed, src="stranger"), "unknown-key"),
        "expired": (good(earth_seed, created=time.time() - 7200,
                         expires=time.time() - 3600), "expired"),
        "oversized-header": (oversized_header(), "header-too-large"),
        "zstd-bomb": (zstd_bomb(earth_seed), "zstd-bomb"),
        "absurd-fragment": (absurd_fragment(earth_seed), "absurd-fragment"),
        "misaddressed": (good(earth_seed, dst="venus"), "misaddressed"),
    }
