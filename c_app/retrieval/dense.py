"""Optional dense retrieval: embeddings from an OpenAI-compatible endpoint, fused with the lexical index.

Contract:
- ``EmbeddingClient.embed(texts)`` returns one L2-normalised float32 row per text, asking the
  endpoint in batches (``AsyncOpenAI(...).embeddings.create``); any failure (connection, 5xx,
  timeout, malformed answer) raises ``EmbeddingError``.
- ``VectorStore`` keeps vectors in one numpy matrix keyed by memory id (like ``LexicalIndex``):
  ``upsert``, ``remove``, ``search(vector, limit) -> [(doc_id, cosine)]``.
- ``fuse(lexical, dense, floor)`` merges the two candidate lists into ``[(doc_id, score)]``.

Why a blend and not plain reciprocal-rank fusion: the score is compared against the direct-answer
threshold and merged with the private and chat scopes' lexical scores, so it must be an absolute
confidence in [0, 1], which rank-only RRF scores are not (the best hit of a nonsense query would
get the same RRF score as an exact match). The fused score is

    score = max(lex, (lex + sim) / 2),   sim = clip((cosine - floor) / (1 - floor), 0, 1)

over the union of both lists' candidates (a candidate missing from the lexical list has lex 0).
Dense evidence can only *raise* a candidate: an exact question still scores 1, a lexical score
keeps its measured meaning (the answer threshold stays valid), and a paraphrase the lexical
index half-matches is lifted towards its cosine. ``floor`` is the cosine that unrelated texts
reach with the configured model (model-specific; EMBEDDING_MIN_SIMILARITY).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import httpx
import numpy as np
from openai import AsyncOpenAI, OpenAIError

logger = logging.getLogger(__name__)


class EmbeddingError(Exception):
    """The embeddings endpoint could not produce vectors."""


def text_hash(text: str) -> str:
    """Identifies the text a stored vector was computed from (a changed entry needs a new one)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _normalised(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (rows / norms).astype(np.float32)


class EmbeddingClient:
    """Batched calls to an OpenAI-compatible /embeddings endpoint."""

    def __init__(
        self, *, base_url: str, model: str, api_key: str | None, timeout: float, batch_size: int = 64
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        # No SDK retries: a query waits at most one timeout, then the caller falls back to lexical.
        self._client = AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "not-needed",
            timeout=timeout,
            max_retries=0,
        )

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        out: list[np.ndarray] = []
        for start in range(0, len(texts), self.batch_size):
            batch = [t or " " for t in texts[start : start + self.batch_size]]  # the API refuses ""
            try:
                response = await self._client.embeddings.create(model=self.model, input=batch)
                data = sorted(response.data, key=lambda item: item.index)
                rows = np.asarray([item.embedding for item in data], dtype=np.float32)
            except (OpenAIError, httpx.HTTPError, ValueError, TypeError) as exc:
                raise EmbeddingError(f"{type(exc).__name__}: {exc}") from exc
            if rows.ndim != 2 or len(rows) != len(batch):
                raise EmbeddingError(f"expected {len(batch)} vectors, got shape {rows.shape}")
            out.append(_normalised(rows))
        if not out:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(out)

    async def aclose(self) -> None:
        await self._client.close()


class VectorStore:
    """Unit vectors in one growing matrix; cosine search is a matrix-vector product."""

    def __init__(self) -> None:
        self._reset(0)

    def _reset(self, width: int) -> None:
        self._rows = np.zeros((0, width), dtype=np.float32)
        self._ids = np.zeros(0, dtype=np.int64)
        self._alive = np.zeros(0, dtype=bool)
        self._slot: dict[int, int] = {}
        self._free: list[int] = []
        self._n = 0

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._slot

    def upsert(self, doc_id: int, vector: np.ndarray) -> None:
        vector = np.asarray(vector, dtype=np.float32).ravel()
        if self._rows.shape[1] != len(vector):
            if self._slot:
                # A different model's width: the old vectors are not comparable, start over.
                logger.warning(
                    "embedding width changed %d -> %d; vectors dropped", self._rows.shape[1], len(vector)
                )
            self._reset(len(vector))
        slot = self._slot.get(doc_id)
        if slot is None:
            slot = self._free.pop() if self._free else self._n
            if slot == self._n:
                self._n += 1
                if self._n > len(self._rows):
                    grow = max(self._n, int(len(self._rows) * 1.5) + 16)
                    rows = np.zeros((grow, self._rows.shape[1]), dtype=np.float32)
                    rows[: len(self._rows)] = self._rows
                    self._rows = rows
                    self._ids = np.resize(self._ids, grow)
                    alive = np.zeros(grow, dtype=bool)
                    alive[: len(self._alive)] = self._alive
                    self._alive = alive
            self._slot[doc_id] = slot
        self._rows[slot] = vector
        self._ids[slot] = doc_id
        self._alive[slot] = True

    def remove(self, doc_id: int) -> None:
        slot = self._slot.pop(doc_id, None)
        if slot is not None:
            self._alive[slot] = False
            self._rows[slot] = 0.0
            self._free.append(slot)

    def search(self, vector: np.ndarray, limit: int) -> list[tuple[int, float]]:
        if limit <= 0 or not self._slot or len(vector) != self._rows.shape[1]:
            return []
        sims = self._rows[: self._n] @ np.asarray(vector, dtype=np.float32)
        sims[~self._alive[: self._n]] = -np.inf
        k = min(limit, len(self._slot))
        top = np.argpartition(-sims, k - 1)[:k] if k < self._n else np.arange(self._n)
        top = top[np.argsort(-sims[top], kind="stable")]
        return [(int(self._ids[i]), float(sims[i])) for i in top.tolist() if np.isfinite(sims[i])][:limit]


def fuse(
    lexical: Sequence[tuple[int, float]], dense: Sequence[tuple[int, float]], *, floor: float, limit: int
) -> list[tuple[int, float]]:
    """Blend lexical scores with rescaled cosines (see module docstring); best `limit` first."""
    scores = {doc: score for doc, score in lexical}
    span = max(1.0 - floor, 1e-6)
    for doc, cosine in dense:
        sim = min(max((cosine - floor) / span, 0.0), 1.0)
        lex = scores.get(doc, 0.0)
        scores[doc] = max(lex, (lex + sim) / 2.0)
    ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)
    return [(doc, min(max(score, 0.0), 1.0)) for doc, score in ranked[:limit] if score > 0.0]
