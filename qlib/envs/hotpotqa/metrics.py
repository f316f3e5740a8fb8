"""Official HotPotQA answer metrics (``hotpot_evaluate_v1.py``; spec §5).

Same names, argument order and semantics as the official script: ``normalize_answer``,
``exact_match_score(prediction, ground_truth) -> bool`` and
``f1_score(prediction, ground_truth) -> (f1, precision, recall)``.
"""
from __future__ import annotations

import re
import string
from collections import Counter

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SPECIAL = ("yes", "no", "noanswer")


def normalize_answer(s: str) -> str:
    """Lower-case, drop ASCII punctuation, replace the articles a/an/the by a space, collapse whitespace."""
    text = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    """True iff the normalised strings are equal (the paper's reward and success metric)."""
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_score(prediction: str, ground_truth: str) -> tuple[float, float, float]:
    """Token-level ``(f1, precision, recall)``; yes/no/noanswer must match exactly or score 0."""
    pred, gold = normalize_answer(prediction), normalize_answer(ground_truth)
    zero = (0.0, 0.0, 0.0)
    if (pred in _SPECIAL or gold in _SPECIAL) and pred != gold:
        return zero
    pred_tokens, gold_tokens = pred.split(), gold.split()
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return zero
    precision = common / len(pred_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall), precision, recall
