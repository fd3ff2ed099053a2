"""Business hours of the human agents (AGENT_HOURS, AGENT_TIMEZONE, AGENT_CLOSED_DATES).

    hours = parse_hours("mon-fri 09:00-21:00; sat 10:00-16:00", "Asia/Shanghai", [date(2026, 10, 1)])
    is_open(hours, datetime.now(UTC))        # inside a range, not on a closed date
    next_opening(hours, datetime.now(UTC))   # the next moment people are there (now if open), or None

The spec is a list of ranges separated by ";" or ",". A range is `[days] HH:MM-HH:MM`:

- days: `mon`..`sun` (or the full English name), a span `mon-fri` (a span may wrap: `fri-mon`), or
  `daily` / `*`; without days the range holds every day.
- times: local wall-clock times in AGENT_TIMEZONE; the end is exclusive and may be `24:00`. An end
  before the start is an overnight range: `fri 22:00-02:00` runs from Friday 22:00 to Saturday 02:00.

An empty spec means always open. A closed date (a holiday) closes its whole local calendar day,
including the hours of an overnight range that fall on it. A malformed spec, an unknown time zone or
an empty range raises ValueError naming the fault; the settings are read at start-up, so a bad
configuration stops the app there. Times are compared on the local wall clock (zoneinfo), so a zone
with daylight saving keeps its opening hours across the change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..config import Settings

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_NAMES = {**{d: i for i, d in enumerate(DAYS)}, **{d: i for i, d in enumerate(_FULL)}}
_RANGE = re.compile(
    r"^(?:(?P<days>[A-Za-z*]+(?:\s*-\s*[A-Za-z]+)?)\s+)?"
    r"(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})$"
)
# How far next_opening looks ahead: a year of closed dates and a week of ranges beyond it.
_HORIZON_DAYS = 366 + 7
_DAY = 24 * 60


@dataclass(frozen=True, slots=True)
class Window:
    """One weekly range: starts on `day` (0 = Monday) at `start` minutes, lasts `length` minutes."""

    day: int
    start: int
    length: int


@dataclass(frozen=True, slots=True)
class Hours:
    windows: tuple[Window, ...]  # empty: always open (but for the closed dates)
    timezone: ZoneInfo
    closed_dates: frozenset[date]
    spec: str = ""

    @property
    def always_open(self) -> bool:
        return not self.windows


def _minutes(text: str, *, end: bool) -> int:
    hour, minute = (int(part) for part in text.split(":"))
    if minute > 59 or hour > 24 or (hour == 24 and (minute or not end)):
        raise ValueError(f"AGENT_HOURS: 时间无效 {text!r}（应为 00:00 至 24:00）")
    return hour * 60 + minute


def _days(text: str | None) -> list[int]:
    if text is None or text.lower() in ("daily", "*"):
        return list(range(7))
    names = [part.strip().lower() for part in text.split("-")]
    unknown = [name for name in names if name not in _DAY_NAMES]
    if unknown:
        raise ValueError(f"AGENT_HOURS: 无法识别的星期 {unknown[0]!r}（应为 mon..sun、daily 或 *）")
    if len(names) == 1:
        return [_DAY_NAMES[names[0]]]
    first, last = _DAY_NAMES[names[0]], _DAY_NAMES[names[1]]
    return [(first + i) % 7 for i in range((last - first) % 7 + 1)]


def parse_hours(spec: str, timezone: str, closed_dates: Iterable[date]) -> Hours:
    """The hours a spec describes; ValueError (with the offending part named) when it is malformed."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"AGENT_TIMEZONE: 未知时区 {timezone!r}") from exc
    windows: list[Window] = []
    for part in re.split(r"[;,]", spec or ""):
        part = part.strip()
        if not part:
            continue
        match = _RANGE.match(part)
        if match is None:
            raise ValueError(f"AGENT_HOURS: 无法解析 {part!r}（示例：mon-fri 09:00-21:00; sat 10:00-16:00）")
        start = _minutes(match["start"], end=False)
        finish = _minutes(match["end"], end=True)
        if start == finish:
            raise ValueError(f"AGENT_HOURS: {part!r} 的开始与结束时间相同")
        length = finish - start if finish > start else _DAY - start + finish  # overnight
        windows.extend(Window(day, start, length) for day in _days(match["days"]))
    if (spec or "").strip() and not windows:
        raise ValueError(f"AGENT_HOURS: 没有有效的时间段 {spec!r}")
    return Hours(tuple(windows), zone, frozenset(closed_dates), (spec or "").strip())


def _local(hours: Hours, now: datetime) -> datetime:
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)  # a naive time is read as UTC
    return now.astimezone(hours.timezone)


def _covered(hours: Hours, local: datetime) -> bool:
    if local.date() in hours.closed_dates:
        return False
    if hours.always_open:
        return True
    weekday = local.weekday()
    minute = local.hour * 60 + local.minute
    for window in hours.windows:
        # Minutes since the window's start day began, for today's start and for yesterday's.
        for offset, day in ((0, weekday), (_DAY, (weekday - 1) % 7)):
            if window.day == day and window.start <= minute + offset < window.start + window.length:
                return True
    return False


def is_open(hours: Hours, now: datetime) -> bool:
    """Whether `now` (aware; naive is read as UTC) falls inside the hours and on no closed date."""
    return _covered(hours, _local(hours, now))


def next_opening(hours: Hours, now: datetime) -> datetime | None:
    """The first moment at or after `now` when the hours are open (`now` itself when open), in the
    hours' time zone; None when nothing opens within a year (every day closed)."""
    local = _local(hours, now)
    if _covered(hours, local):
        return local
    today = local.date()
    candidates: list[datetime] = []
    for i in range(_HORIZON_DAYS + 1):
        day = today + timedelta(days=i)
        # Midnight opens a day whose previous day was closed (always open, or an overnight range).
        starts = [0] + [w.start for w in hours.windows if w.day == day.weekday()]
        for minute in sorted(set(starts)):
            wall = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=hours.timezone)
            # A wall time skipped by a daylight-saving change is normalised through UTC.
            moment = wall.astimezone(UTC).astimezone(hours.timezone)
            if moment > local and _covered(hours, moment):
                candidates.append(moment)
        if candidates:
            return min(candidates)
    return None


def describe_opening(moment: datetime, now: datetime) -> str:
    """A short Chinese phrase for when people are back: "今天 09:00", "明天 09:00", "10月8日 09:00"."""
    local_now = (
        now.astimezone(moment.tzinfo) if now.tzinfo else now.replace(tzinfo=UTC).astimezone(moment.tzinfo)
    )
    days = (moment.date() - local_now.date()).days
    clock = moment.strftime("%H:%M")
    if days == 0:
        return f"今天 {clock}"
    if days == 1:
        return f"明天 {clock}"
    return f"{moment.month}月{moment.day}日 {clock}"


def hours_from_settings(settings: Settings) -> Hours:
    """AGENT_HOURS, AGENT_TIMEZONE and AGENT_CLOSED_DATES as Hours (ValueError when malformed)."""
    return parse_hours(settings.agent_hours, settings.agent_timezone, settings.agent_closed_dates)
