"""Product search: Lucene-style BM25 (k1=0.9, b=0.4) over each product's ``contents`` (spec §8).

``bm25s`` with ``method="lucene"`` computes exactly Lucene's ``idf * tf / (tf + k1 * (1 - b + b * dl/avgdl))``
with ``idf = ln(1 + (N - df + 0.5) / (df + 0.5))``. Differences from pyserini: our analyser (see
:mod:`analysis`) and no one-byte length quantisation. Results are the top 50 by score, ties broken by
ASIN ascending; documents without any query term are never returned. The debug prefixes
(``<r>``, ``<c>``, ``<q>``, ``<a>``) are treated as ordinary text.
"""
from __future__ import annotations

import logging
from functools import lru_cache

import bm25s
import numpy as np

from qlib.envs.webshop.analysis import analyze
from qlib.envs.webshop.catalogue import load_catalogue

K1, B = 0.9, 0.4
SEARCH_RETURN_N = 50


class SearchEngine:
    """BM25 over ``contents`` (documents given in catalogue order, identified by ASIN)."""

    def __init__(self, asins: tuple[str, ...], contents: tuple[str, ...]):
        self.asins = asins
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        self._bm25 = bm25s.BM25(k1=K1, b=B, method="lucene")
        self._bm25.index([analyze(text) for text in contents], show_progress=False)
        self._vocab = self._bm25.vocab_dict
        order = sorted(range(len(asins)), key=asins.__getitem__)
        self._asin_rank = np.empty(len(asins), dtype=np.int64)
        self._asin_rank[order] = np.arange(len(asins))

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for ``query`` (each repeated query term counts again)."""
        ids = [self._vocab[t] for t in analyze(query.lower()) if t in self._vocab]
        if not ids:
            return np.zeros(len(self.asins), dtype=np.float32)
        return self._bm25.get_scores_from_ids(ids)

    def search(self, query: str, top_n: int = SEARCH_RETURN_N) -> tuple[str, ...]:
        """ASINs of the best ``top_n`` matches, by score descending, then ASIN ascending."""
        scores = self.scores(query)
        hits = np.flatnonzero(scores > 0)
        if hits.size == 0:
            return ()
        order = np.lexsort((self._asin_rank[hits], -scores[hits]))[:top_n]
        return tuple(self.asins[i] for i in hits[order])


@lru_cache(maxsize=1)
def default_engine() -> SearchEngine:
    """The engine over the 1k catalogue, built once per process."""
    catalogue = load_catalogue()
    return SearchEngine(catalogue.asins, catalogue.contents)


@lru_cache(maxsize=8192)
def cached_search(query: str) -> tuple[str, ...]:
    """:meth:`SearchEngine.search` on the default engine, memoised per query string."""
    return default_engine().search(query)
