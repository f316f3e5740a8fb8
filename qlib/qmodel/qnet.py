"""Q*Agent's QNet (its appendix A.2): an LLM backbone + MLP value head, trained with MSE on Bellman Q targets.

The head reads the backbone's last hidden state at the final token of prompt + action (the same token ids
as the DPO scorer, from :mod:`qlib.qmodel.format`). With ``freeze_backbone`` the backbone features are
computed once (shared-prefix KV cache per prompt) and only the head is trained.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from qlib.config import Config
from qlib.qmodel.format import Encoded, Message, encode
from qlib.qmodel.scorer import PrefixCache, hash_weights, model_dtype, packed_inputs, pad_right, prefill

CONFIG_FILE = "qlib_config.json"
FEATURES_CHECKPOINT = "features.partial.pt"  # features computed so far by an unfinished training run
log = logging.getLogger(__name__)


class ValueHead(nn.Module):
    """MLP: d → h → h → 1 with ReLU, on standardised features (per-dimension mean/std buffers)."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.register_buffer("mean", torch.zeros(d_model))
        self.register_buffer("std", torch.ones(d_model))

    def set_standardisation(self, features: torch.Tensor) -> None:
        """Centre and scale the inputs with the training features' statistics (frozen backbone)."""
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0, unbiased=False).clamp(min=1e-6) if len(features) > 1 else torch.ones_like(self.std))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.mean) / self.std).squeeze(-1)


def last_hidden(backbone: Any, prompt_ids: Sequence[int], completions: Sequence[Sequence[int]],
                cache: PrefixCache | None = None) -> torch.Tensor:
    """Hidden state at the last token of prompt + each completion, [n, d]; the prompt is encoded once (only
    its uncached tail with a ``cache``) and the completions run packed against its KV cache."""
    device = next(backbone.parameters()).device
    _, past = prefill(backbone, prompt_ids, cache)
    inputs = packed_inputs(len(prompt_ids), completions, model_dtype(backbone), device)
    hidden = backbone(**inputs, past_key_values=past, use_cache=True).last_hidden_state[0]
    ends = torch.tensor([len(c) for c in completions]).cumsum(0) - 1
    return hidden[ends.to(device)].float()


def full_hidden(backbone: Any, encoded: Sequence[Encoded]) -> torch.Tensor:
    """The same features with one full forward per sequence batch (differentiable; for fine-tuning)."""
    device = next(backbone.parameters()).device
    rows = [e.prompt_ids + e.completion_ids for e in encoded]
    ids = pad_right(rows, 0).to(device)
    mask = pad_right([[1] * len(r) for r in rows], 0).to(device)
    hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    last = torch.tensor([len(r) - 1 for r in rows], device=device)
    return hidden[torch.arange(len(rows), device=device), last].float()


class QNetModel:
    """Q(u, τ, a) = MLP(h_last(prompt + a)); same interface as :class:`qlib.qmodel.scorer.DPOQModel`."""

    kind = "qnet"

    def __init__(self, backbone: Any, head: ValueHead, tokenizer: Any, *, max_length: int | None = None) -> None:
        self.backbone, self.head, self.tokenizer, self.max_length = backbone.eval(), head.eval(), tokenizer, max_length
        self.path = ""  # the folder it was loaded from (set by load_q_model)
        self.scored_tokens = 0  # tokens run through the backbone (uncached prompt tokens + candidate tokens)
        self.calls = 0
        self.cache = PrefixCache()  # acting only: consecutive steps of an episode encode only what is new

    def encode(self, messages: Sequence[Message], completions: Sequence[str | Sequence[Message]]) -> list[Encoded]:
        return encode(self.tokenizer, messages, completions, self.max_length)

    @torch.inference_mode()
    def features(self, messages: Sequence[Message], completions: Sequence[str | Sequence[Message]],
                 cache: PrefixCache | None = None) -> torch.Tensor:
        """Backbone features of each completion after ``messages`` (the prompt's KV from ``cache`` if given;
        only for a backbone that no longer trains)."""
        encoded = self.encode(messages, completions)
        rows = [e.completion_ids for e in encoded]
        reused = cache.reused_tokens if cache is not None else 0
        features = last_hidden(self.backbone, encoded[0].prompt_ids, rows, cache)
        reused = (cache.reused_tokens - reused) if cache is not None else 0
        self.scored_tokens += len(encoded[0].prompt_ids) - reused + sum(len(r) for r in rows)
        return features

    def score(self, messages: Sequence[Message], candidates: Sequence[str]) -> list[float]:
        """Predicted Q of each candidate assistant turn."""
        return self.score_completions(messages, candidates)

    @torch.inference_mode()
    def score_completions(self, messages: Sequence[Message], completions: Sequence[str | Sequence[Message]]) -> list[float]:
        if not completions:
            return []
        self.calls += 1
        return self.head(self.features(messages, completions, self.cache)).tolist()


def row_completion(row: dict[str, Any]) -> Any:
    """The action of a QNet row (``completion``; ``chosen`` accepted too)."""
    return row.get("completion", row.get("chosen"))


def cached_features(model: QNetModel, rows: Sequence[dict[str, Any]], *, checkpoint: Path | None = None,
                    every: int = 100) -> tuple[torch.Tensor, float]:
    """Features of every row: one backbone pass per distinct prompt, and each prompt pays only for what it
    does not share with the previous one.

    The rows of a tree are its nodes' states, and a child's prompt is its parent's plus one turn and one
    observation. The distinct prompts are visited in trie order (sorted by their messages), so consecutive
    prompts share their common history, and a :class:`~qlib.qmodel.scorer.PrefixCache` keeps that history's KV
    (``make bench``, qnet_features: the speed-up over encoding every prompt whole).

    With a ``checkpoint`` file the features computed so far are saved there every ``every`` prompts (a
    WebShop run has thousands of states, each paying for its last observation): an interrupted run resumes
    after the saved prompts. A checkpoint of other rows or another backbone (other weights at the same path
    included), or one that cannot be read, is ignored with a warning and the features are computed afresh.

    Returns the features [rows, d] and the seconds they cost, summed over every execution that contributed
    (the checkpoint carries the seconds of the saved prompts), so a resumed run reports its whole compute.
    """
    groups: dict[tuple[tuple[str, str], ...], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(message_key(row["prompt"]), []).append(i)
    order = sorted(groups.items())
    fingerprint = features_fingerprint(model, [(key, [row_completion(rows[i]) for i in idx]) for key, idx in order])
    done, before = load_features_checkpoint(checkpoint, fingerprint) if checkpoint else ([], 0.0)
    cache = PrefixCache()
    start = time.perf_counter()
    with tqdm(total=len(order), initial=len(done), desc="qnet features") as bar:
        for _, indices in order[len(done):]:
            done.append(model.features(rows[indices[0]]["prompt"], [row_completion(rows[i]) for i in indices], cache))
            bar.update()
            if checkpoint and (len(done) % every == 0 or len(done) == len(order)):
                save_features_checkpoint(checkpoint, fingerprint, done, before + time.perf_counter() - start)
    features: list[torch.Tensor | None] = [None] * len(rows)
    for (_, indices), feats in zip(order, done):
        for i, f in zip(indices, feats):
            features[i] = f
    return torch.stack(features), before + time.perf_counter() - start  # type: ignore[arg-type]


def features_fingerprint(model: QNetModel, groups: Sequence[tuple[Any, list[Any]]]) -> str:
    """What a features checkpoint belongs to: the backbone's weights (not only its folder: a clone retrained on
    a fresh machine is a near twin at the same path), the encoder's length cap and every prompt and action."""
    digest = hashlib.sha256(repr((getattr(model.backbone.config, "_name_or_path", ""), model.max_length)).encode())
    hash_weights(digest, model.backbone)
    for key, completions in groups:
        digest.update(json.dumps([key, completions], sort_keys=True).encode())
    return digest.hexdigest()


def save_features_checkpoint(path: Path, fingerprint: str, done: list[torch.Tensor], seconds: float) -> None:
    """The features of the first ``len(done)`` prompts and the seconds they cost (atomically: a half-written
    file never replaces one)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"fingerprint": fingerprint, "features": [f.clone() for f in done], "seconds": float(seconds)}, tmp)
    tmp.replace(path)


def load_features_checkpoint(path: Path, fingerprint: str) -> tuple[list[torch.Tensor], float]:
    """The saved features of the first prompts and their seconds, or ([], 0) (no file, other rows or
    backbone, unreadable)."""
    if not path.exists():
        return [], 0.0
    try:
        saved = torch.load(path, weights_only=True)
        features, seconds = list(saved["features"]), float(saved.get("seconds", 0.0))
        matches = saved["fingerprint"] == fingerprint
    except Exception as err:  # a truncated or foreign file: start over, do not crash the stage
        log.warning("%s: unreadable features checkpoint (%s): computing the features afresh", path, err)
        return [], 0.0
    if not matches:
        log.warning("%s: features checkpoint of other rows or another backbone: computing afresh", path)
        return [], 0.0
    log.info("%s: resuming after %d saved prompts (%.0f s of features)", path, len(features), seconds)
    return features, seconds


def message_key(messages: Sequence[Message]) -> tuple[tuple[str, str], ...]:
    """A prompt as a hashable, sortable tuple of (role, content) (what the encoder reads): equal prompts get
    equal keys, and sorting puts prompts with a common history together."""
    return tuple((str(m.get("role", "")), str(m.get("content", ""))) for m in messages)


def fit_head(head: ValueHead, features: torch.Tensor, targets: torch.Tensor, config: Config) -> list[dict[str, float]]:
    """Train the head alone on cached features; per-epoch MSE."""
    cfg = config.qnet
    head.set_standardisation(features)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.learning_rate)
    gen = torch.Generator().manual_seed(config.seed)
    history = []
    head.train()
    for epoch in tqdm(range(cfg.epochs), desc="qnet epochs"):
        total = 0.0
        for batch in torch.randperm(len(targets), generator=gen).split(cfg.batch_size):
            loss = nn.functional.mse_loss(head(features[batch]), targets[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        history.append({"epoch": epoch + 1, "mse": total / len(targets)})
    head.eval()
    return history


def fit_end_to_end(model: QNetModel, rows: Sequence[dict[str, Any]], targets: torch.Tensor, config: Config) -> list[dict[str, float]]:
    """Train backbone and head together (``freeze_backbone=False``); per-epoch MSE."""
    cfg = config.qnet
    encoded = [model.encode(row["prompt"], [row_completion(row)])[0] for row in rows]
    params = list(model.backbone.parameters()) + list(model.head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate)
    rng = random.Random(config.seed)
    history = []
    model.backbone.train()
    model.head.train()
    for epoch in range(cfg.epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        total = 0.0
        for start in tqdm(range(0, len(order), cfg.batch_size), desc=f"qnet epoch {epoch + 1}"):
            batch = order[start:start + cfg.batch_size]
            pred = model.head(full_hidden(model.backbone, [encoded[i] for i in batch]))
            loss = nn.functional.mse_loss(pred, targets[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        history.append({"epoch": epoch + 1, "mse": total / len(rows)})
    model.backbone.eval()
    model.head.eval()
    return history


def save_qnet(model: QNetModel, out: Path, meta: dict[str, Any], history: list[dict[str, float]]) -> None:
    """Head (and a fine-tuned backbone) as safetensors, tokenizer, ``qlib_config.json`` and ``metrics.csv``."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, str(out / "head.safetensors"))
    if not meta["freeze_backbone"]:
        model.backbone.save_pretrained(out / "backbone", safe_serialization=True)
    model.tokenizer.save_pretrained(out / "tokenizer")
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
    with open(out / "metrics.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["epoch", "mse"])
        writer.writeheader()
        writer.writerows(history)


def train_qnet(
    rows_file: str | Path, out_dir: str | Path, config: Config, *, model_path: str | Path | None = None,
    tokenizer: Any = None,
) -> Path:
    """Train a QNet on Bellman-Q rows (``prompt``, ``completion``, ``q``); return ``out_dir``.

    ``out_dir`` gets ``head.safetensors`` (+ ``backbone/`` when fine-tuned), ``tokenizer/``,
    ``qlib_config.json`` and ``metrics.csv`` (MSE per epoch). ``config.dpo.max_pairs`` caps the rows and
    ``config.dpo.max_length`` the sequence length, as for DPO.
    """
    return run_qnet(rows_file, out_dir, config, model_path=model_path, tokenizer=tokenizer)[0]


def run_qnet(
    rows_file: str | Path, out_dir: str | Path, config: Config, *, model_path: str | Path | None = None,
    tokenizer: Any = None,
) -> tuple[Path, QNetModel]:
    """:func:`train_qnet`, also returning the trained model."""
    from transformers import AutoModel

    from qlib.qmodel.dpo import training_inputs

    out, base_name, base_dir, tokenizer, rows = training_inputs(
        rows_file, out_dir, config, model_path, tokenizer, "QNet rows")
    torch.manual_seed(config.seed)
    backbone = AutoModel.from_pretrained(base_dir, dtype=torch.float32)
    head = ValueHead(backbone.config.hidden_size, config.qnet.hidden)
    model = QNetModel(backbone, head, tokenizer, max_length=config.dpo.max_length)
    targets = torch.tensor([float(row["q"]) for row in rows])
    start = time.perf_counter()
    if config.qnet.freeze_backbone:
        # the features' seconds, including earlier executions' when the feature pass was resumed; the clock
        # then times the head alone
        features, seconds = cached_features(model, rows, checkpoint=out / FEATURES_CHECKPOINT)
        start = time.perf_counter()
        history = fit_head(head, features, targets, config)
    else:
        seconds = 0.0
        history = fit_end_to_end(model, rows, targets, config)
    meta = {
        "kind": "qnet", "base_model": base_name, "hidden": config.qnet.hidden,
        "freeze_backbone": config.qnet.freeze_backbone, "max_length": config.dpo.max_length, "n_rows": len(rows),
        "rows_file": str(rows_file), "final_mse": history[-1]["mse"] if history else None,
        "train_seconds": round(seconds + time.perf_counter() - start, 2), "dtype": "fp32", "config": config.to_dict(),
    }
    save_qnet(model, out, meta, history)
    (out / FEATURES_CHECKPOINT).unlink(missing_ok=True)
    return out, model
