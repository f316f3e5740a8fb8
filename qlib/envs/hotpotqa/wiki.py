"""Offline Wikipedia for the HotPotQA ReAct environment (spec §1, §4.1–§4.4).

The knowledge source is the bundle's 25,433 intro paragraphs (``hotpot_wiki_paragraphs.jsonl.gz``);
page text P(title) is ``"".join(sentences)``. :func:`load_corpus` reads it once per process.

Search emulation (§4.3):

* the query ``q`` is the entity stripped, with ``_`` turned into spaces and whitespace runs collapsed;
* **exact**: ``q`` or ``q`` with its first character upper-cased is a title;
* **near match**: the casefolded ``q`` equals a casefolded title; failing that, the casefolded and
  accent-folded (NFKD, combining marks removed) ``q`` equals a title folded the same way. Among several
  matches the lexicographically smallest title wins. Nothing else is stripped, so a
  "(disambiguator)" suffix is never followed (``Ed Wood`` never becomes ``Ed Wood (film)``);
* a page containing ``may refer to:`` behaves as a disambiguation page:
  ``Could not find [{entity}]. Similar: [...].``;
* not found: ``Could not find {entity}. Similar: [...].`` where the list is ranked by
  :class:`SimilarTitleRanker` (3 × BM25 on titles + 1 × BM25 on intros, bm25s ``lucene`` variant,
  k1 = 0.9, b = 0.4, ties by title, top 5 with score > 0).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Iterable

import numpy as np

from qlib.data import iter_jsonl

WIKI_FILE = "hotpotqa/hotpot_wiki_paragraphs.jsonl.gz"
DISAMBIGUATION_MARK = "may refer to:"
SEARCH_SENTENCES = 5
BM25_K1, BM25_B = 0.9, 0.4
TITLE_WEIGHT, INTRO_WEIGHT = 3.0, 1.0
SIMILAR_TOP_K = 5

_WORD = re.compile(r"[^\W_]+")  # runs of Unicode letters/digits


# ---------------------------------------------------------------- text helpers

@lru_cache(maxsize=8192)
def split_sentences(page: str) -> tuple[str, ...]:
    """ReAct's sentence pieces (§4.2): split paragraphs on ``". "``, strip, drop empties, append ``.``."""
    pieces: list[str] = []
    for paragraph in page.split("\n"):
        if paragraph.strip():
            pieces += paragraph.strip().split(". ")
    return tuple(piece.strip() + "." for piece in pieces if piece.strip())


def first_sentences(page: str, n: int = SEARCH_SENTENCES) -> str:
    """The search observation of a found page: its first ``n`` pieces joined with spaces."""
    return " ".join(split_sentences(page)[:n])


def normalize_query(entity: str) -> str:
    """Strip, turn underscores into spaces and collapse whitespace runs (§4.3)."""
    return " ".join(entity.replace("_", " ").split())


def fold_accents(text: str) -> str:
    """NFKD decomposition with combining marks removed (``Déjà`` → ``Deja``)."""
    if text.isascii():
        return text
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))


def accent_key(text: str) -> str:
    """Case- and accent-insensitive comparison key."""
    return fold_accents(text.casefold()).casefold()


@lru_cache(maxsize=None)
def _fold_word(word: str) -> tuple[str, ...]:
    if word.isascii():
        return (word,)
    return tuple(_WORD.findall(accent_key(word)))


def tokenize(text: str) -> list[str]:
    """Ranking tokens: casefolded, accent-folded runs of letters/digits (brackets etc. are separators)."""
    return [folded for word in _WORD.findall(text.casefold()) for folded in _fold_word(word)]


# ---------------------------------------------------------------- similar-title ranking

class SimilarTitleRanker:
    """Deterministic stand-in for Wikipedia's result list (§4.3 step 5), built on bm25s.

    Score = ``TITLE_WEIGHT`` × BM25(query, title) + ``INTRO_WEIGHT`` × BM25(query, intro); each field
    has its own bm25s index (idf over the whole corpus). Documents are indexed in sorted-title
    order, so "ties by title" is "ties by document id".
    """

    def __init__(self, titles: tuple[str, ...], intros: tuple[str, ...]):
        import bm25s  # local import: only not-found searches need it

        self.titles = titles
        self.fields = []
        for texts in (titles, intros):
            index = bm25s.BM25(k1=BM25_K1, b=BM25_B, method="lucene")
            index.index([tokenize(text) for text in texts], show_progress=False)
            self.fields.append(index)

    def scores(self, query: str) -> np.ndarray:
        """Combined score of every document (indexed like ``titles``), float64."""
        tokens = tokenize(query)
        total = np.zeros(len(self.titles), dtype=np.float64)
        for weight, index in zip((TITLE_WEIGHT, INTRO_WEIGHT), self.fields):
            ids = index.get_tokens_ids(tokens)
            if ids:
                total += weight * index.get_scores_from_ids(ids).astype(np.float64)
        return total

    def top(self, query: str, k: int = SIMILAR_TOP_K) -> list[str]:
        """Up to ``k`` titles with score > 0, by score descending, then title ascending."""
        scores = self.scores(query)
        candidates = np.flatnonzero(scores > 0)
        if candidates.size > k:
            kth = np.partition(scores[candidates], -k)[-k]
            candidates = candidates[scores[candidates] >= kth]
        order = np.lexsort((candidates, -scores[candidates]))[:k]
        return [self.titles[i] for i in candidates[order]]


# ---------------------------------------------------------------- corpus and search

@dataclass(frozen=True)
class SearchResult:
    """Outcome of ``search[entity]``: the found title (None if not found) and the observation."""

    title: str | None
    observation: str


class WikiCorpus:
    """Title → intro-paragraph store with the §4.3 search emulation."""

    def __init__(self, pages: Iterable[tuple[str, str]]):
        self.pages: dict[str, str] = dict(pages)
        self.titles: tuple[str, ...] = tuple(sorted(self.pages))
        self._by_casefold: dict[str, str] = {}
        self._by_accent: dict[str, str] = {}
        for title in self.titles:  # sorted, so setdefault keeps the smallest title per key
            key = normalize_query(title).casefold()
            self._by_casefold.setdefault(key, title)
            self._by_accent.setdefault(accent_key(key), title)

    def __len__(self) -> int:
        return len(self.pages)

    @cached_property
    def ranker(self) -> SimilarTitleRanker:
        """The BM25 ranker, built on first use (about 3 s for the full corpus)."""
        return SimilarTitleRanker(self.titles, tuple(self.pages[t] for t in self.titles))

    def resolve(self, entity: str) -> str | None:
        """The title ``search[entity]`` lands on (exact, first-letter-upper, casefold, accent-fold)."""
        query = normalize_query(entity)
        if not query:
            return None
        for candidate in (query, query[0].upper() + query[1:]):
            if candidate in self.pages:
                return candidate
        key = query.casefold()
        return self._by_casefold.get(key) or self._by_accent.get(accent_key(key))

    def is_disambiguation(self, title: str) -> bool:
        return DISAMBIGUATION_MARK in self.pages[title]

    def similar(self, entity: str) -> list[str]:
        """The emulated "Similar: [...]" titles for ``entity``."""
        return self.ranker.top(entity)

    def not_found(self, entity: str) -> SearchResult:
        return SearchResult(None, f"Could not find {entity}. Similar: {self.similar(entity)!r}.")

    def search(self, entity: str) -> SearchResult:
        """Run ``search[entity]``; ``entity`` is the raw text between the brackets."""
        title = self.resolve(entity)
        if title is None:
            return self.not_found(entity)
        if self.is_disambiguation(title):  # ReAct re-searches "[entity]", which never matches a title
            return self.not_found(f"[{entity}]")
        return SearchResult(title, first_sentences(self.pages[title]))


@lru_cache(maxsize=1)
def load_corpus() -> WikiCorpus:
    """The bundle's offline Wikipedia, loaded (and sha256-checked) once per process."""
    return WikiCorpus((row["title"], "".join(row["sentences"])) for row in iter_jsonl(WIKI_FILE))
