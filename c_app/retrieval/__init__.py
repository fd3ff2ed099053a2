"""FAQ retrieval: text normalisation and a lexical index with calibrated [0, 1] scores."""

from .index import LexicalIndex, Params
from .text import normalize

DEFAULT_ANSWER_THRESHOLD = 0.8

__all__ = ["DEFAULT_ANSWER_THRESHOLD", "LexicalIndex", "Params", "analyze", "normalize"]
