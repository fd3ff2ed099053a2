"""In-memory lexical index for FAQ matching with calibrated, index-independent scores.

Contract (``LexicalIndex``):
- ``upsert(doc_id, questions, body="")`` indexes each question (the entry's question and its
  similar questions) as its own *unit*; ``body`` (answer / title / memory text) is one more unit
  whose score is discounted by ``Params.body_weight`` (it describes the entry rather than asking
  the question). A doc scores as its best unit. Re-upserting a doc_id replaces it.
- ``remove(doc_id)`` is a no-op if absent. Both are incremental: new postings go to one append
  buffer and removed units are only flagged dead; the next search merges the buffer into the
  per-term numpy posting arrays and filters the dead units out of the terms they had, touching
  only the terms that changed. Dead unit slots are reclaimed by a compaction once they are
  more than half of all slots.
- ``search(query, limit)`` returns ``[(doc_id, score)]`` best first, score in [0, 1].
- ``defer(doc_id, fields)`` queues an upsert (``fields`` = ``(questions, body)``) or a removal
  (``None``) without doing any work: it is applied, in order, by ``settle()`` or the next call of
  any of the methods above, so a caller on an event loop can leave the work to a worker thread
  and still read its own writes.

Threads. Every method may be called from several threads at once. The text analysis (the
CPU-heavy part) runs outside the index's lock; the mutation, the merge of pending postings that a
search starts with, and the scoring run under it.

Scoring. Terms are jieba words, characters and character bigrams (``text.tokenize``), each kind
with a global weight. IDF merges the index's own document frequencies with a general-Chinese
background prior (``background.doc_prob``) worth ``prior_docs`` pseudo documents, so a 1-doc
index still knows that 的 is common and 退款 is not, and a 100k-entry KB mostly uses its own
statistics. BM25 is accumulated over the postings of the query's terms into a dense array, and
the score is

    score = min(1, bm25(q, u) / bm25(q, q))

where ``bm25(q, q)`` is what a unit identical to the query would get (terms the index has never
seen count there too). So an identical question scores 1 in any index, a unit sharing only
common characters scores near 0, and the value reads as "share of the query's information this
entry matches", comparable across indexes of any size (up to the IDF prior blend).
"""

from __future__ import annotations

import threading
from array import array
from collections import Counter, deque
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from . import background
from .text import BIGRAM, CHAR, MAX_TEXT_CHARS, WORD, normalize, tokenize

Unit = tuple[dict[str, int], float]  # a unit's term counts and its weight
Fields = tuple[list[str], str]  # what a doc is indexed on: its questions and its body


def _counts(text: str) -> dict[str, int]:
    return Counter(tokenize(normalize(text)))


# Recent queries' terms: one customer question is searched in three indexes (private, chat and
# the knowledge base) in a row. Small: a 2,000-character query has a few thousand terms.
@lru_cache(maxsize=32)
def _query_counts(query: str) -> tuple[tuple[str, int], ...]:
    return tuple(_counts(query).items())


@dataclass
class Params:
    """Global knobs (tuned on the faq-eval sets as a whole, see bench/retrieval_tune.py)."""

    k1: float = 1.2
    b: float = 0.75
    kind_weight: dict[str, float] = field(default_factory=lambda: {WORD: 1.0, CHAR: 1.0, BIGRAM: 0.5})
    prior_docs: float = 2000.0  # weight of the background IDF prior, in pseudo documents
    body_weight: float = 0.7


def analyse(questions: list[str], body: str, params: Params | None = None) -> list[Unit]:
    """The units a doc is indexed as: each question's term counts (weight 1) and the body's
    (``body_weight``; 1 when there is no question). What ``upsert`` analyses, and what a caller
    may store (``stored.encode``) to rank the doc later without analysing it again."""
    units: list[Unit] = []
    for q in questions:
        counts = _counts(q)
        if counts:
            units.append((dict(counts), 1.0))
    if body and body.strip():
        counts = _counts(body)
        if counts:
            # With no question at all (a free-form memory) the body is the only match target.
            units.append((dict(counts), (params or Params()).body_weight if units else 1.0))
    return units


def unit_length(counts: dict[str, int], params: Params | None = None) -> float:
    """A unit's kind-weighted length (BM25's document length), as ``LexicalIndex`` counts it."""
    kind_weight = (params or Params()).kind_weight
    return float(sum(kind_weight[term[0]] * tf for term, tf in counts.items()))


def _idf(
    prior: float, n_docs: float, df_local: np.ndarray | float, bg: np.ndarray | float
) -> np.ndarray | float:
    # BM25 IDF over the index's units plus ``prior`` background pseudo documents (n_docs counts both).
    df = prior * bg + np.maximum(df_local, 0.0)
    return np.log1p((n_docs - df + 0.5) / (df + 0.5))


def _rank(
    p: Params,
    *,
    kw: np.ndarray,
    df: np.ndarray,
    bg: np.ndarray,
    qtf: np.ndarray,
    unknown: list[tuple[float, float, int]],
    n_docs: float,
    avgdl: float,
    dl: np.ndarray,
    postings: list[tuple[np.ndarray, np.ndarray]],
    unit_w: np.ndarray,
    slot_doc: np.ndarray,
    limit: int,
) -> list[tuple[int, float]]:
    """The scoring both ``LexicalIndex._search`` and ``stored.rank`` end in: the query's known terms
    (kind weight, document frequency, background probability, count; their postings), the
    unknown ones ``(kind weight, background probability, count)``, and the units' lengths,
    weights and docs."""
    unk_w = 0.0  # kind weight x idf x count of terms the units never hold
    unk_len = 0.0
    for kwt, bgt, c in unknown:
        unk_w += kwt * float(_idf(p.prior_docs, n_docs, 0.0, bgt)) * c
        unk_len += kwt * c
    idf = _idf(p.prior_docs, n_docs, df, bg)
    qlen = float((kw * qtf).sum()) + unk_len
    # Self-score: BM25 of the query against a unit identical to it (dl = qlen). Unknown terms
    # count here too, so a query made mostly of words the index lacks cannot score high.
    k_self = p.k1 * (1.0 - p.b + p.b * qlen / avgdl)
    qw = kw * idf * (p.k1 + 1.0)
    self_score = float((qw * qtf / (qtf + k_self)).sum()) + unk_w * (p.k1 + 1.0) / (1.0 + k_self)
    if not len(kw) or self_score <= 0:
        return []

    n = len(dl)
    acc = np.zeros(n, dtype=np.float64)
    k_len = p.k1 * (1.0 - p.b + p.b * dl / avgdl)
    for w, (slots, tf) in zip(qw.tolist(), postings):
        # Query term repeats are not rewarded beyond once: questions are short, repeats are noise.
        acc[slots] += w * tf / (tf + k_len[slots])

    k = min(limit * 8 + 8, n)  # a doc can have several units; keep enough to fill ``limit`` docs
    cand = np.argpartition(-acc, k - 1)[:k] if k < n else np.arange(n)
    cand = cand[acc[cand] > 0]
    score = np.minimum(acc[cand] / self_score, 1.0) * unit_w[cand]
    order = np.argsort(-score, kind="stable")
    out: list[tuple[int, float]] = []
    seen: set[int] = set()
    docs = slot_doc[cand]
    for j in order.tolist():
        d = int(docs[j])
        if d in seen:
            continue
        seen.add(d)
        out.append((d, float(min(max(score[j], 0.0), 1.0))))
        if len(out) >= limit:
            break
    return out


_GROW = 1.5


def _grow(arr: np.ndarray, need: int) -> np.ndarray:
    if need <= len(arr):
        return arr
    out = np.zeros(max(need, int(len(arr) * _GROW) + 16), dtype=arr.dtype)
    out[: len(arr)] = arr
    return out


class LexicalIndex:
    """Incremental BM25 index over short questions with calibrated scores; see module docstring."""

    def __init__(self, params: Params | None = None) -> None:
        self.params = params or Params()
        # per term
        self._term_ids: dict[str, int] = {}
        self._terms: list[str] = []
        self._p_slots: list[np.ndarray | None] = []  # packed postings: unit slots (int32)
        self._p_tfs: list[np.ndarray | None] = []  # packed postings: term frequencies (float32)
        self._df = np.zeros(0, dtype=np.float64)  # live units containing the term
        self._bg = np.zeros(0, dtype=np.float64)  # background doc probability
        self._kw = np.zeros(0, dtype=np.float64)  # kind weight
        # postings not yet merged into the packed arrays, and terms whose packed arrays hold dead units
        self._pend_t = array("i")
        self._pend_s = array("i")
        self._pend_tf = array("f")
        self._stale_terms: set[int] = set()
        # per unit slot; a unit's terms live in the flat arrays at [off, off + n)
        self._alive = np.zeros(0, dtype=bool)
        self._dl = np.zeros(0, dtype=np.float32)  # kind-weighted unit length
        self._unit_w = np.zeros(0, dtype=np.float32)  # 1.0 for questions, body_weight for a body
        self._slot_doc = np.zeros(0, dtype=np.int64)
        self._off = np.zeros(0, dtype=np.int64)
        self._cnt = np.zeros(0, dtype=np.int32)
        self._flat_t = np.zeros(0, dtype=np.int32)
        self._flat_tf = np.zeros(0, dtype=np.float32)
        self._n_flat = 0
        self._n_slots = 0
        self._doc_slots: dict[int, list[int]] = {}
        self._n_live_units = 0
        self._total_dl = 0.0
        # Not part of the index's state (kept by _compact): who may touch it, and writes queued for it.
        self._lock = threading.Lock()
        self._deferred: deque[tuple[int, Fields | None]] = deque()

    # ------------------------------------------------------------------ maintenance
    def __len__(self) -> int:
        return len(self._doc_slots)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._doc_slots

    def _new_terms(self, terms: list[str]) -> None:
        start = len(self._terms)
        need = start + len(terms)
        self._df = _grow(self._df, need)
        self._bg = _grow(self._bg, need)
        self._kw = _grow(self._kw, need)
        kind_weight = self.params.kind_weight
        for i, term in enumerate(terms, start):
            self._term_ids[term] = i
            self._terms.append(term)
            self._p_slots.append(None)
            self._p_tfs.append(None)
            self._bg[i] = background.doc_prob(term)
            self._kw[i] = kind_weight[term[0]]

    def _add_unit(self, doc_id: int, counts: dict[str, int], weight: float) -> int:
        term_ids = self._term_ids
        new = [t for t in counts if t not in term_ids]
        if new:
            self._new_terms(new)
        tids = [term_ids[t] for t in counts]
        tfs = list(counts.values())
        n = len(tids)
        slot = self._n_slots
        self._n_slots += 1
        if slot >= len(self._alive):
            need = slot + 1
            self._alive = _grow(self._alive, need)
            self._dl = _grow(self._dl, need)
            self._unit_w = _grow(self._unit_w, need)
            self._slot_doc = _grow(self._slot_doc, need)
            self._off = _grow(self._off, need)
            self._cnt = _grow(self._cnt, need)
        off = self._n_flat
        if off + n > len(self._flat_t):
            self._flat_t = _grow(self._flat_t, off + n)
            self._flat_tf = _grow(self._flat_tf, off + n)
        self._flat_t[off : off + n] = tids
        self._flat_tf[off : off + n] = tfs
        self._n_flat = off + n
        self._pend_t.extend(tids)
        self._pend_s.extend([slot] * n)
        self._pend_tf.extend(tfs)
        t_arr = self._flat_t[off : off + n]
        self._df[t_arr] += 1
        dl = float((self._kw[t_arr] * self._flat_tf[off : off + n]).sum())
        self._alive[slot] = True
        self._dl[slot] = dl
        self._unit_w[slot] = weight
        self._slot_doc[slot] = doc_id
        self._off[slot] = off
        self._cnt[slot] = n
        self._n_live_units += 1
        self._total_dl += dl
        return slot

    def _units(self, questions: list[str], body: str) -> list[Unit]:
        """The analysed units of a doc (no state read or written: runs outside the lock)."""
        return analyse(questions, body, self.params)

    def defer(self, doc_id: int, fields: Fields | None) -> None:
        """Queue an upsert of ``fields`` (questions, body), or a removal (None); no work now."""
        self._deferred.append((doc_id, fields))

    def settle(self) -> None:
        """Apply the deferred writes now."""
        with self._lock:
            self._apply_deferred()

    def _apply_deferred(self) -> None:
        # Under the lock. The analysis runs here too: the queue's order must hold.
        while self._deferred:
            doc_id, fields = self._deferred.popleft()
            if fields is None:
                self._remove(doc_id)
            else:
                self._upsert(doc_id, self._units(*fields))

    def upsert(self, doc_id: int, questions: list[str], body: str = "") -> None:
        """Index (or replace) ``doc_id``: each question is a primary unit, ``body`` a discounted one."""
        units = self._units(questions, body)
        with self._lock:
            self._apply_deferred()
            self._upsert(doc_id, units)

    def _upsert(self, doc_id: int, units: list[Unit]) -> None:
        self._remove(doc_id)
        self._doc_slots[doc_id] = [self._add_unit(doc_id, c, w) for c, w in units]

    def remove(self, doc_id: int) -> None:
        """Drop ``doc_id`` (no-op if absent); its postings are filtered out on the next search."""
        with self._lock:
            self._apply_deferred()
            self._remove(doc_id)

    def _remove(self, doc_id: int) -> None:
        slots = self._doc_slots.pop(doc_id, None)
        if slots is None:
            return
        for slot in slots:
            off, n = int(self._off[slot]), int(self._cnt[slot])
            t_arr = self._flat_t[off : off + n]
            self._df[t_arr] -= 1
            self._stale_terms.update(t_arr.tolist())
            self._alive[slot] = False
            self._n_live_units -= 1
            self._total_dl -= float(self._dl[slot])
        if self._n_slots > 1024 and self._n_live_units < self._n_slots // 2:
            self._compact()

    def _compact(self) -> None:
        """Rebuild without dead slots (amortised: runs only once they outnumber live ones)."""
        fresh = LexicalIndex(self.params)
        for doc_id, slots in self._doc_slots.items():
            new_slots = []
            for slot in slots:
                off, n = int(self._off[slot]), int(self._cnt[slot])
                counts = {
                    self._terms[t]: int(tf)
                    for t, tf in zip(
                        self._flat_t[off : off + n].tolist(), self._flat_tf[off : off + n].tolist()
                    )
                }
                new_slots.append(fresh._add_unit(doc_id, counts, float(self._unit_w[slot])))
            fresh._doc_slots[doc_id] = new_slots
        state = dict(fresh.__dict__)
        del state["_lock"], state["_deferred"]  # the lock held now, and writes queued meanwhile
        self.__dict__.update(state)

    def _flush(self) -> None:
        """Merge pending postings into the packed per-term arrays; drop dead units from stale terms."""
        touched: set[int] = set(self._stale_terms)
        if self._pend_t:
            pt = np.frombuffer(self._pend_t, dtype=np.int32).copy()
            ps = np.frombuffer(self._pend_s, dtype=np.int32).copy()
            pf = np.frombuffer(self._pend_tf, dtype=np.float32).copy()
            self._pend_t, self._pend_s, self._pend_tf = array("i"), array("i"), array("f")
            order = np.argsort(pt, kind="stable")
            pt, ps, pf = pt[order], ps[order], pf[order]
            bounds = np.flatnonzero(np.diff(pt)) + 1
            starts = np.concatenate([[0], bounds]).tolist()
            ends = np.concatenate([bounds, [len(pt)]]).tolist()
            p_slots, p_tfs = self._p_slots, self._p_tfs
            for tid, a, b in zip(pt[starts].tolist(), starts, ends):
                old = p_slots[tid]
                if old is None:
                    p_slots[tid] = ps[a:b]
                    p_tfs[tid] = pf[a:b]
                else:
                    p_slots[tid] = np.concatenate([old, ps[a:b]])
                    p_tfs[tid] = np.concatenate([p_tfs[tid], pf[a:b]])
        alive = self._alive
        for tid in touched:
            sl = self._p_slots[tid]
            if sl is None:
                continue
            keep = alive[sl]
            if not keep.all():
                self._p_slots[tid] = sl[keep]
                self._p_tfs[tid] = self._p_tfs[tid][keep]  # type: ignore[index]
        self._stale_terms = set()

    # ------------------------------------------------------------------ snapshots
    def export(self) -> dict[str, np.ndarray]:
        """The live units as plain arrays, in doc id order (a fresh build's order): the terms they
        use (``terms`` utf-8 bytes cut by ``term_len``), each unit's term count ``cnt`` and its terms
        in ``flat_t`` / ``flat_tf``, its weight ``unit_w`` and doc ``slot_doc``. Everything else
        (frequencies, lengths, postings) follows from these; see ``from_arrays``."""
        with self._lock:
            self._apply_deferred()
            slots = np.array([s for d in sorted(self._doc_slots) for s in self._doc_slots[d]], dtype=np.int64)
            off, cnt = self._off[slots], self._cnt[slots].astype(np.int64)
            total = int(cnt.sum())
            idx = np.arange(total, dtype=np.int64) + np.repeat(off - (np.cumsum(cnt) - cnt), cnt)
            old_t = self._flat_t[idx]
            used = np.unique(old_t)
            terms = [self._terms[t].encode("utf-8") for t in used.tolist()]
            return {
                "terms": np.frombuffer(b"".join(terms), dtype="u1"),
                "term_len": np.array([len(t) for t in terms], dtype="<i4"),
                "flat_t": np.searchsorted(used, old_t).astype("<i4"),
                "flat_tf": self._flat_tf[idx].astype("<f4"),
                "cnt": cnt.astype("<i4"),
                "unit_w": self._unit_w[slots].astype("<f4"),
                "slot_doc": self._slot_doc[slots].astype("<i8"),
                # Docs indexed with no unit at all (text that normalises to nothing): still held.
                "empty": np.array(sorted(d for d, s in self._doc_slots.items() if not s), dtype="<i8"),
            }

    @classmethod
    def from_arrays(
        cls,
        terms: list[str],
        flat_t: np.ndarray,
        flat_tf: np.ndarray,
        cnt: np.ndarray,
        unit_w: np.ndarray,
        slot_doc: np.ndarray,
        params: Params | None = None,
        empty: np.ndarray | None = None,
    ) -> LexicalIndex:
        """The index ``export`` described (arrays already validated: see ``snapshot.load``)."""
        index = cls(params)
        index._new_terms(terms)
        n_units, n_flat = len(cnt), len(flat_t)
        off = np.zeros(n_units, dtype=np.int64)
        if n_units:
            off[1:] = np.cumsum(cnt.astype(np.int64))[:-1]
        index._flat_t = flat_t.astype(np.int32)
        index._flat_tf = flat_tf.astype(np.float32)
        index._n_flat = n_flat
        index._off = off
        index._cnt = cnt.astype(np.int32)
        index._alive = np.ones(n_units, dtype=bool)
        index._unit_w = unit_w.astype(np.float32)
        index._slot_doc = slot_doc.astype(np.int64)
        index._n_slots = n_units
        index._n_live_units = n_units
        dl = np.add.reduceat(index._kw[index._flat_t] * index._flat_tf, off) if n_units else np.zeros(0)
        index._dl = dl.astype(np.float32)
        index._total_dl = float(dl.sum())
        index._df[: len(terms)] = np.bincount(index._flat_t, minlength=len(terms))
        # Postings: every term's units in slot order, as ``_flush`` packs them.
        unit_of = np.repeat(np.arange(n_units, dtype=np.int32), index._cnt)
        order = np.argsort(index._flat_t, kind="stable")
        pt, ps, pf = index._flat_t[order], unit_of[order], index._flat_tf[order]
        if n_flat:
            bounds = np.flatnonzero(np.diff(pt)) + 1
            starts = np.concatenate([[0], bounds]).tolist()
            ends = np.concatenate([bounds, [n_flat]]).tolist()
            for tid, a, b in zip(pt[starts].tolist(), starts, ends):
                index._p_slots[tid] = ps[a:b]
                index._p_tfs[tid] = pf[a:b]
        doc_slots: dict[int, list[int]] = {doc: [] for doc in (empty.tolist() if empty is not None else [])}
        for slot, doc in enumerate(index._slot_doc.tolist()):
            doc_slots.setdefault(doc, []).append(slot)
        index._doc_slots = doc_slots
        return index

    # ------------------------------------------------------------------ scoring
    def _idf(self, df_local: np.ndarray | float, bg: np.ndarray | float) -> np.ndarray | float:
        prior = self.params.prior_docs
        return _idf(prior, prior + self._n_live_units, df_local, bg)

    def query_terms(self, query: str) -> list[tuple[str, int, float, bool]]:
        """``(term, count, weighted idf, known to this index)`` of a query, for hit-testing views."""
        counts = _query_counts(query[:MAX_TEXT_CHARS])  # normalize reads no further
        out = []
        with self._lock:
            self._apply_deferred()
            for term, c in counts:
                tid = self._term_ids.get(term)
                df = float(self._df[tid]) if tid is not None else 0.0
                w = self.params.kind_weight[term[0]] * float(self._idf(df, background.doc_prob(term)))
                out.append((term, c, w, tid is not None and df > 0))
        return out

    def search(self, query: str, limit: int = 5) -> list[tuple[int, float]]:
        """Best ``limit`` docs for ``query`` as ``(doc_id, score)``, score in [0, 1], best first."""
        if limit <= 0 or not (self._doc_slots or self._deferred):
            return []
        counts = _query_counts(query[:MAX_TEXT_CHARS])  # normalize reads no further
        with self._lock:
            self._apply_deferred()
            return self._search(counts, limit)

    def _search(self, counts: tuple[tuple[str, int], ...], limit: int) -> list[tuple[int, float]]:
        if not self._doc_slots or not counts:
            return []
        if self._pend_t or self._stale_terms:
            self._flush()
        p = self.params
        known: list[int] = []
        known_c: list[int] = []
        unknown: list[tuple[float, float, int]] = []
        for term, c in counts:
            tid = self._term_ids.get(term)
            if tid is not None and self._p_slots[tid] is not None:
                known.append(tid)
                known_c.append(c)
            else:
                unknown.append((p.kind_weight[term[0]], background.doc_prob(term), c))
        tids = np.array(known, dtype=np.int64)
        n = self._n_slots
        return _rank(
            p,
            kw=self._kw[tids],
            df=self._df[tids],
            bg=self._bg[tids],
            qtf=np.array(known_c, dtype=np.float64),
            unknown=unknown,
            n_docs=p.prior_docs + self._n_live_units,
            avgdl=max(self._total_dl / max(self._n_live_units, 1), 1e-9),
            dl=self._dl[:n],
            postings=[(self._p_slots[t], self._p_tfs[t]) for t in known],  # type: ignore[misc]
            unit_w=self._unit_w,
            slot_doc=self._slot_doc,
            limit=limit,
        )
