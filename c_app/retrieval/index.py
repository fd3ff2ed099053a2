"""In-memory lexical index for FAQ matching with calibrated, index-independent scores.

Contract (``LexicalIndex``):
- ``upsert(doc_id, questions, body="")`` indexes each question (the entry's question and its
  similar questions) as its own *unit*; ``body`` (answer / title / memory text) is one more unit
  whose score is discounted by ``Params.body_weight`` (it describes the entry rather than asking
  the question). A doc scores as its best unit. Re-upserting a doc_id replaces it.
- ``remove(doc_id)`` is a no-op if absent. Both are incremental: postings get appended to
  per-term buffers and a term is re-packed into numpy arrays only when a query next touches it.
- ``search(query, limit)`` returns ``[(doc_id, score)]`` best first, score in [0, 1].

Scoring. Terms are jieba words, characters and character bigrams (``text.tokenize``), each kind
with a global weight. IDF merges the index's own document frequencies with a general-Chinese
background prior (``background.doc_prob``) worth ``prior_docs`` pseudo documents, so a 1-doc
index still knows that 的 is common and 退款 is not. Stage 1 accumulates BM25 over the postings
of the query's terms into a dense array and keeps the best ``candidates`` units; stage 2 scores
those exactly with

    score = fusion * cos(q, u) + (1 - fusion) * min(1, bm25(q, u) / bm25(q, q))

``cos`` is the IDF-weighted cosine of the term vectors (symmetric: an entry that also talks
about other things is penalised), ``bm25(q, q)`` is what a unit identical to the query would get
(query-side normalisation). Both are in [0, 1]: an identical question scores 1, unrelated text
near 0, independent of how many other entries the index holds (up to the IDF prior blend).
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from . import background
from .text import BIGRAM, CHAR, PINYIN, WORD, normalize, tokenize


@dataclass
class Params:
    """Global knobs (tuned on the faq-eval sets as a whole, see bench/retrieval_tune.py)."""

    k1: float = 1.2
    b: float = 0.75
    kind_weight: dict[str, float] = field(default_factory=lambda: {WORD: 1.0, CHAR: 1.0, BIGRAM: 0.5, PINYIN: 0.5})
    fusion: float = 0.0  # share of the cosine in the final score (rest: normalised BM25)
    prior_docs: float = 2000.0  # weight of the background IDF prior, in pseudo documents
    body_weight: float = 0.7
    candidates: int = 200


_GROW = 1.5


class _Postings:
    """Postings of one term: packed numpy arrays plus an append buffer (lazy re-pack)."""

    __slots__ = ("slots", "tfs", "pend_slots", "pend_tfs", "dirty")

    def __init__(self) -> None:
        self.slots = np.empty(0, dtype=np.int32)
        self.tfs = np.empty(0, dtype=np.float32)
        self.pend_slots = array("i")
        self.pend_tfs = array("f")
        self.dirty = False

    def pack(self, alive: np.ndarray) -> None:
        if self.pend_slots:
            slots = np.concatenate([self.slots, np.frombuffer(self.pend_slots, dtype=np.int32)])
            tfs = np.concatenate([self.tfs, np.frombuffer(self.pend_tfs, dtype=np.float32)])
            self.pend_slots = array("i")
            self.pend_tfs = array("f")
        else:
            slots, tfs = self.slots, self.tfs
        keep = alive[slots]
        if not keep.all():
            slots, tfs = slots[keep], tfs[keep]
        self.slots, self.tfs = slots, tfs
        self.dirty = False


class LexicalIndex:
    """Incremental BM25 + cosine index over short questions; see module docstring."""

    def __init__(self, params: Params | None = None) -> None:
        self.params = params or Params()
        self._term_ids: dict[str, int] = {}
        self._postings: list[_Postings] = []
        self._df = np.zeros(1024, dtype=np.float64)  # live units containing the term
        self._bg = np.zeros(1024, dtype=np.float64)  # background doc probability
        self._kw = np.zeros(1024, dtype=np.float64)  # kind weight
        # per unit slot
        cap = 1024
        self._alive = np.zeros(cap, dtype=bool)
        self._dl = np.zeros(cap, dtype=np.float32)  # weighted unit length
        self._unit_w = np.zeros(cap, dtype=np.float32)  # 1.0 for questions, body_weight for body
        self._slot_doc = np.zeros(cap, dtype=np.int64)
        self._slot_terms: list[np.ndarray | None] = []
        self._slot_tfs: list[np.ndarray | None] = []
        self._n_slots = 0
        self._doc_slots: dict[int, list[int]] = {}
        self._n_live_units = 0
        self._total_dl = 0.0

    # ------------------------------------------------------------------ maintenance
    def __len__(self) -> int:
        return len(self._doc_slots)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._doc_slots

    def _term_id(self, term: str) -> int:
        tid = self._term_ids.get(term)
        if tid is None:
            tid = len(self._postings)
            self._term_ids[term] = tid
            self._postings.append(_Postings())
            if tid >= len(self._df):
                n = int(len(self._df) * _GROW) + 1
                self._df = np.resize(self._df, n)
                self._df[tid:] = 0
                self._bg = np.resize(self._bg, n)
                self._kw = np.resize(self._kw, n)
            self._bg[tid] = background.doc_prob(term)
            self._kw[tid] = self.params.kind_weight[term[0]]
        return tid

    def _new_slot(self) -> int:
        slot = self._n_slots
        if slot >= len(self._alive):
            n = int(len(self._alive) * _GROW) + 1
            self._alive = np.concatenate([self._alive, np.zeros(n - len(self._alive), dtype=bool)])
            self._dl = np.resize(self._dl, n)
            self._unit_w = np.resize(self._unit_w, n)
            self._slot_doc = np.resize(self._slot_doc, n)
        self._n_slots += 1
        self._slot_terms.append(None)
        self._slot_tfs.append(None)
        return slot

    def _add_unit(self, doc_id: int, text: str, weight: float) -> int | None:
        terms = tokenize(normalize(text))
        if not terms:
            return None
        counts = Counter(terms)
        slot = self._new_slot()
        tids = np.fromiter((self._term_id(t) for t in counts), dtype=np.int32, count=len(counts))
        tfs = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
        for tid, tf in zip(tids.tolist(), tfs.tolist()):
            p = self._postings[tid]
            p.pend_slots.append(slot)
            p.pend_tfs.append(tf)
            p.dirty = True
        self._df[tids] += 1
        dl = float((self._kw[tids] * tfs).sum())
        self._alive[slot] = True
        self._dl[slot] = dl
        self._unit_w[slot] = weight
        self._slot_doc[slot] = doc_id
        self._slot_terms[slot] = tids
        self._slot_tfs[slot] = tfs
        self._n_live_units += 1
        self._total_dl += dl
        return slot

    def upsert(self, doc_id: int, questions: list[str], body: str = "") -> None:
        """Index (or replace) ``doc_id``: each question is a primary unit, ``body`` a discounted one."""
        self.remove(doc_id)
        slots: list[int] = []
        for q in questions:
            s = self._add_unit(doc_id, q, 1.0)
            if s is not None:
                slots.append(s)
        if body and body.strip():
            # With no question at all (a free-form memory) the body is the only match target.
            s = self._add_unit(doc_id, body, self.params.body_weight if slots else 1.0)
            if s is not None:
                slots.append(s)
        self._doc_slots[doc_id] = slots

    def remove(self, doc_id: int) -> None:
        """Drop ``doc_id``; postings are filtered lazily on the next query touching its terms."""
        slots = self._doc_slots.pop(doc_id, None)
        if not slots:
            return
        for slot in slots:
            tids = self._slot_terms[slot]
            assert tids is not None
            self._df[tids] -= 1
            for tid in tids.tolist():
                self._postings[tid].dirty = True
            self._alive[slot] = False
            self._n_live_units -= 1
            self._total_dl -= float(self._dl[slot])
            self._slot_terms[slot] = None
            self._slot_tfs[slot] = None
        # Dead slots keep their place in the dense arrays; compact once they dominate.
        if self._n_slots > 1024 and self._n_live_units < self._n_slots // 2:
            self._compact()

    def _compact(self) -> None:
        docs = {d: [] for d in self._doc_slots}  # type: dict[int, list[tuple[np.ndarray, np.ndarray, float]]]
        for d, slots in self._doc_slots.items():
            docs[d] = [(self._slot_terms[s], self._slot_tfs[s], float(self._unit_w[s])) for s in slots]  # type: ignore[misc]
        old_term_ids = self._term_ids
        fresh = LexicalIndex(self.params)
        inv = {tid: t for t, tid in old_term_ids.items()}
        for d, units in docs.items():
            slots = []
            for tids, tfs, w in units:
                slot = fresh._new_slot()
                new_tids = np.fromiter((fresh._term_id(inv[t]) for t in tids.tolist()), dtype=np.int32,
                                       count=len(tids))
                for tid, tf in zip(new_tids.tolist(), tfs.tolist()):
                    p = fresh._postings[tid]
                    p.pend_slots.append(slot)
                    p.pend_tfs.append(tf)
                    p.dirty = True
                fresh._df[new_tids] += 1
                dl = float((fresh._kw[new_tids] * tfs).sum())
                fresh._alive[slot] = True
                fresh._dl[slot] = dl
                fresh._unit_w[slot] = w
                fresh._slot_doc[slot] = d
                fresh._slot_terms[slot] = new_tids
                fresh._slot_tfs[slot] = tfs
                fresh._n_live_units += 1
                fresh._total_dl += dl
                slots.append(slot)
            fresh._doc_slots[d] = slots
        self.__dict__.update(fresh.__dict__)

    # ------------------------------------------------------------------ scoring
    def _idf(self, tids: np.ndarray) -> np.ndarray:
        prior = self.params.prior_docs
        n = prior + self._n_live_units
        df = prior * self._bg[tids] + np.maximum(self._df[tids], 0.0)
        return np.log1p((n - df + 0.5) / (df + 0.5))

    def _query_terms(self, query: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Known query term ids, their counts, IDF, and the query's own weighted length.

        Terms the index has never seen still count in the query's self-score (below): a query
        that is mostly unknown words cannot score high.
        """
        counts = Counter(tokenize(normalize(query)))
        known_t, known_c = [], []
        unknown_w: list[float] = []
        unknown_idf: list[float] = []
        prior = self.params.prior_docs
        n = prior + self._n_live_units
        for term, c in counts.items():
            tid = self._term_ids.get(term)
            if tid is not None:
                known_t.append(tid)
                known_c.append(c)
            else:
                df = prior * background.doc_prob(term)
                unknown_idf.append(math.log1p((n - df + 0.5) / (df + 0.5)))
                unknown_w.append(self.params.kind_weight[term[0]] * c)
        tids = np.array(known_t, dtype=np.int64)
        qtf = np.array(known_c, dtype=np.float64)
        self._unknown = (np.array(unknown_w), np.array(unknown_idf))
        return tids, qtf, self._idf(tids) if len(tids) else np.empty(0), 0.0

    def search(self, query: str, limit: int = 5) -> list[tuple[int, float]]:
        """Best ``limit`` docs for ``query`` as ``(doc_id, score)``, score in [0, 1], best first."""
        if limit <= 0 or not self._doc_slots:
            return []
        p = self.params
        tids, qtf, idf, _ = self._query_terms(query)
        unk_w, unk_idf = self._unknown
        if len(tids) == 0:
            return []
        kw = self._kw[tids]
        avgdl = max(self._total_dl / max(self._n_live_units, 1), 1e-9)
        qlen = float((kw * qtf).sum() + unk_w.sum())
        # Query weight per term for BM25 (kind weight x idf) and for the cosine.
        bm_w = kw * idf * (p.k1 + 1.0)
        ltf_q = 1.0 + np.log(qtf)
        cos_wq = (kw * idf) ** 2 * ltf_q

        n = self._n_slots
        acc = np.zeros(n, dtype=np.float64)
        acc_dot = np.zeros(n, dtype=np.float64)
        k_len = p.k1 * (1.0 - p.b + p.b * self._dl[:n] / avgdl)
        alive = self._alive
        for i, tid in enumerate(tids.tolist()):
            post = self._postings[tid]
            if post.dirty:
                post.pack(alive)
            slots = post.slots
            if not len(slots):
                continue
            tf = post.tfs
            acc[slots] += bm_w[i] * tf / (tf + k_len[slots])
            acc_dot[slots] += cos_wq[i] * (1.0 + np.log(tf))

        # Self-score: BM25 of the query against a unit identical to it (dl = qlen).
        k_self = p.k1 * (1.0 - p.b + p.b * qlen / avgdl)
        self_known = float((bm_w * qtf / (qtf + k_self)).sum())
        self_unknown = float((unk_w * unk_idf * (p.k1 + 1.0) * 1.0 / (1.0 + k_self)).sum()) if len(unk_w) else 0.0
        self_score = self_known + self_unknown
        q_norm_sq = float(((kw * idf * ltf_q) ** 2).sum() + ((unk_w * unk_idf) ** 2).sum())

        k = min(p.candidates, n)
        cand = np.argpartition(-acc, k - 1)[:k] if k < n else np.arange(n)
        cand = cand[acc[cand] > 0]
        if not len(cand):
            return []
        # Exact unit norms for the candidates only (IDF changes as the index changes).
        terms = [self._slot_terms[s] for s in cand.tolist()]
        tfs = [self._slot_tfs[s] for s in cand.tolist()]
        lens = np.fromiter((len(t) for t in terms), dtype=np.int64, count=len(terms))  # type: ignore[arg-type]
        all_t = np.concatenate(terms)  # type: ignore[arg-type]
        all_tf = np.concatenate(tfs)  # type: ignore[arg-type]
        w = (self._kw[all_t] * self._idf(all_t) * (1.0 + np.log(all_tf))) ** 2
        offsets = np.concatenate([[0], np.cumsum(lens)[:-1]])
        d_norm_sq = np.add.reduceat(w, offsets)
        cos = acc_dot[cand] / np.sqrt(np.maximum(d_norm_sq * q_norm_sq, 1e-12))
        bm = np.minimum(acc[cand] / max(self_score, 1e-12), 1.0)
        score = (p.fusion * np.minimum(cos, 1.0) + (1.0 - p.fusion) * bm) * self._unit_w[cand]

        # Best unit per doc.
        order = np.argsort(-score, kind="stable")
        out: list[tuple[int, float]] = []
        seen: set[int] = set()
        docs = self._slot_doc[cand]
        for j in order.tolist():
            d = int(docs[j])
            if d in seen:
                continue
            seen.add(d)
            out.append((d, float(min(max(score[j], 0.0), 1.0))))
            if len(out) >= limit:
                break
        return out
