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


class LazyQModel:
    """A saved Q model whose weights are read on first use. ``path`` is known at once, which is all
    :class:`ScoreCache` needs, so an analysis whose values are all cached (margins, Q of actions, released with
    the model) runs without loading it, or its base agent: figures rerun from released artifacts on a machine
    that has not rebuilt the clone. Any other attribute loads the model (:func:`load_q_model`) and is its."""

    def __init__(self, path: str | Path, **options: Any) -> None:
        read_meta(path)  # not a saved Q model: fail now, not at the first score
        self.path, self._options, self._model = str(path), options, None

    @property
    def loaded(self) -> bool:
        """Whether the weights have been read."""
        return self._model is not None

    def model(self) -> QModel:
        """The loaded Q model (read now if it was not yet)."""
        if self._model is None:
            self._model = load_q_model(self.path, **self._options)
        return self._model

    def __getattr__(self, name: str) -> Any:  # called only for what the wrapper itself lacks
        if name.startswith("__") or name in ("_model", "_options"):
            raise AttributeError(name)
        return getattr(self.model(), name)

    def __setattr__(self, name: str, value: Any) -> None:  # e.g. a worker swapping in its KV cache
        if name in ("path", "_options", "_model"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.model(), name, value)


def base_folder(path: Path, meta: dict[str, Any]) -> str:
    """The folder of the backbone a saved Q model was trained on; a missing one (e.g. a released Q model whose
    cloned agent was not rebuilt on this machine) is a :class:`~qlib.export.CloneNotFoundError` saying so."""
    from qlib.export import TRAIN_HINT, CloneNotFoundError
    from qlib.qmodel.dpo import resolve_base

    _, base_dir = resolve_base(meta["base_model"])
    if not Path(base_dir).is_dir():
        raise CloneNotFoundError(f"the Q model {path} was trained on top of {meta['base_model']}, which is not on "
                                 f"this machine ({base_dir}); rebuild it first: {TRAIN_HINT}")
    return base_dir


def _load_dpo(path: Path, meta: dict[str, Any], dtype: Any, options: dict[str, Any]) -> QModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlib.qmodel.scorer import DPOQModel

    base_dir = base_folder(path, meta)
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

    from qlib.qmodel.qnet import QNetModel, ValueHead

    source = base_folder(path, meta) if meta["freeze_backbone"] else path / "backbone"
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
    """Q(chosen) − Q(rejected) of each pair row, in order; with a ``cache`` file (:class:`ScoreCache`, keyed
    by :func:`pair_key`) pairs this saved model already scored are read back instead of scored again."""
    from tqdm.auto import tqdm

    store = ScoreCache(cache, q_model)
    margins = []
    for row in tqdm(rows, desc="preference accuracy"):
        key = pair_key(row)
        if key not in store:
            chosen, rejected = q_model.score_completions(row["prompt"], [row["chosen"], row["rejected"]])
            store.put(key, chosen - rejected)
        margins.append(store[key])
    return margins


class ScoreCache:
    """Values a saved Q model computed (pair margins, Q of actions), kept in a JSONL file beside it.

    One ``{"key", "model", "value"}`` row per value, appended and flushed as it is computed, so notebooks
    re-run in seconds and an interrupted pass resumes. ``model`` is the hash of the model's ``qlib_config.json``:
    rows of another model (retrained in the same folder) are ignored; a model not loaded from a folder, or no
    ``path``, caches nothing. A line cut off by a crash is skipped.
    """

    def __init__(self, path: Path | None, q_model: QModel) -> None:
        self.model = model_fingerprint(q_model) if path is not None else None
        self.path = path if self.model else None
        self.values: dict[str, float] = {}
        if self.path is not None and self.path.exists():
            self.values = {r["key"]: float(r["value"]) for r in read_jsonl(self.path, tolerant=True)
                           if r.get("model") == self.model and "key" in r and "value" in r}

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def __getitem__(self, key: str) -> float:
        return self.values[key]

    def put(self, key: str, value: float) -> None:
        from qlib.io import append_jsonl

        self.values[key] = float(value)
        if self.path is not None:
            append_jsonl(self.path, {"key": key, "model": self.model, "value": float(value)})


def pair_key(row: dict[str, Any]) -> str:
    """A preference pair's identity: the hash of its prompt, chosen and rejected."""
    return content_key([row["prompt"], row["chosen"], row["rejected"]])


def content_key(value: Any) -> str:
    """A short hash of a JSON-serialisable value (the identity of what a Q model scored)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def model_fingerprint(q_model: QModel) -> str | None:
    """The hash of the ``qlib_config.json`` of the folder ``q_model`` was loaded from; None when not loaded."""
    folder = getattr(q_model, "path", "")
    if not folder or not (Path(folder) / CONFIG_FILE).is_file():
        return None
    return hashlib.sha256((Path(folder) / CONFIG_FILE).read_bytes()).hexdigest()[:16]


def summarise(margins: Sequence[float]) -> dict[str, Any]:
    """accuracy (share of positive margins), n and mean margin."""
    n = len(margins)
    return {
        "accuracy": sum(m > 0 for m in margins) / n if n else float("nan"),
        "n": n,
        "mean_margin": sum(margins) / n if n else float("nan"),
    }
