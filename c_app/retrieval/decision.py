"""Answer, clarify or decline: the knowledge-base decision from corpus-independent features.

Contract:
- ``Candidate(doc_id, score, questions, answer)``: one knowledge-base hit as retrieval ranked it
  (``score`` the calibrated index score, ``questions`` the entry's question and similar questions,
  ``answer`` what it would say: two entries with one answer agree rather than compete).
- ``features(query, candidates) -> list[float]`` (``FEATURES`` names them): the top score, its
  lead over the best candidate with a different answer, how much of the query the top entry's
  closest question covers and how much of that question the query covers (IDF-weighted with the
  general-Chinese background only, so no corpus's statistics enter), the same coverage on the
  word channel alone and on the character channel alone (their agreement), the query's length,
  and how crowded the top of the ranking is.
- ``DecisionModel`` holds two logistic regressions fitted offline by ``bench/decision_fit.py``
  and shipped as ``decision_model.json`` next to this file: P(the top candidate is right) and
  P(the right entry is among the first ``choices`` candidates), with the probability cut-offs
  chosen on the fitting set. ``decide(query, candidates) -> Verdict``: ``answer`` one entry,
  ``clarify`` with 2-3 entries to choose from, or ``none`` (say it does not know, offer a person).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from . import background
from .text import BIGRAM, CHAR, WORD, normalize, tokenize

MODEL_PATH = Path(__file__).with_name("decision_model.json")

FEATURES = (
    "top",  # the top candidate's score
    "lead",  # top - best score of a candidate with a different answer
    "second",  # that runner-up's score
    "query_cover",  # IDF share of the query's terms found in the top entry's closest question
    "entry_cover",  # IDF share of that question's terms found in the query
    "word_cover",  # query_cover on the word channel alone
    "char_cover",  # query_cover on characters and bigrams alone
    "channel_gap",  # |word_cover - char_cover|: the two channels disagree
    "query_len",  # log(1 + characters of the normalised query)
    "crowd",  # candidates (of the first five) within 0.1 of the top score
    "top_x_cover",  # top * query_cover
    "query_miss",  # heaviest query word the closest question lacks (background IDF / 10)
    "entry_miss",  # heaviest word of the closest question the query lacks (background IDF / 10)
)

TIE = 0.01  # a lead below this over a different answer is a tie: the customer is asked
Outcome = Literal["answer", "clarify", "none"]


@dataclass(frozen=True, slots=True)
class Candidate:
    doc_id: int
    score: float
    questions: tuple[str, ...]
    answer: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    doc_ids: tuple[int, ...]  # the answer's entry, or the choices offered (best first)
    p_answer: float
    p_offer: float
    features: tuple[float, ...] = ()


@lru_cache(maxsize=8192)
def _weights(text: str) -> tuple[tuple[str, float], ...]:
    """A text's distinct terms with their background IDF (no index's statistics)."""
    out: dict[str, float] = {}
    for term in tokenize(normalize(text)):
        if term not in out:
            p = background.doc_prob(term)
            out[term] = math.log1p((1.0 - p) / p) * (0.5 if term[0] == BIGRAM else 1.0)
    return tuple(out.items())


def _cover(a: tuple[tuple[str, float], ...], b: set[str], kinds: str) -> float:
    total = sum(w for t, w in a if t[0] in kinds)
    if total <= 0:
        return 0.0
    return sum(w for t, w in a if t[0] in kinds and t in b) / total


def _miss(a: tuple[tuple[str, float], ...], b: set[str]) -> float:
    """Background IDF (/10) of the heaviest word of ``a`` that ``b`` has neither as a word nor
    by most of its characters."""
    heaviest = 0.0
    for term, weight in a:
        if term[0] != WORD or term in b:
            continue
        chars = term[1:]
        if sum(CHAR + ch in b for ch in chars) * 2 > len(chars):
            continue
        heaviest = max(heaviest, weight)
    return heaviest / 10.0


def _coverages(query: str, questions: Sequence[str]) -> tuple[float, ...]:
    """(query, entry, word, char) coverage and (query, entry) misses against the entry's closest
    question (the one covering most of the query, then most covered by it)."""
    q = _weights(query)
    q_terms = {t for t, _ in q}
    best: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 1.0, 1.0)
    for text in questions:
        d = _weights(text)
        d_terms = {t for t, _ in d}
        qc = _cover(q, d_terms, WORD + CHAR + BIGRAM)
        dc = _cover(d, q_terms, WORD + CHAR + BIGRAM)
        if (qc, dc) <= (best[0], best[1]):
            continue
        best = (
            qc,
            dc,
            _cover(q, d_terms, WORD),
            _cover(q, d_terms, CHAR + BIGRAM),
            _miss(q, d_terms),
            _miss(d, q_terms),
        )
    return best


def distinct(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Best first, one candidate per answer (entries saying the same thing agree)."""
    out: list[Candidate] = []
    seen: set[str] = set()
    for c in sorted(candidates, key=lambda c: -c.score):
        key = c.answer or f"#{c.doc_id}"
        if key in seen:
            continue
        seen.add(key)
        out.append(c)
    return out


def features(query: str, candidates: Sequence[Candidate]) -> list[float]:
    ranked = distinct(candidates)
    if not ranked:
        return [0.0] * len(FEATURES)
    top = ranked[0]
    second = ranked[1].score if len(ranked) > 1 else 0.0
    qc, dc, wc, cc, qm, dm = _coverages(query, top.questions)
    crowd = sum(1 for c in ranked[1:5] if c.score >= top.score - 0.1)
    return [
        top.score,
        top.score - second,
        second,
        qc,
        dc,
        wc,
        cc,
        abs(wc - cc),
        math.log1p(len(normalize(query))),
        float(crowd),
        top.score * qc,
        qm,
        dm,
    ]


@dataclass(frozen=True, slots=True)
class Logistic:
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    bias: float

    def prob(self, x: Sequence[float]) -> float:
        z = self.bias + sum(
            c * (v - m) / s for c, v, m, s in zip(self.coef, x, self.mean, self.scale, strict=True)
        )
        return 1.0 / (1.0 + math.exp(-max(min(z, 40.0), -40.0)))

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Logistic:
        def floats(key: str) -> tuple[float, ...]:
            value = data[key]
            assert isinstance(value, list) and len(value) == len(FEATURES), key
            return tuple(float(v) for v in value)

        bias = data["bias"]
        assert isinstance(bias, int | float)
        return cls(floats("mean"), floats("scale"), floats("coef"), float(bias))


@dataclass(frozen=True, slots=True)
class DecisionModel:
    answer: Logistic
    offer: Logistic
    answer_cut: float  # answer when P(top is right) >= this
    offer_cut: float  # otherwise clarify when P(right among the choices) >= this
    choices: int = 3
    choice_floor: float = 0.3  # a choice scores at least this share of the top score

    @classmethod
    def load(cls, path: str | Path = MODEL_PATH) -> DecisionModel:
        return cls.load_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    @classmethod
    def load_dict(cls, data: dict[str, Any]) -> DecisionModel:
        if list(data.get("features", [])) != list(FEATURES):
            raise ValueError(f"decision model: its features are not {FEATURES}")
        return cls(
            answer=Logistic.from_dict(data["answer"]),
            offer=Logistic.from_dict(data["offer"]),
            answer_cut=float(data["answer_cut"]),
            offer_cut=float(data["offer_cut"]),
            choices=int(data.get("choices", 3)),
            choice_floor=float(data.get("choice_floor", 0.3)),
        )

    def decide(self, query: str, candidates: Sequence[Candidate]) -> Verdict:
        ranked = distinct(candidates)
        x = features(query, ranked)
        if not ranked:
            return Verdict("none", (), 0.0, 0.0, tuple(x))
        p_answer = self.answer.prob(x)
        p_offer = self.offer.prob(x)
        # Two different answers matched equally well: no feature can tell them apart, ask.
        tie = len(ranked) > 1 and ranked[0].score - ranked[1].score < TIE
        if p_answer >= self.answer_cut and not tie:
            return Verdict("answer", (ranked[0].doc_id,), p_answer, p_offer, tuple(x))
        floor = ranked[0].score * self.choice_floor
        offered = tuple(c.doc_id for c in ranked[: self.choices] if c.score >= floor)
        if p_offer >= self.offer_cut and len(offered) >= 2:  # one alone is no choice: declined
            return Verdict("clarify", offered, p_answer, p_offer, tuple(x))
        return Verdict("none", (), p_answer, p_offer, tuple(x))


@lru_cache(maxsize=1)
def default_model() -> DecisionModel:
    return DecisionModel.load(MODEL_PATH)
