"""Loading saved Q-value models and measuring preference accuracy."""
from __future__ import annotations

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


def preference_accuracy(q_model: QModel, pairs_file: str | Path, *, max_pairs: int = 0) -> dict[str, Any]:
    """Share of pairs with Q(chosen) > Q(rejected), overall and per ``level`` (step / trajectory).

    A trajectory pair's chosen/rejected are multi-turn; the scorer sums over all their assistant tokens.
    """
    from tqdm.auto import tqdm

    rows = list(read_jsonl(pairs_file))
    rows = rows[:max_pairs] if max_pairs > 0 else rows
    margins: list[float] = []
    levels: list[str] = []
    for row in tqdm(rows, desc="preference accuracy"):
        chosen, rejected = q_model.score_completions(row["prompt"], [row["chosen"], row["rejected"]])
        margins.append(chosen - rejected)
        levels.append(str(row.get("level", "step")))
    result = summarise(margins)
    result["by_level"] = {
        level: summarise([m for m, lv in zip(margins, levels) if lv == level]) for level in sorted(set(levels))
    }
    return result


def summarise(margins: Sequence[float]) -> dict[str, Any]:
    """accuracy (share of positive margins), n and mean margin."""
    n = len(margins)
    return {
        "accuracy": sum(m > 0 for m in margins) / n if n else float("nan"),
        "n": n,
        "mean_margin": sum(margins) / n if n else float("nan"),
    }
