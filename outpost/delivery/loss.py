"""The loss rate a sender observes on its link to one peer, for planning FEC."""

from __future__ import annotations

from dataclasses import dataclass

PRIOR = 16  # the configured expectation weighs as much as this many observations
WINDOW = 256  # the estimate follows roughly the last this many observations


@dataclass
class LossEstimator:
    """Fraction of first transmissions that did not arrive, smoothed.

    A unit acked on its first transmission arrived; one whose timer ran out, or that the
    peer rebuilt from repairs, did not. The estimate starts at what node.toml expects and
    moves to what the link does."""

    rate: float
    samples: int = 0

    def observe(self, lost: bool) -> None:
        self.samples += 1
        weight = 1.0 / min(self.samples + PRIOR, WINDOW)
        self.rate += weight * ((1.0 if lost else 0.0) - self.rate)
