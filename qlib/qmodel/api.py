"""Loading saved Q-value models and measuring preference accuracy."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from qlib.io import read_jsonl
from qlib.qmodel.protocol import QModel

CONFIG_FILE = "qlib_config.json"


def read_meta(path: str | Path) -> dict[str, Any]:
    """The ``qlib_config.json`` of a saved Q model."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: {path} is not a saved qlib Q model")
    return json.loads(file.read_text(encoding="utf-8"))


def load_q_model(path: str | Path, *, dtype: Any = None, device: str | None = None, **options: Any) -> QModel:
    """Load a Q model saved by ``train_dpo`` or ``train_qnet`` (the kind is read from its config).

    ``options`` go to the scorer (DPO: ``variant``, ``length_normalise``, ``max_batch``, ``max_length``).
    """
    meta = read_meta(path)
    loaders = {"dpo": _load_dpo, "qnet": _load_qnet}
    if meta.get("kind") not in loaders:
        raise ValueError(f"{path}: unknown Q model kind {meta.get('kind')!r}")
    model = loaders[meta["kind"]](Path(path), meta, dtype or torch.float32, options)
    model.path = str(path)
    if device:
        for name in ("policy", "ref", "backbone", "head"):
            if getattr(model, name, None) is not None:
                getattr(model, name).to(device)
    return model


def _load_dpo(path: Path, meta: dict[str, Any], dtype: Any, options: dict[str, Any]) -> QModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlib.qmodel.dpo import resolve_base
    from qlib.qmodel.scorer import DPOQModel

    _, base_dir = resolve_base(meta["base_model"])
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    if meta["lora"]:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
        policy, ref = PeftModel.from_pretrained(base, path / "adapter"), None
    else:
        policy = AutoModelForCausalLM.from_pretrained(path / "model", dtype=dtype)
        ref = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    options.setdefault("max_length", meta.get("max_length"))
    return DPOQModel(policy, tokenizer, meta["beta"], ref=ref, **options)


def _load_qnet(path: Path, meta: dict[str, Any], dtype: Any, options: dict[str, Any]) -> QModel:
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from qlib.qmodel.dpo import resolve_base
    from qlib.qmodel.qnet import QNetModel, ValueHead

    _, base_dir = resolve_base(meta["base_model"])
    source = base_dir if meta["freeze_backbone"] else path / "backbone"
    backbone = AutoModel.from_pretrained(source, dtype=dtype)
    head = ValueHead(backbone.config.hidden_size, meta["hidden"])
    head.load_state_dict(load_file(str(path / "head.safetensors")))
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    return QNetModel(backbone, head, tokenizer, max_length=options.get("max_length", meta.get("max_length")))


def preference_accuracy(q_model: QModel, pairs_file: str | Path, *, max_pairs: int = 0, cache: Path | None = None,
                        resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Share of pairs with Q(chosen) > Q(rejected), overall (with a 95% bootstrap CI over the pairs) and per
    ``level`` (step / trajectory); the margins come from :func:`pair_margins` (``cache``: see there).

    A trajectory pair's chosen/rejected are multi-turn; the scorer sums over all their assistant tokens.
    """
    from qlib.stats import mean_ci

    rows = list(read_jsonl(pairs_file))
    rows = rows[:max_pairs] if max_pairs > 0 else rows
    margins = pair_margins(q_model, rows, cache=cache)
    levels = [str(row.get("level", "step")) for row in rows]
    result = summarise(margins)
    _, result["accuracy_lo"], result["accuracy_hi"] = mean_ci([m > 0 for m in margins], resamples=resamples, seed=seed)
    result["by_level"] = {
        level: summarise([m for m, lv in zip(margins, levels) if lv == level]) for level in sorted(set(levels))
    }
    return result


def pair_margins(q_model: QModel, rows: Sequence[dict[str, Any]], *, cache: Path | None = None) -> list[float]:
    """Q(chosen) − Q(rejected) of each pair row, in order.

    With a ``cache`` file (JSONL, one ``{"pair", "model", "margin"}`` row per scored pair, appended as they are
    scored) a pair already scored by this same saved model is read back instead of scored again: notebook 07
    re-runs in seconds and an interrupted pass resumes. Rows of another model (retrained in the same folder:
    another ``qlib_config.json``) are ignored; a model that was not loaded from a folder is never cached.
    """
    from tqdm.auto import tqdm

    from qlib.io import append_jsonl

    model = model_fingerprint(q_model) if cache is not None else None
    known: dict[str, float] = {}
    if model and cache is not None and cache.exists():
        known = {r["pair"]: float(r["margin"]) for r in read_jsonl(cache, tolerant=True)
                 if r.get("model") == model and "pair" in r and "margin" in r}
    margins = []
    for row in tqdm(rows, desc="preference accuracy"):
        key = pair_key(row)
        if key not in known:
            chosen, rejected = q_model.score_completions(row["prompt"], [row["chosen"], row["rejected"]])
            known[key] = chosen - rejected
            if model and cache is not None:
                append_jsonl(cache, {"pair": key, "model": model, "margin": known[key]})
        margins.append(known[key])
    return margins


def pair_key(row: dict[str, Any]) -> str:
    """A preference pair's identity: the hash of its prompt, chosen and rejected."""
    text = json.dumps([row["prompt"], row["chosen"], row["rejected"]], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def model_fingerprint(q_model: QModel) -> str | None:
    """The hash of the ``qlib_config.json`` of the folder ``q_model`` was loaded from; None when not loaded."""
    file = Path(getattr(q_model, "path", "") or "") / CONFIG_FILE
    if not getattr(q_model, "path", "") or not file.is_file():
        return None
    return hashlib.sha256(file.read_bytes()).hexdigest()[:16]


def summarise(margins: Sequence[float]) -> dict[str, Any]:
    """accuracy (share of positive margins), n and mean margin."""
    n = len(margins)
    return {
        "accuracy": sum(m > 0 for m in margins) / n if n else float("nan"),
        "n": n,
        "mean_margin": sum(margins) / n if n else float("nan"),
    }
