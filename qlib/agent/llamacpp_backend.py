"""The ``llamacpp`` policy backend: the embedded SmolLM2 GGUF in-process through llama-cpp-python.

Sampling runs on llama.cpp's low-level API so that the cost of n samples stays close to one:

* **KV-cache reuse** — the prompt lives in sequence 0 of a unified KV cache; a new prompt only
  evaluates the tokens after its longest common prefix with the previous one (consecutive steps,
  and tasks that share the instruction and in-context examples, pay for the new tokens only);
* **one prefill, n sequences** — the prompt's cells are shared (``llama_memory_seq_cp``) with
  sequences 1..n-1 and the n continuations are decoded together, one batch per step.

Each sequence samples in numpy from the context's logits with its own seeded generator (temperature,
top-p); ``logprob`` sums the raw ``log_softmax`` of the sampled tokens. Constrained actions use the
same byte-level automaton as the hf backend (:class:`qlib.agent.grammar.GrammarMasker` over the GGUF
vocabulary), including its budget rule, so every constrained turn ends with a valid action within
``max_tokens``. (The GBNF of :class:`~qlib.agent.grammar.ActionGrammar` is what llama.cpp servers
get through the ``openai`` backend; in-process, the mask is cached per state and applied to all n
sequences at numpy speed instead of running llama.cpp's grammar sampler over the vocabulary n times
per step.)
"""
from __future__ import annotations

import ctypes
import logging
import os
import random
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qlib.agent.candidates import cut_at_stop, make_candidate, sample_seeds
from qlib.agent.base import Candidate, ContextOverflowError, Message
from qlib.agent.grammar import ActionGrammar, GrammarMasker, State, TokenIndex
from qlib.envs.base import ActionSpace
from qlib.export import gguf_for

MAX_SEQS = 16  # sequences decoded together (larger n is sampled in chunks)
log = logging.getLogger(__name__)


class PromptTooLongError(ContextOverflowError):
    """The rendered prompt plus the n continuations does not fit in ``n_ctx``."""


def ensure_passive_openmp() -> bool:
    """Ask OpenMP (llama.cpp's and torch's shared libgomp) not to spin-wait; False if it is too late.

    With libgomp's default active waiting, llama.cpp's prompt evaluation on a busy 2-core machine
    took ≈12 s instead of ≈0.9 s for 100 tokens. libgomp reads ``OMP_WAIT_POLICY`` once, when it is
    loaded (by ``import torch`` or ``import llama_cpp``), so it has to be set before either import.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return True
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if "torch" in sys.modules or "llama_cpp" in sys.modules:
        log.warning("OMP_WAIT_POLICY was unset when torch/llama_cpp were imported; llama.cpp may run far "
                    "slower on a busy CPU (export OMP_WAIT_POLICY=PASSIVE before starting Python)")
        return False
    return True


@dataclass
class _Seq:
    """One continuation being sampled."""

    rng: np.random.Generator
    state: State | None
    tokens: list[int] = field(default_factory=list)
    logprob: float = 0.0
    done: bool = False
    text: str = ""


ensure_passive_openmp()  # at import: the earliest point this module can do it


class LlamaCppPolicy:
    """:class:`qlib.agent.base.Policy` over llama-cpp-python (default: the embedded SmolLM2 GGUF).

    ``config.model`` picks the GGUF (:func:`qlib.export.gguf_for`): ``smollm2-135m`` (the embedded base),
    ``smollm2-135m-bc`` (the behaviour-cloned agent of ``env_name``, exported on first use) or a file.
    """

    def __init__(self, config: Any, env_name: str | None = None, *, model_path: str | Path | None = None,
                 verbose: bool = False):
        ensure_passive_openmp()
        from llama_cpp import _internals, _logger
        from llama_cpp import llama_cpp as C
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        _logger.set_verbose(verbose)
        self.C = C
        self.config = config
        self.env_name = env_name
        mparams = C.llama_model_default_params()
        self.model = _internals.LlamaModel(path_model=str(model_path or gguf_for(config, env_name)),
                                           params=mparams, verbose=verbose)
        cparams = C.llama_context_default_params()
        cparams.n_ctx = config.n_ctx
        cparams.n_batch = cparams.n_ubatch = 512
        cparams.n_seq_max = MAX_SEQS
        cparams.kv_unified = True  # sequences share the prompt's cells and the whole n_ctx
        cparams.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_DISABLED  # CPU: 5 sequences 82 vs 122 ms/step
        cparams.n_threads = cparams.n_threads_batch = config.n_threads
        self.ctx = _internals.LlamaContext(model=self.model, params=cparams, verbose=verbose)
        self.batch = _internals.LlamaBatch(n_tokens=512, embd=0, n_seq_max=1, verbose=verbose)
        self.memory = C.llama_get_memory(self.ctx.ctx)
        self.n_vocab = self.model.n_vocab()
        vocab = self.model.vocab
        self.eos_ids = [t for t in range(self.n_vocab) if C.llama_vocab_is_eog(vocab, t)]
        self.index = TokenIndex([self._piece(t) for t in range(self.n_vocab)])
        meta = self.model.metadata()
        self.formatter = Jinja2ChatFormatter(
            template=meta["tokenizer.chat_template"],
            eos_token=self.model.token_get_text(self.model.token_eos()) if self.model.token_eos() >= 0 else "",
            bos_token=self.model.token_get_text(self.model.token_bos()) if self.model.token_bos() >= 0 else "",
        )
        self._cached: list[int] = []  # tokens held by sequence 0
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._maskers: dict[ActionGrammar, GrammarMasker] = {}
        self.counters = {"prompt_evaluated": 0, "prompt_reused": 0, "generated": 0}

    # ------------------------------------------------------------------ Policy
    def propose(
        self,
        messages: list[Message],
        n: int,
        *,
        temperature: float | None = None,
        action_space: ActionSpace | None = None,
        seed: int | None = None,
    ) -> list[Candidate]:
        temperature = self.config.temperature if temperature is None else temperature
        tokens = self.tokenize(self.render(messages))
        grammar = ActionGrammar.from_space(action_space, self.env_name) if self.config.constrain_actions else None
        masker = self._masker(grammar) if grammar else None
        seeds = sample_seeds(seed, n, self._rng)
        out: list[Candidate] = []
        with self._lock:
            for start in range(0, n, MAX_SEQS):
                chunk = seeds[start : start + MAX_SEQS]
                for s in self._sample(tokens, chunk, temperature, masker):
                    out.append(make_candidate(s.text, self.env_name, logprob=s.logprob,
                                              n_tokens=len(s.tokens), prompt_tokens=len(tokens)))
        return out

    def warm(self, messages: list[Message]) -> int:
        """Evaluate ``messages``' prompt into the KV cache without sampling; returns its token count."""
        tokens = self.tokenize(self.render(messages))
        with self._lock:
            self._prefill(tokens)
        return len(tokens)

    def render(self, messages: list[Message]) -> str:
        """The chat rendered by the GGUF's template, ending with the assistant header."""
        return self.formatter(messages=messages).prompt

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def detokenize(self, tokens: list[int]) -> str:
        return self.model.detokenize(tokens, special=False).decode("utf-8", errors="ignore")

    # ------------------------------------------------------------------ sampling
    def _sample(self, prompt: list[int], seeds: list[int], temp: float, masker: GrammarMasker | None) -> list[_Seq]:
        cfg, n = self.config, len(seeds)
        if len(prompt) + n * cfg.max_tokens > cfg.n_ctx:
            raise PromptTooLongError(
                f"prompt of {len(prompt)} tokens + {n} x max_tokens {cfg.max_tokens} exceeds n_ctx "
                f"{cfg.n_ctx} (raise policy.n_ctx, lower n or max_tokens, or shorten the history)"
            )
        logits = self._prefill(prompt)
        start = masker.matcher.start if masker else None
        seqs = [_Seq(np.random.default_rng(s), start) for s in seeds]
        for s in range(1, n):
            self.C.llama_memory_seq_cp(self.memory, 0, s, -1, -1)
        rows = {i: logits for i in range(n)}
        try:
            while rows:
                for i, row in rows.items():
                    self._step(seqs[i], row, temp, masker)
                live = [i for i in rows if not seqs[i].done]
                rows = self._decode([(seqs[i].tokens[-1], len(prompt) + len(seqs[i].tokens) - 1, i) for i in live])
        finally:
            for s in range(1, n):
                self.C.llama_memory_seq_rm(self.memory, s, -1, -1)
            self.C.llama_memory_seq_rm(self.memory, 0, len(prompt), -1)
        for seq in seqs:
            seq.text = self.detokenize(seq.tokens) if masker else cut_at_stop(self.detokenize(seq.tokens), cfg.stop)[0]
        return seqs

    def _step(self, seq: _Seq, logits: np.ndarray, temp: float, masker: GrammarMasker | None) -> None:
        """Sample the next token of ``seq`` from ``logits``; mark it done at the end of its turn."""
        cfg = self.config
        allow = masker.allow(seq.state, cfg.max_tokens - len(seq.tokens), self.eos_ids, self.n_vocab) if masker else None
        tok = _draw(logits, temp, cfg.top_p, seq.rng, allow)
        if tok in self.eos_ids:
            seq.done = True
            return
        seq.logprob += float(logits[tok]) - _logsumexp(logits)
        seq.tokens.append(tok)
        self.counters["generated"] += 1
        if masker:
            seq.state = masker.advance(seq.state, tok)
        elif cfg.stop and cut_at_stop(self.detokenize(seq.tokens[-16:]), cfg.stop)[1]:
            seq.done = True
        if len(seq.tokens) >= cfg.max_tokens:
            seq.done = True

    def _prefill(self, prompt: list[int]) -> np.ndarray:
        """Make sequence 0 hold ``prompt`` (reusing the common prefix) and return its last logits."""
        keep = 0
        for a, b in zip(self._cached, prompt[:-1]):  # the last token is always re-evaluated for logits
            if a != b:
                break
            keep += 1
        self.C.llama_memory_seq_rm(self.memory, 0, keep, -1)
        self._cached = list(prompt)
        self.counters["prompt_reused"] += keep
        self.counters["prompt_evaluated"] += len(prompt) - keep
        rows: dict[int, np.ndarray] = {}
        for at in range(keep, len(prompt), 512):
            chunk = prompt[at : at + 512]
            last = at + len(chunk) == len(prompt)
            rows = self._decode([(t, at + j, 0) for j, t in enumerate(chunk)], logits_last_only=last, want=last)
        return rows[0]

    def _decode(self, items: list[tuple[int, int, int]], *, logits_last_only: bool = False,
                want: bool = True) -> dict[int, np.ndarray]:
        """Decode (token, position, sequence) items; logits per sequence (copies)."""
        if not items:
            return {}
        b = self.batch.batch
        b.n_tokens = len(items)
        for j, (tok, pos, seq) in enumerate(items):
            b.token[j], b.pos[j], b.n_seq_id[j], b.seq_id[j][0] = tok, pos, 1, seq
            b.logits[j] = want and (not logits_last_only or j == len(items) - 1)
        self.ctx.decode(self.batch)
        if not want:
            return {}
        picks = [(len(items) - 1, items[-1][2])] if logits_last_only else [(j, it[2]) for j, it in enumerate(items)]
        return {seq: np.ctypeslib.as_array(self.C.llama_get_logits_ith(self.ctx.ctx, j), shape=(self.n_vocab,)).copy()
                for j, seq in picks}

    # ------------------------------------------------------------------ helpers
    def _masker(self, grammar: ActionGrammar) -> GrammarMasker:
        if grammar not in self._maskers:
            if len(self._maskers) >= 32:
                self._maskers.pop(next(iter(self._maskers)))
            self._maskers[grammar] = GrammarMasker(grammar, self.index)
        return self._maskers[grammar]

    def _piece(self, token: int) -> bytes | None:
        """Bytes of a normal token (None for control tokens such as ``<|im_end|>``)."""
        C = self.C
        if self.model.token_get_attr(token) & (C.LLAMA_TOKEN_ATTR_CONTROL | C.LLAMA_TOKEN_ATTR_UNKNOWN | C.LLAMA_TOKEN_ATTR_UNUSED):
            return None
        buf = ctypes.create_string_buffer(256)
        size = C.llama_token_to_piece(self.model.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:size] if size > 0 else None


def _draw(logits: np.ndarray, temp: float, top_p: float, rng: np.random.Generator, allow: np.ndarray | None) -> int:
    """One token from ``logits`` at temperature ``temp`` with nucleus ``top_p`` (greedy at temp 0)."""
    z = logits.astype(np.float64)
    if allow is not None:
        z = np.where(allow, z, -np.inf)
    if temp <= 0:
        return int(np.argmax(z))
    z = (z - z.max()) / temp
    p = np.exp(z)
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(len(p), p=p))


def _logsumexp(x: np.ndarray) -> float:
    top = float(x.max())
    return top + float(np.log(np.exp(x - top).sum()))
