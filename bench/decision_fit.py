"""Fit, and measure, the knowledge-base decision (answer / clarify / decline).

    .venv/bin/python bench/decision_fit.py fit  bench/data/sample_kb_questions.jsonl bench/data/telecom_questions.jsonl \
        --kb c_app/data/sample_kb.jsonl bench/data/telecom_kb.jsonl
    .venv/bin/python bench/decision_fit.py eval bench/data/express_questions.jsonl --kb bench/data/express_kb.jsonl
    .venv/bin/python bench/decision_fit.py eval --faq-eval ../shared/data/faq-eval/bq_valid_faq.json

Several question sets (each with its knowledge base, in the same order) are measured, or fitted
on, together. A question set is JSONL of {"question", "external_id"} (external_id null: the knowledge base
cannot answer it and must not). Each question is searched in a LexicalIndex built as the app
builds it (question + similar questions, title as secondary text), and the features of
c_app.retrieval.decision are computed on its top five hits.

fit: two logistic regressions (numpy IRLS with a small L2 penalty: P(top hit right), P(right
entry among the first three)), then the cut-offs: the lowest answer cut whose wrong-answer rate on
the fitting set (out-of-domain answers included) is at most --max-wrong, and the offer cut that
offers the right entry most often for at most --max-ood-offer of out-of-domain questions. Writes
c_app/retrieval/decision_model.json (or --out).

eval: per set, for the shipped model ("after") and the old rule (top >= 0.8 and a 0.05 lead,
close questions from 0.32; "before"): answered-right (of in-domain), answered-wrong (of all,
out-of-domain answers included), clarified with the right entry among the choices, right entry
answered or offered, out-of-domain answered, out-of-domain offered.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from c_app.retrieval import LexicalIndex, normalize
from c_app.retrieval.decision import FEATURES, MODEL_PATH, Candidate, DecisionModel, distinct, features

OLD_THRESHOLD, OLD_MARGIN, OLD_FLOOR = 0.8, 0.05, 0.32


@dataclass(slots=True)
class Case:
    question: str
    gold: int | None
    candidates: list[Candidate]
    x: list[float]


def load_kb(path: Path, similar: bool = True) -> tuple[LexicalIndex, dict[int, Candidate], dict[str, int]]:
    index = LexicalIndex()
    entries: dict[int, Candidate] = {}
    by_ext: dict[str, int] = {}
    for doc_id, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        e = json.loads(line)
        questions = tuple(
            q for q in [e["question"], *(e.get("similar_questions", []) if similar else [])] if q
        )
        index.upsert(doc_id, list(questions), e.get("title", ""))
        entries[doc_id] = Candidate(doc_id, 0.0, questions, e.get("answer", ""))
        by_ext[e["external_id"]] = doc_id
    return index, entries, by_ext


def load_faq_eval(path: Path) -> tuple[LexicalIndex, dict[int, Candidate], list[tuple[str, int | None]]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    index = LexicalIndex()
    entries: dict[int, Candidate] = {}
    for e in data["faq"]:
        index.upsert(e["id"], [e["question"]])
        entries[e["id"]] = Candidate(e["id"], 0.0, (e["question"],), "")
    return index, entries, [(q["query"], q["gold"]) for q in data["queries"]]


def cases(
    index: LexicalIndex, entries: dict[int, Candidate], rows: list[tuple[str, int | None]]
) -> list[Case]:
    out = []
    for question, gold in rows:
        cands = [
            Candidate(doc, score, entries[doc].questions, entries[doc].answer)
            for doc, score in index.search(question, 5)
        ]
        out.append(Case(question, gold, cands, features(question, cands)))
    return out


def set_cases(
    questions: Path | None, kb: Path | None, faq_eval: Path | None, similar: bool = True
) -> list[Case]:
    if faq_eval is not None:
        index, entries, rows = load_faq_eval(faq_eval)
        return cases(index, entries, rows)
    assert questions is not None and kb is not None
    index, entries, by_ext = load_kb(kb, similar)
    rows = []
    for line in questions.read_text(encoding="utf-8").splitlines():
        if line.strip():
            q = json.loads(line)
            rows.append((q["question"], by_ext[q["external_id"]] if q["external_id"] else None))
    return cases(index, entries, rows)


def labels(rows: list[Case], choices: int = 3) -> tuple[np.ndarray, np.ndarray]:
    top, offer = [], []
    for c in rows:
        ranked = [x.doc_id for x in distinct(c.candidates)]
        top.append(float(bool(ranked) and ranked[0] == c.gold))
        offer.append(float(c.gold is not None and c.gold in ranked[:choices]))
    return np.array(top), np.array(offer)


def irls(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 50) -> dict[str, Any]:
    """Logistic regression by iteratively reweighted least squares on standardised features."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.hstack([np.ones((len(x), 1)), (x - mean) / scale])
    w = np.zeros(z.shape[1])
    penalty = np.eye(z.shape[1]) * l2
    penalty[0, 0] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -40, 40)))
        r = p * (1 - p)
        grad = z.T @ (y - p) - penalty @ w
        hess = (z * r[:, None]).T @ z + penalty
        step = np.linalg.solve(hess, grad)
        w += step
        if np.abs(step).max() < 1e-8:
            break
    return {"mean": mean.tolist(), "scale": scale.tolist(), "coef": w[1:].tolist(), "bias": float(w[0])}


def decide_all(model: DecisionModel, rows: list[Case]) -> list[tuple[str, tuple[int, ...]]]:
    return [(v.outcome, v.doc_ids) for v in (model.decide(c.question, c.candidates) for c in rows)]


def old_rule(rows: list[Case]) -> list[tuple[str, tuple[int, ...]]]:
    out: list[tuple[str, tuple[int, ...]]] = []
    for c in rows:
        ranked = sorted(c.candidates, key=lambda h: -h.score)
        if ranked:
            top = ranked[0]
            runner = max(
                (h.score for h in ranked[1:] if h.answer != top.answer or not top.answer), default=0.0
            )
            if top.score >= OLD_THRESHOLD and top.score - runner >= OLD_MARGIN:
                out.append(("answer", (top.doc_id,)))
                continue
        offered = tuple(h.doc_id for h in ranked if h.score >= OLD_FLOOR)[:3]
        out.append(("clarify", offered) if offered else ("none", ()))
    return out


def metrics(
    rows: list[Case], verdicts: list[tuple[str, tuple[int, ...]]], same: dict[int, str] | None = None
) -> dict[str, float]:
    """The rates of the module docstring. `same` (faq-eval sets): an entry's normalised question, so
    an answer that is an unlabelled duplicate of the gold entry also counts as right (lenient)."""
    ind = [(c, v) for c, v in zip(rows, verdicts, strict=True) if c.gold is not None]
    ood = [(c, v) for c, v in zip(rows, verdicts, strict=True) if c.gold is None]
    right = sum(v[0] == "answer" and v[1][0] == c.gold for c, v in ind)
    lenient = sum(
        v[0] == "answer" and (v[1][0] == c.gold or (same is not None and same[v[1][0]] == same[c.gold]))
        for c, v in ind
        if c.gold is not None
    )
    wrong = sum(v[0] == "answer" and v[1][0] != c.gold for c, v in ind) + sum(
        v[0] == "answer" for _, v in ood
    )
    clar = sum(v[0] == "clarify" and c.gold in v[1] for c, v in ind)
    n, m = max(len(ind), 1), max(len(ood), 1)
    return {
        "questions": len(rows),
        "in_domain": len(ind),
        "ood": len(ood),
        "answered_right": right / n,
        "answered_right_lenient": lenient / n,
        "answered_wrong_lenient": (wrong - (lenient - right)) / max(len(rows), 1),
        "answered_wrong": wrong / max(len(rows), 1),
        "clarify_right": clar / n,
        "clarify_rate": sum(v[0] == "clarify" for _, v in ind) / n,
        "right_answered_or_offered": (right + clar) / n,
        "ood_answered": sum(v[0] == "answer" for _, v in ood) / m if ood else float("nan"),
        "ood_offered": sum(v[0] == "clarify" for _, v in ood) / m if ood else float("nan"),
    }


def fit(rows: list[Case], max_wrong: float, max_ood_offer: float) -> dict[str, Any]:
    x = np.array([c.x for c in rows])
    y_top, y_offer = labels(rows)
    model: dict[str, Any] = {
        "features": list(FEATURES),
        "answer": irls(x, y_top),
        "offer": irls(x, y_offer),
        "answer_cut": 0.5,
        "offer_cut": 0.5,
        "choices": 3,
        "choice_floor": 0.3,
    }

    def with_cuts(a: float, o: float) -> DecisionModel:
        data = {**model, "answer_cut": a, "offer_cut": o}
        return DecisionModel.load_dict(data)

    grid = [round(0.3 + 0.01 * i, 2) for i in range(70)]
    best_a = 0.99
    for a in grid:
        if metrics(rows, decide_all(with_cuts(a, 1.01), rows))["answered_wrong"] <= max_wrong:
            best_a = a
            break
    best_o, best_gain = 1.01, -1.0
    for o in [round(0.05 + 0.01 * i, 2) for i in range(90)]:
        stats = metrics(rows, decide_all(with_cuts(best_a, o), rows))
        if stats["ood_offered"] <= max_ood_offer and stats["right_answered_or_offered"] > best_gain:
            best_o, best_gain = o, stats["right_answered_or_offered"]
    model["answer_cut"], model["offer_cut"] = best_a, best_o
    return model


def show(name: str, stats: dict[str, float]) -> None:
    print(
        f"  {name:7s} right={stats['answered_right']:.3f} (lenient {stats['answered_right_lenient']:.3f}) "
        f"wrong={stats['answered_wrong']:.3f} (lenient {stats['answered_wrong_lenient']:.3f}) "
        f"clarify_right={stats['clarify_right']:.3f} (clarify {stats['clarify_rate']:.3f}) "
        f"answered_or_offered={stats['right_answered_or_offered']:.3f} "
        f"ood_answered={stats['ood_answered']:.3f} ood_offered={stats['ood_offered']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["fit", "eval"])
    parser.add_argument("questions", type=Path, nargs="*", help="question sets, each with its --kb")
    parser.add_argument("--kb", type=Path, nargs="*", default=[], help="one knowledge base per question set")
    parser.add_argument("--faq-eval", type=Path)
    parser.add_argument("--model", type=Path, default=MODEL_PATH)
    parser.add_argument("--out", type=Path, default=MODEL_PATH)
    parser.add_argument("--max-wrong", type=float, default=0.005)
    parser.add_argument("--max-ood-offer", type=float, default=0.3)
    args = parser.parse_args()
    if len(args.questions) != len(args.kb) or bool(args.questions) == bool(args.faq_eval):
        parser.error("give question sets with one --kb each, or --faq-eval")
    pairs = list(zip(args.questions, args.kb, strict=True))
    if args.faq_eval is not None:
        rows = set_cases(None, None, args.faq_eval)
        name = args.faq_eval.name
    else:
        rows = [c for q, kb in pairs for c in set_cases(q, kb, None)]
        name = " + ".join(q.name for q, _ in pairs)
    if args.mode == "fit":
        # The same questions against the same KB without its similar questions too: the model
        # must also see the low-score regime of a KB whose entries list few customer wordings.
        bare = [c for q, kb in pairs for c in set_cases(q, kb, None, similar=False)]
        model = fit(rows + bare, args.max_wrong, args.max_ood_offer)
        args.out.write_text(json.dumps(model, indent=1) + "\n", encoding="utf-8")
        print(
            f"fitted on {name} ({len(rows)} questions): answer_cut={model['answer_cut']} offer_cut={model['offer_cut']}"
        )
        for key in ("answer", "offer"):
            print(
                f"  {key}: "
                + ", ".join(f"{f}={c:+.2f}" for f, c in zip(FEATURES, model[key]["coef"], strict=True))
            )
        shipped = DecisionModel.load(args.out)
    else:
        shipped = DecisionModel.load(args.model)
    print(f"{name}: {len(rows)} questions")
    same = None
    if args.faq_eval is not None:
        data = json.loads(args.faq_eval.read_text(encoding="utf-8"))
        same = {e["id"]: normalize(e["question"]) for e in data["faq"]}
    before, after = metrics(rows, old_rule(rows), same), metrics(rows, decide_all(shipped, rows), same)
    show("before", before)
    show("after", after)
    print(json.dumps({"set": name, "before": before, "after": after}))


if __name__ == "__main__":
    main()
