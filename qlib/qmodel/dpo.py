"""Step-level DPO (paper Eq. 8) with trl's ``DPOTrainer`` on pre-tokenised pairs.

trl is fed token ids made by :mod:`qlib.qmodel.format` (the one encoder the scorer uses too), so trl never
re-applies a chat template or truncates: its ``_prepare_dataset`` is skipped for pre-tokenised data, and a
collator adds the per-token assistant mask (for trajectory pairs, observation turns inside the completion
are not scored).

The loss is trl's sigmoid DPO loss, but the log-probabilities come from the scorer's own computation
(:func:`qlib.qmodel.scorer.completion_logits`, with gradients): each pair's prompt is encoded once and
both completions run against its KV cache. trl runs prompt + chosen and prompt + rejected as two full
sequences; a step pair's prompt is ≈ 93 % of its tokens, so this halves the work of every training step.
"""
from __future__ import annotations

import contextlib
import logging
import csv
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from transformers import TrainerCallback
from trl import DPOConfig as TrlDPOConfig
from trl import DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import use_adapter

from qlib.config import Config
from qlib.io import atomic_write_text, read_jsonl
from qlib.qmodel.format import fit_pair
from qlib.qmodel.scorer import completion_logits, hash_weights

log = logging.getLogger(__name__)
CONFIG_FILE = "qlib_config.json"
CHECKPOINT_STEPS = 10  # optimiser steps between the resumable checkpoints of a training run (DPO, clone)
EMBEDDED_BASE = "smollm2-135m"
METRIC_KEYS = ("step", "epoch", "loss", "rewards/accuracies", "rewards/margins", "rewards/chosen",
               "rewards/rejected", "logps/chosen", "logps/rejected", "learning_rate", "grad_norm")


def bf16_supported() -> bool:
    """Whether bf16 autocast is worth using here: a CUDA GPU with bf16, or a CPU with native bf16 (AVX512-BF16/AMX)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        a = torch.ones(4, 4, dtype=torch.bfloat16)
        return bool((a @ a).float().sum().item() == 64.0)
    except Exception:  # noqa: BLE001 - any failure means "no"
        return False


def resolve_base(model_path: str | Path | None) -> tuple[str, str]:
    """(name to record, folder to load) of the backbone; ``None`` = the embedded SmolLM2-135M.

    A folder inside the repository (e.g. a merged clone under ``runs/``) is recorded relative to it, so a
    released Q model still finds its base in another checkout."""
    from qlib.workbook.layout import REPO_ROOT

    if model_path is None or str(model_path) == EMBEDDED_BASE:
        from qlib.provision import smollm2_dir

        return EMBEDDED_BASE, str(smollm2_dir())
    path = Path(model_path).expanduser()
    if not path.is_absolute() and (REPO_ROOT / path).exists():  # a recorded repository-relative name
        path = REPO_ROOT / path
    path = path.resolve()
    name = str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)
    return name, str(path)


def load_rows(path: str | Path, max_pairs: int = 0) -> list[dict[str, Any]]:
    """Rows of a pairs / QNet JSONL file (the first ``max_pairs`` when > 0)."""
    rows = list(read_jsonl(path))
    return rows[:max_pairs] if max_pairs > 0 else rows


def build_dataset(tokenizer: Any, rows: list[dict[str, Any]], max_length: int | None) -> tuple[Any, int]:
    """(a ``datasets.Dataset`` of pre-tokenised preference pairs, how many had completions cut from the right)."""
    from datasets import Dataset
    from tqdm.auto import tqdm

    encoded = [fit_pair(tokenizer, row, max_length) for row in tqdm(rows, desc="encode pairs")]
    cut = sum(1 for _, tokens in encoded if tokens)
    if cut:
        log.info("%d of %d pairs are whole trajectories longer than max_length %s: cut from the right",
                 cut, len(rows), max_length)
    return Dataset.from_list([columns for columns, _ in encoded]), cut


class MaskedPreferenceCollator(DataCollatorForPreference):
    """trl's preference collator, with the completion mask taken from ``chosen_mask`` / ``rejected_mask``
    and each pair's prompt length (``prompt_lengths``, for the shared-prompt forward)."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        output = super().torch_call(examples)
        output["prompt_lengths"] = torch.tensor([len(e["prompt_ids"]) for e in examples], dtype=torch.long)
        width = output["input_ids"].shape[1]
        rows = [[0] * len(e["prompt_ids"]) + list(e[key]) for key in ("chosen_mask", "rejected_mask") for e in examples]
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            mask[i, : len(row)] = torch.tensor(row[:width], dtype=torch.long)
        output["completion_mask"] = mask
        return output


def pair_logps(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ log π(completion tokens) of the chosen and of the rejected side of a collated batch.

    The batch holds [chosen rows; rejected rows], each row prompt + completion, right-padded. Per pair the
    prompt is encoded once and both completions run against its KV cache (:func:`completion_logits`); only
    tokens under ``completion_mask`` count (trajectory pairs leave observations out).
    """
    ids, mask = inputs["input_ids"], inputs["completion_mask"]
    lengths = inputs["attention_mask"].sum(1).tolist()
    half = len(ids) // 2
    sums = []
    for i, p in enumerate(inputs["prompt_lengths"].tolist()):
        rows = [i, i + half]
        completions = [ids[j, p:lengths[j]].tolist() for j in rows]
        logits = completion_logits(model, ids[i, :p].tolist(), completions)
        width = logits.shape[1]
        target = ids[rows, p:p + width]
        logp = F.log_softmax(logits, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        sums.append((logp * mask[rows, p:p + width]).sum(1))
    both = torch.stack(sums)
    return both[:, 0], both[:, 1]


class PreTokenizedDPOTrainer(DPOTrainer):
    """``DPOTrainer`` that takes already tokenised ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` as they
    are, and computes the paper's sigmoid loss from :func:`pair_logps` (one prompt encoding per pair)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        plain = (self.loss_types == ["sigmoid"] and self.ld_alpha is None and not self.use_weighting
                 and self.f_divergence_type == "reverse_kl" and not self.aux_loss_enabled)
        if not plain:
            raise ValueError("qlib's DPO trainer implements the plain sigmoid DPO loss (paper Eq. 8) only")

    def compute_ref_log_probs(self, model, inputs):  # noqa: D102 - trl hook (precomputed and on-the-fly reference)
        context = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(self.model):  # the reference is the adapter switched off
            unwrapped = self.accelerator.unwrap_model(self.model)
            context = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with torch.no_grad(), context, self.accelerator.autocast():
            return pair_logps(model, inputs)

    def _compute_loss(self, model, inputs, return_outputs):  # noqa: D102 - trl hook
        if return_outputs:
            raise NotImplementedError("qlib's DPO trainer returns the loss only (no logits for compute_metrics)")
        mode = "train" if self.model.training else "eval"
        chosen, rejected = pair_logps(model, inputs)
        if self.precompute_ref_logps:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = self.compute_ref_log_probs(self.ref_model or model, inputs)
        chosen_rewards = self.beta * (chosen - ref_chosen)
        rejected_rewards = self.beta * (rejected - ref_rejected)
        loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
        metrics = {
            "rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
            "rewards/margins": chosen_rewards - rejected_rewards, "logps/chosen": chosen, "logps/rejected": rejected,
        }
        for key, value in metrics.items():
            self._metrics[mode][key].append(self.accelerator.gather(value.detach()).mean().item())
        return loss

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # noqa: D401 - trl hook
        if "prompt_ids" in dataset.column_names:
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        for name in ("chosen_mask", "rejected_mask"):
            if name not in self._signature_columns:
                self._signature_columns.append(name)


class MetricsCallback(TrainerCallback):
    """Collects the per-logging-step training metrics ``keys`` and writes them to ``metrics.csv``.

    With ``resume`` the rows already in the file are kept up to the step the run resumes from, so a resumed
    run's file holds every step once."""

    def __init__(self, path: Path, keys: tuple[str, ...] = METRIC_KEYS, *, resume: bool = False) -> None:
        self.path = path
        self.keys = keys
        self.rows: list[dict[str, Any]] = []
        if resume and path.is_file():
            with open(path, newline="", encoding="utf-8") as handle:
                self.rows = list(csv.DictReader(handle))

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102 - trainer hook
        if logs and "loss" in logs:
            self.rows = [row for row in self.rows if int(row["step"]) < state.global_step]
            self.rows.append({"step": state.global_step, **{k: logs.get(k) for k in self.keys[1:]}})
            self.write()

    def write(self) -> None:
        with open(self.path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(self.keys))
            writer.writeheader()
            writer.writerows(self.rows)


def resume_training(trainer: Any, out_dir: Path, fingerprint: str, keys: tuple[str, ...] = METRIC_KEYS
                    ) -> tuple[Path | None, TrainingClock]:
    """Make ``trainer``'s run resumable: attach its ``metrics.csv`` writer and its :class:`TrainingClock`,
    and return the checkpoint to resume from (for ``trainer.train``) with the clock.

    The checkpoint is the newest one in ``out_dir/trainer`` of a run with this ``fingerprint`` (its settings
    and data). Checkpoints of other settings or data, or unreadable ones, are removed with a warning, never
    resumed: a run restarts rather than mix two."""
    checkpoints = sorted((out_dir / "trainer").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    checkpoint, before = None, 0.0
    if checkpoints:
        try:
            saved = json.loads((checkpoints[-1] / TrainingClock.FILE).read_text())
            if saved["fingerprint"] == fingerprint:
                checkpoint, before = checkpoints[-1], float(saved["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if checkpoint is None:
            log.warning("%s: checkpoint of other settings or data (or unreadable): training afresh", checkpoints[-1])
            shutil.rmtree(out_dir / "trainer", ignore_errors=True)
    clock = TrainingClock(fingerprint, before)
    trainer.add_callback(MetricsCallback(out_dir / "metrics.csv", keys, resume=checkpoint is not None))
    trainer.add_callback(clock)
    return checkpoint, clock


def run_fingerprint(*parts: Any) -> str:
    """What a training run's checkpoints belong to: a hash of its settings, data and starting weights
    (JSON-serialisable parts; the weights as :func:`~qlib.qmodel.scorer.hash_weights`' hex digest)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class TrainingClock(TrainerCallback):
    """Saves the run's ``fingerprint`` and its training seconds in every checkpoint. ``before`` is the seconds
    saved in the checkpoint the run resumes from, so ``seconds()`` sums the executions (work after the last
    checkpoint of an interrupted execution is redone, so it is not counted)."""

    FILE = "qlib_checkpoint.json"

    def __init__(self, fingerprint: str, before: float = 0.0) -> None:
        self.fingerprint = fingerprint
        self.before = before
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return round(self.before + time.perf_counter() - self.start, 2)

    def on_save(self, args, state, control, **kwargs):  # noqa: D102 - trainer hook (after the checkpoint is written)
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            atomic_write_text(checkpoint / self.FILE,
                              json.dumps({"fingerprint": self.fingerprint, "seconds": self.seconds()}))


def micro_batch(batch_size: int, longest: int) -> int:
    """Largest divisor of ``batch_size`` whose micro-batch stays within ~4k tokens per side."""
    limit = max(1, 4096 // max(longest, 1))
    return max(d for d in range(1, batch_size + 1) if batch_size % d == 0 and d <= limit)


def longest_pair(dataset: Any) -> int:
    """Longest prompt + completion in a pre-tokenised dataset."""
    return max(
        len(p) + max(len(c), len(r))
        for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])
    )


def trainer_args(config: Config, out_dir: Path, dataset: Any, *, bf16: bool, max_steps: int = -1) -> TrlDPOConfig:
    """trl ``DPOConfig`` from the qlib profile (β, lr, warm-up, batch, epochs, seed)."""
    cfg = config.dpo
    micro = micro_batch(cfg.batch_size, longest_pair(dataset))
    # A precomputed reference costs one pass over the pairs; computing it on the fly costs one per epoch
    # (and keeps a second model in memory for full fine-tuning).
    precompute = cfg.epochs > 1 or not cfg.lora
    return TrlDPOConfig(
        output_dir=str(out_dir / "trainer"),
        beta=cfg.beta,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type=cfg.lr_scheduler,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=cfg.batch_size // micro,
        num_train_epochs=cfg.epochs,
        max_steps=max_steps,
        seed=config.seed,
        data_seed=config.seed,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        max_length=None,  # format.py already cut every pair to max_length (never the completion)
        precompute_ref_log_probs=precompute,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="steps",  # resumable: an interrupted run continues from its last checkpoint
        save_steps=CHECKPOINT_STEPS,
        save_total_limit=1,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )


def lora_config(section: Any) -> Any:
    """peft LoRA on every linear layer but the LM head, rank and alpha from ``section`` (``config.dpo``, ``config.clone``)."""
    from peft import LoraConfig

    return LoraConfig(
        r=section.lora_r, lora_alpha=section.lora_alpha, lora_dropout=0.0,
        target_modules="all-linear", task_type="CAUSAL_LM",
    )


def make_trainer(
    model: Any, tokenizer: Any, dataset: Any, config: Config, out_dir: Path, *, bf16: bool, max_steps: int = -1
) -> PreTokenizedDPOTrainer:
    """A DPO trainer over a pre-tokenised dataset, with LoRA when ``config.dpo.lora``."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = trainer_args(config, out_dir, dataset, bf16=bf16, max_steps=max_steps)
    collator = MaskedPreferenceCollator(pad_token_id=tokenizer.pad_token_id)
    return PreTokenizedDPOTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, data_collator=collator,
        peft_config=lora_config(config.dpo) if config.dpo.lora else None,
    )


def save_dpo(model: Any, tokenizer: Any, out_dir: Path, meta: dict[str, Any]) -> None:
    """Adapter (LoRA) or full weights as safetensors, the tokenizer, and ``qlib_config.json`` (written last,
    so its presence marks a complete folder). The layout of every trained model: Q models and clones."""
    model.save_pretrained(out_dir / ("adapter" if meta["lora"] else "model"), safe_serialization=True)
    tokenizer.save_pretrained(out_dir / "tokenizer")
    atomic_write_text(out_dir / CONFIG_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def train_dpo(
    pairs_file: str | Path,
    out_dir: str | Path,
    config: Config,
    *,
    model_path: str | Path | None = None,
    tokenizer: Any = None,
    max_steps: int = -1,
) -> Path:
    """Train the Q-value model with step-level DPO on ``pairs_file``; return ``out_dir``.

    ``out_dir`` gets ``adapter/`` (LoRA) or ``model/`` (full) as safetensors, ``tokenizer/``,
    ``qlib_config.json`` and ``metrics.csv``. ``max_steps`` > 0 stops early (smoke runs, benchmarks). A run
    interrupted after a checkpoint (every :data:`CHECKPOINT_STEPS` steps, in ``out_dir/trainer``) resumes
    from it when called again with the same settings and pairs.
    """
    return run_dpo(pairs_file, out_dir, config, model_path=model_path, tokenizer=tokenizer, max_steps=max_steps)[0]


def training_inputs(
    rows_file: str | Path, out_dir: str | Path, config: Config, model_path: str | Path | None, tokenizer: Any,
    what: str,
) -> tuple[Path, str, str, Any, list[dict[str, Any]]]:
    """What every Q-model trainer starts from: the output folder (created), the base model's name and
    folder, its tokenizer (unless given) and the training rows (at most ``dpo.max_pairs``; none is an error)."""
    from transformers import AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_name, base_dir = resolve_base(model_path)
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(base_dir)
    rows = load_rows(rows_file, config.dpo.max_pairs)
    if not rows:
        raise ValueError(f"{rows_file} holds no {what}")
    return out, base_name, base_dir, tokenizer, rows


def run_dpo(
    pairs_file: str | Path, out_dir: str | Path, config: Config, *, model_path: str | Path | None = None,
    tokenizer: Any = None, max_steps: int = -1,
) -> tuple[Path, PreTokenizedDPOTrainer]:
    """:func:`train_dpo`, also returning the trainer (its ``model`` is the trained policy)."""
    from transformers import AutoModelForCausalLM

    out, base_name, base_dir, tokenizer, rows = training_inputs(
        pairs_file, out_dir, config, model_path, tokenizer, "preference pairs")
    dataset, cut = build_dataset(tokenizer, rows, config.dpo.max_length)
    bf16 = config.dpo.bf16 and bf16_supported()
    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base_weights = hash_weights(hashlib.sha256(), model).hexdigest()
    trainer = make_trainer(model, tokenizer, dataset, config, out, bf16=bf16, max_steps=max_steps)
    fingerprint = run_fingerprint("dpo", base_name, base_weights, config.dpo.model_dump(mode="json"), config.seed, rows)
    checkpoint, clock = resume_training(trainer, out, fingerprint)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    meta = {
        "kind": "dpo", "beta": config.dpo.beta, "lora": config.dpo.lora, "base_model": base_name,
        "dtype": "bf16-autocast" if bf16 else "fp32", "bf16_requested": config.dpo.bf16,
        "max_length": config.dpo.max_length, "n_pairs": len(rows), "pairs_file": str(pairs_file),
        "pairs_cut_right": cut,
        "precompute_ref_log_probs": trainer.args.precompute_ref_log_probs,
        "micro_batch": trainer.args.per_device_train_batch_size,
        "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
        "train_seconds": clock.seconds(), "train_loss": result.training_loss,
        "steps": trainer.state.global_step, "resumed_from": checkpoint.name if checkpoint else None,
        "seed": config.seed, "config": config.to_dict(),
    }
    save_dpo(trainer.model, tokenizer, out, meta)
    shutil.rmtree(out / "trainer", ignore_errors=True)  # the checkpoints: the finished run needs none
    trainer.model.eval()
    return out, trainer
