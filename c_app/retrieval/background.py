"""Background (general-Chinese) term statistics derived from jieba's dictionary.

Why: an index's own document frequencies are meaningless for a tiny index (a user's 3 private
memories) and make scores depend on what else happens to be indexed. jieba's dictionary word
frequencies are a stable general-Chinese corpus; from them we derive, for each index term
(word / character / bigram, see ``text.tokenize``), the probability that a short question
contains it. ``LexicalIndex`` uses that probability as a prior of ``PRIOR_DOCS`` pseudo
documents merged with its own statistics, so IDF is sensible at any index size and converges to
the index's own statistics for large indexes.

Contract: ``doc_prob(term) -> float`` in (0, 1); computed once per process and cached in the
temp dir (first build ~3 s, later loads ~0.3 s), thread-safe.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import pickle
import tempfile
import threading
from collections import defaultdict

from .text import BIGRAM, CHAR, WORD, get_jieba

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


def _cache_path() -> str:
    # Keyed by the dictionaries' identity and this module's source, so any change rebuilds.
    import jieba

    from .text import USER_DICT_PATH

    h = hashlib.sha1()
    for path in (os.path.join(os.path.dirname(jieba.__file__), "dict.txt"), str(USER_DICT_PATH), __file__):
        try:
            st = os.stat(path)
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
        except OSError:
            pass
    return os.path.join(tempfile.gettempdir(), f"c_app_retrieval_bg.{h.hexdigest()[:16]}.pkl")


def _load_or_build() -> dict[str, float]:
    """Build once (~3 s of pure Python), then reuse a pickle in the temp dir like jieba does."""
    path = _cache_path()
    try:
        with open(path, "rb") as f:
            probs = pickle.load(f)
        if isinstance(probs, dict) and probs:
            return probs
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError):
        pass
    probs = _build()
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".c_app_bg.")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(probs, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only temp dir only costs the rebuild next time
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
