"""Reliable delivery, free of I/O: round-trip estimation, retry timing, ack batching.

Time is always passed in (`now`), so every rule here is tested without sleeping.
"""

from .acks import AckBatcher
from .rtt import RttEstimator, peer_alive, retry_delay

__all__ = ["AckBatcher", "RttEstimator", "peer_alive", "retry_delay"]
