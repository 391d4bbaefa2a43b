"""Batching acknowledgements: one ack bundle for many received bundles."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AckBatcher:
    """Collects ids per peer and says when a batch is due.

    A batch is due `delay` seconds after its first id arrived, or at once when it holds
    `batch` ids, so a burst of fragments costs one ack and a lone message waits little.
    """

    delay: float
    batch: int
    _pending: dict[str, list[str]] = field(default_factory=dict)
    _since: dict[str, float] = field(default_factory=dict)

    def add(self, peer: str, bundle_id: str, now: float) -> None:
        ids = self._pending.setdefault(peer, [])
        if bundle_id not in ids:
            ids.append(bundle_id)
        self._since.setdefault(peer, now)

    def due(self, now: float) -> list[tuple[str, list[str]]]:
        """Take the batches that are due: (peer, ids), each at most `batch` ids long."""
        out: list[tuple[str, list[str]]] = []
        for peer in list(self._pending):
            ids = self._pending[peer]
            if len(ids) < self.batch and now < self._since[peer] + self.delay:
                continue
            while ids:
                out.append((peer, ids[: self.batch]))
                del ids[: self.batch]
            del self._pending[peer], self._since[peer]
        return out

    def next_due(self) -> float | None:
        if not self._since:
            return None
        return min(self._since.values()) + self.delay

    def pending(self) -> int:
        return sum(len(v) for v in self._pending.values())
