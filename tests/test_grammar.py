"""Constrained-action grammars: one language, three renderings (GBNF, regex, byte automaton + masks)."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch/llama_cpp load libgomp (see llamacpp_backend)

import re

import numpy as np
import pytest

from qlib.agent.grammar import ActionGrammar, GrammarMasker, TokenIndex, gbnf_literal
from qlib.agent.parse import parse_turn
from qlib.envs.base import ActionSpace

TRICKY = ("< Prev", "Next >", "6.76 fl oz (pack of 1)", 'say "hi" \\ ok', "café ☕ 𝄞", "a", "ab", "Buy Now", "x-large | 2^3")
WEBSHOP = ActionSpace({"click": TRICKY})
START = ActionSpace({"search": None})
HOTPOT = ActionSpace({"Search": None, "Lookup": None, "Finish": None})


def grammar(space: ActionSpace, env: str) -> ActionGrammar:
    g = ActionGrammar.from_space(space, env)
    assert g is not None
    return g


@pytest.mark.parametrize(
    ("space", "env", "text", "ok"),
    [
        (WEBSHOP, "webshop", "Thought: go\nAction: click[Next >]", True),
        (WEBSHOP, "webshop", "Thought: go\nAction: click[ab]", True),
        (WEBSHOP, "webshop", "Thought: go\nAction: click[abc]", False),
        (WEBSHOP, "webshop", "Thought: go\nAction: click[café ☕ 𝄞]", True),
        (WEBSHOP, "webshop", 'Thought: x\nAction: click[say "hi" \\ ok]', True),
        (WEBSHOP, "webshop", "Thought: x [y]\nAction: click[a]", False),  # brackets never in thoughts
        (WEBSHOP, "webshop", "Thought: x\nAction: search[a]", False),  # search not in this space
        (START, "webshop", "Thought: x\nAction: search[red shoes]", True),
        (START, "webshop", "Thought: x\nAction: search[ red]", False),  # no leading blank argument
        (START, "webshop", "Thought: x\nAction: search[" + "y" * 151 + "]", False),  # bounded
        (HOTPOT, "hotpotqa", "Thought: go Action: Search[x]", True),
        (HOTPOT, "hotpotqa", "Thought: go Act Action: Lookup[x y]", True),
        (HOTPOT, "hotpotqa", "Thought: go\nAction: Search[x]", False),  # HotPotQA turns are one line
        (HOTPOT, "hotpotqa", "Thought: a Action: b Action: Search[x]", False),  # first SEP ends the thought
        (HOTPOT, "hotpotqa", "Thought: go Action: Search[x] ", False),
    ],
)
def test_language(space, env, text, ok):
    g = grammar(space, env)
    assert g.accepts(text) is ok
    if ok:  # the parser reads back exactly the generated action, which the space allows
        turn = parse_turn(text, env)
        verb, _, arg = turn.action.partition("[")
        assert turn.valid and space.allows(verb, arg[:-1])


def test_unusable_choices_are_dropped_and_empty_spaces_give_no_grammar():
    g = ActionGrammar.from_space(ActionSpace({"click": ("ok", "bad [x]", "two\nlines", "  ")}), "webshop")
    assert g is not None and g.verbs == (("click", ("ok",)),)
    assert ActionGrammar.from_space(ActionSpace({}), "webshop") is None
    assert ActionGrammar.from_space(ActionSpace({"click": ()}), "webshop") is None
    assert ActionGrammar.from_space(None) is None


def test_gbnf_escaping():
    assert gbnf_literal('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    assert gbnf_literal("é☕𝄞") == '"\\u00E9\\u2615\\U0001D11E"'
    text = grammar(WEBSHOP, "webshop").gbnf()
    assert '"say \\"hi\\" \\\\ ok"' in text and '"< Prev"' in text and "root ::=" in text


@pytest.mark.parametrize(("space", "env"), [(WEBSHOP, "webshop"), (START, "webshop"), (HOTPOT, "hotpotqa")])
def test_gbnf_compiles_in_llama_cpp(space, env):
    """llama.cpp's own grammar parser accepts every rendering (it returns NULL on a syntax error)."""
    pytest.importorskip("llama_cpp")
    from llama_cpp import llama_cpp as C

    from qlib.provision import gguf_path

    params = C.llama_model_default_params()
    params.vocab_only = True
    model = C.llama_model_load_from_file(str(gguf_path()).encode(), params)
    try:
        vocab = C.llama_model_get_vocab(model)
        g = grammar(space, env)
        for text in (g.gbnf(), g.gbnf(max_thought=50), g.action_only().gbnf()):
            sampler = C.llama_sampler_init_grammar(vocab, text.encode(), b"root")
            assert sampler, text
            C.llama_sampler_free(sampler)
    finally:
        C.llama_model_free(model)


@pytest.mark.parametrize(("space", "env"), [(WEBSHOP, "webshop"), (HOTPOT, "hotpotqa")])
def test_regex_matches_the_turns_the_grammar_accepts(space, env):
    g = grammar(space, env)
    sep = g.sep
    args = TRICKY if space is WEBSHOP else ("Colorado orogeny", "1,800 to 7,000 ft")
    verbs = [v for v, _ in g.verbs]
    for verb in verbs:
        for arg in args:
            text = f"Thought: I think so{sep}{verb}[{arg}]"
            assert g.accepts(text)
            assert re.fullmatch(g.regex(), text), text
            assert re.fullmatch(g.regex(max_thought=20), text), text
    assert not re.fullmatch(g.regex(max_thought=5), f"Thought: I think so{sep}{verbs[0]}[{args[0]}]")


# ---------------------------------------------------------------- token masks on a synthetic BPE vocabulary

def synthetic_vocab() -> list[bytes | None]:
    """All single bytes plus multi-byte tokens that straddle every boundary of the language."""
    tokens: list[bytes | None] = [None] + [bytes([b]) for b in range(256)]  # id 0 = end of turn
    tokens += [t.encode() for t in (
        "Thought", "Thought:", " I", " think", "\nAction", "\nAction:", ": click", ": click[", " click[", "click[",
        "Next", " >]", " >", "<", " Prev]", "6.76", " fl oz", " (pack", " of 1)]", "café", " ☕", "]", "]\n",
        " Action", " Action:", ": Search[", "Search[", "Finish[", "Lookup[", "[red", " shoes]", "a]", "ab]",
        "x\n", "so.\nAct", "ion: ", "tion:", " 𝄞", "Buy Now]", " Now", "\u2615]".encode("utf-8").decode("utf-8"),
    )]
    tokens.append("𝄞".encode()[:2])  # a token that ends inside a UTF-8 character
    tokens.append("𝄞".encode()[2:] + b"]")
    return tokens


@pytest.mark.parametrize(("space", "env"), [(WEBSHOP, "webshop"), (START, "webshop"), (HOTPOT, "hotpotqa")])
@pytest.mark.parametrize("budget", [12, 40, 400])
def test_random_walks_under_the_mask_always_end_in_the_language(space, env, budget):
    """Uniform sampling among allowed tokens (the worst 'model') always yields a complete, valid turn
    within the token budget — even when tokens cross the thought/SEP/argument boundaries."""
    g = grammar(space, env)
    vocab = synthetic_vocab()
    masker = GrammarMasker(g, TokenIndex(vocab))
    rng = np.random.default_rng(budget)
    min_tokens = masker.matcher.min_remaining(masker.matcher.start)
    for _ in range(30):
        state, out = masker.matcher.start, b""
        for step in range(budget + 1):
            allow = masker.allow(state, budget - step, [0], len(vocab))
            assert allow.any()
            tok = int(rng.choice(np.flatnonzero(allow)))
            if tok == 0:
                break
            out += vocab[tok]
            state = masker.advance(state, tok)
            assert state is not None
        text = out.decode("utf-8")
        assert tok == 0 and g.accepts(text), text
        if budget >= min_tokens:
            assert step <= budget, text
        turn = parse_turn(text, env)
        verb, _, arg = turn.action.partition("[")
        assert turn.valid and space.allows(verb, arg[:-1]), text


def test_masks_allow_exactly_the_viable_tokens():
    """Brute force: a token is allowed iff the automaton survives its bytes (big budget)."""
    g = grammar(WEBSHOP, "webshop")
    vocab = synthetic_vocab()
    masker = GrammarMasker(g, TokenIndex(vocab))
    m = g.matcher
    for prefix in ("", "Thou", "Thought: so", "Thought: so\nAct", "Thought: so\nAction: cl", "Thought: so\nAction: click[6.76 fl"):
        state = m.start
        for b in prefix.encode():
            state = m.step(state, b)
        allow = masker.allow(state, 10_000, [0], len(vocab))
        for i, tok in enumerate(vocab):
            if tok is None:
                continue
            s = state
            for b in tok:
                s = m.step(s, b) if s is not None else None
            assert allow[i] == (s is not None), (prefix, tok)
