"""Hit-testing helper: shows how a query is normalised and tokenised, and how much each term weighs.

Contract: ``analyze(query, index=None) -> dict`` with keys
- ``original``: the input; ``normalized``: ``normalize(query)``;
- ``terms``: list of ``{"term", "kind" ("word"|"char"|"bigram"), "count", "weight", "in_index"}``,
  heaviest first; ``weight`` is kind weight x IDF (from ``index`` when given, else from the
  general-Chinese background alone); ``in_index`` is None without an index;
- ``words`` / ``chars`` / ``bigrams``: the plain terms by kind, in query order.
An operator can see why an entry was or wasn't found: a term the entry lacks, a filler that was
stripped, a typo that produced different characters.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from . import background
from .index import LexicalIndex, Params
from .text import BIGRAM, CHAR, WORD, normalize, tokenize

_KIND_NAMES = {WORD: "word", CHAR: "char", BIGRAM: "bigram"}


def analyze(query: str, index: LexicalIndex | None = None) -> dict[str, Any]:
    """Normalised form and weighted terms of ``query`` (see module docstring)."""
    normalized = normalize(query)
    ordered = tokenize(normalized)
    rows: list[dict[str, Any]] = []
    if index is not None:
        for term, count, weight, known in index.query_terms(query):
            rows.append(
                {
                    "term": term[1:],
                    "kind": _KIND_NAMES[term[0]],
                    "count": count,
                    "weight": round(weight, 3),
                    "in_index": known,
                }
            )
    else:
        params = Params()
        for term, count in Counter(ordered).items():
            p = background.doc_prob(term)
            idf = math.log1p((1.0 - p + 0.5 / params.prior_docs) / (p + 0.5 / params.prior_docs))
            rows.append(
                {
                    "term": term[1:],
                    "kind": _KIND_NAMES[term[0]],
                    "count": count,
                    "weight": round(params.kind_weight[term[0]] * idf, 3),
                    "in_index": None,
                }
            )
    rows.sort(key=lambda r: -r["weight"])
    return {
        "original": query,
        "normalized": normalized,
        "terms": rows,
        "words": [t[1:] for t in ordered if t[0] == WORD],
        "chars": [t[1:] for t in ordered if t[0] == CHAR],
        "bigrams": [t[1:] for t in ordered if t[0] == BIGRAM],
    }
