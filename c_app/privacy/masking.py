"""An engine wrapper that keeps personal data from the model: it sees placeholders, the customer
sees the real values.

    FallbackEngine(MaskingEngine(llm), kb)

For each turn a new `Masker` masks the customer's text, the history and the retrieved memories
(content, question, title; images are passed as they are). The model's tools get the real values
only where they need them: a search query is unmasked before searching (its results are masked
with the same Masker), a fact the model saves is unmasked before it is stored. On the way back the
answer's text is unmasked as it streams, sources are the original hits, and handoff and meta
events pass through.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence

from ..engines.base import (
    Delta,
    Engine,
    EngineEvent,
    HistoryItem,
    Hit,
    Meta,
    Sources,
    TurnContext,
    UpstreamBroken,
)
from .pii import Masker


class MaskingEngine:
    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.name = inner.name

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def stream(self, turn: TurnContext) -> AsyncIterator[EngineEvent]:
        masker = Masker()
        originals: dict[tuple[str, int], Hit] = {}

        def mask_hits(hits: Sequence[Hit]) -> list[Hit]:
            masked = []
            for hit in hits:
                originals[(hit.scope, hit.id)] = hit
                masked.append(
                    dataclasses.replace(
                        hit,
                        content=masker.mask(hit.content),
                        question=masker.mask(hit.question),
                        title=masker.mask(hit.title),
                    )
                )
            return masked

        async def search(query: str) -> list[Hit]:
            return mask_hits(await turn.search(masker.unmask(query)))

        async def remember(fact: str) -> int | None:
            return await turn.remember(masker.unmask(fact))

        # The customer's words first: their values get the first numbers ([手机号1] ...).
        text = masker.mask(turn.text)
        history = [HistoryItem(item.role, masker.mask(item.content)) for item in turn.history]
        masked = TurnContext(
            user_id=turn.user_id,
            session_id=turn.session_id,
            text=text,
            hits=mask_hits(turn.hits),
            history=history,
            images=turn.images,
            search=search,
            remember=remember,
            # The decision's entries are hits too: the model sees them masked.
            decision=(
                dataclasses.replace(turn.decision, entries=tuple(mask_hits(list(turn.decision.entries))))
                if turn.decision is not None
                else None
            ),
        )

        def original(hit: Hit) -> Hit:
            found = originals.get((hit.scope, hit.id))
            if found is not None:
                return found
            return dataclasses.replace(
                hit,
                content=masker.unmask(hit.content),
                question=masker.unmask(hit.question),
                title=masker.unmask(hit.title),
            )

        unmasker = masker.unmasker()
        try:
            async for event in self.inner.stream(masked):
                if isinstance(event, Delta):
                    piece = unmasker.feed(event.text)
                    if piece:
                        yield Delta(text=piece)
                elif isinstance(event, Sources):
                    yield Sources(hits=[original(hit) for hit in event.hits])
                else:
                    if isinstance(event, Meta):
                        held = unmasker.flush()
                        if held:
                            yield Delta(text=held)
                    yield event
        except UpstreamBroken:
            # The partial answer is kept: it includes what was held back.
            held = unmasker.flush()
            if held:
                yield Delta(text=held)
            raise
        held = unmasker.flush()
        if held:
            yield Delta(text=held)
