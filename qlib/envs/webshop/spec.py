"""WebShop's registry entry (see :mod:`qlib.envs.registry`)."""
from qlib.envs.registry import EnvSpec, register

SPEC = register(EnvSpec(
    name="webshop",
    factory="qlib.envs.webshop.env:WebShopEnv",
    verbs=("search", "click"),
    action_separator="\nAction: ",  # two-line turn (spec webshop §9.1)
    observation_prefix="Observation:\n",
    prompt_package="qlib.envs.webshop",
    settings={"max_steps": 10, "depth_limit_reward": -0.5, "train_tasks": 1824, "valid_tasks": 100,
              "test_tasks": 100, "clone_demos": 1000},
    brackets_in_arguments=False,  # search[a [b]] parses as the verb "search[a " (spec §3)
    expert="qlib.envs.webshop.oracle:oracle_actions",
    oracle_reward="qlib.envs.webshop.oracle:oracle_reward",
    demonstrator="qlib.envs.webshop.oracle:demonstration",
    search_bench="qlib.envs.webshop.bench:bench_search",
    search_goal_ms=3.0,
    paper={  # Zhai et al. 2409.09345: Phi-3-mini-4k-instruct agent, Phi-1.5 Q model
        "table2": {"greedy": 0.30, "sampled": 0.30, "bon": 0.50, "q": 0.61,
                   "rft": 0.44, "agentevol": 0.50, "eto": 0.53},
        "table2_transfer": {"llama-3.1-8b": (0.48, 0.60), "gpt-4o-mini": (0.49, 0.64),
                            "gpt-4-turbo": (0.58, 0.64)},
        "table3": {("step", 1): 0.30, ("step", 3): 0.50, ("step", 5): 0.61, ("step", 7): 0.63,
                   ("trajectory", 1): 0.30, ("trajectory", 3): 0.42, ("trajectory", 5): 0.50,
                   ("trajectory", 7): 0.51},
        "fig4a": {"ind": 0.83},
    },
))
