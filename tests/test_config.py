import copy
import json
import pickle
import re

import pytest
from pydantic import ValidationError

from qlib.config import (
    PROFILES, Config, ConfigError, DPOConfig, EnvSettings, EvalConfig, MCTSConfig, PairsConfig, PolicyConfig,
    QNetConfig, describe, flat_keys, load_config, parse_overrides, with_overrides,
)
from qlib.envs.registry import env_names, get_spec


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
    assert smoke.mcts.iterations < cpu.mcts.iterations <= paper.mcts.iterations
    assert smoke.webshop.train_tasks < cpu.webshop.train_tasks < paper.webshop.train_tasks


def test_cpu_profile_searches_tasks_the_agent_was_not_cloned_on():
    """The cloning demonstrations come from the first train tasks (the expert solves most of them); the
    cpu profile's MCTS starts past them, so the Q model learns from tasks as unseen as the test tasks."""
    cpu = load_config("cpu")
    for env in ("webshop", "hotpotqa"):
        window = cpu.task_slice(env, "train")
        assert window.start >= cpu.env(env).clone_demos and window.stop - window.start == cpu.env(env).train_tasks
        assert cpu.task_slice(env, "test") == slice(0, 100)  # the paper's 100 test tasks


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
        ("eval.methods", "[]", []),
        ("mcts.early_stop", "yes", True),
        ("mcts.iterations", "1_000", 1000),
        ("mcts.iterations", 4.0, 4),
        ("dpo.learning_rate", "1e-4", 1e-4),
        ("policy.base_url", "null", None),
        ("webshop.max_steps", "4", 4),
    ],
)
def test_override_types_are_coerced(key, raw, expected):
    config = load_config("smoke", {key: raw})
    section, field = key.split(".")
    assert getattr(getattr(config, section), field) == expected


@pytest.mark.parametrize(
    "key, raw",
    [("mcts.iterations", "many"), ("mcts.iterations", 2.5), ("mcts.early_stop", "maybe"),
     ("mcts.eta", "fast"), ("mcts.iterations", True), ("mcts.eta", False), ("policy.model", 3), ("mcts", 3),
     ("policy.top_p", "high"), ("envs.hotpotqa.test_tasks", "-1")],
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


# ----------------------------------------------------------------------------- pydantic models
def test_every_field_has_help_text():
    sections = [Config, EnvSettings, PolicyConfig, MCTSConfig, PairsConfig, DPOConfig, QNetConfig, EvalConfig]
    for section in sections:
        for name, info in section.model_fields.items():
            assert info.description, f"{section.__name__}.{name}"
    rows = describe()
    assert [key for key, *_ in rows] == flat_keys()
    assert all(help_text for *_, help_text in rows)
    assert ("mcts.iterations", "int (>= 1)", 30, "m, search iterations per task") in rows


def test_env_settings_default_from_the_registry():
    config = Config()
    assert set(config.envs) == set(env_names())
    for name in env_names():
        assert config.env(name).model_dump() == {"train_start": 0, "ood_tasks": 0, **get_spec(name).settings}
    assert (config.env("webshop").max_steps, config.env("hotpotqa").max_steps) == (10, 7)
    assert config.webshop is config.envs["webshop"]  # attribute shorthand
    with pytest.raises(ConfigError, match="unknown environment 'nope'.*webshop"):
        config.env("nope")
    with pytest.raises(AttributeError):
        config.nope


def test_env_keys_short_and_long_form():
    short = load_config("smoke", {"webshop.max_steps": "6"})
    long = load_config("smoke", {"envs.webshop.max_steps": 6})
    assert short.webshop.max_steps == long.env("webshop").max_steps == 6
    assert short == long
    # the user's key wins over the profile's, whichever way either is spelled
    assert load_config("cpu", {"envs.hotpotqa.test_tasks": 3}).hotpotqa.test_tasks == 3
    with pytest.raises(ConfigError, match="'envs.webshop.max_steps'"):
        load_config("smoke", {"envs.webshop.max_steps": 0})
    with pytest.raises(ConfigError, match="'webshop.max_steps'"):
        load_config("smoke", {"webshop.max_steps": "many"})
    with pytest.raises(ConfigError, match="'envs.toy.max_steps'.*known: hotpotqa, webshop"):
        load_config("smoke", {"envs.toy.max_steps": 3})


@pytest.mark.parametrize("key", ["mcts", "envs", "webshop", "envs.webshop"])
def test_section_keys_are_refused(key):
    with pytest.raises(ConfigError, match=f"'{key}' is a section"):
        load_config("smoke", {key: 3})


def test_a_value_is_not_a_section():
    with pytest.raises(ConfigError, match="'mcts.eta.x'"):
        load_config("smoke", {"mcts.eta.x": 1})


@pytest.mark.parametrize(
    "key, raw, expected",
    [("mcts.iterations", 0, ">= 1|greater than or equal to 1"), ("mcts.n_candidates", "0", "greater than or equal"),
     ("policy.temperature", -0.1, "greater than or equal to 0"), ("policy.top_p", 0, "greater than 0"),
     ("policy.top_p", 1.5, "less than or equal to 1"), ("policy.backend", "vllm", "'llamacpp', 'hf' or 'openai'"),
     ("policy.prompt", "cot", "'react' or 'reflection'"), ("pairs.variant", "best", "'paper' or 'official'"),
     ("policy.stop", "[1]", "item 0")],
)
def test_constraints_say_what_is_expected(key, raw, expected):
    with pytest.raises(ConfigError, match=rf"'{re.escape(key)}'.*({expected})"):
        load_config("smoke", {key: raw})


def test_every_profile_validates():
    for name in PROFILES:
        config = load_config(name)
        assert config.profile == name and Config.model_validate(config.to_dict()) == config


def test_with_overrides_returns_a_validated_copy():
    base = load_config("smoke")
    snapshot = base.to_dict()
    changed = with_overrides(base, {"mcts.iterations": "7", "webshop.test_tasks": 4, "policy.stop": "x,y"})
    assert (changed.mcts.iterations, changed.webshop.test_tasks, changed.policy.stop) == (7, 4, ["x", "y"])
    assert base.to_dict() == snapshot
    changed.policy.stop.append("z")
    assert base.policy.stop == snapshot["policy"]["stop"]
    with pytest.raises(ConfigError, match="'mcts.iterations'"):
        with_overrides(base, {"mcts.iterations": -1})
    assert base.to_dict() == snapshot


def test_assignment_is_validated():
    config = load_config("smoke")
    config.mcts.iterations = "4"
    assert config.mcts.iterations == 4
    with pytest.raises(ValidationError):
        config.mcts.iterations = 0
    with pytest.raises(ValidationError):
        config.policy.temprature = 0.5
    with pytest.raises(ValidationError):
        PolicyConfig(backend="vllm")


def test_config_copies_pickles_and_serialises():
    config = load_config("cpu", {"policy.base_url": "http://x/v1"})
    for clone in (copy.deepcopy(config), pickle.loads(pickle.dumps(config))):
        assert clone == config and clone is not config
        assert clone.webshop.train_start == 200 and clone.env("hotpotqa").train_tasks == 700
        clone.webshop.max_steps = 9
        assert config.webshop.max_steps == 10
    data = json.loads(config.to_json())
    assert data == json.loads(json.dumps(config.to_dict()))
    assert data["envs"]["webshop"]["max_steps"] == 10 and data["envs"]["webshop"]["train_start"] == 200
    assert "webshop" not in data and "hotpotqa" not in data


def test_second_agent_section_is_the_policy_overrides_of_the_ood_trees():
    base = load_config("paper").second_agent
    assert base.overrides() == {"policy.model": "smollm2-135m", "policy.icl": True, "policy.clone_checkpoint": 0}
    config = with_overrides(load_config("cpu"), {"second_agent.model": "smollm2-135m-bc", "second_agent.icl": "false",
                                                  "second_agent.clone_checkpoint": "50"})
    played = with_overrides(config, config.second_agent.overrides()).policy
    assert (played.model, played.icl, played.clone_checkpoint) == ("smollm2-135m-bc", False, 50)
    with pytest.raises(ConfigError, match="second_agent.clone_checkpoint"):
        with_overrides(config, {"second_agent.clone_checkpoint": -1})
