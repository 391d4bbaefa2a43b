"""Pure tests of link-sim's decisions: contact plans, the link model, profiles. No I/O
except the profile files written to tmp_path."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path
from typing import Any

import pytest

from link.model import Direction, LinkParams, apply_patch, direction_rng
from link.profiles import BUILTIN, ProfileError, load_profile, resolve
from outpost.contact import ContactPlanError, Schedule, parse_contact_plan, parse_plan_duration

ORIGIN = 1_000_000.0
N = 20_000


def direction(seed: int = 7, plan: str | None = None, **params: Any) -> Direction:
    schedule = parse_contact_plan(plan).bind(ORIGIN) if plan else Schedule.always_up()
    return Direction(LinkParams(**params), schedule, random.Random(seed))


def offer_many(d: Direction, count: int, size: int = 1000) -> list[int]:
    """Offer `count` files back to back; counts of (dropped, duplicated, corrupted copies)."""
    dropped = duplicated = corrupted = 0
    for _ in range(count):
        t = d.offer(size, ORIGIN)
        dropped += t.dropped is not None
        duplicated += sum(c.duplicate for c in t.copies)
        corrupted += sum(bool(c.corrupt) for c in t.copies)
    return [dropped, duplicated, corrupted]


# -- durations and contact plans ------------------------------------------------------------


def test_plan_durations() -> None:
    assert parse_plan_duration("250ms") == pytest.approx(0.25)
    assert parse_plan_duration("20m") == 1200
    assert parse_plan_duration("1.5") == 1.5
    assert parse_plan_duration("24h39m35s") == 24 * 3600 + 39 * 60 + 35
    with pytest.raises(ValueError):
        parse_plan_duration("soon")


def test_plan_parsing_and_windows() -> None:
    plan = parse_contact_plan(
        """
        # up 0-3 s, down 3-8 s, up for ever after 8 s
        0s 3s
        8s forever   # trailing comment
        """
    )
    s = plan.bind(ORIGIN)
    assert s.is_up(ORIGIN) and s.is_up(ORIGIN + 2.999)
    assert not s.is_up(ORIGIN + 3) and not s.is_up(ORIGIN + 7.9)
    assert s.is_up(ORIGIN + 8) and s.is_up(ORIGIN + 1e9)
    assert not s.is_up(ORIGIN - 1)
    assert s.next_up(ORIGIN + 4) == ORIGIN + 8
    assert s.next_up(ORIGIN + 1) == ORIGIN + 1
    assert s.window_end(ORIGIN + 1) == ORIGIN + 3
    assert s.window_end(ORIGIN + 9) == math.inf
    assert s.window_end(ORIGIN + 5) == ORIGIN + 5  # down: no window to end
    assert s.next_change(ORIGIN + 1) == ORIGIN + 3
    assert s.next_change(ORIGIN + 4) == ORIGIN + 8


def test_plan_plus_end_absolute_times_and_adjacent_windows() -> None:
    plan = parse_contact_plan(
        "2030-01-01T00:00:00Z +10m\n2030-01-01T00:10:00 2030-01-01T00:20:00+00:00\n"
    )
    s = plan.bind(ORIGIN)  # absolute windows ignore the origin
    start = 1893456000.0  # 2030-01-01T00:00:00Z
    assert not plan.uses_origin
    assert s.is_up(start + 1) and s.is_up(start + 15 * 60) and not s.is_up(start + 20 * 60)
    assert s.window_end(start) == start + 20 * 60  # back-to-back windows merge
    assert s.next_up(0.0) == start


def test_plan_repeat() -> None:
    s = parse_contact_plan("0s 10s\n30s +5s\nrepeat 1m").bind(ORIGIN)
    for k in range(3):
        base = ORIGIN + 60 * k
        assert s.is_up(base) and s.is_up(base + 9.9) and not s.is_up(base + 10)
        assert s.is_up(base + 32) and not s.is_up(base + 35)
    assert s.next_up(ORIGIN + 11) == ORIGIN + 30
    assert s.next_up(ORIGIN + 36) == ORIGIN + 60
    assert s.window_end(ORIGIN + 61) == ORIGIN + 70
    assert not s.is_up(ORIGIN - 50)  # repetition only goes forward from the first window
    assert s.next_up(ORIGIN - 50) == ORIGIN


def test_plan_repeat_covering_the_whole_period_is_always_up() -> None:
    s = parse_contact_plan("0s 1m\nrepeat 1m").bind(ORIGIN)
    assert s.is_up(ORIGIN + 3600.5)
    assert s.window_end(ORIGIN + 5) == math.inf


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no windows"),
        ("# only a comment\n", "no windows"),
        ("0s", "line 1: expected 'START END'"),
        ("0s 10s\n10s 5s", "line 2: the window ends before it starts"),
        ("0s banana", "line 1: not a duration"),
        ("0s 10s\nrepeat", "line 2: expected 'repeat PERIOD'"),
        ("0s 10s\nrepeat 0s", "must be positive"),
        ("0s 10s\nrepeat 1m\nrepeat 2m", "line 3: 'repeat' given twice"),
        ("0s 2m\nrepeat 1m", "longer than the repeat period"),
        ("0s forever\nrepeat 1m", "open-ended window cannot repeat"),
        ("0s 2030-01-01T00:00:00Z", "both be offsets or both be ISO times"),
        ("2030-13-45T00:00:00Z 2031-01-01T00:00:00Z", "not an ISO-8601 time"),
    ],
)
def test_plan_errors_are_clear(text: str, message: str) -> None:
    with pytest.raises(ContactPlanError, match=message) as caught:
        parse_contact_plan(text, "plan.txt")
    assert "plan.txt" in str(caught.value)


# -- the link model ------------------------------------------------------------------------


def test_perfect_link_delivers_after_latency() -> None:
    d = direction(latency=0.25)
    t = d.offer(1000, ORIGIN)
    assert t.dropped is None and len(t.copies) == 1
    assert t.copies[0].deliver_at == pytest.approx(ORIGIN + 0.25)
    assert not t.copies[0].corrupt and not t.copies[0].duplicate
    assert d.can_take(ORIGIN)  # unlimited bandwidth: the next file can go at once


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_loss_duplicate_corrupt_rates(p: float) -> None:
    d = direction(loss=p, duplicate=p, corrupt=p)
    dropped, duplicated, corrupted = offer_many(d, N)
    sent = N - dropped
    assert dropped / N == pytest.approx(p, abs=0.015)
    assert duplicated / sent == pytest.approx(p, abs=0.015)
    # each delivered copy (originals and duplicates) is corrupted independently
    assert corrupted / (sent + duplicated) == pytest.approx(p, abs=0.015)


def test_zero_probabilities_change_nothing() -> None:
    assert offer_many(direction(), 2000) == [0, 0, 0]


def test_seed_reproduces_every_decision() -> None:
    def run(seed: int) -> list[object]:
        d = Direction(
            LinkParams(latency=1, jitter=0.5, loss=0.2, duplicate=0.2, corrupt=0.2, reorder=0.2),
            rng=direction_rng(seed, "a->b"),
        )
        return [d.offer(100, ORIGIN + i) for i in range(200)]

    assert run(3) == run(3)
    assert run(3) != run(4)
    assert direction_rng(3, "a->b").random() != direction_rng(3, "b->a").random()


def test_corruption_flips_a_few_bytes() -> None:
    d = direction(corrupt=1.0)
    data = bytes(range(256)) * 40
    for _ in range(200):
        patch = d.offer(len(data), ORIGIN).copies[0].corrupt
        assert 1 <= len(patch) <= 4
        assert len({offset for offset, _ in patch}) == len(patch)
        changed = apply_patch(data, patch)
        diffs = [i for i in range(len(data)) if data[i] != changed[i]]
        assert diffs == sorted(offset for offset, _ in patch)
    # patching in chunks gives the same bytes as patching the whole file
    patch = ((5, 1), (4095, 255), (4096, 7))
    whole = apply_patch(data, patch)
    assert apply_patch(data[:4096], patch, 0) + apply_patch(data[4096:], patch, 4096) == whole
    assert d.offer(0, ORIGIN).copies[0].corrupt == ()  # nothing to corrupt in an empty file


def test_jitter_stays_within_bounds() -> None:
    d = direction(latency=1.0, jitter=0.5)
    arrivals = [d.offer(10, ORIGIN).copies[0].deliver_at - ORIGIN for _ in range(2000)]
    assert min(arrivals) >= 1.0 and max(arrivals) <= 1.5
    assert max(arrivals) - min(arrivals) > 0.4


def test_bandwidth_serialises_files_one_after_another() -> None:
    d = direction(latency=0.5, bandwidth=1024 * 1024)
    t1 = d.offer(10 * 1024 * 1024, ORIGIN)  # 10 MiB at 1 MiB/s
    assert t1.tx_end == pytest.approx(ORIGIN + 10)
    assert t1.copies[0].deliver_at == pytest.approx(ORIGIN + 10.5)
    assert not d.can_take(ORIGIN + 9.99)
    assert d.free_at(ORIGIN + 1) == pytest.approx(ORIGIN + 10)
    # a file already waiting when the link freed up starts at that moment, not at the poll
    t2 = d.offer(512 * 1024, ORIGIN + 10.03, start=ORIGIN + 9.99)
    assert t2.tx_start == pytest.approx(ORIGIN + 10)
    assert t2.tx_end == pytest.approx(ORIGIN + 10.5)


def test_lost_files_still_occupy_the_link() -> None:
    d = direction(loss=1.0, bandwidth=1000)
    t = d.offer(2000, ORIGIN)
    assert t.dropped == "loss" and t.copies == ()
    assert d.busy_until == pytest.approx(ORIGIN + 2)


def test_reorder_lets_later_files_overtake() -> None:
    d = direction(latency=0.2, reorder=0.5, bandwidth=100_000)
    arrivals = []
    now = ORIGIN
    for i in range(200):
        now = d.free_at(now)
        t = d.offer(1000, now)
        arrivals.append((t.copies[0].deliver_at, i))
    order = [i for _, i in sorted(arrivals)]
    assert order != sorted(order)
    overtaken = sum(1 for a, b in itertools.pairwise(order) if a > b)
    assert overtaken > 20
    # without reordering (and without jitter) files arrive in the order they were sent
    d = direction(latency=0.2, bandwidth=100_000)
    plain = [d.offer(1000, ORIGIN).copies[0].deliver_at for _ in range(50)]
    assert plain == sorted(plain)


def test_reorder_delay_even_on_an_instant_link() -> None:
    d = direction(reorder=1.0)
    delays = [d.offer(10, ORIGIN).copies[0].deliver_at - ORIGIN for _ in range(100)]
    assert min(delays) >= 0.025 and max(delays) <= 0.05


def test_duplicate_arrives_after_the_original() -> None:
    d = direction(latency=1.0, duplicate=1.0)
    for _ in range(100):
        original, twin = d.offer(10, ORIGIN).copies
        assert twin.duplicate and not original.duplicate
        assert original.deliver_at <= twin.deliver_at <= original.deliver_at + 0.05


def test_contact_plan_gates_taking() -> None:
    d = direction(plan="0s 3s\n8s forever", latency=0.1)
    assert d.can_take(ORIGIN + 1)
    assert not d.can_take(ORIGIN + 4)
    assert d.free_at(ORIGIN + 4) == ORIGIN + 8
    # a file that waited through the gap starts when the window opens
    t = d.offer(10, ORIGIN + 8.02, start=ORIGIN + 7.99)
    assert t.tx_start == ORIGIN + 8
    assert t.copies[0].deliver_at == pytest.approx(ORIGIN + 8.1)


def test_file_cut_by_window_close_restarts_in_next_window() -> None:
    d = direction(plan="0s 10s\n20s 40s", bandwidth=1000)
    t = d.offer(5000, ORIGIN + 7)  # needs 5 s, only 3 s left
    assert t.held and t.interrupted_at == ORIGIN + 10
    assert t.tx_start == ORIGIN + 20 and t.tx_end == ORIGIN + 25
    assert t.dropped is None and t.copies[0].deliver_at == ORIGIN + 25
    assert d.free_at(ORIGIN + 21) == ORIGIN + 25


def test_file_larger_than_any_window_is_dropped_not_stuck() -> None:
    d = direction(plan="0s 2s\nrepeat 10s", bandwidth=1000)
    t = d.offer(5000, ORIGIN)
    assert t.dropped == "window" and t.copies == ()
    assert d.can_take(ORIGIN + 10)  # the direction is not blocked for ever
    d = direction(plan="0s 2s", bandwidth=1000)  # no further window at all
    t = d.offer(5000, ORIGIN)
    assert t.dropped == "window" and d.busy_until == ORIGIN + 2
    assert math.isinf(d.free_at(ORIGIN + 3))


def test_occupy_restores_a_busy_link() -> None:
    d = direction()
    d.occupy(ORIGIN + 5)
    assert not d.can_take(ORIGIN + 4) and d.can_take(ORIGIN + 5)


def test_param_problems() -> None:
    assert LinkParams().problems() == []
    problems = LinkParams(latency=-1, loss=1.5, bandwidth=0).problems()
    assert len(problems) == 3


# -- profiles ------------------------------------------------------------------------------


def test_builtin_profiles_are_valid() -> None:
    assert {"lan", "geo-satellite", "antarctic", "moon", "mars"} <= set(BUILTIN)
    for name in BUILTIN:
        config = resolve(load_profile(name), {})
        assert config.profile == name
    geo = resolve(load_profile("geo-satellite"), {}).params
    assert geo.latency == pytest.approx(0.28) and geo.bandwidth == 2 * 1024 * 1024
    mars = resolve(load_profile("mars"), {})
    assert mars.params.latency == 12 * 60 and mars.plan is not None
    assert mars.plan.period == pytest.approx(88775)
    assert resolve(load_profile("antarctic"), {}).plan is not None
    assert resolve(load_profile("moon"), {}).params.latency == pytest.approx(1.3)


def test_flags_override_the_profile() -> None:
    config = resolve(
        load_profile("mars"),
        {"latency": 2.0, "loss": 0.0, "bandwidth": "unlimited", "contact_plan": "none"},
    )
    assert config.params.latency == 2.0 and config.params.loss == 0.0
    assert config.params.bandwidth is None and config.plan is None
    assert config.params.jitter == 30.0  # not overridden


def test_toml_profile_with_a_relative_plan(tmp_path: Path) -> None:
    (tmp_path / "windows.txt").write_text("0s 10s\nrepeat 1m\n")
    (tmp_path / "ground.toml").write_text(
        'description = "our station"\nlatency = "250ms"\nbandwidth = "64k"\n'
        'reorder = 0.1\ncontact-plan = "windows.txt"\nseed = 5\n'
    )
    profile = load_profile(str(tmp_path / "ground.toml"))
    assert profile.name == "ground" and profile.description == "our station"
    config = resolve(profile, {"seed": None})
    assert config.params.latency == 0.25 and config.params.bandwidth == 64 * 1024
    assert config.params.reorder == 0.1 and config.seed == 5
    assert config.plan is not None and config.plan.period == 60
    assert config.plan_source == str(tmp_path / "windows.txt")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("speed = 3\n", "unknown key"),
        ('latency = "fast"\n', "latency"),
        ("loss = 2\n", "loss must be a probability"),
        ('bandwidth = "lots"\n', "bandwidth"),
        ('contact_plan = "missing.txt"\n', "cannot read contact plan"),
        ('contact_plan_text = "0s"\n', "line 1"),
        ('seed = "x"\n', "seed must be an integer"),
        ("latency = [\n", "cannot read profile"),
    ],
)
def test_bad_profiles_are_clear(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(ProfileError, match=message):
        resolve(load_profile(str(path)), {})


def test_unknown_profile_name_lists_the_builtins() -> None:
    with pytest.raises(ProfileError, match="geo-satellite"):
        load_profile("jupiter")
