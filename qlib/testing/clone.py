"""A stand-in behaviour-cloned agent: the embedded SmolLM2 plus a random, non-zero LoRA adapter.

``lora_clone(out)`` writes a clone folder in the trainer's layout (``adapter/``, ``tokenizer/``,
``qlib_config.json``; see :mod:`qlib.export`) in about a second, so that the export, the backends and the
benchmark can be exercised before (or without) a trained clone. With the default ``scale`` the adapter
moves the next-token logits by ≈ 0.6 on average (4-5x llama.cpp's q8_0 rounding) and the model still
writes sensible ReAct turns.
"""
from __future__ import annotations

import json
from pathlib import Path


def lora_clone(out: str | Path, *, scale: float = 0.6, rank: int = 4, seed: int = 0) -> Path:
    """Save the embedded base + a seeded random rank-``rank`` LoRA on every linear layer (A and B times
    ``scale``) as a clone folder at ``out``; return ``out``."""
    import torch
    from peft import LoraConfig, get_peft_model

    from qlib.provision import EMBEDDED_NAME, load_model

    out = Path(out)
    model, tokenizer = load_model()
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(init_lora_weights=False, r=rank, target_modules="all-linear"))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_" in name:
                weight.mul_(scale)
    model.save_pretrained(out / "adapter", safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")
    meta = {"kind": "sft", "lora": True, "base_model": EMBEDDED_NAME, "note": f"random LoRA x{scale} (qlib.testing)"}
    (out / "qlib_config.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out
