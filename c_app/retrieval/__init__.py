"""FAQ retrieval: text normalisation and a lexical index with calibrated [0, 1] scores.

``normalize`` gives the canonical text, ``analyze`` explains a query for hit-testing, and
``LexicalIndex`` matches customer wording against KB questions. ``DEFAULT_ANSWER_THRESHOLD`` is
the top-hit score from which the KB responder may answer directly (see bench/retrieval_tune.py).
"""

from .analysis import analyze
from .index import LexicalIndex, Params
from .text import normalize

DEFAULT_ANSWER_THRESHOLD: float = 0.8

__all__ = ["DEFAULT_ANSWER_THRESHOLD", "LexicalIndex", "Params", "analyze", "normalize"]
