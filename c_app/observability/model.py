"""The model's figures: tokens it reports and calls that fail (c_app_model_tokens, c_app_model_errors)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..engines.base import Engine, EngineEvent, Meta, TurnContext, UpstreamBroken, UpstreamUnavailable
from .metrics import MODEL_ERRORS, MODEL_TOKENS


class MeteredModel:
    """Wraps the model's engine (inside the knowledge-base fallback, which hides its failures)."""

    def __init__(self, inner: Engine, *, model: str) -> None:
        self.inner = inner
        self.name = inner.name
        self.model = model
        self._prompt = MODEL_TOKENS.labels(model, "prompt")
        self._completion = MODEL_TOKENS.labels(model, "completion")

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def stream(self, turn: TurnContext) -> AsyncIterator[EngineEvent]:
        try:
            async for event in self.inner.stream(turn):
                if isinstance(event, Meta) and event.usage:
                    self._prompt.inc(int(event.usage.get("prompt_tokens") or 0))
                    self._completion.inc(int(event.usage.get("completion_tokens") or 0))
                yield event
        except UpstreamUnavailable:
            MODEL_ERRORS.labels(self.model, "unavailable").inc()
            raise
        except UpstreamBroken:
            MODEL_ERRORS.labels(self.model, "broken").inc()
            raise
        except Exception:
            MODEL_ERRORS.labels(self.model, "other").inc()
            raise
