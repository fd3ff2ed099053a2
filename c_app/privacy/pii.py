"""Personal data in customer-service text: detection, stable placeholders, and the way back.

    masker = Masker()
    masker.mask("我的手机是13812345678")          # "我的手机是[手机号1]"
    masker.unmask("已记下[手机号1]")              # "已记下13812345678"
    unmasker = masker.unmasker()                 # for a streamed answer
    unmasker.feed("请拨打[手机") + unmasker.feed("号1]") + unmasker.flush()

What is recognised (precision before recall: a number that only looks like one is left alone):

- 手机号: 1[3-9] and 9 more digits, not inside a longer digit run; also with a `+86` / `0086` /
  `86-` prefix and spaced or dashed 3-4-4 (`138 1234 5678`).
- 身份证: the 18-character resident ID with a valid ISO 7064 MOD 11-2 check character and a real
  birth date (1900 to today). The old 15-digit ID has no check digit and is not recognised.
- 银行卡: 13-19 digits, contiguous or in groups of four separated by spaces or dashes (16 digits,
  or 16 + up to 3), passing the Luhn check, and starting like a payment card (3, 4, 5, 6, 9, or
  Mastercard's 2221-2720): an order or tracking number that fails Luhn, or starts with 1, 7, 8,
  0 or a date such as 2024..., stays.
- 邮箱: local@domain.tld, ASCII (an internationalised address is not recognised).
- 座机: an area code (010, 02x, 0xxx) separated by a dash, a space or parentheses from a 7-8 digit
  local number (`010-12345678`, `(0571)8888888`); without the separator it is not recognised.
  400/800 service numbers are a company's, not personal, and stay.
- 车牌: a province character, a letter, an optional `·`, then 5 characters with at least 3 digits
  (ordinary plates) or the 6-character new-energy forms (D/F + letter or digit + 4 digits, or
  5 digits + D/F): 京A12345, 粤B·D12345.
- 地址: the detailed part of a postal address when it can be told reliably: what follows a
  `...省` / `...市` (or `地址：`), with an optional district (区/县/旗), an optional town
  (镇/乡/街道), a road (路/街/大道/巷/弄/胡同), a house number in Arabic digits + 号, and an optional
  estate (小区/大厦/花园/公寓/家园/苑) and building/unit/floor/room (栋/幢/座/单元/层/楼/室). The
  province and city stay in clear (not personal on their own, and the model needs them for
  shipping questions). Not recognised: an address without a 省/市 or 地址 before it, house numbers
  in Chinese numerals, rural addresses (村/组), road names containing an administrative
  character (市府路, 路桥区).

Every repetition in the patterns is bounded and none is nested in another that varies; the
address parts' character classes exclude the characters that end a part. So the work at each
position of the text is bounded by a constant, and matching is linear in the text's length (the
tests run long adversarial inputs). The values a Masker restores are the turn's own: the
customer's words, history and memories, and the public knowledge base.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

PHONE = "手机号"
ID_CARD = "身份证"
BANK_CARD = "银行卡"
EMAIL = "邮箱"
LANDLINE = "座机"
PLATE = "车牌"
ADDRESS = "地址"
KINDS = (PHONE, ID_CARD, BANK_CARD, EMAIL, LANDLINE, PLATE, ADDRESS)

# Any placeholder this module writes; the number has at most 4 digits (a turn never holds 10,000 values).
PLACEHOLDER = re.compile(r"\[(?:" + "|".join(KINDS) + r")\d{1,4}\]")

# No kind is found in a text without a digit or an "@": the quick test before any pattern runs.
_MAYBE = re.compile(r"[\d@]")

_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
_TLD = re.compile(r"[A-Za-z]{2,24}")
_ID_CARD = re.compile(r"[1-8](?<!\d[1-8])\d{5}(?:18|19|20)\d{2}[01]\d[0-3]\d\d{3}[\dXx](?!\d)")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
_CARD_RUN = re.compile(r"\d(?<!\d\d)\d{12,18}(?!\d)")
_CARD_GROUPED = re.compile(r"\d(?<!\d\d)\d{3}([ -])\d{4}\1\d{4}\1\d{4}")
_CARD_TAIL = re.compile(r"[ -]\d{1,3}(?!\d)")
_PHONE = re.compile(r"(?<![\d+])(?:\+86[- ]?|0086[- ]?|86-)?1[3-9]\d[- ]?\d{4}[- ]?\d{4}(?!\d)")
_LANDLINE = re.compile(
    r"(?<!\d)(?:[(（]0(?:10|2\d|[3-9]\d\d)[)）] ?|0(?:10|2\d|[3-9]\d\d)[- ])[1-9]\d{6,7}(?!\d)"
)
_PLATE = re.compile(
    r"[京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼]"
    r"[A-HJ-NP-Za-hj-np-z][·•・ ]?[A-HJ-NP-Za-hj-np-z0-9]{5,6}(?![A-Za-z0-9])"
)
_NEW_ENERGY = re.compile(r"[DFdf][A-HJ-NP-Za-hj-np-z0-9]\d{4}|\d{5}[DFdf]")
# A name character: a letter that is neither ASCII nor a digit nor a character that ends a part.
_N = r"[^\W\d_A-Za-z省市区县旗镇乡路街道巷弄号]"
_ADDRESS = re.compile(
    r"(?:(?<=[省市])|(?<=地址[:：]))"
    rf"(?:{_N}{{1,8}}[区县旗])?"  # district
    rf"(?:{_N}{{1,8}}(?:镇|乡|街道))?"  # town
    rf"{_N}{{1,12}}(?:路|街|大道|巷|弄|胡同)"  # road
    r"\d{1,5}(?:-\d{1,4})?号"  # house number
    rf"(?:{_N}{{1,10}}(?:小区|大厦|花园|公寓|家园|苑))?"  # estate
    r"[A-Za-z0-9栋幢座单元层楼室-]{0,24}"  # building, unit, floor, room
)


@dataclass(frozen=True, slots=True)
class Found:
    start: int
    end: int
    kind: str
    key: str  # the value in a canonical form: one placeholder for 13812345678 and 138-1234-5678


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def valid_id_card(number: str) -> bool:
    """An 18-character resident ID: MOD 11-2 check character and a birth date that exists."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS, strict=True))
    if _ID_CHECK[total % 11] != number[17].upper():
        return False
    try:
        born = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    return date(1900, 1, 1) <= born <= date.today()


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def valid_card(digits: str) -> bool:
    """13-19 digits, a payment card's first digits, and the Luhn check."""
    if not 13 <= len(digits) <= 19 or not digits.isdigit():
        return False
    first = digits[0]
    card_like = first in "34569" or (first == "2" and 2221 <= int(digits[:4]) <= 2720)
    return card_like and luhn(digits)


def _emails(text: str) -> list[Found]:
    found = []
    for match in _EMAIL.finditer(text):
        local, _, domain = match[0].partition("@")
        domain = domain.rstrip(".-")
        labels = domain.split(".")
        if len(labels) < 2 or not all(labels) or not _TLD.fullmatch(labels[-1]):
            continue
        if local.startswith(".") or local.endswith("."):
            continue
        end = match.start() + len(local) + 1 + len(domain)
        found.append(Found(match.start(), end, EMAIL, text[match.start() : end].lower()))
    return found


def _id_cards(text: str) -> list[Found]:
    return [
        Found(m.start(), m.end(), ID_CARD, m[0].upper())
        for m in _ID_CARD.finditer(text)
        if valid_id_card(m[0])
    ]


def _cards(text: str) -> list[Found]:
    found = [Found(m.start(), m.end(), BANK_CARD, m[0]) for m in _CARD_RUN.finditer(text) if valid_card(m[0])]
    for match in _CARD_GROUPED.finditer(text):
        end = match.end()
        tail = _CARD_TAIL.match(text, end)
        if tail and tail[0][0] == match[1]:
            end = tail.end()
        elif end < len(text) and text[end].isdigit():
            continue  # part of a longer digit run
        digits = _digits(text[match.start() : end])
        if valid_card(digits):
            found.append(Found(match.start(), end, BANK_CARD, digits))
    return found


def _phones(text: str) -> list[Found]:
    return [Found(m.start(), m.end(), PHONE, _digits(m[0])[-11:]) for m in _PHONE.finditer(text)]


def _landlines(text: str) -> list[Found]:
    return [Found(m.start(), m.end(), LANDLINE, _digits(m[0])) for m in _LANDLINE.finditer(text)]


def _plates(text: str) -> list[Found]:
    found = []
    for match in _PLATE.finditer(text):
        head, tail = match[0][:2], match[0][2:].lstrip("·•・ ")
        if len(tail) == 6 and not _NEW_ENERGY.fullmatch(tail):
            continue
        if len(tail) == 5 and sum(ch.isdigit() for ch in tail) < 3:
            continue
        found.append(Found(match.start(), match.end(), PLATE, (head + tail).upper()))
    return found


def _addresses(text: str) -> list[Found]:
    found = []
    for match in _ADDRESS.finditer(text):
        value = match[0].rstrip("-")
        found.append(Found(match.start(), match.start() + len(value), ADDRESS, value))
    return found


# Earlier detectors win where spans overlap (an e-mail holding digits is an e-mail; an 18-digit
# number that is a valid ID is not also read as a card). Each runs only on a text that could hold
# its kind: the numbers need four digits in a row (a spaced phone number has no more), an e-mail
# an "@", an address a "号".
_RUN4 = re.compile(r"\d{4}")
_NUMBERS = (_id_cards, _cards, _phones, _landlines)


def find_pii(text: str) -> list[Found]:
    """Every recognised value in `text`, in order, without overlaps."""
    if not text or not _MAYBE.search(text):
        return []
    detectors: list[Callable[[str], list[Found]]] = []
    if "@" in text:
        detectors.append(_emails)
    if _RUN4.search(text):
        detectors.extend(_NUMBERS)
    detectors.append(_plates)
    if "号" in text:
        detectors.append(_addresses)
    taken: list[Found] = []  # sorted by start, none overlapping
    starts: list[int] = []
    for detect in detectors:
        for item in detect(text):
            at = bisect.bisect_left(starts, item.start)
            if at > 0 and taken[at - 1].end > item.start:
                continue
            if at < len(taken) and taken[at].start < item.end:
                continue
            taken.insert(at, item)
            starts.insert(at, item.start)
    return taken


class Masker:
    """Replaces personal data with placeholders, one per distinct value (`[手机号1]`, `[手机号2]`,
    `[邮箱1]` ...), and puts the values back. One Masker per turn: the same value gets the same
    placeholder wherever it appears in that turn."""

    def __init__(self) -> None:
        self._placeholders: dict[tuple[str, str], str] = {}  # (kind, key) -> placeholder
        self._values: dict[str, str] = {}  # placeholder -> the value as first seen
        self._counts: dict[str, int] = {}

    @property
    def values(self) -> dict[str, str]:
        """Placeholder -> real value (a copy)."""
        return dict(self._values)

    def mask(self, text: str) -> str:
        found = find_pii(text)
        if not found:
            return text
        out: list[str] = []
        pos = 0
        for item in found:
            out.append(text[pos : item.start])
            out.append(self._placeholder(item, text[item.start : item.end]))
            pos = item.end
        out.append(text[pos:])
        return "".join(out)

    def _placeholder(self, item: Found, value: str) -> str:
        placeholder = self._placeholders.get((item.kind, item.key))
        if placeholder is None:
            number = self._counts.get(item.kind, 0) + 1
            self._counts[item.kind] = number
            placeholder = f"[{item.kind}{number}]"
            self._placeholders[(item.kind, item.key)] = placeholder
            self._values[placeholder] = value
        return placeholder

    def unmask(self, text: str) -> str:
        """`text` with every known placeholder replaced by its value (unknown ones stay as written)."""
        if not self._values or "[" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self._values.get(m[0], m[0]), text)

    def could_complete(self, tail: str) -> bool:
        """Whether `tail` (starting with "[") is the beginning of a known placeholder."""
        return any(placeholder.startswith(tail) for placeholder in self._values)

    def unmasker(self) -> Unmasker:
        return Unmasker(self)


class Unmasker:
    """Puts the real values back into a streamed answer. A placeholder may arrive split over
    several chunks (`[手机` + `号1]`): only a possible beginning of a known placeholder (from an
    unmatched `[` on) is held back, everything before it is released at once; `flush()` releases
    what is held at the end. The Masker may learn new placeholders while the stream runs (a tool's
    results are masked with it): each chunk is read against what it knows then."""

    def __init__(self, masker: Masker) -> None:
        self.masker = masker
        self._held = ""

    def feed(self, chunk: str) -> str:
        text = self._held + chunk if self._held else chunk
        self._held = ""
        cut = text.rfind("[")
        if cut != -1 and "]" not in text[cut:] and self.masker.could_complete(text[cut:]):
            self._held = text[cut:]
            text = text[:cut]
        return self.masker.unmask(text)

    def flush(self) -> str:
        """What is still held (an unfinished or unknown placeholder, passed through as text)."""
        held, self._held = self._held, ""
        return held


def mask_text(text: str) -> str:
    """`text` with its personal data replaced (placeholders numbered within this text alone)."""
    if not text or not _MAYBE.search(text):
        return text
    return Masker().mask(text)
