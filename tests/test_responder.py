"""The knowledge-base responder's decisions, on plain hits: no database, no HTTP.

The engine contract (c_app/engines/base.py) is plain data in and plain events out, so each
decision (answer, ambiguous, memory answer, small talk, hand-off) is checked directly.
"""

from __future__ import annotations

from c_app.engines.base import (
    CHAT,
    HANDOFF_MESSAGE,
    PRIVATE,
    PUBLIC,
    Delta,
    EngineEvent,
    Handoff,
    Hit,
    Meta,
    Sources,
    TurnContext,
    close_questions,
)
from c_app.engines.kb_responder import KnowledgeBaseResponder, pieces

RESPONDER = KnowledgeBaseResponder(threshold=0.8, memory_threshold=0.5, company="示例商城", margin=0.05)


def kb(id_: int, score: float, question: str, answer: str, **extra: object) -> Hit:
    return Hit(id=id_, scope=PUBLIC, score=score, content=answer, question=question, **extra)  # type: ignore[arg-type]


async def run(text: str, hits: list[Hit]) -> list[EngineEvent]:
    turn = TurnContext(user_id="u1", session_id="s1", text=text, hits=hits)
    return [event async for event in RESPONDER.stream(turn)]


def said(events: list[EngineEvent]) -> str:
    return "".join(event.text for event in events if isinstance(event, Delta))


async def test_a_confident_clear_leader_is_answered_with_its_source() -> None:
    hits = [kb(1, 0.95, "怎么退货", "7天无理由退货。"), kb(2, 0.5, "怎么换货", "30天内可换货。")]
    events = await run("怎么退货", hits)
    assert said(events) == "7天无理由退货。"
    sources = [event for event in events if isinstance(event, Sources)]
    assert [[hit.id for hit in event.hits] for event in sources] == [[1]]


async def test_a_near_tie_between_different_answers_offers_the_questions_instead() -> None:
    hits = [kb(1, 0.93, "会员卡怎么办理", "门店办理。"), kb(2, 0.91, "会员卡怎么办理呢", "App 申请。")]
    events = await run("会员卡怎么办理", hits)
    text = said(events)
    assert text.startswith("抱歉") and "1. 会员卡怎么办理\n2. 会员卡怎么办理呢" in text
    assert "门店办理" not in text and not any(isinstance(event, Sources) for event in events)


async def test_a_tie_between_copies_of_one_answer_is_no_tie() -> None:
    hits = [kb(1, 0.93, "会员卡怎么办理", "门店办理。"), kb(2, 0.92, "会员卡怎么办", "门店办理。")]
    assert said(await run("会员卡怎么办理", hits)) == "门店办理。"


async def test_below_the_threshold_nothing_is_answered_and_weak_questions_are_not_offered() -> None:
    hits = [kb(1, 0.7, "发票怎么开", "在订单页申请。"), kb(2, 0.2, "怎么退货", "7天无理由退货。")]
    text = said(await run("开票", hits))
    assert text.startswith("抱歉") and "发票怎么开" in text
    assert "怎么退货" not in text  # 0.2 is under the suggestion floor (0.4 x threshold)


async def test_the_customers_own_fact_answers_when_the_knowledge_base_does_not() -> None:
    fact = Hit(id=5, scope=PRIVATE, score=0.6, content="我的会员卡号是 VIP-20391")
    text = said(await run("我的会员卡号", [fact, kb(1, 0.3, "会员卡怎么办理", "门店办理。")]))
    assert text.startswith("根据您之前留下的信息：我的会员卡号是 VIP-20391")


async def test_a_past_answer_that_came_from_nowhere_is_not_repeated() -> None:
    past = Hit(id=9, scope=CHAT, score=0.9, content="用户：你们几点关门\n客服：抱歉……", grounded=False)
    assert said(await run("你们几点关门", [past])).startswith("抱歉，我暂时没有找到")
    grounded = Hit(id=9, scope=CHAT, score=0.9, content="用户：你们几点关门\n客服：晚上十点。")
    assert said(await run("你们几点关门", [grounded])) == "您之前咨询过类似的问题，当时的答复是：\n晚上十点。"


async def test_asking_for_a_person_hands_off_before_any_text() -> None:
    events = await run("转人工", [kb(1, 0.99, "转人工", "不该出现")])
    assert isinstance(events[0], Handoff) and events[0].message == HANDOFF_MESSAGE
    assert said(events) == HANDOFF_MESSAGE


async def test_greetings_thanks_and_goodbyes_get_small_talk_not_a_search_answer() -> None:
    hit = [kb(1, 0.99, "你好", "不该出现")]
    assert said(await run("你好！", hit)).startswith("您好！我是示例商城的智能客服")
    assert said(await run("谢谢", hit)).startswith("不客气")
    assert said(await run("拜拜", hit)).startswith("感谢您的咨询")


def test_close_questions_skip_other_scopes_duplicates_and_the_given_ids() -> None:
    hits = [
        kb(1, 0.9, "怎么退货", "a"),
        Hit(id=2, scope=PRIVATE, score=0.9, content="私人", question="私人问题"),
        kb(3, 0.8, "怎么退货", "b"),
        kb(4, 0.7, "", "c", title="退货政策全文"),
        kb(5, 0.6, "怎么换货", "d"),
        kb(6, 0.1, "运费谁出", "e"),
    ]
    assert close_questions(hits, floor=0.3) == ["怎么退货", "怎么换货"]
    assert close_questions(hits, floor=0.3, titles=True) == ["怎么退货", "退货政策全文", "怎么换货"]
    assert close_questions(hits, floor=0.3, skip_ids={1, 3}, skip={"怎么换货"}) == []


def test_answers_are_streamed_in_pieces_that_join_back_exactly() -> None:
    text = "您好，退货请在订单页申请。审核通过后，请在7天内寄回！运费由商家承担；谢谢"
    parts = list(pieces(text))
    assert "".join(parts) == text and len(parts) >= 3


async def test_every_turn_ends_with_its_outcome() -> None:
    def outcome(events: list[EngineEvent]) -> str | None:
        metas = [event for event in events if isinstance(event, Meta)]
        assert len(metas) == 1 and events[-1] is metas[0]
        return metas[0].outcome

    assert outcome(await run("怎么退货", [kb(1, 0.95, "怎么退货", "7天无理由退货。")])) == "answered"
    tie = [kb(1, 0.93, "会员卡怎么办理", "门店办理。"), kb(2, 0.91, "会员卡怎么办理呢", "App 申请。")]
    assert outcome(await run("会员卡怎么办理", tie)) == "clarified"
    assert outcome(await run("火星上能送货吗", [kb(1, 0.1, "怎么退货", "7天无理由退货。")])) == "no_match"
    assert outcome(await run("转人工", [])) == "handoff"
    assert outcome(await run("你好", [])) == "smalltalk"
