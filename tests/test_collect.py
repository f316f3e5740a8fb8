"""Collection driver (qlib.collect): resume after a kill, retries, failures, shards, workers, CLI."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qlib import collect as qcollect
from qlib import workers as qworkers
from qlib.config import load_config
from qlib.testing.toy import ToyEnv, ToyPolicy
from qlib.tree import load_tree, strip_volatile

REPO = Path(__file__).resolve().parent.parent
OVERRIDES = {"mcts.iterations": 6, "mcts.n_candidates": 3, "mcts.early_stop": False, "seed": 3}
N_TASKS = 8


def config():
    return load_config("smoke", OVERRIDES)


def make_env():
    return ToyEnv(max_steps=5, length=3, n_tasks=(N_TASKS, 2, 2))


def run(out, **kwargs):
    kwargs.setdefault("policy", ToyPolicy())
    kwargs.setdefault("env_factory", make_env)
    return qcollect.collect("toy", "train", config=config(), out_dir=out, **kwargs)


def trees(folder: Path) -> dict[str, dict]:
    return {p.name: strip_volatile(load_tree(p)) for p in sorted(folder.glob("*.json"))}


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    summary = run(out)
    assert summary["done"] == N_TASKS and summary["failed"] == 0
    return out, summary


def test_collect_writes_one_tree_per_task_and_resumes(reference, tmp_path):
    out, summary = reference
    assert sorted(trees(out)) == sorted(f"toy_{t}.json" for t in range(N_TASKS))
    assert all(t["split"] == "train" for t in trees(out).values())
    assert summary["llm_calls"] == sum(load_tree(p)["stats"]["llm_calls"] for p in out.glob("*.json"))
    again = run(out)
    assert again["skipped"] == N_TASKS and again["done"] == 0 and hidden(out) == []


DYING_SCRIPT = """
import json, os, sys
from qlib.collect import collect
from qlib.config import load_config
from qlib.testing.toy import ToyEnv, ToyPolicy

out, overrides, die_at, workers = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

class Dying(ToyPolicy):
    calls = 0
    def propose(self, *args, **kwargs):
        Dying.calls += 1
        if Dying.calls == die_at:
            os._exit(17)  # a hard kill: no cleanup, no exception handling
        return super().propose(*args, **kwargs)

collect("toy", "train", config=load_config("smoke", overrides), out_dir=out, policy=Dying(),
        env_factory=lambda: ToyEnv(max_steps=5, length=3, n_tasks=(%d, 2, 2)), workers=workers)
""" % N_TASKS


@pytest.mark.parametrize("workers", [1, 2])
def test_killed_collection_resumes_to_the_same_trees(reference, tmp_path, workers):
    ref_dir, ref_summary = reference
    die_at = ref_summary["llm_calls"] // 2
    proc = subprocess.run(
        [sys.executable, "-c", DYING_SCRIPT, str(tmp_path), json.dumps(OVERRIDES), str(die_at), str(workers)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 17, proc.stderr
    partial = trees(tmp_path)  # every visible tree file is complete (json.load succeeds) and right
    assert 0 < len(partial) < N_TASKS
    assert all(partial[name] == trees(ref_dir)[name] for name in partial)
    # a hard kill during another thread's write may leave that write's temp file (never a tree
    # file); the next run removes it because its writer process is gone
    assert all(name.endswith(".tmp") for name in hidden(tmp_path))
    summary = run(tmp_path)
    assert summary["skipped"] == len(partial) and summary["done"] == N_TASKS - len(partial)
    assert trees(tmp_path) == trees(ref_dir) and hidden(tmp_path) == []


def test_keyboard_interrupt_stops_and_resumes(reference, tmp_path):
    class Interrupting(ToyPolicy):
        calls = 0

        def propose(self, *args, **kwargs):
            Interrupting.calls += 1
            if Interrupting.calls == 40:
                raise KeyboardInterrupt
            return super().propose(*args, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, policy=Interrupting(), workers=2)
    assert not (tmp_path / qcollect.FAILURES_FILE).exists() and hidden(tmp_path) == []
    assert len(trees(tmp_path)) < N_TASKS
    run(tmp_path)
    assert trees(tmp_path) == trees(reference[0])


class FlakyEnv(ToyEnv):
    attempts: dict[int, int] = {}

    def reset(self, task_id):
        FlakyEnv.attempts[task_id] = FlakyEnv.attempts.get(task_id, 0) + 1
        if task_id == 3 or (task_id == 5 and FlakyEnv.attempts[task_id] == 1):
            raise RuntimeError(f"backend down for task {task_id}")
        return super().reset(task_id)


class FlakyPolicy(ToyPolicy):
    """Fails once, in the middle of task 6's search."""

    def __init__(self):
        super().__init__()
        self.task6_calls = 0

    def propose(self, messages, n, **kwargs):
        if messages[1]["content"].startswith("Task 6:"):
            self.task6_calls += 1
            if self.task6_calls == 3:
                raise ConnectionError("endpoint reset")
        return super().propose(messages, n, **kwargs)


def test_failing_task_is_retried_then_recorded(reference, tmp_path):
    FlakyEnv.attempts = {}
    summary = run(tmp_path, env_factory=lambda: FlakyEnv(max_steps=5, length=3, n_tasks=(N_TASKS, 2, 2)),
                  policy=FlakyPolicy(), retries=2)
    assert summary["failed"] == 1 and summary["failed_tasks"] == [3] and summary["done"] == N_TASKS - 1
    assert FlakyEnv.attempts[3] == 3 and FlakyEnv.attempts[5] == 2
    failures = qcollect.read_failures(tmp_path)
    assert [(f["task_id"], f["attempts"]) for f in failures] == [(3, 3)]
    assert "backend down for task 3" in failures[0]["error"] and failures[0]["env"] == "toy"
    ref = trees(reference[0])
    got = trees(tmp_path)
    assert "toy_3.json" not in got and all(got[name] == ref[name] for name in got)  # retried tasks 5, 6 identical
    # the next run retries the recorded task
    FlakyEnv.attempts = {}
    again = run(tmp_path, env_factory=make_env)
    assert again["done"] == 1 and trees(tmp_path) == ref


def test_shards_partition_the_tasks(reference, tmp_path):
    seen: list[set[str]] = []
    for index in range(3):
        before = set(trees(tmp_path))
        summary = run(tmp_path, shard=(index, 3))
        assert summary["tasks"] == len(range(N_TASKS)[index::3]) and summary["skipped"] == 0
        seen.append(set(trees(tmp_path)) - before)
    assert seen == [{f"toy_{t}.json" for t in range(N_TASKS)[i::3]} for i in range(3)]
    assert trees(tmp_path) == trees(reference[0])


def test_selection_limit_then_shard():
    tasks = list(range(10))
    assert qcollect.select_tasks(tasks, 7, None) == list(range(7))
    assert qcollect.select_tasks(tasks, 7, (1, 3)) == [1, 4]
    parts = [qcollect.select_tasks(tasks, None, (i, 4)) for i in range(4)]
    assert sorted(sum(parts, [])) == tasks
    with pytest.raises(ValueError):
        qcollect.select_tasks(tasks, None, (3, 3))
    ids = list(range(100, 3000))
    cpu = load_config("cpu", {"hotpotqa.train_start": 5})
    train = cpu.default_tasks("hotpotqa", "train", ids, None)
    assert train == ids[5:5 + cpu.hotpotqa.train_tasks]  # past the first train_start tasks
    assert cpu.default_tasks("hotpotqa", "train", ids, 3) == ids[5:8]
    assert cpu.default_tasks("hotpotqa", "valid", ids, None) == ids[:cpu.hotpotqa.valid_tasks]
    assert cpu.default_tasks("toy", "train", ids, None) == ids  # an env the config does not know
    assert cpu.default_tasks("toy", "train", ids, 4) == ids[:4]


class UnsafePolicy(ToyPolicy):
    thread_safe = False


def test_threads_give_the_same_trees(reference, tmp_path):
    summary = run(tmp_path, policy=UnsafePolicy(), workers=3)
    assert summary["done"] == N_TASKS and trees(tmp_path) == trees(reference[0])


def test_local_backends_get_one_policy_per_worker_thread(reference, tmp_path, monkeypatch):
    """Without a given policy, each worker thread builds its own with a share of the CPU threads; the trees
    are those of one worker."""
    import threading

    import time

    built, building = [], []

    def fake_default_policy(env_name, cfg):
        building.append(1)  # never two builds at once (llama.cpp's silenced loading swaps the stdout descriptor)
        assert len(building) == 1
        time.sleep(0.05)
        built.append((threading.get_ident(), cfg.policy.n_threads))
        building.pop()
        return UnsafePolicy()

    monkeypatch.setattr(qworkers, "default_policy", fake_default_policy)
    assert config().policy.n_threads == 2
    summary = qcollect.collect("toy", "train", config=config(), out_dir=tmp_path, env_factory=make_env, workers=2)
    assert summary["done"] == N_TASKS and trees(tmp_path) == trees(reference[0])
    assert len(built) == len({thread for thread, _ in built}) and 1 <= len(built) <= 2  # one per thread
    assert {threads for _, threads in built} == {1}  # 2 threads shared by 2 workers
    built.clear()
    qcollect.collect("toy", "train", config=config(), out_dir=tmp_path / "one", env_factory=make_env, workers=1,
                     limit=1)
    assert [threads for _, threads in built] == [config().policy.n_threads]  # one worker keeps them all


def test_stale_temp_files_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".toy_0.json.{dead.pid}.abc123.tmp"
    live = tmp_path / f".toy_1.json.{os.getpid()}.abc123.tmp"
    stale.write_text("{partial")
    live.write_text("{in progress")
    run(tmp_path, limit=1)
    assert not stale.exists() and live.exists()
    assert trees(tmp_path).keys() == {"toy_0.json"}


def test_cli_arguments():
    parser = argparse.ArgumentParser()
    qcollect.add_arguments(parser)
    args = parser.parse_args(["--env", "hotpotqa", "--limit", "3", "--shard", "1/4", "--workers", "2"])
    assert (args.env, args.split, args.limit, args.workers) == ("hotpotqa", "train", 3, 2)
    assert qcollect.parse_shard(args.shard) == (1, 4) and qcollect.parse_shard(None) is None
    for bad in ("4/4", "x", "1/2/3"):
        with pytest.raises(ValueError):
            qcollect.parse_shard(bad)
    with pytest.raises(SystemExit):
        parser.parse_args(["--env", "toy"])


def test_imports_stay_light():
    code = ("import sys, qlib.collect, qlib.pairs, qlib.mcts; "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'trl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_collect_trees_summarises_every_tree_on_disk_after_a_resume(tmp_path, monkeypatch):
    from qlib import experiments as ex
    from qlib.workbook import RunPaths

    real = qcollect.collect

    def toy_collect(env_name, split, **kwargs):
        return real(env_name, split, **{**kwargs, "config": config()}, policy=ToyPolicy(), env_factory=make_env)

    monkeypatch.setattr(qcollect, "collect", toy_collect)
    paths = RunPaths("smoke", tmp_path / "runs", tmp_path / "results", tmp_path / "figures")
    first = ex.collect_trees(config(), paths, envs=("toy",), splits=("train",), limits={"train": 3}).iloc[0]
    again = ex.collect_trees(config(), paths, envs=("toy",), splits=("train",), limits={"train": 3}).iloc[0]
    assert (first.done, first.skipped, first.trees) == (3, 0, 3)
    assert (again.done, again.skipped, again.trees) == (0, 3, 3)
    assert first.llm_calls > 0 and again.llm_calls == first.llm_calls and again.seconds == first.seconds
    assert again.mean_best_reward == first.mean_best_reward and 0.0 <= again.success_rate <= 1.0


def test_resume_refuses_trees_of_another_configuration(tmp_path):
    out = tmp_path / "trees"
    run(out, limit=2)
    other = {**OVERRIDES, "mcts.iterations": 7}
    with pytest.raises(qcollect.MismatchedTreesError, match=r"toy_0.json was collected with other settings "
                                                            r"\(iterations: 6 there, 7 now\)"):
        qcollect.collect("toy", "train", config=load_config("smoke", other), out_dir=out, policy=ToyPolicy(),
                         env_factory=make_env, limit=3)
    with pytest.raises(qcollect.MismatchedTreesError, match="policy.model"):
        qcollect.collect("toy", "train", config=load_config("smoke", {**OVERRIDES, "policy.model": "x.gguf"}),
                         out_dir=out, policy=ToyPolicy(), env_factory=make_env, limit=3)
    assert sorted(p.name for p in out.glob("*.json")) == ["toy_0.json", "toy_1.json"]  # nothing was added
    # a tree searched by another behaviour-cloned agent (same model name, other training) is not resumed
    tree = json.loads((out / "toy_0.json").read_text())
    assert tree["agent"] is None  # the toy policy is no clone
    (out / "toy_0.json").write_text(json.dumps({**tree, "agent": "lora-r16-0badcafe"}))
    with pytest.raises(qcollect.MismatchedTreesError, match="agent: 'lora-r16-0badcafe' there, None now"):
        run(out, limit=3)
    (out / "toy_0.json").write_text(json.dumps(tree))
    (out / "toy_1.json").write_text('{"env": "toy", "task_id": 1, "nod')
    with pytest.raises(qcollect.MismatchedTreesError, match="toy_1.json is not a readable tree file"):
        run(out, limit=3)
    (out / "toy_1.json").unlink()
    assert run(out, limit=3)["done"] == 2  # the same configuration resumes
