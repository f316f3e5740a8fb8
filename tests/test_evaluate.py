"""Stage 4 evaluation loop (qlib.evaluate) on a tiny deterministic env with scripted policies/scorers."""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading

import pytest

from qlib.agent.base import Candidate, Policy
from qlib.config import load_config, with_overrides
from qlib.envs.base import ActionSpace, Environment, EpisodeOverError, StepResult
from qlib.episode_store import load_results, read_rows
from qlib.episodes import FatalEvalError, step_seed
from qlib.evaluate import add_arguments, evaluate

ENV = "toy"
ACTIONS = ("guess[0]", "guess[1]", "guess[2]", "guess[3]", "hint[]", "dance")


class GuessEnv:
    """Guess the task's number (``task_id % 4``) within ``max_steps``; reward 1 - |guess - target| / 4."""

    name = ENV

    def __init__(self, max_steps: int = 3):
        self.max_steps = max_steps
        self.state: tuple[int, int, bool] | None = None
        self.step_calls = self.reset_calls = 0
        self.actions: list[str] = []

    def task_ids(self, split: str) -> list[int]:
        return {"test": list(range(8)), "valid": list(range(8, 12)), "train": list(range(12, 20))}[split]

    def reset(self, task_id: int) -> str:
        self.reset_calls += 1
        self.state = (task_id, 0, False)
        return f"Guess the number of task {task_id}."

    def step(self, action: str) -> StepResult:
        assert self.state is not None
        task, steps, done = self.state
        if done:
            raise EpisodeOverError("episode over")
        self.step_calls += 1
        self.actions.append(action)
        steps += 1
        target, reward, done, info = task % 4, 0.0, False, {}
        if action.startswith("guess[") and action.endswith("]") and action[6:-1].isdigit():
            reward, done = 1.0 - abs(int(action[6:-1]) - target) / 4, True
            obs = f"You guessed {action[6:-1]}."
        elif action == "hint[]":
            obs = "even" if target % 2 == 0 else "odd"
        else:
            obs, info = "Invalid action!", {"invalid": True}
        if not done and steps >= self.max_steps:
            done, info = True, {**info, "truncated": True}
        self.state = (task, steps, done)
        return StepResult(obs, reward, done, info)

    def snapshot(self) -> tuple[int, int, bool] | None:
        return self.state

    def restore(self, snapshot: tuple[int, int, bool] | None) -> None:
        self.state = snapshot

    def valid_actions(self) -> ActionSpace:
        return ActionSpace(verbs={"guess": None, "hint": None})


def cand(action: str, logprob: float | None = -1.0) -> Candidate:
    return Candidate(text=f"Thought: try {action}.\nAction: {action}", thought=f"try {action}.",
                     action=action, valid=action != "dance", logprob=logprob, n_tokens=len(action),
                     prompt_tokens=10, raw=action)


class SeededPolicy:
    """Deterministic given the seed; temperature 0 always answers ``greedy_action``."""

    def __init__(self, greedy_action: str = "hint[]", fail_tasks: set[int] | None = None):
        self.greedy_action = greedy_action
        self.fail_tasks = set(fail_tasks or ())
        self.calls: list[dict] = []

    def propose(self, messages, n, *, temperature=None, action_space=None, seed=None):
        self.calls.append({"n": n, "temperature": temperature, "seed": seed, "messages": messages})
        task = int(messages[1]["content"].split()[-1].rstrip("."))
        if task in self.fail_tasks:
            self.fail_tasks.discard(task)
            raise ConnectionError("endpoint down")
        if temperature == 0:
            return [cand(self.greedy_action, -0.5)] * n
        rng = random.Random(seed)
        return [cand(a, round(-rng.random() * 5, 3)) for a in (rng.choice(ACTIONS) for _ in range(n))]


class ListPolicy:
    """Answers every call with the same candidate list (truncated/cycled to ``n``)."""

    def __init__(self, candidates: list[Candidate]):
        self.candidates = candidates
        self.calls: list[dict] = []

    def propose(self, messages, n, *, temperature=None, action_space=None, seed=None):
        self.calls.append({"n": n, "temperature": temperature, "seed": seed})
        return [self.candidates[i % len(self.candidates)] for i in range(n)]


class TableScorer:
    """Q = table[action] (default 0); counts whitespace tokens of the scored texts."""

    def __init__(self, table: dict[str, float]):
        self.table = table
        self.scored_tokens = 0
        self.calls: list[tuple[list, list[str]]] = []

    def score(self, messages, candidates):
        self.calls.append((messages, candidates))
        self.scored_tokens += sum(len(c.split()) for c in candidates)
        return [self.table.get(c.rsplit("Action: ", 1)[-1], 0.0) for c in candidates]


class Render:
    """A recording stand-in for qlib.agent.prompts.render_messages."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, env_name, task_observation, history, *, variant="react", icl=True):
        self.calls.append({"icl": icl, "variant": variant, "history": list(history)})
        messages = [{"role": "system", "content": f"{env_name} icl={icl} {variant}"},
                    {"role": "user", "content": task_observation}]
        for turn, obs in history:
            messages += [{"role": "assistant", "content": turn}, {"role": "user", "content": obs}]
        return messages


@pytest.fixture
def config():
    return load_config("smoke")


def run(method, config, policy, **kw):
    kw.setdefault("env", GuessEnv())
    kw.setdefault("render", Render())
    kw.setdefault("limit", 4)
    return evaluate(ENV, "test", method, config=config, policy=policy, **kw)


def strip(rows):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def test_protocols_hold():
    assert isinstance(GuessEnv(), Environment)
    assert isinstance(SeededPolicy(), Policy) and isinstance(ListPolicy([]), Policy)


def test_q_executes_only_the_argmax_candidate(config):
    env, render = GuessEnv(), Render()
    policy = ListPolicy([cand("guess[0]"), cand("hint[]"), cand("guess[2]"), cand("guess[0]")])
    scorer = TableScorer({"guess[0]": 0.1, "hint[]": -0.3, "guess[2]": 0.9})
    rows = run("q", config, policy, q_model=scorer, n=4, env=env, render=render)
    assert [r["task_id"] for r in rows] == [0, 1, 2, 3]
    assert env.actions == ["guess[2]"] * 4 and env.step_calls == sum(r["steps"] for r in rows) == 4
    assert [r["reward"] for r in rows] == [0.5, 0.75, 1.0, 0.75]
    assert [r["success"] for r in rows] == [False, False, True, False]
    step = rows[0]["trajectory"][0]
    assert step["chosen"] == 2 and step["action"] == "guess[2]"
    assert [(c["action"], c["count"], c["q"]) for c in step["candidates"]] == [
        ("guess[0]", 2, 0.1), ("hint[]", 1, -0.3), ("guess[2]", 1, 0.9)]
    assert all(len(texts) == 3 for _, texts in scorer.calls)  # deduplicated before scoring
    assert sum(r["q_tokens"] for r in rows) == scorer.scored_tokens > 0
    assert all(c == {"n": 4, "temperature": 1.0, "seed": c["seed"]} for c in policy.calls)
    # the policy sees its prompt (policy.icl: no few-shot examples for the cloned agent of the profiles),
    # the Q model the same history without ICL
    assert config.policy.icl is True and [c["icl"] for c in render.calls] == [True, False] * 4
    no_icl = run("q", with_overrides(config, {"policy.icl": False}), ListPolicy([cand("guess[2]")] * 4),
                 q_model=scorer, n=1, env=GuessEnv(), render=(render := Render()), limit=1)
    assert [c["icl"] for c in render.calls] == [False] and no_icl[0]["icl"] is False
    assert all(m[0]["content"].endswith("icl=False react") for m, _ in scorer.calls)


def test_q_uses_history_and_invalid_candidates_still_execute(config):
    env = GuessEnv(max_steps=3)
    policy = ListPolicy([cand("dance"), cand("hint[]")])
    scorer = TableScorer({"dance": 1.0})
    (row,) = run("q", config, policy, q_model=scorer, n=2, env=env, limit=1)
    assert row["steps"] == 3 and row["truncated"] and row["reward"] == 0.0 and not row["success"]
    assert [s["invalid"] for s in row["trajectory"]] == [True] * 3
    assert [s["valid"] for s in row["trajectory"]] == [False] * 3
    assert [len(m) for m, _ in scorer.calls] == [2, 4, 6]  # growing history


def test_qnet_is_q_with_another_label(config):
    policy = SeededPolicy()
    q = run("q", config, policy, q_model=TableScorer({"guess[1]": 1.0}), n=3)
    qnet = run("qnet", config, policy, q_model=TableScorer({"guess[1]": 1.0}), n=3)
    assert [r["method"] for r in qnet] == ["qnet"] * 4
    assert [r["trajectory"] for r in q] == [r["trajectory"] for r in qnet]


def test_q_needs_a_model(config):
    with pytest.raises(ValueError, match="q_model"):
        run("q", config, SeededPolicy())


def test_a_lazy_q_model_that_cannot_load_stops_the_run_before_any_episode(config, tmp_path):
    from qlib.export import CloneNotFoundError
    from qlib.qmodel import LazyQModel

    saved = tmp_path / "q"  # a released Q model whose base agent is not on this machine
    saved.mkdir()
    (saved / "qlib_config.json").write_text(json.dumps({"kind": "dpo", "base_model": str(tmp_path / "gone")}))
    out = tmp_path / "episodes.jsonl"
    with pytest.raises(CloneNotFoundError, match="rebuild it first"):
        run("q", config, SeededPolicy(), q_model=LazyQModel(saved), n=2, out=out)
    assert not out.exists()  # no error row per task


def test_greedy_and_sampled_use_one_sample(config):
    greedy_policy, sampled_policy = SeededPolicy(greedy_action="guess[1]"), SeededPolicy()
    rows = run("greedy", config, greedy_policy, n=5)
    assert {(c["n"], c["temperature"]) for c in greedy_policy.calls} == {(1, 0.0)}
    assert all(r["n"] == 1 and r["steps"] == 1 for r in rows) and "candidates" not in rows[0]["trajectory"][0]
    run("sampled", config, sampled_policy, n=5)
    assert {(c["n"], c["temperature"]) for c in sampled_policy.calls} == {(1, 1.0)}


def test_best_of_n_takes_the_best_trajectory(config):
    seeds = {step_seed(config.seed, ENV, task, 0, j): j for task in range(8) for j in range(4)}

    class TrajectoryPolicy(SeededPolicy):  # trajectory j guesses j
        def propose(self, messages, n, *, temperature=None, action_space=None, seed=None):
            self.calls.append({"n": n, "temperature": temperature, "seed": seed})
            return [cand(f"guess[{seeds[seed]}]")]

    env = GuessEnv()
    rows = evaluate(ENV, "test", "bon", config=config, policy=TrajectoryPolicy(), n=3, env=env,
                    render=Render(), limit=4)
    by_task = {r["task_id"]: r for r in rows}
    assert by_task[2]["bon_rewards"] == [0.5, 0.75, 1.0] and by_task[2]["reward"] == 1.0
    assert by_task[3]["bon_rewards"] == [0.25, 0.5, 0.75] and by_task[3]["bon_best"] == 2
    assert by_task[0]["bon_rewards"] == [1.0]  # stops once reward 1 is reached
    assert by_task[3]["trajectory"][0]["action"] == "guess[2]" and by_task[3]["n"] == 3
    assert by_task[3]["tokens_generated"] == 3 * len("guess[0]")
    assert env.reset_calls == 1 + 2 + 3 + 3  # tasks 0..3


def test_sampled_is_bon_first_trajectory(config):
    sampled = run("sampled", config, SeededPolicy(), limit=8)
    bon = run("bon", config, SeededPolicy(), n=3, limit=8)
    for s, b in zip(sampled, bon):
        assert b["bon_rewards"][0] == s["reward"] and b["reward"] >= s["reward"]
    assert any(b["reward"] > s["reward"] for s, b in zip(sampled, bon))


def test_selection_controls_share_candidate_sets(config):
    rows = {m: run(m, config, SeededPolicy(), n=4, limit=8, q_model=TableScorer({"guess[2]": 1.0}))
            for m in ("q", "random_pick", "logprob_pick")}

    def first_sets(method):
        return [[c["text"] for c in r["trajectory"][0]["candidates"]] for r in rows[method]]

    assert first_sets("q") == first_sets("random_pick") == first_sets("logprob_pick")
    for r in rows["logprob_pick"]:
        for step in r["trajectory"]:
            logprobs = [c["logprob"] for c in step["candidates"]]
            assert step["chosen"] == logprobs.index(max(logprobs))


def test_random_pick_is_seeded(config):
    first = run("random_pick", config, SeededPolicy(), n=4, limit=8)
    second = run("random_pick", config, SeededPolicy(), n=4, limit=8)
    assert strip(first) == strip(second)
    picks = [s["chosen"] for r in first for s in r["trajectory"]]
    assert len(set(picks)) > 1  # not always the first candidate
    config.seed = 1
    assert strip(run("random_pick", config, SeededPolicy(), n=4, limit=8)) != strip(first)


def test_logprob_pick_takes_the_highest_logprob(config):
    policy = ListPolicy([cand("guess[0]", -3.0), cand("guess[1]", -1.0), cand("guess[3]", -2.0)])
    (row,) = run("logprob_pick", config, policy, n=3, limit=1)
    assert row["trajectory"][0]["chosen"] == 1 and row["trajectory"][0]["action"] == "guess[1]"
    with pytest.raises(FatalEvalError, match="log-prob"):
        run("logprob_pick", config, ListPolicy([cand("guess[0]", None)]), n=2, limit=1)


def test_rows_have_the_schema(config, tmp_path):
    out = tmp_path / "eval.jsonl"
    rows = run("q", config, SeededPolicy(), n=3, out=out, q_model=TableScorer({}), qmodel_name="runs/q")
    base = {"env", "split", "task_id", "method", "n", "reward", "success", "steps", "truncated",
            "tokens_generated", "prompt_tokens", "q_tokens", "wall_s", "seed", "policy", "prompt",
            "max_steps", "qmodel", "trajectory", "context_overflow", "temperature", "icl", "agent"}
    assert all(set(r) == base for r in rows) and rows[0]["agent"] is None  # not the behaviour-cloned agent
    assert rows[0]["qmodel"] == "runs/q" and rows[0]["seed"] == config.seed and rows[0]["split"] == "test"
    step_keys = {"thought", "action", "text", "valid", "logprob", "observation", "reward", "done",
                 "invalid", "chosen", "candidates"}
    assert all(set(s) == step_keys for r in rows for s in r["trajectory"])
    assert set(rows[0]["trajectory"][0]["candidates"][0]) == {"text", "action", "valid", "logprob", "count", "q"}
    assert load_results(out) == json.loads(json.dumps(rows))
    bon = run("bon", config, SeededPolicy(), n=2)
    assert all(set(r) == base | {"bon_rewards", "bon_best"} for r in bon)
    assert all(r["qmodel"] is None and r["q_tokens"] == 0 for r in bon)


def test_resume_skips_finished_episodes_and_a_torn_last_line(config, tmp_path):
    out = tmp_path / "sub" / "eval.jsonl"
    policy = SeededPolicy()
    first = run("sampled", config, policy, out=out, limit=3)
    env = GuessEnv()
    rows = run("sampled", config, policy, out=out, limit=5, env=env)
    assert env.reset_calls == 2 and strip(rows[:3]) == strip(first)
    with out.open("a") as handle:
        handle.write('{"env": "toy", "split": "te')  # a crash mid-write
    env = GuessEnv()
    rows = run("sampled", config, policy, out=out, limit=6, env=env)
    assert env.reset_calls == 1 and [r["task_id"] for r in rows] == list(range(6))
    assert len(read_rows(out)) == 6 and len(out.read_text().splitlines()) == 7
    env = GuessEnv()
    assert strip(run("sampled", config, policy, out=out, limit=6, env=env)) == strip(rows)
    assert env.reset_calls == 0
    other = run("greedy", config, policy, out=out, limit=2)  # another method: its own rows
    assert len(other) == 2 and len(load_results(out)) == 8


def test_reuse_only_reports_the_finished_rows_and_runs_no_episode(config, tmp_path, caplog):
    """eval.reuse_only: the rows on disk come back for the tasks that have one; the others are left out with a
    warning, and neither the environment nor the policy is asked for anything."""
    from qlib.config import with_overrides

    out = tmp_path / "eval.jsonl"
    finished = run("sampled", config, SeededPolicy(), out=out, limit=3)

    class NoPolicy:
        def __getattr__(self, name):
            raise AssertionError(f"reuse_only asked the policy for {name}")

    env = GuessEnv()
    with caplog.at_level("WARNING", logger="qlib.evaluate"):
        rows = run("sampled", with_overrides(config, {"eval.reuse_only": True}), NoPolicy(), out=out, limit=5, env=env)
    assert strip(rows) == strip(finished) and env.reset_calls == 0
    assert "2 of 5 tasks have no finished row" in caplog.text
    assert len(load_results(out)) == 3  # nothing appended

    # a fresh machine with the release but not the clone (its identity lives in its folder): the clone's rows
    # are reported whichever clone made them; running them would need the clone, and says so
    from qlib.export import CloneNotFoundError
    from qlib.io import write_jsonl

    cloned = tmp_path / "cloned.jsonl"
    write_jsonl([dict(r, policy="smollm2-135m-bc", agent="full-12345678") for r in load_results(out)], cloned)
    no_clone = with_overrides(config, {"policy.model": "smollm2-135m-bc", "policy.clones": str(tmp_path / "none")})
    rows = run("sampled", with_overrides(no_clone, {"eval.reuse_only": True}), None, out=cloned, limit=5)
    assert [r["agent"] for r in rows] == ["full-12345678"] * 3  # and no policy was built (it needs the clone)
    with pytest.raises(CloneNotFoundError):
        run("sampled", no_clone, NoPolicy(), out=cloned, limit=5)


def test_resume_refuses_another_configuration(config, tmp_path):
    out = tmp_path / "eval.jsonl"
    run("sampled", config, SeededPolicy(), out=out, limit=2)
    config.policy.model = "another-model"
    with pytest.raises(FatalEvalError, match="policy"):
        run("sampled", config, SeededPolicy(), out=out, limit=2)


def test_identical_episodes_of_another_file_are_copied_not_rerun(config, tmp_path):
    """Shared episodes: a run finds its rows (same key and fingerprint) in another notebook's file."""
    source, out = tmp_path / "agent_clone.jsonl", tmp_path / "table2.jsonl"
    ran = run("greedy", config, SeededPolicy(), out=source, limit=3)
    env = GuessEnv()
    rows = run("greedy", config, SeededPolicy(), out=out, limit=4, env=env, shared=[source, tmp_path / "missing.jsonl"])
    assert env.reset_calls == 1  # only task 3 ran
    assert strip(rows[:3]) == [{**r, "copied_from": "agent_clone.jsonl"} for r in strip(ran)]
    assert "copied_from" not in rows[3] and len(load_results(out)) == 4
    from qlib.release import jsonl_compute
    assert jsonl_compute(load_results(out))[1] == pytest.approx(rows[3]["wall_s"])  # compute counted once
    # rows of another configuration (here another step limit) are not taken
    env = GuessEnv(max_steps=2)
    run("greedy", config, SeededPolicy(), out=tmp_path / "short.jsonl", limit=2, env=env, shared=[source])
    assert env.reset_calls == 2


class CachingScorer(TableScorer):
    """A TableScorer with a DPO Q model's ``caches`` dict: records the cache each call ran with."""

    def __init__(self, table):
        super().__init__(table)
        self.caches = {"policy": None, "ref": None}
        self.seen: list[tuple[int, int]] = []

    def score(self, messages, candidates):
        self.seen.append((threading.get_ident(), id(self.caches["policy"])))
        return super().score(messages, candidates)


class MeetingPolicy(SeededPolicy):
    """A SeededPolicy whose first two calls wait for each other: proof that two episodes run at once."""

    def __init__(self):
        super().__init__()
        self.barrier, self.first = threading.Barrier(2, timeout=20), 2

    def propose(self, messages, n, **kwargs):
        if self.first > 0:
            self.first -= 1
            self.barrier.wait()
        return super().propose(messages, n, **kwargs)


def test_parallel_workers_give_the_rows_of_one_worker(config, tmp_path):
    table = {"guess[1]": 1.0, "hint[]": 0.5, "guess[3]": 0.2}
    one = run("q", config, SeededPolicy(), q_model=TableScorer(table), n=3, limit=8, out=tmp_path / "one.jsonl")
    scorer, policy = CachingScorer(table), MeetingPolicy()
    policy.thread_safe = True  # shared as it is: the barrier needs two threads inside propose at once
    many = run("q", config, policy, q_model=scorer, n=3, limit=8, out=tmp_path / "many.jsonl", workers=3,
               env_factory=GuessEnv)
    assert strip(many) == strip(one)  # same rows, q_tokens of each episode included
    assert sorted(r["task_id"] for r in read_rows(tmp_path / "many.jsonl")) == list(range(8))
    assert scorer.scored_tokens == sum(r["q_tokens"] for r in many)
    caches = {}
    for thread, cache in scorer.seen:
        caches.setdefault(thread, set()).add(cache)
    assert len(caches) >= 2 and all(len(c) == 1 for c in caches.values())  # one prefix cache per thread
    assert len(set().union(*caches.values())) == len(caches)
    # an environment given without a factory: one worker (no second environment to run in)
    env = GuessEnv()
    single = run("sampled", config, SeededPolicy(), limit=3, env=env, workers=3)
    assert env.reset_calls == 3 and len(single) == 3


def test_prompt_and_temperature_are_part_of_the_row_key(config, tmp_path):
    out = tmp_path / "eval.jsonl"
    first = run("sampled", config, SeededPolicy(), out=out, limit=2)
    config.policy.prompt = "reflection"
    reflection = run("sampled", config, SeededPolicy(), out=out, limit=2)
    config.policy.temperature = 0.7
    cooler = run("sampled", config, SeededPolicy(), out=out, limit=2)
    assert len(load_results(out)) == 6  # three configurations side by side in one file
    assert {r["prompt"] for r in first} == {"react"} and {r["prompt"] for r in reflection} == {"reflection"}
    assert {r["temperature"] for r in cooler} == {0.7}
    config.policy.prompt = "react"
    config.policy.temperature = 1.0
    assert strip(run("sampled", config, SeededPolicy(), out=out, limit=2)) == strip(first)  # reused


def test_q_with_one_distinct_candidate_is_not_scored(config, tmp_path):
    scorer = TableScorer({})
    rows = run("q", config, SeededPolicy(), n=1, q_model=scorer, limit=2)
    assert scorer.calls == [] and all(r["q_tokens"] == 0 for r in rows)
    assert all(s["candidates"][0].get("q") is None for r in rows for s in r["trajectory"])


def test_failing_policy_call_is_recorded_not_counted_and_retried(config, tmp_path):
    out = tmp_path / "eval.jsonl"
    policy = SeededPolicy(fail_tasks={1})
    rows = run("random_pick", config, policy, out=out, n=3, limit=3)
    assert [r["task_id"] for r in rows] == [0, 2]
    errors = [r for r in read_rows(out) if "error" in r]
    assert len(errors) == 1 and errors[0]["task_id"] == 1 and errors[0]["reward"] is None
    assert errors[0]["error"].startswith("ConnectionError") and len(load_results(out)) == 2
    env = GuessEnv()
    rows = run("random_pick", config, policy, out=out, n=3, limit=3, env=env)
    assert [r["task_id"] for r in rows] == [0, 1, 2] and env.reset_calls == 1
    assert len(load_results(out)) == 3 and len(read_rows(out)) == 4


def test_summary_stats_of_rows(config):
    from qlib.stats import paired_differences, summarise

    rows = run("sampled", config, SeededPolicy(), limit=8) + run("greedy", config, SeededPolicy("guess[2]"), limit=8)
    table = summarise(rows, resamples=200)
    assert list(table["method"]) == ["sampled", "greedy"] and set(table["tasks"]) == {8}
    diff = paired_differences(rows, baseline="sampled", resamples=200)
    assert diff.loc[0, "other"] == "greedy" and diff.loc[0, "tasks"] == 8


def test_cli_arguments_and_light_import():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--env", "hotpotqa", "--method", "q", "greedy", "--qmodel", "m", "--n", "3"])
    assert args.method == ["q", "greedy"] and args.split == "test" and args.n == 3 and args.out is None
    code = "import sys, qlib.evaluate, qlib.stats; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_cli_needs_a_q_model_for_q(capsys):
    from qlib.cli import add_common
    from qlib.evaluate import run as run_cli

    parser = argparse.ArgumentParser()
    add_common(parser)
    add_arguments(parser)
    args = parser.parse_args(["--profile", "smoke", "--env", "webshop", "--method", "qnet"])
    assert run_cli(args) == 2 and "--qmodel" in capsys.readouterr().err


def test_all_methods_on_the_shared_toy_env(config):
    toy = pytest.importorskip("qlib.testing.toy")
    from qlib.stats import paired_differences, summarise

    rows = []
    for method in ("greedy", "sampled", "bon", "q", "random_pick"):  # ToyPolicy gives no log-probs
        env = toy.ToyEnv()
        got = evaluate("toy", "test", method, config=config, policy=toy.ToyPolicy(), env=env,
                       n=5, q_model=toy.RightDoorScorer() if method == "q" else None)
        assert len(got) == len(env.task_ids("test"))
        rows += got
    table = summarise(rows, resamples=200).set_index("method")
    assert table.loc["q", "success"] == 1.0 and table.loc["q", "reward"] >= table.loc["random_pick", "reward"]
    assert table.loc["bon", "reward"] >= table.loc["sampled", "reward"]
    diff = paired_differences(rows, baseline="q", others=["sampled"], resamples=200)
    assert diff.loc[0, "reward_diff"] >= 0


class OverflowAfter:
    """Wraps a policy; raises ContextOverflowError once the prompt holds ``limit`` assistant turns."""

    def __init__(self, inner, limit):
        self.inner, self.limit = inner, limit

    def propose(self, messages, n, **kw):
        from qlib.agent.base import ContextOverflowError

        if sum(m["role"] == "assistant" for m in messages) >= self.limit:
            raise ContextOverflowError("prompt too long")
        return self.inner.propose(messages, n, **kw)


def test_context_overflow_ends_the_episode_with_reward_zero(config):
    rows = run("sampled", config, OverflowAfter(ScriptedHints(), 1), limit=2)
    assert len(rows) == 2
    for row in rows:
        assert row["reward"] == 0.0 and row["truncated"] and row["context_overflow"]
        assert row["steps"] == 1 and "error" not in row


class ScriptedHints:
    def propose(self, messages, n, **kw):
        from qlib.agent.base import Candidate

        return [Candidate(text="Thought: hint\nAction: hint[]", thought="hint", action="hint[]", valid=True)] * n


def test_rows_with_and_without_few_shot_examples_live_side_by_side(config, tmp_path):
    out = tmp_path / "eval.jsonl"
    first = run("greedy", config, SeededPolicy(), out=out, limit=1)
    other = run("greedy", with_overrides(config, {"policy.icl": not config.policy.icl}), SeededPolicy(), out=out,
                limit=1)
    assert first[0]["icl"] != other[0]["icl"]  # the second run did not resume the first one's row
    assert len(load_results(out)) == 2


def test_task_spec_parses_ids_and_ranges():
    from qlib.evaluate import parse_task_spec

    assert parse_task_spec("0-3,7, 9 - 10,2") == [0, 1, 2, 3, 7, 9, 10]
    for bad in ("3-1", "a", "1,,2", "-4", "1-2-3"):
        with pytest.raises(ValueError, match="--tasks"):
            parse_task_spec(bad)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--env", "hotpotqa", "--method", "greedy", "--tasks", "0-2,5"]).tasks == [0, 1, 2, 5]
    with pytest.raises(SystemExit):
        parser.parse_args(["--env", "hotpotqa", "--method", "greedy", "--tasks", "1", "--limit", "3"])


def test_evaluate_runs_exactly_the_given_task_ids(config, tmp_path):
    out = tmp_path / "rows.jsonl"
    rows = run("greedy", config, SeededPolicy("guess[1]"), limit=None, tasks=[5, 1, 6], out=out)
    assert [r["task_id"] for r in rows] == [5, 1, 6]
    assert [r["reward"] for r in rows] == [1.0, 1.0, 0.75]  # targets 1, 1, 2
    with pytest.raises(ValueError, match=r"not in toy's test split .*: 8, 12"):
        run("greedy", config, SeededPolicy("guess[1]"), limit=None, tasks=[1, 8, 12], out=out)
    with pytest.raises(ValueError, match="either"):
        run("greedy", config, SeededPolicy("guess[1]"), limit=2, tasks=[1], out=out)


def test_cli_rejects_unknown_task_ids(capsys):
    from qlib.cli import add_common
    from qlib.evaluate import run as run_cli

    parser = argparse.ArgumentParser()
    add_common(parser)
    add_arguments(parser)
    args = parser.parse_args(["--profile", "smoke", "--env", "hotpotqa", "--method", "greedy", "--tasks", "98-101"])
    assert run_cli(args) == 2 and "2 task id(s) not in hotpotqa's test split" in capsys.readouterr().err


# --------------------------------------------------------------------------- QLASS look-ahead (qnet_lookahead)
class StateScorer(TableScorer):
    """QNet stand-in scoring completions [assistant turn, observation]: Q = table[observation] (default 0)."""

    def score_completions(self, messages, completions):
        self.calls.append((messages, completions))
        assert all([m["role"] for m in c] == ["assistant", "user"] for c in completions)
        return [self.table.get(c[1]["content"], 0.0) for c in completions]


def test_qnet_lookahead_scores_the_reached_state_and_counts_only_the_chosen_step(config, tmp_path):
    env = GuessEnv(max_steps=3)
    # task 0 (target 0; hint says "even"); candidates: hint[] -> "even", guess[1] -> "You guessed 1." (ends)
    policy = ListPolicy([cand("guess[1]"), cand("hint[]")])
    scorer = StateScorer({"even": 0.9, "You guessed 1.": 0.5, "You guessed 0.": 1.0})
    [row] = run("qnet_lookahead", config, policy, env=env, q_model=scorer, limit=1, n=2, out=tmp_path / "e.jsonl")
    first = row["trajectory"][0]
    assert first["action"] == "hint[]" and [c["q"] for c in first["candidates"]] == [0.5, 0.9]
    assert [c["ends"] for c in first["candidates"]] == [True, False]
    # every step: both candidates looked ahead (undone) + the chosen one executed; steps count only the chosen
    assert row["steps"] == 3 and row["truncated"] and env.actions.count("hint[]") == 3 + 3
    assert row["method"] == "qnet_lookahead" and row["qmodel"] is None  # no label given, no peek


def test_qnet_lookahead_peeks_at_the_true_reward_only_when_switched_on(config, tmp_path):
    policy = ListPolicy([cand("guess[1]"), cand("guess[0]"), cand("hint[]")])
    scorer = StateScorer({"You guessed 1.": 0.9, "You guessed 0.": 0.1, "even": 0.5})
    [plain] = run("qnet_lookahead", config, policy, q_model=scorer, limit=1, n=3)
    assert plain["trajectory"][0]["action"] == "guess[1]" and plain["reward"] == 0.75
    peek = with_overrides(config, {"eval.lookahead_peek_reward": True})
    [row] = run("qnet_lookahead", peek, policy, q_model=scorer, limit=1, n=3, out=tmp_path / "p.jsonl",
                qmodel_name="qnet")
    assert row["trajectory"][0]["action"] == "guess[0]" and row["reward"] == 1.0
    assert [c["q"] for c in row["trajectory"][0]["candidates"]] == [0.75, 1.0, 0.5]  # true rewards of the ends
    assert row["qmodel"] == "qnet+peek"
    with pytest.raises(FatalEvalError, match="another configuration"):  # no resuming across the switch
        run("qnet_lookahead", config, policy, q_model=scorer, limit=1, n=3, out=tmp_path / "p.jsonl",
            qmodel_name="qnet")


def test_qnet_lookahead_needs_a_completion_scorer(config):
    with pytest.raises(FatalEvalError, match="score_completions"):
        run("qnet_lookahead", config, ListPolicy([cand("guess[1]"), cand("hint[]")]),
            q_model=TableScorer({}), limit=1, n=2)


def test_rows_of_another_cloned_agent_are_not_resumed(config, tmp_path, monkeypatch):
    out = tmp_path / "eval.jsonl"
    monkeypatch.setattr("qlib.export.agent_identity", lambda policy, env: "full-aaaa")
    run("greedy", config, SeededPolicy(), out=out)
    assert {r["agent"] for r in read_rows(out)} == {"full-aaaa"}
    monkeypatch.setattr("qlib.export.agent_identity", lambda policy, env: "lora-r16-bbbb")
    with pytest.raises(FatalEvalError, match="another configuration.*agent"):
        run("greedy", config, SeededPolicy(), out=out)
