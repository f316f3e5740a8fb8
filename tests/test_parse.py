"""The one action parser (qlib.agent.parse): tricky cases for both envs, then a 10k-string fuzz."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qlib.agent.parse import NO_ACTION, ParsedTurn, action_line, known_verbs, parse_turn, split_action

# (raw text, env, expected (verb, argument) or None for invalid)
WEBSHOP_CASES = [
    ("Thought: I think I should search.\nAction: search[red dress]", ("search", "red dress")),
    ("Thought: ok\nAction: click[6.76 fl oz (pack of 1)]", ("click", "6.76 fl oz (pack of 1)")),
    ("Thought: ok\nAction: click[Buy Now]", ("click", "Buy Now")),
    ("Thought: ok\nAction: click[< Prev]", ("click", "< Prev")),
    ("Thought: ok\nAction: click[Next >]", ("click", "Next >")),
    ("Thought: ok\nAction: click[B000VOHH8I]", ("click", "B000VOHH8I")),
    ("ACTION: CLICK[Buy Now]", ("click", "Buy Now")),
    ("action : search [red dress]", ("search", "red dress")),
    ("**Thought:** hmm\n**Action:** `click[x-large]`", ("click", "x-large")),
    ("**Action**: click[black | white]", ("click", "black | white")),
    ("- Action: click[Buy Now] because it matches.", ("click", "Buy Now")),
    ("Assistant: Thought: go\nAction: search[l'eau d'issey 6.76 fl oz]", ("search", "l'eau d'issey 6.76 fl oz")),
    ("Action: search[\"long lasting perfume\"]", ("search", "long lasting perfume")),
    ("Action: click[Buy Now].", ("click", "Buy Now")),
    ("Action: click[Buy Now] [then done]", ("click", "Buy Now")),
    ("I will buy it.\nAction: click[Buy Now]", ("click", "Buy Now")),
    ("Thought: x\nAction:\nclick[Description]", ("click", "Description")),
    ("Thought: x\nsearch[red dress]", ("search", "red dress")),  # no Action label
    ("Thought: a\nAction: click[A]\nObservation: page\nAction: click[B]", ("click", "A")),
    ("Thought: x\r\nAction: search[mug]\r\n", ("search", "mug")),
    ("Thought: x\nAction: search[4K HDMI [3 Pack]]", None),  # WebShop grammar cannot carry brackets
    ("Thought: x\nAction: search[]", None),
    ("Thought: x\nAction: search[  ]", None),
    ("Thought: x\nAction: buy[it]", None),
    ("Thought: x\nAction: Lookup[size]", None),  # HotPotQA verb in WebShop
    ("Thought: x\nAction: search[red dress", None),
    ("Thought: x\nAction: search red dress", None),
    ("Thought: I am not sure what to do.", None),
    ("", None),
]
HOTPOT_CASES = [
    ("Thought: I need to search X. Action: Search[X]", ("Search", "X")),
    ("Thought: first\nAction: Lookup[named after]", ("Lookup", "named after")),
    ("Thought: done. Action: Finish[Ulster County].", ("Finish", "Ulster County")),
    ("Thought: done. Action: FINISH[yes]", ("Finish", "yes")),
    ("Thought: go Action: search[Colorado orogeny]", ("Search", "Colorado orogeny")),
    ("Thought: go Action: Search [Ed Wood]", ("Search", "Ed Wood")),
    ("Thought 1: go\nAction 1: Search[Milhouse]", ("Search", "Milhouse")),
    ("Thought: go Action: Search[A [B]]", ("Search", "A [B]")),
    ("Thought: go Action: Finish[1,800 to 7,000 ft]", ("Finish", "1,800 to 7,000 ft")),
    ("Thought: my next action: look. Action: Search[X]", ("Search", "X")),
    ("Thought: go Action: Search[X] Observation: blah Thought: Action: Lookup[y]", ("Search", "X")),
    ("Thought: go\n**Action:** Finish[\"The Ulster County\"]", ("Finish", "The Ulster County")),
    ("Thought: go Action: Finish[\"yes\" or \"no\"]", ("Finish", "\"yes\" or \"no\"")),
    ("Thought: go Action: Search X", None),
    ("Thought: go Action: click[Buy Now]", None),
    ("Thought: go Action: Finish[]", None),
    ("Thought: I am not sure.", None),
]


def _check(raw: str, env: str, expected: tuple[str, str] | None) -> ParsedTurn:
    parsed = parse_turn(raw, env)
    if expected is None:
        assert not parsed.valid and parsed.verb == "" and parsed.argument == ""
    else:
        assert parsed.valid and (parsed.verb, parsed.argument) == expected
        assert parsed.action == expected[0].lower() + "[" + expected[1] + "]"
    return parsed


@pytest.mark.parametrize("raw,expected", WEBSHOP_CASES)
def test_webshop_cases(raw: str, expected: tuple[str, str] | None) -> None:
    _check(raw, "webshop", expected)


@pytest.mark.parametrize("raw,expected", HOTPOT_CASES)
def test_hotpotqa_cases(raw: str, expected: tuple[str, str] | None) -> None:
    _check(raw, "hotpotqa", expected)


def test_canonical_layouts() -> None:
    web = parse_turn("**Thought:**  I  think\nI should buy.\n**Action:** click[Buy Now].", "webshop")
    assert web.thought == "I think I should buy."
    assert web.text == "Thought: I think I should buy.\nAction: click[Buy Now]"
    hot = parse_turn("Thought: I need\nto search.\nAction: search[Ed Wood]", "hotpotqa")
    assert hot.text == "Thought: I need to search. Action: Search[Ed Wood]"
    assert action_line("SEARCH", "x", "hotpotqa") == "Search[x]"
    assert action_line("Click", "Buy Now", "webshop") == "click[Buy Now]"


def test_invalid_turns_keep_raw_action() -> None:
    bad = parse_turn("Thought: hm Action: Search X", "hotpotqa")
    assert bad.action == "Search X" and bad.text == "Thought: hm Action: Search X"
    none = parse_turn("Thought: hm", "webshop")
    assert none.action == NO_ACTION and none.text == "Thought: hm"
    assert parse_turn(None).action == NO_ACTION and not parse_turn(b"x").valid  # type: ignore[arg-type]


def test_env_none_infers_spelling() -> None:
    assert parse_turn("Thought: a Action: Search[X]").text == "Thought: a Action: Search[X]"
    assert parse_turn("Thought: a\nAction: search[x]").text == "Thought: a\nAction: search[x]"
    assert parse_turn("Action: lookup[y]").verb == "Lookup"
    assert parse_turn("Action: click[Buy Now]").verb == "click"
    assert set(known_verbs(None)) == {"search", "click", "Search", "Lookup", "Finish"}
    with pytest.raises(ValueError, match="webshop"):
        parse_turn("x", "alfworld")


def test_split_action() -> None:
    assert split_action("Search [X].", "hotpotqa") == ("Search", "X")
    assert split_action("click[a [b]]", "webshop") is None
    assert split_action("frobnicate[x]") is None


def test_every_catalogue_option_value_survives() -> None:
    from qlib.data import iter_jsonl

    values = {v for doc in iter_jsonl("webshop/webshop_1k_documents.jsonl.gz")
              for vals in doc["product"]["options"].values() for v in vals}
    assert len(values) > 1000
    for value in values:
        parsed = parse_turn(f"Thought: pick it\nAction: click[{value}]", "webshop")
        assert parsed.valid and parsed.argument == value.strip(), value


# ------------------------------------------------------------------ fuzz
# Strings are decoded from one hypothesis ``binary`` draw (cheap to generate, still shrinkable): each byte
# picks a fragment (markers, verbs, brackets, markdown, newlines, Unicode oddities) or a single character
# (or, in one mode, byte pairs become arbitrary BMP code points); the first byte can wrap the noise in a well-formed-ish ``Thought … Action: verb[…]`` skeleton so that
# valid turns (and hence the canonical round trip) are exercised often.
FRAGMENTS = [
    "Action:", "action :", "ACTION:", "**Action:**", "Action 1:", "Thought:", "thought :", "Assistant:",
    "[", "]", "[[", "]]", "click", "search", "Search", "Lookup", "Finish", "FINISH", "nothing", "\n", "\r\n",
    " ", "  ", "**", "`", "```", "- ", "> ", '"', "'", ".", ":", "Observation:", "Buy Now", "< Prev", "Next >",
    "(pack of 1)", "Action: search[", "Action: Search[", "click[", "Finish[", "B000VOHH8I", "\t", "\u00e9", "\u2028",
    "\x85", "\x0b", "\r", "#", "_", "Action", "action", "Thought 2:", "red dress", "Ed Wood", "|", "&", "\u3010",
]
CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?()[]<>{}*_`'\"-/\\|&#$%\n\t\u00a0\u00df\u0130\u0131\u017f\u212a\u00e9\u4e2d\U0001f600\x00\x1c"
SYMBOLS = (FRAGMENTS + list(CHARS) * 3)[:256]
SKELETON = [
    ("Thought: ", " Action: ", "search", "[", "]"), ("**Thought:** ", "\n**Action:** ", "click", " [", "]."),
    ("", "\nAction: ", "Search", "[", "] more"), ("Assistant: ", "\nACTION :", "Lookup", "[", "]"),
    ("Thought 1: ", " Action 1: ", "Finish", "[", "]\nAction: click[x]"), ("- ", "\n- action: ", "FINISH", "[", ""),
    ("Thought: ", "\nAction:\n", "click", "[", "]]"), ("", "\n", "search", "[", "]"),
]


ENVS = ("webshop", "hotpotqa", None)


def _decode(data: bytes) -> tuple[str, str | None]:
    """``(text, env)`` from one byte string: byte 0 picks env and skeleton, the rest are symbols."""
    if not data:
        return "", None
    pieces = [SYMBOLS[b] for b in data[1:]]
    env, mode = ENVS[data[0] % 3], (data[0] // 3) % (len(SKELETON) + 3)
    if mode == len(SKELETON):  # arbitrary code points (byte pairs), lone surrogates included
        return "".join(chr(data[i] << 8 | data[i + 1]) for i in range(1, len(data) - 1, 2)), env
    if mode > len(SKELETON):
        return "".join(pieces), env
    head, marker, verb, opening, closing = SKELETON[mode]
    a, b = len(pieces) // 2, 3 * len(pieces) // 4
    text = head + "".join(pieces[:a]) + marker + verb + opening + "".join(pieces[a:b]) + closing + "".join(pieces[b:])
    return text, env


cases = st.binary(max_size=24).map(_decode)


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(cases)
def test_fuzz_invariants(case: tuple[str, str | None]) -> None:
    text, env = case
    parsed = parse_turn(text, env)
    assert isinstance(parsed, ParsedTurn)
    if not parsed.valid:
        assert parsed.verb == "" and parsed.argument == "" and parsed.action
        return
    assert parsed.verb in known_verbs(env)
    assert parsed.argument and parsed.argument == parsed.argument.strip()
    assert parsed.action == parsed.verb.lower() + "[" + parsed.argument + "]"
    again = parse_turn(parsed.text, env)
    assert again.valid and (again.verb, again.argument, again.thought) == (parsed.verb, parsed.argument, parsed.thought)
    assert again.text == parsed.text
