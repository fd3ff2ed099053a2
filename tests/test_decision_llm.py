"""Issue 11 with a model: the knowledge-base decision decides what the model is told (answer from
this entry / ask which one / say it does not know and offer a person), checked on the requests the
stand-in model received and on the stored answers."""

from __future__ import annotations

import json

import pytest

from c_app.db.models import Memory, Message

from .utils import chat_body, rows

TYPED = "/api/v1/chat/stream?events=typed"
KEY = "sk-decision-test"


@pytest.fixture
async def llm_app(start_app, standin):
    return await start_app(llm_api_key=KEY, llm_base_url=standin.base_url, llm_timeout=5, llm_max_retries=0)


async def turn(client, standin, text: str, reply: str = "好的。") -> tuple[str, list[str]]:
    standin.script.append({"kind": "stream", "text": reply})
    response = await client.post(TYPED, json=chat_body(text, session_id="s-llm"))
    assert response.status_code == 200
    offered: list[str] = []
    for block in response.text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if fields.get("event") == "suggestions":
            offered = json.loads(fields["data"])["questions"]
    rules, knowledge = standin.requests[-1]["messages"][:2]
    assert rules["role"] == knowledge["role"] == "system"
    return rules["content"] + "\n" + knowledge["content"], offered


async def newest_answer(app) -> Message:
    return max(await rows(app, Message, Message.role == "assistant"), key=lambda m: m.id)


async def test_a_clear_match_tells_the_model_to_answer_from_that_entry(llm_app, standin):
    app, client = llm_app
    knowledge, _ = await turn(client, standin, "可以修改收货地址吗")
    [entry] = await rows(app, Memory, Memory.external_id == "kb-order-001")
    assert f"本轮判断：参考资料 kb-{entry.id} 与顾客的问题匹配，请依据它作答" in knowledge
    answer = await newest_answer(app)
    assert (answer.outcome, answer.entry_id) == ("answered", entry.id)


async def test_an_unclear_question_tells_the_model_to_ask_which_one(llm_app, standin):
    app, client = llm_app
    knowledge, offered = await turn(client, standin, "发票", reply="请问您想了解哪一项？")
    assert "顾客的问题不够明确" in knowledge and "请不要猜测作答" in knowledge
    assert len(offered) == 3
    clarified = await newest_answer(app)
    assert clarified.outcome == "clarified" and clarified.entry_id is None and len(clarified.choices) == 3
    # The model is to list them in the order the chips show (and the numbers pick).
    refs = "、".join(f"kb-{i}" for i in clarified.choices)
    assert f"可能是指参考资料 {refs} 中的某一条" in knowledge

    # The customer replies with a number: the model is told which entry they chose.
    knowledge, _ = await turn(client, standin, "2")
    assert "顾客在上一轮的选项中选择了这一条" in knowledge and f"kb-{clarified.choices[1]}" in knowledge
    [clarified_now] = await rows(app, Message, Message.id == clarified.id)
    assert clarified_now.chosen_entry_id == clarified.choices[1]
    assert (await newest_answer(app)).entry_id == clarified.choices[1]


async def test_nothing_close_tells_the_model_to_say_so_and_offer_a_person(llm_app, standin):
    app, client = llm_app
    knowledge, offered = await turn(client, standin, "明天天气怎么样")
    assert "知识库中没有与这个问题相关的资料" in knowledge and "转接人工客服" in knowledge
    assert '"type": "public"' not in knowledge  # no weak knowledge-base entry to lean on
    assert offered == []
    answer = await newest_answer(app)
    assert (answer.outcome, answer.entry_id, answer.sources) == ("no_match", None, None)
