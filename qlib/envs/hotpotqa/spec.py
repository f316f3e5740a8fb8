"""HotPotQA's registry entry (see :mod:`qlib.envs.registry`)."""
from qlib.envs.registry import EnvSpec, register


def answer_f1(row: dict) -> dict[str, float]:
    """Token F1 of the episode's ``finish[...]`` answer against the gold answer (0 without one).

    The reward is exact match (the paper's metric); F1 is a graded view of the same answers, computed
    from the stored trajectory, so older episode files get it too."""
    from qlib.envs.hotpotqa.env import parse_action
    from qlib.envs.hotpotqa.metrics import f1_score
    from qlib.envs.hotpotqa.tasks import load_tasks

    last = row["trajectory"][-1] if row.get("trajectory") else {}
    parsed = parse_action(last.get("action") or "") if last.get("done") else None
    gold = load_tasks()[row["task_id"]].answer
    return {"f1": f1_score(parsed[1], gold)[0] if parsed and parsed[0] == "finish" else 0.0}


SPEC = register(EnvSpec(
    name="hotpotqa",
    factory="qlib.envs.hotpotqa.env:HotPotQAEnv",
    verbs=("Search", "Lookup", "Finish"),
    action_separator=" Action: ",  # one-line turn (spec hotpotqa §3.4)
    observation_prefix="Observation: ",
    prompt_package="qlib.envs.hotpotqa",
    settings={"max_steps": 7, "depth_limit_reward": -1.0, "train_tasks": 1000, "valid_tasks": 100,
              "test_tasks": 100, "clone_demos": 1000},
    metrics=answer_f1,
    expert="qlib.envs.hotpotqa.oracle:oracle_actions",
    oracle_reward="qlib.envs.hotpotqa.oracle:oracle_reward",
    demonstrator="qlib.envs.hotpotqa.oracle:demonstration",
    search_bench="qlib.envs.hotpotqa.bench:bench_search",
    search_goal_ms=5.0,
    paper={  # Zhai et al. 2409.09345
        "table2": {"greedy": 0.20, "sampled": 0.20, "bon": 0.34, "q": 0.35,
                   "rft": 0.23, "agentevol": 0.23, "eto": 0.27},
        "table2_transfer": {"llama-3.1-8b": (0.46, 0.50), "gpt-4o-mini": (0.31, 0.44),
                            "gpt-4-turbo": (0.44, 0.50)},
        "table4": {"react": 0.31, "react+reflection": 0.39, "react+q": 0.46, "react+reflection+q": 0.48},
        "fig4a": {"ind": 0.67},
        "fig5a": "< 400 step pairs already give most of the gain",
    },
))
