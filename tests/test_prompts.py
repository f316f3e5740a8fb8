"""ReAct prompts (qlib.agent.prompts): message structure, ICL data validity and provenance."""
from __future__ import annotations

import re

import pytest

from qlib.agent.parse import parse_turn
from qlib.envs import env_names
from qlib.agent.prompts import VARIANTS, format_observation, load_prompt, render_messages
from qlib.data import iter_jsonl

ENV_NAMES = env_names()
ALL = [(env, variant) for env in ENV_NAMES for variant in VARIANTS]
TASKS = {
    "webshop": "WebShop [SEP] Instruction: [SEP] i need a red dress, and price lower than 40.00 dollars [SEP] Search",
    "hotpotqa": "Question: Were Scott Derrickson and Ed Wood of the same nationality?",
}
HISTORY = {
    "webshop": [("Thought: I think I should search.\nAction: search[red dress]", "Instruction: [SEP] results"),
                ("Thought: I think I should click.\nAction: click[B000000000]", "Instruction: [SEP] item")],
    "hotpotqa": [("Thought: I need to search. Action: Search[Scott Derrickson]", "Scott Derrickson is ..."),
                 ("Thought: Next. Action: Lookup[American]", "No more results.\n")],
}


def _steps(env: str, variant: str):
    for example in load_prompt(env, variant).examples:
        yield example, [parse_turn(step.turn, env) for step in example.steps]


@pytest.mark.parametrize("env,variant", ALL)
@pytest.mark.parametrize("icl", [True, False])
@pytest.mark.parametrize("steps", [0, 2])
def test_roles_alternate_and_end_with_user(env: str, variant: str, icl: bool, steps: int) -> None:
    messages = render_messages(env, TASKS[env], HISTORY[env][:steps], variant=variant, icl=icl)
    assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2) + ["user"]
    assert messages[0]["content"] == load_prompt(env, variant).instruction and messages[1]["content"] == "OK"
    assert all(isinstance(m["content"], str) and m["content"] for m in messages)


@pytest.mark.parametrize("env,variant", ALL)
def test_icl_false_is_icl_true_minus_examples(env: str, variant: str) -> None:
    icl = load_prompt(env, variant).icl_messages()
    with_icl = render_messages(env, TASKS[env], HISTORY[env], variant=variant, icl=True)
    without = render_messages(env, TASKS[env], HISTORY[env], variant=variant, icl=False)
    assert icl and with_icl[2 : 2 + len(icl)] == icl
    assert with_icl[:2] + with_icl[2 + len(icl) :] == without
    assert len(without) == 3 + 2 * len(HISTORY[env])


@pytest.mark.parametrize("env", ENV_NAMES)
def test_observation_prefixes(env: str) -> None:
    prefix = {"webshop": "Observation:\n", "hotpotqa": "Observation: "}[env]
    assert format_observation(env, "page") == prefix + "page"
    messages = render_messages(env, TASKS[env], HISTORY[env], icl=False)
    assert messages[2]["content"] == TASKS[env]  # the task observation is never prefixed
    assert [m["content"] for m in messages[3:]] == [
        x for turn, obs in HISTORY[env] for x in (turn, prefix + obs)
    ]
    for variant in VARIANTS:  # examples are rendered like live episodes: bare task, prefixed observations
        spec = load_prompt(env, variant)
        expected = []
        for example in spec.examples:
            expected.append(example.task)
            for step in example.steps:
                expected += [step.turn] + ([] if step.observation is None else [prefix + step.observation])
            expected += [example.reflection] if example.reflection else []
        assert [m["content"] for m in spec.icl_messages()] == expected
        assert not any(e.task.startswith("Observation") for e in spec.examples)


def test_unknown_env_or_variant_raises() -> None:
    with pytest.raises(ValueError, match="react, reflection"):
        load_prompt("hotpotqa", "cot")
    with pytest.raises(ValueError, match="registered: hotpotqa, toy, webshop"):
        render_messages("alfworld", "x", [])
    with pytest.raises(ValueError, match="react"):
        render_messages("webshop", "x", [], variant="Reflexion")
    with pytest.raises(ValueError, match="registered"):
        format_observation("alfworld", "x")


def test_instruction_texts() -> None:
    web, hot = load_prompt("webshop").instruction, load_prompt("hotpotqa").instruction
    assert web.startswith("You are web shopping.\n") and web.endswith("\n\nThought: I think ...\nAction: click[something]")
    assert len(web.split("\n")) == 16 and web.split("\n")[13] == ""
    lines = hot.split("\n")
    assert len(lines) == 5 and lines[0].endswith("can be three types: ") and lines[3].startswith("(3) Finish[answer]")
    refl = load_prompt("hotpotqa", "reflection").instruction
    opening = "You are an advanced reasoning agent that can improve based on self refection. "
    assert refl.startswith(opening + lines[0]) and refl[len(opening):].startswith(hot + "\n")
    assert refl.split("\n")[5].startswith("You have attempted to answer the following question before.")
    web_refl = load_prompt("webshop", "reflection").instruction
    assert web_refl.endswith(web[web.index("Your response should use"):]) and "reflection" in web_refl


@pytest.mark.parametrize("env,variant", ALL)
def test_icl_turns_parse_valid_and_canonical(env: str, variant: str) -> None:
    spec = load_prompt(env, variant)
    assert len(spec.examples) == (1 if env == "webshop" else 3)
    for example, parsed in _steps(env, variant):
        for step, turn in zip(example.steps, parsed):
            assert turn.valid and turn.text == step.turn, step.turn
        assert parsed[-1].action == ("click[Buy Now]" if env == "webshop" else parsed[-1].action)
        assert env == "webshop" or parsed[-1].verb == "Finish"
        assert (example.reflection is not None) == (variant == "reflection")
        if example.reflection is not None:
            assert example.reflection.startswith("Reflection: ") and example.steps[-1].observation is not None
            assert not parse_turn(example.reflection, env).valid  # a reflection is not an action
        else:
            assert example.steps[-1].observation is None


# ------------------------------------------------------------------ HotPotQA provenance

@pytest.fixture(scope="module")
def wiki_titles() -> set[str]:
    return {row["title"] for row in iter_jsonl("hotpotqa/hotpot_wiki_paragraphs.jsonl.gz")}


@pytest.mark.parametrize("variant", VARIANTS)
def test_hotpotqa_searches_hit_the_offline_wiki(variant: str, wiki_titles: set[str]) -> None:
    """Every Search lands on a page, or fails on purpose and the next Search takes a listed similar title."""
    for example, parsed in _steps("hotpotqa", variant):
        for i, (step, turn) in enumerate(zip(example.steps, parsed)):
            if turn.verb != "Search":
                continue
            if turn.argument in wiki_titles:
                assert not step.observation.startswith("Could not find")
                continue
            assert step.observation.startswith(f"Could not find {turn.argument}. Similar: ")
            assert parsed[i + 1].verb == "Search" and repr(parsed[i + 1].argument) in step.observation
            assert parsed[i + 1].argument in wiki_titles
        if variant == "react":  # the successful examples read both gold paragraphs
            assert set(example.source["supporting_titles"]) <= {t.argument for t in parsed if t.verb == "Search"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_hotpotqa_examples_are_train_questions_with_recorded_outcomes(variant: str) -> None:
    from qlib.envs.hotpotqa.metrics import exact_match_score

    train = {r["_id"]: r for r in iter_jsonl("hotpotqa/hotpot_train_subset_with_context.jsonl.gz")}
    dev_questions = {r["question"].strip() for r in iter_jsonl("hotpotqa/hotpot_dev_subset_with_context.jsonl.gz")}
    for example, parsed in _steps("hotpotqa", variant):
        record = train[example.source["_id"]]
        assert example.task == "Question: " + record["question"].strip()
        assert record["question"].strip() not in dev_questions
        em = int(exact_match_score(parsed[-1].argument, record["answer"]))
        if variant == "react":
            assert em == 1
        else:
            assert example.steps[-1].observation == f"Episode finished, reward = {em}\n"


@pytest.mark.parametrize("variant", VARIANTS)
def test_hotpotqa_observations_replay_in_the_env(variant: str) -> None:
    env_module = pytest.importorskip("qlib.envs.hotpotqa.env")
    from qlib.envs import make

    env = make("hotpotqa", max_steps=50)
    for example, parsed in _steps("hotpotqa", variant):
        env.restore(env_module.HotPotState(question_idx=0))  # search/lookup do not depend on the question
        for step, turn in zip(example.steps, parsed):
            if turn.verb != "Finish":
                assert env.step(turn.action).observation == step.observation, turn.action


# ------------------------------------------------------------------ WebShop provenance

@pytest.mark.parametrize("variant", VARIANTS)
def test_webshop_example_product_is_in_the_catalogue(variant: str) -> None:
    docs = {d["id"]: d["product"] for d in iter_jsonl("webshop/webshop_1k_documents.jsonl.gz")}
    for example, parsed in _steps("webshop", variant):
        asin = example.source["asin"]
        product = docs[asin]
        assert product["options"] and parsed[1].action == f"click[{asin}]"
        option_values = {v for values in product["options"].values() for v in values}
        clicked = [t.argument for t in parsed[2:-1]]
        assert clicked and set(clicked) <= option_values
        assert asin in example.steps[0].observation and product["Title"] in example.steps[1].observation
        assert re.fullmatch(r"WebShop \[SEP\] Instruction: \[SEP\] .+ \[SEP\] Search", example.task)


@pytest.mark.parametrize("variant", VARIANTS)
def test_webshop_observations_replay_in_the_env(variant: str) -> None:
    pytest.importorskip("qlib.envs.webshop")
    from qlib.envs import make

    env = make("webshop")
    train = set(env.task_ids("train"))
    for example, parsed in _steps("webshop", variant):
        goal = example.source["goal_index"]
        assert env.reset(goal) == example.task and env.goal.asin == example.source["asin"]
        held_out = {g.index for g in env.goals if g.asin == example.source["asin"]} - train
        assert goal in train and not held_out  # no test/valid goal targets the example's product
        for step, turn in zip(example.steps, parsed):
            result = env.step(turn.action)
            assert not result.info["invalid"]
            if step.observation is not None:
                assert result.observation == step.observation, turn.action
        assert result.done and result.reward == pytest.approx(example.source["reward"])
        assert variant == "reflection" or result.reward == 1.0
