"""Constrained actions: one language per :class:`ActionSpace`, three renderings.

The language of an assistant turn (``with_thought=True``)::

    "Thought: " THOUGHT SEP VERB "[" ARG "]"

* ``SEP`` is the env's layout (its registry entry's ``action_separator``): ``"\\nAction: "`` (two
  lines) or ``" Action: "`` (one line); the first occurrence of ``SEP`` ends the thought.
* ``THOUGHT`` is free text without line breaks (``\\n``, ``\\r``) or square brackets (so no parsable action can hide in it;
  :mod:`qlib.agent.parse` then reads exactly the action the grammar produced). It is not bounded
  here: the backends bound the whole turn by ``max_tokens`` (hf masks by the remaining budget,
  llama.cpp finishes an unfinished turn with the action-only grammar).
* ``ARG`` is, per verb, either one of the space's choices (WebShop's clickables, verbatim) or free
  text of 1..``max_arg`` characters without line breaks/brackets, not starting with a space.

Renderings: :meth:`ActionGrammar.gbnf` (llama.cpp ``LlamaGrammar``, llama.cpp server ``grammar``),
:meth:`ActionGrammar.regex` (vLLM guided decoding; the thought part is a superset there: it does not
exclude an inner ``SEP``) and :meth:`ActionGrammar.matcher` (a deterministic byte-level automaton;
:class:`GrammarMasker` turns it into cached per-state token masks over any vocabulary, used by the
hf and in-process llamacpp backends). The three agree on every turn whose thought has no inner
``SEP`` (the parser reads both forms the same way, since a thought cannot contain brackets).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from qlib.envs.base import ActionSpace
from qlib.envs.registry import env_names, get_spec

THOUGHT_PREFIX = "Thought: "
DEFAULT_SEP = "\nAction: "
MAX_ARG_CHARS = 150
THOUGHT_EXCLUDED = "\n\r[]"
ARG_EXCLUDED = "\n\r[]"

State = tuple  # hashable matcher state, see ByteMatcher
NO = np.iinfo(np.int32).max  # "token not allowed" in distance arrays


def separator(env_name: str | None, space: ActionSpace | None = None) -> str:
    """The thought/action separator of ``env_name`` (None: that of the first environment whose verbs
    include all of ``space``'s verbs, else the two-line default)."""
    if env_name is not None:
        return get_spec(env_name).action_separator
    verbs = set(space.verbs) if space else set()
    for name in env_names(include_testing=True):
        if verbs and verbs <= set(get_spec(name).verbs):
            return get_spec(name).action_separator
    return DEFAULT_SEP


def usable_choice(choice: str) -> bool:
    """A choice the parser can read back verbatim (no brackets/newlines, not blank)."""
    return bool(choice.strip()) and not any(c in choice for c in ARG_EXCLUDED)


@dataclass(frozen=True)
class ActionGrammar:
    """The constrained-turn language of one action space (build with :meth:`from_space`)."""

    verbs: tuple[tuple[str, tuple[str, ...] | None], ...]
    sep: str = DEFAULT_SEP
    with_thought: bool = True
    max_arg: int = MAX_ARG_CHARS

    @classmethod
    def from_space(
        cls, space: ActionSpace | None, env_name: str | None = None, *, with_thought: bool = True,
        max_arg: int = MAX_ARG_CHARS,
    ) -> "ActionGrammar | None":
        """The grammar of ``space``; None when it allows nothing (then decode unconstrained)."""
        if space is None:
            return None
        verbs = []
        for verb, choices in space.verbs.items():
            if choices is None:
                verbs.append((verb, None))
            else:
                kept = tuple(dict.fromkeys(c for c in choices if usable_choice(c)))
                if kept:
                    verbs.append((verb, kept))
        if not verbs:
            return None
        return cls(tuple(verbs), separator(env_name, space), with_thought, max_arg)

    def action_only(self) -> "ActionGrammar":
        """The same actions without the thought (continuation after ``SEP`` was forced)."""
        return ActionGrammar(self.verbs, self.sep, False, self.max_arg)

    # ------------------------------------------------------------------ GBNF
    def gbnf(self, max_thought: int | None = None) -> str:
        """GBNF for llama.cpp (root rule ``root``).

        ``max_thought`` bounds the thought to that many characters (for servers, which cannot stop a
        thought when ``max_tokens`` runs out); the bounded thought is the superset form (an inner SEP
        is allowed, as in :meth:`regex`), which the parser reads the same way.
        """
        rules = []
        if self.with_thought and max_thought is not None:
            rules.append(f"root ::= {gbnf_literal(THOUGHT_PREFIX)} thought {gbnf_literal(self.sep)} action")
            rules.append(f"thought ::= {gbnf_class(THOUGHT_EXCLUDED)}{{0,{max_thought}}}")
        elif self.with_thought:
            rules.append(f"root ::= {gbnf_literal(THOUGHT_PREFIX)} t0")
            rules += self._gbnf_thought_rules()
        else:
            rules.append("root ::= action")
        alts = []
        for i, (verb, choices) in enumerate(self.verbs):
            if choices is None:
                alts.append(f'{gbnf_literal(verb + "[")} free "]"')
            else:
                rules.append(f"choice{i} ::= " + " | ".join(gbnf_literal(c) for c in choices))
                alts.append(f'{gbnf_literal(verb + "[")} choice{i} "]"')
        rules.append("action ::= " + " | ".join(alts))
        if any(c is None for _, c in self.verbs):
            rules.append(f'free ::= {gbnf_class(ARG_EXCLUDED + " ")} {gbnf_class(ARG_EXCLUDED)}{{0,{self.max_arg - 1}}}')
        return "\n".join(rules) + "\n"

    def _gbnf_thought_rules(self) -> list[str]:
        """Right-linear rules of the separator's KMP automaton (thought = text before the first SEP)."""
        sep, rules = self.sep, []
        chars = sorted(set(sep))
        for k in range(len(sep)):
            alts, explicit = [], []
            for c in chars:
                target = self._kmp_step(k, c)
                if target is None or (target == 0 and c not in THOUGHT_EXCLUDED):
                    continue
                explicit.append(c)
                alts.append(f"{gbnf_literal(c)} {'action' if target == len(sep) else f't{target}'}")
            if "\n" not in sep[:k]:  # a failed separator match falls back into the thought
                alts.append(f"{gbnf_class(THOUGHT_EXCLUDED + ''.join(explicit))} t0")
            rules.append(f"t{k} ::= " + " | ".join(alts))
        return rules

    @cached_property
    def _sep_failure(self) -> list[int]:
        sep, fail = self.sep, [0] * (len(self.sep) + 1)
        for i in range(1, len(sep)):
            j = fail[i]
            while j and sep[i] != sep[j]:
                j = fail[j]
            fail[i + 1] = j + 1 if sep[i] == sep[j] else 0
        return fail

    def _kmp_step(self, k: int, c: str) -> int | None:
        """Separator-automaton transition from ``k`` matched characters on ``c`` (None = dead)."""
        if c == self.sep[k]:
            return k + 1
        if c in THOUGHT_EXCLUDED or "\n" in self.sep[:k]:
            return None  # a newline/bracket inside the thought, or a newline that did not start SEP
        j = k
        while j and c != self.sep[j]:
            j = self._sep_failure[j]
        return j + 1 if c == self.sep[j] else 0

    # ------------------------------------------------------------------ regex
    def regex(self, max_thought: int | None = None) -> str:
        """A regex for vLLM-style guided decoding (thought part: a superset, see module doc)."""
        alts = []
        for verb, choices in self.verbs:
            if choices is None:
                arg = f"{regex_class(ARG_EXCLUDED + ' ')}{regex_class(ARG_EXCLUDED)}{{0,{self.max_arg - 1}}}"
            else:
                arg = "(" + "|".join(regex_literal(c) for c in choices) + ")"
            alts.append(f"{regex_literal(verb)}\\[{arg}\\]")
        action = "(" + "|".join(alts) + ")"
        if not self.with_thought:
            return action
        bound = "*" if max_thought is None else f"{{0,{max_thought}}}"
        return f"{regex_literal(THOUGHT_PREFIX)}{regex_class(THOUGHT_EXCLUDED)}{bound}{regex_literal(self.sep)}{action}"

    # ------------------------------------------------------------------ bytes
    @cached_property
    def matcher(self) -> "ByteMatcher":
        return ByteMatcher(self)

    def accepts(self, text: str) -> bool:
        """True if ``text`` is a complete turn of this language."""
        m = self.matcher
        state: State | None = m.start
        for byte in text.encode("utf-8"):
            state = m.step(state, byte)
            if state is None:
                return False
        return m.accepting(state)


Pending = "int | tuple[int, int, int]"  # 0 at a character boundary, else (bytes owed, next lo, next hi)
_FIRST_CONT = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}


def utf8_start(b: int) -> "Pending | None":
    """Pending continuation after byte ``b`` read at a character boundary (None: not a lead byte)."""
    if b < 0x80:
        return 0
    need = 1 if 0xC2 <= b <= 0xDF else 2 if 0xE0 <= b <= 0xEF else 3 if 0xF0 <= b <= 0xF4 else 0
    if not need:
        return None
    lo, hi = _FIRST_CONT.get(b, (0x80, 0xBF))
    return (need, lo, hi)


def utf8_next(pending: "Pending", b: int) -> "Pending | None":
    """Pending continuation after byte ``b`` inside a character (strict UTF-8: no overlongs/surrogates)."""
    need, lo, hi = pending  # type: ignore[misc]
    if not lo <= b <= hi:
        return None
    return 0 if need == 1 else (need - 1, 0x80, 0xBF)


def owed(pending: "Pending") -> int:
    return pending[0] if pending else 0  # type: ignore[index]


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF double-quoted literal (quotes, backslashes, control and non-ASCII escaped)."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02X}")
        elif code > 0x7F:
            out.append(f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def gbnf_class(excluded: str) -> str:
    """A negated GBNF character class ``[^...]``."""
    special = {"[": "\\[", "]": "\\]", "-": "\\x2D", "^": "\\x5E"}
    inner = "".join(special.get(c) or gbnf_literal(c)[1:-1] for c in sorted(set(excluded)))
    return f"[^{inner}]"


def regex_literal(text: str) -> str:
    """``text`` with regex metacharacters escaped (portable: no ``\\ `` for spaces as re.escape does)."""
    return re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", text).replace("\n", "\\n").replace("\t", "\\t")


def regex_class(excluded: str) -> str:
    inner = "".join({"\n": "\\n", "\t": "\\t"}.get(c, "\\" + c if c in "\\]^-[" else c) for c in sorted(set(excluded)))
    return f"[^{inner}]"


class ByteMatcher:
    """Deterministic byte-level automaton of an :class:`ActionGrammar` (for token masking).

    States (hashable tuples): ``("pre", i)`` inside ``"Thought: "``; ``("th", k, p)`` in the thought with
    ``k`` bytes of SEP matched; ``("verb", node)`` in the trie of ``verb[`` strings; ``("free", c, p)``
    in a free argument after ``c`` characters; ``("ch", node)`` in the trie of ``choice]`` strings;
    ``("done",)``. ``p`` counts the UTF-8 continuation bytes still owed by the current character, so
    free text is valid UTF-8 and lengths count characters, as in GBNF.
    """

    def __init__(self, grammar: ActionGrammar):
        self.grammar = grammar
        self.sep = grammar.sep.encode()
        self.prefix = THOUGHT_PREFIX.encode() if grammar.with_thought else b""
        self.children: list[dict[int, int]] = [{}]  # trie nodes: byte → child
        self.mode: dict[int, tuple] = {}  # node completing "verb[" → ("free",) | ("ch", root)
        self.terminal: set[int] = set()  # nodes completing "choice]"
        for verb, choices in grammar.verbs:
            end = self._insert(0, (verb + "[").encode())
            if choices is None:
                self.mode[end] = ("free", 0, 0)
            else:
                root = self._new()
                for choice in choices:
                    self.terminal.add(self._insert(root, (choice + "]").encode()))
                self.mode[end] = ("ch", root)
        self.dist = self._distances()
        self.min_action = self.dist[0]
        self.start: State = ("pre", 0) if self.prefix else ("verb", 0)

    def _new(self) -> int:
        self.children.append({})
        return len(self.children) - 1

    def _insert(self, node: int, data: bytes) -> int:
        for b in data:
            nxt = self.children[node].get(b)
            if nxt is None:
                nxt = self._new()
                self.children[node][b] = nxt
            node = nxt
        return node

    def _distances(self) -> list[int]:
        """Shortest number of bytes from each trie node to acceptance."""
        dist = [0] * len(self.children)
        for node in range(len(self.children) - 1, -1, -1):  # children are created after parents
            if node in self.terminal:
                dist[node] = 0
                continue
            best = []
            if node in self.mode:
                best.append(2 if self.mode[node][0] == "free" else dist[self.mode[node][1]])
            best += [1 + dist[c] for c in self.children[node].values()]
            dist[node] = min(best) if best else 10**9
        return dist

    def _enter(self, node: int) -> State:
        mode = self.mode.get(node)
        return mode if mode is not None else ("verb", node)

    def step(self, state: State, b: int) -> State | None:
        """The state after byte ``b`` (None = the byte leaves the language)."""
        kind = state[0]
        if kind == "th":
            _, k, pending = state
            if pending:
                nxt = utf8_next(pending, b)
                return None if nxt is None else ("th", 0, nxt)
            if b >= 0x80:  # a non-ASCII character: never part of SEP
                nxt = utf8_start(b)
                return None if nxt is None or b"\n" in self.sep[:k] else ("th", 0, nxt)
            k = self.grammar._kmp_step(k, chr(b))
            if k is None:
                return None
            return ("verb", 0) if k == len(self.sep) else ("th", k, 0)
        if kind == "free":
            _, c, pending = state
            if pending:
                nxt = utf8_next(pending, b)
                return None if nxt is None else ("free", c, nxt)
            if b == 0x5D:  # "]"
                return ("done",) if c >= 1 else None
            if chr(b) in ARG_EXCLUDED or c >= self.grammar.max_arg or (c == 0 and b == 0x20):
                return None
            nxt = utf8_start(b)
            return None if nxt is None else ("free", c + 1, nxt)
        if kind == "pre":
            i = state[1]
            if b != self.prefix[i]:
                return None
            return ("th", 0, 0) if i + 1 == len(self.prefix) else ("pre", i + 1)
        if kind in ("verb", "ch"):
            nxt = self.children[state[1]].get(b)
            if nxt is None:
                return None
            return self._enter(nxt) if kind == "verb" else ("ch", nxt)
        return None  # done

    def accepting(self, state: State) -> bool:
        return state[0] == "done" or (state[0] == "ch" and state[1] in self.terminal)

    def min_remaining(self, state: State) -> int:
        """Fewest bytes that complete a turn from ``state``."""
        kind = state[0]
        if kind == "pre":
            return len(self.prefix) - state[1] + len(self.sep) + self.min_action
        if kind == "th":
            return owed(state[2]) + len(self.sep) - state[1] + self.min_action
        if kind == "free":
            return owed(state[2]) + (1 if state[1] >= 1 else 2)
        if kind in ("verb", "ch"):
            return self.dist[state[1]]
        return 0


class TokenIndex:
    """Per-vocabulary tables for fast masking: token bytes, byte-membership matrix, code-point counts."""

    def __init__(self, tokens: list[bytes | None]):
        self.tokens = tokens
        self.size = len(tokens)
        self.contains = np.zeros((self.size, 256), dtype=bool)
        self.cp = np.zeros(self.size, dtype=np.int32)
        self.first = np.full(self.size, -1, dtype=np.int32)
        self.usable = np.zeros(self.size, dtype=bool)
        for i, tok in enumerate(tokens):
            if tok:
                arr = np.frombuffer(tok, dtype=np.uint8)
                self.contains[i, arr] = True
                self.cp[i] = int(np.count_nonzero((arr & 0xC0) != 0x80))
                self.first[i] = tok[0]
                self.usable[i] = True
        self.by_first = {b: np.flatnonzero(self.first == b) for b in range(256)}
        self.max_cp = int(self.cp.max(initial=1))
        # free-argument tables (grammar.ARG_EXCLUDED): plain text, text closed by a final "]",
        # and a first byte that may open an argument (not a space, not a UTF-8 continuation byte)
        excluded = self.contains[:, list(ARG_EXCLUDED.encode())].any(axis=1)
        last = np.array([t[-1] if t else -1 for t in tokens])
        banned = ARG_EXCLUDED.encode()
        head = np.array([bool(t) and not any(c in t[:-1] for c in banned) for t in tokens], dtype=bool)
        self.end_pending = np.array([_pending_after(t) for t in tokens], dtype=np.int32)  # -1: not UTF-8
        self.arg_plain = self.usable & ~excluded & (self.end_pending >= 0)
        self.arg_close = self.usable & (last == 0x5D) & head & (self.end_pending == 0)
        self.lead_ok = self.usable & (self.first != 0x20) & ((self.first & 0xC0) != 0x80)


def _pending_after(token: bytes | None) -> int:
    """Continuation bytes still owed after ``token`` read from a character boundary (-1: invalid)."""
    if not token:
        return -1
    pending: Pending | None = 0
    for b in token:
        pending = utf8_next(pending, b) if pending else utf8_start(b)
        if pending is None:
            return -1
    return owed(pending)


class GrammarMasker:
    """Per-state arrays ``dist[token]`` = bytes still needed to finish after the token (NO = forbidden)."""

    def __init__(self, grammar: ActionGrammar, index: TokenIndex):
        self.matcher: ByteMatcher = grammar.matcher
        self.index = index
        self.max_arg = grammar.max_arg
        self.cache: dict[State, np.ndarray] = {}

    def advance(self, state: State | None, token: int) -> State | None:
        """The state after ``token``'s bytes (None: out of the language, or a special token)."""
        tok = self.index.tokens[token] if 0 <= token < self.index.size else None
        if state is None or tok is None:
            return None
        for b in tok:
            state = self.matcher.step(state, b)
            if state is None:
                return None
        return state

    def allow(self, state: State | None, tokens_left: int, eos_ids: list[int], vocab: int) -> np.ndarray:
        """Boolean mask over ``vocab`` ids for the next token of a turn in ``state``.

        A token is allowed if it keeps the text in the language and the turn can still be finished
        in the ``tokens_left - 1`` tokens after it (one byte per token at worst); end-of-turn ids are
        allowed once the turn is complete. Past the budget, only the shortest ways out remain.
        """
        allow = np.zeros(vocab, dtype=bool)
        eos = [e for e in eos_ids if 0 <= e < vocab]
        if state is None:  # cannot happen under the mask; end the turn
            allow[eos] = True
            return allow
        dist = self.dists(state)[:vocab]
        ok = dist <= tokens_left - 1
        accepting = self.matcher.accepting(state)
        if not ok.any() and not accepting:
            ok = dist == dist.min()
        allow[: len(ok)] = ok
        if accepting:
            allow[eos] = True
        return allow

    def dists(self, state: State) -> np.ndarray:
        key = self._key(state)
        if key not in self.cache:
            self.cache[key] = self._compute(key)
        return self.cache[key]

    def _key(self, state: State) -> State:
        """Free-argument states that allow the same tokens share one cache entry."""
        if state[0] == "free" and state[2] == 0 and 1 <= state[1] <= self.max_arg - self.index.max_cp:
            return ("free", 1, 0)
        return state

    def _compute(self, state: State) -> np.ndarray:
        if state[0] == "free" and state[2] == 0:
            return self._free(state[1])
        m, idx = self.matcher, self.index
        dist = np.full(idx.size, NO, dtype=np.int32)
        done = np.zeros(idx.size, dtype=bool)
        loop = [b for b in range(256) if m.step(state, b) == state]
        if loop:  # vectorised: tokens made only of self-looping bytes (the thought's plain text)
            other = np.ones(256, dtype=bool)
            other[loop] = False
            stay = idx.usable & ~idx.contains[:, other].any(axis=1)
            dist[stay] = m.min_remaining(state)
            done |= stay
        firsts = [b for b in range(256) if m.step(state, b) is not None]
        ids = np.concatenate([idx.by_first[b] for b in firsts]) if firsts else np.empty(0, dtype=np.int64)
        for i in ids[~done[ids]]:
            end = self.advance(state, int(i))
            if end is not None:
                dist[i] = m.min_remaining(end)
        return dist

    def _free(self, used: int) -> np.ndarray:
        """Vectorised free argument after ``used`` characters: plain text (needs "]" after) or text + "]"."""
        idx, dist = self.index, np.full(self.index.size, NO, dtype=np.int32)
        lead = idx.lead_ok if used == 0 else idx.usable
        plain = idx.arg_plain & lead & (used + idx.cp <= self.max_arg)
        close = idx.arg_close & (used + idx.cp - 1 <= self.max_arg) & (used + idx.cp - 1 >= 1)
        if used == 0:
            close &= idx.lead_ok
        dist[plain] = idx.end_pending[plain] + 1
        dist[close] = 0
        return dist
