"""The DPO implicit Q-value (paper Eq. 9): Q(u, τ, a) = β Σ_{tokens of a} [log πθ − log πref].

The shared context (u, τ) is encoded once per model and its KV cache is reused for all n candidates, which
run together as one packed sequence against it (a block-diagonal causal 4D mask, per-candidate positions;
no padding is computed). Across the steps of one episode the context only grows (the last chosen turn and
its observation are appended), so each model keeps the KV cache of the context it encoded last
(:class:`PrefixCache`) and encodes only the tokens after the longest common prefix: a step costs its new
tokens, not the whole history. With LoRA the reference is the same network with the adapter disabled.
"""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from qlib.qmodel.format import Encoded, Message, encode

VARIANTS = ("sum", "official")


def is_peft(model: Any) -> bool:
    """Whether ``model`` is a peft model (its adapter can be switched off)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def pad_right(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """A [len(rows), longest] long tensor, padded on the right with ``value``."""
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def packed_inputs(prefix_len: int, rows: Sequence[Sequence[int]], dtype: torch.dtype, device: Any) -> dict[str, torch.Tensor]:
    """Model inputs that run ``rows`` as one packed sequence after a cached prefix of ``prefix_len`` tokens.

    Each row sees the whole prefix and its own earlier tokens (a 4D additive mask, block-diagonal causal
    over the rows) and gets the positions it would have right after the prefix; no padding is computed.
    """
    lengths = torch.tensor([len(r) for r in rows])
    local = torch.cat([torch.arange(int(n)) for n in lengths])
    segment = torch.repeat_interleave(torch.arange(len(rows)), lengths)
    own = (segment[:, None] == segment[None, :]) & (local[:, None] >= local[None, :])
    allowed = torch.cat([torch.ones(len(local), prefix_len, dtype=torch.bool), own], 1)
    mask = torch.zeros(1, 1, *allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return {
        "input_ids": torch.tensor([[t for r in rows for t in r]], dtype=torch.long, device=device),
        "position_ids": (prefix_len + local)[None].to(device),
        "attention_mask": mask.to(device),
    }


def hash_weights(digest: Any, model: Any) -> Any:
    """Feed ``model``'s parameters and buffers (names and bytes) into the hashlib ``digest`` and return it: what a
    run started from, which its folder name alone cannot tell (a clone retrained on a fresh machine is a near
    twin at the same path). About 1 s for 135M parameters."""
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest


def model_dtype(model: Any) -> torch.dtype:
    """The floating dtype of ``model``'s parameters."""
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


class PrefixCache:
    """The KV cache of the last prompt one model encoded, kept for the next call.

    :func:`prefill` encodes only the tokens after the longest common prefix of the new prompt and the cached
    one (the cache is cropped there first): the next step of an episode pays for the turn and observation
    it added, another episode of the same environment still reuses the shared instruction head. Candidate
    tokens that a caller runs against the returned cache are cropped away on the next call.
    """

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.kv: Any = None
        self.reused_tokens = 0  # prompt tokens taken from the cache instead of recomputed


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    k = 0
    for x, y in zip(a, b):
        if x != y:
            break
        k += 1
    return k


def prefill(model: Any, prompt_ids: Sequence[int], cache: PrefixCache | None = None, **kwargs: Any) -> tuple[Any, Any]:
    """Forward ``prompt_ids`` (``kwargs`` go to the model) with ``use_cache``; (output, past_key_values).

    With a :class:`PrefixCache` only the part after the cached common prefix is run (at least the last
    token, whose output the caller needs), and the cache then holds this prompt.
    """
    device = next(model.parameters()).device
    reuse = 0
    if cache is not None and cache.kv is not None:
        reuse = min(common_prefix(cache.ids, prompt_ids), len(prompt_ids) - 1)
        if reuse > 0:  # drop everything after the common prefix (also the candidates run last time)
            cache.kv.crop(-(cache.kv.get_seq_length() - reuse))
    past = cache.kv if cache is not None and reuse > 0 else None
    out = model(input_ids=torch.tensor([list(prompt_ids[reuse:])], device=device), past_key_values=past,
                use_cache=True, **kwargs)
    if cache is not None:
        cache.ids, cache.kv = list(prompt_ids), out.past_key_values
        cache.reused_tokens += reuse
    return out, out.past_key_values


def completion_logits(model: Any, prompt_ids: Sequence[int], completions: Sequence[Sequence[int]],
                      cache: PrefixCache | None = None) -> torch.Tensor:
    """Logits predicting every completion token, [n, longest, vocab] (zero past a row's end).

    The prompt is encoded once (only its uncached tail when ``cache`` holds a prefix of it); all completions
    (minus their last token, which predicts nothing) then run as one packed sequence against its KV cache.
    Differentiable: DPO training runs the same computation with gradients (:mod:`qlib.qmodel.dpo`).
    """
    device = next(model.parameters()).device
    out, past = prefill(model, prompt_ids, cache, logits_to_keep=1)
    first = out.logits[0, -1].float()
    heads = [list(c[:-1]) for c in completions]
    result = torch.zeros(len(completions), max(len(c) for c in completions), first.shape[-1], device=device)
    result[:, 0] = first
    if any(heads):
        inputs = packed_inputs(len(prompt_ids), [h for h in heads if h], model_dtype(model), device)
        logits = model(**inputs, past_key_values=past, use_cache=True).logits[0].float()
        offset = 0
        for i, h in enumerate(heads):
            result[i, 1:len(h) + 1] = logits[offset:offset + len(h)]
            offset += len(h)
    return result


candidate_logits = torch.inference_mode()(completion_logits)
candidate_logits.__doc__ = """:func:`completion_logits` without gradients (scoring)."""


def combine(
    policy_logits: torch.Tensor, ref_logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
    beta: float, variant: str = "sum", length_normalise: bool = False,
) -> torch.Tensor:
    """Per-candidate Q from the two models' logits at the completion tokens ([n, L, V], ids/mask [n, L])."""
    idx = ids.unsqueeze(-1)
    mask = mask.to(policy_logits.dtype)
    count = mask.sum(1).clamp(min=1)
    if variant == "official":  # the released code: mean_t log_softmax(logits_θ - logits_ref)[a_t]
        per_token = F.log_softmax(policy_logits - ref_logits, -1).gather(-1, idx).squeeze(-1)
        return (per_token * mask).sum(1) / count
    if variant != "sum":
        raise ValueError(f"unknown scoring variant {variant!r}; expected one of {VARIANTS}")
    ratio = F.log_softmax(policy_logits, -1).gather(-1, idx) - F.log_softmax(ref_logits, -1).gather(-1, idx)
    q = beta * (ratio.squeeze(-1) * mask).sum(1)
    return q / count if length_normalise else q


class DPOQModel:
    """Q-value model = a DPO-trained policy and its reference (paper Eq. 9)."""

    kind = "dpo"

    def __init__(
        self, policy: Any, tokenizer: Any, beta: float, *, ref: Any = None, max_length: int | None = None,
        variant: str = "sum", length_normalise: bool = False, max_batch: int = 16, reuse_cache: bool = True,
    ) -> None:
        if ref is None and not is_peft(policy):
            raise ValueError("give a reference model, or a peft policy whose disabled adapter is the reference")
        if variant not in VARIANTS:
            raise ValueError(f"unknown scoring variant {variant!r}; expected one of {VARIANTS}")
        self.policy, self.ref, self.tokenizer, self.beta = policy.eval(), ref, tokenizer, beta
        if ref is not None:
            ref.eval()
        self.max_length, self.variant, self.length_normalise, self.max_batch = max_length, variant, length_normalise, max_batch
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.path = ""  # the folder it was loaded from (set by load_q_model)
        self.scored_tokens = 0  # tokens run through each model (the prompt's uncached tokens + all candidate tokens)
        self.calls = 0
        # one KV cache per model (policy, reference): consecutive steps of an episode only encode what is new
        self.caches = {"policy": PrefixCache(), "ref": PrefixCache()} if reuse_cache else None

    @property
    def reused_tokens(self) -> int:
        """Prompt tokens per model taken from the KV cache of the previous call instead of recomputed."""
        return self.caches["policy"].reused_tokens if self.caches else 0

    def reference(self) -> tuple[Any, contextlib.AbstractContextManager]:
        """(model, context) that compute the reference log-probabilities."""
        if self.ref is not None:
            return self.ref, contextlib.nullcontext()
        return self.policy, self.policy.disable_adapter()

    def encode(self, messages: Sequence[Message], completions: Sequence[str | Sequence[Message]]) -> list[Encoded]:
        """The token ids scored for each completion (shared, left-truncated prompt)."""
        return encode(self.tokenizer, messages, completions, self.max_length)

    def score(self, messages: Sequence[Message], candidates: Sequence[str]) -> list[float]:
        """Q of each candidate assistant turn after the chat ``messages`` (ending with a user turn)."""
        return self.score_completions(messages, candidates)

    def score_completions(self, messages: Sequence[Message], completions: Sequence[str | Sequence[Message]]) -> list[float]:
        """Q of each completion: a turn, or a multi-turn trajectory (only assistant tokens count)."""
        if not completions:
            return []
        encoded = self.encode(messages, completions)
        scores: list[float] = []
        for start in range(0, len(encoded), self.max_batch):
            scores += self._score_batch(encoded[start:start + self.max_batch])
        self.calls += 1
        return scores

    def _score_batch(self, batch: Sequence[Encoded]) -> list[float]:
        prompt, rows = batch[0].prompt_ids, [e.completion_ids for e in batch]
        caches = self.caches or {}
        before = caches["policy"].reused_tokens if caches else 0
        policy_logits = candidate_logits(self.policy, prompt, rows, caches.get("policy"))
        ref_model, context = self.reference()
        with context:
            ref_logits = candidate_logits(ref_model, prompt, rows, caches.get("ref"))
        ids = pad_right(rows, self.pad_id).to(policy_logits.device)
        mask = pad_right([e.completion_mask for e in batch], 0).to(policy_logits.device)
        reused = (caches["policy"].reused_tokens - before) if caches else 0
        self.scored_tokens += len(prompt) - reused + sum(len(r) for r in rows)
        q = combine(policy_logits, ref_logits, ids, mask, self.beta, self.variant, self.length_normalise)
        return q.tolist()

    @torch.inference_mode()
    def score_naive(self, messages: Sequence[Message], completions: Sequence[str | Sequence[Message]]) -> list[float]:
        """The same Q with one full forward of prompt + completion per candidate and model (reference check)."""
        scores = []
        for e in self.encode(messages, completions):
            ids = torch.tensor([e.prompt_ids + e.completion_ids], device=next(self.policy.parameters()).device)
            p, n = len(e.prompt_ids), len(e.completion_ids)
            logits = []
            for model, context in ((self.policy, contextlib.nullcontext()), self.reference()):
                with context:
                    logits.append(model(input_ids=ids).logits[:, p - 1:p + n - 1].float())
            target = ids[:, p:]
            mask = torch.tensor([e.completion_mask], device=ids.device)
            scores += combine(logits[0], logits[1], target, mask, self.beta, self.variant, self.length_normalise).tolist()
        return scores
