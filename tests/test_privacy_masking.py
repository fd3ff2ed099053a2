"""Personal data is masked before a prompt leaves the process, and put back for the customer.

Unit tests of detection, validation, placeholders and streamed unmasking (c_app/privacy/pii.py),
of the engine wrapper (c_app/privacy/masking.py) with a fake inner engine, and end to end with the
stand-in model: what the model receives, what the customer sees, what is stored.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from c_app.db.models import Memory, Message
from c_app.engines.base import (
    Delta,
    EngineEvent,
    Handoff,
    HistoryItem,
    Hit,
    Meta,
    Sources,
    TurnContext,
    UpstreamBroken,
)
from c_app.privacy.masking import MaskingEngine
from c_app.privacy.pii import PLACEHOLDER, Masker, find_pii, luhn, mask_text, valid_card, valid_id_card

from .utils import answer_text, chat_body, rows, sse_data

STREAM = "/api/v1/chat/stream"
KEY = "sk-test-secret-9f8e7d6c"

PHONE = "13812345678"
ID_CARD = "110105199003070017"  # valid check character
ID_CARD_2 = "440306198512242314"
CARD = "6222021234567894"  # passes Luhn
EMAIL = "zhang.san@example.com"
LANDLINE = "010-12345678"
PLATE = "京A12345"
ADDRESS_DETAIL = "西湖区文三路100号"


def with_check(body: str) -> str:
    """17 digits and their ISO 7064 MOD 11-2 check character."""
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11]


def kinds(text: str) -> list[tuple[str, str]]:
    return [(item.kind, text[item.start : item.end]) for item in find_pii(text)]


# --- detection and validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ("我的手机13812345678", "13812345678"),
        ("电话：+8613812345678。", "+8613812345678"),
        ("电话 +86 138 1234 5678 谢谢", "+86 138 1234 5678"),
        ("0086-13812345678", "0086-13812345678"),
        ("86-13812345678", "86-13812345678"),
        ("手机138-1234-5678", "138-1234-5678"),
        ("tel:19912345678", "19912345678"),
    ],
)
def test_mobile_numbers_in_their_usual_forms(text: str, value: str) -> None:
    assert kinds(text) == [("手机号", value)]


@pytest.mark.parametrize(
    "text",
    [
        "订单号213812345678901",  # inside a longer run of digits
        "13812345678901",
        "2138123456789",
        "12812345678",  # 12x is no mobile prefix
        "1381234567",  # ten digits
    ],
)
def test_mobile_lookalikes_stay(text: str) -> None:
    assert not [k for k, _ in kinds(text) if k == "手机号"]


def test_same_mobile_in_other_forms_gets_one_placeholder() -> None:
    masker = Masker()
    assert masker.mask("13812345678，138 1234 5678，+86-13812345678") == "[手机号1]，[手机号1]，[手机号1]"
    assert masker.values == {"[手机号1]": "13812345678"}


def test_id_card_needs_its_check_character_and_a_real_birth_date() -> None:
    assert valid_id_card(ID_CARD) and valid_id_card(ID_CARD_2)
    assert kinds(f"身份证{ID_CARD}") == [("身份证", ID_CARD)]
    wrong = ID_CARD[:-1] + "8"
    assert not valid_id_card(wrong)
    assert kinds(f"单号{wrong}") == []  # 18 digits with a wrong check digit stay (nor is it a card)
    # 1990-02-30 does not exist: with a check character computed for it, still not an ID.
    assert not valid_id_card(with_check("11010519900230001"))
    # The X check character, either case.
    x_id = next(i for i in (with_check(f"11010519900307{n:03d}") for n in range(1000)) if i.endswith("X"))
    assert kinds(x_id.lower()) == [("身份证", x_id.lower())]
    masker = Masker()
    assert masker.mask(f"{x_id} {x_id.lower()}") == "[身份证1] [身份证1]"


def test_bank_cards_pass_luhn_and_look_like_cards() -> None:
    assert luhn(CARD) and valid_card(CARD)
    for text, value in [
        (f"卡号{CARD}", CARD),
        ("卡号6217001234567890122", "6217001234567890122"),  # 19 digits
        ("4111 1111 1111 1111", "4111 1111 1111 1111"),
        ("4111-1111-1111-1111", "4111-1111-1111-1111"),
        ("卡号 6217 0012 3456 7890 122 谢谢", "6217 0012 3456 7890 122"),
        ("2221000000000009", "2221000000000009"),  # Mastercard's 2-series
    ]:
        assert kinds(text) == [("银行卡", value)], text


@pytest.mark.parametrize(
    "number",
    [
        "6222021234567895",  # a card's shape, Luhn fails
        "2024112912345678",  # 16-digit order number, Luhn fails
        "2024112912345676",  # passes Luhn but starts with a date, not like a card
        "1234567890123456789",  # 19 digits, Luhn fails
        "7812345678901234567",
        "62220212345678941234",  # 20 digits: longer than any card
        "1234567890123",
    ],
)
def test_order_and_tracking_numbers_stay(number: str) -> None:
    text = f"订单号{number}，运单 {number}"
    assert mask_text(text) == text


def test_emails() -> None:
    assert kinds(f"邮箱：{EMAIL}。") == [("邮箱", EMAIL)]
    assert kinds("Zhang_San+shop@mail.example.com.cn,") == [("邮箱", "Zhang_San+shop@mail.example.com.cn")]
    assert kinds("13812345678@qq.com") == [("邮箱", "13812345678@qq.com")]  # one e-mail, not a phone
    assert kinds("a@b") == [] and kinds("user@localhost") == [] and kinds("@example.com") == []
    masker = Masker()
    assert masker.mask(f"{EMAIL} / {EMAIL.upper()}") == "[邮箱1] / [邮箱1]"


def test_landlines_need_an_area_code_and_a_separator() -> None:
    assert kinds("座机010-12345678") == [("座机", "010-12345678")]
    assert kinds("电话0571-8888888。") == [("座机", "0571-8888888")]
    assert kinds("(0571)88888888") == [("座机", "(0571)88888888")]
    assert kinds("（020）87654321") == [("座机", "（020）87654321")]
    assert kinds("客服400-820-8820") == []  # a company's service number
    assert kinds("01012345678") == []  # without a separator: not recognised (precision)


def test_licence_plates() -> None:
    assert kinds("车牌京A12345") == [("车牌", "京A12345")]
    assert kinds("粤B·D12345的车") == [("车牌", "粤B·D12345")]  # new energy, small car
    assert kinds("沪A12345D") == [("车牌", "沪A12345D")]  # new energy, large car
    assert kinds("京A·F0236") == [("车牌", "京A·F0236")]
    assert kinds("新款ABCDE1") == [] and kinds("京AB12CD") == [] and kinds("京A123456") == []
    masker = Masker()
    assert masker.mask("京A12345 和 京a12345") == "[车牌1] 和 [车牌1]"


@pytest.mark.parametrize(
    "text, masked",
    [
        ("地址：浙江省杭州市西湖区文三路100号华星小区3栋2单元501室，谢谢", "地址：浙江省杭州市[地址1]，谢谢"),
        ("寄到北京市朝阳区建国路88号", "寄到北京市[地址1]"),
        ("上海市浦东新区世纪大道100号", "上海市[地址1]"),
        ("广东省深圳市南山区粤海街道科技园路1号A座1203", "广东省深圳市[地址1]"),
        ("收货地址:文三路100号", "收货地址:[地址1]"),
        ("北京市东城区东四十条胡同12号", "北京市[地址1]"),
    ],
)
def test_detailed_addresses(text: str, masked: str) -> None:
    assert Masker().mask(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "我住在西湖区文三路100号",  # no 省/市 or 地址 before it: where it starts is not certain
        "浙江省杭州市西湖区文三路一百号",  # house number in Chinese numerals
        "杭州市西湖区",  # no road, no number
        "退货请在7天内申请，运费10元",
    ],
)
def test_what_is_not_taken_for_an_address(text: str) -> None:
    assert mask_text(text) == text


def test_placeholders_are_stable_per_value_and_numbered_in_order() -> None:
    masker = Masker()
    first = masker.mask(f"手机{PHONE}，另一个13912345678，邮箱{EMAIL}")
    second = masker.mask(f"还是{PHONE}，新的15012345678，座机{LANDLINE}")
    assert first == "手机[手机号1]，另一个[手机号2]，邮箱[邮箱1]"
    assert second == "还是[手机号1]，新的[手机号3]，座机[座机1]"
    assert masker.unmask(first + second) == (
        f"手机{PHONE}，另一个13912345678，邮箱{EMAIL}还是{PHONE}，新的15012345678，座机{LANDLINE}"
    )


def test_every_kind_in_one_text() -> None:
    text = (
        f"手机{PHONE}，身份证{ID_CARD}，卡{CARD}，邮箱{EMAIL}，座机{LANDLINE}，车牌{PLATE}，"
        f"地址浙江省杭州市{ADDRESS_DETAIL}。"
    )
    masker = Masker()
    masked = masker.mask(text)
    assert masked == (
        "手机[手机号1]，身份证[身份证1]，卡[银行卡1]，邮箱[邮箱1]，座机[座机1]，车牌[车牌1]，地址浙江省杭州市[地址1]。"
    )
    assert masker.unmask(masked) == text


def test_unknown_placeholders_and_other_brackets_pass_through() -> None:
    masker = Masker()
    masker.mask(PHONE)
    assert (
        masker.unmask("[手机号1] [手机号9] [邮箱1] [注意] [手机号1")
        == f"{PHONE} [手机号9] [邮箱1] [注意] [手机号1"
    )


def test_large_adversarial_inputs_are_handled() -> None:
    # Long runs that every pattern could start on; bounded repetition keeps each linear.
    for text in [
        "1" * 200_000,
        "1 " * 100_000,
        "a" * 100_000 + "@" + "b." * 50_000,
        "市" + "路" * 100_000,
        "市" + "文" * 100_000 + "路1号",
        "京A" * 100_000,
        ("0571-" * 50_000),
        "[手机" * 50_000,
    ]:
        assert isinstance(mask_text(text), str)


# --- streamed unmasking ----------------------------------------------------------------------

ANSWER = "您的手机[手机号1]已登记，邮件会发到[邮箱1]；[手机号9]不是您的。卡号[银行卡1]，[备注]结束[手机"


def answer_masker() -> Masker:
    masker = Masker()
    masker.mask(f"{PHONE} {EMAIL} {CARD} 13912345678 13712345678 13612345678")  # [手机号1] ... [手机号4]
    return masker


def expected_answer() -> str:
    return ANSWER.replace("[手机号1]", PHONE).replace("[邮箱1]", EMAIL).replace("[银行卡1]", CARD)


def run(masker: Masker, chunks: list[str]) -> tuple[str, list[str]]:
    unmasker = masker.unmasker()
    out = [unmasker.feed(chunk) for chunk in chunks]
    out.append(unmasker.flush())
    return "".join(out), out


def test_answer_split_in_two_at_every_position() -> None:
    masker = answer_masker()
    for cut in range(len(ANSWER) + 1):
        joined, _ = run(masker, [ANSWER[:cut], ANSWER[cut:]])
        assert joined == expected_answer(), cut


def test_answer_split_in_three_at_every_pair_of_positions() -> None:
    masker = answer_masker()
    for a in range(len(ANSWER) + 1):
        for b in range(a, len(ANSWER) + 1):
            joined, _ = run(masker, [ANSWER[:a], ANSWER[a:b], ANSWER[b:]])
            assert joined == expected_answer(), (a, b)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7])
def test_answer_in_chunks_of_every_size(size: int) -> None:
    chunks = [ANSWER[i : i + size] for i in range(0, len(ANSWER), size)]
    assert run(answer_masker(), chunks)[0] == expected_answer()


def test_only_a_possible_placeholder_prefix_is_held_back() -> None:
    masker = answer_masker()
    unmasker = masker.unmasker()
    assert unmasker.feed("请拨打[手") == "请拨打"  # could become [手机号1]
    assert unmasker.feed("机") == ""
    assert unmasker.feed("号1]，好的") == f"{PHONE}，好的"
    assert unmasker.feed("[手机号1") == ""  # [手机号1] still possible
    assert unmasker.feed("x") == "[手机号1x"  # no longer: released at once
    assert unmasker.feed("[备") == "[备"  # no placeholder starts like this
    assert unmasker.feed("[手机号9") == "[手机号9"  # the model invented it: passed through
    assert unmasker.feed("]") == "]"
    assert unmasker.feed("价格[") == "价格"  # a bare "[" could start one
    assert unmasker.feed("1]") == "[1]"
    assert unmasker.feed("[邮") == ""
    assert unmasker.flush() == "[邮"  # flushed at the end as it was
    assert unmasker.flush() == ""


def test_placeholders_learned_while_streaming_are_unmasked() -> None:
    masker = Masker()
    masker.mask(PHONE)
    unmasker = masker.unmasker()
    assert unmasker.feed("[邮箱") == "[邮箱"  # no e-mail known yet
    masker.mask(EMAIL)  # a tool's results bring one
    assert unmasker.feed("1]与[邮") == "1]与"
    assert unmasker.feed("箱1]") == EMAIL


# --- the engine wrapper ----------------------------------------------------------------------


class FakeEngine:
    """Records the context it gets; searches, remembers and answers as scripted."""

    name = "llm"

    def __init__(self, answer: list[str], *, search: str = "", fact: str = "", fail: bool = False) -> None:
        self.answer = answer
        self.search_query = search
        self.fact = fact
        self.fail = fail
        self.seen: TurnContext | None = None
        self.found: list[Hit] = []
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True

    async def stream(self, turn: TurnContext) -> AsyncIterator[EngineEvent]:
        self.seen = turn
        yield Sources(hits=list(turn.hits))
        if self.search_query:
            self.found = await turn.search(self.search_query)
            yield Sources(hits=self.found)
        if self.fact:
            await turn.remember(self.fact)
        for piece in self.answer:
            yield Delta(text=piece)
        if self.fail:
            raise UpstreamBroken("cut")
        yield Handoff(message="转人工")
        yield Meta(engine="llm", usage={"rounds": 1})


def hit(id_: int, scope: str, content: str, question: str = "", title: str = "") -> Hit:
    return Hit(id=id_, scope=scope, score=0.9, content=content, question=question, title=title)


async def collect(engine: MaskingEngine, turn: TurnContext) -> list[EngineEvent]:
    return [event async for event in engine.stream(turn)]


async def test_the_wrapped_engine_sees_placeholders_and_the_customer_real_values() -> None:
    searched: list[str] = []
    remembered: list[str] = []
    private = hit(3, "private", f"客户车牌{PLATE}，手机{PHONE}")
    public = hit(
        12,
        "public",
        "客服邮箱 help@shop.example.com",
        question="客服邮箱是多少",
        title="联系 help@shop.example.com",
    )
    later = hit(7, "chat", f"之前留过的卡号{CARD}和 13912345678")

    async def search(query: str) -> list[Hit]:
        searched.append(query)
        return [later, private]

    async def remember(fact: str) -> int | None:
        remembered.append(fact)
        return 1

    turn = TurnContext(
        user_id="u",
        session_id="s",
        text=f"我的手机{PHONE}，邮箱{EMAIL}",
        hits=[private, public],
        history=[HistoryItem("user", f"身份证{ID_CARD}"), HistoryItem("assistant", f"好的，{PHONE} 已记录")],
        images=["data:image/png;base64,AAAA"],
        search=search,
        remember=remember,
    )
    inner = FakeEngine(
        ["已为您查到[手", "机号1]的订单，卡号[银行", "卡1]，[手机号9]", "，车牌[车牌1]"],
        search="[手机号1] 的订单",
        fact="顾客手机[手机号1]，邮箱[邮箱1]",
    )
    engine = MaskingEngine(inner)
    assert engine.name == "llm"
    events = await collect(engine, turn)

    seen = inner.seen
    assert seen is not None
    assert seen.text == "我的手机[手机号1]，邮箱[邮箱1]"
    assert [h.content for h in seen.history] == ["身份证[身份证1]", "好的，[手机号1] 已记录"]
    assert seen.hits[0].content == "客户车牌[车牌1]，手机[手机号1]"
    assert (seen.hits[1].content, seen.hits[1].question, seen.hits[1].title) == (
        "客服邮箱 [邮箱2]",
        "客服邮箱是多少",
        "联系 [邮箱2]",
    )
    assert seen.images == turn.images
    # The tools get the real values; what a search returns is masked with the same placeholders.
    assert searched == [f"{PHONE} 的订单"]
    assert [h.content for h in inner.found] == [
        "之前留过的卡号[银行卡1]和 [手机号2]",
        "客户车牌[车牌1]，手机[手机号1]",
    ]
    assert remembered == [f"顾客手机{PHONE}，邮箱{EMAIL}"]

    sources = [e for e in events if isinstance(e, Sources)]
    assert [s.hits for s in sources] == [[private, public], [later, private]]  # the originals
    text = "".join(e.text for e in events if isinstance(e, Delta))
    assert text == f"已为您查到{PHONE}的订单，卡号{CARD}，[手机号9]，车牌{PLATE}"
    assert isinstance(events[-1], Meta) and any(isinstance(e, Handoff) for e in events)
    await engine.aclose()
    assert inner.closed


async def test_held_text_is_kept_when_the_stream_breaks() -> None:
    masker_turn = TurnContext(user_id="u", session_id="s", text=f"手机{PHONE}", hits=[])
    engine = MaskingEngine(FakeEngine(["好的，", "[手机"], fail=True))
    events: list[EngineEvent] = []
    with pytest.raises(UpstreamBroken):
        async for event in engine.stream(masker_turn):
            events.append(event)
    assert "".join(e.text for e in events if isinstance(e, Delta)) == "好的，[手机"


async def test_an_unfinished_placeholder_is_flushed_before_meta() -> None:
    turn = TurnContext(user_id="u", session_id="s", text=f"手机{PHONE}", hits=[])
    events = await collect(MaskingEngine(FakeEngine(["好的[手机号"])), turn)
    deltas = [i for i, e in enumerate(events) if isinstance(e, Delta)]
    assert events[deltas[-1]].text == "[手机号"  # type: ignore[union-attr]
    assert deltas[-1] < len(events) - 1 and isinstance(events[-1], Meta)


# --- end to end with the stand-in model ------------------------------------------------------

REAL_VALUES = [
    PHONE,
    "138 1234 5678",
    ID_CARD,
    ID_CARD_2,
    CARD,
    EMAIL,
    "12345678",
    PLATE,
    "文三路100号",
    "文三路",
]


async def add_private(client: Any, content: str) -> None:
    response = await client.post("/api/v1/chat/memory/add", json={"user_id": "user123", "content": content})
    assert response.status_code == 200, response.text


def sent(standin: Any) -> str:
    return json.dumps(standin.requests, ensure_ascii=False)


@pytest.fixture
async def masked_app(start_app: Any, standin: Any) -> Any:
    return await start_app(llm_api_key=KEY, llm_base_url=standin.base_url, llm_timeout=5, llm_max_retries=0)


async def test_the_model_sees_placeholders_and_the_customer_the_real_values(
    masked_app: Any, standin: Any
) -> None:
    app, client = masked_app
    await add_private(client, f"车牌{PLATE}，身份证{ID_CARD_2}，收货地址浙江省杭州市{ADDRESS_DETAIL}")
    # A first turn puts an e-mail and a landline into the history.
    standin.script.append({"kind": "stream", "text": "好的，已收到。"})
    await client.post(STREAM, json=chat_body(f"我的邮箱是{EMAIL}，座机{LANDLINE}"))

    reply = "好的，已为您登记手机号[手机号1]，邮箱[邮箱1]，车牌[车牌1]。"
    standin.script.append({"kind": "stream", "text": reply, "chunk": 3})
    question = (
        f"我的手机号138 1234 5678，身份证{ID_CARD}，银行卡{CARD}，邮箱{EMAIL}，我的车牌和收货地址是什么"
    )
    response = await client.post(STREAM, json=chat_body(question))

    # The placeholder really arrived split over chunks.
    start = reply.index("[手机号1]")
    assert start // 3 != (start + len("[手机号1]") - 1) // 3

    log = sent(standin)
    assert len(standin.requests) == 2
    for value in REAL_VALUES:
        assert value not in log, value
    second = standin.requests[1]["messages"]
    assert second[-1]["content"] == (
        "我的手机号[手机号1]，身份证[身份证1]，银行卡[银行卡1]，邮箱[邮箱1]，我的车牌和收货地址是什么"
    )
    assert {"role": "user", "content": "我的邮箱是[邮箱1]，座机[座机1]"} in second  # history
    knowledge = second[1]["content"]
    # The private memory, masked.
    assert "[车牌1]" in knowledge and "[地址1]" in knowledge and "[身份证2]" in knowledge
    assert "浙江省杭州市[地址1]" in knowledge

    expected = f"好的，已为您登记手机号138 1234 5678，邮箱{EMAIL}，车牌{PLATE}。"
    assert answer_text(response.text) == expected
    assert "[手机号" not in response.text and len(sse_data(response.text)) > 5
    answer = (await rows(app, Message, Message.role == "assistant"))[-1]
    assert answer.content == expected
    assert not PLACEHOLDER.search(json.dumps(answer.sources, ensure_ascii=False))  # the real hits
    assert any(PLATE in (s.get("content") or "") for s in answer.sources or [])


async def test_typed_sources_carry_the_real_memory(masked_app: Any, standin: Any) -> None:
    _, client = masked_app
    await add_private(client, f"我的车牌是{PLATE}，常用手机{PHONE}")
    standin.script.append({"kind": "stream", "text": "您的车牌是[车牌1]。", "chunk": 1})
    response = await client.post(STREAM + "?events=typed", json=chat_body("我的车牌是多少"))
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    [sources] = [e for e in events if e["type"] == "sources"]
    assert any(s["content"] == f"我的车牌是{PLATE}，常用手机{PHONE}" for s in sources["sources"])
    assert "".join(e["text"] for e in events if e["type"] == "delta") == f"您的车牌是{PLATE}。"
    assert PLATE not in sent(standin) and PHONE not in sent(standin)


async def test_tools_get_real_values_where_they_need_them(masked_app: Any, standin: Any) -> None:
    app, client = masked_app
    await add_private(client, f"备用手机{PHONE}，车牌{PLATE}")
    standin.script += [
        {
            "kind": "tool",
            "name": "search_knowledge",
            "arguments": json.dumps({"query": "[手机号1] 车牌"}, ensure_ascii=False),
        },
        {
            "kind": "tool",
            "name": "save_customer_fact",
            "arguments": json.dumps({"fact": "顾客手机号是[手机号1]，邮箱[邮箱1]"}, ensure_ascii=False),
        },
        {"kind": "stream", "text": "好的，已记下[手机号1]。", "chunk": 2},
    ]
    response = await client.post(STREAM, json=chat_body(f"记一下我的手机{PHONE}和邮箱{EMAIL}"))
    assert answer_text(response.text) == f"好的，已记下{PHONE}。"
    assert len(standin.requests) == 3
    log = sent(standin)
    for value in (PHONE, EMAIL, PLATE):
        assert value not in log, value
    tool_result = standin.requests[1]["messages"][-1]
    assert tool_result["role"] == "tool" and "[车牌1]" in tool_result["content"]
    saved = await rows(app, Memory, Memory.scope == "private", Memory.owner_id == "user123")
    assert f"顾客手机号是{PHONE}，邮箱{EMAIL}" in [m.content for m in saved]


async def test_without_masking_the_model_receives_the_real_values(start_app: Any, standin: Any) -> None:
    _, client = await start_app(
        llm_api_key=KEY, llm_base_url=standin.base_url, llm_max_retries=0, pii_masking=False
    )
    standin.script.append({"kind": "stream", "text": "好的。"})
    await client.post(STREAM, json=chat_body(f"我的手机{PHONE}，邮箱{EMAIL}"))
    assert standin.requests[0]["messages"][-1]["content"] == f"我的手机{PHONE}，邮箱{EMAIL}"
