"""The pure delivery rules: round-trip estimate, retry timing, ack batching."""

from __future__ import annotations

from outpost.delivery import AckBatcher, RttEstimator, peer_alive, retry_delay


def test_estimator_converges_on_a_steady_round_trip() -> None:
    est = RttEstimator.seeded(10.0)
    for _ in range(50):
        est.observe(0.4)
    assert abs(est.srtt - 0.4) < 0.01
    assert est.rto(0.2, 100) < 0.61


def test_a_steady_link_keeps_a_margin_above_the_round_trip() -> None:
    """A jitter-free link makes the variance vanish; the peer's work between two acks does
    not (seen: a burst resent 50 ms before its acks came, after a release's git fetch)."""
    est = RttEstimator.seeded(1.5)
    for _ in range(100):
        est.observe(0.68)
    assert est.rto(0.5, 100) >= 0.68 + 0.5


def test_first_sample_replaces_the_configured_guess() -> None:
    est = RttEstimator.seeded(600.0)
    est.observe(2.0)
    assert est.srtt == 2.0 and est.rttvar == 1.0


def test_rto_is_clamped() -> None:
    est = RttEstimator.seeded(0.001)
    assert abs(est.rto(0.5, 10) - 0.5) < 0.01
    assert RttEstimator.seeded(1000).rto(0.5, 10) == 10


def test_retry_backs_off_and_adds_serialisation() -> None:
    assert retry_delay(2.0, 1, 2.0, 100) == 2.0
    assert retry_delay(2.0, 3, 2.0, 100) == 8.0
    assert retry_delay(2.0, 30, 2.0, 100) == 100
    assert retry_delay(2.0, 1, 2.0, 100, serialisation=5.0) == 7.0


def test_acks_wait_for_the_delay_then_come_as_one_batch() -> None:
    b = AckBatcher(delay=1.0, batch=100, echoes=0)
    b.add("mars", "a", now=0.0)
    b.add("mars", "b", now=0.5)
    b.add("mars", "a", now=0.6)
    assert b.due(0.9) == []
    assert b.next_due() == 1.0
    assert b.due(1.0) == [("mars", ["a", "b"])]
    assert b.pending() == 0 and b.next_due() is None


def test_a_full_batch_goes_at_once_and_splits() -> None:
    b = AckBatcher(delay=60.0, batch=3, echoes=0)
    for i in range(7):
        b.add("mars", str(i), now=0.0)
    assert b.due(0.0) == [("mars", ["0", "1", "2"]), ("mars", ["3", "4", "5"]),
                          ("mars", ["6"])]


def test_retries_stay_close_while_the_peer_is_acking() -> None:
    assert retry_delay(2.0, 2, 2.0, 1000, peer_alive=True) == 3.0
    assert retry_delay(2.0, 20, 2.0, 1000, peer_alive=True) == 8.0
    assert retry_delay(2.0, 8, 2.0, 1000, peer_alive=False) == 256.0


def test_peer_is_alive_only_with_a_recent_ack() -> None:
    assert not peer_alive(None, 100.0, 5.0)
    assert peer_alive(85.0, 100.0, 5.0)
    assert not peer_alive(75.0, 100.0, 5.0)


def test_every_id_is_acked_again_in_the_next_batch_once() -> None:
    b = AckBatcher(delay=1.0, batch=100, echoes=1)
    b.add("mars", "a", now=0.0)
    assert b.due(1.0) == [("mars", ["a"])]
    b.add("mars", "b", now=1.5)
    assert b.due(2.0) == [("mars", ["a", "b"])]
    assert b.due(3.0) == [("mars", ["b"])]
    assert b.due(10.0) == []
    assert b.pending() == 0


def test_a_fresh_id_is_not_downgraded_to_an_echo() -> None:
    b = AckBatcher(delay=1.0, batch=100, echoes=1)
    b.add("mars", "a", now=0.0)
    b.due(1.0)
    b.add("mars", "a", now=1.2)  # a duplicate arrived: ack it, and echo that ack too
    assert b.due(2.0) == [("mars", ["a"])]
    assert b.due(3.0) == [("mars", ["a"])]
    assert b.due(4.0) == []


def test_two_echoes_by_default_and_force_sends_everything_now() -> None:
    b = AckBatcher(delay=10.0, batch=100)
    b.add("mars", "a", now=0.0)
    assert b.due(0.0) == []
    assert b.due(0.0, force=True) == [("mars", ["a"])]
    assert b.due(0.0, force=True) == [("mars", ["a"])]
    assert b.due(0.0, force=True) == [("mars", ["a"])]
    assert b.due(0.0, force=True) == []
    b.add("mars", "b", now=1.0)
    assert b.next_due() == 11.0, "forcing must not leave a batch that is never due"


def test_a_late_bundle_is_resent_only_on_evidence_of_loss() -> None:
    from outpost.delivery import resend_now

    # a bundle taken after it was acked already: this one was lost
    assert resend_now(taken_at=10.0, acked_after=11.0, last_ack=19.9, now=20.0, rto=2.0)
    # the peer is still acking what came before it: only waiting its turn in a backlog
    assert not resend_now(taken_at=10.0, acked_after=10.0, last_ack=19.9, now=20.0, rto=2.0)
    # no ack for a whole RTO: stalled, or everything since was lost
    assert resend_now(taken_at=10.0, acked_after=10.0, last_ack=17.5, now=20.0, rto=2.0)
    assert resend_now(taken_at=10.0, acked_after=0.0, last_ack=None, now=20.0, rto=2.0)


def test_a_unit_is_cut_only_when_the_link_seems_not_to_carry_it() -> None:
    from outpost.delivery import too_big

    mib = 1 << 20
    assert not too_big(mib, 2, since=5.0, last_ack=9.0, frag_size=mib), "sent twice only"
    assert too_big(mib, 3, since=5.0, last_ack=9.0, frag_size=mib), "others got through"
    assert not too_big(mib, 3, since=5.0, last_ack=4.0, frag_size=mib), "peer silent"
    assert too_big(mib, 6, since=5.0, last_ack=4.0, frag_size=mib), "silent, but long"
    assert not too_big(mib // 16, 9, since=5.0, last_ack=9.0, frag_size=mib), "floor"
