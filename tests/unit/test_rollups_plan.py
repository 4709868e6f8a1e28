"""How a report's window is split between rolled-up days, hours and live ranges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from api.reporting.rollups import ceil_hour, floor_day, merge_ranges, plan

H = timedelta(hours=1)
D = timedelta(days=1)
T = datetime(2026, 3, 1, tzinfo=UTC)  # a midnight


def test_nothing_rolled_up_means_all_live() -> None:
    p = plan(T, T + 10 * D, rolled_until=None, dirty=set())
    assert (p.days, p.hours, p.live) == ([], [], [(T, T + 10 * D)])


def test_whole_days_from_day_rows_whole_hours_from_hour_rows_and_edges_live() -> None:
    start = T - 2 * H - timedelta(minutes=30)  # 21:30 the day before
    end = T + 3 * D + 5 * H + timedelta(minutes=10)
    rolled_until = T + 3 * D + 4 * H
    p = plan(start, end, rolled_until=rolled_until, dirty=set())
    assert p.days == [T, T + D, T + 2 * D]
    assert p.hours == [T - 2 * H, T - H] + [T + 3 * D + n * H for n in range(4)]
    # the half hour before 22:00, and everything from rolled_until on
    assert p.live == [(start, T - 2 * H), (rolled_until, end)]


def test_a_dirty_hour_is_read_live_and_spoils_its_day() -> None:
    dirty = {T + D + 5 * H}
    p = plan(T, T + 3 * D, rolled_until=T + 3 * D, dirty=dirty)
    assert p.days == [T, T + 2 * D]
    assert p.hours == [T + D + n * H for n in range(24) if n != 5]
    assert p.live == [(T + D + 5 * H, T + D + 6 * H)]


def test_hourly_timeseries_never_uses_day_rows() -> None:
    p = plan(T, T + 2 * D, rolled_until=T + 2 * D, dirty=set(), days=False)
    assert p.days == [] and len(p.hours) == 48 and p.live == []


def test_every_instant_of_the_window_is_read_exactly_once() -> None:
    start, end = T + timedelta(minutes=7), T + 9 * D + timedelta(minutes=3)
    dirty = {T + 4 * D + 3 * H, T + 6 * D}
    p = plan(start, end, rolled_until=T + 8 * D + 11 * H, dirty=dirty)
    pieces = [(d, d + D) for d in p.days] + [(h, h + H) for h in p.hours] + p.live
    pieces.sort()
    assert pieces[0][0] == start and pieces[-1][1] == end
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))


def test_helpers() -> None:
    assert ceil_hour(T + timedelta(minutes=1)) == T + H and ceil_hour(T) == T
    assert floor_day(T + 23 * H) == T
    assert merge_ranges([(T + H, T + 2 * H), (T, T + H), (T + 3 * H, T + 3 * H)]) == [(T, T + 2 * H)]
