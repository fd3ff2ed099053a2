"""Background (general-Chinese) term statistics derived from jieba's dictionary.

Why: an index's own document frequencies are meaningless for a tiny index (a user's 3 private
memories) and make scores depend on what else happens to be indexed. jieba's dictionary word
frequencies are a stable general-Chinese corpus; from them we derive, for each index term
(word / character / bigram, see ``text.tokenize``), the probability that a short question
contains it. ``LexicalIndex`` uses that probability as a prior of ``PRIOR_DOCS`` pseudo
documents merged with its own statistics, so IDF is sensible at any index size and converges to
the index's own statistics for large indexes.

Contract: ``doc_prob(term) -> float`` in (0, 1); computed once per process (about a second,
together with jieba's own load), thread-safe.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict

from .text import BIGRAM, CHAR, PINYIN, WORD, get_jieba, pinyin_bigrams

# Typical number of terms of each kind in a short customer question; converts a per-token
# probability p into the probability that a question contains the term: 1 - exp(-L * p).
_TYPICAL_LEN = {WORD: 5.0, CHAR: 10.0, BIGRAM: 9.0, PINYIN: 9.0}
# Probability for terms jieba's dictionary never shows (typos, cross-word bigrams, product
# names). Not the vanishing "never seen" value: that would give every typo the highest IDF.
_UNSEEN_DOC_PROB = {WORD: 3e-5, CHAR: 3e-5, BIGRAM: 3e-5, PINYIN: 3e-5}

_lock = threading.Lock()
_probs: dict[str, float] | None = None


def _build() -> dict[str, float]:
    tok = get_jieba()
    counts: dict[str, float] = defaultdict(float)
    totals = {WORD: 0.0, CHAR: 0.0, BIGRAM: 0.0, PINYIN: 0.0}
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
        for a, b in zip(word, word[1:]):
            counts[BIGRAM + a + b] += freq
        totals[BIGRAM] += freq * max(len(word) - 1, 0)
        for pb in pinyin_bigrams(list(word)):
            counts[pb] += freq
            totals[PINYIN] += freq
    probs: dict[str, float] = {}
    for term, c in counts.items():
        kind = term[0]
        p_token = c / totals[kind]
        probs[term] = max(1.0 - math.exp(-_TYPICAL_LEN[kind] * p_token), 1e-7)
    return probs


def _get() -> dict[str, float]:
    global _probs
    if _probs is None:
        with _lock:
            if _probs is None:
                _probs = _build()
    return _probs


def doc_prob(term: str) -> float:
    """Background probability that a short question contains ``term`` (a prefixed index term)."""
    p = _get().get(term)
    if p is None:
        return _UNSEEN_DOC_PROB.get(term[:1], 3e-5)
    return p
