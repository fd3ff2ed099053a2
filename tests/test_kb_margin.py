"""The knowledge-base responder answers directly only when its best hit clearly leads: two entries
with different answers that match equally are offered as choices (the decision model's tie rule, or
ANSWER_MARGIN under the score rule that ANSWER_THRESHOLD brings back)."""

from __future__ import annotations

from typing import Any

from .utils import answer_text, chat_body

STREAM = "/api/v1/chat/stream"
ANSWER_CARD = "会员卡可以在门店前台免费办理，带上身份证即可。"
ANSWER_APP = "会员卡请在App“我的-会员中心”里在线申请。"


async def kb_app(start_app: Any, entries: list[dict[str, Any]], **overrides: Any) -> Any:
    app, client = await start_app(load_sample_kb=False, **overrides)
    await app.state.services.knowledge.upsert(entries)
    return client


async def test_two_entries_that_tie_with_different_answers_get_suggestions_not_a_guess(start_app) -> None:
    client = await kb_app(
        start_app,
        [
            {"question": "会员卡怎么办理", "answer": ANSWER_CARD},
            {"question": "会员卡怎么办理呢", "answer": ANSWER_APP},  # the same question once normalised
        ],
    )
    text = answer_text((await client.post(STREAM, json=chat_body("会员卡怎么办理"))).text)

    assert text.startswith("您是不是想问")
    assert "1. 会员卡怎么办理" in text and "2. 会员卡怎么办理呢" in text
    assert ANSWER_CARD not in text and ANSWER_APP not in text


async def test_without_a_margin_the_tie_is_answered_directly(start_app) -> None:
    client = await kb_app(
        start_app,
        [
            {"question": "会员卡怎么办理", "answer": ANSWER_CARD},
            {"question": "会员卡怎么办理呢", "answer": ANSWER_APP},
        ],
        answer_threshold=0.8,  # the score rule, without a margin
        answer_margin=0.0,
    )
    text = answer_text((await client.post(STREAM, json=chat_body("会员卡怎么办理"))).text)
    assert text in (ANSWER_CARD, ANSWER_APP)


async def test_duplicate_entries_with_one_answer_do_not_block_it(start_app) -> None:
    client = await kb_app(
        start_app,
        [
            {"question": "会员卡怎么办理", "answer": ANSWER_CARD},
            {"question": "会员卡怎么办理呢", "answer": ANSWER_CARD},
        ],
    )
    text = answer_text((await client.post(STREAM, json=chat_body("会员卡怎么办理"))).text)
    assert text == ANSWER_CARD


async def test_a_clear_leader_is_answered(start_app) -> None:
    client = await kb_app(
        start_app,
        [
            {"question": "会员卡怎么办理", "answer": ANSWER_CARD},
            {"question": "会员积分怎么兑换", "answer": ANSWER_APP},
        ],
    )
    text = answer_text((await client.post(STREAM, json=chat_body("会员卡怎么办理"))).text)
    assert text == ANSWER_CARD
