"""Offline HotPotQA ReAct environment: spec shared/specs/hotpotqa.md §2–§8."""
from __future__ import annotations

import ast
import math
import random
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qlib.data import iter_jsonl
from qlib.envs import make
from qlib.envs.base import ActionSpace, Environment, EpisodeOverError
from qlib.envs.hotpotqa import (
    HotPotQAEnv,
    bench_search,
    exact_match_score,
    f1_score,
    load_corpus,
    load_tasks,
    normalize_answer,
    oracle_actions,
    oracle_reward,
    split_sentences,
    tokenize,
)
from qlib.envs.hotpotqa.wiki import BM25_B, BM25_K1

SCOTT = (
    "Scott Derrickson (born July 16, 1966) is an American director, screenwriter and producer. "
    "He lives in Los Angeles, California. He is best known for directing horror films such as "
    '"Sinister", "The Exorcism of Emily Rose", and "Deliver Us From Evil", as well as the 2016 '
    'Marvel Cinematic Universe installment, "Doctor Strange.".'
)
ED_WOOD = (
    "Edward Davis Wood Jr. (October 10, 1924 – December 10, 1978) was an American filmmaker, "
    "actor, writer, producer, and director.."
)
YES_TASK, NIXON_TASK = 29, 1575  # tasks whose gold answers are "yes" and "Richard Nixon"


@pytest.fixture(scope="module")
def env() -> HotPotQAEnv:
    return HotPotQAEnv(max_steps=100)


@pytest.fixture()
def fresh(env: HotPotQAEnv) -> HotPotQAEnv:
    env.reset(0)
    return env


def similar_list(observation: str, entity: str) -> list[str]:
    prefix = f"Could not find {entity}. Similar: "
    assert observation.startswith(prefix) and observation.endswith(".")
    titles = ast.literal_eval(observation[len(prefix) : -1])
    assert isinstance(titles, list) and len(titles) <= 5
    return titles


# ------------------------------------------------------------------ spec §8 test vectors

def test_lookup_right_after_reset(fresh):
    assert fresh.step("lookup[anything]")[:3] == ("No more results.\n", 0.0, False)


def test_search_scott_derrickson_and_lookup(fresh):
    assert fresh.step("search[Scott Derrickson]")[:3] == (SCOTT, 0.0, False)
    assert fresh.step("lookup[Los Angeles]")[:3] == (
        "(Result 1 / 1) He lives in Los Angeles, California.", 0.0, False)
    assert fresh.step("lookup[Los Angeles]")[:3] == ("No more results.\n", 0.0, False)


def test_near_match_lower_case(fresh):
    assert fresh.step("search[scott derrickson]").observation == SCOTT
    assert fresh.step("search[ed wood]").observation == ED_WOOD
    assert fresh.step("search[Ed Wood]").observation == ED_WOOD  # never "Ed Wood (film)"


def test_disambiguation_page(fresh):
    before = fresh.snapshot()
    obs = fresh.step("search[Bellini]").observation
    titles = similar_list(obs, "[Bellini]")
    assert titles == load_corpus().similar("[Bellini]") and "Bellini" in titles
    assert fresh.snapshot().page == before.page  # a failed search keeps the page


@pytest.mark.parametrize("action", ["Search[Ed Wood]", "nothing[]", "search [Ed Wood]", "Finish[yes]"])
def test_invalid_spec_rows(fresh, action):
    result = fresh.step(action)
    assert result[:3] == (f"Invalid action: {action}", 0.0, False)
    assert result.info["invalid"] is True


def test_think(fresh):
    result = fresh.step("think[hmm]")
    assert result[:3] == ("Nice thought.", 0.0, False) and result.info["invalid"] is False


def test_finish_yes(env):
    env.reset(YES_TASK)
    result = env.step("finish[Yes]")
    assert result[:3] == ("Episode finished, reward = 1\n", 1.0, True)
    assert result.info["em"] == 1 and result.info["f1"] == 1.0 and result.info["gt_answer"] == "yes"


def test_finish_president_richard_nixon(env):
    env.reset(NIXON_TASK)
    result = env.step("finish[President Richard Nixon]")
    assert result[:3] == ("Episode finished, reward = 0\n", 0.0, True)
    assert result.info["em"] == 0 and result.info["f1"] == pytest.approx(0.8)
    assert result.info["question_idx"] == NIXON_TASK and result.info["reward"] == 0.0


def test_failed_search_keeps_page_and_lookup(fresh):
    corpus = load_corpus()
    film = corpus.pages["Ed Wood (film)"]
    assert fresh.step("search[Ed Wood (film)]").observation == " ".join(split_sentences(film)[:5])
    assert fresh.snapshot().page == film
    similar_list(fresh.step("search[zzqx unknown]").observation, "zzqx unknown")
    assert fresh.snapshot().page == film
    burton = [p for p in split_sentences(film) if "burton" in p.lower()]
    assert fresh.step("lookup[Burton]").observation == f"(Result 1 / {len(burton)}) {burton[0]}"


def test_step_after_finish_raises(env):
    env.reset(YES_TASK)
    env.step("finish[no]")
    with pytest.raises(EpisodeOverError, match="over"):
        env.step("search[Ed Wood]")


# ------------------------------------------------------------------ search details (§4.3)

def test_case_duplicate_titles_are_deterministic(fresh):
    corpus = load_corpus()
    assert corpus.resolve("diamond cut") == "Diamond cut"  # first letter upper-cased is exact
    assert corpus.resolve("Diamond Cut") == "Diamond Cut"
    assert corpus.resolve("DIAMOND CUT") == "Diamond Cut"  # casefold tie: smallest title
    assert fresh.step("search[DIAMOND CUT]").observation == " ".join(
        split_sentences(corpus.pages["Diamond Cut"])[:5])


def test_accent_underscore_and_whitespace_matching():
    corpus = load_corpus()
    assert corpus.resolve("Acephale") == "Acéphale"
    assert corpus.resolve("adam pavlasek") == "Adam Pavlásek"
    assert corpus.resolve("Scott_Derrickson") == "Scott Derrickson"
    assert corpus.resolve("  scott \n derrickson ") == "Scott Derrickson"
    assert corpus.resolve("Ed Wood film") is None


def test_not_found_keeps_raw_entity_text(fresh):
    obs = fresh.step("search[ Zzqx_Unknown ]").observation
    similar_list(obs, " Zzqx_Unknown ")


def test_similar_empty_list_when_no_token_matches(fresh):
    assert fresh.step("search[zzqxwv]").observation == "Could not find zzqxwv. Similar: []."
    assert fresh.step("search[!!!]").observation == "Could not find !!!. Similar: []."


def test_similar_ranking_matches_reference_bm25():
    """3 x BM25(title) + 1 x BM25(intro), Lucene idf, k1 0.9, b 0.4, ties by title (§4.3 step 5)."""
    corpus = load_corpus()
    fields = [[Counter(tokenize(t)) for t in corpus.titles], [Counter(tokenize(corpus.pages[t])) for t in corpus.titles]]
    for query in ["Ed Wood director", "the river of Colorado", "Bellini opera composer"]:
        expected = np.zeros(len(corpus.titles))
        for weight, docs in zip((3.0, 1.0), fields):
            lengths = [c.total() for c in docs]
            n, avgdl = len(docs), sum(lengths) / len(docs)
            for term in tokenize(query):
                df = sum(term in doc for doc in docs)
                if df == 0:
                    continue
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                for i, doc in enumerate(docs):
                    tf = doc.get(term, 0)
                    if tf:
                        norm = BM25_K1 * (1 - BM25_B + BM25_B * lengths[i] / avgdl)
                        expected[i] += weight * idf * tf / (tf + norm)
        scores = corpus.ranker.scores(query)
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
        ranked = sorted((i for i in range(len(scores)) if scores[i] > 0), key=lambda i: (-scores[i], corpus.titles[i]))
        assert corpus.similar(query) == [corpus.titles[i] for i in ranked[:5]]


def test_tokenize_folds_case_and_accents():
    assert tokenize("Café Déjà-vu [Ed_Wood] (film)") == ["cafe", "deja", "vu", "ed", "wood", "film"]


# ------------------------------------------------------------------ lookup (§4.4)

def test_lookup_cursor_keyword_and_reset(fresh):
    fresh.step("search[Scott Derrickson]")
    assert fresh.step("lookup[he]").observation == "(Result 1 / 2) He lives in Los Angeles, California."
    assert fresh.step("lookup[he]").observation.startswith("(Result 2 / 2) He is best known")
    assert fresh.step("lookup[he]").observation == "No more results.\n"
    # the keyword comparison is case-sensitive, so "He" rebuilds the list
    assert fresh.step("lookup[He]").observation.startswith("(Result 1 / 2) ")
    # a successful search resets the cursor, even for the same keyword
    fresh.step("search[Scott Derrickson]")
    assert fresh.snapshot().lookup_keyword is None
    assert fresh.step("lookup[He]").observation.startswith("(Result 1 / 2) ")


def test_lookup_empty_keyword_matches_every_piece(fresh):
    fresh.step("search[Scott Derrickson]")
    assert fresh.step("lookup[]").observation.startswith("(Result 1 / 3) Scott Derrickson (born")
    assert fresh.snapshot().lookup_list == split_sentences(load_corpus().pages["Scott Derrickson"])


def test_sentence_splitting_artefacts():
    assert split_sentences("A b. Jr. C d..\n\n E f. ") == ("A b.", "Jr.", "C d...", "E f..")


# ------------------------------------------------------------------ invalid actions

@pytest.mark.parametrize(
    "action, shown",
    [
        ("", ""),
        ("   ", ""),
        ("  search[Ed Wood]x ", "search[Ed Wood]x"),
        ("search[Ed Wood", "search[Ed Wood"),
        ("searchEd Wood]", "searchEd Wood]"),
        ("search[]", "search[]"),
        ("search[   ]", "search[   ]"),
        ("click[buy now]", "click[buy now]"),
        ("LOOKUP[x]", "LOOKUP[x]"),
        ("finish", "finish"),
        ("Thought: I should search. Action: Search[X]", "Thought: I should search. Action: Search[X]"),
        ("\x00[]]][[", "\x00[]]][["),
    ],
)
def test_invalid_actions(fresh, action, shown):
    fresh.step("search[Scott Derrickson]")
    fresh.step("lookup[he]")
    before = fresh.snapshot()
    result = fresh.step(action)
    assert result[:3] == (f"Invalid action: {shown}", 0.0, False)
    assert result.info["invalid"] is True and result.info["truncated"] is False
    after = fresh.snapshot()
    assert after.steps == before.steps + 1
    assert after == replace(before, steps=before.steps + 1)


def test_non_string_action_is_invalid(fresh):
    assert fresh.step(None).observation == "Invalid action: "  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=40))
def test_any_text_never_raises(fresh, text):
    fresh.reset(3)
    result = fresh.step(text)
    assert isinstance(result.observation, str) and result.reward in (0.0, 1.0)
    assert {"invalid", "steps", "truncated", "answer", "question"} <= result.info.keys()


def test_finish_empty_answer_is_valid_and_scores_zero(env):
    env.reset(0)
    result = env.step("finish[]")
    assert result[:3] == ("Episode finished, reward = 0\n", 0.0, True)
    assert result.info["invalid"] is False and result.info["answer"] == ""


def test_inner_brackets_are_kept(env):
    env.reset(0)
    assert env.step("finish[a [b]]").info["answer"] == "a [b]"


# ------------------------------------------------------------------ step limit and reward timing (§6)

def test_seven_non_finish_actions_truncate():
    env = HotPotQAEnv()
    assert env.max_steps == 7
    env.reset(YES_TASK)
    actions = ["search[Scott Derrickson]", "lookup[he]", "think[x]", "bad", "search[zzqx]", "lookup[he]", "think[y]"]
    for i, action in enumerate(actions, 1):
        result = env.step(action)
        assert result.reward == 0.0 and result.done is (i == 7) and result.info["steps"] == i
    assert result.info["truncated"] is True and result.info["em"] == 0 and result.info["f1"] == 0.0
    with pytest.raises(EpisodeOverError, match="step limit"):
        env.step("finish[yes]")


def test_finish_on_seventh_action_counts():
    env = HotPotQAEnv(max_steps=7)
    env.reset(YES_TASK)
    for _ in range(6):
        assert env.step("think[x]").done is False
    result = env.step("finish[yes]")
    assert result[:3] == ("Episode finished, reward = 1\n", 1.0, True)
    assert result.info["truncated"] is False and result.info["em"] == 1


def test_reward_only_on_finish_step(env):
    env.reset(YES_TASK)
    rewards = [env.step(a).reward for a in ["search[Ed Wood]", "lookup[American]", "think[yes]"]]
    assert rewards == [0.0, 0.0, 0.0] and env.snapshot().answer is None


# ------------------------------------------------------------------ snapshot / restore

def test_snapshot_restore_replay(env):
    env.reset(YES_TASK)
    env.step("search[Scott Derrickson]")
    env.step("lookup[he]")
    snap = env.snapshot()
    frozen = (snap.page, snap.lookup_keyword, snap.lookup_list, snap.lookup_cnt, snap.steps, snap.done)
    actions = ["lookup[he]", "search[Ed Wood]", "lookup[American]", "search[zzqx]", "finish[yes]"]
    first = [env.step(a) for a in actions]
    assert (snap.page, snap.lookup_keyword, snap.lookup_list, snap.lookup_cnt, snap.steps, snap.done) == frozen
    env.restore(snap)
    assert env.snapshot() == snap
    assert [env.step(a) for a in actions] == first
    env.restore(snap)  # restoring a pre-finish state makes the episode live again
    assert env.step("lookup[he]") == first[0]


def test_snapshot_is_shared_across_envs():
    a, b = HotPotQAEnv(), HotPotQAEnv()
    a.reset(5)
    a.step("search[Ed Wood]")
    b.restore(a.snapshot())
    assert a.step("lookup[Wood]") == b.step("lookup[Wood]")


def test_snapshot_and_restore_errors():
    env = HotPotQAEnv()
    with pytest.raises(RuntimeError, match="reset"):
        env.step("think[x]")
    with pytest.raises(TypeError):
        env.restore({"page": None})
    with pytest.raises(IndexError):
        env.reset(10**6)


# ------------------------------------------------------------------ metrics (§5)

@pytest.mark.parametrize(
    "prediction, gold, em, f1",
    [
        ("President Richard Nixon", "Richard Nixon", 0, 0.8),
        ("Yes.", "yes", 1, 1.0),
        ("yes", "no", 0, 0.0),
        ("The Ulster County", "Ulster County", 1, 1.0),
        ("1,800 to 7,000 ft", "1,800 to 7,000 ft", 1, 1.0),
        ("no answer", "noanswer", 0, 0.0),
        ("An American", "American", 1, 1.0),
        ("Chicago, Illinois", "Chicago", 0, 2 / 3),
    ],
)
def test_metrics_worked_values(prediction, gold, em, f1):
    assert int(exact_match_score(prediction, gold)) == em
    assert f1_score(prediction, gold)[0] == pytest.approx(f1, abs=1e-4)


def test_normalize_answer():
    assert normalize_answer("  The  Ulster-County!  ") == "ulstercounty"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("1,800 to 7,000 ft") == "1800 to 7000 ft"
    assert normalize_answer("Theater") == "theater"


def test_f1_precision_recall_and_special_cases():
    assert f1_score("Chicago, Illinois", "Chicago") == pytest.approx((2 / 3, 0.5, 1.0))
    assert f1_score("yes it is", "yes") == (0.0, 0.0, 0.0)  # gold is yes/no: must match exactly
    assert f1_score("no", "no way") == (0.0, 0.0, 0.0)  # prediction is yes/no but gold differs
    assert f1_score("", "Chicago") == (0.0, 0.0, 0.0)


# ------------------------------------------------------------------ tasks and splits

def test_split_sizes_disjoint_and_deterministic(env):
    ids = {s: env.task_ids(s) for s in ("train", "valid", "test")}
    assert {s: len(v) for s, v in ids.items()} == {"train": 1000, "valid": 100, "test": 100}
    assert ids["test"] == list(range(100)) and ids["valid"] == list(range(100, 200))
    all_ids = [i for v in ids.values() for i in v]
    assert len(set(all_ids)) == 1200
    reserve = env.task_ids("reserve")
    assert len(reserve) == 2058 - 1200 and not set(reserve) & set(all_ids)
    assert HotPotQAEnv().task_ids("test") == ids["test"]
    with pytest.raises(ValueError):
        env.task_ids("dev")


def test_task_order_is_seeded_shuffle_of_gold_in_pool_questions():
    pool = sorted(
        (r for r in iter_jsonl("hotpotqa/hotpot_dev_subset_with_context.jsonl.gz") if r["gold_in_pool"]),
        key=lambda r: r["dev_index"],
    )
    random.Random(0).shuffle(pool)
    tasks = load_tasks()
    assert [t.dev_index for t in tasks] == [r["dev_index"] for r in pool]
    assert [t.answer for t in tasks] == [r["answer"] for r in pool]
    assert len(Counter(t.dev_index for t in tasks)) == 2058


def test_reset_observation(env):
    assert env.reset(0) == f"Question: {load_tasks()[0].question}"
    assert env.snapshot() == type(env.snapshot())(question_idx=0)


def test_gold_titles_exist_in_corpus():
    corpus = load_corpus()
    assert len(corpus) == 25_433
    assert all(t.gold_titles and all(g in corpus.pages for g in t.gold_titles) for t in load_tasks())


# ------------------------------------------------------------------ protocol, oracle, benchmark

def test_protocol_and_make():
    from qlib.config import load_config

    env = make("hotpotqa")  # built directly: the paper's step limit
    assert isinstance(env, Environment) and isinstance(env, HotPotQAEnv)
    assert env.name == "hotpotqa" and env.max_steps == 7
    assert make("hotpotqa", load_config("smoke")).max_steps == load_config("smoke").env("hotpotqa").max_steps != 7
    assert make("hotpotqa", load_config("paper")).max_steps == 7 and make("hotpotqa", max_steps=3).max_steps == 3
    space = env.valid_actions()
    assert space == ActionSpace(verbs={"Search": None, "Lookup": None, "Finish": None})
    assert space.allows("search", "Ed Wood") and not space.allows("think", "x")


def test_oracle_solves_test_split():
    env = HotPotQAEnv()
    actions = oracle_actions(env, 0)
    assert actions[-1] == f"finish[{load_tasks()[0].answer}]" and len(actions) <= env.max_steps
    assert oracle_reward("test") == 1.0
    assert oracle_reward("valid", limit=20, max_steps=2) == 1.0  # searches are cut to fit the finish


def test_bench_search_small():
    stats = bench_search(n_queries=40)
    assert stats["n_queries"] == 40 and 0 < stats["found_fraction"] < 1
    assert 0 < stats["search_p50_ms"] <= stats["search_p95_ms"] < 50
    assert {"reset_us", "step_us", "snapshot_us", "restore_us"} <= stats.keys()
