import pytest

from qlib.config import ConfigError, PROFILES, flat_keys, load_config, parse_overrides


def test_default_profile_is_cpu_and_paper_has_table5_settings():
    assert load_config().profile == "cpu"
    paper = load_config("paper")
    assert (paper.mcts.iterations, paper.mcts.n_candidates, paper.mcts.eta) == (30, 5, 2.0)
    assert paper.mcts.temperature == 1.0
    assert (paper.webshop.max_steps, paper.hotpotqa.max_steps) == (10, 7)
    assert (paper.dpo.beta, paper.dpo.learning_rate, paper.dpo.warmup_ratio, paper.dpo.batch_size) == (0.1, 1e-5, 0.1, 16)
    assert (paper.webshop.train_tasks, paper.hotpotqa.train_tasks) == (1824, 1000)
    assert paper.webshop.test_tasks == paper.hotpotqa.test_tasks == 100


def test_profiles_shrink_budgets():
    smoke, cpu, paper = (load_config(p) for p in ("smoke", "cpu", "paper"))
    assert smoke.mcts.iterations < cpu.mcts.iterations < paper.mcts.iterations
    assert smoke.webshop.train_tasks < cpu.webshop.train_tasks < paper.webshop.train_tasks


def test_every_profile_override_names_a_real_key():
    keys = set(flat_keys())
    for name, overrides in PROFILES.items():
        assert set(overrides) <= keys, name


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="mcts.iteration'"):
        load_config("smoke", {"mcts.iteration": 3})
    with pytest.raises(ConfigError, match="nope"):
        load_config("smoke", {"nope.x": 3})


def test_unknown_profile():
    with pytest.raises(ConfigError, match="unknown profile 'gpu'"):
        load_config("gpu")


@pytest.mark.parametrize(
    "key, raw, expected",
    [
        ("mcts.iterations", "12", 12),
        ("mcts.eta", "1.5", 1.5),
        ("mcts.eta", 3, 3.0),
        ("mcts.early_stop", "false", False),
        ("policy.base_url", "http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1"),
        ("policy.base_url", "none", None),
        ("policy.stop", '["a", "b"]', ["a", "b"]),
        ("eval.methods", "greedy,q", ["greedy", "q"]),
    ],
)
def test_override_types_are_coerced(key, raw, expected):
    config = load_config("smoke", {key: raw})
    section, field = key.split(".")
    assert getattr(getattr(config, section), field) == expected


@pytest.mark.parametrize(
    "key, raw",
    [("mcts.iterations", "many"), ("mcts.iterations", 2.5), ("mcts.early_stop", "maybe"),
     ("mcts.eta", "fast"), ("mcts.iterations", True), ("policy.model", 3), ("mcts", 3)],
)
def test_bad_values_name_the_key(key, raw):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("smoke", {key: raw})


def test_parse_overrides():
    assert parse_overrides(["a.b=1", "c.d = x=y"]) == {"a.b": "1", "c.d": "x=y"}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["oops"])


def test_profile_overrides_do_not_leak_between_loads():
    load_config("smoke", {"mcts.iterations": 99})
    assert load_config("smoke").mcts.iterations == PROFILES["smoke"]["mcts.iterations"]
