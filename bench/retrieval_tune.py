"""Tune / measure c_app.retrieval on a faq-eval file, or its speed and memory at scale.

    python bench/retrieval_tune.py ../shared/data/faq-eval/bq_valid_faq.json
    python bench/retrieval_tune.py ../shared/data/faq-eval/bq_valid_faq.json --k1 1.5 --wc 0.5
    python bench/retrieval_tune.py --scale 100000 ../shared/data/faq-eval/bq_valid_faq.json \
        ../shared/data/faq-eval/lcqmc_valid_faq.json

Evaluation mode prints recall@1/3/5, query latency p50/p99 and, for the direct-answer
threshold, the precision (share of queries with top1 score >= t whose top1 is gold) and
coverage (share of queries with top1 score >= t). Scale mode builds an index of N entries from
the given files' questions and queries (cycled, with a numeric suffix on repeats so entries are
distinct), then reports build rate, RSS growth and search latency.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from c_app.retrieval import LexicalIndex, Params
from c_app.retrieval.text import BIGRAM, CHAR, WORD


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def params_from(args: argparse.Namespace) -> Params:
    p = Params()
    for name in ("k1", "b", "prior_docs", "body_weight"):
        v = getattr(args, name)
        if v is not None:
            setattr(p, name, v)
    for kind, name in ((WORD, "ww"), (CHAR, "wc"), (BIGRAM, "wb")):
        v = getattr(args, name)
        if v is not None:
            p.kind_weight[kind] = v
    return p


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def evaluate(path: str, params: Params, show_misses: int = 0) -> dict[str, float]:
    data = json.loads(Path(path).read_text())
    idx = LexicalIndex(params)
    t0 = time.perf_counter()
    for e in data["faq"]:
        idx.upsert(e["id"], [e["question"]])
    build_s = time.perf_counter() - t0
    idx.search("warm up", 1)
    hits = {1: 0, 3: 0, 5: 0}
    lat: list[float] = []
    top: list[tuple[float, bool]] = []
    misses = []
    queries = data["queries"]
    for q in queries:
        t = time.perf_counter()
        res = idx.search(q["query"], 5)
        lat.append((time.perf_counter() - t) * 1000)
        ids = [d for d, _ in res]
        for k in hits:
            if q["gold"] in ids[:k]:
                hits[k] += 1
        top.append((res[0][1] if res else 0.0, bool(ids) and ids[0] == q["gold"]))
        if ids[:1] != [q["gold"]] and len(misses) < show_misses:
            misses.append((q["query"], q["gold"], res[:3]))
    n = len(queries)
    out = {f"R@{k}": hits[k] / n for k in hits}
    out["p50_ms"] = statistics.median(lat)
    out["p99_ms"] = pct(lat, 0.99)
    out["build_s"] = build_s
    name = Path(path).name
    print(
        f"{name}: entries={len(idx)} queries={n} build={build_s:.1f}s "
        + " ".join(f"{k}={v:.3f}" for k, v in out.items() if k.startswith("R@"))
        + f" p50={out['p50_ms']:.2f}ms p99={out['p99_ms']:.2f}ms"
    )
    print("  threshold  precision  coverage")
    for thr in (0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95):
        sel = [ok for s, ok in top if s >= thr]
        prec = sum(sel) / len(sel) if sel else float("nan")
        print(f"  {thr:9.2f}  {prec:9.3f}  {len(sel) / n:8.3f}")
    # Smallest threshold on a fine grid with precision >= 0.9.
    for thr in [x / 100 for x in range(30, 101)]:
        sel = [ok for s, ok in top if s >= thr]
        if sel and sum(sel) / len(sel) >= 0.9:
            print(
                f"  min threshold with precision>=0.9: {thr:.2f} "
                f"(precision {sum(sel) / len(sel):.3f}, coverage {len(sel) / n:.3f})"
            )
            out["thr90"] = thr
            break
    faq = {e["id"]: e["question"] for e in data["faq"]}
    for qtext, gold, res in misses:
        print(f"  MISS {qtext!r} gold={faq[gold]!r} got=" + ", ".join(f"{faq[d]!r}:{s:.2f}" for d, s in res))
    return out


def scale(paths: list[str], n: int, params: Params, n_queries: int = 2000) -> None:
    texts: list[str] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        texts += [e["question"] for e in data["faq"]] + [q["query"] for q in data["queries"]]
    entries = [texts[i % len(texts)] + (f" {i // len(texts)}" if i >= len(texts) else "") for i in range(n)]
    # Warm jieba, background statistics and normalisation machinery before measuring.
    warm = LexicalIndex(params)
    warm.upsert(0, ["预热"])
    warm.search("预热")
    rss0 = rss_mb()
    idx = LexicalIndex(params)
    t0 = time.perf_counter()
    for i, q in enumerate(entries):
        idx.upsert(i, [q])
    build = time.perf_counter() - t0
    first_q = time.perf_counter()
    idx.search("怎么开通", 5)
    first_q = time.perf_counter() - first_q
    rss1 = rss_mb()
    # Queries: the eval queries (not indexed verbatim beyond the first copy) plus a few extra.
    qs = texts[len(texts) // 3 :][:n_queries]
    # Touch every term once so the lazy re-pack after the bulk load is not in the timings.
    for q in qs[:200]:
        idx.search(q, 5)
    lat = []
    for q in qs:
        t = time.perf_counter()
        idx.search(q, 5)
        lat.append((time.perf_counter() - t) * 1000)
    rss2 = rss_mb()
    print(
        f"scale: entries={len(idx)} build={build:.1f}s ({n / build:,.0f} entries/s) "
        f"first query (lazy pack) {first_q * 1000:.0f} ms"
    )
    print(f"  RSS growth: after build {rss1 - rss0:.0f} MB, after queries {rss2 - rss0:.0f} MB")
    print(
        f"  search over {len(qs)} queries: p50={statistics.median(lat):.2f} ms "
        f"p90={pct(lat, 0.9):.2f} ms p99={pct(lat, 0.99):.2f} ms max={max(lat):.2f} ms"
    )
    # Incremental updates on the big index.
    t = time.perf_counter()
    for i in range(1000):
        idx.upsert(i, [entries[(i * 7919) % n]])
    for i in range(1000, 1500):
        idx.remove(i)
    up = (time.perf_counter() - t) * 1000 / 1500
    t = time.perf_counter()
    for q in qs[:200]:
        idx.search(q, 5)
    print(
        f"  1000 upserts + 500 removes: {up:.3f} ms/op; next 200 searches "
        f"{(time.perf_counter() - t) * 1000 / 200:.2f} ms avg (includes lazy re-pack)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--scale", type=int, default=0, help="build N entries and measure speed/memory")
    ap.add_argument("--k1", type=float)
    ap.add_argument("--b", type=float)
    ap.add_argument("--prior-docs", dest="prior_docs", type=float)
    ap.add_argument("--body-weight", dest="body_weight", type=float)
    ap.add_argument("--ww", type=float, help="word weight")
    ap.add_argument("--wc", type=float, help="char weight")
    ap.add_argument("--wb", type=float, help="bigram weight")
    ap.add_argument("--misses", type=int, default=0, help="print the first N top-1 misses")
    args = ap.parse_args()
    params = params_from(args)
    print(f"params: {params}")
    if args.scale:
        scale(args.paths, args.scale, params)
    else:
        for path in args.paths:
            evaluate(path, params, args.misses)


if __name__ == "__main__":
    main()
