"""qlib.experiments: episode sets, extra metrics of episode rows, the recipes' grids, learned Q against MCTS values."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from qlib import experiments as ex
from qlib.config import with_overrides
from qlib.envs.hotpotqa.env import HotPotQAEnv


def hotpot_row(task_id, actions, done=True):
    steps = [{"action": a, "done": False} for a in actions]
    if steps:
        steps[-1]["done"] = done
    return {"env": "hotpotqa", "split": "test", "task_id": task_id, "method": "q", "n": 5, "reward": 0.0,
            "success": False, "trajectory": steps}


def test_row_metrics_add_answer_f1_of_the_final_finish():
    env = HotPotQAEnv()
    gold = env.tasks[7].answer
    rows = ex.add_row_metrics([
        hotpot_row(7, ["search[x]", f"finish[{gold}]"]),
        hotpot_row(7, ["search[x]", "finish[certainly not the answer qqq]"]),
        hotpot_row(7, ["search[x]", "lookup[y]"], done=False),  # step limit, no answer
        {"env": "hotpotqa", "task_id": 7, "error": "boom"},
        {"env": "webshop", "task_id": 1, "reward": 0.5, "trajectory": []},
    ])
    assert [r.get("f1") for r in rows] == [1.0, 0.0, 0.0, None, None]
    assert gold == "Bodyguard"  # one token: a longer answer containing it gets partial credit
    partial = ex.add_row_metrics([hotpot_row(7, ["finish[the Bodyguard film]"])])[0]["f1"]
    assert partial == pytest.approx(2 * (1 / 2) * 1 / (1 / 2 + 1))  # precision 1/2 ('the' is dropped), recall 1


class LengthScorer:
    """Q = number of characters of the candidate; records its calls."""

    def __init__(self):
        self.calls = []

    def score(self, messages, candidates):
        self.calls.append(len(candidates))
        return [float(len(c)) for c in candidates]


def test_tree_actions_are_scored_per_prompt_and_ranked_against_mcts(tmp_path):
    prompt_a = [{"role": "user", "content": "task A"}]
    prompt_b = [{"role": "user", "content": "task B"}]
    texts = ["a", "bbb", "cc", "dddd"]
    rows = [{"prompt": p, "completion": [{"role": "assistant", "content": t}], "q_raw": float(len(t)),
             "task_id": 1, "depth": 0} for p, t in zip([prompt_a, prompt_a, prompt_b, prompt_b], texts)]
    file = tmp_path / "qnet.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scorer = LengthScorer()
    frame = ex.q_values_of_tree_actions(scorer, file, "webshop")
    assert scorer.calls == [2, 2] and frame["q"].tolist() == [1.0, 3.0, 2.0, 4.0]
    agreement = ex.rank_agreement(frame)
    assert agreement.loc[0, "spearman_rho"] == pytest.approx(1.0) and agreement.loc[0, "actions"] == 4
    flipped = ex.rank_agreement(frame.assign(q_mcts=-frame.q_mcts))
    assert flipped.loc[0, "spearman_rho"] == pytest.approx(-1.0)
    assert ex.q_values_of_tree_actions(scorer, tmp_path / "missing.jsonl", "webshop").empty
    assert ex.q_values_of_tree_actions(scorer, file, "webshop", max_actions=1).shape[0] == 1
    assert ex.q_values_of_tree_actions(scorer, file, "webshop", max_actions=2)["q"].tolist() == [1.0, 2.0]  # spread


def test_tree_action_q_is_cached_beside_the_model_and_scores_only_what_is_missing(tmp_path):
    """Fig. 4c reruns without the model: each action's Q is read back from the cache; new actions of a prompt
    whose other actions are cached are scored alone."""
    folder = tmp_path / "webshop_step"
    folder.mkdir()
    (folder / "qlib_config.json").write_text("{}")
    prompt = [{"role": "user", "content": "task A"}]
    rows = [{"prompt": prompt, "completion": [{"role": "assistant", "content": t}], "q_raw": 0.5, "task_id": 1,
             "depth": 0} for t in ("a", "bbb", "cc")]
    file = tmp_path / "qnet.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = folder / "qvalues" / "webshop_valid_qnet.jsonl"
    first = LengthScorer()
    first.path = str(folder)
    assert ex.q_values_of_tree_actions(first, file, "webshop", max_actions=2, cache=cache).q.tolist() == [1.0, 3.0]
    again = LengthScorer()
    again.path = str(folder)
    assert ex.q_values_of_tree_actions(again, file, "webshop", cache=cache).q.tolist() == [1.0, 3.0, 2.0]
    assert first.calls == [2] and again.calls == [1]  # only "cc" was new


# today's episode file tags: existing runs/<profile>/episodes/<tag>_<env>.jsonl must resume
TODAYS_TAGS = {"test_methods": "table2", "second_policy": "transfer", "base_agent_transfer": "transfer_base", "trajectory_q": "table3_trajectory",
               "pair_subset": "fig5a_12", "agent_base": "agent_base", "agent_clone": "agent_clone",
               "agent_curve": "agent_curve_12", "agent_sampling": "agent_sampling_t0.7_p0.9",
               "finetuned": "finetuned_rft", "self_train_explore": "self_train_step",
               "sampling_temperature": "table3_t0.7", "clone_twin": "twin_fp32_greedy"}


def test_episode_sets_keep_todays_file_names(tmp_path, monkeypatch):
    from qlib.workbook import run_paths

    monkeypatch.setenv("QLIB_RUNS", str(tmp_path))
    paths = run_paths("cpu", create=False)
    assert set(ex.EPISODE_SETS) == set(TODAYS_TAGS)
    assert len({s.tag for s in ex.EPISODE_SETS.values()}) == len(ex.EPISODE_SETS)
    for name, tag in TODAYS_TAGS.items():
        assert paths.episode_set(name, "env", pairs=12, demos=12, temperature=0.7, top_p=0.9, row="rft",
                                 scorer="step", dtype="fp32") == tmp_path / "cpu" / "episodes" / f"{tag}_env.jsonl"
    # the Q model labels are part of the rows' resume fingerprint: today's values
    labels = {name: s.label.format(pairs=12) for name, s in ex.EPISODE_SETS.items()}
    assert labels == {"test_methods": "step", "second_policy": "step", "base_agent_transfer": "step", "trajectory_q": "trajectory",
                      "pair_subset": "12 pairs", "agent_base": "", "agent_clone": "", "agent_curve": "",
                      "agent_sampling": "", "finetuned": "", "self_train_explore": "step",
                      "sampling_temperature": "step", "clone_twin": ""}
    assert ex.EPISODE_SETS["pair_subset"].q_model.format(pairs=12) == "step_12pairs"
    assert dict(ex.EPISODE_SETS["second_policy"].overrides) == {"policy.prompt": "reflection"}


def test_temperature_ablation_reruns_only_other_temperatures(monkeypatch):
    """The profile's temperature is notebook 04's rows; every other temperature gets its own file."""
    from qlib.config import load_config

    calls = []

    def fake_run(config, paths, env, set_name, methods=None, *, limit=None, overrides=None, **kw):
        calls.append((env, set_name, tuple(methods), limit, dict(overrides or {}), kw.get("temperature")))
        reward = 0.25 if set_name == "test_methods" else 0.75
        return [{"env": env, "split": "test", "task_id": t, "method": m, "n": 1 if m == "sampled" else 5,
                 "reward": reward, "success": False} for m in methods for t in range(2)] + [{"error": "boom"}]

    monkeypatch.setattr(ex, "run_episodes", fake_run)
    monkeypatch.setattr(ex, "load_q", lambda paths, env, name: object())
    config = load_config("smoke", {"policy.temperature": 0.7, "eval.bootstrap_resamples": 50})
    table = ex.temperature_ablation(config, None, [0.7, 1.0], envs=["webshop"], tasks={"webshop": 2})
    assert calls == [("webshop", "test_methods", ("sampled", "bon", "q"), 2, {}, None),
                     ("webshop", "sampling_temperature", ("sampled", "bon", "q"), 2, {"policy.temperature": 1.0}, 1.0)]
    assert list(table.temperature) == [0.7] * 3 + [1.0] * 3
    assert list(table.method) == ["sampled", "bon", "q"] * 2 and list(table.reward) == [0.25] * 3 + [0.75] * 3


def test_clone_twin_check_plays_into_its_own_file_and_compares_with_released_greedy(tmp_path, monkeypatch):
    from qlib.config import load_config
    from qlib.io import append_jsonl
    from qlib.workbook import run_paths

    monkeypatch.setenv("QLIB_RUNS", str(tmp_path))
    paths = run_paths("smoke")
    (paths.clones("webshop")).mkdir(parents=True)
    (paths.clones("webshop") / "qlib_config.json").write_text(json.dumps({"dtype": "fp32"}))
    for task, action in enumerate(["search[a]", "search[b]"]):  # the released clone's rows (+ a bon row, ignored)
        for method in ("greedy", "bon"):
            append_jsonl(paths.episode_set("agent_clone", "webshop"), {
                "env": "webshop", "split": "test", "task_id": task, "method": method, "n": 1, "reward": 1.0,
                "success": True, "trajectory": [{"action": action if method == "greedy" else "click[x]"}]})
    calls = []

    def fake_run(config, paths, env, set_name, methods=None, *, limit=None, **fields):
        calls.append((env, set_name, limit, fields, config.webshop.max_steps))
        return [{"env": env, "split": "test", "task_id": t, "method": "greedy", "n": 1, "reward": r, "success": r == 1,
                 "trajectory": [{"action": a}]} for t, (a, r) in enumerate([("search[a]", 1.0), ("search[c]", 0.0)])]

    monkeypatch.setattr(ex, "run_episodes", fake_run)
    config = load_config("smoke", {"webshop.max_steps": 3, "eval.bootstrap_resamples": 50})
    table = ex.clone_twin_check(config, paths, tasks={"webshop": 2}, envs=["webshop"])
    assert calls == [("webshop", "clone_twin", 2, {"dtype": "fp32"}, 10)]  # the paper's step limit, like agent_clone
    line = table.iloc[0]
    assert (line["local clone"], line.tasks, line.same_actions) == ("fp32", 2, 1)
    assert (line.reference, line.other, line.reward_diff) == (1.0, 0.5, 0.5)
    assert paths.episode_set("clone_twin", "webshop", dtype="fp32").name == "twin_fp32_greedy_webshop.jsonl"


def test_pair_counts_of_fractions():
    assert ex.pair_counts(8, [0.25, 0.5, 1.0]) == [2, 4, 8]
    assert ex.pair_counts(3, [0.1, 1.0]) == [1, 3]  # at least one pair
    assert ex.pair_counts(0, [0.5, 1.0]) == []  # no pairs, no models


def test_recipes_default_to_the_papers_environment(tmp_path, monkeypatch):
    """Table 3 runs where the paper ran it; every episode request goes to the named set."""
    from qlib.config import load_config
    from qlib.workbook import run_paths

    monkeypatch.setenv("QLIB_RUNS", str(tmp_path))
    calls = []

    def fake_run(config, paths, env, set_name, methods=None, *, n=None, limit=None, q_model=None, **kw):
        calls.append((env, set_name, tuple(methods), n, limit))
        return [{"env": env, "split": "test", "task_id": t, "method": "q", "n": n, "reward": 0.5 * t,
                 "success": False} for t in range(2)]

    monkeypatch.setattr(ex, "run_episodes", fake_run)
    monkeypatch.setattr(ex, "load_q", lambda paths, env, name: object())
    config = load_config("smoke", {"eval.ablation_tasks": 2})
    table = ex.candidates_grid(config, run_paths("smoke", create=False), [1, 3])
    env = ex.envs_with_paper("table3")[0]
    assert calls == [(env, "test_methods", ("q",), 1, 2), (env, "test_methods", ("q",), 3, 2),
                     (env, "trajectory_q", ("q",), 1, 2), (env, "trajectory_q", ("q",), 3, 2)]
    assert list(table["preference data"]) == ["step", "step", "trajectory", "trajectory"]
    assert list(table.reward) == [0.25] * 4
    assert list(table.paper) == [0.30, 0.50, 0.30, 0.42]


def test_pairs_summary_means_per_share():
    episodes = pd.DataFrame({"n_pairs": [0, 0, 4, 4], "reward": [0.0, 1.0, 1.0, 1.0], "success": [0, 1, 1, 1],
                             "f1": [0.0, 0.5, 1.0, 1.0]})
    summary = ex.pairs_summary(episodes)
    assert summary.to_dict("list") == {"n_pairs": [0, 4], "tasks": [2, 2], "reward": [0.5, 1.0],
                                       "success": [0.5, 1.0], "f1": [0.25, 1.0]}
    assert ex.pairs_summary(pd.DataFrame()).empty


def test_agent_table_labels_agents_and_pass_at_n():
    from qlib.config import load_config

    def row(task, method, n, policy, icl, reward, valid=True):
        step = {"valid": valid}
        return {"env": "webshop", "split": "test", "task_id": task, "method": method, "n": n, "policy": policy,
                "icl": icl, "reward": reward, "success": reward == 1.0, "steps": 2, "wall_s": 1.0,
                "tokens_generated": 10, "trajectory": [step, {"valid": True}]}

    rows = [row(0, "greedy", 1, "smollm2-135m", True, 0.0, valid=False), row(1, "greedy", 1, "smollm2-135m", True, 0.5),
            row(0, "greedy", 1, "smollm2-135m-bc", False, 1.0), row(1, "greedy", 1, "smollm2-135m-bc", False, 0.0),
            row(0, "bon", 5, "smollm2-135m-bc", False, 1.0), row(1, "bon", 5, "smollm2-135m-bc", False, 1.0),
            {"env": "webshop", "task_id": 2, "method": "greedy", "error": "boom"}]
    table = ex.agent_table(rows, load_config("smoke", {"eval.bootstrap_resamples": 50}))
    assert list(table["method"]) == ["smollm2-135m few-shot greedy", "cloned greedy", "cloned pass@5"]
    assert list(table["reward"]) == [0.25, 0.5, 1.0] and list(table["success"]) == [0.0, 0.5, 1.0]
    assert list(table["valid_actions"]) == [0.75, 1.0, 1.0] and set(table["tasks"]) == {2}


def test_candidate_sampling_table_from_bon_rows(monkeypatch):
    """pass@n, the first sample and the headroom over greedy, per setting; each setting its own file."""
    from qlib.config import load_config

    calls = []

    def fake_run(config, paths, env, set_name, methods=None, *, n=None, limit=None, split="test", overrides=None, **kw):
        calls.append((env, set_name, methods, n, limit, split, dict(overrides or {}), kw))
        if set_name == "agent_clone":  # greedy: 1 success of 4
            return [{"reward": r, "success": r == 1.0} for r in (1.0, 0.0, 0.5, 0.5)]
        temperature = overrides["policy.temperature"]
        firsts = [1.0, 0.0, 0.0, 0.5] if temperature == 1.0 else [0.0] * 4
        return [{"reward": max(f, 1.0 if temperature == 1.0 and i < 3 else 0.2), "success": temperature == 1.0 and i < 3,
                 "bon_rewards": [f, 0.2]} for i, f in enumerate(firsts)] + [{"error": "boom"}]

    monkeypatch.setattr(ex, "run_episodes", fake_run)
    table = ex.candidate_sampling(load_config("smoke"), None, settings=[(1.0, 1.0), (0.5, 0.9)],
                                  tasks={"webshop": 4}, envs=["webshop"])
    assert [c[:6] for c in calls] == [("webshop", "agent_clone", ["greedy"], None, 4, "valid"),
                                      ("webshop", "agent_sampling", None, 5, 4, "valid"),
                                      ("webshop", "agent_sampling", None, 5, 4, "valid")]
    assert calls[2][6] == {"policy.model": "smollm2-135m-bc", "policy.icl": False, "policy.temperature": 0.5,
                           "policy.top_p": 0.9} and calls[2][7] == {"temperature": 0.5, "top_p": 0.9}
    assert table.to_dict("list") == {
        "env": ["webshop"] * 3, "split": ["valid"] * 3, "n": [1, 5, 5], "tasks": [4, 4, 4],
        "temperature": [0.0, 1.0, 0.5], "top_p": [1.0, 1.0, 0.9], "pass_success": [0.25, 0.75, 0.0],
        "pass_reward": [0.5, 0.875, 0.2], "sample_success": [0.25, 0.25, 0.0], "sample_reward": [0.5, 0.375, 0.0],
        "headroom": [0.0, 0.5, -0.25]}


def test_results_table_pairs_q_with_every_other_method():
    from qlib.config import load_config

    rows = [{"env": "webshop", "split": "test", "task_id": t, "method": m, "n": 5, "reward": r, "success": r == 1.0}
            for t in range(3) for m, r in (("q", 1.0), ("greedy", 0.0), ("logprob_pick", 0.5), ("qnet", 0.5),
                                            ("random_pick", 0.0))]
    summary, paired = ex.results_table(rows, load_config("smoke", {"eval.bootstrap_resamples": 50}))
    assert list(paired["other"]) == ["greedy", "qnet", "random_pick", "logprob_pick"]  # METHODS order
    assert list(paired["reward_diff"]) == [1.0, 0.5, 1.0, 0.5]
    assert list(ex.results_table(rows, load_config("smoke"), others=("greedy",))[1]["other"]) == ["greedy"]


def test_q_model_init_from_the_agent(tmp_path, monkeypatch):
    from qlib.config import load_config
    from qlib.qmodel.dpo import resolve_base
    from qlib.workbook.layout import REPO_ROOT

    monkeypatch.setattr("qlib.export.merged_dir", lambda clone: Path(clone) / "merged")
    monkeypatch.setattr("qlib.export.clone_dir_for", lambda policy, env: Path(policy.clones) / env)
    cloned = load_config("cpu", {"policy.clones": str(tmp_path)})
    assert ex.q_model_init(cloned, "webshop") == tmp_path / "webshop" / "merged"  # cpu: the agent (notebook 03)
    assert ex.q_model_init(with_overrides(cloned, {"dpo.init": "base"}), "webshop") is None  # the embedded base
    base_agent = load_config("smoke", {"dpo.init": "agent"})
    assert ex.q_model_init(base_agent, "webshop") is None  # the agent is the base model
    with pytest.raises(ValueError, match="dpo.init='agent'"):
        ex.q_model_init(with_overrides(base_agent, {"policy.model": "/x/model.gguf"}), "webshop")
    # a base inside the repository is recorded relative to it and found again from that name
    inside = REPO_ROOT / "qlib"
    assert resolve_base(inside) == ("qlib", str(inside)) and resolve_base("qlib") == ("qlib", str(inside))
    assert resolve_base(tmp_path) == (str(tmp_path), str(tmp_path))


def test_q_init_comparison_trains_both_starts_on_the_same_pairs(tmp_path, monkeypatch):
    from qlib.config import load_config
    from qlib.io import write_jsonl
    from qlib.workbook.layout import RunPaths

    paths = RunPaths("cpu", tmp_path / "runs", tmp_path / "results", tmp_path / "figures").create()
    write_jsonl([{"i": i} for i in range(10)], paths.pairs("webshop", "step"))
    write_jsonl([{"i": i} for i in range(4)], paths.pairs("webshop", "step", "valid"))
    trained = []

    def fake_train(pairs, out, config, model_path=None):
        trained.append((out.name, config.dpo.max_pairs, model_path))
        out.mkdir(parents=True)
        (out / "qlib_config.json").write_text("{}")

    monkeypatch.setattr("qlib.qmodel.train_dpo", fake_train)
    monkeypatch.setattr("qlib.qmodel.load_q_model", lambda out: out.name)
    monkeypatch.setattr("qlib.qmodel.preference_accuracy",
                        lambda q, pairs, **kw: {"accuracy": 0.75 if "agent" in q else 0.5, "accuracy_lo": 0.25,
                                                  "accuracy_hi": 1.0, "n": 4, "mean_margin": 0.1})
    monkeypatch.setattr(ex, "q_model_init", lambda config, env: Path("merged") if env == "webshop" else None)
    table = ex.q_init_comparison(load_config("cpu"), paths, max_pairs=6)
    assert trained == [("webshop_step_init_base_6pairs", 6, None), ("webshop_step_init_agent_6pairs", 6, Path("merged"))]
    assert table[["env", "init", "set", "accuracy", "pairs", "default"]].to_dict("list") == {
        "env": ["webshop", "webshop"], "init": ["base", "agent"], "set": ["in-distribution"] * 2,
        "accuracy": [0.5, 0.75], "pairs": [4, 4], "default": [False, True]}  # cpu default: the agent
    ex.q_init_comparison(load_config("cpu"), paths, max_pairs=6)
    assert len(trained) == 2  # trained models are reused


def test_fine_tuning_rows_without_data_degrade_with_a_note(tmp_path):
    from qlib.config import load_config
    from qlib.workbook.layout import RunPaths

    paths = RunPaths("smoke", tmp_path / "runs", tmp_path / "results", tmp_path / "figures")
    trained = ex.finetune_agents(load_config("smoke"), paths)
    assert not trained.trained.any() and set(trained.row) == {"rft", "agentevol", "eto", "qstar_st"}
    notes = dict(zip(trained.row, trained.note))
    assert notes["rft"] == "no training data" and notes["qstar_st"] == "no Q model to guide the exploration"
    costs = ex.training_costs(paths, trained)
    assert list(costs.row.unique()) == ["MCTS trees (shared data)"]


def test_a_trained_fine_tuning_row_is_reused_without_the_agent_it_was_trained_on(tmp_path):
    """A released row (its qlib_config.json is there) needs neither the clone nor its data on a fresh machine."""
    from qlib.config import load_config
    from qlib.workbook.layout import RunPaths

    config = load_config("cpu", {"policy.clones": str(tmp_path / "no_clones")})
    paths = RunPaths("cpu", tmp_path / "runs", tmp_path / "results", tmp_path / "figures")
    out = paths.runs / "finetuned" / "webshop_rft"
    out.mkdir(parents=True)
    (out / "qlib_config.json").write_text(json.dumps({"finetune": "rft", "data_rows": 3, "data_tokens": 10,
                                                      "train_tokens": 10, "train_seconds": 1.5, "steps": 1}))
    lines = ex.finetune_agents(config, paths, rows=["rft"], envs=["webshop"])
    assert lines[["row", "trained", "data_rows", "train_seconds"]].values.tolist() == [["rft", True, 3, 1.5]]


def test_a_reused_self_training_row_keeps_its_exploration_cost(tmp_path):
    """Q*Agent-ST's cost includes its Q-guided exploration of the train tasks, also when the row is reused (a
    report from a release): read from the episodes of the Q model its config names, test rows left out."""
    from qlib.config import load_config
    from qlib.io import write_jsonl
    from qlib.workbook.layout import RunPaths

    paths = RunPaths("cpu", tmp_path / "runs", tmp_path / "results", tmp_path / "figures")
    out = paths.runs / "finetuned" / "hotpotqa_qstar_st"
    out.mkdir(parents=True)
    (out / "qlib_config.json").write_text(json.dumps({"finetune": "qstar_st", "data_rows": 1, "train_seconds": 2.0,
                                                      "finetune_config": {"st_q_model": "qnet"}}))
    episode = {"split": "train", "reward": 1.0, "wall_s": 2.5, "tokens_generated": 10, "prompt_tokens": 100,
               "q_tokens": 50}
    write_jsonl([episode, dict(episode, reward=0.0), dict(episode, split="test"), {"split": "train", "error": "x"}],
                paths.episode_set("self_train_explore", "hotpotqa", scorer="qnet"))
    config = load_config("cpu", {"eval.reuse_only": True})
    line = ex.finetune_agents(config, paths, rows=["qstar_st"], envs=["hotpotqa"]).iloc[0]
    assert (line.trained, line.explore_episodes, line.explore_seconds, line.explore_tokens) == (True, 2, 5.0, 320)
    (out / "qlib_config.json").write_text(json.dumps({"finetune": "qstar_st", "finetune_config": {"st_q_model": "step"}}))
    line = ex.finetune_agents(config, paths, rows=["qstar_st"], envs=["hotpotqa"]).iloc[0]
    assert line.trained and "explore_episodes" not in line  # the step model's exploration is not on disk


def test_reuse_only_reports_trained_fine_tuning_rows_and_trains_none(tmp_path, monkeypatch):
    """eval.reuse_only (a report from a restored release): a trained row is listed, a missing one is neither
    given data nor trained, and says why."""
    from qlib.config import load_config
    from qlib.workbook.layout import RunPaths

    config = load_config("cpu", {"eval.reuse_only": True})
    paths = RunPaths("cpu", tmp_path / "runs", tmp_path / "results", tmp_path / "figures")
    out = paths.runs / "finetuned" / "webshop_rft"
    out.mkdir(parents=True)
    (out / "qlib_config.json").write_text(json.dumps({"finetune": "rft", "data_rows": 3, "train_seconds": 1.5}))
    monkeypatch.setattr(ex, "finetune_data", lambda *a, **k: pytest.fail("reuse_only gathered training data"))
    lines = ex.finetune_agents(config, paths, rows=["rft", "agentevol"], envs=["webshop"])
    assert lines[["row", "trained", "note"]].values.tolist() == [
        ["rft", True, ""], ["agentevol", False, "not trained (eval.reuse_only)"]]


def test_ood_trees_are_played_by_the_profiles_second_agent_unless_one_is_given(monkeypatch, tmp_path):
    from qlib.config import load_config
    from qlib.workbook.layout import RunPaths

    calls = []
    monkeypatch.setattr(ex, "collect_trees", lambda config, paths, **kw: calls.append(kw) or pd.DataFrame([kw]))
    config = with_overrides(load_config("smoke"), {"second_agent.clone_checkpoint": 3, "webshop.ood_tasks": 5})
    paths = RunPaths("smoke", tmp_path / "runs", tmp_path / "results", tmp_path / "figures")
    ex.collect_all_trees(config, paths)
    own, *ood = calls
    assert own.get("policy_overrides") is None and own["splits"] == ("train", "valid")
    assert all(c["tag"] == "_ood" and c["policy_overrides"] == config.second_agent.overrides() for c in ood)
    tasks = {c["envs"][0]: c["limits"]["valid"] for c in ood}
    assert tasks == {"webshop": 5, "hotpotqa": config.hotpotqa.valid_tasks}  # 0 = the env's valid tasks
    ex.collect_all_trees(config, paths, second_policy={"policy.icl": False})
    assert calls[-1]["policy_overrides"] == {"policy.icl": False}


def test_q_of_executed_actions_is_cached_beside_the_model(tmp_path):
    """Fig. 4b: one Q per executed action (up to max_actions per outcome), read back from the model's cache."""
    folder = tmp_path / "webshop_step"
    folder.mkdir()
    (folder / "qlib_config.json").write_text("{}")

    class Counting:
        path, calls = str(folder), 0

        def score(self, messages, candidates):
            self.calls += 1
            return [float(len(messages))]

    steps = [{"text": "Thought: a\nAction: search[x]", "observation": "o1"},
             {"text": "Thought: b\nAction: click[y]", "observation": "o2"}]
    rows = [{"task_id": 0, "success": True, "trajectory": steps}, {"task_id": 1, "success": False, "trajectory": steps}]
    cache = folder / "qvalues" / "test_methods_webshop_sampled.jsonl"
    model = Counting()
    first = ex.q_values_of_episodes(model, rows, "webshop", max_actions=3, cache=cache)
    assert list(first.trajectory) == ["successful", "successful", "failed", "failed"] and model.calls == 4
    assert first.q.iloc[1] > first.q.iloc[0]  # the second step's prompt holds the first turn and observation
    again = Counting()
    assert ex.q_values_of_episodes(again, rows, "webshop", max_actions=1, cache=cache).q.tolist() == [first.q[0], first.q[2]]
    assert again.calls == 0


def fake_finetune_episodes(rewards: dict[str, list[float]], calls: list | None = None):
    """A stand-in for ``ex.run_episodes``: per-task rewards of greedy, q (n=5) and each fine-tuned row."""

    def fake_run(config, paths, env, set_name, methods=None, *, overrides=None, row=None, **kw):
        if calls is not None:
            calls.append((set_name, row))
        names = [row] if set_name == "finetuned" else list(methods)
        return [{"env": env, "split": "test", "task_id": t, "method": "greedy" if set_name == "finetuned" else m,
                 "n": 5 if m == "q" else 1, "reward": r, "success": r == 1.0}
                for m in names for t, r in enumerate(rewards[m])]

    return fake_run


def test_finetune_table_pairs_q_against_each_row_and_each_row_against_greedy(tmp_path, monkeypatch):
    """Table 2's fine-tuning rows: the paper's claim (`q − row`) and whether fine-tuning improved the agent it
    started from (`row − greedy`), both paired over the same test tasks; an untrained row is left out."""
    from qlib.config import load_config
    from qlib.workbook import run_paths

    monkeypatch.setenv("QLIB_RUNS", str(tmp_path))
    paths = run_paths("smoke")
    (paths.runs / "finetuned" / "webshop_rft").mkdir(parents=True)
    (paths.runs / "finetuned" / "webshop_rft" / "qlib_config.json").write_text("{}")
    calls = []
    monkeypatch.setattr(ex, "run_episodes", fake_finetune_episodes(
        {"greedy": [0.0, 1.0, 0.5], "q": [1.0, 1.0, 0.5], "rft": [1.0, 1.0, 1.0]}, calls))
    monkeypatch.setattr(ex, "env_names", lambda: ["webshop"])
    config = load_config("smoke", {"eval.bootstrap_resamples": 50})
    summary, paired = ex.finetune_table(config, paths)
    assert calls == [("test_methods", None), ("finetuned", "rft")]  # eto etc. are not trained: not played
    assert set(summary.method) == {"greedy", "q", "rft"}
    lines = {(line.baseline, line.other): line.reward_diff for line in paired.itertuples()}
    assert lines == {("q", "rft"): pytest.approx(-1 / 6), ("rft", "greedy"): pytest.approx(0.5)}


def test_finetune_table_pairs_a_row_grown_from_a_twin_with_that_twin(tmp_path, monkeypatch):
    """A row whose agent was a retrained clone (``agent_dtype`` fp32) is also paired with that clone's own greedy
    episodes (``twin_fp32_greedy``); a row without the record, or whose twin did not play, gets no such line."""
    from qlib.config import load_config
    from qlib.io import write_jsonl
    from qlib.workbook import run_paths

    monkeypatch.setenv("QLIB_RUNS", str(tmp_path))
    paths = run_paths("smoke")
    for row, meta in (("rft", {"agent_dtype": "fp32"}), ("eto", {}), ("agentevol", {"agent_dtype": "bf16-autocast"})):
        (paths.runs / "finetuned" / f"webshop_{row}").mkdir(parents=True)
        (paths.runs / "finetuned" / f"webshop_{row}" / "qlib_config.json").write_text(json.dumps(meta))
    rewards = {"greedy": [0.0, 1.0, 0.5], "q": [1.0, 1.0, 0.5], "rft": [1.0, 1.0, 1.0], "eto": [0.0, 0.0, 0.0],
               "agentevol": [0.5, 0.5, 0.5]}
    twin_file = paths.episode_set("clone_twin", "webshop", dtype="fp32")
    twin_file.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl([{"env": "webshop", "split": "test", "task_id": t, "method": "greedy", "n": 1, "reward": r,
                  "success": r == 1.0} for t, r in enumerate([0.0, 0.0, 1.0])], twin_file)
    monkeypatch.setattr(ex, "run_episodes", fake_finetune_episodes(rewards))
    monkeypatch.setattr(ex, "env_names", lambda: ["webshop"])
    summary, paired = ex.finetune_table(load_config("smoke", {"eval.bootstrap_resamples": 50}), paths)
    lines = {(line.baseline, line.other): line.reward_diff for line in paired.itertuples()}
    assert lines[("rft", "twin_fp32")] == pytest.approx(2 / 3)  # (1 + 1 + 0) / 3
    assert [k for k in lines if "twin_fp32" in k] == [("rft", "twin_fp32")]  # eto: no record; agentevol: no bf16 twin
    assert "twin_fp32" not in set(summary.method)  # the twin is a comparison, not a Table 2 row


def test_fig4_leaves_out_an_env_whose_q_values_need_a_clone_this_machine_lacks(tmp_path, caplog):
    """A fresh machine has the released Q models but not the clone they were trained on: actions whose Q is
    cached are reported, an env with uncached actions is left out of Fig. 4c with a warning naming why."""
    from qlib.io import write_jsonl
    from qlib.workbook.layout import RunPaths

    paths = RunPaths("cpu", tmp_path / "runs", tmp_path / "results", tmp_path / "figures")
    out = paths.qmodel("webshop", "step")
    out.mkdir(parents=True)
    (out / "qlib_config.json").write_text(json.dumps({"kind": "dpo", "beta": 0.1, "lora": True,
                                                      "base_model": str(tmp_path / "no_clone" / "model")}))
    prompt = [{"role": "user", "content": "Instruction: a mug"}]
    write_jsonl([{"prompt": prompt, "completion": [{"role": "assistant", "content": "Action: search[mug]"}],
                  "task_id": 1, "depth": 0, "q": 0.5, "q_raw": 0.5}], paths.pairs("webshop", "qnet", split="valid"))
    with caplog.at_level("WARNING", logger="qlib.experiments"):
        frame = ex.tree_action_q(paths)
    assert len(frame) == 0 and "webshop left out of Fig. 4c" in caplog.text and "no_clone" in caplog.text


def test_reuse_only_searches_and_trains_nothing(tmp_path, monkeypatch):
    """eval.reuse_only over a run folder with pairs but no trees or models: notebook 01 reports the trees on
    disk, notebook 03 lists the missing Q models as not trained, Fig. 5a leaves the missing point out."""
    from qlib.config import load_config
    from qlib.io import write_jsonl
    from qlib.workbook.layout import RunPaths

    config = load_config("cpu", {"eval.reuse_only": True})
    paths = RunPaths("cpu", tmp_path / "runs", tmp_path / "results", tmp_path / "figures")
    write_jsonl([{"i": i} for i in range(4)], paths.pairs("webshop", "step"))
    forbidden = lambda *a, **k: pytest.fail("reuse_only computed something")  # noqa: E731
    monkeypatch.setattr("qlib.collect.collect", forbidden)
    monkeypatch.setattr("qlib.qmodel.train_dpo", forbidden)
    monkeypatch.setattr("qlib.qmodel.train_qnet", forbidden)
    monkeypatch.setattr(ex, "run_episodes", lambda *a, **k: [])
    trees = ex.collect_trees(config, paths, envs=["webshop"], splits=("train",))
    assert trees[["tasks", "done", "trees"]].values.tolist() == [[0, 0, 0]]
    models = ex.train_q_models(config, paths, envs=["webshop"], kinds=(("step", "dpo"),))
    assert models[["model", "rows", "trained"]].values.tolist() == [["step", 4, False]]
    assert ex.pairs_ablation(config, paths, [0.5], env="webshop").empty
    # notebook 02 counts the pairs on disk (the released ones the Q models learned from) instead of rebuilding
    (paths.trees("webshop", "train")).mkdir(parents=True)
    for level in ("trajectory", "qnet"):
        write_jsonl([{"i": 0}], paths.pairs("webshop", level))
    monkeypatch.setattr("qlib.pairs.build_pairs", forbidden)
    counts = ex.build_all_pairs(config, paths, envs=["webshop"], splits=("train",))
    assert counts.set_index("level").loc["step", "rows"] == 4


def test_pairs_a_trained_q_model_learned_from_are_not_replaced_by_a_rebuild(tmp_path, monkeypatch, caplog):
    """Notebook 02 rebuilds pairs from the trees; where the rebuild differs from the file a trained Q model learned
    from (the model is reused as is), the file stays, with a warning; without such a model it is rebuilt."""
    from qlib.config import load_config
    from qlib.io import read_jsonl, write_jsonl
    from qlib.workbook.layout import RunPaths

    paths = RunPaths("cpu", tmp_path / "runs", tmp_path / "results", tmp_path / "figures")
    paths.trees("webshop", "train").mkdir(parents=True)
    learned = [{"pair": 1}, {"pair": 2}]
    for level in ("step", "trajectory"):
        write_jsonl(learned, paths.pairs("webshop", level))
    (paths.qmodel("webshop", "step")).mkdir(parents=True)
    (paths.qmodel("webshop", "step") / "qlib_config.json").write_text("{}")
    monkeypatch.setattr("qlib.pairs.build_pairs", lambda trees, level, config: [{"pair": 1}])
    with caplog.at_level("WARNING", logger="qlib.experiments"):
        counts = ex.build_all_pairs(load_config("cpu"), paths, envs=["webshop"], splits=("train",)).set_index("level")
    assert list(read_jsonl(paths.pairs("webshop", "step"))) == learned and counts.loc["step", "rows"] == 2
    assert "the file stays" in caplog.text
    assert list(read_jsonl(paths.pairs("webshop", "trajectory"))) == [{"pair": 1}]  # no model learned from it
    assert counts.loc["trajectory", "rows"] == 1
