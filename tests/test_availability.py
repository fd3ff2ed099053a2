"""Business hours (services/availability.py): ranges, overnight ranges, closed dates, time zones."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from c_app.config import Settings
from c_app.container import build_services
from c_app.services.availability import (
    describe_opening,
    hours_from_settings,
    is_open,
    next_opening,
    parse_hours,
)

SH = ZoneInfo("Asia/Shanghai")  # UTC+8 all year, no daylight saving


def at(*args: int, zone: ZoneInfo = SH) -> datetime:
    return datetime(*args, tzinfo=zone)  # type: ignore[misc]


def test_weekday_range_in_shanghai() -> None:
    hours = parse_hours("mon-fri 09:00-21:00", "Asia/Shanghai", [])
    # 2026-12-07 is a Monday.
    assert not is_open(hours, at(2026, 12, 7, 8, 59))
    assert is_open(hours, at(2026, 12, 7, 9, 0))
    assert is_open(hours, at(2026, 12, 7, 20, 59))
    assert not is_open(hours, at(2026, 12, 7, 21, 0))  # the end is exclusive
    assert is_open(hours, at(2026, 12, 11, 12, 0))  # Friday
    assert not is_open(hours, at(2026, 12, 12, 12, 0))  # Saturday
    # The same instant given in UTC: 01:30 UTC is 09:30 in Shanghai.
    assert is_open(hours, datetime(2026, 12, 7, 1, 30, tzinfo=UTC))
    assert not is_open(hours, datetime(2026, 12, 7, 0, 30, tzinfo=UTC))


def test_several_ranges_with_either_separator() -> None:
    hours = parse_hours("mon-fri 09:00-12:00; mon-fri 13:00-18:00, sat 10:00-16:00", "Asia/Shanghai", [])
    assert is_open(hours, at(2026, 12, 7, 11, 0))
    assert not is_open(hours, at(2026, 12, 7, 12, 30))  # lunch
    assert is_open(hours, at(2026, 12, 7, 13, 0))
    assert is_open(hours, at(2026, 12, 12, 15, 59))
    assert not is_open(hours, at(2026, 12, 13, 12, 0))  # Sunday
    # Lunch: back at 13:00 the same day; Saturday evening: back on Monday 09:00.
    assert next_opening(hours, at(2026, 12, 7, 12, 30)) == at(2026, 12, 7, 13, 0)
    assert next_opening(hours, at(2026, 12, 12, 17, 0)) == at(2026, 12, 14, 9, 0)


def test_days_by_name_span_wrap_and_every_day() -> None:
    wrap = parse_hours("fri-mon 10:00-11:00", "Asia/Shanghai", [])
    assert [is_open(wrap, at(2026, 12, d, 10, 30)) for d in range(7, 14)] == [
        True, False, False, False, True, True, True,
    ]  # fmt: skip
    every = parse_hours("09:00-10:00", "Asia/Shanghai", [])
    assert all(is_open(every, at(2026, 12, d, 9, 15)) for d in range(7, 14))
    daily = parse_hours("Daily 09:00-24:00", "Asia/Shanghai", [])
    assert is_open(daily, at(2026, 12, 9, 23, 59))
    assert not is_open(daily, at(2026, 12, 9, 0, 0))
    assert is_open(parse_hours("Saturday 10:00-11:00", "Asia/Shanghai", []), at(2026, 12, 12, 10, 0))


def test_overnight_range() -> None:
    hours = parse_hours("fri 22:00-02:00", "Asia/Shanghai", [])
    assert not is_open(hours, at(2026, 12, 11, 21, 59))
    assert is_open(hours, at(2026, 12, 11, 22, 0))
    assert is_open(hours, at(2026, 12, 12, 1, 59))  # Saturday morning, still Friday's range
    assert not is_open(hours, at(2026, 12, 12, 2, 0))
    assert not is_open(hours, at(2026, 12, 12, 23, 0))  # Saturday has no range of its own
    assert next_opening(hours, at(2026, 12, 12, 2, 0)) == at(2026, 12, 18, 22, 0)


def test_closed_dates() -> None:
    # 2026-10-01 (Thursday) and 10-02 closed: open again Monday 10-05 at 09:00.
    hours = parse_hours("mon-fri 09:00-21:00", "Asia/Shanghai", [date(2026, 10, 1), date(2026, 10, 2)])
    assert is_open(hours, at(2026, 9, 30, 10, 0))
    assert not is_open(hours, at(2026, 10, 1, 10, 0))
    assert not is_open(hours, at(2026, 10, 2, 10, 0))
    assert next_opening(hours, at(2026, 9, 30, 21, 0)) == at(2026, 10, 5, 9, 0)
    # The closed date is a local day: 2026-10-01 02:00 UTC is already 10:00 on the holiday in Shanghai.
    assert not is_open(hours, datetime(2026, 10, 1, 2, 0, tzinfo=UTC))
    # An overnight range ending on a closed date closes at midnight; after a closed day it opens at midnight.
    night = parse_hours("22:00-02:00", "Asia/Shanghai", [date(2026, 10, 1)])
    assert is_open(night, at(2026, 9, 30, 23, 0))
    assert not is_open(night, at(2026, 10, 1, 1, 0))
    assert not is_open(night, at(2026, 10, 1, 23, 0))
    assert next_opening(night, at(2026, 10, 1, 23, 0)) == at(2026, 10, 2, 0, 0)


def test_empty_spec_is_always_open_but_for_closed_dates() -> None:
    hours = parse_hours("", "Asia/Shanghai", [date(2026, 12, 25)])
    assert hours.always_open
    assert is_open(hours, at(2026, 12, 24, 3, 0))
    assert not is_open(hours, at(2026, 12, 25, 12, 0))
    assert next_opening(hours, at(2026, 12, 24, 3, 0)) == at(2026, 12, 24, 3, 0)  # open: now
    assert next_opening(hours, at(2026, 12, 25, 12, 0)) == at(2026, 12, 26, 0, 0)
    assert is_open(parse_hours("  ", "UTC", []), datetime(2026, 1, 1, tzinfo=UTC))


def test_next_opening_none_when_every_day_is_closed() -> None:
    closed = [date(2026, 1, 1).fromordinal(date(2026, 1, 1).toordinal() + i) for i in range(400)]
    hours = parse_hours("mon-fri 09:00-10:00", "Asia/Shanghai", closed)
    assert next_opening(hours, at(2026, 1, 1, 0, 0)) is None


def test_zone_with_daylight_saving_keeps_wall_clock_hours() -> None:
    ny = ZoneInfo("America/New_York")  # 2026-03-08: clocks go from 02:00 to 03:00
    hours = parse_hours("mon-fri 09:00-17:00", "America/New_York", [])
    # 09:00 local is 14:00 UTC before the change and 13:00 UTC after it.
    assert is_open(hours, datetime(2026, 3, 6, 14, 0, tzinfo=UTC))
    assert not is_open(hours, datetime(2026, 3, 6, 13, 30, tzinfo=UTC))
    assert is_open(hours, datetime(2026, 3, 9, 13, 30, tzinfo=UTC))
    assert next_opening(hours, datetime(2026, 3, 7, 12, 0, tzinfo=UTC)) == datetime(
        2026, 3, 9, 9, 0, tzinfo=ny
    )
    # A start skipped by the change (02:30 does not exist on 03-08) opens at the first real minute.
    skipped = parse_hours("sun 02:30-04:00", "America/New_York", [])
    opening = next_opening(skipped, datetime(2026, 3, 8, 5, 0, tzinfo=UTC))  # 00:00 local
    assert opening is not None and is_open(skipped, opening)
    assert opening.astimezone(UTC) == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)  # 03:30 EDT


def test_naive_time_is_read_as_utc() -> None:
    hours = parse_hours("09:00-10:00", "Asia/Shanghai", [])
    assert is_open(hours, datetime(2026, 12, 7, 1, 30))


@pytest.mark.parametrize(
    ("spec", "timezone", "fault"),
    [
        ("mon-fri 9-21", "Asia/Shanghai", "无法解析"),
        ("mon-fri 09:00-21:00 extra", "Asia/Shanghai", "无法解析"),
        ("funday 09:00-10:00", "Asia/Shanghai", "无法识别的星期"),
        ("mon-xyz 09:00-10:00", "Asia/Shanghai", "无法识别的星期"),
        ("mon 25:00-26:00", "Asia/Shanghai", "时间无效"),
        ("mon 09:60-10:00", "Asia/Shanghai", "时间无效"),
        ("mon 24:00-02:00", "Asia/Shanghai", "时间无效"),
        ("mon 09:00-09:00", "Asia/Shanghai", "相同"),
        (";,", "Asia/Shanghai", "没有有效的时间段"),
        ("mon 09:00-10:00", "Mars/Olympus", "未知时区"),
    ],
)
def test_malformed_spec_is_refused_with_its_fault_named(spec: str, timezone: str, fault: str) -> None:
    with pytest.raises(ValueError, match=fault):
        parse_hours(spec, timezone, [])


def test_settings_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_HOURS", "mon-fri 09:00-21:00")
    monkeypatch.setenv("AGENT_TIMEZONE", "Asia/Shanghai")
    monkeypatch.setenv("AGENT_CLOSED_DATES", "2026-10-01, 2026-10-02")
    hours = hours_from_settings(Settings())
    assert hours.closed_dates == {date(2026, 10, 1), date(2026, 10, 2)}
    assert not is_open(hours, at(2026, 10, 1, 10, 0))
    monkeypatch.setenv("AGENT_CLOSED_DATES", '["2026-10-03"]')
    assert Settings().agent_closed_dates == [date(2026, 10, 3)]
    monkeypatch.setenv("AGENT_HOURS", "weekdays 9am")
    with pytest.raises(ValueError, match="AGENT_HOURS"):
        hours_from_settings(Settings())


def test_describe_opening() -> None:
    now = at(2026, 12, 7, 22, 0)
    assert describe_opening(at(2026, 12, 7, 23, 0), now) == "今天 23:00"
    assert describe_opening(at(2026, 12, 8, 9, 0), now) == "明天 09:00"
    assert describe_opening(at(2026, 12, 14, 9, 0), now) == "12月14日 09:00"


def test_a_malformed_spec_stops_the_services_from_being_built(make_settings: Any) -> None:
    with pytest.raises(ValueError, match="AGENT_HOURS: 无法解析 'weekdays'"):
        build_services(make_settings(agent_hours="weekdays"))
    with pytest.raises(ValueError, match="AGENT_TIMEZONE"):
        build_services(make_settings(agent_timezone="Nowhere/City"))
