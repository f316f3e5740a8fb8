"""Behaviour cloning (stage 0): supervised fine-tuning of the agent on expert demonstrations with trl.

The demonstrations (:mod:`qlib.expert`) are whole trajectories in the agent's chat format. They are
tokenised by :mod:`qlib.qmodel.format` — the one encoder of the Q models too — so trl never re-applies a
chat template: the prompt is the instruction / ``OK`` / task head, the completion every later turn, and
the loss counts the **assistant tokens only** (``labels`` = -100 elsewhere, observations included).

A trajectory longer than ``clone.max_length`` is split into windows of consecutive turns; a window's
prompt is the history before its first turn, cut from the left by dropping the oldest steps (the same
rule as the Q model's prompts). Every assistant turn is learned exactly once and never cut.

Output folder (the layout of the DPO Q models, so export and loading code is shared)::

    adapter/ | model/     LoRA adapter or full weights (safetensors)
    tokenizer/            the tokenizer
    qlib_config.json      {"kind": "sft", "lora", "base_model", demos, token counts, seconds, loss, ...}
    metrics.csv           loss, learning rate, grad norm per optimiser step
    curve/<k>/            the same layout after k trajectories (config ``clone.curve``; the learning curve)
    trainer/              trl checkpoints while training (a rerun resumes from the last one; removed at the end)
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import TrainerCallback

from qlib.agent.base import Message
from qlib.config import Config
from qlib.io import read_jsonl
from qlib.qmodel.dpo import (CHECKPOINT_STEPS, CONFIG_FILE, bf16_supported, lora_config, resolve_base,
                             resume_training, run_fingerprint, save_dpo)
from qlib.qmodel.format import encode, task_index
from qlib.qmodel.scorer import hash_weights

METRIC_KEYS = ("step", "epoch", "loss", "learning_rate", "grad_norm", "num_tokens", "mean_token_accuracy")
IGNORE = -100


# ----------------------------------------------------------------------------- data
def encode_demo(tokenizer: Any, messages: Sequence[Message], max_length: int) -> list[dict[str, list[int]]]:
    """Training sequences (``input_ids``, ``labels``) of one demonstration, at most ``max_length`` tokens
    each unless a single turn with a minimal prompt is longer (then that window is longer; never cut)."""
    head = task_index(messages) + 1
    turns = [i for i in range(head, len(messages)) if messages[i]["role"] == "assistant"]
    if not turns:
        raise ValueError("a demonstration needs at least one assistant turn after the task")
    samples, start = [], 0
    while start < len(turns):
        end = len(turns) - 1
        while True:
            prompt, completion = messages[: turns[start]], messages[turns[start]: turns[end] + 1]
            enc = encode(tokenizer, prompt, [completion], max_length)[0]
            fits = len(enc.prompt_ids) + len(enc.completion_ids) <= max_length and enc.cut_tokens == 0
            if fits or end == start:
                break
            end -= 1
        labels = [IGNORE] * len(enc.prompt_ids)
        labels += [t if m else IGNORE for t, m in zip(enc.completion_ids, enc.completion_mask)]
        samples.append({"input_ids": enc.prompt_ids + enc.completion_ids, "labels": labels})
        start = end + 1
    return samples


def build_dataset(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> tuple[Any, dict[str, Any]]:
    """A ``datasets.Dataset`` of training sequences, and its statistics (tokens, windows, trajectories)."""
    from datasets import Dataset
    from tqdm.auto import tqdm

    samples = []
    for row in tqdm(rows, desc="encode demos"):
        windows = encode_demo(tokenizer, row["messages"], max_length)
        samples += [{**w, "weight": float(row["weight"])} for w in windows] if "weight" in row else windows
    tokens = [len(s["input_ids"]) for s in samples]
    stats = {"demos": len(rows), "sequences": len(samples), "split_demos": len(samples) - len(rows),
             "tokens": sum(tokens), "max_tokens": max(tokens, default=0),
             "loss_tokens": sum(sum(t != IGNORE for t in s["labels"]) for s in samples)}
    return Dataset.from_list(samples), stats


# ----------------------------------------------------------------------------- training
class WeightedCollator:
    """Wraps a collator: takes each example's ``weight`` out before collating and adds them as a tensor."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        weights = [float(e.get("weight", 1.0)) for e in examples]
        output = self.inner([{k: v for k, v in e.items() if k != "weight"} for e in examples])
        output["weight"] = torch.tensor(weights)
        return output


def weighted_sft_trainer(**kwargs: Any) -> Any:
    """A trl ``SFTTrainer`` whose loss is scaled by the micro-batch's mean sequence ``weight`` (a dataset column;
    one sequence per micro-batch, so this is each sequence's weight): reward-weighted SFT (AgentEvol)."""
    from trl import SFTTrainer

    class WeightedSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D102
            weight = inputs.pop("weight").float().mean()
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            return (result[0] * weight, result[1]) if return_outputs else result * weight

    trainer = WeightedSFTTrainer(**kwargs)
    trainer.data_collator = WeightedCollator(trainer.data_collator)
    return trainer


class CurveCallback(TrainerCallback):
    """Saves a clone folder ``curve/<k>/`` when the number of trajectories seen crosses each of ``points``."""

    def __init__(self, out_dir: Path, points: Sequence[int], per_step: float, tokenizer: Any,
                 meta: dict[str, Any]) -> None:
        self.out_dir, self.points, self.per_step = out_dir, sorted(points), per_step
        self.tokenizer, self.meta = tokenizer, meta

    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: D102 - trainer hook
        seen = state.global_step * self.per_step
        for k in self.points:
            target = self.out_dir / "curve" / str(k)
            if seen >= k and not (target / CONFIG_FILE).exists():
                save_dpo(model, self.tokenizer, target, {**self.meta, "demos_seen": k, "steps": state.global_step})


def sft_args(config: Config, out_dir: Path, *, bf16: bool, max_steps: int) -> Any:
    """trl ``SFTConfig`` from the profile's ``clone`` section (one sequence per micro-batch, accumulated)."""
    from trl import SFTConfig

    cfg = config.clone
    return SFTConfig(
        output_dir=str(out_dir / "trainer"),
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type=cfg.lr_scheduler,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=cfg.batch_size,
        num_train_epochs=cfg.epochs,
        max_steps=max_steps,
        seed=config.seed,
        data_seed=config.seed,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        max_length=None,  # encode_demo already windowed every sequence (never cutting a turn)
        dataset_kwargs={"skip_prepare_dataset": True},
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="steps",
        save_steps=CHECKPOINT_STEPS,
        save_total_limit=1,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )


def train_clone(
    demos_file: str | Path,
    out_dir: str | Path,
    config: Config,
    *,
    model_path: str | Path | None = None,
    tokenizer: Any = None,
    limit: int = 0,
    max_steps: int = -1,
) -> Path:
    """Fine-tune the agent on ``demos_file`` (the first ``limit`` demos when > 0); return ``out_dir``.

    Resumes from ``out_dir/trainer``'s last checkpoint of a run with the same settings and demonstrations
    (:func:`~qlib.qmodel.dpo.resume_training`). ``max_steps`` > 0 stops early."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_name, base_dir = resolve_base(model_path)
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = list(read_jsonl(demos_file))[: limit or None]
    if not rows:
        raise ValueError(f"{demos_file} holds no demonstrations")
    cfg = config.clone
    dataset, stats = build_dataset(tokenizer, rows, cfg.max_length)
    bf16 = cfg.bf16 and bf16_supported()
    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base_weights = hash_weights(hashlib.sha256(), model).hexdigest()  # before LoRA wraps it
    make = weighted_sft_trainer if "weight" in dataset.column_names else SFTTrainer
    trainer = make(model=model, args=sft_args(config, out, bf16=bf16, max_steps=max_steps),
                   train_dataset=dataset, processing_class=tokenizer,
                   peft_config=lora_config(cfg) if cfg.lora else None)
    fingerprint = run_fingerprint("sft", base_name, base_weights, cfg.model_dump(mode="json"), config.seed, rows)
    checkpoint, clock = resume_training(trainer, out, fingerprint, METRIC_KEYS)
    base_meta = {"kind": "sft", "lora": cfg.lora, "base_model": base_name, "demos_file": str(demos_file),
                 "dtype": "bf16-autocast" if bf16 else "fp32", "seed": config.seed, **stats,
                 "clone": cfg.model_dump(mode="json")}
    per_step = cfg.batch_size * stats["demos"] / stats["sequences"]
    points = [k for k in cfg.curve if k < len(rows)]
    trainer.add_callback(CurveCallback(out, points, per_step, tokenizer, base_meta))
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    save_dpo(trainer.model, tokenizer, out, {
        **base_meta, "train_seconds": clock.seconds(), "train_loss": result.training_loss,
        "steps": trainer.state.global_step, "resumed_from": checkpoint.name if checkpoint else None,
        "curve": [k for k in points if (out / "curve" / str(k) / CONFIG_FILE).exists()]})
    shutil.rmtree(out / "trainer", ignore_errors=True)
    return out


# ----------------------------------------------------------------------------- released artifacts
def release(clone_dir: str | Path, dest: str | Path) -> Path | None:
    """Copy a LoRA clone's adapter (cast to bf16: ≈10 MB), ``qlib_config.json`` and ``metrics.csv`` to ``dest``
    — the artifact committed with the results. A full fine-tune is not released (hundreds of MB): None."""
    from safetensors.torch import load_file, save_file

    clone_dir, dest = Path(clone_dir), Path(dest)
    meta = json.loads((clone_dir / CONFIG_FILE).read_text())
    if not meta["lora"]:
        return None
    staging = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(clone_dir / "adapter", staging / "adapter")
    weights = staging / "adapter" / "adapter_model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(weights).items()}, weights)
    for name in (CONFIG_FILE, "metrics.csv"):
        shutil.copy2(clone_dir / name, staging / name)
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return dest


def restore(release_dir: str | Path, clone_dir: str | Path, clone_settings: dict[str, Any], demos: int) -> bool:
    """Make ``clone_dir`` from a released clone when it was trained with ``clone_settings`` on ``demos``
    demonstrations; False (nothing done) when there is none or it was trained otherwise."""
    release_dir, clone_dir = Path(release_dir), Path(clone_dir)
    if not (release_dir / CONFIG_FILE).is_file():
        return False
    meta = json.loads((release_dir / CONFIG_FILE).read_text())
    if meta.get("clone") != clone_settings or meta.get("demos") != demos:
        return False
    from transformers import AutoTokenizer

    shutil.copytree(release_dir, clone_dir, dirs_exist_ok=True)
    AutoTokenizer.from_pretrained(resolve_base(meta["base_model"])[1]).save_pretrained(clone_dir / "tokenizer")
    return True
