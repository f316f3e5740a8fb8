"""One typed configuration for every stage, with three profiles (smoke, cpu, paper).

The config is a tree of pydantic models: :class:`Config` holds one section per stage (``policy``,
``mcts``, ``pairs``, ``dpo``, ``qnet``, ``eval``) and one :class:`EnvSettings` per environment under
``envs``, whose defaults (the paper's step limit, depth-limit reward and task counts) come from the
environment registry (:mod:`qlib.envs.registry`), so a new environment needs no edit here. Every
setting carries its help text (``Field(description=...)``, listed by :func:`describe`) and its
constraints, and all validation happens in pydantic: unknown fields are rejected and assignments are
checked too.

Overrides use dotted keys (``"mcts.iterations": 5``); an environment's settings may be written
``"<env>.max_steps"`` or ``"envs.<env>.max_steps"``. Values may be CLI strings (``"5"``, ``"true"``,
``"none"``, ``'["a","b"]'`` or ``a,b`` for lists) and are converted by pydantic's lax mode. A typo, a
section given as a value or a bad value fails with a :class:`ConfigError` naming the offending key.
"""
from __future__ import annotations

import json
import typing
from typing import Any, Literal, Mapping, Sequence

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from qlib.envs.registry import env_names, get_spec
from qlib.provision import CLONE_NAME, EMBEDDED_NAME

PROFILE_NAMES = ("smoke", "cpu", "paper")
DEFAULT_PROFILE = "cpu"


class ConfigError(ValueError):
    """An unknown key, an unknown profile or a bad value (the message names the dotted key)."""


# ----------------------------------------------------------------------------- sections
class Section(BaseModel):
    """Base of every config section: unknown fields are errors, assignments are validated, and values
    written as text (CLI ``--set``, notebooks) are read the way a user means them."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _read_text(cls, value: Any, info: ValidationInfo) -> Any:
        hint = cls.model_fields[info.field_name].annotation
        args = typing.get_args(hint)
        if isinstance(value, bool) and hint in (int, float):  # lax mode would read True as 1
            raise PydanticCustomError("bool_for_number", "expected a number, not a boolean")
        if isinstance(value, str) and type(None) in args and value.strip().lower() in ("none", "null"):
            return None
        if isinstance(value, str) and typing.get_origin(hint) is list:
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                return [v.strip() for v in value.split(",") if v.strip()]
        return value


class EnvSettings(Section):
    """Per-environment settings; the defaults are each environment's registry ``settings``."""

    max_steps: int = Field(ge=1, description="steps before an episode is cut off (the paper's step limit)")
    depth_limit_reward: float = Field(
        description="MCTS reward when a rollout hits the depth limit without a terminal"
    )
    train_tasks: int = Field(ge=0, description="tasks used for MCTS collection (from the train split)")
    train_start: int = Field(0, ge=0, description="position in the train split of the first MCTS task: set past "
                             "the cloning demonstrations' tasks so that the search explores tasks the agent was "
                             "not cloned on, as the test tasks are")
    valid_tasks: int = Field(ge=0, description="held-out in-distribution tasks (preference accuracy)")
    ood_tasks: int = Field(0, ge=0, description="valid tasks searched by the second agent (its trees give the "
                           "out-of-distribution pairs); 0 = valid_tasks")
    test_tasks: int = Field(ge=0, description="tasks reported in the results tables (from the test split)")
    clone_demos: int = Field(ge=0, description="expert demonstrations for behaviour cloning (first train tasks "
                             "the expert solves)")


class PolicyConfig(Section):
    """The LLM agent that proposes actions."""

    backend: Literal["llamacpp", "hf", "openai"] = Field(
        "llamacpp", description="llamacpp (embedded GGUF) | hf (transformers) | openai (compatible endpoint)"
    )
    model: str = Field(
        "smollm2-135m", description="smollm2-135m (the embedded base) | smollm2-135m-bc (the environment's "
        "behaviour-cloned agent, from `clones`) | a GGUF file (llamacpp) or model folder (hf) | the endpoint's model id")
    clones: str = Field(
        "", description="folder with one behaviour-cloned agent per environment (<folder>/<env>/); "
        "empty = runs/<profile>/clones")
    clone_checkpoint: int = Field(
        0, ge=0, description="0 = the final behaviour-cloned agent; k = its learning-curve checkpoint after k "
        "demonstrations (<clones>/<env>/curve/<k>/, saved at `clone.curve`): a weaker agent of the same kind")
    base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1"
    )
    api_key_env: str = Field("OPENAI_API_KEY", description="name of the environment variable holding the key")
    prompt: Literal["react", "reflection"] = Field("react", description="prompt variant: react | reflection")
    icl: bool = Field(True, description="put the in-context (few-shot) examples in the policy's prompt; the "
                      "behaviour-cloned agent is trained and run without them")
    temperature: float = Field(1.0, ge=0, description="sampling temperature of proposed turns")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    max_tokens: int = Field(128, ge=1, description="generated tokens per turn")
    stop: list[str] = Field(["Observation", "\nObservation"], description="strings that end a generated turn")
    constrain_actions: bool = Field(True, description="constrain the action to the env's valid actions (grammar)")
    n_ctx: int = Field(8192, ge=1, description="context window in tokens (SmolLM2-135M was trained with 8k)")
    request_timeout: float = Field(60.0, gt=0, description="seconds before an endpoint request is abandoned")
    max_retries: int = Field(5, ge=0, description="retries of a failed endpoint request (with backoff)")
    concurrency: int = Field(4, ge=1, description="parallel requests when the endpoint ignores `n`")
    n_threads: int = Field(2, ge=1, description="CPU threads of the embedded model")


class CloneConfig(Section):
    """Stage 0: behaviour cloning of the agent on scripted-expert trajectories of train tasks (notebook 00)."""

    thoughts: bool = Field(True, description="a short informative thought before each action (False: an empty "
                           "'Thought:', cheaper to decode)")
    mistake_rate: float = Field(0.0, ge=0, le=1, description="share of demonstrations with one injected mistake "
                                "and the expert's recovery (a wrong product then '< Prev'; a wrong search then the "
                                "right one)")
    lora: bool = Field(False, description="train a LoRA adapter (small enough to commit: 9 MB) instead of the full "
                       "model; measured on WebShop (150 demos, first 100 test tasks): full 0.67 vs LoRA r=16 0.36 greedy reward")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling alpha")
    learning_rate: float = Field(1e-4, gt=0, description="peak learning rate (the LoRA run used 5e-4)")
    warmup_ratio: float = Field(0.05, ge=0, le=1, description="fraction of steps with linear warmup")
    lr_scheduler: Literal["constant_with_warmup", "linear", "cosine"] = Field(
        "linear", description="learning-rate schedule after warm-up")
    batch_size: int = Field(4, ge=1, description="sequences per optimiser step (one per micro-batch, accumulated)")
    epochs: int = Field(1, ge=1, description="passes over the demonstrations")
    max_length: int = Field(4096, ge=64, description="tokens per training sequence; a longer trajectory is split "
                            "into windows whose prompts drop the oldest steps (a turn is never cut)")
    bf16: bool = Field(True, description="bfloat16 autocast where the CPU/GPU supports it (about 2x faster)")
    curve: list[int] = Field([], description="learning-curve checkpoints: the adapter is also saved after this "
                             "many trajectories have been seen")


class FinetuneConfig(Section):
    """Table 2's fine-tuning rows (:mod:`qlib.finetune`): the agent itself fine-tuned on the training trees
    (RFT, AgentEvol, ETO) or on its own Q-guided episodes (Q*Agent self-training), each a LoRA on the agent."""

    success_threshold: float = Field(
        1.0, description="a trajectory is successful when its final environment reward is >= this (RFT data, "
        "self-training data, ETO's failed trajectory is below it); 1.0 = the paper's success (WebShop's graded "
        "reward: every attribute, option and the price matched); lower it to count partial WebShop matches")
    agentevol_min_reward: float = Field(
        0.0, description="AgentEvol: finished trajectories whose reward is <= this get no weight (dropped); the "
        "others are learned with loss weight = reward (a depth-limit cut is never 'finished')")
    agentevol_per_task: int = Field(
        0, ge=0, description="AgentEvol: keep at most this many trajectories per task, highest reward first (ties: "
        "tree order); 0 = all. A cap keeps the cost near RFT's: 200 WebShop trees hold 1,812 finished "
        "trajectories (≈ 10 h of fine-tuning at 2 epochs on 2 cores) against RFT's 152")
    eto_beta: float = Field(0.1, gt=0, description="ETO: DPO inverse temperature of the trajectory-level loss")
    eto_learning_rate: float = Field(5e-5, gt=0, description="ETO: peak learning rate (DPO on the agent)")
    st_q_model: Literal["step", "qnet"] = Field(
        "step", description="Q*Agent self-training: the Q model that picks among the candidates while the agent "
        "explores the training tasks (the step-level DPO Q model, or the QNet)")
    st_episodes: int = Field(1, ge=1, description="Q*Agent self-training: Q-guided episodes per training task "
                             "(episode k runs with seed + k)")
    lora_r: int = Field(16, ge=1, description="LoRA rank of every fine-tuned agent")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling alpha")
    learning_rate: float = Field(2e-4, gt=0, description="RFT / AgentEvol / self-training: peak learning rate")
    batch_size: int = Field(4, ge=1, description="sequences (SFT) or pairs (ETO) per optimiser step")
    epochs: int = Field(2, ge=1, description="passes over the fine-tuning data")
    max_length: int = Field(2048, ge=64, description="tokens per training sequence (SFT windows; ETO pairs: "
                            "the prompt cut from the left, whole trajectories too long for it from the right)")
    bf16: bool = Field(True, description="bfloat16 autocast where the device supports it")


class MCTSConfig(Section):
    """Paper Algorithm 1 / Table 5."""

    iterations: int = Field(30, ge=1, description="m, search iterations per task")
    n_candidates: int = Field(5, ge=1, description="n, actions sampled per expansion")
    eta: float = Field(2.0, ge=0, description="UCT exploration weight")
    temperature: float = Field(1.0, ge=0, description="sampling temperature of expansions")
    early_stop: bool = Field(True, description="stop the search once reward 1 is reached")
    workers: int = Field(1, ge=1, description="tasks collected concurrently (local backends: one model per "
                         "worker, policy.n_threads split between them)")
    backup_expansion_terminals: bool = Field(
        True, description="back up, once, every terminal child an expansion reaches besides the rolled-out one "
        "(a success found while expanding counts in V along its path); false = the official code: only the "
        "rollout is backed up")
    select_terminals: bool = Field(
        False, description="let UCT re-select terminal children (an iteration then only re-scores a known "
        "outcome, no expansion); false = paper: selection skips terminal and exhausted subtrees, so m "
        "iterations are m expansions unless the tree is exhausted")


class SecondAgentConfig(Section):
    """The second agent: its MCTS trees on the valid tasks give the out-of-distribution pairs of Fig. 4a
    (notebook 01, split ``valid_ood``); the paper used Llama-3.1-8B beside its Phi-3-mini agent."""

    model: str = Field(EMBEDDED_NAME, description="its policy.model (the same choices as policy.model)")
    icl: bool = Field(True, description="its policy.icl: the few-shot examples in its prompt")
    clone_checkpoint: int = Field(0, ge=0, description="its policy.clone_checkpoint (with model "
                                  f"{CLONE_NAME}: k = the clone's learning-curve checkpoint after k demonstrations)")

    def overrides(self) -> dict[str, Any]:
        """The policy.* overrides that make the profile's policy this agent."""
        return {f"policy.{key}": value for key, value in self.model_dump().items()}


class PairsConfig(Section):
    """Preference-pair construction."""

    margin: float = Field(
        0.0, ge=0, description="skip a pair when the gap Q(chosen) - Q(rejected) is <= 0 or < margin"
    )
    variant: Literal["paper", "official"] = Field(
        "paper", description="paper (path action vs min-Q sibling) | official (max-V vs min-V sibling)"
    )
    gamma: float = Field(0.9, ge=0, le=1, description="Q*Agent Bellman discount")
    from_unsuccessful_trees: bool = Field(
        False, description="also build step/trajectory pairs from trees whose best terminal has no positive "
        "reward (a weak agent's only data: 'finished' vs 'hit the step limit'); false = paper: pairs only from "
        "searches that found a positive reward")
    rollout_best_path: bool = Field(
        False, description="let the best path run into rollout nodes (the chosen action's Q is then one "
        "sample); false = paper/official: the best path is the tree-node prefix of the path to the best terminal")


class DPOConfig(Section):
    """Step-level DPO training of the Q-value model (paper Table 5)."""

    beta: float = Field(0.1, gt=0, description="DPO inverse temperature (strength of the reference KL)")
    init: Literal["base", "agent"] = Field(
        "base", description="starting weights (and DPO reference) of the Q model: the embedded base model, or "
        "the profile's agent (the behaviour-cloned model, merged; the base when the agent is the base)")
    learning_rate: float = Field(1e-5, gt=0, description="peak learning rate")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="fraction of steps with linear warmup")
    lr_scheduler: Literal["constant_with_warmup", "linear", "cosine"] = Field(
        "constant_with_warmup", description="learning-rate schedule after warm-up (transformers name); the "
        "official scripts keep it constant")
    batch_size: int = Field(16, ge=1, description="pairs per optimiser step")
    epochs: int = Field(1, ge=1, description="passes over the pairs (paper Fig. 5a: one epoch)")
    max_length: int = Field(4096, ge=1, description="tokens of prompt + turn (Table 5: max context 4096); "
                            "longer pairs: the prompt cut from the left (trajectories too long for it: from the right)")
    lora: bool = Field(False, description="train a LoRA adapter instead of the full model")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling alpha")
    bf16: bool = Field(True, description="bfloat16 weights and compute where the device supports it")
    max_pairs: int = Field(0, ge=0, description="pairs used for training; 0 = all pairs")


class QNetConfig(Section):
    """Q*Agent value head: backbone + MLP (2 x 1024, ReLU) trained with MSE."""

    hidden: int = Field(1024, ge=1, description="width of the two MLP layers")
    learning_rate: float = Field(1e-4, gt=0, description="learning rate")
    epochs: int = Field(3, ge=1, description="passes over the rows")
    batch_size: int = Field(16, ge=1, description="rows per optimiser step")
    freeze_backbone: bool = Field(True, description="train the head only (the backbone stays fixed)")


class EvalConfig(Section):
    """Stage 4: acting with the Q-value model and the baselines."""

    n_candidates: int = Field(5, ge=1, description="candidate turns per step for bon, q and the pick baselines")
    workers: int = Field(1, ge=1, description="episodes run concurrently (local backends: one model per worker, "
                         "policy.n_threads split between them; one Q model shared, its calls serialised)")
    methods: list[str] = Field(
        ["greedy", "sampled", "bon", "q", "random_pick", "logprob_pick", "qnet"],
        description="Table 2 methods (notebook 04)",
    )
    ablation_tasks: int = Field(
        0, ge=0, description="test tasks per ablation run (notebooks 05, 06); 0 = the env's test_tasks"
    )
    bootstrap_resamples: int = Field(10_000, ge=1, description="resamples of the bootstrap confidence intervals")
    reuse_only: bool = Field(
        False, description="report from the finished episode rows on disk (e.g. a restored release) without "
        "computing: no episode runs (a task without a finished row is left out of the tables, with a warning: "
        "each table's `tasks` column says how many it holds) and no missing fine-tuned agent is trained")
    lookahead_peek_reward: bool = Field(
        False, description="qnet_lookahead (QLASS): a candidate whose look-ahead step ends the episode is scored "
        "by the environment's true reward instead of the QNet. It reads the reward at test time (an oracle "
        "peek, as QLASS does), so it is off by default and its rows are labelled qnet_lookahead+peek")


def registered_envs() -> dict[str, EnvSettings]:
    """One :class:`EnvSettings` per registered environment (test fixtures excluded), with the paper's values."""
    return {name: EnvSettings(**get_spec(name).settings) for name in env_names()}


class Config(Section):
    """Everything a run needs; build with :func:`load_config`.

    ``config.env(name)`` (or the shorthand ``config.<name>``) is environment ``name``'s settings.
    """

    profile: str = Field("paper", description="the profile this config was built from")
    seed: int = Field(0, description="seed of search, sampling and training")
    envs: dict[str, EnvSettings] = Field(
        default_factory=registered_envs, description="settings of each environment, by registry name"
    )
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description=PolicyConfig.__doc__)
    clone: CloneConfig = Field(default_factory=CloneConfig, description=CloneConfig.__doc__)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description=FinetuneConfig.__doc__)
    mcts: MCTSConfig = Field(default_factory=MCTSConfig, description=MCTSConfig.__doc__)
    second_agent: SecondAgentConfig = Field(default_factory=SecondAgentConfig, description=SecondAgentConfig.__doc__)
    pairs: PairsConfig = Field(default_factory=PairsConfig, description=PairsConfig.__doc__)
    dpo: DPOConfig = Field(default_factory=DPOConfig, description=DPOConfig.__doc__)
    qnet: QNetConfig = Field(default_factory=QNetConfig, description=QNetConfig.__doc__)
    eval: EvalConfig = Field(default_factory=EvalConfig, description=EvalConfig.__doc__)

    def env(self, name: str) -> EnvSettings:
        """The settings of environment ``name``; a ConfigError naming the known environments otherwise."""
        try:
            return self.envs[name]
        except (KeyError, TypeError):
            raise ConfigError(f"unknown environment {name!r}; expected one of {', '.join(self.envs)}") from None

    def task_slice(self, name: str, split: str, limit: int | None = None) -> slice:
        """The default tasks of ``split`` as positions in ``env.task_ids(split)``: the first ``limit``
        (default: the environment's ``<split>_tasks``), from ``train_start`` on for the train split."""
        settings = self.env(name)
        start = settings.train_start if split == "train" else 0
        count = getattr(settings, f"{split}_tasks") if limit is None else limit
        return slice(start, start + count)

    def default_tasks(self, name: str, split: str, ids: Sequence[Any], limit: int | None = None) -> list[Any]:
        """``ids[self.task_slice(...)]``; for an environment the config has no settings for (a test fixture),
        the first ``limit`` ids (default all)."""
        if name not in self.envs:
            return list(ids)[:limit]
        return list(ids)[self.task_slice(name, split, limit)]

    def __getattr__(self, name: str) -> Any:
        # ``config.<env>`` is ``config.envs[<env>]``; everything else is pydantic's own lookup
        envs = self.__dict__.get("envs")
        if envs is not None and name in envs:
            return envs[name]
        return super().__getattr__(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts and lists (JSON-serialisable); environments under ``"envs"``."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# ----------------------------------------------------------------------------- profiles
# Profiles are overrides on top of the paper's settings (the model defaults).
CLONED_AGENT = {"policy.model": CLONE_NAME, "policy.icl": False}  # stage 0's agent, no few-shot examples
PROFILES: dict[str, dict[str, Any]] = {
    "paper": {**CLONED_AGENT},
    "cpu": {
        **CLONED_AGENT,
        # The paper's search, step limits and test-set size on the behaviour-cloned agent, sized from
        # measurements on 2 cores (README, Profiles): an MCTS tree of the cloned agent costs ≈ 40 s (WebShop) /
        # ≈ 20 s (HotPotQA) and gives ≈ 1.5 (WebShop) step pairs, because the agent often succeeds in the first
        # rollout and its candidates are few and alike (trees exhaust before m=30).
        "webshop.train_start": 200,  # the 150 cloning demonstrations use the first 163 train tasks
        "webshop.train_tasks": 200,  # ≥ 300 step pairs (the first 154 trees gave 234)
        "webshop.valid_tasks": 50,
        "webshop.test_tasks": 100,
        "webshop.clone_demos": 150,
        "hotpotqa.train_start": 300,  # the 300 cloning demonstrations use the first 300 train tasks
        # every train task past the demonstrations: the first 68 HotPotQA trees gave 0.43 step pairs each (21 of 68
        # reach reward 1), so ≥ 300 pairs need ≈ 700 trees; valid trees on all 100 valid tasks for ≥ 50 held-out
        # pairs (77; ≈ 20 s per tree with 2 workers). The second agent's trees cost ≈ 20–45 s each (it stops early
        # less often) and gave 51 OOD step pairs on all 100 (0.55 per tree in its first 60)
        "hotpotqa.train_tasks": 700,
        "hotpotqa.valid_tasks": 100,
        "hotpotqa.ood_tasks": 100,
        "hotpotqa.test_tasks": 100,
        "hotpotqa.clone_demos": 300,
        "clone.curve": [50, 100],
        "mcts.iterations": 30,
        # the second agent (OOD pairs): the same clone after 50 of its demonstrations (WebShop greedy 0.50 vs 0.75 on
        # the first 20 test tasks). The base model with the few-shot prompt found no success in its trees (no pairs
        # under the paper's rule); the LoRA clone gave one pair per 6-minute tree. This one: 40 s per WebShop tree.
        "second_agent.model": CLONE_NAME,
        "second_agent.icl": False,
        "second_agent.clone_checkpoint": 50,
        # one model per worker with 1 thread each (`make bench`, workers: 1.82x the trees and 1.86x the episodes
        # per hour of 1 worker x 2 threads, same trees and rewards)
        "mcts.workers": 2,
        "eval.workers": 2,
        "mcts.temperature": 1.0,  # expansions at the paper's T=1: at T=0.7 HotPotQA trees found 0 of 4 successes
        # candidates of sampled / bon / q and its controls: T=0.7 (notebook 00's candidate sampling on valid
        # tasks: pass@5 0.70 / 0.33 vs 0.60 / 0.30 at T=1); T=1 is an ablation row of notebook 05
        "policy.temperature": 0.7,
        "policy.max_tokens": 96,  # the expert's longest turn is 77 tokens: no turn may be cut
        # notebook 03, WebShop, 100 train pairs each, 88 held-out valid pairs: preference accuracy 0.75 from the
        # cloned agent vs 0.73 from the base model (2 pairs apart: within noise; the base's margins are larger).
        # The pre-declared rule (accuracy, then margin) picks the agent.
        "dpo.init": "agent",
        "dpo.batch_size": 4,
        "dpo.learning_rate": 5e-5,
        "dpo.epochs": 1,  # the paper's one epoch (Fig. 5a)
        # 1024: every WebShop pair of the cloned agent keeps its instruction (at 512, 18 of the first 44 lost
        # it: a search-results page alone is ≈ 500 tokens); mean 717 tokens per pair
        "dpo.max_length": 1024,
        "dpo.lora": True,
        "dpo.lr_scheduler": "linear",
        "qnet.epochs": 3,
        # AgentEvol: the best 2 finished trajectories of each task (WebShop: 347 of the trees' 1,812, beside RFT's
        # 152 successes; all 1,812 would take ≈ 10 h of fine-tuning at 2 epochs on 2 cores). HotPotQA's finished
        # trajectories with reward > 0 are its exact-match successes, ≈ 1 per successful tree: the cap changes nothing
        "finetune.agentevol_per_task": 2,
        # one pass over the fine-tuning data, like the Q models (dpo.epochs) and the clone: equal training per row,
        # and on 2 cores one HotPotQA RFT epoch (243 successful trajectories, ≈ 500 tokens each) is ≈ 20 min
        "finetune.epochs": 1,
        # Q*Agent's self-training explores with its QNet (the paper's value head): on HotPotQA's test tasks a
        # QNet-guided episode costs 5.9 s against the step DPO model's 16.7 s: ≈ 34 min instead of ≈ 1.6 h of
        # wall clock for the 700 train tasks with 2 workers
        "finetune.st_q_model": "qnet",
        # Table 2 adds issue 15's QLASS-faithful look-ahead (each candidate stepped, the state it reaches scored
        # by the QNet; no reward peek) beside the QNet's plain pick
        "eval.methods": ["greedy", "sampled", "bon", "q", "random_pick", "logprob_pick", "qnet", "qnet_lookahead"],
        "eval.ablation_tasks": 50,
        "eval.bootstrap_resamples": 5000,
    },
    "smoke": {
        # the pipeline check keeps the base agent with the few-shot prompt for notebooks 01-08: the smoke clone
        # (2 demonstrations, a few steps) ends every episode alike, so its trees give no step pairs and the DPO
        # stage and `q` would go untested; notebook 00 still trains, exports and evaluates the clone
        "webshop.train_tasks": 2,
        "webshop.valid_tasks": 1,
        "webshop.test_tasks": 1,
        "hotpotqa.train_tasks": 2,
        "hotpotqa.valid_tasks": 1,
        "hotpotqa.test_tasks": 1,
        "webshop.clone_demos": 2,
        "hotpotqa.clone_demos": 2,
        "clone.batch_size": 2,
        "clone.max_length": 1024,
        "clone.curve": [1],
        "webshop.max_steps": 3,
        "hotpotqa.max_steps": 3,
        "mcts.iterations": 2,
        "mcts.n_candidates": 2,
        "policy.max_tokens": 32,
        "dpo.batch_size": 2,
        "dpo.epochs": 1,
        "dpo.max_length": 384,
        "dpo.lora": True,
        "dpo.lr_scheduler": "linear",
        # the embedded 135M agent almost never succeeds: without this weak-agent option no tree gives pairs
        "pairs.from_unsuccessful_trees": True,
        "qnet.epochs": 1,
        "qnet.batch_size": 4,
        "eval.n_candidates": 2,
        "eval.bootstrap_resamples": 200,
        "finetune.batch_size": 2,
        "finetune.epochs": 1,
        "finetune.max_length": 1024,
    },
}


# ----------------------------------------------------------------------------- building a config
def load_config(profile: str | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Build the config of ``profile`` (default ``cpu``) and apply dotted-key ``overrides``."""
    name = profile or DEFAULT_PROFILE
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILE_NAMES)}")
    config = with_overrides(Config(profile=name), {**PROFILES[name], **dict(overrides or {})})
    if not config.policy.clones:
        from qlib.workbook.layout import run_paths

        config.policy.clones = str(run_paths(name, create=False).clones())
    return config


def with_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    """A new, validated copy of ``config`` with dotted-key ``overrides`` applied (``config`` is unchanged)."""
    data = config.to_dict()
    spelled: dict[tuple[str, ...], str] = {}  # path in ``data`` -> the key as the user wrote it
    for key, value in overrides.items():
        path = resolve_key(data, key)
        spelled[path] = key
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(explain(err, spelled)) from None


def resolve_key(data: dict[str, Any], key: str) -> tuple[str, ...]:
    """The path of dotted ``key`` in ``data`` (a :meth:`Config.to_dict`); ``<env>.x`` means ``envs.<env>.x``."""
    parts = tuple(key.split("."))
    if parts[0] not in data and parts[0] in data["envs"]:
        parts = ("envs", *parts)
    node: Any = data
    for depth, part in enumerate(parts):
        if part not in node:
            where = ".".join(parts[:depth]) or "config"
            known = sorted(node) if depth else sorted(set(node) | set(data["envs"]))
            raise ConfigError(
                f"unknown config key {key!r}: {where} has no field {part!r} (known: {', '.join(known)})"
            )
        node = node[part]
        if isinstance(node, dict) and depth == len(parts) - 1:
            raise ConfigError(f"config key {key!r} is a section; set one of its fields instead")
        if not isinstance(node, dict) and depth < len(parts) - 1:
            raise ConfigError(f"unknown config key {key!r}: {'.'.join(parts[:depth + 1])} is a value, not a section")
    return parts


def explain(err: ValidationError, spelled: Mapping[tuple[str, ...], str]) -> str:
    """pydantic's errors as one message per bad value, each naming the dotted key the user wrote."""
    lines = []
    for error in err.errors():
        loc = tuple(str(part) for part in error["loc"])
        prefix = next((loc[:n] for n in range(len(loc), 0, -1) if loc[:n] in spelled), None)
        key = spelled[prefix] if prefix else ".".join(loc)
        item = "".join(f", item {part}" for part in loc[len(prefix or loc):])  # an element of a list
        message = error["msg"][:1].lower() + error["msg"][1:]
        lines.append(f"config key {key!r}{item}: {message} (got {error['input']!r})")
    return "; ".join(lines)


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """Parse CLI ``key=value`` items into a dict (values stay strings; validation types them)."""
    result: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        result[key.strip()] = value.strip()
    return result


# ----------------------------------------------------------------------------- help
def describe(config: Config | None = None) -> list[tuple[str, str, Any, str]]:
    """``(dotted key, type, value, help)`` of every setting, in declaration order.

    Values are those of ``config`` (default: the paper's settings); environment keys are written the
    short way (``<env>.max_steps``), as profiles and ``--set`` write them.
    """
    config = config or Config()
    rows: list[tuple[str, str, Any, str]] = []

    def walk(section: BaseModel, prefix: str) -> None:
        for name, info in type(section).model_fields.items():
            value = getattr(section, name)
            if isinstance(value, BaseModel):
                walk(value, f"{prefix}{name}.")
            elif isinstance(value, dict):  # envs
                for env_name, settings in value.items():
                    walk(settings, f"{prefix}{env_name}.")
            else:
                rows.append((prefix + name, type_name(info), value, info.description or ""))

    walk(config, "")
    return rows


def type_name(info: FieldInfo) -> str:
    """A field's type and bounds as help text, e.g. ``int (>= 1)`` or ``paper | official``."""
    hint = info.annotation
    if typing.get_origin(hint) is Literal:
        name = " | ".join(str(arg) for arg in typing.get_args(hint))
    else:
        name = hint.__name__ if isinstance(hint, type) and not typing.get_args(hint) else str(hint)
    symbols = {Ge: ("ge", ">="), Gt: ("gt", ">"), Le: ("le", "<="), Lt: ("lt", "<")}
    bounds = [f"{symbols[type(m)][1]} {getattr(m, symbols[type(m)][0])}" for m in info.metadata if type(m) in symbols]
    return f"{name} ({', '.join(bounds)})" if bounds else name


def flat_keys(config: Config | None = None) -> list[str]:
    """All dotted keys of the config (for help texts and notebooks)."""
    return [key for key, *_ in describe(config)]
