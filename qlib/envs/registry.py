"""The environment registry: everything environment-specific, in one :class:`EnvSpec` per environment.

Search, pairs, training, evaluation and the agent layer are written once for all environments; what
differs between WebShop, HotPotQA (and the test environment) is declared here, by each environment's
own package (``qlib/envs/<name>/spec.py``), and looked up by name:

* how to build it (``factory``, imported lazily) and its default settings (the paper's step limit,
  MCTS depth-limit reward, task counts);
* the action language the agent writes: verbs as the prompt spells them, the thought/action separator
  of the canonical turn, whether an argument may contain brackets;
* the prompt: the folder with ``instruction*.txt`` / ``icl_*.json`` and the prefix of an observation turn;
* metrics beyond the reward (HotPotQA answer F1), the scripted expert, and the paper's numbers for the
  experiments that the paper runs on this environment.

A third environment is one package plus one :func:`register` call (see ``qlib/testing/toy.py``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib import resources
from importlib.abc import Traversable
from typing import Any, Callable, Mapping

#: modules that register a built-in environment (imported on first lookup); the last is the test fixture
BUILTIN = ("qlib.envs.webshop.spec", "qlib.envs.hotpotqa.spec", "qlib.testing.toy")


@dataclass(frozen=True)
class EnvSpec:
    """Everything that is specific to one environment."""

    name: str
    factory: str | Callable[..., Any]  # "module:attr" or a callable; called with keyword settings
    verbs: tuple[str, ...]  # action verbs, spelled as the prompt shows them
    action_separator: str  # between thought and action in the canonical turn: "\nAction: " or " Action: "
    observation_prefix: str  # the user turn of an observation starts with this
    prompt_package: str  # package holding the prompt folder ``prompts/``
    settings: Mapping[str, Any]  # defaults of qlib.config.EnvSettings (the paper's values)
    brackets_in_arguments: bool = True  # False: an argument with [ or ] is invalid (WebShop's grammar)
    metrics: Callable[[dict[str, Any]], dict[str, float]] | None = None  # extra metrics of a result row
    expert: str | None = None  # "module:attr": (env, task_id) -> list of actions reaching the best reward
    oracle_reward: str | None = None  # "module:attr": (split, limit, max_steps) -> mean expert reward
    # "module:attr": (env, task_id, rng, mistake=bool) -> [(thought, action), ...], the expert's turns
    # (behaviour cloning, qlib.expert); the episode is played from env.reset(task_id)
    demonstrator: str | None = None
    paper: Mapping[str, Any] = field(default_factory=dict)  # the paper's numbers, by experiment
    search_bench: str | None = None  # "module:attr": (n_queries=...) -> flat dict of latencies (make bench)
    search_goal_ms: float | None = None  # p95 search latency goal of that benchmark
    testing: bool = False  # a test fixture: not part of the workbook's experiments

    def make(self, **settings: Any) -> Any:
        """A new environment instance (``settings`` e.g. ``max_steps=5``)."""
        return _resolve(self.factory)(**settings)

    def prompt_dir(self) -> Traversable:
        """The folder with this environment's instruction and in-context example files."""
        return resources.files(self.prompt_package) / "prompts"

    def expert_actions(self, env: Any, task_id: Any) -> list[str]:
        if self.expert is None:
            raise ValueError(f"environment {self.name!r} has no scripted expert")
        return _resolve(self.expert)(env, task_id)

    def expert_reward(self, split: str, limit: int | None, max_steps: int) -> float:
        if self.oracle_reward is None:
            raise ValueError(f"environment {self.name!r} has no scripted expert")
        return _resolve(self.oracle_reward)(split, limit=limit, max_steps=max_steps)

    def demonstration(self, env: Any, task_id: Any, rng: Any, mistake: bool = False) -> list[tuple[str, str]]:
        if self.demonstrator is None:
            raise ValueError(f"environment {self.name!r} has no expert demonstrator")
        return _resolve(self.demonstrator)(env, task_id, rng, mistake=mistake)

    def run_search_bench(self, n_queries: int) -> dict[str, Any]:
        return _resolve(self.search_bench)(n_queries=n_queries)

    def row_metrics(self, row: dict[str, Any]) -> dict[str, float]:
        """Metrics of one finished episode row beyond its reward (empty for most environments)."""
        return self.metrics(row) if self.metrics is not None else {}


_SPECS: dict[str, EnvSpec] = {}
_loaded = False


def register(spec: EnvSpec) -> EnvSpec:
    """Add ``spec`` (an environment of the same name is replaced)."""
    _SPECS[spec.name] = spec
    return spec


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN:
            importlib.import_module(module)


def get_spec(name: str) -> EnvSpec:
    """The spec of environment ``name``; a clear error for an unknown name."""
    _load_builtins()
    if isinstance(name, EnvSpec):
        return name
    try:
        return _SPECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown environment {name!r}; registered: {', '.join(sorted(_SPECS))}") from None


def env_names(*, include_testing: bool = False) -> tuple[str, ...]:
    """Registered environment names in registration order (test fixtures only when asked)."""
    _load_builtins()
    return tuple(n for n, s in _SPECS.items() if include_testing or not s.testing)


def envs_with_paper(key: str) -> tuple[str, ...]:
    """The environments on which the paper reports experiment ``key`` (e.g. ``"table3"``)."""
    return tuple(n for n in env_names() if key in _SPECS[n].paper)


def setting(name: str, key: str, config: Any = None) -> Any:
    """Setting ``key`` of environment ``name``: the config's value when it has a section for the
    environment, else the registry entry's default (a test fixture has no config section)."""
    if config is not None:
        try:
            return getattr(config.env(name), key)
        except ValueError:
            pass
    return get_spec(name).settings[key]


def make(name: str, config: Any = None, **settings: Any) -> Any:
    """Build environment ``name``.

    Without ``config`` it has the spec's (the paper's) step limit; with a :class:`qlib.config.Config`
    it takes that config's ``max_steps`` for the environment (when the config has a section for it);
    keyword ``settings`` override both.
    """
    return get_spec(name).make(**{"max_steps": setting(name, "max_steps", config), **settings})


def _resolve(target: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
