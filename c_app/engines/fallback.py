"""Primary engine with a fallback: if the primary fails before its first word, the fallback answers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from .base import Engine, EngineEvent, Meta, TurnContext, UpstreamUnavailable

logger = logging.getLogger(__name__)


class FallbackEngine:
    def __init__(self, primary: Engine, fallback: Engine) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = primary.name

    async def aclose(self) -> None:
        for engine in (self.primary, self.fallback):
            await engine.aclose()

    async def stream(self, turn: TurnContext) -> AsyncIterator[EngineEvent]:
        try:
            async for event in self.primary.stream(turn):
                yield event
            return
        except UpstreamUnavailable:
            logger.warning("%s unavailable; %s answers instead", self.primary.name, self.fallback.name)
        yield Meta(engine=self.fallback.name, status="fallback")
        async for event in self.fallback.stream(turn):
            yield event
