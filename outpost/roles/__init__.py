"""What makes a node Earth or an outpost: its message kinds and its timers.

A role adds handlers to the bus (kinds it receives), hears when its messages are
acknowledged, and may run periodic work. The bus itself knows nothing of releases.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import msgpack

from ..codec import Header, read_payload
from ..errors import BundleError, MalformedBundle
from ..node.context import Node
from ..node.handlers import Handler, Renames, default_handlers
from ..store.state import Message

MAX_CONTROL_PAYLOAD = 16 * 1024 * 1024


class Role:
    """The bus on its own: the `file` kind, nothing periodic."""

    def handlers(self) -> dict[str, Handler]:
        return default_handlers()

    def bind(self, wake: Callable[[], None]) -> None:
        """`wake` makes the node's loop look again at once (safe from any thread)."""

    def on_start(self) -> None:
        pass

    def on_stop(self) -> None:
        pass

    def tick(self, now: float) -> None:
        pass

    def on_delivered(self, msg: Message) -> None:
        pass

    def on_refused(self, header: Header, error: BundleError) -> None:
        pass


def read_control(node: Node, header: Header, path: Any) -> Any:
    """A small msgpack payload (requests, reports), size-checked before it is read."""
    if header.payload.raw_length > MAX_CONTROL_PAYLOAD:
        raise MalformedBundle(f"{header.kind} payload of {header.payload.raw_length} bytes is "
                              "too large", reason="payload-too-large")
    buf = io.BytesIO()
    read_payload(path, node.state.keyring(), node.limits, buf.write)
    try:
        return msgpack.unpackb(buf.getvalue(), raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise MalformedBundle(f"{header.kind} payload is not msgpack: {e}",
                              reason="bad-payload") from None


class Call:
    """A handler made of a function that does its work and publishes nothing by rename."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def prepare(self, node: Node, header: Header, path: Any) -> Renames:
        self.fn(header, path)
        return []


def make_role(node: Node, sender: Any, registry: str | None = None,
              docker: str | None = None) -> Role:
    """The role a home was created for (`registry`, `docker`: an outpost's overrides)."""
    from .earth import Earth
    from .outpost import Outpost

    if node.home.role == "earth":
        return Earth(node, sender)
    return Outpost(node, sender, registry, docker)
