"""What masking personal data costs per model turn (c_app/privacy), in process, no network.

A realistic turn: the customer's message with a phone number and an e-mail address, 20 messages of
history (a few holding an order number, a phone number, an address), 5 retrieved memories (four
sample knowledge-base answers and a private memory with a plate and an address), and a 50-chunk
answer that quotes two placeholders, one of them split over two chunks.

Timed, median per turn over many turns:
- masked:   MaskingEngine around an engine that answers at once (a new Masker, the masked
            context, every chunk through the Unmasker, sources mapped back);
- baseline: the engine-side work of the same turn unmasked: LLMResponder's prompt
            (build_messages), the request body serialised, 50 streamed chunks parsed as
            LLMResponder reads them, the events yielded.

    python bench/pii_cost.py [--turns 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from c_app.container import read_jsonl
from c_app.engines.base import Delta, EngineEvent, HistoryItem, Hit, Meta, Sources, TurnContext
from c_app.engines.llm_responder import TOOLS
from c_app.engines.prompt import build_messages
from c_app.privacy.masking import MaskingEngine

TEXT = "你好，我的手机号是13812345678，邮箱zhang.san@example.com，上周买的耳机想退货，订单号2024112912345678，怎么操作？"
ANSWER = (
    "您好！已为您查到手机号[手机号1]名下的订单。退货请在订单详情页点击“申请售后”，选择“退货退款”，"
    "填写原因后提交；审核通过后请按页面地址寄回商品，运费按政策承担。退款会在仓库签收后1-3个工作日"
    "原路退回。处理进度会发到您的邮箱[邮箱1]，如有疑问可以随时联系我们。"
)


def history() -> list[HistoryItem]:
    items = []
    for i in range(10):
        user = f"第{i}个问题：我的订单{2024112900000000 + i}什么时候发货？"
        if i == 3:
            user = "我的收货地址是浙江省杭州市西湖区文三路100号华星小区3栋501室，电话13812345678"
        if i == 6:
            user = "能开发票吗？抬头写公司名称，发到zhang.san@example.com"
        items.append(HistoryItem("user", user))
        items.append(
            HistoryItem(
                "assistant", f"您好，订单{2024112900000000 + i}预计48小时内发货，发货后会短信通知您。"
            )
        )
    return items


def hits() -> list[Hit]:
    kb = read_jsonl(ROOT / "c_app" / "data" / "sample_kb.jsonl")[:4]
    found = [
        Hit(
            id=i + 1,
            scope="public",
            score=0.8 - i * 0.1,
            content=e["answer"],
            question=e["question"],
            title=e.get("title", ""),
        )
        for i, e in enumerate(kb)
    ]
    found.append(
        Hit(
            id=99,
            scope="private",
            score=0.6,
            content="常用车辆京A12345，收货地址浙江省杭州市西湖区文三路100号",
        )
    )
    return found


def chunks() -> list[str]:
    cuts = [len(ANSWER) * i // 50 for i in range(51)]
    return [ANSWER[a:b] for a, b in itertools.pairwise(cuts)]


class Immediate:
    """An engine that answers at once: only the wrapper's work is timed."""

    name = "llm"

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    async def aclose(self) -> None:
        pass

    async def stream(self, turn: TurnContext) -> AsyncIterator[EngineEvent]:
        yield Sources(hits=turn.hits)
        for piece in self.pieces:
            yield Delta(text=piece)
        yield Meta(engine="llm")


def turn_context() -> TurnContext:
    return TurnContext(user_id="u", session_id="s", text=TEXT, hits=hits(), history=history())


async def masked_turn(engine: MaskingEngine, turn: TurnContext) -> str:
    out = []
    async for event in engine.stream(turn):
        if isinstance(event, Delta):
            out.append(event.text)
    return "".join(out)


async def baseline_turn(turn: TurnContext, lines: list[str]) -> str:
    async def relay() -> AsyncIterator[EngineEvent]:
        messages = build_messages(
            company="示例商城",
            hits=turn.hits,
            history=turn.history,
            history_budget=2000,
            text=turn.text,
            images=(),
        )
        body = {"model": "m", "messages": messages, "stream": True, "tools": TOOLS}
        json.dumps(body, ensure_ascii=False)
        yield Sources(hits=turn.hits)
        for line in lines:
            chunk = json.loads(line[5:].strip())
            for choice in chunk.get("choices")[:1]:
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    yield Delta(text=delta["content"])
        yield Meta(engine="llm")

    out = []
    async for event in relay():
        if isinstance(event, Delta):
            out.append(event.text)
    return "".join(out)


async def main(turns: int) -> None:
    turn = turn_context()
    pieces = chunks()
    # The model's answer as it would stream (placeholders) and as the baseline relays it.
    engine = MaskingEngine(Immediate(pieces))
    lines = [
        "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": p}}]}, ensure_ascii=False)
        for p in pieces
    ]
    text = await masked_turn(engine, turn)
    assert "13812345678" in text and "zhang.san@example.com" in text and "[" not in text, text
    assert len(pieces) == 50 and any(p.endswith(("[", "[手", "[手机", "[手机号", "[手机号1")) for p in pieces)

    def median_us(samples: list[int]) -> float:
        return statistics.median(samples) / 1000

    masked: list[int] = []
    baseline: list[int] = []
    for _ in range(turns):
        start = time.perf_counter_ns()
        await masked_turn(engine, turn)
        masked.append(time.perf_counter_ns() - start)
        start = time.perf_counter_ns()
        await baseline_turn(turn, lines)
        baseline.append(time.perf_counter_ns() - start)
    m, b = median_us(masked), median_us(baseline)
    print(f"turns: {turns} (history 20 messages, 5 hits, 50-chunk answer)")
    print(
        f"masking + unmasking per turn: median {m:.0f} µs, p90 {sorted(masked)[int(turns * 0.9)] / 1000:.0f} µs"
    )
    print(f"unmasked engine-side work (prompt, body, 50 chunks parsed): median {b:.0f} µs")
    print(
        f"ratio: {m / b:.2f}x the unmasked engine-side work; {m / 65_000:.1%} of a ~65 ms turn (bench/README.md)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=3000)
    asyncio.run(main(parser.parse_args().turns))
