"""Background (general-Chinese) term statistics derived from jieba's dictionary.

Why: an index's own document frequencies are meaningless for a tiny index (a user's 3 private
memories) and make scores depend on what else happens to be indexed. jieba's dictionary word
frequencies are a stable general-Chinese corpus; from them we derive, for each index term
(word / character / bigram, see ``text.tokenize``), the probability that a short question
contains it. ``LexicalIndex`` uses that probability as a prior of ``PRIOR_DOCS`` pseudo
documents merged with its own statistics, so IDF is sensible at any index size and converges to
the index's own statistics for large indexes.

Contract: ``doc_prob(term) -> float`` in (0, 1); computed once per process, thread-safe.

Cache: first build ~2-3 s, later loads ~0.2 s from ``background.<key>.npz`` in the private cache
folder (``text.cache_dir()``: Settings.cache_path, mode 0700; never the shared temp dir). The file
is plain arrays read with ``allow_pickle=False``, so it cannot run code, and it is checked before
use (format version, source key, array types and shapes, a SHA-256 of the contents, values in
(0, 1]); anything else is rebuilt, never trusted. No cache folder: built in memory, nothing written.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import os
import tempfile
import threading
from collections import defaultdict
from pathlib import Path

import numpy as np
from numpy.lib.npyio import NpzFile

from .text import BIGRAM, CHAR, USER_DICT_PATH, WORD, cache_dir, get_jieba

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_SEPARATOR = "\n"  # between terms; no jieba dictionary word holds one (checked before writing)
_FIELDS = {"version", "source", "terms", "probs", "digest"}

# Typical number of terms of each kind in a short customer question; converts a per-token
# probability p into the probability that a question contains the term: 1 - exp(-L * p).
_TYPICAL_LEN = {WORD: 5.0, CHAR: 10.0, BIGRAM: 9.0}
# Probability for terms jieba's dictionary never shows (typos, cross-word bigrams, product
# names). Not the vanishing "never seen" value: that would give every typo the highest IDF.
_UNSEEN_DOC_PROB = {WORD: 3e-5, CHAR: 3e-5, BIGRAM: 3e-5}

_lock = threading.Lock()
_probs: dict[str, float] | None = None


def _build() -> dict[str, float]:
    tok = get_jieba()
    counts: dict[str, float] = defaultdict(float)
    totals = {WORD: 0.0, CHAR: 0.0, BIGRAM: 0.0}
    for word, freq in tok.FREQ.items():
        if freq <= 0:  # jieba stores every word prefix with frequency 0
            continue
        word = word.lower()
        if len(word) >= 2 and not word.isascii():
            counts[WORD + word] += freq
            totals[WORD] += freq
        for ch in word:
            counts[CHAR + ch] += freq
        totals[CHAR] += freq * len(word)
        for a, b in itertools.pairwise(word):
            counts[BIGRAM + a + b] += freq
        totals[BIGRAM] += freq * max(len(word) - 1, 0)
    probs: dict[str, float] = {}
    for term, c in counts.items():
        kind = term[0]
        p_token = c / totals[kind]
        probs[term] = max(1.0 - math.exp(-_TYPICAL_LEN[kind] * p_token), 1e-7)
    return probs


def _source_key() -> str:
    """Identity of what the statistics are built from: jieba's dictionary, ours, this module."""
    import jieba

    h = hashlib.sha256(f"v{FORMAT_VERSION}".encode())
    for path in (os.path.join(os.path.dirname(jieba.__file__), "dict.txt"), str(USER_DICT_PATH), __file__):
        try:
            st = os.stat(path)
            h.update(f"{os.path.basename(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
        except OSError:
            pass
    return h.hexdigest()[:16]


def cache_file(folder: Path, key: str) -> Path:
    return folder / f"background.{key}.npz"


def _digest(terms: bytes, probs: bytes) -> bytes:
    return hashlib.sha256(len(terms).to_bytes(8, "big") + terms + probs).digest()


def _array(data: NpzFile, name: str, dtype: str) -> np.ndarray:
    value = data[name]
    if not isinstance(value, np.ndarray) or value.dtype != np.dtype(dtype) or value.ndim != 1:
        raise ValueError(f"{name}: not a 1-D {dtype} array")
    return value


def load(path: Path, key: str) -> dict[str, float]:
    """The statistics in ``path``; raises (ValueError, OSError, ...) on anything ``save`` did not write."""
    with path.open("rb") as f:  # ours to close, whatever np.load makes of the bytes
        loaded = np.load(f, allow_pickle=False)  # a pickle raises here instead of being run
        if not isinstance(loaded, NpzFile):
            raise TypeError("not an .npz archive")
        with loaded as data:
            if set(data.files) != _FIELDS:
                raise ValueError(f"unexpected fields {sorted(data.files)}")
            version = _array(data, "version", "<i8")
            if version.shape != (1,) or int(version[0]) != FORMAT_VERSION:
                raise ValueError("format version")
            if _array(data, "source", "u1").tobytes() != key.encode():
                raise ValueError("built from other dictionaries")
            terms = _array(data, "terms", "u1").tobytes()
            probs = _array(data, "probs", "<f8")
            digest = _array(data, "digest", "u1").tobytes()
    if digest != _digest(terms, probs.tobytes()):
        raise ValueError("checksum mismatch")
    names = terms.decode("utf-8").split(_SEPARATOR)
    if len(names) != len(probs) or not len(probs):
        raise ValueError("term and value counts differ")
    if not (np.isfinite(probs).all() and (probs > 0).all() and (probs <= 1).all()):
        raise ValueError("a value outside (0, 1]")
    probs_by_term = dict(zip(names, probs.tolist(), strict=True))
    if len(probs_by_term) != len(names) or any(
        name[:1] not in _TYPICAL_LEN or len(name) < 2 for name in names
    ):
        raise ValueError("malformed terms")
    return probs_by_term


def save(path: Path, key: str, probs: dict[str, float]) -> None:
    """Write atomically (a reader sees the old file or the new one, never half of one)."""
    names = list(probs)
    if any(_SEPARATOR in name for name in names):
        raise ValueError("a term holds the separator")
    terms = _SEPARATOR.join(names).encode("utf-8")
    values = np.fromiter((probs[name] for name in names), dtype="<f8", count=len(names))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".background.", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                version=np.array([FORMAT_VERSION], dtype="<i8"),
                source=np.frombuffer(key.encode(), dtype="u1"),
                terms=np.frombuffer(terms, dtype="u1"),
                probs=values,
                digest=np.frombuffer(_digest(terms, values.tobytes()), dtype="u1"),
            )
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    for stale in path.parent.glob("background.*.npz"):  # from older dictionaries or code
        if stale != path:
            with contextlib.suppress(OSError):
                stale.unlink()


def _load_or_build(folder: Path | None = None) -> dict[str, float]:
    """Load the cache in the private folder when it is valid; otherwise build (and cache) anew."""
    folder = folder if folder is not None else cache_dir()
    if folder is None:
        return _build()
    key = _source_key()
    path = cache_file(folder, key)
    if path.exists():
        try:
            return load(path, key)
        except Exception as exc:  # noqa: BLE001 - corrupt, tampered, truncated or foreign: rebuilt, never used
            logger.warning("ignoring background statistics cache %s (%s): rebuilding", path, exc)
    probs = _build()
    try:
        save(path, key, probs)
    except (OSError, ValueError) as exc:
        logger.warning("could not cache background statistics in %s: %s", folder, exc)
    return probs


def _get() -> dict[str, float]:
    global _probs
    if _probs is None:
        with _lock:
            if _probs is None:
                _probs = _load_or_build()
    return _probs


def doc_prob(term: str) -> float:
    """Background probability that a short question contains ``term`` (a prefixed index term)."""
    p = _get().get(term)
    if p is None:
        return _UNSEEN_DOC_PROB.get(term[:1], 3e-5)
    return p
