"""Batching acknowledgements: one ack bundle for many received bundles."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AckBatcher:
    """Collects ids per peer and says when a batch is due.

    A batch is due `delay` seconds after its first id arrived, or at once when it holds
    `batch` ids, so a burst of fragments costs one ack and a lone message waits little.
    Each id is acked again in the next `echoes` batches: losing one ack bundle, which names
    hundreds of bundles, then does not make the sender resend them all.
    """

    delay: float
    batch: int
    echoes: int = 2
    _pending: dict[str, dict[str, int]] = field(default_factory=dict)  # id -> echoes left
    _since: dict[str, float] = field(default_factory=dict)

    def add(self, peer: str, bundle_id: str, now: float, *, echoes: int | None = None) -> None:
        ids = self._pending.setdefault(peer, {})
        left = self.echoes if echoes is None else echoes
        ids[bundle_id] = max(ids.get(bundle_id, 0), left)
        self._since.setdefault(peer, now)

    def due(self, now: float, *, force: bool = False) -> list[tuple[str, list[str]]]:
        """Take the batches that are due (all of them with `force`): (peer, ids), each at
        most `batch` ids long."""
        out: list[tuple[str, list[str]]] = []
        for peer in list(self._pending):
            ids = self._pending[peer]
            if not force and len(ids) < self.batch and now < self._since[peer] + self.delay:
                continue
            del self._pending[peer], self._since[peer]
            items = list(ids.items())
            for i in range(0, len(items), self.batch):
                out.append((peer, [bundle_id for bundle_id, _ in items[i:i + self.batch]]))
            for bundle_id, left in items:
                if left > 0:
                    self.add(peer, bundle_id, now, echoes=left - 1)
        return out

    def next_due(self) -> float | None:
        if not self._since:
            return None
        return min(self._since.values()) + self.delay

    def pending(self) -> int:
        return sum(len(v) for v in self._pending.values())
