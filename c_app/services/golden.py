"""The golden-question gate: questions with the entry each should reach, run against a knowledge base.

    golden = parse_golden(text)                      # JSONL {"question", "external_id"}; BadRequest if bad
    report = score(golden, decisions, min_right=0.8)  # GateReport: right / wrong / clarified / missed

A golden question whose `external_id` is null must not be answered (an out-of-domain question):
it is right when declined, wrong when answered, and "clarified" when choices are offered. An
in-domain question is right when its entry is answered, wrong when another entry is, clarified
when its entry is among the choices, missed otherwise (declined, or choices without it). The gate
passes when right / total >= min_right. `KnowledgeService.evaluate_golden` runs it on the live
knowledge base; `trial_decisions` on the knowledge base an import would leave (for a gated import).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..engines.base import ANSWER, CLARIFY, PUBLIC, Decision, Hit
from ..errors import BadRequest
from ..retrieval import LexicalIndex
from .answer_decision import AnswerDecision

MAX_GOLDEN = 5_000
GOLDEN_LIMIT = 5  # hits each golden question is decided on (as a chat turn)


@dataclass(frozen=True, slots=True)
class GoldenQuestion:
    question: str
    external_id: str | None  # None: the knowledge base must not answer it


@dataclass(slots=True)
class GateReport:
    total: int = 0
    right: int = 0
    wrong: int = 0
    clarified: int = 0
    missed: int = 0
    min_right: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def right_rate(self) -> float:
        return self.right / self.total if self.total else 0.0

    @property
    def passed(self) -> bool:
        return self.right_rate >= self.min_right

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "right": self.right,
            "wrong": self.wrong,
            "clarified": self.clarified,
            "missed": self.missed,
            "right_rate": round(self.right_rate, 4),
            "min_right": self.min_right,
            "passed": self.passed,
            "failures": self.failures,
        }


def parse_golden(text: str) -> list[GoldenQuestion]:
    """JSON Lines of {"question": str, "external_id": str | null}; blank lines skipped."""
    out: list[GoldenQuestion] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise BadRequest(f"黄金问题集第 {number} 行不是有效的 JSON") from None
        question = row.get("question") if isinstance(row, dict) else None
        external_id = row.get("external_id") if isinstance(row, dict) else None
        if not isinstance(question, str) or not question.strip() or not isinstance(external_id, str | None):
            raise BadRequest(
                f"黄金问题集第 {number} 行格式错误：需要 question（文本）和 external_id（文本或 null）"
            )
        out.append(GoldenQuestion(question.strip(), external_id or None))
        if len(out) > MAX_GOLDEN:
            raise BadRequest(f"黄金问题集最多 {MAX_GOLDEN} 个问题")
    if not out:
        raise BadRequest("黄金问题集为空")
    return out


def score(
    golden: Sequence[GoldenQuestion],
    decisions: Sequence[tuple[Decision, dict[int, str | None]]],
    *,
    min_right: float,
) -> GateReport:
    """Count each question's outcome; `decisions` pairs each decision with entry id -> external_id."""
    report = GateReport(total=len(golden), min_right=min_right)
    for item, (decision, external) in zip(golden, decisions, strict=True):
        got = [external.get(hit.id) for hit in decision.entries]
        if decision.outcome == ANSWER:
            kind = "right" if item.external_id is not None and got[:1] == [item.external_id] else "wrong"
        elif decision.outcome == CLARIFY:
            kind = "clarified" if item.external_id is None or item.external_id in got else "missed"
        else:
            kind = "right" if item.external_id is None else "missed"
        setattr(report, kind, getattr(report, kind) + 1)
        if kind != "right":
            report.failures.append(
                {"question": item.question, "expected": item.external_id, "outcome": kind, "got": got}
            )
    return report


def trial_decisions(
    rows: Iterable[dict[str, Any]], golden: Sequence[GoldenQuestion], decider: AnswerDecision
) -> list[tuple[Decision, dict[int, str | None]]]:
    """Decide each golden question against an index of `rows` (entries as import rows, with an
    `id`): the knowledge base an import would leave, built aside (CPU work: a worker thread)."""
    index = LexicalIndex()
    hits: dict[int, Hit] = {}
    external: dict[int, str | None] = {}
    for row in rows:
        doc = int(row["id"])
        questions = [q for q in [row.get("question") or "", *(row.get("similar_questions") or [])] if q]
        index.upsert(doc, questions or [row.get("answer") or ""], row.get("title") or "")
        hits[doc] = Hit(
            id=doc,
            scope=PUBLIC,
            score=0.0,
            content=row.get("answer") or "",
            question=row.get("question") or "",
            title=row.get("title") or "",
            similar=tuple(q for q in row.get("similar_questions") or () if q),
        )
        external[doc] = row.get("external_id") or None
    out = []
    for item in golden:
        found = [_scored(hits[doc], s) for doc, s in index.search(item.question, GOLDEN_LIMIT)]
        out.append((decider.decide(item.question, found), external))
    return out


def _scored(hit: Hit, value: float) -> Hit:
    return Hit(
        hit.id, hit.scope, value, hit.content, hit.question, hit.title, hit.category, similar=hit.similar
    )
