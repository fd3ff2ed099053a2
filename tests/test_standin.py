"""The stand-in model itself: a request left hanging ends when the stand-in is closed, so no test
waits for a hang in its teardown."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from .llm_standin import StandIn

WAIT = 15.0  # generous: a deadline for outcomes, not a measurement


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("behaviour", "stream"),
    [({"kind": "hang"}, False), ({"kind": "hang"}, True), ({"kind": "hang_after", "text": "一二"}, True)],
)
def test_closing_ends_a_hang_while_its_client_still_waits(behaviour: dict[str, Any], stream: bool) -> None:
    stand = StandIn()
    stand.script.append(behaviour)
    outcome: dict[str, Any] = {}

    def call(base_url: str) -> None:
        body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
        # The client would wait far longer than any test: only the stand-in can end this request.
        with httpx.Client(timeout=120) as client:
            response = client.post(f"{base_url}/chat/completions", json=body)
            outcome["status"], outcome["text"] = response.status_code, response.text

    with stand.serving() as base_url:
        caller = threading.Thread(target=call, args=(base_url,), daemon=True)
        caller.start()
        wait_until(lambda: stand.requests, "the request to reach the stand-in")
    # Leaving `serving()` closed the stand-in: the hang ended and its client got an answer.
    caller.join(timeout=WAIT)
    assert not caller.is_alive(), "the hanging request outlived the stand-in"
    if behaviour["kind"] == "hang":
        assert outcome["status"] == 503
    else:  # the words streamed before the hang, then the stream ended unfinished
        assert outcome["status"] == 200 and "一" in outcome["text"] and "[DONE]" not in outcome["text"]
    assert stand.disconnects == []  # the client never left: this was the stand-in closing


async def test_a_hang_ends_when_its_client_goes() -> None:
    stand = StandIn()
    stand.script.append({"kind": "hang"})
    with stand.serving() as base_url:
        body = {"model": "m", "stream": False, "messages": [{"role": "user", "content": "hi"}]}
        async with httpx.AsyncClient(timeout=0.5) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post(f"{base_url}/chat/completions", json=body)
        wait_until(lambda: stand.disconnects, "the stand-in to notice the client went")
