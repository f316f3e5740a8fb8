"""WebShop search: Lucene-like analysis (spec §8.3-8.4), BM25 scoring, ranking rules and speed."""
from __future__ import annotations

import math

import pytest

from qlib.envs.webshop.analysis import STOP_WORDS, analyze, tokenize
from qlib.envs.webshop.bench import bench_search
from qlib.envs.webshop.catalogue import load_catalogue
from qlib.envs.webshop.search import SEARCH_RETURN_N, SearchEngine, default_engine


@pytest.mark.parametrize("text, tokens", [
    ("L'eau D'issey 6.76 fl oz", ["L'eau", "D'issey", "6.76", "fl", "oz"]),
    ("u.s.a 1,000 3x 32oz 3.4oz", ["u.s.a", "1,000", "3x", "32oz", "3.4oz"]),
    ("x-large $19.99 a/b c|d e&f 50% (g) \"h\"", ["x", "large", "19.99", "a", "b", "c", "d", "e", "f", "50", "g", "h"]),
    ("size:small 12:30 1,a a,1", ["size:small", "12", "30", "1", "a", "a", "1"]),
])
def test_tokenize(text, tokens):
    assert tokenize(text) == tokens


def test_analyze_possessive_stop_words_and_stemming():
    assert analyze("Men's Women’s Dresses") == ["men", "women", "dress"]
    assert analyze("the running of THE dogs and cats is not with it") == ["run", "dog", "cat"]
    assert analyze("as us is gs") == ["us", "gs"]  # 1-2 letter tokens are never stemmed
    assert len(STOP_WORDS) == 33


def test_bm25_lucene_formula_and_tie_break():
    engine = SearchEngine(("B3", "B1", "B2", "B4"), ("red dress", "red dress", "blue shirt red cap", "green hat"))
    assert engine.search("red") == ("B1", "B3", "B2")  # B1/B3 tie -> ASIN order; longer B2 ranks last
    assert engine.search("purple") == () and engine.search("the and") == ()
    n, df, avgdl, k1, b = 4, 3, 10 / 4, 0.9, 0.4
    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
    expected = idf * 1 / (1 + k1 * (1 - b + b * 2 / avgdl))
    assert engine.scores("red")[0] == pytest.approx(expected, rel=1e-5)
    assert engine.scores("red red")[0] == pytest.approx(2 * expected, rel=1e-5)  # repeated terms add up


def test_catalogue_search_top_50_and_descending():
    engine = default_engine()
    results = engine.search("women dress")
    assert len(results) == SEARCH_RETURN_N and len(set(results)) == SEARCH_RETURN_N
    index = {a: i for i, a in enumerate(engine.asins)}
    scores = engine.scores("women dress")
    ranked = [scores[index[a]] for a in results]
    assert ranked == sorted(ranked, reverse=True)


def test_instruction_hit_rates():
    engine = default_engine()
    targets = [(p["asin"], p["instruction_text"]) for p in load_catalogue().products if p["instruction_text"]]
    ranks = [engine.search(text.lower()) for _, text in targets]
    top10 = sum(asin in r[:10] for (asin, _), r in zip(targets, ranks)) / len(targets)
    top50 = sum(asin in r for (asin, _), r in zip(targets, ranks)) / len(targets)
    assert len(targets) == 415 and top10 > 0.72 and top50 > 0.89  # better than unstemmed BM25 (SOURCES.md)


def test_bench_search_reports_latencies():
    numbers = bench_search(n_queries=100, repeats=5)
    assert set(numbers) >= {"search_p50_ms", "search_p95_ms", "reset_us", "step_us", "snapshot_us", "restore_us"}
    assert 0 < numbers["search_p50_ms"] <= numbers["search_p95_ms"] and numbers["search_p50_ms"] < 3.0
