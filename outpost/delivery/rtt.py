"""Round-trip estimation (RFC 6298 style) and the retransmission timeout derived from it."""

from __future__ import annotations

from dataclasses import dataclass

ALPHA, BETA, K = 1 / 8, 1 / 4, 4


@dataclass
class RttEstimator:
    """Smoothed round trip of one peer, seeded from configuration, refined by acks.

    A sample is the time from the link taking a bundle to its ack arriving, less the
    bundle's serialisation time when the link's bandwidth is known, so one estimate
    serves small acks and megabyte fragments alike.
    """

    srtt: float
    rttvar: float
    samples: int = 0

    @classmethod
    def seeded(cls, rtt: float) -> RttEstimator:
        return cls(srtt=rtt, rttvar=rtt / 2)

    def observe(self, sample: float) -> None:
        sample = max(sample, 0.0)
        if self.samples == 0:
            self.srtt, self.rttvar = sample, sample / 2
        else:
            self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - sample)
            self.srtt = (1 - ALPHA) * self.srtt + ALPHA * sample
        self.samples += 1

    def rto(self, min_margin: float, max_rto: float) -> float:
        """The smoothed round trip plus a margin of at least `min_margin` (as Linux floors
        its variance at rto_min): on a steady link the variance shrinks to nothing, but the
        peer's own work (a git fetch, an import between two acks) still varies, and a
        timer at the bare round trip resends a burst the peer is about to ack."""
        return min(self.srtt + max(K * self.rttvar, min_margin), max_rto)


ALIVE_BACKOFF, ALIVE_CAP = 1.5, 4.0


def retry_delay(base_rto: float, attempts: int, backoff: float, max_rto: float,
                serialisation: float = 0.0, peer_alive: bool = False) -> float:
    """How long after the link took a bundle to wait for its ack before sending it again.

    `attempts` counts transmissions so far (1 for the first). While the peer is acking
    other bundles, a loss is the link's random loss, not a dead peer, so waiting longer
    would only slow the transfer: the delay grows gently and stays within a few RTOs.
    With no recent ack the peer may be down, and each retry backs off fully so a dead
    peer costs the link little.
    """
    retries = max(attempts - 1, 0)
    if peer_alive:
        factor = min(ALIVE_BACKOFF ** retries, ALIVE_CAP)
    else:
        factor = backoff ** retries
    return min(base_rto * factor, max_rto) + serialisation


def resend_now(taken_at: float | None, acked_after: float, last_ack: float | None,
               now: float, rto: float) -> bool:
    """Whether a bundle whose retry timer ran out is lost, or only waiting its turn.

    A peer working through a backlog acks in the order the link took bundles, and keeps
    acking while it does: its acks are the clock (TCP restarts its timer on each new ack,
    RFC 6298 5.3). So a bundle is resent when a bundle the link took after it was acked
    already (it was lost, or overtaken), or when no ack at all came for a whole RTO (the
    peer stalled, or everything since was lost); not while the peer is still busy acking
    what came before it.
    """
    if taken_at is not None and taken_at < acked_after:
        return True
    return last_ack is None or now - last_ack >= rto


SPLIT_AFTER, MIN_SPLIT = 3, 16 * 1024


def too_big(size: int, attempts: int, since: float, last_ack: float | None,
            frag_size: int) -> bool:
    """Whether the link seems unable to carry a unit whole (contact windows shorter than
    its serialisation): sent SPLIT_AFTER times while the peer acked other bundles since its
    message was first sent (`since`), or twice that often with no word from the peer at
    all. Then it is cut in two, down to fragment_size / 16 (a peer that is merely away
    costs at most 16 times the units)."""
    if size <= max(MIN_SPLIT, frag_size // 16) or attempts < SPLIT_AFTER:
        return False
    acked_since = last_ack is not None and last_ack > since
    return acked_since or attempts >= 2 * SPLIT_AFTER


def peer_alive(last_ack: float | None, now: float, rto: float) -> bool:
    """The peer acked something within the last few RTOs (as long as a gentle retry may
    wait), so a tail of losses after the other bundles were acked still counts as loss."""
    return last_ack is not None and now - last_ack <= ALIVE_CAP * rto
