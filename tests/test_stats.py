"""qlib.stats: bootstrap CIs of mean reward / success and paired differences between methods."""
from __future__ import annotations

import math
import warnings

import pytest

from qlib.stats import action_agreement, format_table, mean_ci, paired_differences, summarise


def rows_of(method, rewards, env="webshop", n=1, start=0):
    return [{"env": env, "split": "test", "task_id": start + i, "method": method, "n": n,
             "reward": float(r), "success": r == 1} for i, r in enumerate(rewards)]


@pytest.fixture(autouse=True)
def warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_ci_contains_the_mean_and_is_reproducible():
    values = [0.0, 0.2, 1.0, 1.0, 0.5, 0.75, 0.0, 1.0, 0.3, 0.9]
    mean, lo, hi = mean_ci(values, resamples=2000, seed=3)
    assert mean == pytest.approx(sum(values) / len(values)) and lo < mean < hi
    assert 0.0 <= lo and hi <= 1.0
    assert mean_ci(values, resamples=2000, seed=3) == (mean, lo, hi)
    assert mean_ci(values, resamples=2000, seed=4) != (mean, lo, hi)


def test_degenerate_samples():
    assert mean_ci([0.7], resamples=100) == (0.7, 0.7, 0.7)
    assert mean_ci([1.0, 1.0, 1.0], resamples=100) == (1.0, 1.0, 1.0)
    assert all(math.isnan(v) for v in mean_ci([], resamples=100))
    table = summarise(rows_of("q", [1.0]), resamples=100)
    assert table.loc[0, ["reward", "reward_lo", "reward_hi", "tasks"]].tolist() == [1.0, 1.0, 1.0, 1]
    assert summarise([], resamples=100).empty and paired_differences([], resamples=100).empty
    assert format_table(summarise([], resamples=100)) == "(no results)"


def test_known_case_point_estimates():
    rows = rows_of("q", [1, 1, 0, 0]) + rows_of("greedy", [0, 0, 0, 0])
    table = summarise(rows, resamples=500).set_index("method")
    assert table.loc["q", "success"] == 0.5 and table.loc["greedy", "success"] == 0.0
    assert table.loc["greedy", ["success_lo", "success_hi"]].tolist() == [0.0, 0.0]
    assert 0.0 <= table.loc["q", "success_lo"] <= 0.5 <= table.loc["q", "success_hi"] <= 1.0
    diff = paired_differences(rows, baseline="q", others=["greedy"], resamples=500)
    assert diff.loc[0, ["tasks", "success_diff", "reward_diff"]].tolist() == [4, 0.5, 0.5]
    assert diff.loc[0, "success_diff_lo"] <= 0.5 <= diff.loc[0, "success_diff_hi"]


def test_cis_do_not_depend_on_the_order_the_episodes_finished_in():
    """Parallel workers append rows out of task order; the same tasks must give the same CIs."""
    rewards = [0.1, 0.9, 0.4, 1.0, 0.0, 0.7, 0.2, 1.0, 0.0, 0.6, 0.3, 0.8]
    rows = rows_of("q", rewards) + rows_of("greedy", rewards[::-1])
    shuffled = rows[::-1]
    assert summarise(shuffled, resamples=500).sort_values("method").reset_index(drop=True).equals(
        summarise(rows, resamples=500).sort_values("method").reset_index(drop=True))
    assert paired_differences(shuffled, baseline="q", resamples=500).equals(
        paired_differences(rows, baseline="q", resamples=500))


def test_identical_methods_differ_by_zero():
    rewards = [0.1, 0.9, 0.4, 1.0, 0.0]
    rows = rows_of("q", rewards) + rows_of("random_pick", rewards)
    diff = paired_differences(rows, baseline="q", resamples=500)
    assert diff.loc[0, ["reward_diff", "reward_diff_lo", "reward_diff_hi"]].tolist() == [0.0, 0.0, 0.0]


def test_paired_uses_common_tasks_and_labels_several_n():
    rows = rows_of("q", [1, 0, 1], n=5) + rows_of("q", [0, 0, 0], n=3) + rows_of("bon", [1, 1], n=5)
    with pytest.raises(ValueError, match="ambiguous"):
        paired_differences(rows, baseline="q", resamples=100)
    diff = paired_differences(rows, baseline="q@5", resamples=100).set_index("other")
    assert diff.loc["bon", "tasks"] == 2 and diff.loc["bon", "reward_diff"] == -0.5
    assert diff.loc["q@3", "tasks"] == 3 and diff.loc["q@3", "success_diff"] == pytest.approx(2 / 3)
    table = summarise(rows, resamples=100)
    assert table.set_index("method").loc["bon", "oracle"] and not table["oracle"].iloc[0]


def test_replicates_average_per_task_and_errors_are_ignored():
    rows = rows_of("q", [1, 0]) + rows_of("q", [0, 0]) + [
        {"env": "webshop", "split": "test", "task_id": 9, "method": "q", "n": 1, "reward": None,
         "success": None, "error": "ConnectionError: down"}]
    table = summarise(rows, resamples=100)
    assert table.loc[0, "tasks"] == 2 and table.loc[0, "reward"] == 0.25


def test_envs_are_kept_apart_and_table_formats():
    rows = rows_of("q", [1, 0]) + rows_of("q", [1, 1], env="hotpotqa")
    table = summarise(rows, resamples=100)
    assert list(table["env"]) == ["webshop", "hotpotqa"]
    text = format_table(table)
    assert "1.000 [1.000, 1.000]" in text and "reward_lo" not in text


def test_f1_is_summarised_and_paired_only_where_rows_carry_it():
    hot = [dict(r, f1=f) for r, f in zip(rows_of("q", [0, 0, 1], env="hotpotqa"), [0.5, 0.25, 1.0])]
    hot += [dict(r, f1=0.0) for r in rows_of("sampled", [0, 0, 0], env="hotpotqa")]
    rows = hot + rows_of("q", [0.2, 0.4]) + rows_of("sampled", [0.1, 0.1])
    table = summarise(rows, resamples=300).set_index(["env", "method"])
    assert table.loc[("hotpotqa", "q"), "f1"] == pytest.approx(1.75 / 3)
    assert table.loc[("hotpotqa", "sampled"), ["f1", "f1_lo", "f1_hi"]].tolist() == [0.0, 0.0, 0.0]
    assert math.isnan(table.loc[("webshop", "q"), "f1"])
    diff = paired_differences(rows, baseline="q", others=["sampled"], resamples=300).set_index("env")
    assert diff.loc["hotpotqa", "f1_diff"] == pytest.approx(1.75 / 3)
    assert math.isnan(diff.loc["webshop", "f1_diff"]) and diff.loc["webshop", "reward_diff"] == pytest.approx(0.2)
    assert "f1" not in summarise(rows_of("q", [1.0]), resamples=100)


def test_action_agreement_counts_identical_action_sequences_on_common_tasks():
    def played(rewards, actions, start=0):
        return [dict(row, trajectory=[{"action": a} for a in acts])
                for row, acts in zip(rows_of("greedy", rewards, start=start), actions)]

    reference = played([1, 0, 0.5, 1], [["search[a]", "click[b]"], ["search[a]"], ["search[c]"], ["search[d]"]])
    other = played([1, 0.5, 0.5], [["search[a]", "click[b]"], ["search[x]"], ["search[c]"]])
    other.append({**other[0], "task_id": 7, "reward": None, "success": None, "error": "boom"})  # ignored
    line = action_agreement(reference, other, resamples=100)
    assert line["tasks"] == 3 and line["same_actions"] == 2  # task 3 is the reference's only
    assert line["reference"] == pytest.approx(0.5) and line["other"] == pytest.approx(2 / 3)
    assert line["reward_diff"] == pytest.approx(-1 / 6) and line["reward_diff_lo"] <= line["reward_diff"]
    assert action_agreement(reference, [], resamples=100)["tasks"] == 0
