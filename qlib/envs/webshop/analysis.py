"""Text analysis imitating Anserini's ``DefaultEnglishAnalyzer`` (Lucene English + Porter), spec §8.3-8.4.

Pipeline: UAX#29-like tokeniser -> English possessive filter -> lower-case -> Lucene's 33 English
stop words -> Porter stemmer.

Stemmer choice: PyStemmer's Snowball ``porter`` (Porter's published 1980 algorithm), with Lucene's
rule of leaving tokens of 1-2 characters unstemmed. Lucene ports Porter's reference C code, which
departs from the paper in two step-2 rules (``bli -> ble`` instead of ``abli -> able``, and an added
``logi -> log``); those words (``visibly``, ``technology`` ...) get a different but still
self-consistent stem here, so conflation differs only marginally from Lucene.
"""
from __future__ import annotations

import re
from functools import lru_cache

import Stemmer

#: Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET.
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these "
    "they this to was will with".split()
)

_LD = r"[^\W_]"  # letter or digit
_L = r"[^\W\d_]"  # letter
_MID_NUM_LET = ".'\u2018\u2019\u2024\ufe52\uff07\uff0e"  # joins letter-letter or digit-digit
_MID_LETTER = ":\u00b7\u0387\u05f4\u2027\ufe13\ufe55\uff1a"  # joins letter-letter
_MID_NUM = ",;\u037e\u0589\u060c\u060d\u066c\u07f8\u2044\ufe10\ufe14\ufe50\ufe54\uff0c\uff1b"  # digit-digit
_JOIN = (
    rf"(?<={_L})[{re.escape(_MID_NUM_LET + _MID_LETTER)}](?={_L})"
    rf"|(?<=\d)[{re.escape(_MID_NUM_LET + _MID_NUM)}](?=\d)"
)
#: Runs of letters/digits/underscore (letters and digits never split), glued by the UAX#29 mid-word joins.
TOKEN_RE = re.compile(rf"\w+(?:(?:{_JOIN})\w+)*")
_POSSESSIVE = ("'s", "\u2019s", "\uff07s")

_stemmer = Stemmer.Stemmer("porter")


def tokenize(text: str) -> list[str]:
    """Word tokens of ``text`` (case kept), e.g. ``"L'eau 6.76-oz x-large"`` -> ``L'eau 6.76 oz x large``."""
    return [t for t in TOKEN_RE.findall(text) if re.search(_LD, t)]


@lru_cache(maxsize=1 << 16)
def normalize_token(token: str) -> str | None:
    """Possessive removal, lower-casing, stop-word removal (None) and Porter stemming of one token."""
    token = token.lower()
    if token.endswith(_POSSESSIVE):
        token = token[:-2]
    if not token or token in STOP_WORDS:
        return None
    return token if len(token) <= 2 else _stemmer.stemWord(token)


def analyze(text: str) -> list[str]:
    """Index terms of ``text`` in order (repeats kept)."""
    return [term for term in map(normalize_token, tokenize(text)) if term]
