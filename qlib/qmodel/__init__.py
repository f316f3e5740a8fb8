"""Stage 3: Q-value models. Step-level DPO (trl) with the implicit-Q scorer, and Q*Agent's QNet.

Public API (imported lazily, so ``import qlib.qmodel`` stays light):

* ``train_dpo(pairs_file, out_dir, config, *, model_path=None, tokenizer=None) -> Path``
* ``train_qnet(rows_file, out_dir, config, *, model_path=None, tokenizer=None) -> Path``
* ``load_q_model(path) -> QModel`` with ``score(messages, candidates) -> list[float]`` and ``scored_tokens``
* ``LazyQModel(path)``: the same, read on first use (cached analyses run without the weights)
* ``DPOQModel(policy, tokenizer, beta, ref=...)`` / ``QNetModel`` for in-memory models
* ``preference_accuracy(q_model, pairs_file) -> {"accuracy", "n", "mean_margin", "by_level"}``
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train_dpo": "qlib.qmodel.dpo",
    "bf16_supported": "qlib.qmodel.dpo",
    "train_qnet": "qlib.qmodel.qnet",
    "QNetModel": "qlib.qmodel.qnet",
    "DPOQModel": "qlib.qmodel.scorer",
    "load_q_model": "qlib.qmodel.api",
    "LazyQModel": "qlib.qmodel.api",
    "preference_accuracy": "qlib.qmodel.api",
    "QModel": "qlib.qmodel.protocol",
    "encode": "qlib.qmodel.format",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'qlib.qmodel' has no attribute {name!r}")
