"""The one action parser: an LLM's assistant turn → thought, verb, argument, env-ready action.

Used by every policy backend, by MCTS and by evaluation, so that all of them read model output the
same way. :func:`parse_turn` never raises for a ``str`` (and returns an invalid turn for anything else).

Rules (documented here once; the tests in ``tests/test_parse.py`` pin them):

* **Action marker**: the word ``action`` in any case, optionally numbered and wrapped in markdown,
  then ``:`` — ``Action:``, ``ACTION :``, ``**Action:**``, ``Action 1:``. A marker at the start of a
  line (only whitespace / markdown / a bullet before it) always counts; a marker inside a line
  (HotPotQA's one-line ``Thought: … Action: Search[X]``) counts only if what follows parses as a valid
  action. The first counting marker wins (several Action lines → the first); if none counts, the
  first marker is used and the turn is invalid. Without any marker, the first line that starts with a
  known verb and ``[`` is taken as the action (a missing ``Action:`` label is tolerated).
* **Action text**: the rest of the marker's line (or the next non-blank line if that is empty), with
  leading markdown / quotes / bullets removed. ``VERB [ARG]`` with optional space before ``[``.
* **Bracket rule**: the argument runs from the first ``[`` to its *matching* ``]`` (nesting counted)
  on that line; text after it (``.``, explanations, ``[notes]``) is dropped. No ``]`` closing the
  first ``[`` → invalid. No option value of the 1k WebShop catalogue contains a bracket (3,499 values
  checked; they do contain parentheses, ``|``, ``&``, ``'``), so every real value survives intact.
  The argument is stripped, and one or more pairs of enclosing quotes/backticks are removed when that
  quote character does not occur inside. Case is kept as written (the WebShop env lower-cases).
* **Validity**: known verb (case-insensitive; the verbs of the environment's registry entry,
  :class:`qlib.envs.registry.EnvSpec`; ``env_name=None`` accepts the union over the workbook's
  environments) and a non-empty argument. An environment whose entry sets
  ``brackets_in_arguments=False`` (WebShop: its grammar cannot carry them, ``search[a [b]]`` parses
  there as the verb ``search[a ``) rejects an argument containing ``[`` or ``]``.
* **Canonical turn** (``ParsedTurn.text``, stored in histories and scored by Q models):
  ``Thought: {thought}{SEP}{Verb}[{arg}]`` with the entry's ``action_separator`` as ``SEP``
  (``"\\nAction: "``, two lines, or ``" Action: "``, one line) and the verb spelled as the entry does. The thought is the text before the action with ``Assistant:`` /
  ``Thought:`` labels and markdown removed and whitespace collapsed to single spaces; any
  ``action:`` inside it loses its colon so that the canonical turn re-parses to the same action.
  An invalid turn keeps the raw action text in the same layout, or just ``Thought: …`` without one.
* ``env_name=None``: the env is inferred from the verb — the environment spelling it exactly so, else
  one whose verb has the same first-letter case, else the first that knows it case-insensitively
  (so ``click``/``search`` → WebShop, ``Search``/``Lookup``/``Finish`` → HotPotQA) — and spelled/laid
  out as that env does; invalid turns use the two-line layout.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from qlib.envs.registry import env_names, get_spec

DEFAULT_SEPARATOR = "\nAction: "
NO_ACTION = "nothing[]"
_QUOTES = "\"'`"

_FLAGS = re.IGNORECASE | re.ASCII
_MARKER = re.compile(r"(?<![A-Za-z0-9])action(?:[ \t]*\d+)?[ \t]*[*_`]*[ \t]*:", _FLAGS)
_LINE_PREFIX = re.compile(r"[\s*_`#>•-]*", re.ASCII)
_LABEL = re.compile(r"(?:assistant|thought(?:[ \t]*\d+)?)[ \t]*[*_`]*[ \t]*:", _FLAGS)
_LEAD_NOISE = re.compile(r"^[\s*_`'\"#>•-]+")
_THOUGHT_NOISE = re.compile(r"^(?:[\s*`#>•]|-(?=\s|$))+")
_VERB = re.compile(r"([A-Za-z]+)[*_`]*[ \t]*\[", re.ASCII)


@dataclass(frozen=True)
class ParsedTurn:
    """One assistant turn, parsed (see the module docstring for the rules)."""

    thought: str  # "" if none
    verb: str  # canonical spelling ("search"/"click", "Search"/"Lookup"/"Finish"); "" if invalid
    argument: str  # stripped argument; "" if invalid
    action: str  # env-ready lower(verb)[arg]; invalid: the raw action text, or "nothing[]" without one
    valid: bool
    text: str  # canonical assistant turn (histories, preference pairs, Q-model inputs)


# ------------------------------------------------------------------ public API

def parse_turn(text: str, env_name: str | None = None) -> ParsedTurn:
    """Parse one assistant turn for ``env_name`` (a registered environment, or None = any).

    Never raises for any ``text`` (a non-str gives an invalid turn); only an unknown ``env_name`` is a
    ValueError."""
    env = _check_env(env_name)
    if not isinstance(text, str):
        return ParsedTurn("", "", "", NO_ACTION, False, "Thought:")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    found = _find_action(text, env)
    if found is None:
        return _invalid(clean_thought(text), None, env)
    start, action_text = found
    thought = clean_thought(text[:start])
    split = split_action(action_text, env)
    if split is None:
        return _invalid(thought, action_text, env)
    verb, argument = split
    act_env = env or _infer_env(verb)
    line = action_line(verb, argument, act_env)
    return ParsedTurn(thought, line[: line.index("[")], argument, _env_action(line), True,
                      _layout(thought, line, act_env))


def action_line(verb: str, argument: str, env_name: str | None) -> str:
    """The canonical ``Verb[arg]`` (verb spelled as the env's prompt spells it)."""
    return f"{canonical_verb(verb, env_name)}[{argument}]"


def canonical_verb(verb: str, env_name: str | None) -> str:
    """``verb`` spelled as ``env_name``'s prompt does (None: inferred from the verb); unknown → as given."""
    env = _check_env(env_name) or _infer_env(verb)
    for known in get_spec(env).verbs if env else ():
        if known.lower() == verb.lower():
            return known
    return verb


def split_action(action_text: str, env_name: str | None = None) -> tuple[str, str] | None:
    """``(verb as written, argument)`` of one action text such as ``Search [X].``; None if invalid."""
    env = _check_env(env_name)
    if not isinstance(action_text, str):
        return None
    line = _LEAD_NOISE.sub("", action_text.split("\n", 1)[0])
    match = _VERB.match(line)
    if match is None:
        return None
    inner = _bracket_body(line, match.end() - 1)
    verb = match.group(1)
    if inner is None or verb.lower() not in _known_verbs(env):
        return None
    argument = _strip_quotes(inner)
    act_env = env or _infer_env(verb)
    if not argument or (act_env and not get_spec(act_env).brackets_in_arguments and ("[" in argument or "]" in argument)):
        return None
    return verb, argument


def known_verbs(env_name: str | None) -> tuple[str, ...]:
    """The verbs of ``env_name`` as its prompt spells them (None: the union)."""
    env = _check_env(env_name)
    if env is None:
        return tuple(dict.fromkeys(v for name in env_names() for v in get_spec(name).verbs))
    return get_spec(env).verbs


# ------------------------------------------------------------------ helpers

def _check_env(env_name: str | None) -> str | None:
    if env_name is None:
        return None
    if isinstance(env_name, str) and env_name.lower() in env_names(include_testing=True):
        return env_name.lower()
    raise ValueError(f"unknown env_name {env_name!r}; expected one of {', '.join(env_names())} or None")


def _known_verbs(env: str | None) -> set[str]:
    return {v.lower() for v in known_verbs(env)}


def _infer_env(verb: str) -> str | None:
    """The environment whose verb this is: exact spelling first, then same first-letter case, then any."""
    matches = [(name, known) for name in env_names() for known in get_spec(name).verbs
               if known.lower() == verb.lower()]
    for same in (lambda k: k == verb, lambda k: k[:1].isupper() == verb[:1].isupper(), lambda k: True):
        for name, known in matches:
            if same(known):
                return name
    return None


def _env_action(line: str) -> str:
    """``Verb[arg]`` → the env string ``verb[arg]`` (only the verb lower-cased)."""
    cut = line.index("[")
    return line[:cut].lower() + line[cut:]


def _bracket_body(line: str, open_at: int) -> str | None:
    """Text between ``line[open_at] == '['`` and its matching ``]``; None if it never closes."""
    depth = 0
    for i in range(open_at, len(line)):
        if line[i] == "[":
            depth += 1
        elif line[i] == "]":
            depth -= 1
            if depth == 0:
                return line[open_at + 1 : i]
    return None


def _strip_quotes(argument: str) -> str:
    argument = argument.strip()
    while len(argument) >= 2 and argument[0] == argument[-1] in _QUOTES and argument[0] not in argument[1:-1]:
        argument = argument[1:-1].strip()
    return argument


def _action_text(text: str, end: int) -> str:
    """The action text after a marker: rest of its line, or the next non-blank line if that is empty."""
    lines = text[end:].split("\n")
    for line in lines[:1] + [ln for ln in lines[1:] if ln.strip()][:1]:
        cleaned = _LEAD_NOISE.sub("", line).strip().rstrip("*`").strip()
        if cleaned:
            return cleaned
    return ""


def _find_action(text: str, env: str | None) -> tuple[int, str] | None:
    """``(start of the action part, action text)`` per the marker rules, or None if there is none."""
    first: tuple[int, str] | None = None
    for match in _MARKER.finditer(text):
        line_start = text.rfind("\n", 0, match.start()) + 1
        candidate = (match.start(), _action_text(text, match.end()))
        if _LINE_PREFIX.fullmatch(text, line_start, match.start()):
            return line_start, candidate[1]
        if split_action(candidate[1], env) is not None:
            return candidate
        first = first or candidate
    if first is not None:
        return first
    verbs = _known_verbs(env)
    offset = 0
    for line in text.split("\n"):
        bare = _LEAD_NOISE.sub("", line)
        match = _VERB.match(bare)
        if match and match.group(1).lower() in verbs:
            return offset, bare.strip()
        offset += len(line) + 1
    return None


def clean_thought(text: str) -> str:
    """Thought text: labels (``Assistant:``, ``Thought:``) and markdown removed, whitespace collapsed,
    and any ``action:`` inside defused (colon dropped) so it cannot be mistaken for the action."""
    if not isinstance(text, str):
        return ""
    previous = None
    while text != previous:
        previous = text
        text = " ".join(text.split())
        text = _THOUGHT_NOISE.sub("", text).rstrip("*` ")
        label = _LABEL.match(text)
        if label:
            text = text[label.end():]
        text = _MARKER.sub(lambda m: m.group(0)[:-1], text)
    return text


def _layout(thought: str, action: str | None, env: str | None) -> str:
    head = f"Thought: {thought}" if thought else "Thought:"
    if action is None:
        return head
    return head + (get_spec(env).action_separator if env else DEFAULT_SEPARATOR) + action


def _invalid(thought: str, action_text: str | None, env: str | None) -> ParsedTurn:
    action = action_text if action_text else None
    return ParsedTurn(thought, "", "", action or NO_ACTION, False, _layout(thought, action, env))
