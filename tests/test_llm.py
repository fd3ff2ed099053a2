"""The LLM engine against the OpenAI-compatible stand-in, over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time

import httpx
import pytest

from c_app.db.models import ChatSession, Memory, Message
from c_app.main import create_app

from .servers import free_port, serve
from .utils import answer_text, chat_body, png_bytes, rows, sse_data, upload_image

STREAM = "/api/v1/chat/stream"
KEY = "sk-test-secret-9f8e7d6c"


async def eventually(condition, what: str, *, within: float = 15.0):
    """Poll `condition` (sync or async) until it is truthy; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {within}s waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.fixture
async def llm_app(start_app, standin):
    return await start_app(
        llm_api_key=KEY,
        llm_base_url=standin.base_url,
        llm_timeout=1.5,
        llm_max_retries=0,
        company_name="示例商城",
    )


async def test_answer_streams_from_the_model_grounded_in_retrieval(llm_app, standin):
    app, client = llm_app
    standin.script.append({"kind": "stream", "text": "您好，退货请在7天内申请。", "chunk": 3})
    response = await client.post(STREAM, json=chat_body("买的东西不想要了怎么退货？"))

    assert answer_text(response.text) == "您好，退货请在7天内申请。"
    assert len(sse_data(response.text)) > 3
    [request] = standin.requests
    assert request["model"] == "deepseek-chat" and request["stream"] is True
    messages = request["messages"]
    assert messages[0]["role"] == "system" and "示例商城" in messages[0]["content"]
    assert messages[1]["role"] == "system" and "7天无理由退货" in messages[1]["content"]
    assert messages[-1] == {"role": "user", "content": "买的东西不想要了怎么退货？"}
    assert {t["function"]["name"] for t in request["tools"]} == {
        "search_knowledge",
        "save_customer_fact",
        "transfer_to_human",
    }
    assert standin.headers[0]["authorization"] == f"Bearer {KEY}"

    [answer] = await rows(app, Message, Message.role == "assistant")
    assert (answer.engine, answer.status) == ("llm", "complete")
    assert answer.usage["model"] == "deepseek-chat" and answer.usage["prompt_tokens"] == 42
    assert answer.sources and answer.latency_ms is not None


async def test_history_is_kept_within_the_token_budget(start_app, standin):
    _, client = await start_app(llm_api_key=KEY, llm_base_url=standin.base_url, llm_history_tokens=60)
    for i in range(6):
        standin.script.append({"kind": "stream", "text": f"第{i}个回答。" + "好" * 10})
        await client.post(STREAM, json=chat_body(f"第{i}个问题" + "啊" * 10))
    sent = standin.requests[-1]["messages"]
    history = sent[2:-1]
    assert 0 < len(history) < 10
    assert history[-1]["content"].startswith("第4个回答")  # newest kept, oldest dropped
    assert all(m["role"] in ("user", "assistant") for m in history)
    assert sent[-1]["content"].startswith("第5个问题")


@pytest.mark.parametrize(
    "behaviour", [{"kind": "error", "status": 500}, {"kind": "error", "status": 429}, {"kind": "hang"}]
)
async def test_model_failure_before_first_token_falls_back_to_the_knowledge_base(llm_app, standin, behaviour):
    app, client = llm_app
    standin.script.append(behaviour)
    response = await client.post(STREAM, json=chat_body("买东西怎么开发票？"))
    [entry] = await rows(app, Memory, Memory.scope == "public", Memory.question == "买东西怎么开发票？")
    assert answer_text(response.text) == entry.content
    [answer] = await rows(app, Message, Message.role == "assistant")
    assert (answer.engine, answer.status) == ("knowledge_base", "fallback")


async def test_refused_connection_falls_back(start_app):
    app, client = await start_app(
        llm_api_key=KEY, llm_base_url=f"http://127.0.0.1:{free_port()}/v1", llm_max_retries=0
    )
    response = await client.post(STREAM, json=chat_body("你好"))
    assert "您好" in answer_text(response.text)
    [answer] = await rows(app, Message, Message.role == "assistant")
    assert answer.status == "fallback"


async def test_stream_cut_after_it_started_keeps_the_partial_answer(llm_app, standin):
    app, client = llm_app
    standin.script.append({"kind": "cut", "text": "退货需要先申请", "chunk": 2})
    response = await client.post(STREAM, json=chat_body("怎么退货"))
    data = sse_data(response.text)
    assert data[-1] == "[DONE]"
    assert json.loads(data[-2]) == {"error": "处理聊天请求时发生错误，请稍后重试"}
    assert "".join(data[:-2]) == "退货需要先申请"
    [answer] = await rows(app, Message, Message.role == "assistant")
    assert (answer.status, answer.content) == ("partial", "退货需要先申请")


async def test_stream_that_hangs_midway_is_reported_not_waited_for_forever(llm_app, standin):
    app, client = llm_app
    standin.script.append({"kind": "hang_after", "text": "请稍等", "chunk": 1})
    response = await client.post(STREAM, json=chat_body("怎么退货"))
    assert sse_data(response.text)[-1] == "[DONE]"
    [answer] = await rows(app, Message, Message.role == "assistant")
    assert (answer.status, answer.content) == ("partial", "请稍等")


async def test_search_tool_runs_and_its_results_reach_the_model(llm_app, standin):
    app, client = llm_app
    standin.script += [
        {
            "kind": "tool",
            "name": "search_knowledge",
            "arguments": json.dumps({"query": "电子发票在哪里下载"}),
        },
        {"kind": "stream", "text": "在订单详情里下载。"},
    ]
    response = await client.post(STREAM, json=chat_body("发票的事"))
    assert answer_text(response.text) == "在订单详情里下载。"
    second = standin.requests[1]["messages"]
    assert (
        second[-2]["role"] == "assistant"
        and second[-2]["tool_calls"][0]["function"]["name"] == "search_knowledge"
    )
    assert second[-1]["role"] == "tool" and "下载" in second[-1]["content"]
    [answer] = await rows(app, Message, Message.role == "assistant")
    assert answer.usage["tools"] == ["search_knowledge"]


async def test_save_fact_tool_writes_private_memory(llm_app, standin):
    app, client = llm_app
    standin.script += [
        {
            "kind": "tool",
            "name": "save_customer_fact",
            "arguments": json.dumps({"fact": "常用收货城市是成都"}),
        },
        {"kind": "stream", "text": "好的，已记下。"},
    ]
    await client.post(STREAM, json=chat_body("我一般寄到成都"))
    [memory] = await rows(app, Memory, Memory.scope == "private", Memory.owner_id == "user123")
    assert memory.content == "常用收货城市是成都"


async def test_transfer_tool_marks_the_session_and_tells_the_client(llm_app, standin):
    app, client = llm_app
    standin.script += [
        {"kind": "tool", "name": "transfer_to_human", "arguments": json.dumps({"reason": "投诉"})},
        {"kind": "stream", "text": "已为您转接。"},
    ]
    response = await client.post(STREAM, json=chat_body("我要投诉你们"))
    assert "人工客服" in answer_text(response.text)
    [session] = await rows(app, ChatSession)
    assert session.status == "ticket"  # no agent online (issue 10): the bot takes a message


@pytest.mark.parametrize(
    "call",
    [
        {"kind": "tool", "name": "search_knowledge", "arguments": "{not json"},
        {"kind": "tool", "name": "delete_everything", "arguments": "{}"},
        {"kind": "tool", "name": "search_knowledge", "arguments": "[1, 2]"},
    ],
)
async def test_malformed_tool_calls_are_handled(llm_app, standin, call):
    _, client = llm_app
    standin.script += [call, {"kind": "stream", "text": "抱歉，请再说一遍。"}]
    response = await client.post(STREAM, json=chat_body("帮我查一下"))
    assert response.status_code == 200
    assert answer_text(response.text) == "抱歉，请再说一遍。"
    assert "error" in standin.requests[1]["messages"][-1]["content"]


async def test_tool_loop_is_bounded(start_app, standin):
    _, client = await start_app(llm_api_key=KEY, llm_base_url=standin.base_url, llm_max_tool_rounds=2)
    standin.script += [{"kind": "tool", "name": "search_knowledge", "arguments": '{"query": "x"}'}] * 2
    standin.script.append({"kind": "stream", "text": "最终回答。"})
    response = await client.post(STREAM, json=chat_body("查"))
    assert answer_text(response.text) == "最终回答。"
    assert len(standin.requests) == 3
    assert "tools" not in standin.requests[-1]


async def test_images_reach_the_model_as_data_urls(llm_app, standin):
    _, client = llm_app
    url = await upload_image(client)
    parts = [{"type": "text", "text": "这个坏了"}, {"type": "image_url", "image_url": {"url": url}}]
    await client.post(STREAM, json=chat_body(parts))
    content = standin.requests[0]["messages"][-1]["content"]
    image = content[1]["image_url"]["url"]
    assert image.startswith("data:image/png;base64,")
    assert base64.b64decode(image.split(",", 1)[1]) == png_bytes()


async def test_images_are_not_sent_to_a_model_without_vision(start_app, standin):
    _, client = await start_app(llm_api_key=KEY, llm_base_url=standin.base_url, llm_send_images=False)
    url = await upload_image(client)
    parts = [{"type": "text", "text": "这个坏了"}, {"type": "image_url", "image_url": {"url": url}}]
    await client.post(STREAM, json=chat_body(parts))
    assert standin.requests[0]["messages"][-1] == {"role": "user", "content": "这个坏了"}


async def test_api_key_never_logged_or_returned(llm_app, standin, caplog):
    _, client = llm_app
    caplog.set_level(logging.DEBUG)
    standin.script += [{"kind": "error", "status": 401}, {"kind": "cut", "text": "半句"}]
    first = await client.post(STREAM, json=chat_body("你好"))
    second = await client.post(STREAM, json=chat_body("你好"))
    assert KEY not in caplog.text
    assert KEY not in first.text + second.text
    assert caplog.records, "the failures were logged"


@pytest.mark.parametrize(
    "behaviour",
    [
        {"kind": "slow", "text": "一二三四五六七八九十" * 5, "chunk": 1, "delay": 0.1},
        # Nothing more is written after the first words, so only watching the connection can tell.
        {"kind": "hang_after", "text": "一二三", "chunk": 1},
    ],
)
async def test_client_disconnect_closes_the_upstream_and_keeps_the_partial(make_settings, standin, behaviour):
    # Left alone, the model call would end only at LLM_TIMEOUT (60 s, hang_after) or when the slow
    # answer finishes (~5 s, which the stand-in does not count as a disconnect): the 15 s waits
    # below are met only if the app closes the upstream call when its own client goes.
    settings = make_settings(llm_api_key=KEY, llm_base_url=standin.base_url, llm_timeout=60)
    standin.script.append(behaviour)
    app = create_app(settings)
    with serve(app) as base:
        async with (
            httpx.AsyncClient(base_url=base, timeout=10) as client,
            client.stream("POST", STREAM, json=chat_body("讲个长故事")) as response,
        ):
            async for line in response.aiter_lines():
                if line.startswith("data: 一"):
                    break
        await eventually(lambda: standin.disconnects, "the upstream request to be closed")

        async def stored_answer():
            async with httpx.AsyncClient(base_url=base) as client:
                page = await client.get("/api/v1/chat/session/session456/messages")
            messages = page.json()["messages"] if page.status_code == 200 else []
            return [m for m in messages if m["role"] == "assistant" and m["status"] == "interrupted"]

        await eventually(stored_answer, "the interrupted answer to be stored")
        async with httpx.AsyncClient(base_url=base) as client:
            session = (await client.get("/api/v1/chat/session/session456")).json()
    assert session["message_count"] == 2
    check = create_app(settings)
    async with check.router.lifespan_context(check):
        [answer] = await rows(check, Message, Message.role == "assistant")
    assert answer.status == "interrupted"
    assert answer.content and "一二三四五六七八九十".startswith(answer.content[:10])
