"""Sensitive words (敏感词): a word list read from a file, matched with an Aho–Corasick automaton.

    words = SensitiveWords("/etc/c_app/sensitive.txt", reload_interval=2.0)
    listed = await words.refresh()           # the list in force (re-read when the file changed)
    scan = listed.scan("...")                # hits, the listed words matched, the text masked
    censor = listed.censor()                 # a streamed answer: feed() each delta, flush() at the end

The file: UTF-8, one word a line; blank lines and lines starting with `#` are ignored. A file that
cannot be read, is not UTF-8, has a word longer than MAX_WORD_CHARS or more than MAX_WORDS words is
refused as a whole (an ERROR log line names the file and the line, never a word) and the list in
force stays; at start-up that means no list at all until the file is fixed.

What is matched is the text *folded*, one character at a time (so folding never depends on where a
stream was cut): NFKC (full-width ＡＢＣ１ -> ABC1, ㈱ -> (株), compatibility ideographs), then
lower-case; then spaces, punctuation, symbols, control and format characters (zero-width space,
variation selectors) are dropped, so 敏 感 词, 敏-感-词, 敏*感*词 and 敏\u200b感词 match 敏感词. Clause
and sentence breaks (， 。 、 ！ ？ ； ： . and line breaks) are kept, so no match reaches across a
sentence ("方法。轮到你" does not contain 法轮). The listed words are folded the same way. A match
is masked in the original text from its first to its last character (what was between included),
one mask character per original character.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import ahocorasick  # type: ignore[import-not-found]  # pyahocorasick ships no type information
import anyio

logger = logging.getLogger(__name__)

MAX_WORD_CHARS = 100
MAX_WORDS = 100_000
# Clause and sentence breaks (after NFKC): kept in the folded text, so a match never spans them.
BREAKS = frozenset(",.!?;:。、\n\r\u2028\u2029")
_DROPPED_CATEGORIES = ("Z", "P", "S", "Cc", "Cf")
_VARIATION_SELECTORS = (range(0xFE00, 0xFE10), range(0xE0100, 0xE01F0))


@lru_cache(maxsize=16384)
def fold_char(ch: str) -> str:
    """One character as it is matched: NFKC, lower-cased, without what is ignored ("" if nothing is left)."""
    kept = []
    for c in unicodedata.normalize("NFKC", ch).lower():
        if c in BREAKS:
            kept.append(c)
            continue
        category = unicodedata.category(c)
        if category[0] in "ZPS" or category in _DROPPED_CATEGORIES:
            continue
        if any(ord(c) in selectors for selectors in _VARIATION_SELECTORS):
            continue
        kept.append(c)
    return "".join(kept)


def fold(text: str) -> tuple[str, list[int]]:
    """The folded text and, for each of its characters, the index of the original character it came from."""
    chars: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        folded = fold_char(ch)
        if folded:
            chars.append(folded)
            origin.extend([i] * len(folded))
    return "".join(chars), origin


@dataclass(frozen=True, slots=True)
class Scan:
    """A whole text checked: how many listed words occur in it, which, and the text masked."""

    hits: int
    words: list[str]  # the listed words matched, as listed, each once, sorted
    text: str


class WordList:
    """One loaded list, never changed after it is built (a reload builds a new one)."""

    def __init__(self, words: list[str], *, mask: str = "*", source: str = "") -> None:
        self.mask = mask
        self.source = source
        self.size = 0
        self.longest = 0  # folded characters in the longest word
        self._automaton = ahocorasick.Automaton()
        for word in words:
            key = "".join(fold_char(ch) for ch in word)
            if not key or self._automaton.exists(key):
                continue
            self._automaton.add_word(key, (word, len(key)))
            self.size += 1
            self.longest = max(self.longest, len(key))
        if self.size:
            self._automaton.make_automaton()

    def matches(self, folded: str) -> Iterator[tuple[int, int, str]]:
        """Every occurrence of every listed word in folded text, overlapping ones included:
        (first, last) folded index and the word as listed."""
        if not self.size or not folded:
            return
        for last, (word, length) in self._automaton.iter(folded):
            yield last - length + 1, last, word

    def censor(self) -> StreamCensor:
        return StreamCensor(self)

    def scan(self, text: str) -> Scan:
        censor = StreamCensor(self)
        masked = censor.feed(text) + censor.flush()
        return Scan(censor.hits, censor.matched_words, masked)


@dataclass(slots=True)
class StreamCensor:
    """Masks listed words in a text that arrives in pieces, across the pieces' boundaries.

    `feed` returns what may be sent now, `flush` the rest at the end. Held back is only the text
    from the first of the last (longest − 1) folded characters on: any word that ends in a later
    piece starts there, so it is still here to be masked. Without ignored characters (spaces,
    punctuation, symbols) between them, that is at most longest − 1 characters; ignored characters
    among those held are held with them. Each occurrence is counted once, when its last character
    arrives, so the hits and the masked text do not depend on how the text was cut.
    """

    words: WordList  # the list this stream is checked against, for its whole length
    hits: int = 0
    _matched: set[str] = field(default_factory=set)
    _buffer: str = ""  # received, not yet returned
    _masked: set[int] = field(default_factory=set)  # indexes in _buffer to mask
    _scanned: int = 0  # folded characters at the start of _buffer already searched

    @property
    def held(self) -> str:
        """The text held back (not yet returned), unmasked."""
        return self._buffer

    @property
    def matched_words(self) -> list[str]:
        return sorted(self._matched)

    def feed(self, text: str) -> str:
        if not text:
            return ""
        self._buffer += text
        folded, origin = fold(self._buffer)
        for first, last, word in self.words.matches(folded):
            if last < self._scanned:
                continue  # found when it arrived
            self.hits += 1
            self._matched.add(word)
            self._masked.update(range(origin[first], origin[last] + 1))
        keep = self.words.longest - 1
        if not folded:
            cut = len(self._buffer)
        elif len(folded) <= keep:
            cut = origin[0]
        else:
            cut = origin[len(folded) - keep] if keep > 0 else len(self._buffer)
        self._scanned = len(folded) - bisect.bisect_left(origin, cut)
        return self._emit(cut)

    def flush(self) -> str:
        self._scanned = 0
        return self._emit(len(self._buffer))

    def _emit(self, cut: int) -> str:
        out = "".join(self.words.mask if i in self._masked else ch for i, ch in enumerate(self._buffer[:cut]))
        self._buffer = self._buffer[cut:]
        self._masked = {i - cut for i in self._masked if i >= cut}
        return out


class WordListError(ValueError):
    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line

    def where(self) -> str:
        return f"line {self.line}: {self.reason}" if self.line is not None else self.reason


def parse(
    data: bytes, *, max_words: int = MAX_WORDS, max_chars: int = MAX_WORD_CHARS
) -> tuple[list[str], list[int]]:
    """The words in a list file's bytes, and the lines skipped because nothing in them can be
    matched (only spaces, punctuation, symbols); WordListError (with the line) when the file is refused."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise WordListError("not valid UTF-8", data.count(b"\n", 0, exc.start) + 1) from None
    words: list[str] = []
    unmatchable: list[int] = []
    for number, line in enumerate(text.split("\n"), start=1):
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if len(word) > max_chars:
            raise WordListError(f"a word longer than {max_chars} characters", number)
        if "\x00" in word:
            raise WordListError("a NUL character", number)
        if not any(fold_char(ch) for ch in word):
            unmatchable.append(number)
            continue
        words.append(word)
        if len(words) > max_words:
            raise WordListError(f"more than {max_words} words", number)
    return words, unmatchable


_Signature = tuple[int, int, int]


class SensitiveWords:
    """The list in force, from SENSITIVE_WORDS_FILE, re-read when the file changes.

    `refresh()` looks at the file (its mtime, size and inode) at most every `reload_interval`
    seconds; when it changed, the new list is read and built in a worker thread and then replaces
    the old one in a single assignment, so a check sees either list, never a mix. A refused file
    leaves the list in force as it was (and is not read again until it changes).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        reload_interval: float = 2.0,
        mask: str = "*",
        max_words: int = MAX_WORDS,
        max_chars: int = MAX_WORD_CHARS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.reload_interval = reload_interval
        self.mask = mask
        self.max_words = max_words
        self.max_chars = max_chars
        self._clock = clock
        self._current: WordList | None = None
        self._seen: _Signature | None = None  # the file as last read (loaded or refused)
        self._checked_at = clock()
        self._loading = False
        self._load()

    @property
    def current(self) -> WordList | None:
        """The list in force (None: no valid list has been loaded yet)."""
        return self._current

    async def refresh(self) -> WordList | None:
        """The list in force, re-read first when the file changed (looked at most every interval)."""
        now = self._clock()
        if self._loading or now - self._checked_at < self.reload_interval:
            return self._current
        self._checked_at = now
        if self._signature() == self._seen:
            return self._current
        self._loading = True
        try:
            await anyio.to_thread.run_sync(self._load)
        finally:
            self._loading = False
        return self._current

    def _signature(self) -> _Signature | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self) -> None:
        """Read and build the list; on any refusal log it and keep the list in force."""
        try:
            with self.path.open("rb") as handle:
                st = os.fstat(handle.fileno())
                self._seen = (st.st_mtime_ns, st.st_size, st.st_ino)
                limit = self.max_words * (self.max_chars * 4 + 2) + 1024
                if st.st_size > limit:
                    raise WordListError(f"larger than {limit} bytes")
                data = handle.read(limit + 1)
            words, unmatchable = parse(data, max_words=self.max_words, max_chars=self.max_chars)
            loaded = WordList(words, mask=self.mask, source=str(self.path))
        except Exception as exc:  # noqa: BLE001  # refused whatever went wrong; no traceback (it could quote a word)
            if isinstance(exc, WordListError):
                reason = exc.where()
            elif isinstance(exc, OSError):
                self._seen = self._signature()
                reason = f"cannot be read ({exc.strerror or type(exc).__name__})"
            else:
                reason = f"could not be built ({type(exc).__name__})"
            if self._current is None:
                logger.error(
                    "sensitive-word list %s refused, %s: NO sensitive-word checks until the file is fixed",
                    self.path,
                    reason,
                )
            else:
                logger.error(
                    "sensitive-word list %s refused, %s: the previous list (%d words) stays in force",
                    self.path,
                    reason,
                    self._current.size,
                )
            return
        self._current = loaded
        if unmatchable:
            logger.warning(
                "sensitive-word list %s: line(s) %s skipped: only spaces, punctuation or symbols, nothing to match",
                self.path,
                ", ".join(map(str, unmatchable[:20])) + (" ..." if len(unmatchable) > 20 else ""),
            )
        logger.info(
            "sensitive-word list %s loaded: %d words (longest %d characters)",
            self.path,
            loaded.size,
            loaded.longest,
        )
