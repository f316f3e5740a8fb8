"""Monte Carlo Tree Search with step-level Q annotation (paper §"Step-level Q Values Estimation with
MCTS", Eq. 4–6, Algorithm 1); one implementation for every environment of :mod:`qlib.envs`.

Search (one task, at most ``iterations`` iterations):

* **Nodes** hold visits ``N`` and mean value ``V``. Every search node owns a snapshot of the
  environment (``env.snapshot()``); a child is always stepped from its parent's exact state
  (``env.restore(parent.snapshot)`` then ``env.step(action)``).
* **Selection** walks from the root through expanded, non-terminal nodes, taking at each depth the
  child with the highest ``UCT(s) = V(s) + sqrt(eta * ln N(parent) / N(s))`` (Eq. 4). Unvisited
  children come first; ties (and the choice among unvisited children) go to the earliest child in
  expansion order, so selection is deterministic. Terminal children and *exhausted* subtrees (every
  search child terminal or exhausted) are not selectable: their values are known, so every iteration
  is an expansion; the search ends early when the whole tree is exhausted (``stats.exhausted``).
  Option ``select_terminals`` restores re-selecting terminals (the iteration then only re-scores the
  terminal's known outcome, without calling the policy).
* **Expansion** asks the policy for ``n_candidates`` turns at ``temperature`` with the prompt
  ``render(env_name, task_observation, history, variant=prompt_variant, icl=settings.icl)`` and the
  environment's ``valid_actions()`` as ``action_space``. Candidates with the same env action are
  merged into one child (the first candidate's text is kept; ``count`` says how many were merged);
  each child is executed from the parent's snapshot.
* **Evaluation** takes the first child of the expanded node in UCT order (i.e. the first new child)
  and rolls it out with the policy (width 1, same temperature) until the episode ends. The value is
  the environment reward of a terminal step, or ``depth_limit_reward`` when the depth limit is hit
  without a terminal: a step the environment reports as ``truncated`` (it reached ``max_steps``)
  counts as hitting the depth limit, as does reaching ``max_depth`` (default ``env.max_steps``)
  without ``done``. ``depth_limit_reward`` comes from ``config.env(name).depth_limit_reward``
  (-0.5 WebShop, -1 HotPotQA, as in the official code). Every *other* child of the expansion that is
  already terminal (e.g. a success found while expanding) is evaluated too, from its known outcome,
  and backed up once (option ``backup_expansion_terminals``, on by default; off = the official code,
  where such a success never reaches V along its path).
* **Backpropagation** updates every node from each evaluated leaf (the rollout's last node, then the
  other terminal children of the expansion) to the root with ``N += 1; V = (V*(N-1) + r) / N``
  (Eq. 5), successes included (the official code skipped the update when a rollout succeeded).
* **Early stop** after the iteration in which any terminal node (search or rollout) reached reward
  ``>= 1``, when ``early_stop`` is set.
* **Q annotation** (Eq. 6): ``q(s_t, a_t) = V(s_{t+1})`` is stored on the child node; for a terminal
  child it is its evaluation reward (environment reward, or ``depth_limit_reward`` if truncated);
  a non-terminal node never visited has ``q = null`` (no estimate).
* **Seeding**: the task seed is ``derive_seed("task", config.seed, env_name, task_id)``; the k-th
  policy call of the task (k = 0, 1, ...) gets ``seed=derive_seed(task_seed, k)``. The search has no
  other random choice, so the same seed, policy and environment give the same tree.

Rollout storage. Algorithm 1 evaluates "from the selected node's trace" by rolling out, and only the
expanded nodes form the search tree; the official code likewise keeps rollout nodes out of
``children`` but links them to their parent, back-propagates through them and saves the rollout
terminals (its best trajectory may end in a rollout). We do the same explicitly: every rollout step is
stored as a node with ``is_rollout: true`` (parent link, ``N``/``V`` updated by backpropagation), but
rollout nodes are never selected or expanded (a later expansion of the same state samples fresh
candidates, which may repeat the rollout's action as a separate search node). Every terminal
trajectory is therefore recoverable from the file, and the best path may end in a rollout.

The tree it returns, and every query on tree files, is in :mod:`qlib.tree`.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from qlib.agent.base import Candidate, ContextOverflowError, Message, Policy
from qlib.agent.prompts import render_messages
from qlib.envs.base import Environment
from qlib.envs.registry import setting
from qlib.seeding import derive_seed
from qlib.tree import SCHEMA_VERSION, History, best_terminal, path_ids

logger = logging.getLogger(__name__)

Render = Callable[..., list[Message]]


# ---------------------------------------------------------------------------------------- settings
@dataclass
class SearchSettings:
    """Search parameters of one run (paper Table 5 defaults)."""

    iterations: int = 30
    n_candidates: int = 5
    eta: float = 2.0
    temperature: float = 1.0
    early_stop: bool = True
    depth_limit_reward: float = -1.0
    max_depth: int | None = None  # None: env.max_steps
    prompt_variant: str = "react"
    icl: bool = True  # in-context examples in the policy's prompt
    backup_expansion_terminals: bool = True  # see the module docstring (Evaluation)
    select_terminals: bool = False  # see the module docstring (Selection)


def search_settings(config: Any, env_name: str, env: Environment | None = None) -> SearchSettings:
    """Settings from a :class:`qlib.config.Config`; an environment the config has no section for (a
    test fixture) takes its registry entry's depth-limit reward."""
    depth_limit_reward = setting(env_name, "depth_limit_reward", config)
    m = config.mcts
    return SearchSettings(
        iterations=m.iterations, n_candidates=m.n_candidates, eta=m.eta, temperature=m.temperature,
        early_stop=m.early_stop, depth_limit_reward=float(depth_limit_reward),
        max_depth=getattr(env, "max_steps", None), prompt_variant=config.policy.prompt, icl=config.policy.icl,
        backup_expansion_terminals=m.backup_expansion_terminals, select_terminals=m.select_terminals,
    )


def task_seed(seed: int, env_name: str, task_id: Any) -> int:
    """The seed of one task's search, from ``config.seed``, the env name and the task id."""
    return derive_seed("task", seed, env_name, task_id)


class SearchCancelled(BaseException):
    """Raised by a search whose ``should_stop`` callback turned true (not an ordinary task failure)."""


# ---------------------------------------------------------------------------------------- nodes
@dataclass(eq=False)
class Node:
    """One state of the search tree (the state reached by ``action`` from ``parent``)."""

    id: int
    parent: Node | None
    depth: int
    thought: str = ""
    action: str = ""
    text: str = ""
    observation: str = ""
    reward: float = 0.0
    terminal: bool = False
    truncated: bool = False
    invalid: bool = False
    parsed: bool = True
    count: int = 1
    is_rollout: bool = False
    iteration: int = 0
    outcome: float | None = None  # evaluation reward of a terminal node
    snapshot: Any = field(default=None, repr=False)
    children: list[Node] = field(default_factory=list, repr=False)
    N: int = 0
    V: float = 0.0

    @property
    def search_children(self) -> list[Node]:
        return [c for c in self.children if not c.is_rollout]

    @property
    def exhausted(self) -> bool:
        """Nothing left to expand below: terminal, or expanded with every search child exhausted."""
        return self.terminal or (self.expanded and all(c.exhausted for c in self.search_children))

    @property
    def expanded(self) -> bool:
        return any(not c.is_rollout for c in self.children)

    @property
    def q(self) -> float | None:
        """Q̂ of the action leading here (Eq. 6): the terminal reward, else V when visited."""
        if self.terminal:
            return self.outcome
        return self.V if self.N > 0 else None

    def history(self) -> History:
        """(assistant turn, observation) pairs from the root to this node."""
        steps: History = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            steps.append((node.text, node.observation))
            node = node.parent
        return steps[::-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "parent": None if self.parent is None else self.parent.id,
            "children": [c.id for c in self.children], "depth": self.depth,
            "thought": self.thought, "action": self.action, "text": self.text,
            "observation": self.observation, "reward": self.reward, "N": self.N, "V": self.V,
            "q": None if self.parent is None else self.q, "terminal": self.terminal,
            "truncated": self.truncated, "invalid": self.invalid, "parsed": self.parsed,
            "count": self.count, "is_rollout": self.is_rollout, "iteration": self.iteration,
        }


def uct(child: Node, parent_visits: int, eta: float) -> float:
    """Eq. 4; ``inf`` for an unvisited child."""
    if child.N == 0:
        return math.inf
    return child.V + math.sqrt(eta * math.log(parent_visits) / child.N)


def select_child(node: Node, eta: float, *, skip_exhausted: bool = False) -> Node:
    """The search child with the highest UCT; unvisited first; ties to the earliest child.
    ``skip_exhausted``: only among children that are not terminal or exhausted."""
    children = [c for c in node.search_children if not (skip_exhausted and c.exhausted)]
    if not children:
        raise ValueError(f"node {node.id} has no search children")
    scores = [uct(c, node.N, eta) for c in children]
    best = max(range(len(children)), key=lambda i: (scores[i], -i))
    return children[best]


# ---------------------------------------------------------------------------------------- search
class TreeSearch:
    """MCTS over one task (see the module docstring); :meth:`run` returns the tree dict."""

    def __init__(
        self,
        env: Environment,
        policy: Policy,
        *,
        env_name: str,
        settings: SearchSettings,
        seed: int,
        render: Render,
        should_stop: Callable[[], bool] | None = None,
    ):
        self.env, self.policy, self.env_name = env, policy, env_name
        self.settings, self.seed, self.render = settings, seed, render
        self.should_stop = should_stop
        self.max_depth = settings.max_depth or env.max_steps
        self.nodes: list[Node] = []
        self.llm_calls = self.tokens = self.prompt_tokens = 0
        self.best_outcome = -math.inf
        self.task_observation = ""

    # -------------------------------------------------------------- policy and env
    def _propose(self, node: Node, n: int) -> list[Candidate]:
        """Ask the policy for ``n`` turns at ``node``'s state (the env must be at that state)."""
        messages = self.render(
            self.env_name, self.task_observation, node.history(),
            variant=self.settings.prompt_variant, icl=self.settings.icl,
        )
        seed = derive_seed(self.seed, self.llm_calls)
        self.llm_calls += 1
        try:
            candidates = self.policy.propose(
                messages, n, temperature=self.settings.temperature,
                action_space=self.env.valid_actions(), seed=seed,
            )
        except ContextOverflowError as err:
            logger.warning("node %d (depth %d): %s; treated as the depth limit", node.id, node.depth, err)
            node.terminal = node.truncated = True
            node.outcome = self.settings.depth_limit_reward
            return []
        self.tokens += sum(c.n_tokens for c in candidates)
        self.prompt_tokens += sum(c.prompt_tokens for c in candidates[:1])
        if not candidates:
            raise RuntimeError(f"policy returned no candidates at node {node.id} (depth {node.depth})")
        return candidates

    def _new_node(self, parent: Node | None, **fields: Any) -> Node:
        node = Node(id=len(self.nodes), parent=parent, depth=0 if parent is None else parent.depth + 1, **fields)
        self.nodes.append(node)
        if parent is not None:
            parent.children.append(node)
        return node

    def _step(self, parent: Node, candidate: Candidate, *, rollout: bool, iteration: int, count: int = 1) -> Node:
        """Execute ``candidate`` from the env's current state (= ``parent``'s) and add the child."""
        result = self.env.step(candidate.action)
        depth = parent.depth + 1
        truncated = bool(result.info.get("truncated")) or (not result.done and depth >= self.max_depth)
        terminal = bool(result.done) or truncated
        node = self._new_node(
            parent, thought=candidate.thought, action=candidate.action, text=candidate.text,
            observation=result.observation, reward=float(result.reward), terminal=terminal,
            truncated=truncated, invalid=bool(result.info.get("invalid")), parsed=candidate.valid,
            count=count, is_rollout=rollout, iteration=iteration,
        )
        if terminal:
            node.outcome = self.settings.depth_limit_reward if truncated else node.reward
            self.best_outcome = max(self.best_outcome, node.outcome)
        elif not rollout:
            node.snapshot = self.env.snapshot()
        return node

    # -------------------------------------------------------------- the four stages
    def select(self, root: Node) -> Node:
        """Walk down by UCT to a node that is not expanded (or, with ``select_terminals``, a terminal)."""
        skip = not self.settings.select_terminals
        node = root
        while node.expanded and not node.terminal:
            node = select_child(node, self.settings.eta, skip_exhausted=skip)
        return node

    def expand(self, node: Node, iteration: int) -> list[Node]:
        """Sample n candidates at ``node`` and add one child per distinct action (none if the prompt
        overflowed the context: ``node`` is then a truncated terminal)."""
        self.env.restore(node.snapshot)
        candidates = self._propose(node, self.settings.n_candidates)
        merged: dict[str, list[Candidate]] = {}
        for candidate in candidates:
            merged.setdefault(candidate.action, []).append(candidate)
        children = []
        for group in merged.values():
            self.env.restore(node.snapshot)
            children.append(self._step(node, group[0], rollout=False, iteration=iteration, count=len(group)))
        return children

    def rollout(self, node: Node, iteration: int) -> Node:
        """Roll out from ``node`` with width 1 until a terminal; returns the last node."""
        if node.terminal:
            return node
        self.env.restore(node.snapshot)
        while not node.terminal:
            candidates = self._propose(node, 1)
            if not candidates:  # context overflow: node became a truncated terminal
                break
            node = self._step(node, candidates[0], rollout=True, iteration=iteration)
        return node

    @staticmethod
    def backpropagate(leaf: Node, reward: float) -> None:
        node: Node | None = leaf
        while node is not None:
            node.N += 1
            node.V = (node.V * (node.N - 1) + reward) / node.N
            node = node.parent

    # -------------------------------------------------------------- driver
    def run(self, task_id: Any, config_snapshot: dict[str, Any] | None = None) -> dict[str, Any]:
        start = time.perf_counter()
        self.task_observation = self.env.reset(task_id)
        self.backups: list[list[Any]] = []  # [iteration, leaf id, value] per backpropagation
        root = self._new_node(None, observation=self.task_observation, snapshot=self.env.snapshot())
        iterations, expansions, early_stopped, exhausted = 0, 0, False, False
        for iteration in range(1, self.settings.iterations + 1):
            if self.should_stop is not None and self.should_stop():
                raise SearchCancelled(f"search of task {task_id} cancelled at iteration {iteration}")
            if not self.settings.select_terminals and root.exhausted:
                exhausted = True  # every trajectory below the root is known: nothing left to expand
                break
            leaf = self.select(root)
            evaluated = [leaf]
            if not leaf.terminal:
                children = self.expand(leaf, iteration)
                expansions += 1
                if children:
                    first = select_child(leaf, self.settings.eta)
                    evaluated = [self.rollout(first, iteration)]
                    if self.settings.backup_expansion_terminals:
                        evaluated += [c for c in children if c.terminal and c is not first]
            for node in evaluated:
                assert node.outcome is not None
                self.backpropagate(node, node.outcome)
                self.backups.append([iteration, node.id, node.outcome])
            iterations = iteration
            if self.settings.early_stop and self.best_outcome >= 1.0:
                early_stopped = True
                break
        stats = {
            "iterations": iterations, "llm_calls": self.llm_calls, "tokens": self.tokens,
            "prompt_tokens": self.prompt_tokens, "seconds": round(time.perf_counter() - start, 3),
            "seed": self.seed, "early_stopped": early_stopped, "expansions": expansions, "exhausted": exhausted,
        }
        return self._tree_dict(task_id, stats, config_snapshot)

    def _tree_dict(self, task_id: Any, stats: dict[str, Any], config_snapshot: dict[str, Any] | None) -> dict[str, Any]:
        nodes = [n.to_dict() for n in self.nodes]
        best = best_terminal(nodes)
        best_reward = None if best is None else best["reward"]
        stats.update(
            best_reward=best_reward, n_nodes=len(nodes),
            n_rollout_nodes=sum(n["is_rollout"] for n in nodes), n_terminal=sum(n["terminal"] for n in nodes),
        )
        settings = asdict(self.settings)
        settings["max_depth"] = self.max_depth
        return {
            "schema_version": SCHEMA_VERSION, "env": self.env_name, "task_id": task_id,
            "task_observation": self.task_observation, "root": 0, "nodes": nodes,
            "best_path": [] if best is None else path_ids(nodes, best["id"]),
            "best_reward": best_reward, "stats": stats, "settings": settings, "config": config_snapshot,
            "backups": self.backups,
        }


def search_task(
    env: Environment,
    policy: Policy,
    task_id: Any,
    *,
    config: Any,
    env_name: str | None = None,
    render: Render | None = None,
    settings: SearchSettings | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run MCTS on ``task_id`` with the settings and seed of ``config``; returns the tree dict.

    ``should_stop`` is polled before each iteration; when it returns true the search raises
    :class:`SearchCancelled`."""
    env_name = env_name or env.name
    search = TreeSearch(
        env, policy, env_name=env_name,
        settings=settings or search_settings(config, env_name, env),
        seed=task_seed(config.seed, env_name, task_id), render=render or render_messages,
        should_stop=should_stop,
    )
    return search.run(task_id, config_snapshot=config.to_dict())
