"""The knowledge-base responder: an offline FAQ bot, the default engine and the LLM's fallback.

It reads what retrieval found in all three scopes. A confident knowledge-base hit is answered
with that entry's answer; a confident hit in the customer's own memories is answered from it;
otherwise it apologises, offers up to three close questions, and offers a human agent.
Greetings, thanks, goodbyes and requests for a person get a fitting reply.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator, Sequence

from .base import (
    ANSWER,
    CHAT,
    CLARIFY,
    HANDOFF_MESSAGE,
    PRIVATE,
    PUBLIC,
    Decision,
    Delta,
    EngineEvent,
    Handoff,
    Hit,
    Meta,
    Sources,
    TurnContext,
    close_questions,
)

_PUNCT = re.compile(r"[\s，。！？、,.!?~～…:：;；'\"“”‘’()（）\[\]【】]+")
_GREETING = re.compile(
    r"^(?:(?:你好|您好|你们好|hi|hello|hey|哈喽|嗨|早上好|上午好|中午好|下午好|晚上好|在吗|在不在|在么|有人吗|客服)"
    r"[呀啊哈哦吖呢]?)+$"
)
_THANKS = re.compile(r"(?:谢谢|多谢|感谢|谢啦|thx|thanks|thank you)")
_BYE = re.compile(r"^(?:再见|拜拜|bye|byebye|88|没有了|没事了|好的?谢谢再见)[呀啊哈哦了]?$")
_HUMAN = re.compile(r"(?:转人工|人工客服|人工服务|找人工|要人工|真人|接人工|人工坐席|客服专员|人工)")
# A sentence with its closing punctuation and line breaks, or a clause up to a full-width comma.
_PIECE = re.compile(r"[^。！？!?；;\n，]*(?:[。！？!?；;]+\n*|\n+|，|$)")
_MIN_CLAUSE = 8


def pieces(text: str) -> Iterator[str]:
    """Split an answer into the pieces a person would type: sentences, long clauses."""
    pending = ""
    for match in _PIECE.finditer(text):
        pending += match.group()
        # A short clause is held back and sent with what follows it.
        if pending and (not pending.endswith("，") or len(pending) >= _MIN_CLAUSE):
            yield pending
            pending = ""
    if pending:
        yield pending


class KnowledgeBaseResponder:
    """Answers from retrieved memories alone; needs no network."""

    name = "knowledge_base"

    def __init__(
        self, *, threshold: float, company: str, memory_threshold: float | None = None, margin: float = 0.0
    ) -> None:
        self.threshold = threshold
        # The best knowledge-base hit must also lead the best hit with a *different* answer by this
        # much: a near tie between two answers is a guess (bench/faq_eval.py --threshold-table).
        self.margin = margin
        self.memory_threshold = threshold if memory_threshold is None else memory_threshold
        self.company = company

    def intent(self, text: str) -> str | None:
        plain = _PUNCT.sub("", text.lower())
        if not plain:
            return None
        if _HUMAN.search(plain) and len(plain) <= 20:
            return "handoff"
        if _GREETING.fullmatch(plain):
            return "greeting"
        if _BYE.fullmatch(plain):
            return "bye"
        if _THANKS.search(plain) and len(plain) <= 12:
            return "thanks"
        return None

    async def stream(self, turn: TurnContext) -> AsyncIterator[EngineEvent]:
        intent = self.intent(turn.text)
        if intent == "handoff":
            yield Handoff(message=HANDOFF_MESSAGE)
            for piece in pieces(HANDOFF_MESSAGE):
                yield Delta(text=piece)
            yield Meta(outcome="handoff")
            return
        if intent is not None:
            for piece in pieces(self._small_talk(intent)):
                yield Delta(text=piece)
            yield Meta(outcome="smalltalk")
            return

        answer, used, outcome = self.compose(turn.hits, turn.decision)
        if used:
            yield Sources(hits=used)
        for piece in pieces(answer):
            yield Delta(text=piece)
        yield Meta(outcome=outcome)

    async def aclose(self) -> None:
        """Nothing to release: the responder holds no connection."""

    def compose(self, hits: Sequence[Hit], decision: Decision | None = None) -> tuple[str, list[Hit], str]:
        """The answer text, the hits it was built from, and the outcome (answered, clarified, no_match).

        With a decision (services/answer_decision.py) the knowledge base's part follows it: its
        entry is answered, or its choices are offered (numbered, in the order the client shows
        them) unless the customer's own memories answer confidently. Without one, the scores
        decide: the best hit at or above the threshold, leading the runner-up by the margin."""
        if decision is not None:
            return self._compose_decided(hits, decision)
        best: dict[str, Hit] = {}
        for hit in hits:
            if hit.scope not in best or hit.score > best[hit.scope].score:
                best[hit.scope] = hit
        # The knowledge base is the authority on policy; the customer's own memories come next.
        for scope in (PUBLIC, PRIVATE, CHAT):
            top = best.get(scope)
            bar = self.threshold if scope == PUBLIC else self.memory_threshold
            if top is None or top.score < bar or not top.grounded:
                continue
            if scope == PUBLIC and top.score - self._runner_up(top, hits) < self.margin:
                continue  # ambiguous: the no-match reply offers the close questions instead
            return self._answer_from(top), [top], "answered"
        suggestions = close_questions(hits, floor=self.threshold * 0.4, titles=True)
        return self._no_match(suggestions), [], "clarified" if suggestions else "no_match"

    def _compose_decided(self, hits: Sequence[Hit], decision: Decision) -> tuple[str, list[Hit], str]:
        if decision.outcome == ANSWER and decision.entries:
            top = decision.entries[0]
            return self._answer_from(top), [top], "answered"
        for scope in (PRIVATE, CHAT):
            own = max((h for h in hits if h.scope == scope), key=lambda h: h.score, default=None)
            if own is not None and own.score >= self.memory_threshold and own.grounded:
                return self._answer_from(own), [own], "answered"
        if decision.outcome == CLARIFY and decision.entries:
            return self._clarify([h.question or h.title for h in decision.entries]), [], "clarified"
        return self._no_match(()), [], "no_match"

    def _clarify(self, choices: Sequence[str]) -> str:
        listed = "\n".join(f"{i}. {q}" for i, q in enumerate(choices, 1))
        return (
            f"您是不是想问：\n{listed}\n"
            "请回复序号或点击问题，我马上为您解答；都不是的话，可以换个说法再问我，或者回复“转人工”。"
        )

    @staticmethod
    def _runner_up(best: Hit, hits: Sequence[Hit]) -> float:
        """Score of the best other KB hit that would answer differently (duplicates of one answer agree)."""
        return max(
            (
                hit.score
                for hit in hits
                if hit.scope == PUBLIC and hit is not best and hit.content != best.content
            ),
            default=0.0,
        )

    def _answer_from(self, hit: Hit) -> str:
        if hit.scope == PUBLIC:
            return hit.content
        if hit.scope == PRIVATE:
            return f"根据您之前留下的信息：{hit.content}\n如果信息有变化，请告诉我，我帮您更新。"
        answer = hit.content.split("客服：", 1)[-1]
        return f"您之前咨询过类似的问题，当时的答复是：\n{answer}"

    def _no_match(self, suggestions: Sequence[str]) -> str:
        text = "抱歉，我暂时没有找到与您的问题完全匹配的答案。"
        if suggestions:
            text += "您是不是想问：\n" + "\n".join(f"{i}. {q}" for i, q in enumerate(suggestions, 1)) + "\n"
        return text + "您可以换个说法再问我，或者回复“转人工”，由人工客服为您处理。"

    def _small_talk(self, intent: str) -> str:
        if intent == "greeting":
            return (
                f"您好！我是{self.company}的智能客服，很高兴为您服务。"
                "您可以咨询退换货、退款、物流、支付、发票、会员积分等问题，请问有什么可以帮您？"
            )
        if intent == "thanks":
            return "不客气！很高兴能帮到您。如果还有其他问题，随时可以问我哦。"
        return "感谢您的咨询，祝您生活愉快，再见！"
