"""The one place where chat messages become token ids, for DPO training, QNet training and scoring.

* The prompt is rendered with the tokenizer's chat template (``add_generation_prompt=True``).
* A completion (one assistant turn, or a multi-turn trajectory ending with an assistant turn) is the text
  the template adds after the prompt, split into segments: each assistant segment is its content plus the
  template's end-of-turn string (ChatML: ``content<|im_end|>\\n``); each user segment is the observation
  turn plus the next assistant header. Segments are tokenised on their own (no special tokens added), so
  the prompt ids are a true prefix of the sequence and the KV cache of the prompt can be reused.
* ``completion_mask`` marks the assistant tokens: the only tokens whose log-probabilities count.
* Long prompts are cut from the left by :func:`fit_prompt`: whole message pairs are dropped oldest first
  (ICL examples, then the oldest steps), always keeping the instruction / ``OK`` head and the task turn;
  if that is not enough the prompt tokens are cut from the left. A scored completion is never cut; a training
  pair whose completions would leave its prompt under a quarter of the window (whole trajectories) keeps
  that quarter and has its completions cut from the right instead (:func:`fit_pair`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from qlib.agent.base import Message

MIN_PROMPT_TOKENS = 16  # kept even when a completion alone exceeds max_length


@dataclass(frozen=True)
class Encoded:
    """A prompt and one completion as token ids; ``completion_mask`` is 1 on scored (assistant) tokens."""

    prompt_ids: list[int]
    completion_ids: list[int]
    completion_mask: list[int]
    dropped_messages: int = 0  # prompt messages removed to fit max_length
    cut_tokens: int = 0  # prompt tokens cut from the left after that


def as_messages(completion: str | Sequence[Message]) -> list[Message]:
    """A candidate turn (string) or a list of messages, as a list of messages."""
    if isinstance(completion, str):
        return [{"role": "assistant", "content": completion}]
    return [dict(m) for m in completion]


def render(tokenizer: Any, messages: Sequence[Message], generation_prompt: bool) -> str:
    """The chat template applied to ``messages`` as text."""
    return tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=generation_prompt, tokenize=False
    )


def tokenize(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without added special tokens (the template already wrote them)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def completion_segments(
    tokenizer: Any, prompt: Sequence[Message], completion: Sequence[Message]
) -> list[tuple[str, bool]]:
    """(text, is_assistant) pieces the template appends to the rendered prompt for ``completion``.

    A completion holds at least one assistant turn. It may end with a user message (an observation: the state
    an action reached, which QLASS's look-ahead scores); that one is rendered with the generation prompt, so the
    sequence ends where the agent's next turn would start, as every prompt of a state does."""
    if not any(m["role"] == "assistant" for m in completion):
        raise ValueError("a completion must hold an assistant message")
    segments = []
    previous = render(tokenizer, prompt, generation_prompt=True)
    for i, message in enumerate(completion):
        is_assistant = message["role"] == "assistant"
        text = render(tokenizer, [*prompt, *completion[: i + 1]], generation_prompt=not is_assistant)
        if not text.startswith(previous):
            raise ValueError(
                "the chat template does not render a conversation as a prefix of its continuation; "
                f"cannot split the completion at message {i} ({message['role']})"
            )
        segments.append((text[len(previous):], is_assistant))
        previous = text
    return segments


def encode_completion(tokenizer: Any, prompt: Sequence[Message], completion: Sequence[Message]) -> tuple[list[int], list[int]]:
    """(completion ids, mask with 1 on assistant tokens)."""
    ids: list[int] = []
    mask: list[int] = []
    for text, is_assistant in completion_segments(tokenizer, prompt, completion):
        piece = tokenize(tokenizer, text)
        ids += piece
        mask += [int(is_assistant)] * len(piece)
    return ids, mask


def task_index(messages: Sequence[Message]) -> int:
    """Index of the task turn: the last user message that is not an ``Observation`` (0 if none)."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m["role"] == "user" and not m["content"].lstrip().startswith("Observation"):
            return i
    return 0


def droppable_units(messages: Sequence[Message]) -> list[tuple[int, int]]:
    """Message pairs (i, i+1) that may be dropped, oldest first.

    Always kept: leading system messages, the first user message and (when the task comes later) the
    assistant reply to it (the instruction / ``OK`` head), the task turn and the last message (the current
    observation). Messages between those are grouped in pairs, so the roles still alternate after a drop:
    (user, assistant) turns of in-context examples before the task, (assistant, observation) steps after it.
    """
    n = len(messages)
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        return []
    task = task_index(messages)
    head_end = users[0] + 1
    if task > users[0] and messages[head_end]["role"] == "assistant":
        head_end += 1
    keep = set(range(head_end)) | {task, n - 1}
    units: list[tuple[int, int]] = []
    i = head_end
    while i + 1 < n:
        if i in keep or i + 1 in keep:
            i += 1
            continue
        units.append((i, i + 1))
        i += 2
    return units


def drop_units(messages: Sequence[Message], units: Sequence[tuple[int, int]], k: int) -> list[Message]:
    """``messages`` without the first ``k`` droppable pairs."""
    gone = {j for unit in units[:k] for j in unit}
    return [m for j, m in enumerate(messages) if j not in gone]


def fit_prompt(tokenizer: Any, prompt: Sequence[Message], budget: int) -> tuple[list[int], int, int]:
    """Prompt ids of at most ``budget`` tokens: (ids, messages dropped, tokens cut from the left)."""
    units = droppable_units(prompt)
    memo: dict[int, list[int]] = {}

    def ids_after(k: int) -> list[int]:
        if k not in memo:
            kept = drop_units(prompt, units, k)
            memo[k] = tokenize(tokenizer, render(tokenizer, kept, generation_prompt=True))
        return memo[k]

    lo, hi = 0, len(units)  # smallest k whose rendering fits (the length falls as k grows)
    if len(ids_after(hi)) <= budget:
        while lo < hi:
            mid = (lo + hi) // 2
            if len(ids_after(mid)) <= budget:
                hi = mid
            else:
                lo = mid + 1
        return ids_after(hi), 2 * hi, 0
    ids = ids_after(len(units))
    cut = max(len(ids) - max(budget, MIN_PROMPT_TOKENS), 0)
    return ids[cut:], 2 * len(units), cut


def encode(
    tokenizer: Any,
    prompt: Sequence[Message],
    completions: Sequence[str | Sequence[Message]],
    max_length: int | None,
) -> list[Encoded]:
    """Encode a shared prompt with each completion; the prompt is cut so the longest pair fits ``max_length``."""
    parts = [encode_completion(tokenizer, prompt, as_messages(c)) for c in completions]
    longest = max(len(ids) for ids, _ in parts)
    budget = max_length - longest if max_length else 1 << 62
    prompt_ids, dropped, cut = fit_prompt(tokenizer, prompt, budget)
    return [Encoded(prompt_ids, ids, mask, dropped, cut) for ids, mask in parts]


def encode_pair(tokenizer: Any, row: dict[str, Any], max_length: int | None) -> dict[str, Any]:
    """A pairs-JSONL row as the pre-tokenised columns the DPO trainer reads (see :func:`fit_pair`)."""
    return fit_pair(tokenizer, row, max_length)[0]


def fit_pair(tokenizer: Any, row: dict[str, Any], max_length: int | None) -> tuple[dict[str, Any], int]:
    """(:func:`encode_pair`'s columns, completion tokens cut from the right).

    As :func:`encode` (prompt cut from the left, completions whole) while that leaves the prompt at least a
    quarter of ``max_length``: so a step pair never loses an action token. A completion longer than that (a whole
    trajectory: ETO's pairs) would leave the model no task to condition on; then the prompt keeps up to a quarter
    of the window (cut as above) and both completions are cut from the right to the rest, as ETO truncates.
    """
    chosen, rejected = encode(tokenizer, row["prompt"], [row["chosen"], row["rejected"]], max_length)
    cut = 0
    shortened = chosen.dropped_messages or chosen.cut_tokens
    if max_length and shortened and len(chosen.prompt_ids) < max_length // 4:
        prompt_ids = fit_prompt(tokenizer, row["prompt"], max_length // 4)[0]
        room = max_length - len(prompt_ids)
        cut = sum(max(len(e.completion_ids) - room, 0) for e in (chosen, rejected))
        chosen, rejected = (Encoded(prompt_ids, e.completion_ids[:room], e.completion_mask[:room])
                            for e in (chosen, rejected))
    columns = {
        "prompt_ids": chosen.prompt_ids,
        "chosen_ids": chosen.completion_ids,
        "rejected_ids": rejected.completion_ids,
        "chosen_mask": chosen.completion_mask,
        "rejected_mask": rejected.completion_mask,
    }
    return columns, cut
