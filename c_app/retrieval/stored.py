"""A doc's analysed terms as bytes to store with it, and ranking straight from such bytes.

Contract:
- ``encode(units) -> bytes``: ``index.analyse``'s units as fixed-size little-endian records
  (``RECORD``): one header record naming the analyzer (``snapshot.analyzer_key``), then one record
  per term of each unit: the term's 64-bit hash, its count, the unit's weight, length and number.
- ``usable(blob) -> bool``: the bytes are whole records headed by this analyzer's header (else
  the doc is analysed again and its bytes rewritten).
- ``rank(docs, query, limit) -> [(doc_id, score)]``: ``LexicalIndex.search`` over ``[(doc_id,
  blob)]`` (usable blobs) without building an index or decoding any text: the blobs are joined
  and read as one numpy record array, and the query's terms are found by their hashes. Scores are
  those of an index holding exactly these docs (see ``index._rank``); two different terms would
  have to share a 64-bit hash to differ (about 1 in 10^14 for a query against 10^5 terms).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from . import background
from .index import MAX_TEXT_CHARS, Params, Unit, _query_counts, _rank, unit_length
from .snapshot import analyzer_key

RECORD = np.dtype([("h", "<u8"), ("tf", "<f4"), ("w", "<f4"), ("len", "<f8"), ("unit", "<u4")])
HEADER_UNIT = 0xFFFFFFFF
MAX_UNITS = 65_535  # units of one doc (its questions and body)


@lru_cache(maxsize=65_536)
def term_hash(term: str) -> int:
    return int.from_bytes(hashlib.blake2b(term.encode("utf-8"), digest_size=8).digest(), "little")


@lru_cache(maxsize=1)
def _header() -> bytes:
    record = np.zeros(1, dtype=RECORD)
    record["h"] = int(analyzer_key()[:16], 16)
    record["unit"] = HEADER_UNIT
    return record.tobytes()


def encode(units: list[Unit], params: Params | None = None) -> bytes:
    units = units[:MAX_UNITS]
    n = sum(len(counts) for counts, _ in units)
    records = np.zeros(n, dtype=RECORD)
    i = 0
    for number, (counts, weight) in enumerate(units):
        j = i + len(counts)
        records["h"][i:j] = [term_hash(term) for term in counts]
        records["tf"][i:j] = list(counts.values())
        records["w"][i:j] = weight
        records["len"][i:j] = unit_length(counts, params)
        records["unit"][i:j] = number
        i = j
    return _header() + records.tobytes()


def usable(blob: bytes | None) -> bool:
    if not blob or len(blob) % RECORD.itemsize:
        return False
    return blob[: RECORD.itemsize] == _header()


def rank(
    docs: list[tuple[int, bytes]], query: str, limit: int = 5, params: Params | None = None
) -> list[tuple[int, float]]:
    """See the module docstring; every blob must be ``usable``."""
    p = params or Params()
    if limit <= 0 or not docs:
        return []
    counts = _query_counts(query[:MAX_TEXT_CHARS])
    if not counts:
        return []
    arr = np.frombuffer(b"".join(blob for _, blob in docs), dtype=RECORD)
    row = np.repeat(np.arange(len(docs), dtype=np.int64), [len(blob) // RECORD.itemsize for _, blob in docs])
    body = arr["unit"] != HEADER_UNIT
    arr, row = arr[body], row[body]
    if not len(arr):
        return []
    # A unit's records are contiguous (docs in order, units in order within a doc): one slot each.
    uid = row * (MAX_UNITS + 1) + arr["unit"]
    first = np.empty(len(uid), dtype=bool)
    first[0] = True
    first[1:] = uid[1:] != uid[:-1]
    starts = np.flatnonzero(first)
    slot_of = (np.cumsum(first) - 1).astype(np.int32)
    lengths = arr["len"][starts]
    n = len(starts)
    doc_ids = np.array([doc for doc, _ in docs], dtype=np.int64)
    hashes = arr["h"]
    known: list[tuple[str, int, np.ndarray]] = []
    unknown: list[tuple[float, float, int]] = []
    for term, c in counts:
        hits = np.flatnonzero(hashes == term_hash(term))
        if len(hits):
            known.append((term, c, hits))
        else:
            unknown.append((p.kind_weight[term[0]], background.doc_prob(term), c))
    return _rank(
        p,
        kw=np.array([p.kind_weight[t[0]] for t, _, _ in known], dtype=np.float64),
        df=np.array([len(h) for _, _, h in known], dtype=np.float64),
        bg=np.array([background.doc_prob(t) for t, _, _ in known], dtype=np.float64),
        qtf=np.array([c for _, c, _ in known], dtype=np.float64),
        unknown=unknown,
        n_docs=p.prior_docs + n,
        avgdl=max(float(lengths.sum()) / n, 1e-9),
        dl=lengths.astype(np.float32),
        postings=[(slot_of[h], arr["tf"][h]) for _, _, h in known],
        unit_w=arr["w"][starts],
        slot_doc=doc_ids[row[starts]],
        limit=limit,
    )


def valid_values(docs: list[tuple[int, bytes]]) -> bool:
    """The records' values are in range (counts >= 1, weights in (0, 1], lengths > 0)."""
    if not docs:
        return True
    arr = np.frombuffer(b"".join(blob for _, blob in docs), dtype=RECORD)
    arr = arr[arr["unit"] != HEADER_UNIT]
    return bool(
        (arr["tf"] >= 1).all()
        and (arr["w"] > 0).all()
        and (arr["w"] <= 1).all()
        and np.isfinite(arr["len"]).all()
        and (arr["len"] > 0).all()
        and (arr["unit"] <= MAX_UNITS).all()
    )
