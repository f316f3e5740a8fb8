"""A tiny ChatML tokenizer and a tiny random Llama, built in code (tests and smoke runs; seconds, no files)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = (
    "You are web shopping. Solve a question answering task with interleaving Thought, Action, Observation "
    "steps. Thought: I should search for the entity. Action: Search[Scott Derrickson] search[blue shoes] "
    "click[Buy Now] Lookup[born] Finish[yes] Question: Were Scott Derrickson and Ed Wood of the same "
    "nationality? Observation: Scott Derrickson (born July 16, 1966) is an American director. OK "
    "0123456789 [SEP] Instruction: i need a long clip-in hair extension, price lower than 40.00 dollars"
)


def tiny_tokenizer(vocab_size: int = 400) -> Any:
    """A byte-level BPE tokenizer with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


def tiny_llama(tokenizer: Any, hidden: int = 48, layers: int = 2, seed: int = 0) -> Any:
    """A random ``LlamaForCausalLM`` (fp32, eval mode) over ``tokenizer``'s vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def save_tiny(path: str | Path, hidden: int = 48, layers: int = 2, seed: int = 0) -> Path:
    """Write a tiny model + tokenizer folder (safetensors) usable as ``model_path``."""
    path = Path(path)
    tokenizer = tiny_tokenizer()
    tiny_llama(tokenizer, hidden, layers, seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
