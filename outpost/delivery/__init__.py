"""Reliable delivery, free of I/O: round-trip estimation, retry timing, ack batching, loss
estimation and the FEC layout.

Time is always passed in (`now`), so every rule here is tested without sleeping.
"""

from .acks import AckBatcher
from .clock import ClockWatch, clock_verdict
from .loss import LossEstimator
from .rtt import RttEstimator, peer_alive, resend_now, retry_delay, too_big

__all__ = ["AckBatcher", "ClockWatch", "LossEstimator", "RttEstimator", "clock_verdict",
           "peer_alive", "resend_now", "retry_delay", "too_big"]
