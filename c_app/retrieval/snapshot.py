"""A knowledge-base index as bytes that any replica can load: plain arrays, checked before use.

Contract:
- ``analyzer_key()``: identity of what turns text into terms and scores (this package's text and
  index code, its user dictionary, jieba's version, ``Params``). The same on every replica of one
  release; stored with each snapshot and each row's stored terms, so neither is used by a release
  that analyses differently.
- ``dump(index) -> (blob, checksum)``: ``LexicalIndex.export``'s arrays in an .npz archive, with
  the format version and the analyzer key; ``checksum`` is the blob's SHA-256 (hex).
- ``load(blob, checksum) -> LexicalIndex``: raises ``SnapshotError`` on anything ``dump`` did not
  write: a checksum that differs (truncated, altered), not an .npz archive (a pickle is refused by
  ``allow_pickle=False``, never run), other fields, another format version or analyzer key, arrays
  of the wrong type or inconsistent shapes, values out of range (term ids, counts, weights, doc ids),
  malformed or repeated terms.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import asdict
from functools import lru_cache

import numpy as np
from numpy.lib.npyio import NpzFile

from .background import _array
from .index import LexicalIndex, Params
from .text import BIGRAM, CHAR, USER_DICT_PATH, WORD

FORMAT_VERSION = 1
_FIELDS = {
    "version",
    "analyzer",
    "terms",
    "term_len",
    "flat_t",
    "flat_tf",
    "cnt",
    "unit_w",
    "slot_doc",
    "empty",
}
_KINDS = {WORD, CHAR, BIGRAM}


class SnapshotError(ValueError):
    """A snapshot that is not one this release wrote: rebuild instead."""


@lru_cache(maxsize=1)
def analyzer_key() -> str:
    import jieba

    h = hashlib.sha256(f"snapshot v{FORMAT_VERSION} jieba {jieba.__version__}".encode())
    here = os.path.dirname(__file__)
    for path in (os.path.join(here, "text.py"), os.path.join(here, "index.py"), str(USER_DICT_PATH)):
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    h.update(repr(sorted(asdict(Params()).items())).encode())
    return h.hexdigest()[:32]


def dump(index: LexicalIndex) -> tuple[bytes, str]:
    arrays = index.export()
    out = io.BytesIO()
    np.savez(
        out,
        version=np.array([FORMAT_VERSION], dtype="<i8"),
        analyzer=np.frombuffer(analyzer_key().encode(), dtype="u1"),
        **arrays,  # type: ignore[arg-type]
    )
    blob = out.getvalue()
    return blob, hashlib.sha256(blob).hexdigest()


def load(blob: bytes, checksum: str, params: Params | None = None) -> LexicalIndex:
    if hashlib.sha256(blob).hexdigest() != checksum:
        raise SnapshotError("checksum mismatch")
    try:
        loaded = np.load(io.BytesIO(blob), allow_pickle=False)  # a pickle raises here instead of running
    except Exception as exc:
        raise SnapshotError(f"not an .npz archive ({exc})") from exc
    if not isinstance(loaded, NpzFile):
        raise SnapshotError("not an .npz archive")
    try:
        with loaded as data:
            if set(data.files) != _FIELDS:
                raise SnapshotError(f"unexpected fields {sorted(data.files)}")
            version = _array(data, "version", "<i8")
            if version.shape != (1,) or int(version[0]) != FORMAT_VERSION:
                raise SnapshotError("format version")
            if _array(data, "analyzer", "u1").tobytes() != analyzer_key().encode():
                raise SnapshotError("built by another analyzer")
            terms_bytes = _array(data, "terms", "u1").tobytes()
            term_len = _array(data, "term_len", "<i4")
            flat_t = _array(data, "flat_t", "<i4")
            flat_tf = _array(data, "flat_tf", "<f4")
            cnt = _array(data, "cnt", "<i4")
            unit_w = _array(data, "unit_w", "<f4")
            slot_doc = _array(data, "slot_doc", "<i8")
            empty = _array(data, "empty", "<i8")
    except SnapshotError:
        raise
    except Exception as exc:
        raise SnapshotError(f"unreadable ({exc})") from exc
    terms = _terms(terms_bytes, term_len)
    if not (len(cnt) == len(unit_w) == len(slot_doc)):
        raise SnapshotError("unit arrays differ in length")
    if len(flat_t) != len(flat_tf) or int(cnt.astype(np.int64).sum()) != len(flat_t):
        raise SnapshotError("term arrays do not match the units' counts")
    if len(cnt) and int(cnt.min()) < 1:
        raise SnapshotError("a unit without terms")
    if len(flat_t) and (int(flat_t.min()) < 0 or int(flat_t.max()) >= len(terms)):
        raise SnapshotError("a term id out of range")
    if len(flat_tf) and not (
        np.isfinite(flat_tf).all() and (flat_tf >= 1).all() and (flat_tf == np.round(flat_tf)).all()
    ):
        raise SnapshotError("a term count out of range")
    if len(unit_w) and not (np.isfinite(unit_w).all() and (unit_w > 0).all() and (unit_w <= 1).all()):
        raise SnapshotError("a unit weight outside (0, 1]")
    if (len(slot_doc) and int(slot_doc.min()) < 1) or (len(empty) and int(empty.min()) < 1):
        raise SnapshotError("a doc id out of range")
    if len(np.intersect1d(empty, slot_doc)) or len(np.unique(empty)) != len(empty):
        raise SnapshotError("a doc both with and without terms")
    return LexicalIndex.from_arrays(terms, flat_t, flat_tf, cnt, unit_w, slot_doc, params, empty)


def _terms(blob: bytes, lengths: np.ndarray) -> list[str]:
    if len(lengths) and int(lengths.min()) < 1:
        raise SnapshotError("an empty term")
    if int(lengths.astype(np.int64).sum()) != len(blob):
        raise SnapshotError("term lengths do not match the term bytes")
    ends = np.cumsum(lengths.astype(np.int64)).tolist()
    try:
        terms = [blob[a:b].decode("utf-8") for a, b in zip([0, *ends[:-1]], ends)]
    except UnicodeDecodeError as exc:
        raise SnapshotError("a term is not UTF-8") from exc
    if len(set(terms)) != len(terms) or any(t[:1] not in _KINDS or len(t) < 2 for t in terms):
        raise SnapshotError("malformed or repeated terms")
    return terms
