"""One typed configuration for every stage, with three profiles (smoke, cpu, paper).

Values are nested dataclasses; overrides use dotted keys (``"mcts.iterations": 5``) and are
type-checked, so a typo or a bad value fails loudly with the offending key in the message.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Mapping

PROFILE_NAMES = ("smoke", "cpu", "paper")
DEFAULT_PROFILE = "cpu"


class ConfigError(ValueError):
    """An unknown key, an unknown profile or a value of the wrong type."""


@dataclass
class EnvSettings:
    """Per-environment settings."""

    max_steps: int
    depth_limit_reward: float  # MCTS reward when a rollout hits the depth limit without a terminal
    train_tasks: int  # tasks used for MCTS collection (from the train split)
    valid_tasks: int  # held-out in-distribution tasks (preference accuracy)
    test_tasks: int  # tasks reported in the results tables (from the test split)


@dataclass
class PolicyConfig:
    """The LLM agent that proposes actions."""

    backend: str = "llamacpp"  # llamacpp | hf | openai
    model: str = "smollm2-135m"  # embedded model name, or the endpoint's model id
    base_url: str | None = None  # OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key
    prompt: str = "react"  # react | reflection
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 128
    stop: list[str] = field(default_factory=lambda: ["Observation", "\nObservation"])
    constrain_actions: bool = True
    n_ctx: int = 8192  # SmolLM2-135M was trained with 8k context
    request_timeout: float = 60.0
    max_retries: int = 5
    concurrency: int = 4  # parallel requests when the endpoint ignores `n`
    n_threads: int = 2


@dataclass
class MCTSConfig:
    """Paper Algorithm 1 / Table 5."""

    iterations: int = 30  # m
    n_candidates: int = 5  # n, actions sampled per expansion
    eta: float = 2.0  # UCT exploration weight
    temperature: float = 1.0
    early_stop: bool = True  # stop the search once reward 1 is reached
    workers: int = 1  # tasks collected concurrently


@dataclass
class PairsConfig:
    """Preference-pair construction."""

    margin: float = 0.0  # skip a pair when the gap Q(chosen) - Q(rejected) is <= 0 or < margin
    variant: str = "paper"  # paper (path action vs min-Q sibling) | official (max-V vs min-V sibling)
    gamma: float = 0.9  # Q*Agent Bellman discount


@dataclass
class DPOConfig:
    """Step-level DPO training of the Q-value model (paper Table 5)."""

    beta: float = 0.1
    learning_rate: float = 1e-5
    warmup_ratio: float = 0.1
    batch_size: int = 16
    epochs: int = 3
    max_length: int = 1024
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    bf16: bool = True
    max_pairs: int = 0  # 0 = all pairs


@dataclass
class QNetConfig:
    """Q*Agent value head: backbone + MLP (2 x 1024, ReLU) trained with MSE."""

    hidden: int = 1024
    learning_rate: float = 1e-4
    epochs: int = 3
    batch_size: int = 16
    freeze_backbone: bool = True


@dataclass
class EvalConfig:
    """Stage 4: acting with the Q-value model and the baselines."""

    n_candidates: int = 5
    methods: list[str] = field(  # Table 2 methods (notebook 04)
        default_factory=lambda: ["greedy", "sampled", "bon", "q", "random_pick", "logprob_pick", "qnet"]
    )
    ablation_tasks: int = 0  # test tasks per ablation run (notebooks 05, 06); 0 = the env's test_tasks
    bootstrap_resamples: int = 10_000


@dataclass
class Config:
    """Everything a run needs; build with :func:`load_config`."""

    profile: str = "paper"
    seed: int = 0
    webshop: EnvSettings = field(
        default_factory=lambda: EnvSettings(
            max_steps=10, depth_limit_reward=-0.5, train_tasks=1824, valid_tasks=100, test_tasks=100
        )
    )
    hotpotqa: EnvSettings = field(
        default_factory=lambda: EnvSettings(
            max_steps=7, depth_limit_reward=-1.0, train_tasks=1000, valid_tasks=100, test_tasks=100
        )
    )
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    mcts: MCTSConfig = field(default_factory=MCTSConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    qnet: QNetConfig = field(default_factory=QNetConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def env(self, name: str) -> EnvSettings:
        """The settings of environment ``name`` (``webshop`` or ``hotpotqa``)."""
        if name not in ("webshop", "hotpotqa"):
            raise ConfigError(f"unknown environment {name!r}; expected 'webshop' or 'hotpotqa'")
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# Profiles are overrides on top of the paper's settings (the dataclass defaults).
PROFILES: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu": {
        # sized from measured costs on 2 shared cores so that `make reproduce` fits in about 2 hours:
        # WebShop ≈ 2.5 s per sampled step and ≈ 9 s per Q-guided step (n=5, 48-token turns),
        # HotPotQA episodes are mostly 1-3 steps. See README, Profiles.
        "webshop.max_steps": 6,
        "webshop.train_tasks": 6,
        "webshop.valid_tasks": 2,
        "webshop.test_tasks": 5,
        "hotpotqa.max_steps": 5,
        "hotpotqa.train_tasks": 8,
        "hotpotqa.valid_tasks": 2,
        "hotpotqa.test_tasks": 12,
        "mcts.iterations": 5,
        "policy.max_tokens": 48,
        "dpo.batch_size": 4,
        "dpo.learning_rate": 5e-5,
        "dpo.epochs": 2,
        "dpo.max_length": 512,
        "dpo.lora": True,
        "qnet.epochs": 3,
        "eval.methods": ["greedy", "sampled", "bon", "q", "random_pick", "qnet"],
        "eval.ablation_tasks": 3,
        "eval.bootstrap_resamples": 5000,
    },
    "smoke": {
        "webshop.train_tasks": 2,
        "webshop.valid_tasks": 1,
        "webshop.test_tasks": 1,
        "hotpotqa.train_tasks": 2,
        "hotpotqa.valid_tasks": 1,
        "hotpotqa.test_tasks": 1,
        "webshop.max_steps": 3,
        "hotpotqa.max_steps": 3,
        "mcts.iterations": 2,
        "mcts.n_candidates": 2,
        "policy.max_tokens": 32,
        "dpo.batch_size": 2,
        "dpo.epochs": 1,
        "dpo.max_length": 384,
        "dpo.lora": True,
        "qnet.epochs": 1,
        "qnet.batch_size": 4,
        "eval.n_candidates": 2,
        "eval.bootstrap_resamples": 200,
    },
}


def load_config(profile: str | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Build the config of ``profile`` (default ``cpu``) and apply dotted-key ``overrides``."""
    name = profile or DEFAULT_PROFILE
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILE_NAMES)}")
    config = Config(profile=name)
    for key, value in {**PROFILES[name], **dict(overrides or {})}.items():
        set_value(config, key, value)
    return config


def set_value(config: Config, key: str, value: Any) -> None:
    """Set dotted ``key`` on ``config`` after checking it exists and coercing ``value`` to its type."""
    target: Any = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        known = {f.name: f for f in fields(target)} if is_dataclass(target) else {}
        if part not in known:
            where = ".".join(parts[:depth]) or "config"
            raise ConfigError(
                f"unknown config key {key!r}: {where} has no field {part!r} "
                f"(known: {', '.join(sorted(known))})"
            )
        if depth == len(parts) - 1:
            if is_dataclass(getattr(target, part)):
                raise ConfigError(f"config key {key!r} is a section; set one of its fields instead")
            hint = typing.get_type_hints(type(target))[part]
            setattr(target, part, coerce(key, value, hint))
        else:
            target = getattr(target, part)


def coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert ``value`` (possibly a CLI string) to ``hint`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(key, value, option)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"config key {key!r}: bad value {value!r}")
    if origin is list:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} expects a list, got {value!r}")
        return [coerce(key, v, args[0] if args else Any) for v in value]
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"config key {key!r} expects true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r} expects an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r} expects an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r} expects a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r} expects a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key {key!r} expects a string, got {value!r}")
    raise ConfigError(f"config key {key!r} has an unsupported type {hint!r}")


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """Parse CLI ``key=value`` items into a dict (values stay strings; :func:`coerce` types them)."""
    result: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        result[key.strip()] = value.strip()
    return result


def flat_keys(config: Config | None = None) -> list[str]:
    """All dotted keys of the config (for help texts and notebooks)."""
    def walk(obj: Any, prefix: str) -> list[str]:
        keys: list[str] = []
        for f in fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                keys += walk(value, f"{prefix}{f.name}.")
            else:
                keys.append(prefix + f.name)
        return keys
    return walk(config or Config(), "")
