"""The knowledge-base decision of a turn: answer one entry, offer 2-3 to choose from, or decline.

    decider = AnswerDecision()                 # the shipped model (retrieval/decision_model.json)
    decision = decider.decide(text, hits)      # engines.base.Decision, read by both engines
    entry_id = picked_choice("第二个", choices)  # a reply naming one of a clarified answer's choices

The features and the fitted logistic model are in `retrieval.decision` (bench/decision_fit.py fits
them); this module turns the turn's knowledge-base hits into its candidates and the verdict back
into hits. Only grounded knowledge-base hits take part: the customer's own memories are the
engine's second source, below a confident knowledge-base answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..config import Settings
from ..engines.base import ANSWER, CLARIFY, DECLINE, PUBLIC, Decision, Hit
from ..retrieval.decision import Candidate, DecisionModel, default_model
from ..retrieval.text import normalize

_NUMERALS = {"1": 1, "2": 2, "3": 3, "一": 1, "二": 2, "两": 2, "三": 3}
_PICK = re.compile(r"^(?:我?选|要|是)?(?:第)?([123一二两三])(?:个|条|项|号|种)?(?:吧|的|问题)?$")


def candidates(hits: Sequence[Hit]) -> list[Candidate]:
    return [
        Candidate(
            hit.id, hit.score, tuple(q for q in (hit.question or hit.title, *hit.similar) if q), hit.content
        )
        for hit in hits
        if hit.scope == PUBLIC and hit.grounded
    ]


def choice_text(hit: Hit) -> str:
    """How a choice is offered (and clicked): the entry's question, else its title."""
    return hit.question or hit.title


class AnswerDecision:
    def __init__(self, model: DecisionModel | None = None) -> None:
        self.model = model or default_model()

    def decide(self, query: str, hits: Sequence[Hit]) -> Decision:
        by_id = {hit.id: hit for hit in hits if hit.scope == PUBLIC}
        verdict = self.model.decide(query, candidates(hits))
        entries = tuple(by_id[i] for i in verdict.doc_ids if i in by_id)
        if verdict.outcome == "answer" and entries:
            return Decision(ANSWER, entries[:1], verdict.p_answer)
        if verdict.outcome == "clarify" and entries:
            return Decision(CLARIFY, entries, verdict.p_answer)
        return Decision(DECLINE, (), verdict.p_answer)


def build_decider(settings: Settings) -> AnswerDecision | None:
    """The decision model (DECISION_MODEL_PATH, else the shipped one); None when ANSWER_THRESHOLD
    is set: then the engine's score rule decides, as before issue 11."""
    if settings.answer_threshold is not None:
        return None
    path = settings.decision_model_path
    return AnswerDecision(DecisionModel.load(path) if path else None)


def picked_choice(text: str, choices: Sequence[Hit | None]) -> Hit | None:
    """The choice a reply names: its number ("2", "第二个", "选2") or its text (a click sends the
    question itself); None when the reply is something else. A choice that is gone (None: its
    entry was deleted since) keeps its number and is never picked."""
    plain = re.sub(r"[\s。.！!？?，,、)）]+", "", normalize(text))
    match = _PICK.match(plain)
    if match:
        number = _NUMERALS[match.group(1)]
        return choices[number - 1] if number <= len(choices) else None
    key = normalize(text)
    for hit in choices:
        if hit is not None and key and key == normalize(choice_text(hit)):
            return hit
    return None
