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

    def rto(self, min_rto: float, max_rto: float) -> float:
        return min(max(self.srtt + K * self.rttvar, min_rto), max_rto)


def retry_delay(base_rto: float, attempts: int, backoff: float, max_rto: float,
                serialisation: float = 0.0) -> float:
    """How long after the link took a bundle to wait for its ack before sending it again.

    `attempts` counts transmissions so far (1 for the first); each retry backs off.
    """
    return min(base_rto * backoff ** max(attempts - 1, 0), max_rto) + serialisation
